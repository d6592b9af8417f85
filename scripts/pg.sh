#!/usr/bin/env bash
# A throwaway local Postgres for lowshell: initdb in a temporary directory,
# start on PGPORT (default 55432), create the `lowshell` database, print the
# DATABASE_URL, and run until Ctrl-C; then stop and delete everything.
# Uses the installed PostgreSQL binaries; as root, runs them as `postgres`.
set -euo pipefail
PORT="${PGPORT:-55432}"
BIN="${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}"
[ -n "$BIN" ] && BIN="$BIN/"
DIR="$(mktemp -d "${TMPDIR:-/tmp}/lowshell-pg.XXXXXX")"
AS=()
if [ "$(id -u)" = 0 ]; then
	chown postgres:postgres "$DIR"
	AS=(runuser -u postgres --)
fi
cleanup() {
	[ -n "${SLEEPER:-}" ] && kill "$SLEEPER" 2>/dev/null
	"${AS[@]}" "${BIN}pg_ctl" -D "$DIR/data" -m fast stop >/dev/null 2>&1 || true
	rm -rf "$DIR"
	echo "stopped; $DIR removed"
}
trap cleanup EXIT
trap 'exit 0' INT TERM
"${AS[@]}" "${BIN}initdb" -D "$DIR/data" -A trust -U postgres >"$DIR/initdb.log" 2>&1 \
	|| { cat "$DIR/initdb.log" >&2; exit 1; }
"${AS[@]}" "${BIN}pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w \
	-o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1" start >/dev/null \
	|| { cat "$DIR/server.log" >&2; exit 1; }
"${AS[@]}" "${BIN}psql" -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -c "CREATE DATABASE lowshell" >/dev/null
URL="postgres://postgres@127.0.0.1:$PORT/lowshell"
echo "Postgres is running (data in $DIR, log $DIR/server.log). In another terminal:"
echo
echo "  export DATABASE_URL=$URL"
echo "  cargo run -p host -- run --project projects/postgres.toml --listen 127.0.0.1:8081"
echo
echo "Ctrl-C stops it and deletes the data."
# `wait` (unlike a foreground sleep) lets the INT/TERM trap run at once.
while true; do
	sleep 3600 &
	SLEEPER=$!
	wait "$SLEEPER"
done

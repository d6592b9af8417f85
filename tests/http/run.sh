#!/usr/bin/env bash
# Starts the shell binary on a free port and runs, against it, the
# GraphQL-over-HTTP audit (`audit`), the GraphiQL browser test (`browser`),
# or both (`all`, the default). Installs what they need first (npm packages
# pinned by package-lock.json; Debian chromium when missing and possible).
# The browser test is skipped, with the reason, only when Chromium is missing.
set -euo pipefail
mode=${1:-all}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac

command -v node >/dev/null && command -v npm >/dev/null || {
	echo "error: node and npm are needed for the HTTP tests (apt-get install -y nodejs npm)" >&2
	exit 1
}

# npm packages, once per package-lock.json.
stamp="$here/node_modules/.lowshell-lock.sha256"
want=$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
	(cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
	echo "$want" >"$stamp"
fi

chromium=${CHROMIUM:-}
if [ "$mode" != audit ]; then
	"$here/install-chromium.sh" || true
	for c in "$chromium" /usr/bin/chromium /usr/bin/chromium-browser; do
		if [ -n "$c" ] && [ -x "$c" ]; then chromium=$c; break; fi
	done
fi

# A private copy of the binary, taken right after building it: a target
# directory shared by several worktrees may get another worktree's `host`.
work=$(mktemp -d)
pid=
cleanup() {
	if [ -n "$pid" ]; then
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT
cargo build --quiet -p host
cp "$target_dir/debug/host" "$work/host"
host="$work/host"
port=$(node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})")
url="http://127.0.0.1:$port"
log="$work/shell.log"
(cd "$root" && exec "$host" run --listen "127.0.0.1:$port") >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
	if curl -fsS "$url/healthz" >/dev/null 2>&1; then break; fi
	if ! kill -0 "$pid" 2>/dev/null; then
		echo "error: the shell exited before serving:" >&2
		cat "$log" >&2
		exit 1
	fi
	sleep 0.1
done
curl -fsS "$url/readyz" >/dev/null || { echo "error: the shell is not ready" >&2; cat "$log" >&2; exit 1; }

status=0
if [ "$mode" = all ] || [ "$mode" = audit ]; then
	LOWSHELL_URL=$url node "$here/audit.mjs" || status=1
fi
if [ "$mode" = all ] || [ "$mode" = browser ]; then
	if [ -n "$chromium" ]; then
		LOWSHELL_URL=$url CHROMIUM=$chromium node "$here/browser.mjs" || status=1
	else
		echo "SKIPPED browser test: Chromium is not installed and could not be installed (apt-get install -y chromium)"
	fi
fi
if [ "$status" != 0 ]; then
	echo "--- shell log ---" >&2
	tail -n 50 "$log" >&2
fi
exit "$status"

#!/usr/bin/env bash
# Instructions per command of a release shell, counted by callgrind (stable
# on a noisy machine, unlike time): the shell runs under valgrind in memory
# mode, `invite_load` warms it up, the counters are zeroed, then `invite_load`
# sends unique InviteCustomer mutations at concurrency C for S seconds and
# the count is divided by the commands answered (every answer is checked).
#
#   cargo build --release -p host --example invite_load
#   scripts/callgrind.sh target/release/host 1            # components
#   PROJECT=projects/native.toml scripts/callgrind.sh target/release/host 64
#
# The native project needs a host built with `--features native-baseline`
# (as `make bench` builds it). Valgrind cannot reserve the pool of 256
# instance slots: the shell gets `INSTANCES` (default 3). Under valgrind the
# shell runs ~50x slower, so the 5 ms epoch ticks catch guests mid-call far
# more often than in a real run: subtract `libcalls::new_epoch`'s inclusive
# count when it shows (`callgrind_annotate --inclusive=yes OUT.1`).
# Needs valgrind, curl and fuser (psmisc).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 HOST_BINARY CONCURRENCY [SECONDS] [PORT]" >&2; exit 2; }
BIN=$1 C=$2 S=${3:-20} PORT=${4:-8419}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LOAD="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/invite_load"
[ -x "$LOAD" ] || { echo "build the load first: cargo build --release -p host --example invite_load" >&2; exit 1; }
PROJECT=${PROJECT:-$ROOT/projects/basic.toml}
OUT=${OUT:-$(mktemp -d)/callgrind.out}
CACHE=${LOWSHELL_CACHE_DIR:-$(dirname "$OUT")/cache}
rm -f "$OUT" "$OUT".* # the dumps of an earlier run would be counted too
up() { for _ in $(seq 1 240); do curl -sf "127.0.0.1:$PORT/healthz" >/dev/null && return; sleep 1; done; return 1; }

# Compile the components into the cache once, outside valgrind.
LOWSHELL_CACHE_DIR=$CACHE RUST_LOG=warn "$BIN" run --project "$PROJECT" --listen "127.0.0.1:$PORT" >/dev/null 2>&1 &
up || { echo "the shell did not start" >&2; exit 1; }
kill $!; wait $! 2>/dev/null || true

LOWSHELL_LIMITS__INSTANCES=${INSTANCES:-3} LOWSHELL_CACHE_DIR=$CACHE RUST_LOG=warn \
	valgrind --tool=callgrind --callgrind-out-file="$OUT" "$BIN" run --project "$PROJECT" \
	--listen "127.0.0.1:$PORT" >"$OUT.log" 2>&1 &
VALGRIND=$!
trap 'kill $VALGRIND 2>/dev/null || true' EXIT
up || { echo "the shell did not start under valgrind: $OUT.log" >&2; exit 1; }
"$LOAD" "http://127.0.0.1:$PORT/" "$C" 5 >/dev/null
callgrind_control -z "$VALGRIND" >/dev/null 2>&1
done_n=$("$LOAD" "http://127.0.0.1:$PORT/" "$C" "$S" | tail -n1 | awk '{print $1}')
callgrind_control -d "$VALGRIND" >/dev/null 2>&1
sleep 1
[ "${done_n:-0}" -gt 0 ] || { echo "no command was answered: $OUT.log" >&2; exit 1; }
total=$(grep -h '^totals:' "$OUT".* | awk '{s += $2} END {print s}')
echo "$(basename "$PROJECT") c=$C: $done_n commands, $total instructions, $((total / done_n)) a command ($OUT.1)"

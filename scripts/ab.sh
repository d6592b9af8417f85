#!/usr/bin/env bash
# A/B of running servers, taking turns: for each concurrency level, each
# server in turn gets `invite_load` (unique InviteCustomer, every answer
# checked) for SECONDS while `perf stat` counts its process's CPU time; prints
# throughput, CPU per command and resident set per server. Run it on servers
# started side by side (two builds of the shell, or the shell and
# bench/handwritten), so that a noisy spell of the machine falls on all alike:
#
#   cargo build --release -p host --example invite_load
#   cp target/release/host /tmp/host-a   # ... change, rebuild ...
#   /tmp/host-a run --project projects/basic.toml --listen 127.0.0.1:8401 &
#   target/release/host run --project projects/basic.toml --listen 127.0.0.1:8402 &
#   scripts/ab.sh -r 2 -c "1 8 64" -s 6 8401 8402
#
# Needs `perf` (linux-perf) and `fuser` (psmisc).
set -euo pipefail
ROUNDS=1
LEVELS="8"
SECONDS_PER=6
while getopts "r:c:s:" opt; do
	case $opt in
	r) ROUNDS=$OPTARG ;;
	c) LEVELS=$OPTARG ;;
	s) SECONDS_PER=$OPTARG ;;
	*) exit 2 ;;
	esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "usage: $0 [-r ROUNDS] [-c 'LEVELS'] [-s SECONDS] PORT..." >&2; exit 2; }
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LOAD="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/invite_load"
[ -x "$LOAD" ] || { echo "build the load first: cargo build --release -p host --example invite_load" >&2; exit 1; }
STAT="$(mktemp)"
trap 'rm -f "$STAT"' EXIT
pid_of() { fuser "$1/tcp" 2>/dev/null | awk '{print $1}'; }
for port in "$@"; do
	[ -n "$(pid_of "$port")" ] || { echo "nothing listens on port $port" >&2; exit 1; }
	"$LOAD" "http://127.0.0.1:$port/" 8 2 >/dev/null # warm up
done
for round in $(seq "$ROUNDS"); do
	for c in $LEVELS; do
		for port in "$@"; do
			pid=$(pid_of "$port")
			perf stat -x, -e task-clock -p "$pid" -o "$STAT" -- sleep "$SECONDS_PER" >/dev/null 2>&1 &
			out=$("$LOAD" "http://127.0.0.1:$port/" "$c" "$SECONDS_PER" 2>&1 | tail -n1)
			wait
			done_n=$(echo "$out" | awk '{print $1}')
			ms=$(awk -F, '/task-clock/ {print $1}' "$STAT")
			rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
			cpu=$(awk -v ms="$ms" -v n="$done_n" 'BEGIN { if (n > 0) printf "%.1f", ms * 1000 / n; else print "-" }')
			echo "round $round c=$c port $port: $out | CPU per command $cpu µs | RSS $((rss / 1024)) MiB"
		done
	done
done

#!/usr/bin/env bash
# Installs Debian's chromium for the GraphiQL browser test, when it is missing
# and this machine can (root with apt-get). Idempotent; says why when it cannot.
set -u
for c in "${CHROMIUM:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
	if [ -n "$c" ] && [ -x "$c" ]; then exit 0; fi
done
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
	echo "chromium is missing and cannot be installed here (needs root and apt-get)"
	exit 1
fi
echo "installing chromium (apt-get install -y chromium) for the browser test"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null || {
	echo "apt-get could not install chromium"
	exit 1
}

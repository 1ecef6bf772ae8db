#!/bin/sh
# Lints conf/idlewatcher.service with `systemd-analyze verify` (skipped where systemd is absent).
# The unit names /usr/local/bin/idlewatcher, which verify wants to exist: a copy pointing at the
# freshly built binary is checked instead.
set -eu
cd "$(dirname "$0")/.."
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "check-unit: systemd-analyze not found, skipped"
    exit 0
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
binary="$(pwd)/target/release/idlewatcher"
[ -x "$binary" ] || binary=/bin/true
sed "s#/usr/local/bin/idlewatcher#$binary#g" conf/idlewatcher.service > "$dir/idlewatcher.service"
out=$(systemd-analyze verify "$dir/idlewatcher.service" 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then
    echo "$out"
    exit 1
fi
echo "check-unit: conf/idlewatcher.service verified"

#!/bin/sh
# `make bench`: builds what the benchmarks need (PROFILE; the tls test in release), then runs
# scripts/bench.py, which runs every stage, removes whatever it created and writes the figures
# into BENCHMARKS.md.
# Arguments go to scripts/bench.py (e.g. `scripts/bench.sh --only herd,cold`; `--help` lists them).
# Honours CARGO (default cargo) and CARGO_TARGET_DIR.
set -eu
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
# The build that ships (`make run`): PROFILE and FEATURES, as the Makefile passes them.
PROFILE=${PROFILE:-dist}
FEATURES=${FEATURES:-}

for tool in docker wrk nginx python3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "bench: $tool is missing (make bench installs it)" >&2; exit 1; }
done
docker info >/dev/null 2>&1 || { echo "bench: the Docker engine is not reachable" >&2; exit 1; }

started=$(date +%s)
echo "bench: building (profile $PROFILE, features '$FEATURES'): the gateway, examples/bare_proxy, examples/bare_splice, examples/loadgen; benches/gate; tests/tls (release, not run)" >&2
$CARGO build --profile "$PROFILE" ${FEATURES:+--features "$FEATURES"} --bin idlewatcher --example bare_proxy --example bare_splice --example loadgen
$CARGO bench --bench gate --no-run
# The `held` stage runs tests/tls.rs's `memory_per_held_request` (a release-built test) against
# the PROFILE build's gateway (IDLEWATCHER_BIN): the test binary's path is in cargo's JSON messages.
# (Compiler messages go to stderr as usual; sh has no pipefail, hence the check after.)
tls_test=$($CARGO test --release --test tls --no-run --message-format=json |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-message":
        print(m["message"]["rendered"], end="", file=sys.stderr)
    elif m.get("reason") == "compiler-artifact" and m["target"]["name"] == "tls" and m.get("executable"):
        print(m["executable"])')
[ -n "$tls_test" ] || { echo "bench: building tests/tls.rs failed" >&2; exit 1; }
target_dir=$($CARGO metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
echo "bench: build took $(( $(date +%s) - started )) s" >&2

exec python3 scripts/bench.py --target-dir "$target_dir" --profile "$PROFILE" --tls-test "$tls_test" \
    --build-seconds "$(( $(date +%s) - started ))" "$@"

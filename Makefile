# idlewatcher: `make run` runs the gateway on the shipped config, `make test` runs every test.
# Both install what a fresh Debian machine lacks (with apt-get).

CARGO       ?= cargo
CONFIG      ?= conf/idlewatcher.yaml
BUILD_DEPS  := cmake
TEST_DEPS   := cmake busybox-static chromium chromium-driver file podman openssl
DEMO_DEPS   := cmake busybox-static file
BENCH_DEPS  := cmake busybox-static wrk nginx-light file python3 procps valgrind

.PHONY: run test lint demo bench build fuzz-smoke deps-build deps-test deps-demo deps-bench deps-fuzz clean-test-containers

# The shipped build: the `dist` profile (fat LTO) with glibc's allocator, chosen by `make bench`'s
# `builds` stage (BENCHMARKS.md: mimalloc and jemalloc save ≈ 10 % of the instructions per request
# but more than double what a napping route costs). Tests use the faster-to-build `release` profile.
PROFILE     ?= dist
FEATURES    ?=

# The shipped config fronts the demo container (created stopped when missing).
run: deps-demo
	$(CARGO) build --profile $(PROFILE) --features "$(FEATURES)" --bin idlewatcher
	scripts/demo-backend.sh
	./target/$(PROFILE)/idlewatcher -c $(CONFIG)

build: deps-build
	$(CARGO) build --release --all-targets

# Every test: formatting, lints, unit, integration (real Docker engine) and browser tests.
# One release build serves them all.
test: deps-test lint
	$(CARGO) test --release --lib --bins --tests --examples -- --test-threads=2
	$(CARGO) test --release --benches
	$(CARGO) test --release --doc
	$(MAKE) fuzz-smoke

# Each fuzz target for FUZZ_SECONDS (nightly, cargo-fuzz; no sanitizer, so that the build is the
# plain one with coverage; its own target dir fuzz/target, built once). Long runs: ARCHITECTURE.md.
FUZZ_TARGETS ?= config head classify
FUZZ_SECONDS ?= 5
fuzz-smoke: deps-fuzz
	@for target in $(FUZZ_TARGETS); do \
		$(CARGO) +nightly fuzz run --sanitizer none $$target -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

lint: deps-build
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings
	python3 scripts/check-layers.py
	scripts/check-unit.sh

# Kept for habit: the same as `make run`.
demo: run

# Benchmarks (not part of `make test`): about 10–12 minutes (valgrind included); BENCH_ARGS go to scripts/bench.py.
bench: deps-bench
	PROFILE=$(PROFILE) FEATURES="$(FEATURES)" scripts/bench.sh $(BENCH_ARGS)

deps-build:
	@scripts/ensure-packages.sh $(BUILD_DEPS)

deps-test:
	@scripts/ensure-packages.sh $(TEST_DEPS)

deps-demo:
	@scripts/ensure-packages.sh $(DEMO_DEPS)

deps-bench:
	@scripts/ensure-packages.sh $(BENCH_DEPS)

deps-fuzz: deps-build
	@$(CARGO) +nightly fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked

# Leftovers of interrupted test runs (every test container carries this label).
clean-test-containers:
	docker ps -aq --filter label=idlewatcher-test=1 | xargs -r docker rm -f

# idlewatcher: `make run` runs the gateway on the shipped config, `make test` runs every test.
# Both install what a fresh Debian machine lacks (with apt-get).

CARGO       ?= cargo
CONFIG      ?= conf/idlewatcher.yaml
BUILD_DEPS  := cmake
TEST_DEPS   := cmake busybox-static chromium chromium-driver file podman
DEMO_DEPS   := cmake busybox-static file
BENCH_DEPS  := cmake busybox-static wrk nginx-light file python3 procps valgrind

.PHONY: run test lint demo bench build deps-build deps-test deps-demo deps-bench clean-test-containers

run: deps-build
	$(CARGO) run --release --bin idlewatcher -- -c $(CONFIG)

build: deps-build
	$(CARGO) build --release --all-targets

# Every test: formatting, lints, unit, integration (real Docker engine) and browser tests.
# One release build serves them all.
test: deps-test lint
	$(CARGO) test --release --lib --bins --tests --examples -- --test-threads=2
	$(CARGO) test --release --benches
	$(CARGO) test --release --doc

lint: deps-build
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings
	python3 scripts/check-layers.py

# A tiny busybox container behind the gateway, asleep until the first request.
demo: deps-demo
	$(CARGO) build --release --bin idlewatcher
	scripts/build-demo-image.sh
	@docker rm -f idlewatcher-demo >/dev/null 2>&1 || true
	docker create --name idlewatcher-demo idlewatcher-demo:latest >/dev/null
	@echo
	@echo "The container idlewatcher-demo is stopped. Now try, in another terminal:"
	@echo "    curl -i http://localhost:8080/                 # held, then answered by the container"
	@echo "    curl http://localhost:8080/.idlewatcher/status # its state, without waking it"
	@echo "or open http://localhost:8080/ in a browser (the loading page). Ctrl-C stops the gateway."
	@echo
	./target/release/idlewatcher -c conf/demo.yaml

# Benchmarks (not part of `make test`): about 8–10 minutes (valgrind included); BENCH_ARGS go to scripts/bench.py.
bench: deps-bench
	scripts/bench.sh $(BENCH_ARGS)

deps-build:
	@scripts/ensure-packages.sh $(BUILD_DEPS)

deps-test:
	@scripts/ensure-packages.sh $(TEST_DEPS)

deps-demo:
	@scripts/ensure-packages.sh $(DEMO_DEPS)

deps-bench:
	@scripts/ensure-packages.sh $(BENCH_DEPS)

# Leftovers of interrupted test runs (every test container carries this label).
clean-test-containers:
	docker ps -aq --filter label=idlewatcher-test=1 | xargs -r docker rm -f

# hvflight — the two set-up commands are `make demo` and `make test`; both
# install the Debian packages they need first (idempotent).

CARGO ?= cargo
SHELL := /bin/bash

.PHONY: all deps build release demo test bench deb cargo-deb clean

all: build

deps:
	@bash tests/tools/install-deps.sh

build: deps
	$(CARGO) build

release: deps
	$(CARGO) build --release

# The main job: the agent against a throwaway namespace lab — real qemu
# guests under a private libvirtd when this machine can run them, else veth
# guests with libvirt's test driver (it says which, and why); injects faults,
# prints what the agent sees, cleans up. DEMO_GUESTS=4 forces the test
# driver, DEMO_GUESTS=real:3 three real guests (docs/lab.md).
DEMO_GUESTS ?= auto
demo: release
	./target/release/hvflight demo --guests $(DEMO_GUESTS) $(DEMO_ARGS)

# The whole test suite (needs root: it builds network namespaces).
test: deps
	$(CARGO) build --bins
	$(CARGO) test --no-fail-fast -- --test-threads=$${TEST_THREADS:-4}

# The agent's cost on 50/500/1000-vNIC labs side by side with node_exporter
# (target/bench/results.json), then the store and /proc micro-benchmarks.
bench: release
	bash tests/tools/bench.sh $(BENCH_ARGS)
	$(CARGO) test --release --test store_bench -- --ignored --exact store_bench --nocapture
	$(CARGO) test --release --test proc_bench -- --ignored --nocapture

# The Debian package: target/debian/hvflight_<version>-1_amd64.deb (release
# build, man pages and shell completions generated from the CLI, cargo-deb).
CARGO_DEB_VERSION := 3.8.0
cargo-deb:
	@$(CARGO) deb --version 2>/dev/null | grep -q ' $(CARGO_DEB_VERSION)$$' || \
		$(CARGO) install cargo-deb --version $(CARGO_DEB_VERSION) --locked

# DEB_PROFILE=dev packages the debug build instead (the package test does,
# to spare CI a second full build; what ships is the release build).
DEB_PROFILE ?= release
DEB_BIN_DIR = $(if $(filter dev,$(DEB_PROFILE)),debug,release)
deb: deps cargo-deb
	$(CARGO) build --profile $(DEB_PROFILE) --bin hvflight
	rm -rf target/assets
	mkdir -p target/assets/bin
	cp target/$(DEB_BIN_DIR)/hvflight target/assets/bin/hvflight
	strip --strip-unneeded target/assets/bin/hvflight
	./target/assets/bin/hvflight generate man target/assets/man
	./target/assets/bin/hvflight generate completions target/assets/completions
	$(CARGO) deb --no-build --strip --output target/debian/

clean:
	$(CARGO) clean

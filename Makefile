# hvflight — the two set-up commands are `make demo` and `make test`; both
# install the Debian packages they need first (idempotent).

CARGO ?= cargo
SHELL := /bin/bash

.PHONY: all deps build release demo test bench clean

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

# Per-sample cost and peak RSS of `hvflight run` on a 50-guest lab.
bench: release
	bash tests/tools/bench.sh $(BENCH_ARGS)

clean:
	$(CARGO) clean

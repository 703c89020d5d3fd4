# virtio-balloon-rs: `make run` shows the driver working, `make test` runs every test.
# Everything (packages, kernel, modules, host tools) is installed or built on demand; builds are
# cached in $(VBRS_CACHE) and redone only when their inputs change.

SHELL := /bin/bash
export VBRS_CACHE ?= /var/cache/virtio-balloon-rs
export PATH := $(HOME)/.cargo/bin:$(PATH)
VBRS := $(CURDIR)/target/release/vbrs
CARGO_BUILD = cargo build --release -q -p vbrs-harness

.PHONY: all deps kernel modules qemu bench-build harness run test bench clippy fmt fmt-check shell clean distclean

all: modules

deps:
	@bash scripts/deps.sh

modules: deps
	@bash scripts/build.sh debug

## Our QEMU (Debian's source + patches/qemu/), for the scenarios that need it.
qemu: deps
	@bash scripts/qemu.sh >/dev/null

bench-build: deps
	@bash scripts/build.sh bench

harness:
	@echo "[make] building the host harness (cargo)" >&2
	@$(CARGO_BUILD)

## Boot a 2 GiB guest with each driver, inflate to 512 MiB and back, print a report.
run: modules harness
	@$(VBRS) run

## Unit tests and every scenario with both drivers; ends with "N passed, N failed".
test: modules qemu harness
	@$(VBRS) test $(if $(FILTER),--filter '$(FILTER)') $(if $(DRIVER),--driver $(DRIVER))

## Both drivers side by side (and ours with page records on our QEMU), kernel without debug options.
bench: bench-build qemu harness
	@$(VBRS) bench $(if $(GUEST_GIB),--guest-gib $(GUEST_GIB)) $(if $(ONLY),--only $(ONLY)) $(if $(REPS),--reps $(REPS)) $(foreach c,$(CASES),--case $(c)) $(if $(BW_MIB),--max-bandwidth-mib $(BW_MIB)) $(if $(MIGRATION_GIB),--migration-gib $(MIGRATION_GIB))

## Boot a guest and type commands into it (DRIVER=rs|c).
shell: modules harness
	@$(VBRS) shell --driver $(or $(DRIVER),rs)

## The module built with clippy (kernel lints), and rustfmt checks.
clippy: deps
	@bash scripts/build.sh debug CLIPPY=1

fmt:
	@bash scripts/fmt.sh

fmt-check:
	@bash scripts/fmt.sh --check

clean:
	rm -rf build target

distclean: clean
	rm -rf $(VBRS_CACHE)

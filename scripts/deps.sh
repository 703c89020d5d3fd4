#!/usr/bin/env bash
# Install what building and testing virtio-balloon-rs needs, idempotently.
# Debian packages through apt, bindgen-cli through cargo. Leaves the rustup toolchain alone.
set -euo pipefail

APT_PKGS=(
	qemu-system-x86 qemu-utils
	rustc-web rust-web-src libstd-rust-web-dev rust-web-clippy
	clang lld llvm libclang-dev
	linux-source-6.12
	busybox-static cpio xz-utils zstd
	make bc bison flex libelf-dev libssl-dev kmod python3 rsync
	dpkg-dev meson ninja-build pkg-config libglib2.0-dev libpixman-1-dev libfdt-dev zlib1g-dev
)
BINDGEN_VERSION=0.70.1
CARGO_BIN=${CARGO_HOME:-$HOME/.cargo}/bin

log() { printf '[deps] %s\n' "$*" >&2; }

missing=()
for p in "${APT_PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing Debian packages: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# Third-party sources on some machines are unreachable; the Debian ones are what we need.
	apt-get update -q >/dev/null 2>&1 || apt-get update -q 2>&1 | tail -n 3 >&2 || true
	apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

bindgen_ok() {
	[ -x "$CARGO_BIN/bindgen" ] && "$CARGO_BIN/bindgen" --version 2>/dev/null | grep -q " $BINDGEN_VERSION"
}
if ! bindgen_ok; then
	log "installing bindgen-cli $BINDGEN_VERSION with cargo"
	cargo install -q bindgen-cli --version "$BINDGEN_VERSION" --locked
fi
log "dependencies present"

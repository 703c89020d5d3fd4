#!/usr/bin/env bash
# Build the guest kernel (cached), both balloon modules against it, and put the artifacts at
# fixed paths: build/bzImage, build/virtio_balloon_rs.ko, build/virtio_balloon.ko and the guest
# helper build/fragment (debug flavour) or build/bench/... (bench flavour).
#
# Usage: scripts/build.sh [debug|bench] [extra make args for the module, e.g. CLIPPY=1]
set -euo pipefail
TOP=$(cd "$(dirname "$0")/.." && pwd)
FLAVOUR=${1:-debug}
shift || true
CACHE=${VBRS_CACHE:-/var/cache/virtio-balloon-rs}
. "$TOP/scripts/env.sh"
log() { printf '[build] %s\n' "$*" >&2; }

KDIR=$(bash "$TOP/scripts/kernel.sh" "$FLAVOUR")
OUT=$TOP/build
[ "$FLAVOUR" = debug ] || OUT=$TOP/build/$FLAVOUR
mkdir -p "$OUT"

# Build the module from a copy of the sources in the cache, so the checkout stays clean.
MDIR=$CACHE/module-$FLAVOUR
mkdir -p "$MDIR"
rsync -a --delete --exclude='*.o' --exclude='*.cmd' --exclude='*.ko' --exclude='*.mod*' \
	--include='Kbuild' --include='src/***' --exclude='*' "$TOP/" "$MDIR/" >/dev/null
log "building virtio_balloon_rs.ko ($FLAVOUR) against $(basename "$KDIR")"
make -s -C "$KDIR" LLVM=1 RUSTC="$RUSTC" RUSTDOC="$RUSTDOC" BINDGEN="$BINDGEN" CLIPPY_DRIVER="$CLIPPY_DRIVER" \
	M="$MDIR" "$@" modules >&2

# The guest helpers: static, without a C library, so the initramfs needs nothing else.
clang -static -nostdlib -ffreestanding -fno-stack-protector -O2 -Wall -Werror \
	-o "$OUT/fragment" "$TOP/tests/guest/fragment.c"

install -m 0644 "$KDIR/arch/x86/boot/bzImage" "$OUT/bzImage"
install -m 0644 "$MDIR/virtio_balloon_rs.ko" "$OUT/virtio_balloon_rs.ko"
install -m 0644 "$KDIR/drivers/virtio/virtio_balloon.ko" "$OUT/virtio_balloon.ko"
echo "$KDIR" >"$OUT/kernel-tree"
log "artifacts in ${OUT#$TOP/}/: bzImage virtio_balloon_rs.ko virtio_balloon.ko fragment"

#!/usr/bin/env bash
# Build (or reuse) our QEMU: Debian's QEMU 7.2 source package (Debian's patches applied) plus
# patches/qemu/, x86_64-softmmu only, with what the tests need and nothing else.
#
# The source comes from `apt-get source qemu` (a deb-src entry for the same suites is added when
# there is none). The build lives in the build cache, keyed by the source version, the patch
# series and this script; a finished build is never redone. The binary is installed as
# build/qemu/qemu-system-x86_64. It uses Debian's firmware (-L /usr/share/qemu -L
# /usr/share/seabios; the harness passes both) and has no default NIC (the harness runs with
# -nodefaults).
#
# Usage: scripts/qemu.sh   (prints the binary's path on stdout)
set -euo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${VBRS_CACHE:-/var/cache/virtio-balloon-rs}
JOBS=${JOBS:-$(nproc)}
log() { printf '[qemu] %s\n' "$*" >&2; }

# A deb-src entry for every suite the Debian sources list, so that apt-get source finds the
# source of the QEMU that is installed.
ensure_deb_src() {
	if grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; then
		return
	fi
	log "adding deb-src entries for Debian's suites"
	if [ -f /etc/apt/sources.list.d/debian.sources ]; then
		sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
			>/etc/apt/sources.list.d/vbrs-deb-src.sources
	fi
	if [ -f /etc/apt/sources.list ]; then
		sed -n 's/^deb \(.*debian.*\)/deb-src \1/p' /etc/apt/sources.list \
			>/etc/apt/sources.list.d/vbrs-deb-src.list
	fi
	apt-get update -q >/dev/null 2>&1 || true
}

srcver() {
	apt-cache showsrc qemu 2>/dev/null | sed -n 's/^Version: //p' | sort -V | tail -n 1
}

ensure_deb_src
ver=$(srcver)
if [ -z "$ver" ]; then
	apt-get update -q >/dev/null 2>&1 || true
	ver=$(srcver)
fi
[ -n "$ver" ] || { log "no source package for qemu (deb-src entries missing?)"; exit 1; }

key=$( {
	echo "$ver"
	cat "$TOP/scripts/qemu.sh"
	for p in "$TOP"/patches/qemu/*.patch; do [ -e "$p" ] && { echo "${p##*/}"; cat "$p"; }; done
} | sha256sum | cut -c1-16)
QDIR=$CACHE/qemu-$key
# One source and build tree, at a fixed path (a meson build directory cannot move): a new key
# reverses the series it has, applies the new one, and ninja rebuilds what changed.
WORK=$CACHE/qemu-work
OUT=$TOP/build/qemu
mkdir -p "$CACHE" "$OUT"
exec 9>"$CACHE/.lock-qemu"
flock 9
if [ ! -f "$QDIR/.vbrs-done" ]; then
	# The pristine source, fetched once per version.
	SRC=$CACHE/qemu-src-$ver
	if [ ! -f "$SRC/.vbrs-done" ]; then
		log "fetching the qemu $ver source package"
		rm -rf "$SRC" "$SRC.tmp"
		mkdir -p "$SRC.tmp"
		(cd "$SRC.tmp" && apt-get source -q --download-only "qemu=$ver" >/dev/null)
		(cd "$SRC.tmp" && dpkg-source -q -x ./*.dsc tree >/dev/null 2>&1)
		touch "$SRC.tmp/tree/.vbrs-done"
		mv "$SRC.tmp/tree" "$SRC"
		rm -rf "$SRC.tmp"
	fi
	# .vbrs-srcver marks a consistent tree: it is removed while patches are being changed.
	if [ "$(cat "$WORK/.vbrs-srcver" 2>/dev/null)" = "$ver" ]; then
		rm -f "$WORK/.vbrs-srcver"
		for p in $(ls "$WORK"/.vbrs-patches/*.patch 2>/dev/null | sort -r); do
			patch -d "$WORK" -p1 -s -f -R <"$p" >&2 || { log "reversing $p failed"; exit 1; }
		done
	else
		log "new source tree for qemu $ver"
		rm -rf "$WORK"
		cp -a "$SRC" "$WORK"
		rm -f "$WORK/.vbrs-done"
	fi
	rm -rf "$WORK/.vbrs-patches"
	mkdir -p "$WORK/.vbrs-patches"
	for p in "$TOP"/patches/qemu/*.patch; do
		[ -e "$p" ] || continue
		log "applying ${p##*/}"
		patch -d "$WORK" -p1 -s -f <"$p" >&2 || { log "patch $p failed"; exit 1; }
		cp "$p" "$WORK/.vbrs-patches/"
	done
	cd "$WORK"
	if [ ! -f build/build.ninja ]; then
		log "configuring qemu $ver (x86_64-softmmu)"
		./configure --target-list=x86_64-softmmu --prefix=/usr --disable-docs --disable-werror \
			--disable-gtk --disable-sdl --disable-vnc --disable-spice --disable-opengl \
			--disable-slirp --disable-tools --disable-guest-agent --disable-capstone \
			--disable-curses --disable-gnutls --disable-nettle --disable-gcrypt --disable-curl \
			--disable-libusb --disable-usb-redir --disable-virglrenderer --disable-xen \
			--disable-alsa --disable-pa --disable-oss --disable-jack --disable-sndio \
			--audio-drv-list= --disable-vhost-user-blk-server --disable-libssh --disable-rbd \
			--disable-glusterfs --disable-libiscsi --disable-libnfs --disable-smartcard \
			--disable-brlapi --disable-vde --disable-netmap --disable-linux-aio \
			--disable-linux-io-uring --disable-seccomp --disable-cap-ng --disable-attr \
			--disable-bpf --disable-lzo --disable-snappy --disable-bzip2 --disable-lzfse \
			--disable-zstd --disable-selinux --disable-multiprocess --disable-dbus-display \
			--enable-fdt=system >&2
	fi
	log "building qemu-system-x86_64 (about 9 minutes on 2 cores the first time)"
	# Our patches' unit tests too (run by `make test` with the golden vectors).
	UNIT=(tests/unit/test-virtio-balloon-records)
	ninja -C build -j"$JOBS" qemu-system-x86_64 "${UNIT[@]}" >&2
	echo "$ver" >"$WORK/.vbrs-srcver"
	rm -rf "$QDIR"
	mkdir -p "$QDIR"
	cp build/qemu-system-x86_64 "${UNIT[@]/#/build/}" "$QDIR/"
	touch "$QDIR/.vbrs-done"
	# Keep the binaries of the two newest keys.
	ls -td "$CACHE"/qemu-????????????????/ 2>/dev/null | tail -n +3 | xargs -r rm -rf
fi
install -m 0755 "$QDIR"/* "$OUT/"
echo "$OUT/qemu-system-x86_64"

#!/usr/bin/env bash
# Build (or reuse) the guest kernel: Debian's linux-source-6.12 + patches/linux/ + kernel/*.config.
#
# The tree lives in the build cache, keyed by the kernel source version, the patch series, the
# config fragments and this script. A finished tree is never rebuilt; a new key starts from a copy
# of the newest finished tree of the same flavour (reversing its patches, applying the new ones),
# so make only rebuilds what the change touched.
#
# Usage: scripts/kernel.sh [debug|bench]   (prints the kernel tree's path on stdout)
set -euo pipefail

FLAVOUR=${1:-${FLAVOUR:-debug}}
TOP=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${VBRS_CACHE:-/var/cache/virtio-balloon-rs}
TARBALL=/usr/src/linux-source-6.12.tar.xz
JOBS=${JOBS:-$(nproc)}
# shellcheck source=scripts/env.sh
. "$TOP/scripts/env.sh"

log() { printf '[kernel] %s\n' "$*" >&2; }

[ -f "$TOP/kernel/$FLAVOUR.config" ] || { log "unknown flavour $FLAVOUR"; exit 1; }
[ -f "$TARBALL" ] || { log "$TARBALL missing: run scripts/deps.sh"; exit 1; }

srcver=$(dpkg-query -W -f='${Version}' linux-source-6.12)
key=$( {
	echo "$srcver"
	cat "$TOP/kernel/base.config" "$TOP/kernel/$FLAVOUR.config" "$TOP/scripts/kernel.sh"
	for p in "$TOP"/patches/linux/*.patch; do [ -e "$p" ] && { echo "${p##*/}"; cat "$p"; }; done
	"$RUSTC" --version
} | sha256sum | cut -c1-16)
KDIR=$CACHE/linux-$FLAVOUR-$key
mkdir -p "$CACHE"
# One build per flavour at a time: a second caller waits, then finds the tree done.
exec 9>"$CACHE/.lock-$FLAVOUR"
flock 9
if [ -f "$KDIR/.vbrs-done" ]; then
	echo "$KDIR"
	exit 0
fi

apply_series() { # dir, series dir, [-R]
	local dir=$1 series=$2 rev=${3:-} p list
	list=$(ls "$series"/*.patch 2>/dev/null | sort ${rev:+-r}) || true
	for p in $list; do
		patch -d "$dir" -p1 -s -f $rev <"$p" >&2 || { log "patch ${rev:+(reverse) }$p failed"; return 1; }
	done
}

# Start from the newest finished tree of this flavour when there is one.
base=$(ls -td "$CACHE"/linux-"$FLAVOUR"-*/.vbrs-done 2>/dev/null | head -n 1 || true)
rm -rf "$KDIR"
if [ -n "$base" ] && base=$(dirname "$base") && [ "$(cat "$base/.vbrs-srcver")" = "$srcver" ]; then
	log "new key $key: starting from $(basename "$base")"
	# Copy under another name, so an interrupted copy never looks like a finished tree.
	rm -rf "$KDIR.tmp"
	cp -a "$base" "$KDIR.tmp"
	rm -f "$KDIR.tmp/.vbrs-done"
	mv "$KDIR.tmp" "$KDIR"
	apply_series "$KDIR" "$KDIR/.vbrs-patches" -R
else
	log "extracting $(basename "$TARBALL") ($srcver)"
	mkdir -p "$KDIR.tmp"
	tar -xf "$TARBALL" -C "$KDIR.tmp" --strip-components=1
	mv "$KDIR.tmp" "$KDIR"
	echo "$srcver" >"$KDIR/.vbrs-srcver"
fi
rm -rf "$KDIR/.vbrs-patches"
mkdir -p "$KDIR/.vbrs-patches"
cp "$TOP"/patches/linux/*.patch "$KDIR/.vbrs-patches/" 2>/dev/null || true
log "applying patches/linux ($(ls "$KDIR/.vbrs-patches" | wc -l) patches)"
apply_series "$KDIR" "$KDIR/.vbrs-patches"

cd "$KDIR"
MK=(make -s LLVM=1 RUSTC="$RUSTC" RUSTDOC="$RUSTDOC" BINDGEN="$BINDGEN" -j"$JOBS")
"${MK[@]}" tinyconfig >&2
./scripts/kconfig/merge_config.sh -m .config "$TOP/kernel/base.config" "$TOP/kernel/$FLAVOUR.config" >/dev/null
"${MK[@]}" olddefconfig >&2
missing=0
while IFS= read -r line; do
	case "$line" in CONFIG_*=n) opt=${line%%=*}; grep -q "^$opt=" .config && { log "config: $opt should be off"; missing=1; } ;;
	CONFIG_*) grep -qx "$line" .config || { log "config: $line did not stick"; missing=1; } ;; esac
done < <(cat "$TOP/kernel/base.config" "$TOP/kernel/$FLAVOUR.config")
[ $missing = 0 ] || { log "kernel config fragment not satisfied"; exit 1; }
"${MK[@]}" rustavailable >&2
log "building $FLAVOUR kernel in $KDIR (about 6 minutes on 2 cores the first time)"
"${MK[@]}" >&2
touch .vbrs-done
# Keep the two newest trees of each flavour.
ls -td "$CACHE"/linux-"$FLAVOUR"-*/ 2>/dev/null | tail -n +3 | xargs -r rm -rf
echo "$KDIR"

# Toolchain for the kernel build: Debian's rustc-web (it ships the core sources the kernel needs),
# bindgen-cli from cargo, LLVM from Debian. Sourced by the build scripts.
RUSTC=${RUSTC_KERNEL:-/usr/bin/rustc}
RUSTDOC=${RUSTDOC_KERNEL:-/usr/bin/rustdoc}
BINDGEN=${BINDGEN:-${CARGO_HOME:-$HOME/.cargo}/bin/bindgen}
export RUSTC RUSTDOC BINDGEN
CLIPPY_DRIVER=${CLIPPY_DRIVER_KERNEL:-/usr/bin/clippy-driver}
export CLIPPY_DRIVER

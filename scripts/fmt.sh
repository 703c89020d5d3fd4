#!/usr/bin/env bash
# rustfmt with the kernel's .rustfmt.toml for the module sources; cargo fmt for the host crates.
set -euo pipefail
TOP=$(cd "$(dirname "$0")/.." && pwd)
cd "$TOP"
check=${1:-}
rustfmt --edition 2021 --config-path .rustfmt.toml ${check:+--check} src/virtio_balloon_rs.rs
cargo fmt --all ${check:+-- --check}

//! Where things are: the checkout, the build artifacts, the cache and the run directories.

use std::path::PathBuf;

/// The checkout's root.
pub fn top() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.join("../..").canonicalize().unwrap_or(manifest)
}

/// The build artifacts of a kernel flavour (`build/` for debug, `build/bench/` for bench).
pub fn artifacts(flavour: &str) -> PathBuf {
    match flavour {
        "debug" => top().join("build"),
        other => top().join("build").join(other),
    }
}

/// The build cache, outside the checkout.
pub fn cache() -> PathBuf {
    std::env::var_os("VBRS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/virtio-balloon-rs"))
}

/// A fresh directory for one guest's sockets and logs.
pub fn run_dir(name: &str) -> PathBuf {
    let dir = top().join("build/runs").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

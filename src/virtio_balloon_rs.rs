// SPDX-License-Identifier: GPL-2.0

//! virtio-balloon-rs: a virtio memory balloon driver in Rust.
//!
//! Binds the virtio balloon device (`VIRTIO_ID_BALLOON`) in place of
//! `drivers/virtio/virtio_balloon.c` and follows the host's target by inflating and deflating.
//!
//! Layers, with dependencies pointing one way:
//! - [`balloon`]: the driver's logic, safe Rust only;
//! - [`abstractions`]: safe wrappers over the C API, where every `unsafe` lives;
//! - [`proto`]: wire formats, with no kernel dependency (also built and tested on the host).

mod abstractions;
mod balloon;
mod proto;

use abstractions::{debugfs::Dir, virtio::Registration};
use balloon::BalloonDriver;
use kernel::prelude::*;

module! {
    type: VirtioBalloonRs,
    name: "virtio_balloon_rs",
    author: "virtio-balloon-rs developers",
    description: "Virtio memory balloon driver in Rust",
    license: "GPL",
    // What `MODULE_DEVICE_TABLE(virtio, ...)` emits for the balloon (device id 5, any vendor):
    // udev loads the module for the device's modalias.
    alias: ["virtio:d00000005v*"],
}

struct VirtioBalloonRs {
    // Holds the top-level debugfs directory for every probe; the directory goes when its last
    // device directory does.
    _driver: Pin<KBox<Registration<BalloonDriver>>>,
}

impl kernel::Module for VirtioBalloonRs {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let debugfs = Dir::new(balloon::DEBUGFS_DIR)?;
        Ok(Self {
            _driver: Registration::new(module, debugfs)?,
        })
    }
}

// SPDX-License-Identifier: GPL-2.0

//! The balloon driver's logic, in safe Rust over [`crate::abstractions`].
//!
//! The host writes a target (`num_pages`) into the config space; a work item inflates
//! (allocates pages and reports their frame numbers on the inflate queue) or deflates (reports
//! frame numbers on the deflate queue, then frees the pages) until the balloon holds the target,
//! and reports its size in `actual`. Frame numbers travel 256 to a descriptor, with many
//! descriptors in flight per notification.

mod counters;
mod device;
mod hint;

use crate::abstractions::virtio::{self, Borrowed, Device};
use crate::proto::features;
use kernel::{c_str, prelude::*, str::CStr, sync::Arc};

pub(crate) use device::Balloon;

/// Name of the top-level debugfs directory, with one directory per device below it.
pub(crate) const DEBUGFS_DIR: &CStr = c_str!("virtio_balloon_rs");

/// The virtio driver.
pub(crate) struct BalloonDriver;

#[vtable]
impl virtio::Driver for BalloonDriver {
    type Data = Arc<Balloon>;

    const NAME: &'static CStr = c_str!("virtio_balloon_rs");
    const DEVICE_ID: u32 = features::DEVICE_ID_BALLOON;
    const FEATURES: &'static [u32] = &[
        features::MUST_TELL_HOST,
        // Negotiated so that the queue numbering matches devices that always have a stats
        // queue (QEMU); the driver does not send statistics yet, so the queue stays idle.
        features::STATS_VQ,
        features::FREE_PAGE_HINT,
    ];

    fn validate(dev: &Device) -> Result {
        // The balloon reports guest-physical frame numbers, never DMA addresses.
        dev.clear_feature(features::ACCESS_PLATFORM);
        Ok(())
    }

    fn probe(dev: &Device) -> Result<Arc<Balloon>> {
        Balloon::new(dev)
    }

    fn ready(_dev: &Device, data: Borrowed<'_, Self>) {
        Arc::from(data).schedule();
    }

    fn remove(_dev: &Device, data: Borrowed<'_, Self>) {
        data.shutdown();
    }

    fn config_changed(_dev: &Device, data: Borrowed<'_, Self>) {
        Arc::from(data).config_changed();
    }

    fn vq_done(data: Borrowed<'_, Self>, _index: u32) {
        data.host_done();
    }
}

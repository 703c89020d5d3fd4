// SPDX-License-Identifier: GPL-2.0

//! The balloon driver's logic, in safe Rust over [`crate::abstractions`] (the compiler refuses
//! `unsafe` here).
//!
//! Where things happen:
//! - `device.rs`: one device's lifecycle (probe, work items, suspend and resume, removal);
//! - `target.rs`: inflate and deflate, following the host's target;
//! - `hint.rs`: free page hinting rounds during live migration;
//! - `stats.rs`: memory statistics for the host;
//! - `events.rs`: what those share (device, config changes, stop flag, wakeup, counters);
//! - `pool.rs`: the buffers of a queue; `counters.rs`: the debugfs counters.

#![deny(unsafe_code)]

mod counters;
mod device;
mod events;
mod hint;
mod pool;
mod stats;
mod target;

use crate::abstractions::{
    debugfs::Dir,
    virtio::{self, Binding, Bound, Core, Device, QueueSpec, Queues},
};
use crate::proto::features;
use kernel::{c_str, prelude::*, str::CStr, sync::Arc};

pub(crate) use device::Balloon;

/// Name of the top-level debugfs directory, with one directory per device below it.
pub(crate) const DEBUGFS_DIR: &CStr = c_str!("virtio_balloon_rs");

/// Positions of the balloon's queues in [`BalloonDriver::QUEUES`].
const INFLATE_Q: usize = 0;
const DEFLATE_Q: usize = 1;
const STATS_Q: usize = 2;
const FREE_PAGE_Q: usize = 3;

/// The virtio driver.
pub(crate) struct BalloonDriver;

#[vtable]
impl virtio::Driver for BalloonDriver {
    type Data = Arc<Balloon>;
    type Context = Arc<Dir>;

    const NAME: &'static CStr = c_str!("virtio_balloon_rs");
    const DEVICE_ID: u32 = features::DEVICE_ID_BALLOON;
    const FEATURES: &'static [u32] = &[
        features::MUST_TELL_HOST,
        features::STATS_VQ,
        features::FREE_PAGE_HINT,
        features::PAGE_RANGES,
    ];
    const QUEUES: &'static [QueueSpec] = &[
        QueueSpec {
            name: c_str!("inflate"),
            feature: None,
        },
        QueueSpec {
            name: c_str!("deflate"),
            feature: None,
        },
        QueueSpec {
            name: c_str!("stats"),
            feature: Some(features::STATS_VQ),
        },
        QueueSpec {
            name: c_str!("free_page_vq"),
            feature: Some(features::FREE_PAGE_HINT),
        },
    ];

    fn validate(dev: &Device<Core>) -> Result {
        // The balloon reports guest-physical frame numbers, never DMA addresses.
        dev.clear_feature(features::ACCESS_PLATFORM);
        // Without indirect descriptors, queueing a buffer never allocates (a hint buffer has
        // many entries).
        dev.clear_feature(features::RING_INDIRECT_DESC);
        Ok(())
    }

    fn probe(
        dev: &Device<Core>,
        debugfs: &Arc<Dir>,
        binding: &Arc<Binding>,
        queues: &mut Queues<'_>,
    ) -> Result<Arc<Balloon>> {
        Balloon::new(dev, debugfs, binding, queues)
    }

    fn ready(_dev: &Device<Bound>, data: &Arc<Balloon>) {
        data.start();
    }

    fn remove(_dev: &Device<Bound>, data: &Arc<Balloon>) {
        data.shutdown();
    }

    fn freeze(_dev: &Device<Core>, data: &Arc<Balloon>) -> Result {
        data.freeze();
        Ok(())
    }

    fn restore(_dev: &Device<Core>, data: &Arc<Balloon>) -> Result {
        data.restore();
        Ok(())
    }

    fn config_changed(_dev: &Device, data: &Arc<Balloon>) {
        data.config_changed();
    }

    fn vq_done(data: &Arc<Balloon>, queue: usize) {
        data.host_done(queue);
    }
}

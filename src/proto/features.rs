// SPDX-License-Identifier: GPL-2.0

//! Feature bits of the virtio balloon device (virtio spec 5.5.3) that the driver negotiates.

/// The host must be told before a page leaves the balloon.
pub(crate) const MUST_TELL_HOST: u32 = 0;

/// The device has a statistics queue (queue 2, before the free page queue).
pub(crate) const STATS_VQ: u32 = 1;

/// The device asks for hints of free guest memory during migration (free page queue).
pub(crate) const FREE_PAGE_HINT: u32 = 3;

/// Page records on the inflate, deflate and free page queues, and the config field
/// `ranges_min_order` (this project's extension, `docs/spec/page-ranges.md`).
pub(crate) const PAGE_RANGES: u32 = 16;

/// Transport feature: indirect descriptors. Not negotiated: with them, queueing a buffer of several
/// entries allocates a descriptor table.
pub(crate) const RING_INDIRECT_DESC: u32 = 28;

/// Transport feature: the device follows virtio 1.0 (little-endian statistics).
pub(crate) const VERSION_1: u32 = 32;

/// Transport feature: the device uses the platform DMA API (never negotiated by a balloon, which
/// reports guest-physical frame numbers).
pub(crate) const ACCESS_PLATFORM: u32 = 33;

/// Virtio device id of the memory balloon.
pub(crate) const DEVICE_ID_BALLOON: u32 = 5;

// SPDX-License-Identifier: GPL-2.0

//! The buffers of one queue that are not on it.

use super::counters;
use crate::abstractions::virtio::Buffer;
use core::sync::atomic::AtomicU64;
use kernel::{
    alloc::{flags::GFP_KERNEL, KBox, KVec},
    prelude::*,
};

/// Makes one buffer of a pool.
pub(crate) type MakeBuf<B> = fn() -> Result<KBox<B>>;

/// A fixed set of buffers for one queue, made at probe, so that queueing and taking back never
/// allocate. When the adapter takes queued buffers back (suspend), they are dropped; the pool
/// makes new ones on demand, up to its size counting those on the queue, and counts them.
pub(crate) struct Pool<B: Buffer> {
    /// `None`: that buffer is on the queue (or was lost at a suspend).
    slots: KVec<Option<KBox<B>>>,
    make: MakeBuf<B>,
}

impl<B: Buffer> Pool<B> {
    /// A pool of `size` buffers made by `make`.
    pub(crate) fn new(size: usize, make: MakeBuf<B>) -> Result<Self> {
        let mut slots = KVec::with_capacity(size, GFP_KERNEL)?;
        for _ in 0..size {
            slots.push(Some(make()?), GFP_KERNEL)?;
        }
        Ok(Self { slots, make })
    }

    /// Buffers in the pool, on the queue or not.
    pub(crate) fn size(&self) -> usize {
        self.slots.len()
    }

    /// A buffer, if the pool has one; made anew (counted in `made`) when fewer than the pool's
    /// size exist, counting the `in_flight` ones on the queues the pool serves.
    pub(crate) fn take(&mut self, in_flight: usize, made: &AtomicU64) -> Option<KBox<B>> {
        if let Some(buf) = self.slots.iter_mut().find_map(Option::take) {
            return Some(buf);
        }
        if in_flight >= self.slots.len() {
            return None;
        }
        let buf = (self.make)().ok()?;
        counters::add(made, 1);
        Some(buf)
    }

    /// Takes a buffer back.
    pub(crate) fn put(&mut self, buf: KBox<B>) {
        if let Some(slot) = self.slots.iter_mut().find(|slot| slot.is_none()) {
            *slot = Some(buf);
        }
    }
}

// SPDX-License-Identifier: GPL-2.0

//! Memory statistics on the statistics queue (`VIRTIO_BALLOON_F_STATS_VQ`).
//!
//! The queue works in reverse: the driver queues one buffer of statistics at probe (and after
//! resume); the host keeps it until it wants fresh values, then uses it; the driver gathers the
//! statistics again and queues the buffer anew. A host that never asks keeps the one buffer; a
//! host that asks quickly gets one refill per used buffer, from a work item.

use super::counters;
use super::events::{Events, WAKE_STATS};
use crate::abstractions::{
    mm::{mem_stats, MemStats},
    virtio::{Buffer, Payload, Virtqueue},
};
use crate::proto::stats;
use kernel::{
    alloc::{flags::GFP_KERNEL, KBox},
    new_mutex,
    prelude::*,
    sync::Mutex,
};

/// The statistics buffer.
pub(crate) struct StatsBuf(stats::StatsBuf);

impl Buffer for StatsBuf {
    fn payload(&mut self) -> Payload<'_> {
        Payload::Out(self.0.as_bytes())
    }
}

/// Bytes in `pages` pages.
fn bytes(pages: u64) -> u64 {
    pages.saturating_mul(kernel::page::PAGE_SIZE as u64)
}

impl StatsBuf {
    fn new_boxed() -> Result<KBox<Self>> {
        Ok(KBox::new(Self(stats::StatsBuf::new()), GFP_KERNEL)?)
    }

    /// Fills the buffer as the C driver does: the VM events (when the kernel counts them), then
    /// free, total and available memory and the page cache.
    fn fill(&mut self, m: &MemStats, le: bool) {
        let b = &mut self.0;
        b.clear();
        let events = [
            (stats::SWAP_IN, bytes(m.swap_in)),
            (stats::SWAP_OUT, bytes(m.swap_out)),
            (stats::MAJFLT, m.major_faults),
            (stats::MINFLT, m.minor_faults),
            (stats::OOM_KILL, m.oom_kills),
            (stats::ALLOC_STALL, m.alloc_stalls),
            (stats::ASYNC_SCAN, bytes(m.scan_async)),
            (stats::DIRECT_SCAN, bytes(m.scan_direct)),
            (stats::ASYNC_RECLAIM, bytes(m.reclaim_async)),
            (stats::DIRECT_RECLAIM, bytes(m.reclaim_direct)),
        ];
        let hugetlb = m
            .hugetlb
            .into_iter()
            .flat_map(|(a, f)| [(stats::HTLB_PGALLOC, a), (stats::HTLB_PGFAIL, f)]);
        let memory = [
            (stats::MEMFREE, bytes(m.free)),
            (stats::MEMTOT, bytes(m.total)),
            (stats::AVAIL, bytes(m.available)),
            (stats::CACHES, bytes(m.caches)),
        ];
        let entries = Iterator::chain(Iterator::chain(events.into_iter(), hugetlb), memory);
        for (tag, value) in entries {
            // At most 16 entries: the buffer has room for every tag.
            if !b.push(tag, value, le) {
                break;
            }
        }
    }
}

struct StatsState {
    vq: Virtqueue<StatsBuf>,
    /// The buffer, when it is not on the queue.
    spare: Option<KBox<StatsBuf>>,
    /// Little-endian entries (virtio 1.0), else the guest's order (legacy).
    le: bool,
}

/// The part of a balloon that answers the host's requests for statistics.
#[pin_data]
pub(crate) struct StatsPart {
    #[pin]
    state: Mutex<StatsState>,
}

impl StatsPart {
    /// Sets up the statistics queue.
    pub(crate) fn new(vq: Virtqueue<StatsBuf>, le: bool) -> Result<impl PinInit<Self>> {
        let spare = Some(StatsBuf::new_boxed()?);
        Ok(pin_init!(Self {
            state <- new_mutex!(StatsState { vq, spare, le }),
        }))
    }

    /// Queues the buffer with fresh statistics (at probe and after resume: the host expects one
    /// buffer from the start). After a suspend took the old buffer back, a new one is made.
    pub(crate) fn start(&self, ev: &Events) {
        let mut st = self.state.lock();
        if st.vq.in_flight() > 0 {
            return;
        }
        let buf = match st.spare.take() {
            Some(buf) => buf,
            None => match StatsBuf::new_boxed() {
                Ok(buf) => {
                    counters::add(&ev.counters().buffers_made, 1);
                    buf
                }
                Err(_) => return,
            },
        };
        Self::send(ev, &mut st, buf);
    }

    /// The stats work item: the host used the buffer; refill it and queue it again.
    pub(crate) fn refill(&self, ev: &Events) {
        ev.wake_done(WAKE_STATS);
        let mut st = self.state.lock();
        if let Some((buf, len)) = st.vq.get_used() {
            if len != 0 && ev.host_error() {
                pr_warn!(
                    "virtio{}: host reports {} bytes written to the statistics buffer; ignored\n",
                    ev.index,
                    len
                );
            }
            counters::add(&ev.counters().stats_requests, 1);
            if ev.stopping() {
                st.spare = Some(buf);
            } else {
                Self::send(ev, &mut st, buf);
            }
        }
        drop(st);
        ev.wake_finish();
    }

    fn send(ev: &Events, st: &mut StatsState, mut buf: KBox<StatsBuf>) {
        buf.fill(&mem_stats(), st.le);
        match st.vq.add(buf) {
            Ok(()) => {
                st.vq.kick();
                counters::add(&ev.counters().stats_sent, 1);
            }
            Err((_, buf)) => st.spare = Some(buf),
        }
    }
}

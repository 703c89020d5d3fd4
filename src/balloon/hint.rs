// SPDX-License-Identifier: GPL-2.0

//! Free page hinting: during live migration the host asks, round after round, for the guest's
//! free memory, and skips sending what it is told is free.
//!
//! A round starts when `free_page_hint_cmd_id` shows a new id: the driver sends the id on the
//! free page queue, then free blocks that mm isolates for it (see
//! [`crate::abstractions::free_area`]), many blocks per buffer, and closes the round with the
//! stop id. A block stays isolated, owned by its buffer, until the host has used the buffer, so
//! the guest cannot write a page while the host acts on a hint that names it (on KVM such a
//! write can be lost). At most [`HINT_BUFFERS`] buffers of at most [`HINT_BUFFER_PAGES`] pages
//! are out at once: the guest's free memory never dips by more than 64 MiB, unlike the C
//! driver, which allocates 4 MiB blocks until none is left. A new id, the stop id, any other
//! config change, device removal or an unresponsive host end a round early.

use super::counters;
use super::device::{elapsed_ns, Balloon};
use crate::abstractions::{
    free_area::{HintBlocks, HintWalk, MAX_BLOCK_PAGES},
    virtio::{Buffer, Payload, Virtqueue},
    wait::ms_to_jiffies,
};
use crate::proto::{
    config,
    hint::{Action, Rounds, CMD_ID_STOP},
};
use core::sync::atomic::Ordering;
use kernel::{
    alloc::{flags::GFP_KERNEL, KBox, KVec},
    prelude::*,
    time::Ktime,
};

/// Buffers on the free page queue, at most (also bounded by the ring size).
pub(crate) const HINT_BUFFERS: usize = 4;
/// Pages one hint buffer names, at most (16 MiB). With [`HINT_BUFFERS`], at most 64 MiB of free
/// memory is isolated at any moment.
pub(crate) const HINT_BUFFER_PAGES: u64 = 4096;
/// How long the host may take to use a hint buffer before the round is given up.
const HINT_HOST_TIMEOUT_MS: u32 = 5_000;

/// A buffer of the free page queue: a command id (out) or free blocks (in), which it owns.
pub(crate) struct HintBuf {
    cmd: [u8; 4],
    is_cmd: bool,
    blocks: KBox<HintBlocks>,
}

impl Buffer for HintBuf {
    fn payload(&mut self) -> Payload<'_> {
        if self.is_cmd {
            Payload::Out(&self.cmd)
        } else {
            Payload::FreePages(&mut self.blocks)
        }
    }
}

/// The free page queue and what goes with it, under the device's hint mutex.
pub(crate) struct HintState {
    vq: Virtqueue<HintBuf>,
    /// Buffers not on the queue (`None`: that one is on the queue).
    spare: KVec<Option<KBox<HintBuf>>>,
    rounds: Rounds,
    /// Pages isolated in buffers on the queue.
    isolated: u64,
}

impl HintState {
    /// Sets up hinting on the free page queue.
    pub(crate) fn new(vq: Virtqueue<HintBuf>) -> Result<Self> {
        let n = HINT_BUFFERS.min(vq.ring_size() as usize).max(2);
        let mut spare = KVec::with_capacity(n, GFP_KERNEL)?;
        for _ in 0..n {
            let buf = HintBuf {
                cmd: [0; 4],
                is_cmd: false,
                blocks: HintBlocks::new_boxed()?,
            };
            spare.push(Some(KBox::new(buf, GFP_KERNEL)?), GFP_KERNEL)?;
        }
        Ok(Self {
            vq,
            spare,
            rounds: Rounds::new(),
            isolated: 0,
        })
    }

    fn take(&mut self) -> Option<KBox<HintBuf>> {
        self.spare.iter_mut().find_map(Option::take)
    }

    /// Takes a buffer back: its blocks go back to the allocator.
    fn put(&mut self, mut buf: KBox<HintBuf>) {
        buf.blocks.release();
        if let Some(slot) = self.spare.iter_mut().find(|slot| slot.is_none()) {
            *slot = Some(buf);
        }
    }
}

/// Why a round ended.
#[derive(PartialEq, Eq)]
enum RoundEnd {
    /// Every free list was walked.
    Complete,
    /// The host changed the command id (or another config field), or the device goes away.
    Interrupted,
    /// The host did not use buffers in time, or refused one.
    HostTrouble,
}

impl Balloon {
    /// The hint work item: follows the host's command id.
    pub(crate) fn follow_hints(&self) {
        let mut guard = self.hint.lock();
        let Some(st) = guard.as_mut() else {
            return;
        };
        loop {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            self.reclaim_hints(st);
            let raw = self.dev.read_config_le32(config::FREE_PAGE_HINT_CMD_ID);
            match st.rounds.on_command(raw) {
                Action::Nothing | Action::End => return,
                Action::Done => {
                    // The host no longer needs hints; the driver holds no memory for them.
                    counters::add(&self.counters().hint_done, 1);
                    return;
                }
                Action::Start(id) => self.hint_round(st, id),
            }
        }
    }

    /// Takes back the buffers the host has used: the host is done with their blocks, which go
    /// back to the allocator.
    fn reclaim_hints(&self, st: &mut HintState) {
        while let Some((buf, len)) = st.vq.get_used() {
            self.hint_used(st, buf, len);
        }
    }

    /// A hint buffer came back from the host.
    fn hint_used(&self, st: &mut HintState, buf: KBox<HintBuf>, len: u32) {
        self.check_hint_used(len);
        st.isolated = st.isolated.saturating_sub(buf.blocks.pages());
        st.put(buf);
    }

    /// Checks the length the host reports for a used hint buffer: hints are never written, and
    /// QEMU reports 1 byte for every element, so anything above 1 is a host error.
    fn check_hint_used(&self, len: u32) {
        if len > 1 && self.host_error() {
            pr_warn!(
                "virtio{}: host reports {} bytes written to a free page hint; ignored\n",
                self.index,
                len
            );
        }
    }

    /// A spare buffer, waiting for the host to use one if all are queued. With `round`, the wait
    /// also ends when the host moves on from that round (the command id changed).
    fn hint_buffer(
        &self,
        st: &mut HintState,
        round: Option<u32>,
    ) -> core::result::Result<KBox<HintBuf>, RoundEnd> {
        loop {
            self.reclaim_hints(st);
            if let Some(buf) = st.take() {
                return Ok(buf);
            }
            // Buffers queued just before a live migration sit on the destination's ring unseen:
            // the source had stopped polling with notifications off. Tell the device to look.
            st.vq.notify();
            let start = Ktime::ktime_get();
            let seq = self.config_seq.load(Ordering::Acquire);
            let mut used = None;
            self.host_wq
                .wait_timeout(ms_to_jiffies(HINT_HOST_TIMEOUT_MS), || {
                    used = st.vq.get_used();
                    used.is_some()
                        || self.stopping.load(Ordering::Acquire)
                        || self.config_seq.load(Ordering::Acquire) != seq
                });
            counters::add(&self.counters().host_wait_ns, elapsed_ns(start));
            if let Some((buf, len)) = used {
                self.hint_used(st, buf, len);
                continue;
            }
            if self.stopping.load(Ordering::Acquire) {
                return Err(RoundEnd::Interrupted);
            }
            if self.config_seq.load(Ordering::Acquire) != seq {
                // Read outside the wait: config reads may sleep.
                match round {
                    Some(id) if self.dev.read_config_le32(config::FREE_PAGE_HINT_CMD_ID) != id => {
                        return Err(RoundEnd::Interrupted)
                    }
                    _ => continue,
                }
            }
            if self.host_error() {
                pr_warn!(
                    "virtio{}: host did not use free page hints for {} ms; ending the round\n",
                    self.index,
                    HINT_HOST_TIMEOUT_MS
                );
            }
            return Err(RoundEnd::HostTrouble);
        }
    }

    /// Sends a command id: the round's id (`round` is `Some(id)`), or the stop id.
    fn send_cmd(&self, st: &mut HintState, id: u32, round: Option<u32>) -> RoundEnd {
        let mut buf = match self.hint_buffer(st, round) {
            Ok(buf) => buf,
            Err(end) => return end,
        };
        buf.cmd = id.to_le_bytes();
        buf.is_cmd = true;
        match st.vq.add(buf) {
            Ok(()) => {
                st.vq.kick();
                RoundEnd::Complete
            }
            Err((_, mut buf)) => {
                buf.is_cmd = false;
                st.put(buf);
                RoundEnd::HostTrouble
            }
        }
    }

    /// One round: the id, the free ranges, the stop id.
    fn hint_round(&self, st: &mut HintState, id: u32) {
        let c = self.counters();
        let start = Ktime::ktime_get();
        let seq = self.config_seq.load(Ordering::Acquire);
        counters::add(&c.hint_rounds, 1);
        let min_order = c
            .hint_min_order
            .load(Ordering::Relaxed)
            .min(u64::from(u32::MAX)) as u32;
        let mut walk = HintWalk::new(min_order);
        // Asked between two holds of a zone lock: has the round been overtaken?
        let interrupted = || {
            self.stopping.load(Ordering::Acquire)
                || (self.config_seq.load(Ordering::Acquire) != seq
                    && self.dev.read_config_le32(config::FREE_PAGE_HINT_CMD_ID) != id)
        };
        let mut end = self.send_cmd(st, id, Some(id));
        while end == RoundEnd::Complete && !walk.is_done() {
            let mut buf = match self.hint_buffer(st, Some(id)) {
                Ok(buf) => buf,
                Err(e) => {
                    end = e;
                    break;
                }
            };
            buf.is_cmd = false;
            fill(&mut buf.blocks, &mut walk, interrupted);
            if buf.blocks.is_empty() {
                st.put(buf);
                if !walk.is_done() {
                    end = RoundEnd::Interrupted;
                }
                break;
            }
            let (pages, ranges) = (buf.blocks.pages(), buf.blocks.merge() as u64);
            match st.vq.add(buf) {
                Ok(()) => {
                    st.vq.kick();
                    st.isolated += pages;
                    c.hint_isolated_max
                        .fetch_max(st.isolated, Ordering::Relaxed);
                    counters::add(&c.hint_ranges, ranges);
                    counters::add(&c.hint_pages, pages);
                    counters::add(&c.hint_descs, 1);
                }
                Err((_, buf)) => {
                    st.put(buf);
                    end = RoundEnd::HostTrouble;
                }
            }
            if end == RoundEnd::Complete && interrupted() {
                end = RoundEnd::Interrupted;
            }
        }
        // Close the round whichever way it ended (a host that moved on ignores it).
        if !self.stopping.load(Ordering::Acquire) {
            self.send_cmd(st, CMD_ID_STOP, None);
        }
        st.rounds.finish();
        let stats = walk.stats();
        let ns = elapsed_ns(start);
        counters::set(&c.hint_round_ns, ns);
        counters::add(&c.hint_round_ns_total, ns);
        counters::add(&c.hint_lock_holds, stats.holds);
        counters::add(&c.hint_lock_ns_total, stats.total_hold_ns);
        counters::add(&c.hint_restarts, stats.restarts);
        counters::add(&c.hint_low_zones, stats.low_zones);
        c.hint_lock_max_ns
            .fetch_max(stats.max_hold_ns, Ordering::Relaxed);
        if end != RoundEnd::Complete {
            counters::add(&c.hint_aborts, 1);
        }
        counters::add(&c.hint_ended, 1);
    }
}

/// Fills `blocks` from `walk` until it holds [`HINT_BUFFER_PAGES`] (no more block of the
/// largest order fits), its slots are full, the walk is over or `interrupted` says so (asked
/// between two holds of a zone lock, never while one is held).
fn fill(blocks: &mut HintBlocks, walk: &mut HintWalk, interrupted: impl Fn() -> bool) {
    while !walk.is_done()
        && !blocks.is_full()
        && HINT_BUFFER_PAGES - blocks.pages() >= MAX_BLOCK_PAGES
        && !interrupted()
    {
        // Nothing taken: the zone ended or was at its low watermark (the walk moved on), or
        // the next block does not fit (send what is held).
        if blocks.isolate(walk, HINT_BUFFER_PAGES) == 0 && !blocks.is_empty() {
            break;
        }
    }
}

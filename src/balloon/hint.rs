// SPDX-License-Identifier: GPL-2.0

//! Free page hinting: during live migration the host asks, round after round, for the guest's
//! free memory, and skips sending what it is told is free.
//!
//! A round starts when `free_page_hint_cmd_id` shows a new id: the driver sends the id on the
//! free page queue, then free blocks that mm isolates for it (see
//! [`crate::abstractions::free_area`]), many blocks per buffer, and closes the round with the
//! stop id. A block stays isolated, owned by its buffer, until the host has used the buffer, so
//! the guest cannot write a page while the host acts on a hint that names it (on KVM such a
//! write can be lost). At most [`HINT_BUFFERS`] buffers of at most [`buffer_pages`] pages are
//! out at once: the guest's free memory never dips by more than half of the guest's memory
//! (64 MiB at least, 1 GiB at most), nor a round by more than half of the memory free when it
//! started, unlike the C driver, which allocates 4 MiB blocks until none is left. At a zone's
//! high watermark a round waits for the host to give blocks back, or leaves the zone when it
//! holds none. A new id or `DONE` (read after a config change), device removal, suspend or an
//! unresponsive host end a round early; the stop id only once the host moves on (see
//! [`overtaken`]). With `VIRTIO_BALLOON_F_PAGE_RANGES` a buffer names its
//! blocks in page records (one device-readable descriptor) instead of being the blocks
//! themselves; the ownership rule is the same.

use super::counters::{self, RecordTally};
use super::events::Events;
use super::pool::{MakeBuf, Pool};
use super::target::elapsed_ns;
use crate::abstractions::{
    free_area::{HintBlocks, HintWalk, MAX_BLOCKS, MAX_BLOCK_PAGES},
    mm,
    virtio::{balloon as cfg, Buffer, OutBuf, Payload, Virtqueue},
    wait::ms_to_jiffies,
};
use crate::proto::{
    hint::{overtaken, Action, Rounds, CMD_ID_STOP},
    records::{encode, max_bytes},
};
use core::{
    cell::Cell,
    sync::atomic::{AtomicU64, Ordering},
};
use kernel::{
    alloc::{flags::GFP_KERNEL, KBox},
    new_mutex,
    prelude::*,
    sync::Mutex,
    time::Ktime,
};

/// Buffers on the free page queue, at most (also bounded by the ring size).
pub(crate) const HINT_BUFFERS: usize = 4;
/// Pages one hint buffer names at most, whatever the guest's size: 16 MiB and 256 MiB.
const BUFFER_PAGES_MIN: u64 = 4096;
const BUFFER_PAGES_MAX: u64 = 65536;

/// Pages one hint buffer names at most in a guest of `total` pages: with [`HINT_BUFFERS`]
/// buffers, half of the guest's memory is isolated at any moment, at most (64 MiB at least,
/// 1 GiB at most). Fewer, smaller buffers make the round slower than the migration's
/// first pass over memory: QEMU applies each hint under the lock its migration thread holds for
/// up to 50 ms at a time, and long scatter-gather entries get more done per turn
/// (docs/free-page-hinting.md).
pub(crate) fn buffer_pages(total: u64) -> u64 {
    (total / (2 * HINT_BUFFERS as u64)).clamp(BUFFER_PAGES_MIN, BUFFER_PAGES_MAX)
}

/// Calls of the walk that find no block, in a row, after which a buffer is sent as it is (16
/// holds of up to 512 steps each over pageblocks or lists without a free block).
const FLUSH_AFTER_EMPTY: u32 = 16;

/// How long the host may take to use a hint buffer before the round is given up.
const HINT_HOST_TIMEOUT_MS: u32 = 5_000;

/// Bytes of a page-record hint buffer (order 3).
const HINT_RECORD_BYTES: usize = 32768;
/// Blocks a page-record hint buffer names at most: 128 times what a buffer of the standard
/// protocol may hold (one ring descriptor each), so that a buffer of single pages names 64 MiB
/// (as [`buffer_pages`] allows a 512 MiB guest), which counts when free memory is fragmented:
/// QEMU waits for its migration bitmap lock once per buffer (or per few buffers), up to 50 ms.
/// Single pages every other frame take an eighth of a byte each as a bitmap, but single pages
/// 32 or more frames apart take 4 bytes each, so only about 8000 of those fit: blocks whose
/// records do not fit in [`HINT_RECORD_BYTES`] wait, still isolated, for the next buffer
/// ([`HintState::carry`]; [`MAX_BLOCKS`] blocks, one isolation's worth, always fit). The
/// holder's arrays take 32 bytes a block (512 KiB; [`HINT_BUFFERS`] buffers and the carry:
/// 2.5 MiB) (docs/free-page-hinting.md).
const RECORD_BLOCKS: usize = 128 * MAX_BLOCKS;
const _: () = assert!(max_bytes(MAX_BLOCKS) <= HINT_RECORD_BYTES);

/// The round a hint buffer was sent in.
#[derive(Clone, Copy)]
struct SentIn {
    /// The round's command id.
    id: u32,
    /// The config change count before that id was read.
    seq: u64,
}

/// A buffer of the free page queue: a command id (out), or free blocks, which it owns, given as
/// themselves (in) or named by page records (out).
pub(crate) struct HintBuf {
    cmd: [u8; 4],
    is_cmd: bool,
    blocks: HintBlocks,
    /// With page records: the buffer and the bytes of it the records take.
    records: Option<(OutBuf, usize)>,
    /// What the sealed records hold, counted once the buffer is queued.
    tally: Option<RecordTally>,
    /// Once queued: the round the blocks were sent in.
    round: Option<SentIn>,
}

impl Buffer for HintBuf {
    fn payload(&mut self) -> Payload<'_> {
        match &self.records {
            _ if self.is_cmd => Payload::Out(&self.cmd),
            Some((out, len)) => Payload::OutBuf(out, *len),
            None => Payload::In(&mut self.blocks),
        }
    }
}

impl HintBuf {
    /// A buffer of the standard protocol.
    fn new_boxed() -> Result<KBox<Self>> {
        Ok(KBox::new(
            Self {
                cmd: [0; 4],
                is_cmd: false,
                blocks: HintBlocks::new(MAX_BLOCKS, true)?,
                records: None,
                tally: None,
                round: None,
            },
            GFP_KERNEL,
        )?)
    }

    /// A buffer that names its blocks in page records.
    fn new_records() -> Result<KBox<Self>> {
        Ok(KBox::new(
            Self {
                cmd: [0; 4],
                is_cmd: false,
                blocks: HintBlocks::new(RECORD_BLOCKS, false)?,
                records: Some((OutBuf::new(HINT_RECORD_BYTES)?, 0)),
                tally: None,
                round: None,
            },
            GFP_KERNEL,
        )?)
    }

    /// Encodes the blocks held into the page records, if the buffer has them; blocks whose
    /// records do not fit move to `carry`, or go back to the allocator if it is full (their
    /// pages are counted in `unsent`). False if none fit.
    fn seal(&mut self, carry: &mut HintBlocks, unsent: &AtomicU64) -> bool {
        let Some((out, len)) = &mut self.records else {
            return true;
        };
        let enc = encode(self.blocks.ranges(), out.as_mut_slice());
        if enc.ranges == 0 {
            return false;
        }
        counters::add(unsent, self.blocks.keep_ranges(enc.ranges, carry));
        *len = enc.bytes;
        let pages = self.blocks.pages();
        self.tally = Some(RecordTally::new(&enc, self.blocks.ranges(), pages));
        true
    }
}

/// The free page queue and what goes with it, under the part's mutex.
struct HintState {
    vq: Virtqueue<HintBuf>,
    /// Buffers not on the queue.
    pool: Pool<HintBuf>,
    rounds: Rounds,
    /// Pages isolated in buffers on the queue.
    isolated: u64,
    /// Blocks a page-record buffer had no room for in its records, isolated, for the next
    /// buffer of the round (which takes them before it takes blocks from the walk); given back
    /// when the round ends. They came out of a buffer of at most [`buffer_pages`] pages, of
    /// which the part sent is on the queue, so the buffers and the carry together still hold
    /// at most [`HintState::bound_pages`]. Empty with the standard protocol.
    carry: HintBlocks,
    /// Pages one buffer names at most ([`buffer_pages`]).
    buffer_pages: u64,
    /// Blocks one buffer holds at most: each takes a ring descriptor (no indirect descriptors).
    max_blocks: usize,
    /// Command ids are little-endian (virtio 1.0), else in the guest's order (legacy).
    le: bool,
    /// The host said it was done with hints (or the driver was probed or resumed) and no walk
    /// has started since: the next one forgets every earlier hint (mm starts a new hinting
    /// epoch). Later walks, even after a round that ended early, pass over the blocks hinted in
    /// this epoch: the host acted on those hints in this migration.
    new_epoch: bool,
}

impl HintState {
    /// Pages isolated at any moment, at most: every buffer in flight, each full.
    fn bound_pages(&self) -> u64 {
        self.pool.size() as u64 * self.buffer_pages
    }

    /// Takes a buffer back: its blocks go back to the allocator, marked as hinted if `hinted`
    /// (the host acted on them).
    fn put(&mut self, mut buf: KBox<HintBuf>, hinted: bool) {
        buf.blocks.release(hinted);
        buf.is_cmd = false;
        buf.tally = None;
        buf.round = None;
        if let Some((_, len)) = &mut buf.records {
            *len = 0;
        }
        self.pool.put(buf);
    }
}

/// The part of a balloon that answers the host's free page hinting rounds.
#[pin_data]
pub(crate) struct HintPart {
    #[pin]
    state: Mutex<HintState>,
}

impl HintPart {
    /// Sets up hinting on the free page queue, for a guest of `total_pages`, with page records
    /// or the standard protocol.
    pub(crate) fn new(
        vq: Virtqueue<HintBuf>,
        total_pages: u64,
        le: bool,
        records: bool,
    ) -> Result<impl PinInit<Self>> {
        let ring = vq.ring_size() as usize;
        let (n, max_blocks, make): (usize, usize, MakeBuf<HintBuf>) = if records {
            // One descriptor a buffer.
            (
                HINT_BUFFERS.min(ring).max(2),
                RECORD_BLOCKS,
                HintBuf::new_records,
            )
        } else {
            // Every buffer fits the ring even when all its blocks are apart (one descriptor
            // each).
            let n = HINT_BUFFERS.min(ring / MAX_BLOCKS).max(2);
            (n, MAX_BLOCKS.min(ring / n).max(1), HintBuf::new_boxed)
        };
        let pool = Pool::new(n, make)?;
        let carry = HintBlocks::new(if records { RECORD_BLOCKS } else { 0 }, false)?;
        Ok(pin_init!(Self {
            state <- new_mutex!(HintState {
                vq,
                pool,
                rounds: Rounds::new(),
                isolated: 0,
                carry,
                buffer_pages: buffer_pages(total_pages),
                max_blocks,
                le,
                new_epoch: true,
            }),
        }))
    }

    /// Pages isolated at any moment, at most.
    pub(crate) fn bound_pages(&self) -> u64 {
        self.state.lock().bound_pages()
    }

    /// The system suspends: the round in progress is over (its buffers are about to be taken
    /// back and their blocks returned); the next command id starts afresh.
    pub(crate) fn freeze(&self) {
        let mut st = self.state.lock();
        st.rounds = Rounds::new();
        st.isolated = 0;
        st.new_epoch = true;
    }
}

/// Why a round ended.
#[derive(PartialEq, Eq)]
enum RoundEnd {
    /// The walk visited every zone (or left one at its high watermark, holding nothing).
    Complete,
    /// The host moved on to a new command id or `DONE`, or the device goes away.
    Interrupted,
    /// The host did not use buffers in time, or refused one.
    HostTrouble,
}

impl HintPart {
    /// The hint work item: follows the host's command id.
    pub(crate) fn follow(&self, ev: &Events) {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        loop {
            if ev.stopping() {
                return;
            }
            self.reclaim(ev, st);
            // Counted before the id is read: a config change after it shows in the count.
            let seq = ev.config_seq();
            let Some(raw) = read_cmd_id(ev) else {
                return;
            };
            if ev.config_seq() != seq {
                // The interrupt of a change this read may have seen was counted only now: read
                // again, so that the round starts with a count that matches its id (a stale
                // one would end it at the first check, and mark nothing).
                continue;
            }
            match st.rounds.on_command(raw) {
                Action::Nothing | Action::End | Action::Done => {
                    if raw == crate::proto::hint::CMD_ID_DONE {
                        // The host no longer needs hints.
                        counters::add(&ev.counters().hint_done, 1);
                        // The next migration starts from a full dirty bitmap.
                        st.new_epoch = true;
                    }
                    // Buffers still out (the host used them, or has not looked at them since a
                    // migration moved the ring): ask the host to look; their blocks come back
                    // when it uses them, which runs this again.
                    if st.vq.in_flight() > 0 {
                        st.vq.notify();
                    }
                    counters::set(&ev.counters().hint_isolated, st.isolated);
                    return;
                }
                Action::Start(id) => self.round(ev, st, id, seq),
            }
        }
    }

    /// Takes back the buffers the host has used: the host is done with their blocks, which go
    /// back to the allocator.
    fn reclaim(&self, ev: &Events, st: &mut HintState) {
        while let Some((buf, len)) = st.vq.get_used() {
            used(ev, st, buf, len);
        }
    }

    /// A spare buffer, waiting for the host to use one if all are queued. With `round`, the wait
    /// also ends when the host moves on from that round (the command id changed).
    fn buffer(
        &self,
        ev: &Events,
        st: &mut HintState,
        round: Option<u32>,
    ) -> core::result::Result<KBox<HintBuf>, RoundEnd> {
        loop {
            self.reclaim(ev, st);
            if let Some(buf) = st.pool.take(st.vq.in_flight(), &ev.counters().buffers_made) {
                return Ok(buf);
            }
            self.wait_host(ev, st, round)?;
        }
    }

    /// Waits until the host has used a buffer (taken back, its blocks returned) or a config
    /// change came that does not end the round.
    fn wait_host(
        &self,
        ev: &Events,
        st: &mut HintState,
        round: Option<u32>,
    ) -> core::result::Result<(), RoundEnd> {
        // Buffers queued just before a live migration sit on the destination's ring unseen:
        // the source had stopped polling with notifications off. Tell the device to look.
        st.vq.notify();
        let start = Ktime::ktime_get();
        let seq = ev.config_seq();
        let mut got = None;
        ev.host_wq
            .wait_timeout(ms_to_jiffies(HINT_HOST_TIMEOUT_MS), || {
                got = st.vq.get_used();
                got.is_some() || ev.stopping() || ev.config_seq() != seq
            });
        counters::add(&ev.counters().host_wait_ns, elapsed_ns(start));
        if let Some((buf, len)) = got {
            used(ev, st, buf, len);
            return Ok(());
        }
        if ev.stopping() {
            return Err(RoundEnd::Interrupted);
        }
        if ev.config_seq() != seq {
            // Read outside the wait: config reads may sleep.
            return match round {
                Some(id) if moved_on(ev, id) => Err(RoundEnd::Interrupted),
                _ => Ok(()),
            };
        }
        if ev.host_error() {
            pr_warn!(
                "virtio{}: host did not use free page hints for {} ms; ending the round\n",
                ev.index,
                HINT_HOST_TIMEOUT_MS
            );
        }
        Err(RoundEnd::HostTrouble)
    }

    /// Sends a command id: the round's id (`round` is `Some(id)`), or the stop id.
    fn send_cmd(&self, ev: &Events, st: &mut HintState, id: u32, round: Option<u32>) -> RoundEnd {
        let mut buf = match self.buffer(ev, st, round) {
            Ok(buf) => buf,
            Err(end) => return end,
        };
        buf.cmd = if st.le {
            id.to_le_bytes()
        } else {
            id.to_ne_bytes()
        };
        buf.is_cmd = true;
        match st.vq.add(buf) {
            Ok(()) => {
                st.vq.kick();
                RoundEnd::Complete
            }
            Err((_, buf)) => {
                st.put(buf, false);
                RoundEnd::HostTrouble
            }
        }
    }

    /// One round: the id, the free ranges, the stop id. `seq`: the config change count before
    /// the id was read.
    fn round(&self, ev: &Events, st: &mut HintState, id: u32, seq: u64) {
        let c = ev.counters();
        let start = Ktime::ktime_get();
        counters::add(&c.hint_rounds, 1);
        let min_order = c
            .hint_min_order
            .load(Ordering::Relaxed)
            .min(u64::from(u32::MAX)) as u32;
        let skip_hinted = !st.new_epoch;
        let mut walk = HintWalk::new(min_order, skip_hinted);
        st.new_epoch = false;
        // The config change count the round's id (or a later read of it) was read after: a
        // change the host made later shows as a different count. A late interrupt of a change
        // already seen moves it on, so that the round's buffers are still marked when used and
        // the id is not read again at every check.
        let seen = Cell::new(seq);
        // Asked between two holds of a zone lock: has the round been overtaken?
        let interrupted = || {
            if ev.stopping() {
                return true;
            }
            let now = ev.config_seq();
            if now == seen.get() {
                return false;
            }
            if moved_on(ev, id) {
                return true;
            }
            seen.set(now);
            false
        };
        // A round holds at most half of the memory free when it started: the rest serves the
        // guest's allocations until the host gives blocks back. Stopping at a zone's high
        // watermark alone is not enough where nothing is reclaimable (no swap, memory in
        // shmem): a burst of allocations then reaches the min watermark and the OOM killer
        // fires while the blocks are lent. Pages still held from an earlier round count as
        // free here, as they come back (the carry is empty between rounds).
        let cap = (mm::free_pages() + st.isolated) / 2;
        let mut end = self.send_cmd(ev, st, id, Some(id));
        // Blocks carried over from a full record buffer are sent even once the walk is over.
        while end == RoundEnd::Complete && (!walk.is_done() || !st.carry.is_empty()) {
            self.reclaim(ev, st);
            if st.isolated > 0 && st.isolated + MAX_BLOCK_PAGES > cap && st.vq.in_flight() > 0 {
                if interrupted() {
                    end = RoundEnd::Interrupted;
                    break;
                }
                if let Err(e) = self.wait_host(ev, st, Some(id)) {
                    end = e;
                    break;
                }
                continue;
            }
            let mut buf = match self.buffer(ev, st, Some(id)) {
                Ok(buf) => buf,
                Err(e) => {
                    end = e;
                    break;
                }
            };
            buf.is_cmd = false;
            let room = cap.saturating_sub(st.isolated).max(MAX_BLOCK_PAGES);
            let limits = (st.buffer_pages.min(room), st.max_blocks);
            buf.blocks.take_from(&mut st.carry, st.max_blocks);
            fill(&mut buf.blocks, &mut walk, limits, interrupted);
            if buf.blocks.is_empty() {
                st.put(buf, false);
                if walk.is_low() && !walk.is_done() && !interrupted() {
                    // The zone is at its high watermark, often because of the blocks held in
                    // buffers the host has not used yet: wait for it to give some back, or,
                    // holding none, leave the zone.
                    self.reclaim(ev, st);
                    if st.isolated > 0 && st.vq.in_flight() > 0 {
                        if let Err(e) = self.wait_host(ev, st, Some(id)) {
                            end = e;
                            break;
                        }
                    } else {
                        walk.leave_zone();
                    }
                    continue;
                }
                if !walk.is_done() {
                    end = RoundEnd::Interrupted;
                }
                break;
            }
            if !buf.seal(&mut st.carry, &c.hint_unsent) {
                st.put(buf, false);
                end = RoundEnd::Interrupted;
                break;
            }
            let (pages, ranges) = (buf.blocks.pages(), buf.blocks.ranges().len() as u64);
            let tally = buf.tally.take();
            buf.round = Some(SentIn {
                id,
                seq: seen.get(),
            });
            match st.vq.add(buf) {
                Ok(()) => {
                    st.vq.kick();
                    if let Some(t) = tally {
                        t.count(c);
                    }
                    st.isolated += pages;
                    counters::set(&c.hint_isolated, st.isolated);
                    c.hint_isolated_max
                        .fetch_max(st.isolated, Ordering::Relaxed);
                    counters::add(&c.hint_ranges, ranges);
                    counters::add(&c.hint_pages, pages);
                    counters::add(&c.hint_descs, 1);
                }
                Err((_, buf)) => {
                    st.put(buf, false);
                    end = RoundEnd::HostTrouble;
                }
            }
            if end == RoundEnd::Complete && interrupted() {
                end = RoundEnd::Interrupted;
            }
        }
        // Blocks still waiting for a buffer go back unsent.
        counters::add(&c.hint_unsent, st.carry.pages());
        st.carry.release(false);
        // Close the round whichever way it ended (a host that moved on ignores it).
        if !ev.stopping() {
            self.send_cmd(ev, st, CMD_ID_STOP, None);
        }
        st.rounds.finish();
        let stats = walk.stats();
        let ns = elapsed_ns(start);
        counters::set(&c.hint_round_ns, ns);
        counters::add(&c.hint_round_ns_total, ns);
        counters::add(&c.hint_lock_holds, stats.holds);
        counters::add(&c.hint_lock_ns_total, stats.total_hold_ns);
        counters::add(&c.hint_low_zones, stats.low_zones);
        counters::add(&c.hint_skipped, stats.skipped);
        counters::add(&c.hint_wraps, stats.wraps);
        c.hint_lock_max_ns
            .fetch_max(stats.max_hold_ns, Ordering::Relaxed);
        if end == RoundEnd::HostTrouble {
            counters::add(&c.hint_host_trouble, 1);
        }
        if end != RoundEnd::Complete {
            counters::add(&c.hint_aborts, 1);
        }
        counters::add(&c.hint_ended, 1);
    }
}

/// The host's command id; `None` once the device is gone.
fn read_cmd_id(ev: &Events) -> Option<u32> {
    ev.with_dev(|d| d.read(&cfg::FREE_PAGE_HINT_CMD_ID))
        .flatten()
}

/// Whether the host has moved on from the round `id` (see [`overtaken`]); `true` once the device
/// is gone.
fn moved_on(ev: &Events, id: u32) -> bool {
    match read_cmd_id(ev) {
        Some(now) if overtaken(id, now) => {
            counters::set(&ev.counters().hint_overtaken_by, u64::from(now));
            true
        }
        Some(_) => false,
        None => true,
    }
}

/// A hint buffer came back from the host: its blocks go back to the allocator, marked as hinted
/// if the host acted on them (as far as the guest can tell).
fn used(ev: &Events, st: &mut HintState, buf: KBox<HintBuf>, len: u32) {
    // Hints are never written (QEMU 7.2 reports 0 bytes); anything above 1 is a host error.
    if len > 1 && ev.host_error() {
        pr_warn!(
            "virtio{}: host reports {} bytes written to a free page hint; ignored\n",
            ev.index,
            len
        );
    }
    st.isolated = st.isolated.saturating_sub(buf.blocks.pages());
    counters::set(&ev.counters().hint_isolated, st.isolated);
    // The host applies hints only while the round they were sent in runs; once it stops the
    // round itself (a config change: a new id, the stop id, done) it hands the buffers still
    // queued back unread. So a buffer was acted on if no config change has arrived since the
    // round's id was read and the id still reads as the round's, or as the stop id (QEMU shows
    // 0 while it applies hints, and after the guest's own stop id). Counted after the read: a
    // stop that lands in between shows. Either mistake only costs hints: a block wrongly
    // marked is passed over later (and sent as if in use), one wrongly unmarked is hinted
    // again. One remains possible: QEMU hands back a dropped buffer before it raises the
    // config interrupt of the stop that dropped it.
    // (QEMU never shows the round's id again once it applies hints; other hosts may.)
    let hinted = match buf.round {
        Some(r) if ev.config_seq() == r.seq => {
            let now = read_cmd_id(ev);
            (now == Some(r.id) || now == Some(CMD_ID_STOP)) && ev.config_seq() == r.seq
        }
        _ => false,
    };
    st.put(buf, hinted);
}

/// Fills `blocks` from `walk` until it holds `max_pages` (no more block of the largest order
/// fits) or `max_blocks`, the walk is over or stopped at a zone's high watermark, or
/// `interrupted` says so (asked between two holds of a zone lock, never while one is held).
fn fill(
    blocks: &mut HintBlocks,
    walk: &mut HintWalk,
    (max_pages, max_blocks): (u64, usize),
    interrupted: impl Fn() -> bool,
) {
    let mut idle = 0;
    while !walk.is_done()
        && blocks.len() < max_blocks
        && max_pages.saturating_sub(blocks.pages()) >= MAX_BLOCK_PAGES
        && !interrupted()
    {
        // Nothing taken, the walk not low, means it moved on (a zone or list ended, or the
        // frames it passed were allocated): a block of the largest order still fits, so go on,
        // but send what is held once the walk has passed a while without finding a block (so
        // the first blocks do not wait, isolated, for the end of a sparse zone).
        if blocks.isolate(walk, max_blocks, max_pages) > 0 {
            idle = 0;
        } else if walk.is_low() {
            // At a zone's high watermark: send what is held, so that it comes back sooner.
            break;
        } else {
            idle += 1;
            if idle >= FLUSH_AFTER_EMPTY && !blocks.is_empty() {
                break;
            }
        }
    }
}

// SPDX-License-Identifier: GPL-2.0

//! Following the host's target: the inflate and deflate queues, their batches of frame numbers,
//! and the pages in the balloon.
//!
//! The host writes a target (`num_pages`) into the config space; the work item inflates
//! (allocates pages and reports their frame numbers on the inflate queue) or deflates (reports
//! frame numbers on the deflate queue, waits for the host, then frees the pages) until the
//! balloon holds the target, and reports its size in `actual`. Frame numbers travel 256 to a
//! descriptor, with many descriptors in flight per notification; with
//! `VIRTIO_BALLOON_F_PAGE_RANGES` they travel as page records (runs, bitmaps, lists), up to
//! [`RECORD_BATCH_PAGES`] to a descriptor, and the balloon takes blocks of at least the host's
//! `ranges_min_order` while the guest has them. Each run of the work item moves one chunk and
//! queues the work again, so a suspend (which freezes the workqueue) never waits for a whole
//! target.

use super::counters::{self, RecordTally};
use super::events::{Events, WAKE_TARGET};
use super::pool::{MakeBuf, Pool};
use crate::abstractions::{
    mm::{
        available_pages, totalram_pages, BlockStack, OwnedBlock, OwnedPage, PageBlock, PageStack,
        MAX_PAGE_ORDER,
    },
    virtio::{balloon as cfg, Buffer, OutBuf, Payload, Virtqueue},
    wait::ms_to_jiffies,
};
use crate::proto::{
    config::{Step, Target},
    hint::Range,
    pfn::{PfnArray, PushError, PFNS_PER_DESC, PFN_SHIFT},
    records::{Collector, MAX_BUFFER_BYTES, RANGES_PER_BUFFER},
};
use core::sync::atomic::AtomicU64;
use kernel::{
    alloc::{flags::GFP_KERNEL, KBox, KVec},
    new_mutex,
    prelude::*,
    sync::Mutex,
    time::Ktime,
};

/// Descriptors kept in flight on a queue, at most (also bounded by the ring size).
const MAX_IN_FLIGHT: usize = 32;
/// Pages moved per run of the work item, between two looks at the target and two updates of
/// `actual` (32 MiB).
const CHUNK_PAGES: u32 = 8192;
/// Order of the blocks the balloon allocates while whole free blocks are left (2 MiB: the host
/// can free a whole huge page behind them); with page records, the host's `ranges_min_order`
/// when that is larger (up to the allocator's largest order).
const BLOCK_ORDER: u32 = 9;
/// Pages one page-record batch holds at most (16 MiB): small enough that the host discards one
/// batch while the guest fills the next.
pub(crate) const RECORD_BATCH_PAGES: u64 = 4096;
/// Page-record batches in flight at most.
const RECORD_BATCHES: usize = 8;
/// Whole blocks one page-record batch holds at most.
const BATCH_BLOCKS: usize = (RECORD_BATCH_PAGES >> BLOCK_ORDER) as usize;
/// The balloon leaves the guest at least 1/256 of its memory available, and at least 8 MiB: an
/// over-large target must not drive the guest into the OOM killer (with nothing left to kill,
/// that is a panic).
const FLOOR_DIVISOR: u64 = 256;
const FLOOR_MIN_PAGES: u64 = 2048;
/// First and longest pause after an allocation failure, in milliseconds.
const BACKOFF_MIN_MS: u32 = 200;
const BACKOFF_MAX_MS: u32 = 5000;
/// How long the host may take to use a buffer before the driver gives up on it.
const HOST_TIMEOUT_MS: u32 = 10_000;

// `clamp` in `TargetPart::new` cannot panic.
const _: () = assert!(BLOCK_ORDER <= MAX_PAGE_ORDER);

// The driver only handles 4 KiB pages, the balloon's unit.
const _: () = assert!(kernel::page::PAGE_SIZE == 1 << PFN_SHIFT);

/// A page-record buffer (preallocated, order 3) and the ranges collected for it.
struct Records {
    collector: Collector,
    ranges: KVec<Range>,
    out: OutBuf,
    /// Bytes of `out` the sealed buffer takes (0 until sealed).
    len: usize,
}

/// How a batch's frames travel.
// Batches are boxed and made at probe; the records' large buffers are boxed too.
#[allow(clippy::large_enum_variant)]
enum Wire {
    /// The standard format: 32-bit frame numbers.
    Pfns(PfnArray),
    /// Page records (`VIRTIO_BALLOON_F_PAGE_RANGES`).
    Records(KBox<Records>),
}

/// Why [`Batch::push`] refused a page (which it hands back).
enum Refused {
    /// The batch is full.
    Full(OwnedPage),
    /// The frame cannot be reported in this format (above 16 TiB with 32-bit frame numbers).
    Unreportable(OwnedPage),
}

/// One descriptor's worth of pages and their frames on the wire. Its pages are out of the
/// guest's memory while it holds them; dropping it gives them back.
///
/// With page records a batch also carries whole blocks (never split: one allocation, one
/// managed-page update and one range each), out of the guest's memory like its pages.
pub(crate) struct Batch {
    wire: Wire,
    pages: PageStack,
    /// At most [`BATCH_BLOCKS`].
    blocks: BlockStack,
    /// What the sealed page records hold, counted once the batch is queued.
    tally: Option<RecordTally>,
}

impl Buffer for Batch {
    fn payload(&mut self) -> Payload<'_> {
        match &self.wire {
            Wire::Pfns(pfns) => Payload::Out(pfns.as_bytes()),
            Wire::Records(r) => Payload::OutBuf(&r.out, r.len),
        }
    }
}

impl Batch {
    /// A batch of the standard format.
    fn new_pfns() -> Result<KBox<Self>> {
        Ok(KBox::new(
            Self {
                wire: Wire::Pfns(PfnArray::new()),
                pages: PageStack::new(),
                blocks: BlockStack::new(BLOCK_ORDER),
                tally: None,
            },
            GFP_KERNEL,
        )?)
    }

    /// A batch of page records, its buffers allocated now, so inflating allocates nothing else.
    fn new_records() -> Result<KBox<Self>> {
        let records = KBox::new(
            Records {
                collector: Collector::new(),
                ranges: KVec::from_elem(Range { pfn: 0, pages: 0 }, RANGES_PER_BUFFER, GFP_KERNEL)?,
                out: OutBuf::new(MAX_BUFFER_BYTES)?,
                len: 0,
            },
            GFP_KERNEL,
        )?;
        Ok(KBox::new(
            Self {
                wire: Wire::Records(records),
                pages: PageStack::new(),
                blocks: BlockStack::new(BLOCK_ORDER),
                tally: None,
            },
            GFP_KERNEL,
        )?)
    }

    /// Pages in the batch.
    fn len(&self) -> usize {
        self.pages.len() + self.blocks.pages() as usize
    }

    /// Whether the batch can take a whole block of `pages` pages (only page records can).
    fn has_room_for_block(&self, pages: u64) -> bool {
        match &self.wire {
            Wire::Pfns(_) => false,
            Wire::Records(r) => {
                r.collector.pages() + pages <= RECORD_BATCH_PAGES
                    && self.blocks.len() < BATCH_BLOCKS
            }
        }
    }

    /// Adds a whole block, which leaves the guest's memory, and its frames; or hands the block
    /// back.
    fn push_block(&mut self, block: OwnedBlock) -> core::result::Result<(), OwnedBlock> {
        let (pfn, pages) = (block.pfn(), 1u64 << block.order());
        if !self.has_room_for_block(pages) {
            return Err(block);
        }
        let Wire::Records(r) = &mut self.wire else {
            return Err(block);
        };
        self.blocks.push(block)?;
        let Records {
            collector, ranges, ..
        } = &mut **r;
        if collector.push_range(ranges, pfn, pages) {
            return Ok(());
        }
        // Refused: the block just pushed comes back off the top.
        self.blocks.pop().map_or(Ok(()), Err)
    }

    /// Moves the block on top of `from` (the balloon's) into the batch, still out of the
    /// guest's memory, and adds its frames; false, with nothing moved, if it does not fit.
    fn take_block(&mut self, from: &mut BlockStack) -> bool {
        let pages = 1u64 << from.order();
        let Some(pfn) = from.top_pfn() else {
            return false;
        };
        if !self.has_room_for_block(pages) || !self.blocks.accepts(from.order()) {
            return false;
        }
        let Wire::Records(r) = &mut self.wire else {
            return false;
        };
        if !self.blocks.take_top(from) {
            return false;
        }
        let Records {
            collector, ranges, ..
        } = &mut **r;
        if collector.push_range(ranges, pfn, pages) {
            return true;
        }
        // Refused: the block goes back on top of the balloon's stack, as it came (the stack
        // held blocks of its order a moment ago, so it takes it).
        from.take_top(&mut self.blocks);
        false
    }

    /// Moves the batch's pages and blocks into the balloon.
    fn move_to_balloon(&mut self, pages: &mut PageStack, blocks: &mut BlockStack) {
        pages.append(&mut self.pages);
        while !self.blocks.is_empty() {
            if !blocks.take_top(&mut self.blocks) {
                // Not of the balloon's block order: kept as pages.
                if let Some(block) = self.blocks.pop() {
                    for page in block.split() {
                        pages.push(page);
                    }
                }
            }
        }
        self.clear_wire();
    }

    /// Whether the batch takes no more pages.
    fn is_full(&self) -> bool {
        match &self.wire {
            Wire::Pfns(pfns) => pfns.is_full(),
            Wire::Records(r) => r.collector.pages() >= RECORD_BATCH_PAGES,
        }
    }

    /// Adds a page and its frame, or hands the page back.
    fn push(&mut self, page: OwnedPage) -> core::result::Result<(), Refused> {
        let pfn = page.pfn();
        match &mut self.wire {
            Wire::Pfns(pfns) => match pfns.push(pfn) {
                Ok(()) => {}
                Err(PushError::Full) => return Err(Refused::Full(page)),
                Err(PushError::OutOfRange) => return Err(Refused::Unreportable(page)),
            },
            Wire::Records(r) => {
                let Records {
                    collector, ranges, ..
                } = &mut **r;
                if collector.pages() >= RECORD_BATCH_PAGES || !collector.push(ranges, pfn) {
                    return Err(Refused::Full(page));
                }
            }
        }
        self.pages.push(page);
        Ok(())
    }

    /// Makes the wire buffer ready to queue (encodes the records); false if they did not all
    /// fit, which the collector rules out.
    fn seal(&mut self) -> bool {
        let Wire::Records(r) = &mut self.wire else {
            return true;
        };
        let pages = r.collector.pages();
        let Records {
            collector,
            ranges,
            out,
            len,
        } = &mut **r;
        let (enc, merged) = collector.finish(ranges, out.as_mut_slice());
        *len = enc.bytes;
        self.tally = Some(RecordTally::new(&enc, &ranges[..merged], pages));
        enc.ranges == merged
    }

    /// Forgets the frames on the wire (the pages stay).
    fn clear_wire(&mut self) {
        self.tally = None;
        match &mut self.wire {
            Wire::Pfns(pfns) => pfns.clear(),
            Wire::Records(r) => {
                r.collector.clear();
                r.len = 0;
            }
        }
    }

    /// Gives the batch's pages back to the guest, if any (deflated, host gone, ring full).
    fn release(&mut self) {
        while let Some(page) = self.pages.pop() {
            drop(page);
        }
        while let Some(block) = self.blocks.pop() {
            drop(block);
        }
        self.clear_wire();
    }
}

/// What the work item owns, under the target's mutex.
pub(crate) struct TargetState {
    inflate_vq: Virtqueue<Batch>,
    deflate_vq: Virtqueue<Batch>,
    /// Batches not in flight.
    pool: Pool<Batch>,
    /// The pages in the balloon taken one at a time (or split from a block).
    pages: PageStack,
    /// The whole blocks in the balloon (page records only).
    blocks: BlockStack,
    backoff_ms: u32,
    /// What has been logged since the target was last reached, so each problem logs once.
    warned_clamp: bool,
    warned_oom: bool,
}

impl TargetState {
    /// Pages in the balloon.
    fn len(&self) -> u64 {
        self.pages.len() as u64 + self.blocks.pages()
    }

    /// A batch not in flight on either queue, or why there is none: `Stop::Done` when all are
    /// in flight (wait for the host), `Stop::NoPages` when none exists at all (none could be
    /// made: retry with back-off).
    fn take_batch(&mut self, made: &AtomicU64) -> core::result::Result<KBox<Batch>, Stop> {
        let out = self.inflate_vq.in_flight() + self.deflate_vq.in_flight();
        match self.pool.take(out, made) {
            Some(batch) => Ok(batch),
            None if out == 0 => Err(Stop::NoPages),
            None => Err(Stop::Done),
        }
    }
}

/// Why a pass over the queues ended before moving every page asked for.
#[derive(PartialEq, Eq)]
enum Stop {
    /// Everything asked for was moved.
    Done,
    /// No page could be allocated, or nothing is left to give back.
    NoPages,
    /// The host did not use buffers in time.
    HostTimeout,
    /// The queue refused a buffer with none in flight (device gone or buffer rejected).
    Refused,
    /// The device is going away.
    Stopping,
}

/// What [`TargetPart::settle`] saw.
enum Settled {
    /// Nothing was in flight.
    Idle,
    /// The host did not use a buffer in time.
    HostTimeout,
    /// The host used buffers; they were handed over.
    Used,
}

/// What a run of the work item asks for next.
#[derive(PartialEq, Eq)]
pub(crate) enum Next {
    /// The balloon holds the target.
    Idle,
    /// Run again (another chunk, or a retry after a pause).
    Again,
}

/// The part of a balloon that follows the host's target.
#[pin_data]
pub(crate) struct TargetPart {
    #[pin]
    state: Mutex<TargetState>,
    /// Pages the guest has with the balloon empty: no target can be larger.
    guest_pages: u64,
    /// The balloon stops growing when the guest's available memory falls to this many pages.
    floor_pages: u64,
    /// Order of the blocks the balloon takes while the guest has them free.
    block_order: u32,
    /// Pages one run of the work item gives back at most: with page records, what the batches
    /// in flight hold (each run ends by waiting for all of them, so a smaller chunk would leave
    /// batches idle), else [`CHUNK_PAGES`].
    deflate_chunk: u32,
}

impl TargetPart {
    /// Sets up the inflate and deflate queues: page records when `min_order` is `Some` (the
    /// host's `ranges_min_order`), else the standard format.
    pub(crate) fn new(
        inflate_vq: Virtqueue<Batch>,
        deflate_vq: Virtqueue<Batch>,
        min_order: Option<u32>,
    ) -> Result<impl PinInit<Self>> {
        let (most, make): (usize, MakeBuf<Batch>) = match min_order {
            Some(_) => (RECORD_BATCHES, Batch::new_records),
            None => (MAX_IN_FLIGHT, Batch::new_pfns),
        };
        let batches = most
            .min(inflate_vq.ring_size() as usize)
            .min(deflate_vq.ring_size() as usize)
            .max(1);
        let pool = Pool::new(batches, make)?;
        let deflate_chunk = match min_order {
            Some(_) => (batches as u64 * RECORD_BATCH_PAGES)
                .clamp(CHUNK_PAGES.into(), u32::MAX.into()) as u32,
            None => CHUNK_PAGES,
        };
        let block_order = match min_order {
            // At least 2 MiB, at most what the allocator has.
            Some(order) => order.clamp(BLOCK_ORDER, MAX_PAGE_ORDER),
            None => BLOCK_ORDER,
        };
        let guest_pages = totalram_pages();
        let floor_pages = (guest_pages / FLOOR_DIVISOR).max(FLOOR_MIN_PAGES);
        Ok(pin_init!(Self {
            state <- new_mutex!(TargetState {
                inflate_vq,
                deflate_vq,
                pool,
                pages: PageStack::new(),
                blocks: BlockStack::new(block_order),
                backoff_ms: BACKOFF_MIN_MS,
                warned_clamp: false,
                warned_oom: false,
            }),
            guest_pages,
            floor_pages,
            block_order,
            deflate_chunk,
        }))
    }

    /// Order of the blocks the balloon takes while the guest has them free.
    pub(crate) fn block_order(&self) -> u32 {
        self.block_order
    }

    /// Batches in flight at most.
    pub(crate) fn batches(&self) -> usize {
        self.state.lock().pool.size()
    }

    /// One run of the work item: moves a chunk towards the target.
    pub(crate) fn follow(&self, ev: &Events) -> Next {
        ev.wake_done(WAKE_TARGET);
        let mut st = self.state.lock();
        if ev.stopping() {
            return Next::Idle;
        }
        let seq = ev.config_seq();
        let target = self.target(ev, &mut st);
        let current = st.len().min(u64::from(u32::MAX)) as u32;
        // Inflating stays at `CHUNK_PAGES` a run: a new target turns it round sooner.
        let chunk = if target < current {
            self.deflate_chunk
        } else {
            CHUNK_PAGES
        };
        let stop = match Step::towards(target, current, chunk) {
            Step::Idle => {
                st.warned_clamp = false;
                st.warned_oom = false;
                st.backoff_ms = BACKOFF_MIN_MS;
                return Next::Idle;
            }
            Step::Inflate(n) => self.inflate(ev, &mut st, n),
            Step::Deflate(n) => self.deflate(ev, &mut st, n, false),
        };
        self.report(ev, &st);
        match stop {
            Stop::Done => st.backoff_ms = BACKOFF_MIN_MS,
            Stop::Stopping => return Next::Idle,
            Stop::NoPages | Stop::HostTimeout | Stop::Refused => {
                if stop == Stop::NoPages && !st.warned_oom {
                    pr_info!(
                        "virtio{}: guest memory low at {} of {} pages; retrying with back-off\n",
                        ev.index,
                        st.len(),
                        target
                    );
                    st.warned_oom = true;
                }
                // Wait without spinning; a new target or shutdown ends the pause early.
                ev.event_wq.wait_timeout(ms_to_jiffies(st.backoff_ms), || {
                    ev.stopping() || ev.config_seq() != seq
                });
                st.backoff_ms = (st.backoff_ms * 2).min(BACKOFF_MAX_MS);
            }
        }
        Next::Again
    }

    /// Gives every page back, telling the host first (device removal, suspend).
    pub(crate) fn drain(&self, ev: &Events) {
        let mut st = self.state.lock();
        while st.len() > 0 {
            let want = st.len().min(u64::from(u32::MAX)) as u32;
            let before = st.len();
            self.deflate(ev, &mut st, want, true);
            self.report(ev, &st);
            if st.len() == before {
                break;
            }
        }
        let left = st.len();
        if left > 0 {
            pr_warn!(
                "virtio{}: host did not take back {} pages; freeing them anyway\n",
                ev.index,
                left
            );
            while let Some(page) = st.pages.pop() {
                drop(page);
            }
            while let Some(block) = st.blocks.pop() {
                drop(block);
            }
            self.report(ev, &st);
        }
    }

    /// Tells the host how many pages the balloon holds (none: they went back at suspend).
    pub(crate) fn resume(&self, ev: &Events) {
        let st = self.state.lock();
        self.report(ev, &st);
    }

    /// Reads and checks the host's target (the current size when the device is gone).
    fn target(&self, ev: &Events, st: &mut TargetState) -> u32 {
        let Some(raw) = ev.with_dev(|d| d.read(&cfg::NUM_PAGES)).flatten() else {
            return st.len().min(u64::from(u32::MAX)) as u32;
        };
        let target = Target::check(raw, self.guest_pages);
        if let Target::Clamped { asked, limit } = target {
            if !st.warned_clamp {
                counters::add(&ev.counters().host_errors, 1);
                pr_warn!(
                    "virtio{}: host asks for {} pages but the guest has {}; inflating what it can\n",
                    ev.index,
                    asked,
                    limit
                );
                st.warned_clamp = true;
            }
        }
        counters::set(&ev.counters().target, u64::from(raw));
        target.pages()
    }

    /// Tells the host how many pages the balloon holds.
    fn report(&self, ev: &Events, st: &TargetState) {
        let pages = st.len();
        counters::set(&ev.counters().pages, pages);
        let actual = pages.min(u64::from(u32::MAX)) as u32;
        ev.with_dev(|d| d.write(&cfg::ACTUAL, actual));
    }

    /// Waits for the host to use a buffer of `vq` and returns it.
    fn wait_used(&self, ev: &Events, vq: &mut Virtqueue<Batch>) -> Option<KBox<Batch>> {
        let start = Ktime::ktime_get();
        let mut used = None;
        ev.host_wq.wait_timeout(ms_to_jiffies(HOST_TIMEOUT_MS), || {
            used = vq.get_used();
            used.is_some()
        });
        counters::add(&ev.counters().host_wait_ns, elapsed_ns(start));
        match used {
            Some(used) => Some(check_used(ev, used)),
            None => {
                if ev.host_error() {
                    pr_err!(
                        "virtio{}: host has not used {} buffers in {} ms; giving up on them\n",
                        ev.index,
                        vq.in_flight(),
                        HOST_TIMEOUT_MS
                    );
                }
                None
            }
        }
    }

    /// Kicks `vq` if buffers were `added`, then, unless none is in flight, waits for the host to
    /// use one and hands every used batch to `used`.
    fn settle(
        &self,
        ev: &Events,
        vq: &mut Virtqueue<Batch>,
        added: bool,
        mut used: impl FnMut(KBox<Batch>),
    ) -> Settled {
        if added {
            vq.kick();
            counters::add(&ev.counters().kicks, 1);
        }
        if vq.in_flight() == 0 {
            return Settled::Idle;
        }
        let Some(first) = self.wait_used(ev, vq) else {
            return Settled::HostTimeout;
        };
        let mut next = Some(first);
        while let Some(batch) = next {
            used(batch);
            next = vq.get_used().map(|u| check_used(ev, u));
        }
        Settled::Used
    }

    /// The next page for the balloon: from a whole block while at least a block's worth is
    /// wanted and free blocks are left, otherwise on its own.
    fn alloc_page(
        &self,
        ev: &Events,
        block: &mut Option<PageBlock>,
        try_blocks: &mut bool,
        left: u32,
    ) -> Option<OwnedPage> {
        if let Some(page) = block.as_mut().and_then(Iterator::next) {
            return Some(page);
        }
        *block = None;
        if *try_blocks && left >= 1 << self.block_order {
            *block = OwnedBlock::alloc_for_balloon(self.block_order).map(OwnedBlock::split);
            if let Some(page) = block.as_mut().and_then(Iterator::next) {
                counters::add(&ev.counters().blocks, 1);
                return Some(page);
            }
            *try_blocks = false;
        }
        OwnedPage::alloc_for_balloon()
    }

    /// Takes up to `want` pages into the balloon.
    fn inflate(&self, ev: &Events, st: &mut TargetState, want: u32) -> Stop {
        let c = ev.counters();
        let mut queued = 0u32;
        let mut stop = Stop::Done;
        // Pages of a block not handed out yet, and a whole block or page a full batch refused,
        // are freed when this returns.
        let mut block = None;
        let mut carry: Option<OwnedBlock> = None;
        // A page a full batch refused: the next batch takes it.
        let mut spare: Option<OwnedPage> = None;
        let mut try_blocks = true;
        let block_pages = 1u32 << self.block_order;
        loop {
            let mut added = false;
            while queued < want && stop == Stop::Done {
                if ev.stopping() {
                    stop = Stop::Stopping;
                    break;
                }
                if available_pages() < self.floor_pages + PFNS_PER_DESC as u64 {
                    // Whatever the host asks, never push the guest into the OOM killer.
                    counters::add(&c.floor_stops, 1);
                    stop = Stop::NoPages;
                    break;
                }
                let mut batch = match st.take_batch(&c.buffers_made) {
                    Ok(batch) => batch,
                    Err(why) => {
                        stop = why;
                        break;
                    }
                };
                let start = Ktime::ktime_get();
                let mut checked = 0;
                while !batch.is_full() && queued + (batch.len() as u32) < want {
                    let len = batch.len();
                    if len >= checked + PFNS_PER_DESC {
                        // A large batch looks at the floor again every 256 pages (a whole block
                        // needs a block's worth above it).
                        checked = len;
                        if available_pages() < self.floor_pages + u64::from(block_pages) {
                            counters::add(&c.floor_stops, 1);
                            stop = Stop::NoPages;
                            break;
                        }
                    }
                    let left = want - queued - batch.len() as u32;
                    if try_blocks
                        && carry.is_none()
                        && available_pages() < self.floor_pages + u64::from(block_pages)
                    {
                        // Near the floor: single pages from here on (checked every 256).
                        try_blocks = false;
                    }
                    if try_blocks
                        && left >= block_pages
                        && batch.has_room_for_block(block_pages.into())
                    {
                        // Whole blocks, never split, while the guest has them.
                        let got = carry.take().or_else(|| {
                            let b = OwnedBlock::alloc_for_balloon(self.block_order);
                            if b.is_some() {
                                counters::add(&c.blocks, 1);
                            }
                            b
                        });
                        match got {
                            Some(b) => {
                                if let Err(b) = batch.push_block(b) {
                                    // The collector is full: the next batch takes it.
                                    carry = Some(b);
                                    break;
                                }
                                continue;
                            }
                            None => try_blocks = false,
                        }
                    }
                    let got = spare
                        .take()
                        .or_else(|| self.alloc_page(ev, &mut block, &mut try_blocks, left));
                    let Some(page) = got else {
                        counters::add(&c.alloc_failures, 1);
                        stop = Stop::NoPages;
                        break;
                    };
                    match batch.push(page) {
                        Ok(()) => {}
                        Err(Refused::Full(page)) => {
                            spare = Some(page);
                            break;
                        }
                        Err(Refused::Unreportable(_)) => {
                            // A frame above 16 TiB cannot be reported with 32-bit PFNs.
                            stop = Stop::NoPages;
                            break;
                        }
                    }
                }
                counters::add(&c.alloc_ns, elapsed_ns(start));
                if batch.len() == 0 {
                    st.pool.put(batch);
                    break;
                }
                if !batch.seal() {
                    batch.release();
                    st.pool.put(batch);
                    stop = Stop::NoPages;
                    break;
                }
                let n = batch.len() as u32;
                let tally = batch.tally.take();
                match st.inflate_vq.add(batch) {
                    Ok(()) => {
                        queued += n;
                        added = true;
                        counters::add(&c.inflate_descs, 1);
                        if let Some(t) = tally {
                            t.count(c);
                        }
                    }
                    Err((_, mut batch)) => {
                        batch.release();
                        st.pool.put(batch);
                        if st.inflate_vq.in_flight() == 0 {
                            // Refused with nothing in flight: not a full ring. Back off.
                            stop = Stop::Refused;
                        }
                        break;
                    }
                }
            }
            let TargetState {
                inflate_vq,
                pool,
                pages,
                blocks,
                ..
            } = &mut *st;
            // The host has the pages now: into the balloon.
            match self.settle(ev, inflate_vq, added, |mut batch| {
                counters::add(&c.inflated, batch.len() as u64);
                batch.move_to_balloon(pages, blocks);
                pool.put(batch);
            }) {
                Settled::Idle => return stop,
                Settled::HostTimeout => return Stop::HostTimeout,
                Settled::Used => counters::set(&c.pages, st.len()),
            }
        }
    }

    /// Gives up to `want` pages back to the guest, always telling the host before a page is
    /// freed (as the C driver does, with or without `MUST_TELL_HOST`): a page whose report could
    /// not be queued stays in the balloon. With `draining` (removal) it goes on while the device
    /// is stopping.
    fn deflate(&self, ev: &Events, st: &mut TargetState, want: u32, draining: bool) -> Stop {
        let c = ev.counters();
        let mut queued = 0u32;
        let mut stop = Stop::Done;
        loop {
            let mut added = false;
            while queued < want && stop == Stop::Done {
                if !draining && ev.stopping() {
                    stop = Stop::Stopping;
                    break;
                }
                if st.len() == 0 {
                    stop = Stop::NoPages;
                    break;
                }
                let mut batch = match st.take_batch(&c.buffers_made) {
                    Ok(batch) => batch,
                    Err(why) => {
                        stop = why;
                        break;
                    }
                };
                let block_pages = 1u32 << st.blocks.order();
                while !batch.is_full() && queued + (batch.len() as u32) < want {
                    let Some(page) = st.pages.pop() else {
                        if st.blocks.is_empty() {
                            break;
                        }
                        let left = want - queued - batch.len() as u32;
                        if left >= block_pages && batch.has_room_for_block(block_pages.into()) {
                            // A whole block: one range, one free (after the host knows).
                            if !batch.take_block(&mut st.blocks) {
                                // Room was checked; should it be refused, it stays ballooned.
                                break;
                            }
                        } else if left < block_pages || batch.len() == 0 {
                            // Part of a block (or a format without blocks): it becomes pages.
                            if let Some(b) = st.blocks.pop() {
                                for page in b.split() {
                                    st.pages.push(page);
                                }
                            }
                        } else {
                            // Full for a block: the next batch takes it.
                            break;
                        }
                        continue;
                    };
                    // Its frame was reported on inflate, so only a full batch refuses it.
                    if let Err(Refused::Full(page) | Refused::Unreportable(page)) = batch.push(page)
                    {
                        st.pages.push(page);
                        break;
                    }
                }
                if batch.len() == 0 || !batch.seal() {
                    batch.move_to_balloon(&mut st.pages, &mut st.blocks);
                    st.pool.put(batch);
                    stop = Stop::NoPages;
                    break;
                }
                let n = batch.len() as u32;
                let tally = batch.tally.take();
                match st.deflate_vq.add(batch) {
                    Ok(()) => {
                        queued += n;
                        added = true;
                        counters::add(&c.deflate_descs, 1);
                        if let Some(t) = tally {
                            t.count(c);
                        }
                    }
                    Err((_, mut batch)) => {
                        // Not reported (ring full, device gone): the pages stay ballooned.
                        batch.move_to_balloon(&mut st.pages, &mut st.blocks);
                        st.pool.put(batch);
                        if st.deflate_vq.in_flight() == 0 {
                            stop = Stop::Refused;
                        }
                        break;
                    }
                }
            }
            let TargetState {
                deflate_vq, pool, ..
            } = &mut *st;
            // The host knows: the pages go back to the guest.
            match self.settle(ev, deflate_vq, added, |mut batch| {
                counters::add(&c.deflated, batch.len() as u64);
                batch.release();
                pool.put(batch);
            }) {
                Settled::Idle => return stop,
                Settled::HostTimeout => return Stop::HostTimeout,
                Settled::Used => counters::set(&c.pages, st.len()),
            }
        }
    }
}

/// Checks the length the host reports for a used out-buffer (it must have written nothing).
fn check_used(ev: &Events, (batch, len): (KBox<Batch>, u32)) -> KBox<Batch> {
    if len != 0 && ev.host_error() {
        pr_warn!(
            "virtio{}: host reports {} bytes written to a read-only buffer; ignored\n",
            ev.index,
            len
        );
    }
    batch
}

/// Nanoseconds since `start`.
pub(crate) fn elapsed_ns(start: Ktime) -> u64 {
    (Ktime::ktime_get().to_ns() - start.to_ns()).max(0) as u64
}

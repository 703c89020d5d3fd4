// SPDX-License-Identifier: GPL-2.0

//! One balloon device: its queues, its pages and the work item that follows the host's target.

use super::counters::{self, Counters};
use super::hint::HintState;
use super::{BalloonDriver, DEBUGFS_DIR};
use crate::abstractions::{
    debugfs::CounterDir,
    mm::{available_pages, totalram_pages, OwnedPage, PageBlock, PageStack},
    virtio::{Buffer, Device, DeviceRef, Payload, Virtqueue},
    wait::{ms_to_jiffies, WaitQueue},
    work,
};
use crate::new_wait_queue;
use crate::proto::{
    config::{self, Step, Target},
    features,
    pfn::{PfnArray, PushError, PFNS_PER_DESC, PFN_SHIFT},
};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use kernel::{
    alloc::{flags::GFP_KERNEL, KBox, KVec},
    c_str, fmt, new_mutex,
    prelude::*,
    str::CString,
    sync::{Arc, Mutex},
    time::Ktime,
    workqueue::{self, Work, WorkItem},
};

/// Descriptors kept in flight on a queue, at most (also bounded by the ring size).
const MAX_IN_FLIGHT: usize = 32;
/// Pages moved between two looks at the target and two updates of `actual` (32 MiB).
const CHUNK_PAGES: u32 = 8192;
/// Order of the blocks the balloon allocates while whole free blocks are left (2 MiB: the host
/// can free a whole huge page behind them).
const BLOCK_ORDER: u32 = 9;
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

// The driver only handles 4 KiB pages, the balloon's unit.
const _: () = assert!(kernel::page::PAGE_SIZE == 1 << PFN_SHIFT);

/// One descriptor's worth of pages and their frame numbers on the wire.
pub(crate) struct Batch {
    pfns: PfnArray,
    pages: PageStack,
}

impl Buffer for Batch {
    fn payload(&mut self) -> Payload<'_> {
        Payload::Out(self.pfns.as_bytes())
    }
}

impl Batch {
    fn new() -> Self {
        Self {
            pfns: PfnArray::new(),
            pages: PageStack::new(),
        }
    }

    /// Gives the batch's pages back to the guest, if any (deflated, host gone, ring full,
    /// teardown).
    fn release(&mut self) {
        while let Some(page) = self.pages.pop() {
            give_back(page);
        }
        self.pfns.clear();
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.release();
    }
}

/// Gives a balloon page back to the guest.
///
/// A page leaves the guest's managed memory when it is allocated for the balloon and comes back
/// here, whichever way it leaves (deflated, never accepted by the host, or reclaimed when the
/// device goes away), so the accounting holds on every path.
fn give_back(page: OwnedPage) {
    page.adjust_managed(1);
    drop(page);
}

/// The batches not in flight: a fixed set of slots, so returning one never allocates.
struct Spare(KVec<Option<KBox<Batch>>>);

impl Spare {
    fn take(&mut self) -> Option<KBox<Batch>> {
        self.0.iter_mut().find_map(Option::take)
    }

    fn put(&mut self, batch: KBox<Batch>) {
        if let Some(slot) = self.0.iter_mut().find(|slot| slot.is_none()) {
            *slot = Some(batch);
        }
    }
}

/// What the work item owns, under the device's mutex.
struct State {
    inflate_vq: Virtqueue<Batch>,
    deflate_vq: Virtqueue<Batch>,
    /// Batches not in flight (`None`: that batch is in flight).
    spare: Spare,
    /// The pages in the balloon.
    pages: PageStack,
    backoff_ms: u32,
    /// What has been logged since the target was last reached, so each problem logs once.
    warned_clamp: bool,
    warned_oom: bool,
}

/// A bound balloon device.
#[pin_data]
pub(crate) struct Balloon {
    pub(super) dev: DeviceRef,
    pub(super) index: i32,
    /// Pages the guest has with the balloon empty: no target can be larger.
    guest_pages: u64,
    /// The balloon stops growing when the guest's available memory falls to this many pages.
    floor_pages: u64,
    tell_host: bool,
    #[pin]
    state: Mutex<State>,
    #[pin]
    work: Work<Balloon>,
    /// Free page hinting, when negotiated.
    #[pin]
    pub(super) hint: Mutex<Option<HintState>>,
    #[pin]
    hint_work: Work<Balloon, 1>,
    /// Woken when the host uses buffers.
    #[pin]
    pub(super) host_wq: WaitQueue,
    /// Woken on config changes and on shutdown.
    #[pin]
    event_wq: WaitQueue,
    /// Incremented on every config change.
    pub(super) config_seq: AtomicU64,
    pub(super) stopping: AtomicBool,
    /// A host misbehaviour with buffers was logged (logged once per device).
    warned_host: AtomicBool,
    stats: CounterDir<Counters>,
}

kernel::impl_has_work! {
    impl HasWork<Self> for Balloon { self.work }
    impl HasWork<Self, 1> for Balloon { self.hint_work }
}

impl WorkItem for Balloon {
    type Pointer = Arc<Balloon>;

    fn run(this: Arc<Balloon>) {
        this.follow_target();
    }
}

impl WorkItem<1> for Balloon {
    type Pointer = Arc<Balloon>;

    fn run(this: Arc<Balloon>) {
        this.follow_hints();
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
    /// The device is going away.
    Stopping,
}

impl Balloon {
    /// Sets up a newly probed device.
    pub(crate) fn new(dev: &Device) -> Result<Arc<Self>> {
        // Queues of features not negotiated are left out and the later ones move up.
        let hinting = dev.has_feature(features::FREE_PAGE_HINT);
        let stats_vq = dev.has_feature(features::STATS_VQ);
        let [inflate, deflate, _stats, free_page] = dev.find_vqs::<BalloonDriver, 4>([
            Some(c_str!("inflate")),
            Some(c_str!("deflate")),
            stats_vq.then_some(c_str!("stats")),
            hinting.then_some(c_str!("free_page_vq")),
        ])?;
        let (Some(inflate), Some(deflate)) = (inflate, deflate) else {
            return Err(EINVAL);
        };
        let inflate_vq = Virtqueue::new(inflate);
        let deflate_vq = Virtqueue::new(deflate);
        let hint = match free_page {
            Some(vq) => Some(HintState::new(Virtqueue::new(vq))?),
            None => None,
        };
        let batches = MAX_IN_FLIGHT
            .min(inflate_vq.ring_size() as usize)
            .min(deflate_vq.ring_size() as usize)
            .max(1);
        let mut spare = KVec::with_capacity(batches, GFP_KERNEL)?;
        for _ in 0..batches {
            spare.push(Some(KBox::new(Batch::new(), GFP_KERNEL)?), GFP_KERNEL)?;
        }
        let index = dev.index();
        let name = CString::try_from_fmt(fmt!("virtio{}", index))?;
        let stats = CounterDir::new(
            DEBUGFS_DIR,
            &name,
            Arc::new(Counters::default(), GFP_KERNEL)?,
            Counters::FILES,
            Counters::TUNABLES,
        );
        let tell_host = dev.has_feature(features::MUST_TELL_HOST);
        let guest_pages = totalram_pages();
        let floor_pages = (guest_pages / FLOOR_DIVISOR).max(FLOOR_MIN_PAGES);
        let balloon = Arc::pin_init(
            pin_init!(Self {
                dev: dev.get(),
                index,
                guest_pages,
                floor_pages,
                tell_host,
                state <- new_mutex!(State {
                    inflate_vq,
                    deflate_vq,
                    spare: Spare(spare),
                    pages: PageStack::new(),
                    backoff_ms: BACKOFF_MIN_MS,
                    warned_clamp: false,
                    warned_oom: false,
                }),
                work <- kernel::new_work!("virtio_balloon_rs::work"),
                hint <- new_mutex!(hint),
                hint_work <- kernel::new_work!("virtio_balloon_rs::hint_work"),
                host_wq <- new_wait_queue!("virtio_balloon_rs::host_wq"),
                event_wq <- new_wait_queue!("virtio_balloon_rs::event_wq"),
                config_seq: AtomicU64::new(0),
                stopping: AtomicBool::new(false),
                warned_host: AtomicBool::new(false),
                stats,
            }),
            GFP_KERNEL,
        )?;
        pr_info!(
            "virtio{}: balloon ready ({} descriptors in flight, {} PFNs each, must-tell-host {}, free page hints {})\n",
            index,
            batches,
            crate::proto::pfn::PFNS_PER_DESC,
            if tell_host { "on" } else { "off" },
            if hinting { "on" } else { "off" }
        );
        Ok(balloon)
    }

    /// Counts a misbehaviour of the host; returns whether it is the first one with buffers, which
    /// the caller logs (one line per device).
    pub(super) fn host_error(&self) -> bool {
        counters::add(&self.counters().host_errors, 1);
        !self.warned_host.swap(true, Ordering::Relaxed)
    }

    pub(super) fn counters(&self) -> &Counters {
        self.stats.counters()
    }

    /// Queues the work item (if it is not queued already).
    pub(crate) fn schedule(self: &Arc<Self>) {
        if !self.stopping.load(Ordering::Acquire) {
            // `Err` means it is queued already, which is all we want.
            let _ = workqueue::system_freezable().enqueue::<_, 0>(self.clone());
        }
    }

    /// Queues the hint work item (if it is not queued already), on the freezable workqueue: a
    /// round never runs while the system suspends.
    fn schedule_hints(self: &Arc<Self>) {
        if !self.stopping.load(Ordering::Acquire) {
            // `Err` means it is queued already.
            let _ = workqueue::system_freezable().enqueue::<_, 1>(self.clone());
        }
    }

    /// The host changed the config space (atomic context).
    pub(crate) fn config_changed(self: &Arc<Self>) {
        counters::add(&self.counters().config_changes, 1);
        self.config_seq.fetch_add(1, Ordering::AcqRel);
        self.event_wq.wake_up();
        // A hinting round waiting for the host ends when the host moves on.
        self.host_wq.wake_up();
        self.schedule();
        self.schedule_hints();
    }

    /// The host used buffers (interrupt context).
    pub(crate) fn host_done(&self) {
        self.host_wq.wake_up();
    }

    /// Stops the work item and gives every page back, telling the host first.
    pub(crate) fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        self.event_wq.wake_up();
        self.host_wq.wake_up();
        work::flush(&self.work);
        work::flush(&self.hint_work);
        let mut st = self.state.lock();
        while !st.pages.is_empty() {
            let want = st.pages.len().min(u32::MAX as usize) as u32;
            let before = st.pages.len();
            self.deflate(&mut st, want, true);
            self.report(&st);
            if st.pages.len() == before {
                break;
            }
        }
        let left = st.pages.len();
        if left > 0 {
            pr_warn!(
                "virtio{}: host did not take back {} pages; freeing them anyway\n",
                self.index,
                left
            );
            while let Some(page) = st.pages.pop() {
                give_back(page);
            }
            self.report(&st);
        }
    }

    /// Reads and checks the host's target.
    fn target(&self, st: &mut State) -> u32 {
        let raw = self.dev.read_config_le32(config::NUM_PAGES);
        let target = Target::check(raw, self.guest_pages);
        if let Target::Clamped { asked, limit } = target {
            if !st.warned_clamp {
                counters::add(&self.counters().host_errors, 1);
                pr_warn!(
                    "virtio{}: host asks for {} pages but the guest has {}; inflating what it can\n",
                    self.index,
                    asked,
                    limit
                );
                st.warned_clamp = true;
            }
        }
        counters::set(&self.counters().target, u64::from(raw));
        target.pages()
    }

    /// Tells the host how many pages the balloon holds.
    fn report(&self, st: &State) {
        let pages = st.pages.len() as u64;
        counters::set(&self.counters().pages, pages);
        self.dev
            .write_config_le32(config::ACTUAL, pages.min(u64::from(u32::MAX)) as u32);
    }

    /// The work item: moves pages until the balloon holds the host's target.
    fn follow_target(&self) {
        let mut st = self.state.lock();
        loop {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            let seq = self.config_seq.load(Ordering::Acquire);
            let target = self.target(&mut st);
            let current = st.pages.len() as u32;
            let stop = match Step::towards(target, current, CHUNK_PAGES) {
                Step::Idle => {
                    st.warned_clamp = false;
                    st.warned_oom = false;
                    st.backoff_ms = BACKOFF_MIN_MS;
                    return;
                }
                Step::Inflate(n) => self.inflate(&mut st, n),
                Step::Deflate(n) => self.deflate(&mut st, n, false),
            };
            self.report(&st);
            match stop {
                Stop::Done => st.backoff_ms = BACKOFF_MIN_MS,
                Stop::Stopping => return,
                Stop::NoPages | Stop::HostTimeout => {
                    if stop == Stop::NoPages && !st.warned_oom {
                        pr_info!(
                            "virtio{}: guest memory low at {} of {} pages; retrying with back-off\n",
                            self.index,
                            st.pages.len(),
                            target
                        );
                        st.warned_oom = true;
                    }
                    // Wait without spinning; a new target or shutdown ends the pause early.
                    self.event_wq
                        .wait_timeout(ms_to_jiffies(st.backoff_ms), || {
                            self.stopping.load(Ordering::Acquire)
                                || self.config_seq.load(Ordering::Acquire) != seq
                        });
                    st.backoff_ms = (st.backoff_ms * 2).min(BACKOFF_MAX_MS);
                }
            }
        }
    }

    /// Waits for the host to use a buffer of `vq` and returns it.
    fn wait_used(&self, vq: &mut Virtqueue<Batch>) -> Option<KBox<Batch>> {
        let start = Ktime::ktime_get();
        let mut used = None;
        self.host_wq
            .wait_timeout(ms_to_jiffies(HOST_TIMEOUT_MS), || {
                used = vq.get_used();
                used.is_some()
            });
        counters::add(&self.counters().host_wait_ns, elapsed_ns(start));
        match used {
            Some(used) => Some(self.check_used(used)),
            None => {
                if self.host_error() {
                    pr_err!(
                        "virtio{}: host has not used {} buffers in {} ms; giving up on them\n",
                        self.index,
                        vq.in_flight(),
                        HOST_TIMEOUT_MS
                    );
                }
                None
            }
        }
    }

    /// Checks the length the host reports for a used out-buffer (it must have written nothing).
    fn check_used(&self, (batch, len): (KBox<Batch>, u32)) -> KBox<Batch> {
        if len != 0 && self.host_error() {
            pr_warn!(
                "virtio{}: host reports {} bytes written to a read-only buffer; ignored\n",
                self.index,
                len
            );
        }
        batch
    }

    /// The next page for the balloon: from a whole block while at least a block's worth is
    /// wanted and free blocks are left, otherwise on its own.
    fn alloc_page(
        &self,
        block: &mut Option<PageBlock>,
        try_blocks: &mut bool,
        left: u32,
    ) -> Option<OwnedPage> {
        if let Some(page) = block.as_mut().and_then(Iterator::next) {
            return Some(page);
        }
        *block = None;
        if *try_blocks && left >= 1 << BLOCK_ORDER {
            *block = OwnedPage::alloc_block_for_balloon(BLOCK_ORDER);
            if let Some(page) = block.as_mut().and_then(Iterator::next) {
                counters::add(&self.counters().blocks, 1);
                return Some(page);
            }
            *try_blocks = false;
        }
        OwnedPage::alloc_for_balloon()
    }

    /// Takes up to `want` pages into the balloon.
    fn inflate(&self, st: &mut State, want: u32) -> Stop {
        let c = self.counters();
        let mut queued = 0u32;
        let mut stop = Stop::Done;
        // Pages of a block not handed out yet are freed when this returns.
        let mut block = None;
        let mut try_blocks = true;
        loop {
            let mut added = false;
            while queued < want && stop == Stop::Done {
                if self.stopping.load(Ordering::Acquire) {
                    stop = Stop::Stopping;
                    break;
                }
                if available_pages() < self.floor_pages + PFNS_PER_DESC as u64 {
                    // Whatever the host asks, never push the guest into the OOM killer.
                    counters::add(&c.floor_stops, 1);
                    stop = Stop::NoPages;
                    break;
                }
                let Some(mut batch) = st.spare.take() else {
                    break;
                };
                let start = Ktime::ktime_get();
                while !batch.pfns.is_full() && queued + (batch.pfns.len() as u32) < want {
                    let left = want - queued - batch.pfns.len() as u32;
                    let Some(page) = self.alloc_page(&mut block, &mut try_blocks, left) else {
                        counters::add(&c.alloc_failures, 1);
                        stop = Stop::NoPages;
                        break;
                    };
                    match batch.pfns.push(page.pfn()) {
                        Ok(()) => {
                            page.adjust_managed(-1);
                            batch.pages.push(page);
                        }
                        Err(PushError::OutOfRange) | Err(PushError::Full) => {
                            // A frame above 16 TiB cannot be reported with 32-bit PFNs.
                            stop = Stop::NoPages;
                            break;
                        }
                    }
                }
                counters::add(&c.alloc_ns, elapsed_ns(start));
                if batch.pfns.is_empty() {
                    st.spare.put(batch);
                    break;
                }
                let n = batch.pfns.len() as u32;
                match st.inflate_vq.add(batch) {
                    Ok(()) => {
                        queued += n;
                        added = true;
                        counters::add(&c.inflate_descs, 1);
                    }
                    Err((_, mut batch)) => {
                        batch.release();
                        st.spare.put(batch);
                        break;
                    }
                }
            }
            if added {
                st.inflate_vq.kick();
                counters::add(&c.kicks, 1);
            }
            if st.inflate_vq.in_flight() == 0 {
                return stop;
            }
            let Some(first) = self.wait_used(&mut st.inflate_vq) else {
                return Stop::HostTimeout;
            };
            let mut next = Some(first);
            while let Some(mut batch) = next {
                let n = batch.pages.len() as u64;
                st.pages.append(&mut batch.pages);
                batch.pfns.clear();
                st.spare.put(batch);
                counters::add(&c.inflated, n);
                next = st.inflate_vq.get_used().map(|used| self.check_used(used));
            }
            counters::set(&c.pages, st.pages.len() as u64);
        }
    }

    /// Gives up to `want` pages back to the guest, telling the host first. With `draining`
    /// (shutdown) it goes on while the device is stopping.
    fn deflate(&self, st: &mut State, want: u32, draining: bool) -> Stop {
        let c = self.counters();
        let mut queued = 0u32;
        let mut stop = Stop::Done;
        loop {
            let mut added = false;
            while queued < want && stop == Stop::Done {
                if !draining && self.stopping.load(Ordering::Acquire) {
                    stop = Stop::Stopping;
                    break;
                }
                if st.pages.is_empty() {
                    stop = Stop::NoPages;
                    break;
                }
                let Some(mut batch) = st.spare.take() else {
                    break;
                };
                while !batch.pfns.is_full() && queued + (batch.pfns.len() as u32) < want {
                    let Some(page) = st.pages.pop() else {
                        break;
                    };
                    // Cannot fail: the page was reported with this frame number on inflate.
                    let _ = batch.pfns.push(page.pfn());
                    batch.pages.push(page);
                }
                let n = batch.pfns.len() as u32;
                if !self.tell_host {
                    // The host does not need to hear first: free now, tell it on the way.
                    counters::add(&c.deflated, u64::from(n));
                    while let Some(page) = batch.pages.pop() {
                        give_back(page);
                    }
                }
                match st.deflate_vq.add(batch) {
                    Ok(()) => {
                        queued += n;
                        added = true;
                        counters::add(&c.deflate_descs, 1);
                    }
                    Err((_, mut batch)) => {
                        // Ring full of buffers the host never used: keep the pages ballooned.
                        st.pages.append(&mut batch.pages);
                        batch.pfns.clear();
                        st.spare.put(batch);
                        break;
                    }
                }
            }
            if added {
                st.deflate_vq.kick();
                counters::add(&c.kicks, 1);
            }
            if st.deflate_vq.in_flight() == 0 {
                return stop;
            }
            let Some(first) = self.wait_used(&mut st.deflate_vq) else {
                return Stop::HostTimeout;
            };
            let mut next = Some(first);
            while let Some(mut batch) = next {
                counters::add(&c.deflated, batch.pages.len() as u64);
                batch.release();
                st.spare.put(batch);
                next = st.deflate_vq.get_used().map(|used| self.check_used(used));
            }
            counters::set(&c.pages, st.pages.len() as u64);
        }
    }
}

/// Nanoseconds since `start`.
pub(super) fn elapsed_ns(start: Ktime) -> u64 {
    (Ktime::ktime_get().to_ns() - start.to_ns()).max(0) as u64
}

// SPDX-License-Identifier: GPL-2.0

//! One balloon device's lifecycle: probe, the work items, suspend and resume, removal.
//!
//! A balloon is made of parts, each with its own queue(s) and lock: [`TargetPart`] follows the
//! host's target (`target.rs`), [`HintPart`] answers free page hinting rounds (`hint.rs`),
//! [`StatsPart`] answers requests for statistics (`stats.rs`). They share [`Events`]
//! (`events.rs`): the device, the config change sequence, the stop flag, the wait queues, the
//! wakeup event and the counters.

use super::counters::{self, Counters};
use super::events::{Events, WAKE_STATS, WAKE_TARGET};
use super::hint::{HintBuf, HintPart};
use super::stats::{StatsBuf, StatsPart};
use super::target::{Batch, Next, TargetPart, RECORD_BATCH_PAGES};
use super::{DEFLATE_Q, FREE_PAGE_Q, INFLATE_Q, STATS_Q};
use crate::abstractions::{
    debugfs::{CounterDir, Dir},
    mm::totalram_pages,
    virtio::{balloon as cfg, Binding, Core, Device, Queues},
    work,
};
use crate::proto::{
    config::{ranges_min_order, RANGES_MAX_ORDER},
    features,
    pfn::PFNS_PER_DESC,
};
use kernel::{
    alloc::{flags::GFP_KERNEL, KBox},
    fmt,
    prelude::*,
    str::CString,
    sync::Arc,
    workqueue::{self, Work, WorkItem},
};

/// Work item ids.
const TARGET_WORK: u64 = 0;
const HINT_WORK: u64 = 1;
const STATS_WORK: u64 = 2;

/// A bound balloon device.
#[pin_data]
pub(crate) struct Balloon {
    #[pin]
    ev: Events,
    #[pin]
    target: TargetPart,
    /// Free page hinting, when negotiated.
    hint: Option<Pin<KBox<HintPart>>>,
    /// Statistics, when negotiated.
    stats: Option<Pin<KBox<StatsPart>>>,
    #[pin]
    target_work: Work<Balloon, TARGET_WORK>,
    #[pin]
    hint_work: Work<Balloon, HINT_WORK>,
    #[pin]
    stats_work: Work<Balloon, STATS_WORK>,
}

kernel::impl_has_work! {
    impl HasWork<Self, TARGET_WORK> for Balloon { self.target_work }
    impl HasWork<Self, HINT_WORK> for Balloon { self.hint_work }
    impl HasWork<Self, STATS_WORK> for Balloon { self.stats_work }
}

impl WorkItem<TARGET_WORK> for Balloon {
    type Pointer = Arc<Balloon>;

    fn run(this: Arc<Balloon>) {
        match this.target.follow(&this.ev) {
            // One chunk per run: a suspend waits for a chunk, never for the whole target.
            Next::Again => this.schedule::<TARGET_WORK>(),
            Next::Idle => this.ev.wake_finish(),
        }
    }
}

impl WorkItem<HINT_WORK> for Balloon {
    type Pointer = Arc<Balloon>;

    fn run(this: Arc<Balloon>) {
        if let Some(hint) = &this.hint {
            hint.follow(&this.ev);
        }
    }
}

impl WorkItem<STATS_WORK> for Balloon {
    type Pointer = Arc<Balloon>;

    fn run(this: Arc<Balloon>) {
        if let Some(stats) = &this.stats {
            stats.refill(&this.ev);
        }
    }
}

impl Balloon {
    /// Sets up a newly probed device.
    pub(crate) fn new(
        dev: &Device<Core>,
        debugfs: &Arc<Dir>,
        binding: &Arc<Binding>,
        queues: &mut Queues<'_>,
    ) -> Result<Arc<Self>> {
        let (Some(inflate), Some(deflate)) = (
            queues.take::<Batch>(INFLATE_Q)?,
            queues.take::<Batch>(DEFLATE_Q)?,
        ) else {
            return Err(EINVAL);
        };
        let stats_vq = queues.take::<StatsBuf>(STATS_Q)?;
        let hint_vq = queues.take::<HintBuf>(FREE_PAGE_Q)?;
        let index = binding.device().index();
        let name = CString::try_from_fmt(fmt!("virtio{}", index))?;
        let c = Arc::new(Counters::default(), GFP_KERNEL)?;
        let counters = CounterDir::new(
            debugfs,
            &name,
            c.clone(),
            Counters::FILES,
            Counters::TUNABLES,
        );
        let (hinting, stats_on) = (hint_vq.is_some(), stats_vq.is_some());
        let le = dev.has_feature(features::VERSION_1);
        // Page records when the host offers them, with its smallest block.
        let min_order = if dev.has_feature(features::PAGE_RANGES) {
            let raw = dev.read(&cfg::RANGES_MIN_ORDER).unwrap_or(0);
            Some(ranges_min_order(raw).unwrap_or_else(|| {
                counters::add(&c.host_errors, 1);
                pr_warn!(
                    "virtio{}: host gives ranges_min_order {} (reserved, above {}); using 0\n",
                    index,
                    raw,
                    RANGES_MAX_ORDER
                );
                0
            }))
        } else {
            None
        };
        let hint = match hint_vq {
            Some(vq) => Some(KBox::pin_init(
                HintPart::new(vq, totalram_pages(), le, min_order.is_some())?,
                GFP_KERNEL,
            )?),
            None => None,
        };
        let stats = match stats_vq {
            Some(vq) => Some(KBox::pin_init(StatsPart::new(vq, le)?, GFP_KERNEL)?),
            None => None,
        };
        let target = TargetPart::new(inflate, deflate, min_order)?;
        if let Some(order) = min_order {
            counters::set(&c.page_ranges, 1);
            counters::set(&c.ranges_min_order, order.into());
        }
        let balloon = Arc::pin_init(
            pin_init!(Self {
                ev <- Events::new(binding.clone(), counters),
                target <- target,
                hint,
                stats,
                target_work <- kernel::new_work!("virtio_balloon_rs::target_work"),
                hint_work <- kernel::new_work!("virtio_balloon_rs::hint_work"),
                stats_work <- kernel::new_work!("virtio_balloon_rs::stats_work"),
            }),
            GFP_KERNEL,
        )?;
        counters::set(&c.block_order, balloon.target.block_order().into());
        if let Some(h) = &balloon.hint {
            counters::set(&balloon.ev.counters().hint_bound, h.bound_pages());
        }
        dev.set_wakeup_capable();
        match min_order {
            Some(order) => pr_info!(
                "virtio{}: balloon ready ({} descriptors in flight, page records of up to {} pages each, blocks of order {} (host asks {}), free page hints {}, statistics {})\n",
                index,
                balloon.target.batches(),
                RECORD_BATCH_PAGES,
                balloon.target.block_order(),
                order,
                if hinting { "on" } else { "off" },
                if stats_on { "on" } else { "off" }
            ),
            None => pr_info!(
                "virtio{}: balloon ready ({} descriptors in flight, {} PFNs each, free page hints {}, statistics {})\n",
                index,
                balloon.target.batches(),
                PFNS_PER_DESC,
                if hinting { "on" } else { "off" },
                if stats_on { "on" } else { "off" }
            ),
        }
        Ok(balloon)
    }

    /// Queues work item `ID` (if it is not queued already) on the freezable workqueue: nothing
    /// runs while the system suspends.
    fn schedule<const ID: u64>(self: &Arc<Self>)
    where
        Self: WorkItem<ID, Pointer = Arc<Self>> + workqueue::HasWork<Self, ID>,
    {
        self.ev.unless_stopping(|| {
            // `Err` means it is queued already, which is all we want.
            let _ = workqueue::system_freezable().enqueue::<_, ID>(self.clone());
        });
    }

    /// The device is ready: queue the statistics buffer and look at the target.
    pub(crate) fn start(self: &Arc<Self>) {
        if let Some(stats) = &self.stats {
            stats.start(&self.ev);
        }
        self.ev.wake_start(WAKE_TARGET);
        self.schedule::<TARGET_WORK>();
    }

    /// The host changed the config space (atomic context).
    pub(crate) fn config_changed(self: &Arc<Self>) {
        self.ev.config_changed();
        self.ev.unless_stopping(|| self.ev.wake_start(WAKE_TARGET));
        self.schedule::<TARGET_WORK>();
        if self.hint.is_some() {
            self.schedule::<HINT_WORK>();
        }
    }

    /// The host used buffers of queue `queue` (interrupt context).
    pub(crate) fn host_done(self: &Arc<Self>, queue: usize) {
        if queue == STATS_Q {
            self.ev.unless_stopping(|| self.ev.wake_start(WAKE_STATS));
            self.schedule::<STATS_WORK>();
        } else if queue == FREE_PAGE_Q {
            // A round waiting for a buffer wakes up; outside a round the work item takes the
            // used buffers back, so their blocks return to the allocator at once.
            self.ev.host_wq.wake_up();
            self.schedule::<HINT_WORK>();
        } else {
            self.ev.host_wq.wake_up();
        }
    }

    /// Stops the work items, ends a hinting round and gives every page back, telling the host
    /// first (device removal). After `stop` nothing queues a work item, so one flush of each
    /// waits for all of them.
    pub(crate) fn shutdown(&self) {
        self.ev.stop();
        work::flush(&self.target_work);
        work::flush(&self.hint_work);
        work::flush(&self.stats_work);
        self.target.drain(&self.ev);
        self.ev.wake_done(WAKE_TARGET | WAKE_STATS);
        self.ev.wake_finish();
    }

    /// The system suspends. The work items are frozen (they run on the freezable workqueue, and
    /// the freezer waits for a running one), so nothing else uses the queues. As the C driver
    /// does, every page goes back to the guest, the host told first: after hibernation the
    /// guest may resume on a host that never saw them. The adapter then resets the device and
    /// takes back what is queued (the hinting round's blocks with it).
    pub(crate) fn freeze(&self) {
        counters::add(&self.ev.counters().freezes, 1);
        self.target.drain(&self.ev);
        if let Some(hint) = &self.hint {
            hint.freeze();
        }
    }

    /// The system resumed with the device reset and its queues back: report the balloon's size
    /// (empty), queue the statistics buffer, and follow the target (inflating again) and the
    /// hinting command.
    pub(crate) fn restore(self: &Arc<Self>) {
        counters::add(&self.ev.counters().restores, 1);
        self.target.resume(&self.ev);
        if let Some(stats) = &self.stats {
            stats.start(&self.ev);
        }
        self.ev.wake_start(WAKE_TARGET);
        self.schedule::<TARGET_WORK>();
        if self.hint.is_some() {
            self.schedule::<HINT_WORK>();
        }
    }
}

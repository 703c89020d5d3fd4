// SPDX-License-Identifier: GPL-2.0

//! What the parts of a balloon share: the bound device, the host's events (config changes,
//! used buffers), the stop flag, the system wakeup event, and the counters.

use super::counters::{self, Counters};
use crate::abstractions::{
    debugfs::CounterDir,
    virtio::{Binding, Bound, Device},
    wait::WaitQueue,
};
use crate::new_wait_queue;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use kernel::{prelude::*, sync::Arc};

/// Why the system is kept awake: the target changed (the work item follows it).
pub(crate) const WAKE_TARGET: u32 = 1 << 0;
/// Why the system is kept awake: the host asked for statistics.
pub(crate) const WAKE_STATS: u32 = 1 << 1;
/// The wakeup event is held.
const WAKE_HELD: u32 = 1 << 31;

/// The shared state of one balloon device.
#[pin_data]
pub(crate) struct Events {
    /// The device, while the driver is bound.
    dev: Arc<Binding>,
    /// The device's index (`virtioN`), for log lines.
    pub(crate) index: i32,
    /// Woken when the host uses buffers, on config changes and on shutdown.
    #[pin]
    pub(crate) host_wq: WaitQueue,
    /// Woken on config changes and on shutdown.
    #[pin]
    pub(crate) event_wq: WaitQueue,
    /// Incremented on every config change.
    config_seq: AtomicU64,
    /// The device goes away: work items return as soon as they can, and none is queued again.
    stopping: AtomicBool,
    /// Callers inside [`Events::unless_stopping`] (which queue work items).
    enqueuing: AtomicU32,
    /// A host misbehaviour with buffers was logged (logged once per device).
    warned_host: AtomicBool,
    /// Reasons to keep the system awake (`WAKE_*`), and whether the wakeup event is held.
    wake: AtomicU32,
    stats: CounterDir<Counters>,
}

impl Events {
    /// Shared state for the device of `dev`, with its counters in `stats`.
    pub(crate) fn new(dev: Arc<Binding>, stats: CounterDir<Counters>) -> impl PinInit<Self> {
        let index = dev.device().index();
        pin_init!(Self {
            dev,
            index,
            host_wq <- new_wait_queue!("virtio_balloon_rs::host_wq"),
            event_wq <- new_wait_queue!("virtio_balloon_rs::event_wq"),
            config_seq: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            enqueuing: AtomicU32::new(0),
            warned_host: AtomicBool::new(false),
            wake: AtomicU32::new(0),
            stats,
        })
    }

    /// The device's counters.
    pub(crate) fn counters(&self) -> &Counters {
        self.stats.counters()
    }

    /// Runs `f` with the bound device (config space); `None` once the driver is unbound.
    pub(crate) fn with_dev<R>(&self, f: impl FnOnce(&Device<Bound>) -> R) -> Option<R> {
        self.dev.with(f)
    }

    /// Whether the device is going away.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Runs `f` (which queues a work item) unless the device is stopping. Any context.
    pub(crate) fn unless_stopping(&self, f: impl FnOnce()) {
        self.enqueuing.fetch_add(1, Ordering::SeqCst);
        if !self.stopping.load(Ordering::SeqCst) {
            f();
        }
        self.enqueuing.fetch_sub(1, Ordering::SeqCst);
    }

    /// The device goes away: no work item is queued after this returns (a caller of
    /// [`Self::unless_stopping`] that saw the device running has finished queueing, so one flush
    /// of each work item waits for everything), and every waiter wakes up.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        while self.enqueuing.load(Ordering::SeqCst) != 0 {
            core::hint::spin_loop();
        }
        self.event_wq.wake_up();
        self.host_wq.wake_up();
    }

    /// The number of config changes so far.
    pub(crate) fn config_seq(&self) -> u64 {
        self.config_seq.load(Ordering::Acquire)
    }

    /// The host changed the config space (atomic context): wakes every waiter.
    pub(crate) fn config_changed(&self) {
        counters::add(&self.counters().config_changes, 1);
        self.config_seq.fetch_add(1, Ordering::AcqRel);
        self.event_wq.wake_up();
        // A hinting round waiting for the host ends when the host moves on.
        self.host_wq.wake_up();
    }

    /// Counts a misbehaviour of the host; returns whether it is the first one with buffers, which
    /// the caller logs (one line per device).
    pub(crate) fn host_error(&self) -> bool {
        counters::add(&self.counters().host_errors, 1);
        !self.warned_host.swap(true, Ordering::Relaxed)
    }

    /// Keeps the system awake for `why` (a `WAKE_*` bit) until [`Self::wake_done`] for it and
    /// [`Self::wake_finish`]. Any context.
    pub(crate) fn wake_start(&self, why: u32) {
        if self.wake.fetch_or(why | WAKE_HELD, Ordering::AcqRel) & WAKE_HELD == 0 {
            self.dev.device().stay_awake();
        }
    }

    /// The work for `why` has started (a new request sets it again).
    pub(crate) fn wake_done(&self, why: u32) {
        self.wake.fetch_and(!why, Ordering::AcqRel);
    }

    /// Lets the system suspend again if no reason is left.
    pub(crate) fn wake_finish(&self) {
        if self.wake.load(Ordering::Acquire) != WAKE_HELD {
            return;
        }
        // Relax first, then let go of the event: a `wake_start` after that calls `stay_awake`
        // itself, so a relax never undoes a newer request.
        self.dev.device().relax();
        if self
            .wake
            .compare_exchange(WAKE_HELD, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // A new reason came meanwhile, seeing the event held: hold it again.
            self.dev.device().stay_awake();
        }
    }
}

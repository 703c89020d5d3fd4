// SPDX-License-Identifier: GPL-2.0

//! A wait queue whose waiters re-check their condition after queueing themselves, as the C
//! `wait_event_timeout()` does, so a wake-up between a check and the sleep is never lost.
//!
//! Safe code can wake waiters from any context and wait with a timeout in process context. The
//! condition runs with the task already queued (not runnable), so it must not sleep; the types
//! cannot enforce that, and a sleeping condition would only lose the wait's timeout accuracy
//! (the kernel warns), not memory safety.

use core::marker::PhantomPinned;
use kernel::{bindings, prelude::*, str::CStr, sync::LockClassKey, types::Opaque};

/// A `struct wait_queue_head`.
///
/// # Invariants
///
/// `head` is an initialised wait queue head that does not move (the type is pinned).
#[pin_data]
pub(crate) struct WaitQueue {
    #[pin]
    head: Opaque<bindings::wait_queue_head>,
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: A wait queue head is designed to be used from any thread; its list is protected by its
// own spinlock.
unsafe impl Send for WaitQueue {}
// SAFETY: As above, all operations on it are internally synchronised.
unsafe impl Sync for WaitQueue {}

/// Creates a [`WaitQueue`] initialiser with a static lock class.
#[macro_export]
macro_rules! new_wait_queue {
    ($name:literal) => {
        $crate::abstractions::wait::WaitQueue::new(
            ::kernel::c_str!($name),
            ::kernel::static_lock_class!(),
        )
    };
}

impl WaitQueue {
    /// An initialiser for a wait queue; use [`new_wait_queue!`].
    pub(crate) fn new(name: &'static CStr, key: &'static LockClassKey) -> impl PinInit<Self> {
        pin_init!(Self {
            _pin: PhantomPinned,
            // SAFETY: `slot` is valid for writes while the closure runs; `name` and `key` are
            // static, and `LockClassKey` is a transparent wrapper of `struct lock_class_key`.
            head <- Opaque::ffi_init(|slot| unsafe {
                bindings::__init_waitqueue_head(
                    slot,
                    name.as_char_ptr(),
                    (key as *const LockClassKey).cast_mut().cast(),
                )
            }),
        })
    }

    /// Wakes the waiters; callable from any context, including interrupt handlers.
    pub(crate) fn wake_up(&self) {
        // SAFETY: `head` is initialised (type invariant); `__wake_up` takes its lock with
        // interrupts disabled.
        unsafe {
            bindings::__wake_up(
                self.head.get(),
                bindings::TASK_NORMAL,
                0,
                core::ptr::null_mut(),
            )
        };
    }

    /// Sleeps until `cond` returns true or `timeout` jiffies have passed; returns the last value
    /// of `cond`. `cond` runs with the task already queued, so it must not sleep. The sleep does
    /// not count towards the load average and is not interrupted by signals.
    pub(crate) fn wait_timeout(&self, timeout: u64, mut cond: impl FnMut() -> bool) -> bool {
        if cond() {
            return true;
        }
        let entry = Opaque::<bindings::wait_queue_entry>::uninit();
        // SAFETY: `entry` is valid for writes and stays in place until `finish_wait` below.
        unsafe { bindings::init_wait_entry(entry.get(), 0) };
        let mut remaining = timeout.min(isize::MAX as u64) as isize;
        let done = loop {
            // SAFETY: `head` is initialised and `entry` is an initialised entry that outlives its
            // time on the queue.
            unsafe {
                bindings::prepare_to_wait_event(
                    self.head.get(),
                    entry.get(),
                    (bindings::TASK_UNINTERRUPTIBLE | bindings::TASK_NOLOAD) as _,
                )
            };
            if cond() {
                break true;
            }
            if remaining == 0 {
                break false;
            }
            // SAFETY: The task state was set by `prepare_to_wait_event`.
            remaining = unsafe { bindings::schedule_timeout(remaining) };
        };
        // SAFETY: `entry` was queued on `head` by `prepare_to_wait_event` (or is already off it).
        unsafe { bindings::finish_wait(self.head.get(), entry.get()) };
        done
    }
}

/// Converts milliseconds to jiffies.
pub(crate) fn ms_to_jiffies(ms: u32) -> u64 {
    kernel::time::msecs_to_jiffies(ms) as u64
}

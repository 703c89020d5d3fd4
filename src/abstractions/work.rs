// SPDX-License-Identifier: GPL-2.0

//! What the `kernel::workqueue` abstraction of 6.12 lacks: waiting for a work item.
//!
//! Safe code can wait for a work item it shares; calling this from the work item itself would
//! deadlock (a bug, not a memory-safety problem), which lockdep reports.

use kernel::{bindings, workqueue::Work};

/// Waits until the last queueing of `work` has finished running (`flush_work`).
///
/// Must not be called from the work item itself.
pub(crate) fn flush<T: ?Sized, const ID: u64>(work: &Work<T, ID>) {
    // SAFETY: `work` is a valid, initialised work item for as long as the reference lives;
    // `flush_work` only waits for it.
    unsafe { bindings::flush_work(Work::raw_get(work)) };
}

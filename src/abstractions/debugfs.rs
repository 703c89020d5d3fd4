// SPDX-License-Identifier: GPL-2.0

//! debugfs directories of 64-bit counters (read-only) and tunables (writable).
//!
//! Safe code can create a top-level [`Dir`] and, below it, [`CounterDir`]s whose files read and
//! write atomics it shares. It cannot make a file outlive the value it shows (the directory,
//! removed on drop, holds the values), nor a directory outlive its parent (a [`CounterDir`]
//! holds a reference to its [`Dir`], which is removed when the last reference goes).

use core::sync::atomic::AtomicU64;
use kernel::{bindings, prelude::*, str::CStr, sync::Arc};

/// A top-level debugfs directory, removed (with everything below it) when the last reference
/// goes.
///
/// # Invariants
///
/// `dentry` is what `debugfs_create_dir` returned: a directory, or an error pointer when debugfs
/// is unavailable, which every debugfs function accepts and ignores.
pub(crate) struct Dir {
    dentry: *mut bindings::dentry,
}

// SAFETY: debugfs functions may be called from any thread.
unsafe impl Send for Dir {}
// SAFETY: `Dir` has no methods that mutate through a shared reference.
unsafe impl Sync for Dir {}

impl Dir {
    /// Creates `name` at the root of debugfs.
    pub(crate) fn new(name: &CStr) -> Result<Arc<Self>> {
        // SAFETY: `name` is a valid C string; a null parent means the debugfs root.
        let dentry =
            unsafe { bindings::debugfs_create_dir(name.as_char_ptr(), core::ptr::null_mut()) };
        Ok(Arc::new(Self { dentry }, GFP_KERNEL)?)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        // SAFETY: By the type invariant `dentry` came from `debugfs_create_dir`.
        unsafe { bindings::debugfs_remove(self.dentry) };
    }
}

/// A counter exposed in a [`CounterDir`]: its file name and how to find it in the counters.
pub(crate) type Counter<C> = (&'static CStr, fn(&C) -> &AtomicU64);

/// A debugfs directory of read-only files, one for each counter of a shared `C`.
///
/// # Invariants
///
/// `dentry` is what `debugfs_create_dir` returned, below `parent`'s directory, which stays until
/// this one is removed. Its files point into `counters`, which lives at least until the
/// directory is removed in `drop`.
pub(crate) struct CounterDir<C: Send + Sync + 'static> {
    dentry: *mut bindings::dentry,
    counters: Arc<C>,
    // Dropped after `drop` has removed our directory.
    _parent: Arc<Dir>,
}

// SAFETY: The files only read `counters`, which is `Sync`; debugfs calls work from any thread.
unsafe impl<C: Send + Sync> Send for CounterDir<C> {}
// SAFETY: As above.
unsafe impl<C: Send + Sync> Sync for CounterDir<C> {}

impl<C: Send + Sync + 'static> CounterDir<C> {
    /// Creates `name` below `parent`, with one read-only file for each of `fields` and one
    /// writable file for each of `tunables`.
    pub(crate) fn new(
        parent: &Arc<Dir>,
        name: &CStr,
        counters: Arc<C>,
        fields: &[Counter<C>],
        tunables: &[Counter<C>],
    ) -> Self {
        // SAFETY: `name` is a valid C string and `parent.dentry` a directory or an error pointer
        // (which makes this return an error pointer).
        let dentry = unsafe { bindings::debugfs_create_dir(name.as_char_ptr(), parent.dentry) };
        let files = Iterator::chain(
            fields.iter().map(|f| (f, 0o444)),
            tunables.iter().map(|f| (f, 0o644)),
        );
        for ((file, get), mode) in files {
            let value: &AtomicU64 = get(&counters);
            // SAFETY: `file` is a valid C string, `dentry` a directory or an error pointer, and
            // the value lives in `counters`, kept alive until the directory is removed. Readers
            // and writers load or store the aligned 64-bit value whole, as atomics do.
            unsafe {
                bindings::debugfs_create_u64(file.as_char_ptr(), mode, dentry, value.as_ptr())
            };
        }
        Self {
            dentry,
            counters,
            _parent: parent.clone(),
        }
    }

    /// The counters behind the files.
    pub(crate) fn counters(&self) -> &Arc<C> {
        &self.counters
    }
}

impl<C: Send + Sync + 'static> Drop for CounterDir<C> {
    fn drop(&mut self) {
        // SAFETY: By the type invariant `dentry` came from `debugfs_create_dir`; removing it
        // removes its files before `counters` can be released.
        unsafe { bindings::debugfs_remove(self.dentry) };
    }
}

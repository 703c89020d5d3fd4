// SPDX-License-Identifier: GPL-2.0

//! Pages owned by a balloon and the memory-management counters a balloon adjusts.

use core::ptr::NonNull;
use kernel::bindings;

/// The guest's managed memory, in pages (`totalram_pages()`).
pub(crate) fn totalram_pages() -> u64 {
    // SAFETY: `totalram_pages` only reads an atomic counter.
    unsafe { bindings::totalram_pages() as u64 }
}

/// An order-0 page owned by the driver.
///
/// # Invariants
///
/// `ptr` is an order-0 page returned by `alloc_pages` that this object owns: it holds the only
/// reference, the page is on no list, its `private` field is zero and it is not `PageOffline`.
pub(crate) struct OwnedPage {
    ptr: NonNull<bindings::page>,
}

// SAFETY: An owned page is plain memory, not tied to the thread that allocated it.
unsafe impl Send for OwnedPage {}

impl OwnedPage {
    /// Allocates a page for the balloon.
    ///
    /// The allocation may reclaim, but neither retries hard nor invokes the OOM killer, never
    /// dips into the emergency reserves and does not warn when it fails: a balloon gives up
    /// before the guest suffers. The page is not movable (the driver does not take part in
    /// balloon compaction), so it comes from the unmovable allocation pool, as the C driver's
    /// pages do without `CONFIG_BALLOON_COMPACTION`.
    pub(crate) fn alloc_for_balloon() -> Option<Self> {
        let gfp = bindings::GFP_HIGHUSER
            | bindings::__GFP_NOMEMALLOC
            | bindings::__GFP_NORETRY
            | bindings::__GFP_NOWARN;
        // SAFETY: `alloc_pages` may be called with these flags from process context.
        let ptr = unsafe { bindings::alloc_pages(gfp, 0) };
        // INVARIANT: a non-null result is a fresh order-0 page that we own.
        NonNull::new(ptr).map(|ptr| Self { ptr })
    }

    /// The page's frame number.
    pub(crate) fn pfn(&self) -> u64 {
        // SAFETY: By the type invariant `ptr` is a valid page.
        unsafe { bindings::page_to_pfn(self.ptr.as_ptr()) as u64 }
    }

    /// Adds `delta` pages to the managed page count of the page's zone and of the system
    /// (`adjust_managed_page_count`), as a balloon does when a page enters (-1) or leaves (+1).
    pub(crate) fn adjust_managed(&self, delta: i64) {
        // SAFETY: By the type invariant `ptr` is a valid page.
        unsafe { bindings::adjust_managed_page_count(self.ptr.as_ptr(), delta as _) };
    }

    fn into_raw(self) -> NonNull<bindings::page> {
        let ptr = self.ptr;
        core::mem::forget(self);
        ptr
    }
}

impl Drop for OwnedPage {
    fn drop(&mut self) {
        // SAFETY: By the type invariant we own the only reference to this order-0 page.
        unsafe { bindings::__free_pages(self.ptr.as_ptr(), 0) };
    }
}

/// A last-in first-out collection of owned pages, linked through the pages' `private` field, so
/// it needs no memory of its own however many pages it holds. Pages in it are `PageOffline`,
/// as balloon pages are expected to be (dump tools skip them).
///
/// # Invariants
///
/// `head` is null or the first of `len` pages, each owned by the stack, marked `PageOffline`,
/// whose `private` field holds the next page's address (0 for the last one).
pub(crate) struct PageStack {
    head: *mut bindings::page,
    len: usize,
}

// SAFETY: The stack owns its pages exclusively; they are not tied to a thread.
unsafe impl Send for PageStack {}

impl PageStack {
    /// An empty stack.
    pub(crate) const fn new() -> Self {
        Self {
            head: core::ptr::null_mut(),
            len: 0,
        }
    }

    /// Number of pages held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether the stack is empty.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes ownership of `page`.
    pub(crate) fn push(&mut self, page: OwnedPage) {
        let ptr = page.into_raw().as_ptr();
        // SAFETY: `ptr` is a valid page we own (invariant of `OwnedPage`), with no page type set
        // and an unused `private` field.
        unsafe {
            bindings::set_page_private(ptr, self.head as usize as _);
            bindings::__SetPageOffline(ptr);
        }
        // INVARIANT: `ptr` is owned, offline, and links to the previous head.
        self.head = ptr;
        self.len += 1;
    }

    /// Gives back the most recently pushed page.
    pub(crate) fn pop(&mut self) -> Option<OwnedPage> {
        let ptr = NonNull::new(self.head)?;
        // SAFETY: By the type invariant `ptr` is an owned offline page whose `private` field
        // links to the next one.
        let next = unsafe {
            let next = bindings::page_private(ptr.as_ptr()) as usize as *mut bindings::page;
            bindings::set_page_private(ptr.as_ptr(), 0);
            bindings::__ClearPageOffline(ptr.as_ptr());
            next
        };
        self.head = next;
        self.len -= 1;
        // INVARIANT: the page left the stack with `private` cleared and no page type.
        Some(OwnedPage { ptr })
    }
}

impl Drop for PageStack {
    fn drop(&mut self) {
        while self.pop().is_some() {}
    }
}

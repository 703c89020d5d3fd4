// SPDX-License-Identifier: GPL-2.0

//! Pages owned by a balloon and the memory-management counters a balloon adjusts.
//!
//! Safe code can allocate pages for the balloon, read their frame numbers, keep them in a
//! [`PageStack`] (where they are out of the guest's managed memory and `PageOffline`) and free
//! them, and read memory statistics. It cannot free a page twice, keep using a page it freed,
//! or leave the managed-page count or a page's type wrong: an owned page is freed exactly once
//! when dropped, and a stack undoes what it did to its pages whichever way they leave it.

use core::ptr::NonNull;
use kernel::bindings;

/// The allocator's largest order (`MAX_PAGE_ORDER`).
pub(crate) const MAX_PAGE_ORDER: u32 = bindings::NR_PAGE_ORDERS - 1;

/// The guest's managed memory, in pages (`totalram_pages()`).
pub(crate) fn totalram_pages() -> u64 {
    // SAFETY: `totalram_pages` only reads an atomic counter.
    unsafe { bindings::totalram_pages() as u64 }
}

/// The memory the guest could still use without swapping, in pages (`si_mem_available()`, the
/// `MemAvailable` of `/proc/meminfo`): free pages above the reserves plus reclaimable caches.
pub(crate) fn available_pages() -> u64 {
    // SAFETY: `si_mem_available` only reads counters.
    let pages = unsafe { bindings::si_mem_available() };
    pages.max(0) as u64
}

/// Free pages of the whole system, in pages (`MemFree` of `/proc/meminfo`).
pub(crate) fn free_pages() -> u64 {
    let mut info = core::mem::MaybeUninit::<bindings::sysinfo>::zeroed();
    // SAFETY: `info` is valid for writes; `si_meminfo` fills the memory fields.
    unsafe { bindings::si_meminfo(info.as_mut_ptr()) };
    // SAFETY: Zeroed, then filled: every field is initialised.
    let info = unsafe { info.assume_init() };
    info.freeram as u64
}

/// An order-0 page owned by the driver.
///
/// # Invariants
///
/// `ptr` is an order-0 page (from `alloc_pages`, or split from a block by `split_page`) that
/// this object owns: it holds the only reference, the page is on no list, its `private` field is
/// zero and it is not `PageOffline`.
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
    fn adjust_managed(&self, delta: i64) {
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

/// `1 << order` contiguous pages owned by the driver as one unsplit block.
///
/// # Invariants
///
/// `ptr` is the first page of a non-compound block of `order` returned by `alloc_pages` that this
/// object owns: the first page holds the only reference (the others have none, as the allocator
/// leaves them), no page of the block is on a list, has a page type or a `private` value.
pub(crate) struct OwnedBlock {
    ptr: NonNull<bindings::page>,
    order: u32,
}

// SAFETY: An owned block is plain memory, not tied to the thread that allocated it.
unsafe impl Send for OwnedBlock {}

impl OwnedBlock {
    /// Allocates `1 << order` contiguous pages for the balloon in one go, without reclaim or
    /// compaction (it fails at once when no free block of that order is left), with the flags of
    /// [`OwnedPage::alloc_for_balloon`] otherwise.
    ///
    /// Whole blocks let the host free whole huge pages behind the balloon, and cost one
    /// allocation instead of `1 << order`.
    pub(crate) fn alloc_for_balloon(order: u32) -> Option<OwnedBlock> {
        if order > MAX_PAGE_ORDER {
            return None;
        }
        let gfp = bindings::__GFP_HIGHMEM
            | bindings::__GFP_NOMEMALLOC
            | bindings::__GFP_NORETRY
            | bindings::__GFP_NOWARN;
        // SAFETY: `alloc_pages` may be called with these flags from any context that may
        // allocate; they never sleep.
        let ptr = NonNull::new(unsafe { bindings::alloc_pages(gfp, order) })?;
        // INVARIANT: a non-null result is a fresh, non-compound block of `order` that we own.
        Some(OwnedBlock { ptr, order })
    }

    /// The block's order.
    pub(crate) fn order(&self) -> u32 {
        self.order
    }

    /// Frame number of the block's first page.
    pub(crate) fn pfn(&self) -> u64 {
        // SAFETY: By the type invariant `ptr` is a valid page.
        unsafe { bindings::page_to_pfn(self.ptr.as_ptr()) as u64 }
    }

    /// Splits the block into order-0 pages, handed out by the returned [`PageBlock`].
    pub(crate) fn split(self) -> PageBlock {
        let (ptr, order) = (self.ptr, self.order);
        core::mem::forget(self);
        // SAFETY: `ptr` is a non-compound block of `order` that we own (type invariant).
        unsafe { bindings::split_page(ptr.as_ptr(), order) };
        // SAFETY: `ptr` is a valid page.
        let pfn = unsafe { bindings::page_to_pfn(ptr.as_ptr()) } as u64;
        // INVARIANT: after `split_page` each of the `1 << order` pages is an order-0 page with
        // its own reference, all owned by the block.
        PageBlock {
            next: pfn,
            end: pfn + (1u64 << order),
        }
    }

    /// Adds `delta` blocks to the managed page count of the block's zone and of the system.
    fn adjust_managed(&self, delta: i64) {
        // SAFETY: By the type invariant `ptr` is a valid page; a block lies in one zone.
        unsafe {
            bindings::adjust_managed_page_count(self.ptr.as_ptr(), (delta << self.order) as _)
        };
    }

    /// Marks every page of the block `PageOffline` (`true`) or clears the mark.
    ///
    /// # Safety
    ///
    /// With `true`, no page of the block may have a page type; with `false`, every page must be
    /// `PageOffline` (set by this function). A block must not be freed while marked.
    unsafe fn set_offline(&self, offline: bool) {
        for i in 0..1usize << self.order {
            // The block's pages are consecutive `struct page`s: a buddy block never crosses a
            // memory section.
            // SAFETY: A page of a block we own (type invariant); by the function's safety
            // requirements its type is set only when it has none and cleared only when set.
            unsafe {
                let page = self.ptr.as_ptr().add(i);
                if offline {
                    bindings::__SetPageOffline(page);
                } else {
                    bindings::__ClearPageOffline(page);
                }
            }
        }
    }

    fn into_raw(self) -> NonNull<bindings::page> {
        let ptr = self.ptr;
        core::mem::forget(self);
        ptr
    }
}

impl Drop for OwnedBlock {
    fn drop(&mut self) {
        // SAFETY: By the type invariant we own this non-compound block of `order`.
        unsafe { bindings::__free_pages(self.ptr.as_ptr(), self.order) };
    }
}

/// Order-0 pages split from one block, handed out one at a time; those not taken are freed
/// when the block is dropped.
///
/// # Invariants
///
/// The pages with frame numbers `next..end` are order-0 pages owned by the block.
pub(crate) struct PageBlock {
    next: u64,
    end: u64,
}

// SAFETY: The block owns its pages exclusively; they are not tied to a thread.
unsafe impl Send for PageBlock {}

impl Iterator for PageBlock {
    type Item = OwnedPage;

    fn next(&mut self) -> Option<OwnedPage> {
        if self.next == self.end {
            return None;
        }
        // SAFETY: `next` is the frame number of a page of the block (type invariant), which has
        // a struct page.
        let ptr = unsafe { bindings::pfn_to_page(self.next as _) };
        self.next += 1;
        // INVARIANT: the page leaves the block; it is an order-0 page that we own.
        NonNull::new(ptr).map(|ptr| OwnedPage { ptr })
    }
}

impl Drop for PageBlock {
    fn drop(&mut self) {
        for page in self.by_ref() {
            drop(page);
        }
    }
}

/// The pages of a balloon: a last-in first-out collection of owned pages, linked through the
/// pages' `private` field, so it needs no memory of its own however many pages it holds.
///
/// A page in a stack has left the guest's managed memory (`MemTotal` shrinks by it) and is
/// `PageOffline`, as balloon pages are expected to be (dump tools skip them). [`PageStack::pop`]
/// and dropping the stack undo both, so whichever way a page leaves (deflated, never accepted by
/// the host, device gone), the accounting holds.
///
/// # Invariants
///
/// `head` is null or the first of `len` pages, each owned by the stack, marked `PageOffline` and
/// subtracted from the managed page count, whose `private` field holds the next page's address
/// (0 for the last one); `tail` is the last of them (null when the stack is empty).
pub(crate) struct PageStack {
    head: *mut bindings::page,
    tail: *mut bindings::page,
    len: usize,
}

// SAFETY: The stack owns its pages exclusively; they are not tied to a thread.
unsafe impl Send for PageStack {}

impl PageStack {
    /// An empty stack.
    pub(crate) const fn new() -> Self {
        Self {
            head: core::ptr::null_mut(),
            tail: core::ptr::null_mut(),
            len: 0,
        }
    }

    /// Number of pages held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Takes ownership of `page`, which leaves the guest's managed memory.
    pub(crate) fn push(&mut self, page: OwnedPage) {
        page.adjust_managed(-1);
        let ptr = page.into_raw().as_ptr();
        // SAFETY: `ptr` is a valid page we own (invariant of `OwnedPage`), with no page type set
        // and an unused `private` field.
        unsafe {
            bindings::set_page_private(ptr, self.head as usize as _);
            bindings::__SetPageOffline(ptr);
        }
        // INVARIANT: `ptr` is owned, offline, and links to the previous head.
        if self.head.is_null() {
            self.tail = ptr;
        }
        self.head = ptr;
        self.len += 1;
    }

    /// Gives back the most recently pushed page, back in the guest's managed memory.
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
        if next.is_null() {
            self.tail = core::ptr::null_mut();
        }
        self.len -= 1;
        // INVARIANT: the page left the stack with `private` cleared and no page type.
        let page = OwnedPage { ptr };
        page.adjust_managed(1);
        Some(page)
    }
}

impl PageStack {
    /// Moves every page of `other` onto this stack, in constant time.
    pub(crate) fn append(&mut self, other: &mut PageStack) {
        if other.head.is_null() {
            return;
        }
        // SAFETY: `other.tail` is the last page of `other` (type invariant), owned by it.
        unsafe { bindings::set_page_private(other.tail, self.head as usize as _) };
        if self.head.is_null() {
            self.tail = other.tail;
        }
        // INVARIANT: `other`'s pages now precede ours and `other` is left empty.
        self.head = other.head;
        self.len += other.len;
        other.head = core::ptr::null_mut();
        other.tail = core::ptr::null_mut();
        other.len = 0;
    }
}

impl Drop for PageStack {
    fn drop(&mut self) {
        // Each page goes back to the managed count, then to the allocator.
        while self.pop().is_some() {}
    }
}

/// Whole blocks out of the guest's memory (in the balloon, or in a batch the host is being told
/// of), all of one order: a last-in first-out collection linked through the first page's
/// `private` field, so it needs no memory of its own. An empty stack takes the order of the
/// first block pushed.
///
/// A block in a stack has left the guest's managed memory and each of its pages is
/// `PageOffline`, as in a [`PageStack`]; [`BlockStack::pop`] and dropping the stack undo both,
/// [`BlockStack::take_top`] moves a block between stacks as it is.
///
/// # Invariants
///
/// `head` is null or the first page of the first of `len` blocks of `order`, each owned by the
/// stack (as an [`OwnedBlock`] owns it), every page of each marked `PageOffline`, `1 << order`
/// pages each subtracted from the managed page count; a block's first page's `private` field
/// holds the next block's first page (0 for the last one).
pub(crate) struct BlockStack {
    head: *mut bindings::page,
    len: usize,
    order: u32,
}

// SAFETY: The stack owns its blocks exclusively; they are not tied to a thread.
unsafe impl Send for BlockStack {}

impl BlockStack {
    /// An empty stack for blocks of `order` (at most `MAX_PAGE_ORDER`, as any block's).
    pub(crate) const fn new(order: u32) -> Self {
        Self {
            head: core::ptr::null_mut(),
            len: 0,
            order: if order > MAX_PAGE_ORDER {
                MAX_PAGE_ORDER
            } else {
                order
            },
        }
    }

    /// Order of the blocks the stack takes.
    pub(crate) fn order(&self) -> u32 {
        self.order
    }

    /// Number of pages held.
    pub(crate) fn pages(&self) -> u64 {
        (self.len as u64) << self.order
    }

    /// Number of blocks held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether a block of `order` can be pushed (the stack's order, or any when it is empty).
    pub(crate) fn accepts(&self, order: u32) -> bool {
        self.len == 0 || order == self.order
    }

    /// Frame number of the first page of the block on top, if any.
    pub(crate) fn top_pfn(&self) -> Option<u64> {
        let ptr = NonNull::new(self.head)?;
        // SAFETY: By the type invariant `ptr` is a valid page.
        Some(unsafe { bindings::page_to_pfn(ptr.as_ptr()) } as u64)
    }

    /// Moves the block on top of `from` onto this stack, as it is (still offline, still out of
    /// the managed count); false, with nothing moved, if `from` is empty or its order is not
    /// one this stack accepts.
    pub(crate) fn take_top(&mut self, from: &mut BlockStack) -> bool {
        let Some(ptr) = NonNull::new(from.head) else {
            return false;
        };
        if !self.accepts(from.order) {
            return false;
        }
        // SAFETY: By the invariant of `from`, `ptr` is the first page of a block it owns, whose
        // `private` field links to the next one; it now links to our head instead.
        unsafe {
            from.head = bindings::page_private(ptr.as_ptr()) as usize as *mut bindings::page;
            bindings::set_page_private(ptr.as_ptr(), self.head as usize as _);
        }
        from.len -= 1;
        // INVARIANT: the block stays owned, offline and accounted, now by this stack, of our
        // order (the same, or adopted by an empty stack).
        self.order = from.order;
        self.head = ptr.as_ptr();
        self.len += 1;
        true
    }

    /// Whether the stack is empty.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes ownership of `block`, which leaves the guest's managed memory; hands it back if it
    /// is not of an order the stack accepts.
    pub(crate) fn push(&mut self, block: OwnedBlock) -> core::result::Result<(), OwnedBlock> {
        if !self.accepts(block.order) {
            return Err(block);
        }
        self.order = block.order;
        block.adjust_managed(-1);
        // SAFETY: An owned block's pages have no page type (invariant of `OwnedBlock`); the mark
        // is cleared before the block can be freed (`pop`, the only way out of the stack).
        unsafe { block.set_offline(true) };
        let ptr = block.into_raw().as_ptr();
        // SAFETY: `ptr` is the first page of a block we own, its `private` field unused.
        unsafe { bindings::set_page_private(ptr, self.head as usize as _) };
        // INVARIANT: the block is owned, offline, accounted and links to the previous head.
        self.head = ptr;
        self.len += 1;
        Ok(())
    }

    /// Gives back the most recently pushed block, back in the guest's managed memory.
    pub(crate) fn pop(&mut self) -> Option<OwnedBlock> {
        let ptr = NonNull::new(self.head)?;
        // SAFETY: By the type invariant `ptr` is the first page of an owned block whose
        // `private` field links to the next one.
        let next = unsafe {
            let next = bindings::page_private(ptr.as_ptr()) as usize as *mut bindings::page;
            bindings::set_page_private(ptr.as_ptr(), 0);
            next
        };
        self.head = next;
        self.len -= 1;
        // The block's pages are `PageOffline` and out of the managed count until restored here,
        // before the block is handed out.
        let block = core::mem::ManuallyDrop::new(OwnedBlock {
            ptr,
            order: self.order,
        });
        // SAFETY: Every page of a block in the stack is `PageOffline` (type invariant).
        unsafe { block.set_offline(false) };
        block.adjust_managed(1);
        // INVARIANT: the block left the stack with `private` cleared, no page type, accounted:
        // an `OwnedBlock` now.
        Some(core::mem::ManuallyDrop::into_inner(block))
    }
}

impl Drop for BlockStack {
    fn drop(&mut self) {
        // Each block goes back to the managed count, then to the allocator.
        while self.pop().is_some() {}
    }
}

/// The memory statistics a balloon reports to the host, gathered as the C driver's
/// `update_balloon_stats()` does. Page counts are in pages, events in events.
pub(crate) struct MemStats {
    /// Pages swapped in and out.
    pub(crate) swap_in: u64,
    pub(crate) swap_out: u64,
    /// Page faults, major and minor.
    pub(crate) major_faults: u64,
    pub(crate) minor_faults: u64,
    /// OOM killer invocations.
    pub(crate) oom_kills: u64,
    /// Allocation stalls, every zone together.
    pub(crate) alloc_stalls: u64,
    /// Pages scanned and reclaimed by kswapd (async) and by direct reclaim.
    pub(crate) scan_async: u64,
    pub(crate) scan_direct: u64,
    pub(crate) reclaim_async: u64,
    pub(crate) reclaim_direct: u64,
    /// Hugetlb page allocations and failures (`None` without `CONFIG_HUGETLB_PAGE`).
    pub(crate) hugetlb: Option<(u64, u64)>,
    /// Free, total and available memory and the page cache, in pages.
    pub(crate) free: u64,
    pub(crate) total: u64,
    pub(crate) available: u64,
    pub(crate) caches: u64,
}

/// Gathers [`MemStats`]. May sleep.
pub(crate) fn mem_stats() -> MemStats {
    let mut ev = [0usize; bindings::vm_event_item_NR_VM_EVENT_ITEMS as usize];
    // SAFETY: `ev` has room for every VM event counter, as `all_vm_events` writes them.
    unsafe { bindings::all_vm_events(ev.as_mut_ptr()) };
    let e = |item: bindings::vm_event_item| ev.get(item as usize).copied().unwrap_or(0) as u64;
    let stall_first = bindings::vm_event_item_ALLOCSTALL_NORMAL - bindings::zone_type_ZONE_NORMAL;
    let alloc_stalls = (0..bindings::MAX_NR_ZONES)
        .map(|z| e(stall_first + z))
        .sum();
    #[cfg(CONFIG_HUGETLB_PAGE)]
    let hugetlb = Some((
        e(bindings::vm_event_item_HTLB_BUDDY_PGALLOC),
        e(bindings::vm_event_item_HTLB_BUDDY_PGALLOC_FAIL),
    ));
    #[cfg(not(CONFIG_HUGETLB_PAGE))]
    let hugetlb = None;
    let mut info = core::mem::MaybeUninit::<bindings::sysinfo>::zeroed();
    // SAFETY: `info` is valid for writes; `si_meminfo` fills the memory fields.
    unsafe { bindings::si_meminfo(info.as_mut_ptr()) };
    // SAFETY: Zeroed, then filled: every field is initialised.
    let info = unsafe { info.assume_init() };
    // SAFETY: `vm_node_stat` is the global array of node counters, valid for the kernel's life;
    // the element is read atomically (an aligned word), as `global_node_page_state` does.
    let caches = unsafe {
        let item = (&raw const bindings::vm_node_stat)
            .cast::<bindings::atomic_long_t>()
            .add(bindings::node_stat_item_NR_FILE_PAGES as usize);
        core::ptr::read_volatile(&raw const (*item).counter)
    };
    MemStats {
        swap_in: e(bindings::vm_event_item_PSWPIN),
        swap_out: e(bindings::vm_event_item_PSWPOUT),
        major_faults: e(bindings::vm_event_item_PGMAJFAULT),
        minor_faults: e(bindings::vm_event_item_PGFAULT),
        oom_kills: e(bindings::vm_event_item_OOM_KILL),
        alloc_stalls,
        scan_async: e(bindings::vm_event_item_PGSCAN_KSWAPD),
        scan_direct: e(bindings::vm_event_item_PGSCAN_DIRECT),
        reclaim_async: e(bindings::vm_event_item_PGSTEAL_KSWAPD),
        reclaim_direct: e(bindings::vm_event_item_PGSTEAL_DIRECT),
        hugetlb,
        free: info.freeram as u64,
        total: info.totalram as u64,
        available: available_pages(),
        caches: caches.max(0) as u64,
    }
}

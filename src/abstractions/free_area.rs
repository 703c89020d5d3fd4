// SPDX-License-Identifier: GPL-2.0

//! Zones and their free lists: an allocation-free walk of the buddy allocator's free blocks.
//!
//! [`FreeListWalk`] visits `zone->free_area[order].free_list[migratetype]` of every populated
//! zone of every online node, highest order first, and records each free block it finds as a
//! [`Range`] of page frames in a [`FreeRanges`] buffer. It never allocates, and holds a zone's
//! lock (with interrupts off) for at most [`LOCK_BATCH`] list entries at a time. Between two
//! holds it keeps only the *frame number* of the next entry, never a list pointer: when it takes
//! the lock again it checks, through the frame's `struct page`, that the frame still heads a free
//! block of the same order and migratetype (so it is still on the same list) before resuming
//! there, and otherwise starts that list again from its head. Each list is visited at most
//! `nr_free + LOCK_BATCH` times per walk, so a walk always ends however busy the guest is.
//!
//! A range is a hint, not a reservation: the pages may be allocated again as soon as the lock is
//! dropped. Users must only report ranges to parties that treat them as such (free page hinting,
//! where the host re-sends any page written after the hint).

use crate::proto::hint::{coalesce, Range, MAX_RANGE_PAGES};
use core::mem::MaybeUninit;
use kernel::{
    alloc::{
        flags::{__GFP_ZERO, GFP_KERNEL},
        KBox,
    },
    bindings,
    prelude::*,
    time::Ktime,
};

/// Whether the walk is available. With memory hot-remove a frame's `struct page` can go away
/// between two holds of a zone's lock, so the walk could not check a resume point safely.
pub(crate) const SUPPORTED: bool = !cfg!(CONFIG_MEMORY_HOTREMOVE);

/// List entries visited per hold of a zone's lock, at most.
pub(crate) const LOCK_BATCH: usize = 128;

/// Ranges one [`FreeRanges`] buffer holds (scatter-gather entries of one virtqueue element).
pub(crate) const MAX_RANGES: usize = 128;

/// Highest order of the buddy allocator.
const MAX_ORDER: u32 = bindings::NR_PAGE_ORDERS - 1;

const PAGE_SHIFT: u32 = kernel::page::PAGE_SHIFT as u32;

/// Free ranges found by a walk, and the scatter-gather table that describes them to a device.
///
/// # Invariants
///
/// `ranges[..len]` are non-empty ranges of frames that were free in the buddy allocator when the
/// walk saw them: they lie inside a populated zone and have a `struct page`.
pub(crate) struct FreeRanges {
    ranges: [Range; MAX_RANGES],
    len: usize,
    sg: [MaybeUninit<bindings::scatterlist>; MAX_RANGES],
}

impl FreeRanges {
    /// An empty buffer, allocated zeroed in place (it is too large for the stack).
    pub(crate) fn new_boxed() -> Result<KBox<Self>> {
        let boxed = KBox::<Self>::new_uninit(GFP_KERNEL | __GFP_ZERO)?;
        // SAFETY: All-zero bytes are a valid `FreeRanges`: empty ranges, `len` 0, and scatterlist
        // slots that need no initialisation.
        // INVARIANT: `len` is 0.
        Ok(unsafe { boxed.assume_init() })
    }

    /// The ranges held.
    pub(crate) fn ranges(&self) -> &[Range] {
        &self.ranges[..self.len]
    }

    /// Number of ranges held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether no range is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the buffer is full.
    pub(crate) fn is_full(&self) -> bool {
        self.len == MAX_RANGES
    }

    /// Total pages of the ranges held.
    pub(crate) fn pages(&self) -> u64 {
        self.ranges().iter().map(|r| r.pages).sum()
    }

    /// Forgets the ranges held.
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    /// Records a free block, merging it into the last range when they touch.
    fn push(&mut self, pfn: u64, pages: u64) {
        if let Some(last) = self.len.checked_sub(1).map(|i| &mut self.ranges[i]) {
            if last.end() == pfn && last.pages + pages <= MAX_RANGE_PAGES {
                last.pages += pages;
                return;
            }
            if pfn + pages == last.pfn && last.pages + pages <= MAX_RANGE_PAGES {
                last.pfn = pfn;
                last.pages += pages;
                return;
            }
        }
        if self.len < MAX_RANGES {
            self.ranges[self.len] = Range { pfn, pages };
            self.len += 1;
        }
    }

    /// Fills the scatter-gather table, one entry per range, and returns it with its length.
    ///
    /// The entries describe free guest memory that the driver does not own: a device may only
    /// take them as hints (it must not write to them).
    pub(super) fn build_sg(&mut self) -> Option<(*mut bindings::scatterlist, u32)> {
        if self.len == 0 {
            return None;
        }
        let sg = self.sg.as_mut_ptr().cast::<bindings::scatterlist>();
        // SAFETY: `sg` points to `MAX_RANGES >= len` scatterlist slots that we own.
        unsafe { bindings::sg_init_table(sg, self.len as u32) };
        for (i, r) in self.ranges[..self.len].iter().enumerate() {
            // `coalesce` and `push` keep ranges within `MAX_RANGE_PAGES`, so this fits in u32.
            let bytes = u32::try_from(r.pages << PAGE_SHIFT).ok()?;
            // SAFETY: `i < len` is a slot initialised by `sg_init_table`; by the type invariant
            // `r.pfn` has a `struct page`, and the range is contiguous guest memory.
            unsafe {
                bindings::sg_set_page(sg.add(i), bindings::pfn_to_page(r.pfn as _), bytes, 0)
            };
        }
        Some((sg, self.len as u32))
    }
}

/// Measurements of a walk.
#[derive(Clone, Copy, Default)]
pub(crate) struct WalkStats {
    /// Longest hold of a zone lock, in nanoseconds.
    pub(crate) max_hold_ns: u64,
    /// Number of lock holds.
    pub(crate) holds: u64,
    /// Time the zone locks were held, all holds together, in nanoseconds.
    pub(crate) total_hold_ns: u64,
    /// Free list entries visited.
    pub(crate) entries: u64,
    /// Times a list was started again because its resume point was gone.
    pub(crate) restarts: u64,
}

/// Where a walk is: the list it visits and the frame number to resume at.
#[derive(Clone, Copy)]
struct Cursor {
    nid: i32,
    zone: usize,
    order: u32,
    mt: usize,
    /// The next entry to visit on the current list (`None`: its head).
    resume: Option<u64>,
    /// Visits left on the current list (`None`: not started).
    budget: Option<u64>,
}

/// A walk of the free lists of every populated zone.
///
/// # Invariants
///
/// `cursor.nid` is an online node or at least `MAX_NUMNODES` (the walk is over); `cursor.zone`
/// indexes that node's zones, `cursor.order` is in `min_order..=MAX_ORDER` and `cursor.mt` indexes
/// a zone's free lists. No pointer into a list is kept between two holds of a zone's lock.
pub(crate) struct FreeListWalk {
    cursor: Cursor,
    min_order: u32,
    stats: WalkStats,
}

// SAFETY: The walk holds frame numbers and indices only.
unsafe impl Send for FreeListWalk {}

fn migratetypes() -> usize {
    // SAFETY: Only the array length of a zero-initialised value is read.
    let area: bindings::free_area = unsafe { core::mem::zeroed() };
    area.free_list.len()
}

/// The first online node after `nid`, or `MAX_NUMNODES` when there is none.
fn next_online_node(nid: i32) -> i32 {
    let max = bindings::MAX_NUMNODES as i32;
    let mut n = nid.saturating_add(1).max(0);
    // SAFETY: `node_online` only tests a bit of the online node mask, for `n < MAX_NUMNODES`.
    while n < max && !unsafe { bindings::node_online(n) } {
        n += 1;
    }
    n
}

/// The zone `zone` of node `nid`.
fn zone_ptr(nid: i32, zone: usize) -> *mut bindings::zone {
    // SAFETY: `nid` is an online node, whose `pglist_data` lives as long as the kernel.
    let pgdat = unsafe { bindings::NODE_DATA(nid) };
    // SAFETY: `pgdat` is valid and `zone < MAX_NR_ZONES` (checked by callers).
    unsafe {
        (&raw mut (*pgdat).node_zones)
            .cast::<bindings::zone>()
            .add(zone)
    }
}

/// The `struct page` whose `lru`/`buddy_list` field is `entry`.
///
/// # Safety
///
/// `entry` must be the list link of a page on a free list.
unsafe fn page_of(entry: *mut bindings::list_head) -> *mut bindings::page {
    let offset = core::mem::offset_of!(bindings::page, __bindgen_anon_1)
        + core::mem::offset_of!(bindings::page__bindgen_ty_1__bindgen_ty_1, __bindgen_anon_1);
    // SAFETY: The link lives `offset` bytes into its page (the caller guarantees it is one).
    unsafe { entry.cast::<u8>().sub(offset).cast() }
}

/// The list link of `page`.
///
/// # Safety
///
/// `page` must be a valid `struct page`.
unsafe fn link_of(page: *mut bindings::page) -> *mut bindings::list_head {
    // SAFETY: `page` is valid; the link is a field of the page's first union.
    unsafe { (&raw mut (*page).__bindgen_anon_1.__bindgen_anon_1.__bindgen_anon_1).cast() }
}

impl FreeListWalk {
    /// Starts a walk that reports free blocks of order `min_order` and above.
    pub(crate) fn new(min_order: u32) -> Self {
        let min_order = min_order.min(MAX_ORDER);
        // INVARIANT: the first online node, its first zone, the highest order and first list.
        Self {
            cursor: Cursor {
                nid: next_online_node(-1),
                zone: 0,
                order: MAX_ORDER,
                mt: 0,
                resume: None,
                budget: None,
            },
            min_order,
            stats: WalkStats::default(),
        }
    }

    /// Whether every list has been visited.
    pub(crate) fn is_done(&self) -> bool {
        self.cursor.nid < 0 || self.cursor.nid as u32 >= bindings::MAX_NUMNODES
    }

    /// The walk's measurements so far.
    pub(crate) fn stats(&self) -> WalkStats {
        self.stats
    }

    /// Moves the cursor to the next list; returns whether it stays in the same zone.
    fn next_list(&mut self) -> bool {
        let c = &mut self.cursor;
        c.resume = None;
        c.budget = None;
        c.mt += 1;
        if c.mt < migratetypes() {
            return true;
        }
        c.mt = 0;
        if c.order > self.min_order {
            c.order -= 1;
            return true;
        }
        self.next_zone();
        false
    }

    /// Moves the cursor to the first list of the next zone.
    fn next_zone(&mut self) {
        let c = &mut self.cursor;
        c.resume = None;
        c.budget = None;
        c.mt = 0;
        c.order = MAX_ORDER;
        c.zone += 1;
        if c.zone >= bindings::MAX_NR_ZONES as usize {
            c.zone = 0;
            c.nid = next_online_node(c.nid);
        }
    }

    /// Adds free blocks to `out` until it is full or the walk is over, then merges the ranges
    /// that touch. `stop` is asked between two holds of a lock (never while one is held); when it
    /// says so, the call returns early and the walk can be continued later.
    pub(crate) fn fill(&mut self, out: &mut FreeRanges, mut stop: impl FnMut() -> bool) {
        // A few passes: coalescing may make room for more.
        for _ in 0..4 {
            while !out.is_full() && !self.is_done() {
                if stop() {
                    return;
                }
                self.fill_zone_batch(out);
            }
            out.len = coalesce(&mut out.ranges[..out.len], MAX_RANGE_PAGES);
            if self.is_done() || out.len > MAX_RANGES * 3 / 4 {
                return;
            }
        }
    }

    /// One hold of the current zone's lock: visits at most [`LOCK_BATCH`] entries of the zone's
    /// lists, from the cursor on.
    fn fill_zone_batch(&mut self, out: &mut FreeRanges) {
        let zone = zone_ptr(self.cursor.nid, self.cursor.zone);
        // SAFETY: `zone` is a zone of an online node.
        if !unsafe { bindings::populated_zone(zone) } {
            self.next_zone();
            return;
        }
        // SAFETY: `zone` is valid; these fields do not change while the zone is populated.
        let (start, end) = unsafe {
            (
                (*zone).zone_start_pfn as u64,
                (*zone).zone_start_pfn as u64 + (*zone).spanned_pages as u64,
            )
        };
        // SAFETY: `zone->lock` is an initialised spinlock; we release it below, before returning,
        // with the flags it gave.
        let flags = unsafe { bindings::spin_lock_irqsave(&raw mut (*zone).lock) };
        let t0 = Ktime::ktime_get();
        let mut visited = 0usize;
        // Nothing below allocates, sleeps or calls out of this module except for page accessors.
        'lists: loop {
            let order = self.cursor.order;
            let mt = self.cursor.mt;
            // SAFETY: We hold the zone's lock, which protects its free lists; the indices are in
            // range (type invariant).
            let head: *mut bindings::list_head =
                unsafe { &raw mut (*zone).free_area[order as usize].free_list[mt] };
            if self.cursor.budget.is_none() {
                // SAFETY: As above; `nr_free` is protected by the lock.
                let nr = unsafe { (*zone).free_area[order as usize].nr_free } as u64;
                self.cursor.budget = Some(nr + LOCK_BATCH as u64);
            }
            let mut entry = match self.cursor.resume {
                // SAFETY: `head` is a valid list head under the lock.
                None => unsafe { (*head).next },
                Some(pfn) => match resume_point(pfn, order, mt, start, end) {
                    Some(link) => link,
                    None => {
                        self.stats.restarts += 1;
                        // SAFETY: As above.
                        unsafe { (*head).next }
                    }
                },
            };
            loop {
                if entry == head || self.cursor.budget == Some(0) {
                    if self.next_list() {
                        continue 'lists;
                    }
                    break 'lists;
                }
                if visited == LOCK_BATCH || out.is_full() {
                    // SAFETY: `entry` is a link on the list, under the lock.
                    let page = unsafe { page_of(entry) };
                    // SAFETY: `page` is a valid page.
                    self.cursor.resume = Some(unsafe { bindings::page_to_pfn(page) } as u64);
                    break 'lists;
                }
                // SAFETY: `entry` is a link of a page on the free list, under the lock.
                let page = unsafe { page_of(entry) };
                // SAFETY: `page` is a valid page.
                let pfn = unsafe { bindings::page_to_pfn(page) } as u64;
                // INVARIANT: the block heads `1 << order` free frames of this zone.
                out.push(pfn, 1u64 << order);
                visited += 1;
                self.cursor.budget = self.cursor.budget.map(|b| b - 1);
                // SAFETY: Under the lock the list is consistent; `entry` is on it.
                entry = unsafe { (*entry).next };
            }
        }
        let held = elapsed_ns(t0);
        // SAFETY: We took the lock above with these flags.
        unsafe { bindings::spin_unlock_irqrestore(&raw mut (*zone).lock, flags) };
        self.stats.holds += 1;
        self.stats.entries += visited as u64;
        self.stats.max_hold_ns = self.stats.max_hold_ns.max(held);
        self.stats.total_hold_ns += held;
    }
}

/// The list link of frame `pfn` if it still heads a free block of `order` on the free list of
/// migratetype `mt` of the zone spanning `start..end`. Called with that zone's lock held.
fn resume_point(
    pfn: u64,
    order: u32,
    mt: usize,
    start: u64,
    end: u64,
) -> Option<*mut bindings::list_head> {
    if pfn < start || pfn >= end {
        return None;
    }
    // SAFETY: `pfn` lies in a populated zone and was the frame of a free block, so it has a
    // `struct page` (memory hot-remove is not configured), which stays valid memory.
    let page = unsafe { bindings::pfn_to_page(pfn as _) };
    // SAFETY: `page` is a valid page; under the zone lock, `PageBuddy` and the buddy order in
    // `private` are stable for the pages of this zone.
    let buddy = unsafe { bindings::PageBuddy(page) && bindings::page_private(page) == order as _ };
    // SAFETY: `page` is valid; the pageblock's migratetype (whose free list its free pages are
    // on) only changes under the zone lock.
    if !buddy || unsafe { bindings::get_pageblock_migratetype(page) } as usize != mt {
        return None;
    }
    // SAFETY: `page` is a valid page.
    Some(unsafe { link_of(page) })
}

fn elapsed_ns(start: Ktime) -> u64 {
    (Ktime::ktime_get().to_ns() - start.to_ns()).max(0) as u64
}

// SPDX-License-Identifier: GPL-2.0

//! Free blocks lent by the buddy allocator for free page hinting (`mm/page_hinting.c`).
//!
//! [`HintWalk`] is mm's walk over the free memory of every populated zone, the highest zone
//! first: its free pageblocks from the top of the zone down (live migration sends memory from
//! the bottom up, so the first hints name what it reaches last), then its smaller free blocks
//! from the free lists. [`HintBlocks::isolate`] asks mm for the next free blocks: mm takes them
//! off its free lists under the zone's lock (one hold, a bounded number of steps and at most
//! `PAGE_HINTING_BATCH` blocks, never below the zone's high watermark) and hands them over.
//! From then on the blocks are owned by the [`HintBlocks`] that holds them: nobody can
//! allocate, and so write, them while a device acts on the hint. Dropping the [`HintBlocks`]
//! (or [`HintBlocks::release`]) gives them back to the tail of their free lists; mm writes the
//! poison pattern or zeroes into them first when page poisoning or `init_on_free` expect them.
//! Blocks given back after the device acted on their hint stay marked as hinted while they
//! remain free, so that a later walk can pass them over ([`HintWalk::new`]).
//!
//! Safe code cannot reach a free list, a zone or its lock: it only gets owned blocks and hands
//! them back. It can keep blocks out of the allocator for as long as it holds them; the callers
//! bound that (see `src/balloon/hint.rs`).

use super::virtio::DeviceWritable;
use crate::proto::hint::{coalesce, Range, MAX_RANGE_PAGES};
use core::{mem::MaybeUninit, ptr::NonNull};
use kernel::{
    alloc::{flags::GFP_KERNEL, KVVec},
    bindings,
    prelude::*,
};

/// Blocks mm isolates in one hold of a zone's lock, at most.
pub(crate) const MAX_BLOCKS: usize = bindings::PAGE_HINTING_BATCH as usize;

/// Pages of the largest free block (`MAX_ORDER_NR_PAGES`).
pub(crate) const MAX_BLOCK_PAGES: u64 = 1 << (bindings::NR_PAGE_ORDERS - 1);

const PAGE_SHIFT: u32 = kernel::page::PAGE_SHIFT as u32;

/// Measurements of a walk.
#[derive(Clone, Copy, Default)]
pub(crate) struct WalkStats {
    /// Longest hold of a zone lock, in nanoseconds.
    pub(crate) max_hold_ns: u64,
    /// Number of lock holds.
    pub(crate) holds: u64,
    /// Time the zone locks were held, all holds together, in nanoseconds.
    pub(crate) total_hold_ns: u64,
    /// Calls that stopped at a zone's high watermark.
    pub(crate) low_zones: u64,
    /// Blocks passed over because they were hinted, and stayed free, since they were last freed.
    pub(crate) skipped: u64,
    /// Passes over a free list after one that isolated blocks (blocks may have been freed, or
    /// moved by compaction, behind it); a list ends after a pass that isolated none.
    pub(crate) wraps: u64,
}

/// mm's walk over the free memory of every populated zone (`struct page_hinting_walk`).
///
/// # Invariants
///
/// `raw` was initialised by `page_hinting_walk_init`; only mm changes its cursor.
pub(crate) struct HintWalk {
    raw: bindings::page_hinting_walk,
}

// SAFETY: The walk holds a zone pointer (zones live as long as the kernel) and plain numbers;
// mm's functions may be called on it from any thread.
unsafe impl Send for HintWalk {}

impl HintWalk {
    /// Starts a walk that hints free blocks of order `min_order` and above. With `skip_hinted`
    /// it passes over the blocks a walk has hinted since they were last freed (mm marks them
    /// when they are put back, and clears the mark when they leave the free lists); without it
    /// mm forgets every earlier hint first (a new hinting epoch), and the walk passes over the
    /// blocks it hinted itself (and marks two epochs old, see kernel patch 9). mm first drains
    /// the per-CPU free lists, so that the free pages they hold are on the lists the walk
    /// visits. May sleep.
    pub(crate) fn new(min_order: u32, skip_hinted: bool) -> Self {
        let mut raw = MaybeUninit::<bindings::page_hinting_walk>::zeroed();
        // SAFETY: `raw` is valid for writes; `page_hinting_walk_init` initialises every field. We
        // are in process context without spinlocks (the callers are work items), as it may sleep.
        unsafe { bindings::page_hinting_walk_init(raw.as_mut_ptr(), min_order, skip_hinted) };
        // SAFETY: Initialised just above (and all-zero is a valid value anyway).
        let raw = unsafe { raw.assume_init() };
        // INVARIANT: initialised by `page_hinting_walk_init`.
        Self { raw }
    }

    /// Whether every zone has been visited.
    pub(crate) fn is_done(&self) -> bool {
        // SAFETY: `raw` is an initialised walk (type invariant).
        unsafe { bindings::page_hinting_walk_done(&self.raw) }
    }

    /// Whether the last [`HintBlocks::isolate`] stopped at a zone's high watermark. The walk
    /// keeps its place: give blocks back and isolate again, or [`HintWalk::leave_zone`].
    pub(crate) fn is_low(&self) -> bool {
        // SAFETY: `raw` is an initialised walk (type invariant).
        unsafe { bindings::page_hinting_walk_low(&self.raw) }
    }

    /// Goes on with the next zone, leaving the rest of this one unhinted: for a walk at a
    /// zone's high watermark whose caller holds no blocks it could give back.
    pub(crate) fn leave_zone(&mut self) {
        // SAFETY: `raw` is an initialised walk (type invariant); mm moves its cursor.
        unsafe { bindings::page_hinting_walk_leave_zone(&mut self.raw) }
    }

    /// The walk's measurements so far.
    pub(crate) fn stats(&self) -> WalkStats {
        WalkStats {
            max_hold_ns: self.raw.hold_ns_max,
            holds: self.raw.holds,
            total_hold_ns: self.raw.hold_ns_total,
            low_zones: self.raw.low_zones,
            skipped: self.raw.skipped,
            wraps: self.raw.wraps,
        }
    }
}

/// Free blocks isolated from the allocator for hinting, and the scatter-gather table that
/// describes them to a device (a holder made for page records has none).
///
/// # Invariants
///
/// `blocks[..len]` are blocks isolated by `page_hinting_isolate` and not yet put back: this
/// object owns them and puts them back when it is dropped. `ranges[..nranges]` and the
/// scatter-gather table describe (only) those blocks, when `nranges > 0`. The three arrays are
/// allocated once, at `capacity` entries (the table at 0 or `capacity`), and never resized, so
/// the table stays in place as long as `self` lives.
pub(crate) struct HintBlocks {
    blocks: KVVec<bindings::page_hinting_block>,
    len: usize,
    pages: u64,
    ranges: KVVec<Range>,
    nranges: usize,
    sg: KVVec<MaybeUninit<bindings::scatterlist>>,
}

// SAFETY: The blocks are owned exclusively; mm's functions may be called from any thread.
unsafe impl Send for HintBlocks {}

impl HintBlocks {
    /// An empty holder for `capacity` blocks, with a scatter-gather table for them when `sg`.
    pub(crate) fn new(capacity: usize, sg: bool) -> Result<Self> {
        let empty = bindings::page_hinting_block {
            page: core::ptr::null_mut(),
            order: 0,
            epoch: 0,
        };
        // INVARIANT: no block is held; the arrays have their final sizes.
        Ok(Self {
            blocks: KVVec::from_elem(empty, capacity, GFP_KERNEL)?,
            len: 0,
            pages: 0,
            ranges: KVVec::from_elem(Range { pfn: 0, pages: 0 }, capacity, GFP_KERNEL)?,
            nranges: 0,
            sg: KVVec::from_elem(
                MaybeUninit::uninit(),
                if sg { capacity } else { 0 },
                GFP_KERNEL,
            )?,
        })
    }

    /// Whether no block is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of blocks held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Pages of the blocks held.
    pub(crate) fn pages(&self) -> u64 {
        self.pages
    }

    /// Takes the next free blocks of `walk` (one hold of a zone's lock, at most [`MAX_BLOCKS`]),
    /// as long as the blocks held stay within `max_blocks` (and the holder's capacity) and
    /// `max_pages` pages; returns how many were added. Zero with the walk not done means a zone or
    /// list ended (call again) or, with [`HintWalk::is_low`], that the zone is at its high
    /// watermark (give blocks back first, or [`HintWalk::leave_zone`]). May sleep.
    pub(crate) fn isolate(
        &mut self,
        walk: &mut HintWalk,
        max_blocks: usize,
        max_pages: u64,
    ) -> usize {
        let room = max_blocks
            .min(self.blocks.len())
            .saturating_sub(self.len)
            .min(MAX_BLOCKS);
        let pages_room = max_pages.saturating_sub(self.pages);
        if room == 0 || pages_room == 0 || walk.is_done() {
            return 0;
        }
        let free = &mut self.blocks.as_mut_slice()[self.len..self.len + room];
        // SAFETY: `walk.raw` is an initialised walk; `free` has room for `room` entries; we are
        // in process context without locks (the callers are work items).
        let n = unsafe {
            bindings::page_hinting_isolate(
                &mut walk.raw,
                free.as_mut_ptr(),
                room as u32,
                pages_room as _,
            )
        } as usize;
        let n = n.min(room);
        for b in &free[..n] {
            self.pages += 1u64 << b.order;
        }
        // INVARIANT: mm isolated these `n` blocks for us; the ranges are rebuilt before use.
        self.len += n;
        self.nranges = 0;
        n
    }

    /// Gives every block back to the allocator; `hinted`: the device acted on their hint (mm
    /// then marks them until they leave the free lists; a wrong `true` only costs later hints,
    /// see [`HintWalk::new`]). May sleep.
    pub(crate) fn release(&mut self, hinted: bool) {
        if self.len > 0 {
            // SAFETY: `blocks[..len]` are isolated blocks we own (type invariant); afterwards
            // we forget them.
            unsafe {
                bindings::page_hinting_putback(self.blocks.as_mut_ptr(), self.len as u32, hinted)
            };
        }
        // INVARIANT: nothing is held any more.
        self.len = 0;
        self.pages = 0;
        self.nranges = 0;
    }

    /// Keeps the blocks of the first `keep` ranges (of [`HintBlocks::ranges`]) and moves the
    /// others into `rest`, as many as it has room for; those it has no room for go back to the
    /// allocator. Returns the pages given back. May sleep.
    pub(crate) fn keep_ranges(&mut self, keep: usize, rest: &mut HintBlocks) -> u64 {
        if self.nranges == 0 {
            self.merge();
        }
        let Some(cut) = self.ranges.as_slice()[..self.nranges]
            .get(keep)
            .map(|r| r.pfn)
        else {
            return 0;
        };
        // Blocks at or above `cut` move to the end, then to `rest` or back.
        let blocks = &mut self.blocks.as_mut_slice()[..self.len];
        let mut kept = 0;
        let mut pages = 0;
        for i in 0..blocks.len() {
            // SAFETY: `blocks[i].page` is the first page of a block we own (type invariant).
            let pfn = unsafe { bindings::page_to_pfn(blocks[i].page) } as u64;
            if pfn < cut {
                pages += 1u64 << blocks[i].order;
                blocks.swap(kept, i);
                kept += 1;
            }
        }
        let n = (rest.blocks.len() - rest.len).min(blocks.len() - kept);
        let (moved, back) = blocks[kept..].split_at_mut(n);
        for b in moved.iter() {
            rest.push(*b);
        }
        let mut given_back = 0;
        for b in back.iter() {
            given_back += 1u64 << b.order;
        }
        if !back.is_empty() {
            // SAFETY: `back` are isolated blocks we own (type invariant); afterwards we forget
            // them.
            unsafe { bindings::page_hinting_putback(back.as_mut_ptr(), back.len() as u32, false) };
        }
        // INVARIANT: the blocks below `cut` are kept, the others moved to `rest` or were put
        // back; the first `keep` ranges describe exactly the kept ones.
        self.len = kept;
        self.pages = pages;
        self.nranges = keep;
        given_back
    }

    /// Moves blocks from `from` into `self`, as many as `self` has room for (up to
    /// `max_blocks`), from the end of `from`.
    pub(crate) fn take_from(&mut self, from: &mut HintBlocks, max_blocks: usize) {
        let room = max_blocks.min(self.blocks.len()).saturating_sub(self.len);
        let n = room.min(from.len);
        for _ in 0..n {
            from.len -= 1;
            let b = from.blocks.as_slice()[from.len];
            from.pages -= 1u64 << b.order;
            // INVARIANT: `from` no longer holds the block (its ranges are rebuilt before use);
            // `self` owns it from the next line on.
            from.nranges = 0;
            self.push(b);
        }
    }

    /// Appends `b`, a block the caller owned and gives up; the caller has checked that there is
    /// room.
    fn push(&mut self, b: bindings::page_hinting_block) {
        self.blocks.as_mut_slice()[self.len] = b;
        // INVARIANT: `self` owns the block from now on; its ranges are rebuilt before use.
        self.len += 1;
        self.pages += 1u64 << b.order;
        self.nranges = 0;
    }

    /// The blocks held as ranges, adjacent ones merged, in ascending order.
    pub(crate) fn ranges(&mut self) -> &[Range] {
        if self.nranges == 0 {
            self.merge();
        }
        &self.ranges.as_slice()[..self.nranges]
    }

    /// Merges adjacent blocks into ranges (what [`DeviceWritable::sg`] describes); returns how
    /// many ranges they make.
    pub(crate) fn merge(&mut self) -> usize {
        let ranges = self.ranges.as_mut_slice();
        for (r, b) in ranges.iter_mut().zip(&self.blocks.as_slice()[..self.len]) {
            // SAFETY: `b.page` is the first page of a block we own (type invariant).
            let pfn = unsafe { bindings::page_to_pfn(b.page) } as u64;
            *r = Range {
                pfn,
                pages: 1u64 << b.order,
            };
        }
        self.nranges = coalesce(&mut ranges[..self.len], MAX_RANGE_PAGES);
        self.nranges
    }
}

// SAFETY: The table is a heap array owned by `self` and never reallocated (type invariant), so
// it stays in place while `self` lives; its `nranges > 0` entries are initialised by
// `sg_init_table` and `sg_set_page`, and each one describes blocks that `self` owns exclusively
// (isolated from the allocator: nobody else reads or writes them) until it is dropped or
// released, both of which need `&mut self`.
unsafe impl DeviceWritable for HintBlocks {
    /// Fills the scatter-gather table with the blocks held, adjacent ones merged into one
    /// entry, and returns it with its length (`None` for a holder without a table).
    fn sg(&mut self) -> Option<(NonNull<bindings::scatterlist>, u32)> {
        // `nranges` is reset whenever the blocks change, so ranges built by `merge` are reused.
        if self.nranges == 0 && self.merge() == 0 {
            return None;
        }
        if self.nranges > self.sg.len() {
            return None;
        }
        let sg = self.sg.as_mut_ptr().cast::<bindings::scatterlist>();
        // SAFETY: `sg` points to `sg.len() >= nranges` scatterlist slots that we own.
        unsafe { bindings::sg_init_table(sg, self.nranges as u32) };
        for (i, r) in self.ranges.as_slice()[..self.nranges].iter().enumerate() {
            // `coalesce` keeps ranges within `MAX_RANGE_PAGES`, so this fits in u32.
            let bytes = u32::try_from(r.pages << PAGE_SHIFT).ok()?;
            // SAFETY: `i < nranges` is a slot initialised by `sg_init_table`; the range is made
            // of blocks we own, contiguous guest memory with a `struct page` for each frame.
            unsafe {
                bindings::sg_set_page(sg.add(i), bindings::pfn_to_page(r.pfn as _), bytes, 0)
            };
        }
        Some((NonNull::new(sg)?, self.nranges as u32))
    }
}

impl Drop for HintBlocks {
    fn drop(&mut self) {
        self.release(false);
    }
}

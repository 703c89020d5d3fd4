// SPDX-License-Identifier: GPL-2.0

//! The counters a balloon device shows in debugfs.

use crate::abstractions::debugfs::Counter;
use crate::proto::{hint::Range, records::Encoded};
use core::sync::atomic::{AtomicU64, Ordering};
use kernel::c_str;

/// Counters of one balloon device, each a file in its debugfs directory.
#[derive(Default)]
pub(crate) struct Counters {
    /// Pages in the balloon.
    pub(crate) pages: AtomicU64,
    /// The last target the host set, in pages.
    pub(crate) target: AtomicU64,
    /// Pages taken into the balloon since probe.
    pub(crate) inflated: AtomicU64,
    /// Pages given back since probe.
    pub(crate) deflated: AtomicU64,
    /// Descriptors sent on the inflate queue.
    pub(crate) inflate_descs: AtomicU64,
    /// Descriptors sent on the deflate queue.
    pub(crate) deflate_descs: AtomicU64,
    /// Notifications sent to the host.
    pub(crate) kicks: AtomicU64,
    /// Time spent allocating balloon pages, in nanoseconds.
    pub(crate) alloc_ns: AtomicU64,
    /// Time spent waiting for the host to use buffers, in nanoseconds.
    pub(crate) host_wait_ns: AtomicU64,
    /// Whole blocks (2 MiB or the host's minimum order) the balloon allocated, kept whole or split.
    pub(crate) blocks: AtomicU64,
    /// Page allocations that failed.
    pub(crate) alloc_failures: AtomicU64,
    /// Times inflating stopped because the guest's available memory reached the floor.
    pub(crate) floor_stops: AtomicU64,
    /// Config change notifications.
    pub(crate) config_changes: AtomicU64,
    /// Values from the host that failed a check.
    pub(crate) host_errors: AtomicU64,
    /// Free page hinting rounds started.
    pub(crate) hint_rounds: AtomicU64,
    /// Rounds ended, whichever way (equal to `hint_rounds` when no round is running).
    pub(crate) hint_ended: AtomicU64,
    /// Rounds ended before the walk was over (new id, `DONE`, device gone, host trouble).
    pub(crate) hint_aborts: AtomicU64,
    /// Of `hint_aborts`, the rounds the host did not use buffers for in time, or refused one.
    pub(crate) hint_host_trouble: AtomicU64,
    /// The command id read when a round was last found overtaken (a new id, or `DONE`).
    pub(crate) hint_overtaken_by: AtomicU64,
    /// Times the host said it was done with the hints.
    pub(crate) hint_done: AtomicU64,
    /// Buffers of free ranges sent.
    pub(crate) hint_descs: AtomicU64,
    /// Free ranges sent (scatter-gather entries).
    pub(crate) hint_ranges: AtomicU64,
    /// Free pages reported, counted once per round they were reported in.
    pub(crate) hint_pages: AtomicU64,
    /// Duration of the last round, from the id to the stop id, in nanoseconds.
    pub(crate) hint_round_ns: AtomicU64,
    /// Duration of every round together, in nanoseconds.
    pub(crate) hint_round_ns_total: AtomicU64,
    /// Longest hold of a zone lock by the free list walk, in nanoseconds.
    pub(crate) hint_lock_max_ns: AtomicU64,
    /// Holds of a zone lock by the free list walk.
    pub(crate) hint_lock_holds: AtomicU64,
    /// Time the free list walk held zone locks, every hold together, in nanoseconds (divided by
    /// `hint_lock_holds`: the mean hold).
    pub(crate) hint_lock_ns_total: AtomicU64,
    /// Walk calls that stopped at a zone's high watermark (the round then waits for its buffers
    /// in flight, or leaves the zone when it has none).
    pub(crate) hint_low_zones: AtomicU64,
    /// Blocks a walk passed over: hinted in this migration (in an earlier round, or put back by
    /// this round) and free since.
    pub(crate) hint_skipped: AtomicU64,
    /// Passes a walk made over a free list after one that isolated blocks (blocks may have been
    /// freed, or moved by compaction, behind it); a list ends after a pass that isolated none.
    pub(crate) hint_wraps: AtomicU64,
    /// Pages isolated for a page-record hint buffer that went back to the allocator unsent:
    /// their records fitted neither that buffer nor the next ones of the round.
    pub(crate) hint_unsent: AtomicU64,
    /// Pages isolated for hints now (in buffers the host has not used yet).
    pub(crate) hint_isolated: AtomicU64,
    /// Most pages isolated for hints at one moment (at most `hint_bound`).
    pub(crate) hint_isolated_max: AtomicU64,
    /// Pages isolated for hints at one moment, at most: the buffers in flight times the pages
    /// per buffer (half of the guest's memory, 64 MiB to 1 GiB). 0 without hinting.
    pub(crate) hint_bound: AtomicU64,
    /// Buffers made after probe (to replace those a suspend took back).
    pub(crate) buffers_made: AtomicU64,
    /// Statistics buffers the host used (its requests for fresh statistics).
    pub(crate) stats_requests: AtomicU64,
    /// Statistics buffers queued.
    pub(crate) stats_sent: AtomicU64,
    /// Suspends (freeze) and resumes (restore) of the device.
    pub(crate) freezes: AtomicU64,
    pub(crate) restores: AtomicU64,
    /// Smallest order of the free blocks reported (writable; 0: every free block).
    pub(crate) hint_min_order: AtomicU64,
    /// 1 when `VIRTIO_BALLOON_F_PAGE_RANGES` was negotiated: frames travel as page records.
    pub(crate) page_ranges: AtomicU64,
    /// The host's `ranges_min_order`, and the order of the blocks the balloon takes.
    pub(crate) ranges_min_order: AtomicU64,
    pub(crate) block_order: AtomicU64,
    /// Page-record buffers sent (inflate, deflate and free page queues), their bytes, the
    /// frames they named, and their records by type.
    pub(crate) record_buffers: AtomicU64,
    pub(crate) record_bytes: AtomicU64,
    pub(crate) record_pages: AtomicU64,
    pub(crate) record_runs: AtomicU64,
    pub(crate) record_bitmaps: AtomicU64,
    pub(crate) record_lists: AtomicU64,
    /// Contiguity: ranges of contiguous frames sent in page records, by length in pages.
    pub(crate) range_len: [AtomicU64; RANGE_LEN_BUCKETS],
}

/// Buckets of the range-length histogram: 1, 2-7, 8-63, 64-511, 512-4095, 4096 and more pages
/// (powers of 8).
pub(crate) const RANGE_LEN_BUCKETS: usize = 6;

/// What one sealed page-record buffer holds, counted once the buffer is on its queue (a buffer
/// the queue refuses is not counted).
#[derive(Clone, Copy, Default)]
pub(crate) struct RecordTally {
    enc: Encoded,
    pages: u64,
    /// Ranges by length, as in [`Counters::range_len`].
    lens: [u64; RANGE_LEN_BUCKETS],
}

impl RecordTally {
    /// The tally of what [`crate::proto::records::encode`] wrote for `ranges` (merged), which
    /// name `pages` frames.
    pub(crate) fn new(enc: &Encoded, ranges: &[Range], pages: u64) -> Self {
        let mut lens = [0; RANGE_LEN_BUCKETS];
        for r in ranges {
            // 0 for 1 page, then one bucket per factor of 8 (2-7, 8-63, ...).
            let log2 = 63 - r.pages.max(1).leading_zeros();
            let bucket = if r.pages <= 1 {
                0
            } else {
                log2 as usize / 3 + 1
            };
            lens[bucket.min(RANGE_LEN_BUCKETS - 1)] += 1;
        }
        Self {
            enc: *enc,
            pages,
            lens,
        }
    }

    /// Adds the buffer to the counters.
    pub(crate) fn count(&self, c: &Counters) {
        add(&c.record_buffers, 1);
        add(&c.record_bytes, self.enc.bytes as u64);
        add(&c.record_pages, self.pages);
        add(&c.record_runs, self.enc.runs.into());
        add(&c.record_bitmaps, self.enc.bitmaps.into());
        add(&c.record_lists, self.enc.lists.into());
        for (counter, n) in c.range_len.iter().zip(self.lens) {
            add(counter, n);
        }
    }
}

impl Counters {
    /// The files of the debugfs directory.
    pub(crate) const FILES: &'static [Counter<Counters>] = &[
        (c_str!("pages"), |c| &c.pages),
        (c_str!("target"), |c| &c.target),
        (c_str!("inflated"), |c| &c.inflated),
        (c_str!("deflated"), |c| &c.deflated),
        (c_str!("inflate_descs"), |c| &c.inflate_descs),
        (c_str!("deflate_descs"), |c| &c.deflate_descs),
        (c_str!("kicks"), |c| &c.kicks),
        (c_str!("alloc_ns"), |c| &c.alloc_ns),
        (c_str!("host_wait_ns"), |c| &c.host_wait_ns),
        (c_str!("blocks"), |c| &c.blocks),
        (c_str!("alloc_failures"), |c| &c.alloc_failures),
        (c_str!("floor_stops"), |c| &c.floor_stops),
        (c_str!("config_changes"), |c| &c.config_changes),
        (c_str!("host_errors"), |c| &c.host_errors),
        (c_str!("hint_rounds"), |c| &c.hint_rounds),
        (c_str!("hint_ended"), |c| &c.hint_ended),
        (c_str!("hint_aborts"), |c| &c.hint_aborts),
        (c_str!("hint_host_trouble"), |c| &c.hint_host_trouble),
        (c_str!("hint_overtaken_by"), |c| &c.hint_overtaken_by),
        (c_str!("hint_done"), |c| &c.hint_done),
        (c_str!("hint_descs"), |c| &c.hint_descs),
        (c_str!("hint_ranges"), |c| &c.hint_ranges),
        (c_str!("hint_pages"), |c| &c.hint_pages),
        (c_str!("hint_round_ns"), |c| &c.hint_round_ns),
        (c_str!("hint_round_ns_total"), |c| &c.hint_round_ns_total),
        (c_str!("hint_lock_max_ns"), |c| &c.hint_lock_max_ns),
        (c_str!("hint_lock_holds"), |c| &c.hint_lock_holds),
        (c_str!("hint_lock_ns_total"), |c| &c.hint_lock_ns_total),
        (c_str!("hint_low_zones"), |c| &c.hint_low_zones),
        (c_str!("hint_skipped"), |c| &c.hint_skipped),
        (c_str!("hint_wraps"), |c| &c.hint_wraps),
        (c_str!("hint_unsent"), |c| &c.hint_unsent),
        (c_str!("hint_isolated"), |c| &c.hint_isolated),
        (c_str!("hint_isolated_max"), |c| &c.hint_isolated_max),
        (c_str!("hint_bound"), |c| &c.hint_bound),
        (c_str!("buffers_made"), |c| &c.buffers_made),
        (c_str!("stats_requests"), |c| &c.stats_requests),
        (c_str!("stats_sent"), |c| &c.stats_sent),
        (c_str!("freezes"), |c| &c.freezes),
        (c_str!("restores"), |c| &c.restores),
        (c_str!("page_ranges"), |c| &c.page_ranges),
        (c_str!("ranges_min_order"), |c| &c.ranges_min_order),
        (c_str!("block_order"), |c| &c.block_order),
        (c_str!("record_buffers"), |c| &c.record_buffers),
        (c_str!("record_bytes"), |c| &c.record_bytes),
        (c_str!("record_pages"), |c| &c.record_pages),
        (c_str!("record_runs"), |c| &c.record_runs),
        (c_str!("record_bitmaps"), |c| &c.record_bitmaps),
        (c_str!("record_lists"), |c| &c.record_lists),
        (c_str!("range_len_1"), |c| &c.range_len[0]),
        (c_str!("range_len_2_7"), |c| &c.range_len[1]),
        (c_str!("range_len_8_63"), |c| &c.range_len[2]),
        (c_str!("range_len_64_511"), |c| &c.range_len[3]),
        (c_str!("range_len_512_4095"), |c| &c.range_len[4]),
        (c_str!("range_len_4096_up"), |c| &c.range_len[5]),
    ];

    /// The writable files of the debugfs directory (tunables).
    pub(crate) const TUNABLES: &'static [Counter<Counters>] =
        &[(c_str!("hint_min_order"), |c| &c.hint_min_order)];
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Sets a counter.
pub(crate) fn set(counter: &AtomicU64, n: u64) {
    counter.store(n, Ordering::Relaxed);
}

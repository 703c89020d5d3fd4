// SPDX-License-Identifier: GPL-2.0

//! The counters a balloon device shows in debugfs.

use crate::abstractions::debugfs::Counter;
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
    /// Whole blocks (2 MiB) allocated and split into balloon pages.
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
    /// Rounds ended before the walk was over (new id, stop, config change, host trouble).
    pub(crate) hint_aborts: AtomicU64,
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
    /// Zones a walk left early because they were at their low watermark.
    pub(crate) hint_low_zones: AtomicU64,
    /// Pages isolated for hints now (in buffers the host has not used yet).
    pub(crate) hint_isolated: AtomicU64,
    /// Most pages isolated for hints at one moment (at most `hint_bound`).
    pub(crate) hint_isolated_max: AtomicU64,
    /// Pages isolated for hints at one moment, at most: the buffers in flight times the pages
    /// per buffer (an eighth of the guest's memory, 64 to 256 MiB). 0 without hinting.
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
        (c_str!("hint_isolated"), |c| &c.hint_isolated),
        (c_str!("hint_isolated_max"), |c| &c.hint_isolated_max),
        (c_str!("hint_bound"), |c| &c.hint_bound),
        (c_str!("buffers_made"), |c| &c.buffers_made),
        (c_str!("stats_requests"), |c| &c.stats_requests),
        (c_str!("stats_sent"), |c| &c.stats_sent),
        (c_str!("freezes"), |c| &c.freezes),
        (c_str!("restores"), |c| &c.restores),
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

// SPDX-License-Identifier: GPL-2.0

//! Free page hinting (`VIRTIO_BALLOON_F_FREE_PAGE_HINT`, virtio spec 5.5.6.7): the command ids
//! the host writes in `free_page_hint_cmd_id`, the state of the guest's reporting rounds, and the
//! coalescing of free blocks into the ranges that travel as scatter-gather entries.

/// Command id meaning "stop reporting" (also what QEMU shows while a round runs).
pub(crate) const CMD_ID_STOP: u32 = 0;
/// Command id meaning "the host is done with the hints of every round".
pub(crate) const CMD_ID_DONE: u32 = 1;

/// Whether the host has moved on from the running round `round`, given `now`, the command id
/// read after a config change during that round.
///
/// A new id or `DONE` ends the round; the round's own id does not, nor does the stop id. QEMU
/// shows the stop id while it applies hints (status `START`, entered without a config
/// interrupt), and at every bitmap sync it raises two config interrupts, one for its own stop
/// and one for the next round's id. The second can reach the guest after the round has started
/// and QEMU has seen its id: it then reads exactly as a real stop, and ending the round on it
/// lost whole first rounds (one in about six under TCG with two vCPUs). A real stop is followed,
/// once the sync is over, by the next id or `DONE`, which end the round; only a host that stops
/// and never moves on sees the walk run to its end, its hints dropped and its blocks back when
/// the host uses the buffers.
pub(crate) fn overtaken(round: u32, now: u32) -> bool {
    now != round && now != CMD_ID_STOP
}

/// Pages in one range at most (1 GiB of 4 KiB pages): a scatter-gather entry's length is a
/// 32-bit byte count.
pub(crate) const MAX_RANGE_PAGES: u64 = 1 << 18;

/// What the host's `free_page_hint_cmd_id` asks of the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    /// Stop the running round, if any.
    Stop,
    /// Migration is over: the host no longer uses the hints.
    Done,
    /// Report free pages in a round tagged with this id.
    Start(u32),
}

impl Command {
    /// Decodes the config field.
    pub(crate) fn from_raw(raw: u32) -> Command {
        match raw {
            CMD_ID_STOP => Command::Stop,
            CMD_ID_DONE => Command::Done,
            id => Command::Start(id),
        }
    }
}

/// What the driver does after reading the command id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing: the id is the one of the running or the last round.
    Nothing,
    /// End the running round (send the stop id).
    End,
    /// The host is done: end the running round, if any.
    Done,
    /// Start a round with this id (ending the running one first, if any).
    Start(u32),
}

/// The driver's view of the hinting rounds.
///
/// A round starts when the host shows a new command id. The same id read again (the host has
/// not yet seen the guest's answer, or a config change of another field) neither restarts nor
/// ends it; [`Command::Stop`], [`Command::Done`] or a different id end it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rounds {
    /// The id of the running round.
    active: Option<u32>,
    /// The id of the last round started, running or not.
    last: Option<u32>,
}

impl Rounds {
    /// No round started yet.
    pub(crate) const fn new() -> Self {
        Self {
            active: None,
            last: None,
        }
    }

    /// Applies the host's command id.
    pub(crate) fn on_command(&mut self, raw: u32) -> Action {
        match Command::from_raw(raw) {
            Command::Stop => match self.active.take() {
                Some(_) => Action::End,
                None => Action::Nothing,
            },
            Command::Done => {
                self.active = None;
                self.last = None;
                Action::Done
            }
            Command::Start(id) if self.last == Some(id) => Action::Nothing,
            Command::Start(id) => {
                self.active = Some(id);
                self.last = Some(id);
                Action::Start(id)
            }
        }
    }

    /// The running round ended on the guest's side (walk finished or aborted).
    pub(crate) fn finish(&mut self) {
        self.active = None;
    }
}

/// A range of free 4 KiB page frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Range {
    /// First frame number.
    pub(crate) pfn: u64,
    /// Number of frames (at least 1).
    pub(crate) pages: u64,
}

impl Range {
    /// The frame number after the range.
    pub(crate) fn end(&self) -> u64 {
        self.pfn.saturating_add(self.pages)
    }
}

/// Sorts `ranges` and merges the ones that touch or overlap into ranges of at most `max_pages`;
/// returns how many ranges are left at the front of the slice. Empty ranges are dropped; a range
/// that is longer than `max_pages` on input is kept as it is. Ranges that only touch are split
/// where one ended, never inside one (a block is never cut in two).
///
/// Every frame covered before is covered after, and no frame is added.
pub(crate) fn coalesce(ranges: &mut [Range], max_pages: u64) -> usize {
    sort(ranges);
    let mut out = 0usize;
    for i in 0..ranges.len() {
        let r = ranges[i];
        if r.pages == 0 {
            continue;
        }
        if out > 0 {
            let last = &mut ranges[out - 1];
            if r.pfn == last.end() && r.end() - last.pfn > max_pages.max(last.pages) {
                // Touching, but too long together: `r` starts the next range, so a range ends
                // only where an input range (a block) does.
            } else if r.pfn <= last.end() {
                let end = r.end().max(last.end());
                if end - last.pfn <= max_pages.max(last.pages) {
                    last.pages = end - last.pfn;
                    continue;
                }
                // Too long for one range: fill the last one up, start a new one with the rest.
                // `last.end() >= r.pfn`, so the rest is no longer than `r`.
                let split = last.pfn + max_pages.max(last.pages);
                last.pages = split - last.pfn;
                // `out <= i`: at most one entry is written per entry read.
                ranges[out] = Range {
                    pfn: split,
                    pages: end - split,
                };
                out += 1;
                continue;
            }
        }
        ranges[out] = r;
        out += 1;
    }
    out
}

/// Sorts by frame number: a heapsort, O(n log n) whatever the input's order (a page-record hint
/// buffer holds thousands of blocks, in free-list order), in place, with no allocation; every
/// index it uses is within the slice (`core`'s sorts carry panic paths for inconsistent
/// orderings, which a derived `Ord` never is, but the module has none). Runs already in order
/// (a batch of pages popped from the balloon's stack, reversed by the caller) are left as they
/// are.
pub(crate) fn sort(ranges: &mut [Range]) {
    if ranges.windows(2).all(|w| w[0] <= w[1]) {
        return;
    }
    let n = ranges.len();
    for start in (0..n / 2).rev() {
        sift_down(ranges, start, n);
    }
    for end in (1..n).rev() {
        ranges.swap(0, end);
        sift_down(ranges, 0, end);
    }
}

/// Moves `heap[root]` down the max-heap `heap[..end]` to where it belongs.
fn sift_down(heap: &mut [Range], mut root: usize, end: usize) {
    let end = end.min(heap.len());
    loop {
        let left = 2 * root + 1;
        if left >= end {
            return;
        }
        let right = left + 1;
        let child = if right < end && heap[right] > heap[left] {
            right
        } else {
            left
        };
        if heap[root] >= heap[child] {
            return;
        }
        heap.swap(root, child);
        root = child;
    }
}

// SPDX-License-Identifier: GPL-2.0

//! The checks applied to what the host writes in the balloon's config space (the layout itself
//! comes from the C header, in `abstractions::virtio::balloon`).

/// Outcome of checking the host's `num_pages` against what the guest can give.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The target is within the guest's memory.
    Valid(u32),
    /// The host asked for more pages than the guest has; the driver works towards `limit`.
    Clamped {
        /// What the host wrote.
        asked: u32,
        /// What the driver will aim for instead.
        limit: u32,
    },
}

impl Target {
    /// Checks `num_pages` against `guest_pages`, the guest's memory in balloon pages with the
    /// balloon empty.
    pub(crate) fn check(num_pages: u32, guest_pages: u64) -> Target {
        let limit = u32::try_from(guest_pages).unwrap_or(u32::MAX);
        if num_pages <= limit {
            Target::Valid(num_pages)
        } else {
            Target::Clamped {
                asked: num_pages,
                limit,
            }
        }
    }

    /// The number of pages the driver aims for.
    pub(crate) fn pages(self) -> u32 {
        match self {
            Target::Valid(pages) => pages,
            Target::Clamped { limit, .. } => limit,
        }
    }
}

/// The next step from `current` towards `target`, at most `max_chunk` pages at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing to do.
    Idle,
    /// Take this many pages into the balloon.
    Inflate(u32),
    /// Give this many pages back to the guest.
    Deflate(u32),
}

impl Step {
    /// Computes the next step.
    pub(crate) fn towards(target: u32, current: u32, max_chunk: u32) -> Step {
        if target > current {
            Step::Inflate((target - current).min(max_chunk))
        } else if target < current {
            Step::Deflate((current - target).min(max_chunk))
        } else {
            Step::Idle
        }
    }
}

/// The largest `ranges_min_order` a host may give (1 GiB blocks); larger values are reserved.
pub(crate) const RANGES_MAX_ORDER: u32 = 18;

/// Checks the host's `ranges_min_order`: `None` for a reserved value.
pub(crate) fn ranges_min_order(raw: u32) -> Option<u32> {
    (raw <= RANGES_MAX_ORDER).then_some(raw)
}

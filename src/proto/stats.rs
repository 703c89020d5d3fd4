// SPDX-License-Identifier: GPL-2.0

//! Memory statistics (`VIRTIO_BALLOON_F_STATS_VQ`, virtio spec 5.5.6.3): the tags and the
//! buffer of `struct virtio_balloon_stat` entries (a 16-bit tag and a 64-bit value, packed)
//! that the driver queues on the statistics queue.

/// Bytes swapped in.
pub(crate) const SWAP_IN: u16 = 0;
/// Bytes swapped out.
pub(crate) const SWAP_OUT: u16 = 1;
/// Major page faults.
pub(crate) const MAJFLT: u16 = 2;
/// Minor page faults.
pub(crate) const MINFLT: u16 = 3;
/// Free memory, in bytes.
pub(crate) const MEMFREE: u16 = 4;
/// Total memory, in bytes.
pub(crate) const MEMTOT: u16 = 5;
/// Available memory (`MemAvailable`), in bytes.
pub(crate) const AVAIL: u16 = 6;
/// Disk caches, in bytes.
pub(crate) const CACHES: u16 = 7;
/// Hugetlb page allocations.
pub(crate) const HTLB_PGALLOC: u16 = 8;
/// Hugetlb page allocation failures.
pub(crate) const HTLB_PGFAIL: u16 = 9;
/// OOM killer invocations.
pub(crate) const OOM_KILL: u16 = 10;
/// Allocation stalls.
pub(crate) const ALLOC_STALL: u16 = 11;
/// Bytes scanned by kswapd.
pub(crate) const ASYNC_SCAN: u16 = 12;
/// Bytes scanned by direct reclaim.
pub(crate) const DIRECT_SCAN: u16 = 13;
/// Bytes reclaimed by kswapd.
pub(crate) const ASYNC_RECLAIM: u16 = 14;
/// Bytes reclaimed by direct reclaim.
pub(crate) const DIRECT_RECLAIM: u16 = 15;
/// Number of tags the spec defines.
pub(crate) const NR_TAGS: usize = 16;

/// Size of one entry on the wire.
pub(crate) const ENTRY_BYTES: usize = 10;

/// A statistics buffer: up to [`NR_TAGS`] entries.
#[derive(Clone, Copy)]
pub(crate) struct StatsBuf {
    bytes: [u8; NR_TAGS * ENTRY_BYTES],
    len: usize,
}

impl Default for StatsBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl StatsBuf {
    /// An empty buffer.
    pub(crate) const fn new() -> Self {
        Self {
            bytes: [0; NR_TAGS * ENTRY_BYTES],
            len: 0,
        }
    }

    /// Empties the buffer.
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends an entry; `false` when the buffer is full. `le`: little-endian (virtio 1.0
    /// devices); otherwise the guest's native order (legacy devices).
    pub(crate) fn push(&mut self, tag: u16, value: u64, le: bool) -> bool {
        let Some(entry) = self.bytes.get_mut(self.len..self.len + ENTRY_BYTES) else {
            return false;
        };
        let (t, v) = if le {
            (tag.to_le_bytes(), value.to_le_bytes())
        } else {
            (tag.to_ne_bytes(), value.to_ne_bytes())
        };
        entry[..2].copy_from_slice(&t);
        entry[2..].copy_from_slice(&v);
        self.len += ENTRY_BYTES;
        true
    }

    /// The entries, as the device reads them.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

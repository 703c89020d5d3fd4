// SPDX-License-Identifier: GPL-2.0

//! The standard inflate/deflate payload: an array of little-endian 32-bit page frame numbers of
//! 4 KiB pages.

/// Frame numbers per descriptor. Some hosts (cloud-hypervisor, Firecracker) drop descriptors
/// carrying more, so the driver never sends more in one buffer.
pub(crate) const PFNS_PER_DESC: usize = 256;

/// Shift of the balloon's page frame numbers (4 KiB pages, whatever the guest's page size).
pub(crate) const PFN_SHIFT: u32 = 12;

/// Why a frame number could not be added to a [`PfnArray`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The array already holds [`PFNS_PER_DESC`] entries.
    Full,
    /// The frame number does not fit in 32 bits (memory above 16 TiB).
    OutOfRange,
}

/// One descriptor's worth of frame numbers, in wire format.
pub(crate) struct PfnArray {
    bytes: [u8; PFNS_PER_DESC * 4],
    len: usize,
}

impl PfnArray {
    /// An empty array.
    pub(crate) const fn new() -> Self {
        Self {
            bytes: [0; PFNS_PER_DESC * 4],
            len: 0,
        }
    }

    /// Whether the array is full.
    pub(crate) fn is_full(&self) -> bool {
        self.len == PFNS_PER_DESC
    }

    /// Empties the array.
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends the frame number of a 4 KiB page.
    pub(crate) fn push(&mut self, pfn: u64) -> Result<(), PushError> {
        if self.is_full() {
            return Err(PushError::Full);
        }
        let pfn = u32::try_from(pfn).map_err(|_| PushError::OutOfRange)?;
        let at = self.len * 4;
        self.bytes[at..at + 4].copy_from_slice(&pfn.to_le_bytes());
        self.len += 1;
        Ok(())
    }

    /// The wire bytes: `len()` little-endian 32-bit frame numbers.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len * 4]
    }

    /// Decodes frame numbers from wire bytes; a trailing partial entry is ignored.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn decode(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
        bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }
}

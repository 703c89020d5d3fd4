// SPDX-License-Identifier: GPL-2.0

//! Wire formats of the virtio balloon device.
//!
//! Pure `no_std` code with no kernel dependency: the module compiles it as `crate::proto`, and
//! the host workspace compiles the same files as the `vbrs-proto` crate for unit and property
//! tests.

pub(crate) mod config;
pub(crate) mod features;
pub(crate) mod hint;
pub(crate) mod pfn;
// The page-records format of `VIRTIO_BALLOON_F_PAGE_RANGES`: tested on the host; the driver and
// our QEMU take it up next (issue 10), until then the module does not call it.
#[allow(dead_code)]
pub(crate) mod records;
pub(crate) mod stats;

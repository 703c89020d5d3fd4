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
pub(crate) mod records;
pub(crate) mod stats;

// SPDX-License-Identifier: GPL-2.0

//! Safe wrappers over the C interfaces the driver uses.
//!
//! Every `unsafe` block of the module lives in this directory, each with a `// SAFETY:` comment;
//! the types document the invariants their safe methods rely on. The API follows the shape of
//! upstream Rust-for-Linux abstractions (`#[vtable]` driver traits adapted to C callbacks, owned
//! handles that release their resource on drop) so that it can be proposed upstream.

pub(crate) mod debugfs;
pub(crate) mod free_area;
pub(crate) mod mm;
pub(crate) mod virtio;
pub(crate) mod wait;
pub(crate) mod work;

//! The module's `src/proto/` (wire formats and codecs), compiled on the host so it can be unit
//! tested, property tested and fuzzed without a kernel.

#![no_std]
// The kernel module is the real user of these items; here only the tests use them.
#![allow(dead_code)]

#[cfg(test)]
extern crate std;

#[path = "../../src/proto/mod.rs"]
mod proto;

#[cfg(test)]
mod tests;

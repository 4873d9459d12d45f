//! Types and algorithms shared by the XDP datapath (`lb-ebpf`) and user space (`lb-user`).
//!
//! Everything the datapath reads from a map is defined here once, `#[repr(C)]` and `Pod`, so both
//! sides agree on the layout; the hash and the scheduler's slot choice are here too, so user space
//! can predict exactly which real server the datapath picks for a packet.
#![no_std]
// The hash's step, written out for the datapath (see `hash`).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod conn_table;
pub mod csum;
pub mod hash;
pub mod ipv4;
pub mod ipv6;
#[cfg(feature = "alloc")]
pub mod maglev;
pub mod maps;
pub mod rng;
pub mod sched;
#[cfg(feature = "alloc")]
pub mod table;
pub mod tools;

pub use maps::*;
pub use tools::*;

/// The bytes of a header built as 32-bit words in memory order (`ipv4::header_words`,
/// `ipv6::header_words`): `B` is `4 * W`.
#[inline(always)]
pub(crate) fn words_bytes<const W: usize, const B: usize>(words: &[u32; W]) -> [u8; B] {
    const { assert!(B == 4 * W) };
    let mut out = [0u8; B];
    let mut i = 0;
    while i < W {
        out[4 * i..4 * i + 4].copy_from_slice(&words[i].to_ne_bytes());
        i += 1;
    }
    out
}

//! How the datapath picks a real server; user space calls the same functions to predict it.

use crate::{hash::hash_addr, Addr};

/// Slots in a source-hashing lookup table (a power of two, so the slot is a mask, not a
/// division the verifier would have to prove safe). Large enough that weights up to a few
/// hundred to one are honoured to within one slot per real server.
pub const SH_TABLE_BITS: u32 = 12;
pub const SH_TABLE_SIZE: u32 = 1 << SH_TABLE_BITS;

/// An empty slot: the service has no usable real server.
pub const NO_REAL: u32 = u32::MAX;

/// The `sh` table slot a client address falls into.
#[inline(always)]
pub fn sh_slot(src: &Addr) -> u32 {
    hash_addr(src) & (SH_TABLE_SIZE - 1)
}

/// Index into the SCHED_TABLE array of a service's slot.
#[inline(always)]
pub fn table_index(service_id: u32, slot: u32) -> u32 {
    service_id * SH_TABLE_SIZE + slot
}

//! How the datapath picks a lookup-table slot; user space calls the same function to predict it.

use crate::{
    hash::{hash_addr, hash_flow},
    FlowKey, ServiceInfo, HASH_SRC, SCHED_SH,
};

/// Slots in a source-hashing (`sh`) lookup table: large enough that weights up to a few hundred
/// to one are honoured to within one slot per real server.
pub const SH_TABLE_SIZE: u32 = 4096;

/// Maglev (`mh`) table sizes a service may choose: primes, so every skip walks the whole table.
pub const MH_SIZES: [u32; 11] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 65537, 131071,
];
pub const MH_DEFAULT_SIZE: u32 = 65537;
/// A Maglev table needs this many slots per real server to stay balanced.
pub const MH_SLOTS_PER_REAL: u32 = 100;

/// An empty slot: the service has no usable real server.
pub const NO_REAL: u32 = u32::MAX;

/// The slot of the service's lookup table a flow falls into; None for an empty table.
#[inline(always)]
pub fn slot(service: &ServiceInfo, flow: &FlowKey) -> Option<u32> {
    let h = if service.scheduler == SCHED_SH || service.hash == HASH_SRC {
        hash_addr(&flow.src)
    } else {
        hash_flow(flow)
    };
    // An explicit check: the verifier rejects a division it cannot prove safe.
    if service.table_size == 0 {
        return None;
    }
    Some(h % service.table_size)
}

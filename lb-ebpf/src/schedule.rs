//! Scheduling: which real server gets a new flow. Every service has a lookup table (slot -> real
//! server id) built in user space: `sh` indexes it with the hash of the client address, `mh`
//! (Maglev) with the hash of the client address or of the whole flow (lb_common::sched). A table
//! is replaced whole: the agent builds a new inner map and swaps it into TABLES in one update, so
//! a packet sees the complete old table or the complete new one.

use aya_ebpf::{
    btf_maps::{Array as BtfArray, ArrayOfMaps},
    macros::{btf_map, map},
    maps::Array,
};
use lb_common::{
    sched, FlowKey, RealServer, ServiceInfo, MAX_REALS, MAX_SERVICES, REAL_ACTIVE, TABLE_MAP_FLAGS,
};

/// The inner map's size is a placeholder: BPF_F_INNER_MAP lets each service's table have its own.
type Table = BtfArray<u32, 1, { TABLE_MAP_FLAGS as usize }>;

#[btf_map]
static TABLES: ArrayOfMaps<Table, { MAX_SERVICES as usize }> = ArrayOfMaps::new();

/// Real servers by id.
#[map]
static REALS: Array<RealServer> = Array::with_max_entries(MAX_REALS, 0);

/// The real server id the service's table gives this flow.
#[inline(always)]
pub fn pick(service: &ServiceInfo, flow: &FlowKey) -> Option<u32> {
    let slot = sched::slot(service, flow)?;
    TABLES.get_value(service.id, &slot).copied()
}

/// The real server `id`, if it is configured in service `service` (an empty slot, NO_REAL, is out
/// of the array's range; a deleted real server, or every one of a deleted service, is inactive;
/// ids are reused across services).
#[inline(always)]
pub fn real(service: u32, id: u32) -> Option<&'static RealServer> {
    let real = REALS.get(id)?;
    if real.flags & REAL_ACTIVE == 0 || real.service != service {
        return None;
    }
    Some(real)
}

//! Scheduling: which real server gets the packet. `sh` (source hashing) indexes the service's
//! lookup table, filled by user space, with the hash of the client address (lb_common::sched).

use aya_ebpf::{macros::map, maps::Array};
use lb_common::{
    sched::{sh_slot, table_index, SH_TABLE_SIZE},
    RealServer, ServiceInfo, MAX_REALS, MAX_SERVICES, REAL_ACTIVE,
};

use crate::parse::Packet;

/// Every service's lookup table, one after the other: slot -> real server id.
#[map]
static SCHED_TABLE: Array<u32> = Array::with_max_entries(MAX_SERVICES * SH_TABLE_SIZE, 0);

/// Real servers by id.
#[map]
static REALS: Array<RealServer> = Array::with_max_entries(MAX_REALS, 0);

/// The real server (id and entry) for this packet, if the service has a usable one.
#[inline(always)]
pub fn pick(service: &ServiceInfo, pkt: &Packet) -> Option<(u32, &'static RealServer)> {
    let slot = sh_slot(&pkt.src_addr());
    let real_id = *SCHED_TABLE.get(table_index(service.id, slot))?;
    // An empty slot (NO_REAL) is out of the array's range, so this lookup fails for it too.
    let real = REALS.get(real_id)?;
    if real.flags & REAL_ACTIVE == 0 {
        return None;
    }
    Some((real_id, real))
}

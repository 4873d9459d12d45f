//! The new-flow guard (see lb_common::FloodGuard): under a flood of new flows, a CPU stops
//! remembering them above a rate, so the connection table keeps the flows it already has.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use lb_common::{sched, FloodGuard, RealServer, ServiceInfo, FWD_NAT};

use crate::parse::{TCP_FLAG_ACK, TCP_FLAG_SYN};

#[map]
static FLOOD_GUARD: PerCpuArray<FloodGuard> = PerCpuArray::with_max_entries(1, 0);

/// Whether a new flow to `real` is remembered at `now` (kernel ticks): always for LVS/NAT (its
/// replies need the translation); otherwise while this CPU is under its limit for the current
/// second, or has no limit.
#[inline(always)]
pub fn may_remember(real: &RealServer, now: u32) -> bool {
    if real.method == FWD_NAT {
        return true;
    }
    let Some(guard) = FLOOD_GUARD.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's own value, and XDP runs to the end on its CPU.
    let guard = unsafe { &mut *guard };
    if guard.limit == 0 {
        return true;
    }
    if now.wrapping_sub(guard.start) >= guard.second {
        guard.start = now;
        guard.count = 0;
    }
    if guard.count < guard.limit {
        guard.count += 1;
        true
    } else {
        guard.unremembered += 1;
        false
    }
}

/// Whether this CPU has reached its limit for the current second.
#[inline(always)]
fn reached(now: u32) -> bool {
    let Some(guard) = FLOOD_GUARD.get(0) else {
        return false;
    };
    guard.limit != 0 && now.wrapping_sub(guard.start) < guard.second && guard.count >= guard.limit
}

/// Under a SYN flood, the service (`service_of`) of a SYN that goes without the connection
/// table: this CPU is past its limit, so the flow would not be remembered, and a hash scheduler
/// gives a retransmitted SYN of a flow remembered earlier the same real server (while its table
/// is unchanged). The table's lookup, a miss on cold memory for nearly every packet of a flood,
/// is then left out, as Katran does for SYNs. None: the usual path.
#[inline(always)]
pub fn syn_service(
    tcp_flags: u8,
    now: u32,
    service_of: impl FnOnce() -> Option<&'static ServiceInfo>,
) -> Option<&'static ServiceInfo> {
    if tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) != TCP_FLAG_SYN || !reached(now) {
        return None;
    }
    service_of().filter(|s| sched::by_hash(s.scheduler))
}

//! The new-flow guard (see lb_common::FloodGuard): under a flood of new flows, a CPU stops
//! remembering them above a rate, so the connection table keeps the flows it already has.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use lb_common::{FloodGuard, RealServer, FWD_NAT};

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

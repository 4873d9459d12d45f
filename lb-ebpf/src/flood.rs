//! The new-flow guard (see lb_common::FloodGuard): under a flood of new flows, a CPU stops
//! remembering them above a rate, so the connection table keeps the flows it already has.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use lb_common::{DirectorConfig, FloodGuard};

#[map]
static FLOOD_GUARD: PerCpuArray<FloodGuard> = PerCpuArray::with_max_entries(1, 0);

/// Whether this CPU may remember one more new flow at `now` (kernel ticks): under its limit
/// for the current second, or no limit set.
#[inline(always)]
pub fn admit(now: u32, config: &DirectorConfig) -> bool {
    let Some(guard) = FLOOD_GUARD.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's own value, and XDP runs to the end on its CPU.
    let guard = unsafe { &mut *guard };
    if guard.limit == 0 {
        return true;
    }
    // The ticks in a second, from the refresh interval the agent wrote in ticks.
    let second = config.refresh / DirectorConfig::REFRESH_SECS;
    if now.wrapping_sub(guard.start) >= second {
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

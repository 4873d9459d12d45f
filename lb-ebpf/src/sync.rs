//! Connection synchronisation, the datapath's side: flow events for the agent, which tells the
//! other directors. Written only when a flow is bound, gets its first FIN, is reset, or is
//! announced again while it lives (at most once per `1 << sync_shift` ticks): never per packet,
//! so established flows cost what they cost without sync. A full ring loses the event (counted);
//! the datapath never waits for the agent.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use lb_common::{
    DirectorConfig, FlowKey, SyncEvent, SYNC_RING_BYTES, SYNC_STAT_EVENTS, SYNC_STAT_LOST,
};

#[map]
static SYNC_EVENTS: RingBuf = RingBuf::with_byte_size(SYNC_RING_BYTES, 0);

#[map]
static SYNC_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

#[inline(always)]
pub fn enabled(config: &DirectorConfig) -> bool {
    config.sync_shift != 0
}

/// Whether a live flow whose timestamp moves from `before` to `now` is due to be announced again:
/// the two lie in different periods of `1 << sync_shift` ticks.
#[inline(always)]
pub fn due(config: &DirectorConfig, before: u32, now: u32) -> bool {
    enabled(config) && (before ^ now) >> (config.sync_shift & 31) != 0
}

/// Hands the agent a flow event; a full ring drops it and counts the loss.
#[inline(always)]
pub fn event(flow: &FlowKey, service: u32, real: u32, kind: u8, flags: u32) {
    let written = match SYNC_EVENTS.reserve::<SyncEvent>(0) {
        Some(mut slot) => {
            slot.write(SyncEvent {
                flow: *flow,
                service,
                real,
                kind,
                _pad: [0; 3],
                flags,
                // SAFETY: a helper without arguments.
                ktime: unsafe { bpf_ktime_get_ns() },
            });
            slot.submit(0);
            true
        }
        None => false,
    };
    let index = if written {
        SYNC_STAT_EVENTS
    } else {
        SYNC_STAT_LOST
    };
    if let Some(n) = SYNC_STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot is only touched by this CPU.
        unsafe { *n += 1 };
    }
}

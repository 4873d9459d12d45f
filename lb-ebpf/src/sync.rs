//! Connection synchronisation, the datapath's side: flow events for the agent, which tells the
//! other directors. Written only when a flow is bound, gets its first FIN, is reset, or is
//! announced again while it lives (at most once per `1 << sync_shift` ticks): never per packet,
//! so established flows cost what they cost without sync. A full ring loses the event (counted);
//! the datapath never waits for the agent.

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_jiffies64},
    macros::map,
    maps::{Array, PerCpuArray},
};
use core::ptr::{read_volatile, write_volatile};
use lb_common::{
    DirectorConfig, FlowKey, SyncCursor, SyncEvent, MAP_MMAPABLE, SYNC_STAT_EVENTS, SYNC_STAT_LOST,
};

/// Every CPU's ring of events (sized by the agent: CPUs x slots per CPU), memory-mapped by the
/// agent. A ring per CPU written without a lock, where the kernel's ring buffer takes a spin
/// lock with interrupts off for every reserve: see [`SyncCursor`].
#[map]
static SYNC_RING: Array<SyncEvent> = Array::with_max_entries(1, MAP_MMAPABLE);

#[map]
static SYNC_CURSORS: Array<SyncCursor> = Array::with_max_entries(1, MAP_MMAPABLE);

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

/// Hands the agent a flow event through this CPU's ring; a full ring drops it and counts the
/// loss.
#[inline(always)]
pub fn event(flow: &FlowKey, service: u32, real: u32, kind: u8, flags: u32) {
    let index = if write(flow, service, real, kind, flags) {
        SYNC_STAT_EVENTS
    } else {
        SYNC_STAT_LOST
    };
    if let Some(n) = SYNC_STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot is only touched by this CPU.
        unsafe { *n += 1 };
    }
}

/// Writes the event into this CPU's ring if it has room.
#[inline(always)]
fn write(flow: &FlowKey, service: u32, real: u32, kind: u8, flags: u32) -> bool {
    // SAFETY: a helper without arguments (inlined by the kernel).
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(cursor) = SYNC_CURSORS.get_ptr_mut(cpu) else {
        return false;
    };
    // SAFETY: an array slot; `head` is this CPU's alone (its programs never run two at a time),
    // `tail` the agent's, read as it is now.
    let (head, tail, mask) = unsafe {
        (
            (*cursor).head,
            read_volatile(&(*cursor).tail),
            (*cursor).mask,
        )
    };
    if head.wrapping_sub(tail) > mask {
        return false;
    }
    let slot = (cpu as u64 * (mask + 1) + (head & mask)) as u32;
    let Some(event) = SYNC_RING.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: a slot the agent has read (or never held an event); the event is written before
    // `head` moves past it, all volatile so the compiler keeps that order (field by field: a
    // whole event built first would take 64 bytes of the stack, which has no room for them).
    unsafe {
        write_volatile(&raw mut (*event).flow, *flow);
        write_volatile(&raw mut (*event).service, service);
        write_volatile(&raw mut (*event).real, real);
        write_volatile(&raw mut (*event).kind, kind);
        write_volatile(&raw mut (*event).flags, flags);
        write_volatile(&raw mut (*event).time, bpf_jiffies64());
        write_volatile(&raw mut (*cursor).head, head + 1);
    }
    true
}

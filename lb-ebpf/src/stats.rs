//! Counters, per CPU so the datapath never contends on a cache line: per service, per real
//! server, and per reason a packet was passed or dropped. User space sums the CPUs.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    macros::map,
    maps::PerCpuArray,
};
use lb_common::{Counters, Reason, MAX_REALS, MAX_SERVICES, REASON_SLOTS};

#[map]
static SERVICE_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map]
static REAL_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_REALS, 0);

/// LVS/NAT replies (real server -> client), the one direction the other methods never see.
#[map]
static SERVICE_OUT: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map]
static REAL_OUT: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_REALS, 0);

#[map]
static REASONS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(REASON_SLOTS, 0);

#[inline(always)]
fn count(map: &PerCpuArray<Counters>, index: u32, bytes: u64, conn: bool) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot is only touched by this CPU, and XDP does not preempt itself.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
            (*c).conns += conn as u64;
        }
    }
}

#[inline(always)]
pub fn pass(reason: Reason, bytes: u64) -> u32 {
    count(&REASONS, reason as u32, bytes, false);
    XDP_PASS
}

/// A reply the datapath sends back itself (ICMP), counted under its reason.
#[inline(always)]
pub fn tx(reason: Reason, bytes: u64) -> u32 {
    count(&REASONS, reason as u32, bytes, false);
    XDP_TX
}

#[inline(always)]
pub fn drop(reason: Reason, bytes: u64) -> u32 {
    count(&REASONS, reason as u32, bytes, false);
    XDP_DROP
}

/// A NAT reply sent on to its client.
#[inline(always)]
pub fn replied(service: u32, real: u32, bytes: u64) {
    count(&SERVICE_OUT, service, bytes, false);
    count(&REAL_OUT, real, bytes, false);
}

#[inline(always)]
pub fn forwarded(service: u32, real: u32, bytes: u64, new_conn: bool) {
    count(&SERVICE_STATS, service, bytes, new_conn);
    count(&REAL_STATS, real, bytes, new_conn);
}

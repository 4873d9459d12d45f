//! Each real server's connections as IPVS counts them: active (TCP established) and inactive
//! (everything else the connection table holds for it). Changed atomically, and only when a flow
//! opens, establishes, sees its first FIN or is reset; never on the other packets of a flow. The
//! agent corrects them against the table (entries that time out or are evicted leave silently);
//! the schedulers that choose by load (lc, wlc, ...) read them.

use aya_ebpf::{macros::map, maps::Array};
use lb_common::{RealConns, MAP_MMAPABLE, MAX_REALS};

#[map]
static REAL_CONNS: Array<RealConns> = Array::with_max_entries(MAX_REALS, MAP_MMAPABLE);

/// The counts of real server `real`, to read (and to keep its overloaded flag).
#[inline(always)]
pub fn get_mut(real: u32) -> Option<*mut RealConns> {
    REAL_CONNS.get_ptr_mut(real)
}

/// Adds `active` and `inactive` (each -1, 0 or 1) to real server `real`'s counts.
#[inline(always)]
pub fn add(real: u32, active: i64, inactive: i64) {
    let Some(c) = REAL_CONNS.get_ptr_mut(real) else {
        return;
    };
    // SAFETY: the pointer is into the map's value, which stays valid; the adds are atomic (the
    // BPF target has no atomic types, but its add-without-fetch instruction is what this is).
    unsafe {
        if active != 0 {
            atomic_add(&raw mut (*c).active, active);
        }
        if inactive != 0 {
            atomic_add(&raw mut (*c).inactive, inactive);
        }
    }
}

/// An atomic add whose result is not used: one BPF atomic instruction.
#[cfg(target_arch = "bpf")]
#[inline(always)]
unsafe fn atomic_add(p: *mut i64, v: i64) {
    use core::intrinsics::{atomic_xadd, AtomicOrdering};
    // SAFETY: the caller passes a valid, aligned pointer into a map value.
    unsafe { atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(p, v) };
}

/// Off the BPF target (clippy on the host) the same, through the atomic types.
#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
unsafe fn atomic_add(p: *mut i64, v: i64) {
    // SAFETY: as above.
    unsafe { core::sync::atomic::AtomicI64::from_ptr(p) }
        .fetch_add(v, core::sync::atomic::Ordering::Relaxed);
}

//! Scheduling: which real server gets a new flow. Every service has a lookup table (slot -> real
//! server id) built in user space: `sh` indexes it with the hash of the client address, `mh`
//! (Maglev) with the hash of the client address or of the whole flow (lb_common::sched). A table
//! is replaced whole: the agent builds a new inner map and swaps it into TABLES in one update, so
//! a packet sees the complete old table or the complete new one.

use aya_ebpf::{
    btf_maps::{Array as BtfArray, ArrayOfMaps},
    macros::{btf_map, map},
    maps::{Array, LruHashMap, PerCpuArray},
};
use lb_common::{
    sched::{self, Candidate, MAX_SCAN},
    FlowKey, LocalityEntry, LocalityKey, RealLimits, RealServer, ServiceInfo, BPF_F_NO_COMMON_LRU,
    LOCALITY_MAX, LOCALITY_SET, MAX_REALS, MAX_SERVICES, REAL_ACTIVE, SCHED_LBLCR, SCHED_RR,
    SCHED_WRR, TABLE_MAP_FLAGS,
};

use aya_ebpf::helpers::bpf_loop;

use crate::counts;

/// The inner map's size is a placeholder: BPF_F_INNER_MAP lets each service's table have its own.
type Table = BtfArray<u32, 1, { TABLE_MAP_FLAGS as usize }>;

#[btf_map]
static TABLES: ArrayOfMaps<Table, { MAX_SERVICES as usize }> = ArrayOfMaps::new();

/// Real servers by id.
#[map]
static REALS: Array<RealServer> = Array::with_max_entries(MAX_REALS, 0);

/// `lblc`, `lblcr`: each destination address's real servers, per service.
#[map]
static LOCALITY: LruHashMap<LocalityKey, LocalityEntry> =
    LruHashMap::with_max_entries(LOCALITY_MAX, BPF_F_NO_COMMON_LRU);

/// Weights and thresholds by real server id, for the schedulers that choose by load.
#[map]
static REAL_LIMITS: Array<RealLimits> = Array::with_max_entries(MAX_REALS, 0);

/// The position of `rr` and `wrr` in their sequence, per service and per CPU: each CPU goes
/// through the sequence exactly as IPVS does, so the flows one CPU schedules see IPVS's order; a
/// position shared by the CPUs would need a lock, or an atomic add that returns its result, which
/// the BPF instruction set this program is built for lacks.
#[map]
static SCHED_POS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// The real server id the service's scheduler gives this new flow:
/// - `sh`, `mh`, `dh`: the table slot the flow's hash falls into;
/// - `rr`, `wrr`: the next position of the service's sequence (the table holds it);
/// - `lc`, `wlc`, `sed`, `nq`, `fo`, `ovf`: the best of the available real servers (the table
///   lists them) by their connection counts and weights, as IPVS's loops choose.
///
/// A real server over its connection threshold gets no new flow: `rr` and `wrr` go on to the
/// next position (a few at most), the others find none, as IPVS's do.
#[inline(always)]
pub fn pick(service: &ServiceInfo, flow: &FlowKey) -> Option<u32> {
    if service.scheduler == SCHED_RR || service.scheduler == SCHED_WRR {
        if service.table_size == 0 {
            return None;
        }
        let mut tries = 0;
        while tries < sched::RR_TRIES {
            let slot = (next_position(service.id)? % service.table_size as u64) as u32;
            let id = *TABLES.get_value(service.id, &slot)?;
            if candidate(id).is_some_and(|c| !c.overloaded) {
                return Some(id);
            }
            tries += 1;
        }
        return None;
    }
    if sched::by_locality(service.scheduler) {
        return by_locality(service, flow);
    }
    if sched::by_load(service.scheduler) {
        return least_loaded(service, core::ptr::null()).best;
    }
    let slot = sched::slot(service, flow)?;
    let id = *TABLES.get_value(service.id, &slot)?;
    candidate(id).filter(|c| !c.overloaded).map(|c| c.id)
}

/// A real server's weight and load, its overloaded flag brought up to date (IPVS sets and
/// clears it as connections come and go; here, when the server is looked at).
#[inline(always)]
fn candidate(id: u32) -> Option<Candidate> {
    let limits = REAL_LIMITS.get(id)?;
    let conns = counts::get_mut(id)?;
    // SAFETY: the pointer is into the map's value; the flag tolerates a lost update.
    let conns = unsafe { &mut *conns };
    let was = conns.overloaded != 0;
    let now = sched::overloaded(
        was,
        conns.active + conns.inactive,
        limits.upper,
        limits.lower,
    );
    if now != was {
        conns.overloaded = now as i64;
    }
    Some(Candidate {
        id,
        weight: limits.weight,
        active: conns.active,
        inactive: conns.inactive,
        overloaded: now,
    })
}

/// Takes the service's next round-robin position (this CPU's).
#[inline(always)]
fn next_position(service: u32) -> Option<u64> {
    let p = SCHED_POS.get_ptr_mut(service)?;
    // SAFETY: a per-CPU slot is only touched by this CPU, and XDP does not preempt itself.
    unsafe {
        let pos = *p;
        *p = pos.wrapping_add(1);
        Some(pos)
    }
}

/// `lblc` and `lblcr`: the real servers this destination address already goes to, unless they
/// are gone, overloaded, or too busy while another is idle enough (then the least loaded one, as
/// `wlc` finds it, which the destination keeps: `lblc` instead of the old, `lblcr` besides).
/// The service's servers are scanned only when the destination has none that is not busy, as
/// IPVS looks at them only then: a destination's flows cost the same however many servers.
#[inline(always)]
fn by_locality(service: &ServiceInfo, flow: &FlowKey) -> Option<u32> {
    let key = LocalityKey {
        service: service.id,
        addr: flow.dst,
    };
    let entry = LOCALITY.get_ptr_mut(key);
    let member = entry.and_then(|e| member_of(service, e));
    // Not busy whoever else is idle: no need to look at the others.
    if let Some(best) = member.filter(|b| !sched::locality_overloaded(b, true)) {
        return Some(best.id);
    }
    let scan = least_loaded(service, core::ptr::null());
    if let Some(best) = member.filter(|b| !sched::locality_overloaded(b, scan.underloaded)) {
        return Some(best.id);
    }
    let id = scan.best?;
    let Some(entry) = entry else {
        let mut entry = LocalityEntry::default();
        entry.members[0] = id;
        entry.count = 1;
        let _ = LOCALITY.insert(key, entry, 0);
        return Some(id);
    };
    // SAFETY: the pointer is into the map's value; a lost update only costs locality.
    let entry = unsafe { &mut *entry };
    if service.scheduler == SCHED_LBLCR && (entry.count as usize) < LOCALITY_SET {
        let n = entry.count as usize;
        if n < LOCALITY_SET {
            entry.members[n] = id;
            entry.count += 1;
        }
    } else {
        entry.members[0] = id;
        entry.count = 1;
    }
    Some(id)
}

/// The least loaded member of a destination's set that may take a flow: the scan's loop over
/// the set, or with one member (`lblc`'s always, `lblcr`'s until a server joins) that member
/// itself, as the loop would find it, without the loop's helper call.
#[inline(always)]
fn member_of(service: &ServiceInfo, set: *const LocalityEntry) -> Option<Candidate> {
    // SAFETY: the pointer is into the map's value.
    let (count, first) = unsafe { ((*set).count, (*set).members[0]) };
    if count == 1 {
        return candidate(first).filter(|c| sched::eligible(service.scheduler, c));
    }
    least_loaded(service, set).best.and_then(candidate)
}

/// What [`least_loaded`] found: the preferred real server, if any, and whether some server is
/// underloaded (for `lblc`, `lblcr`).
struct Found {
    best: Option<u32>,
    underloaded: bool,
}

/// The real server the scheduler prefers among those its table lists, or (not null) among the
/// members of a destination's set (see [`xdplb_scan`]).
#[inline(always)]
fn least_loaded(service: &ServiceInfo, members: *const LocalityEntry) -> Found {
    let r = xdplb_scan(
        service.id,
        service.table_size,
        service.scheduler as u32,
        members,
    );
    Found {
        best: (r & SCAN_FOUND != 0).then_some(r as u32),
        underloaded: r & SCAN_UNDERLOADED != 0,
    }
}

/// [`xdplb_scan`]'s result: the best id in the low 32 bits, and these flags.
const SCAN_FOUND: u64 = 1 << 32;
const SCAN_UNDERLOADED: u64 = 1 << 33;

/// IPVS's loop over the servers (the service's table, or a destination's set when `members` is
/// not null), run by the bpf_loop helper (a loop the verifier checks once, not once per server).
/// A global function (exported by the linker, see build.rs): the verifier checks it once per
/// program, on its own, rather than again for every state of the caller that reaches it. With
/// the destination's set walked here too, not unrolled inline, xdplb's verification went from
/// about 600,000 processed instructions (of the 1,000,000 allowed) to a quarter of that. Hence
/// plain numbers for arguments and result, and a pointer the verifier sizes from its type.
#[no_mangle]
#[inline(never)]
pub extern "C" fn xdplb_scan(
    service: u32,
    table_size: u32,
    scheduler: u32,
    members: *const LocalityEntry,
) -> u64 {
    let mut scan = Scan {
        members,
        service,
        table_size,
        scheduler: scheduler as u8,
        found: 0,
        underloaded: 0,
        _pad: 0,
        best: Candidate::default(),
    };
    // SAFETY: the callback gets a pointer to `scan`, which outlives the helper call.
    unsafe {
        bpf_loop(
            MAX_SCAN,
            scan_one as *mut core::ffi::c_void,
            (&raw mut scan).cast(),
            0,
        )
    };
    let mut r = scan.best.id as u64;
    if scan.found != 0 {
        r |= SCAN_FOUND;
    }
    if scan.underloaded != 0 {
        r |= SCAN_UNDERLOADED;
    }
    r
}

/// The state of [`xdplb_scan`]'s loop.
#[repr(C)]
struct Scan {
    /// Null: the service's table.
    members: *const LocalityEntry,
    service: u32,
    table_size: u32,
    scheduler: u8,
    found: u8,
    underloaded: u8,
    _pad: u8,
    best: Candidate,
}

/// One server of [`xdplb_scan`]'s loop: 0 goes on, 1 stops.
#[inline(never)]
extern "C" fn scan_one(index: u32, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer xdplb_scan gave it.
    let scan = unsafe { &mut *ctx.cast::<Scan>() };
    // SAFETY: the verifier gives a global function's pointer its type's size (or null).
    let id = match unsafe { scan.members.as_ref() } {
        None if index < scan.table_size => match TABLES.get_value(scan.service, &index) {
            Some(&id) => id,
            None => return 1,
        },
        Some(set) if index < set.count && (index as usize) < LOCALITY_SET => {
            set.members[set_index(index)]
        }
        _ => return 1,
    };
    let Some(c) = candidate(id) else {
        return 0;
    };
    if !sched::eligible(scan.scheduler, &c) {
        return 0;
    }
    if sched::underloaded(&c) {
        scan.underloaded = 1;
    }
    if sched::at_once(scan.scheduler, &c) {
        scan.best = c;
        scan.found = 1;
        return 1;
    }
    if scan.found == 0 || sched::prefer(scan.scheduler, &scan.best, &c) {
        scan.best = c;
        scan.found = 1;
    }
    0
}

/// `index`, known to be below LOCALITY_SET, masked to it where the verifier sees it: LLVM drops
/// a plain mask it knows to be redundant, and checks the bound on a copy of the register it
/// then indexes with, so the verifier would find the access unbounded.
#[inline(always)]
fn set_index(index: u32) -> usize {
    #[allow(unused_mut)]
    let mut i = index as u64;
    #[cfg(target_arch = "bpf")]
    // SAFETY: arithmetic on a register.
    unsafe {
        core::arch::asm!("{i} &= 7", i = inout(reg) i, options(pure, nomem, nostack));
    }
    const _: () = assert!(LOCALITY_SET == 8);
    i as usize % LOCALITY_SET
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

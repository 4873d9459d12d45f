//! How the datapath picks a lookup-table slot; user space calls the same function to predict it.

use crate::{
    hash::{hash_flow, hash_src},
    FlowKey, ServiceInfo, HASH_SRC, SCHED_DH, SCHED_FO, SCHED_LBLC, SCHED_LBLCR, SCHED_LC,
    SCHED_MH, SCHED_NQ, SCHED_OVF, SCHED_SED, SCHED_SH, SCHED_WLC,
};

/// Slots in a source-hashing (`sh`) lookup table: large enough that weights up to a few hundred
/// to one are honoured to within one slot per real server.
pub const SH_TABLE_SIZE: u32 = 4096;

/// Maglev (`mh`) table sizes a service may choose: primes, so every skip walks the whole table.
pub const MH_SIZES: [u32; 11] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 65537, 131071,
];
pub const MH_DEFAULT_SIZE: u32 = 65537;
/// A Maglev table needs this many slots per real server to stay balanced.
pub const MH_SLOTS_PER_REAL: u32 = 100;

/// An empty slot: the service has no usable real server.
pub const NO_REAL: u32 = u32::MAX;

/// Buckets of a destination-hashing (`dh`) table, as IPVS has them.
pub const DH_TABLE_SIZE: u32 = 256;

/// IPVS's destination hash of an address (ip_vs_dh_hashkey): the address (IPv6 folded to 32
/// bits) times the golden-ratio prime, its low bits.
#[inline(always)]
pub fn dh_hash(addr: &crate::Addr) -> u32 {
    let word = |i: usize| u32::from_be_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    let folded = if addr[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
        word(12)
    } else {
        word(0) ^ word(4) ^ word(8) ^ word(12)
    };
    folded.wrapping_mul(2_654_435_761)
}

/// The slot of the service's lookup table a flow falls into; None for an empty table. (`rr` and
/// `wrr` index their table by position, the schedulers that choose by load scan it whole.)
#[inline(always)]
pub fn slot(service: &ServiceInfo, flow: &FlowKey) -> Option<u32> {
    let h = if service.scheduler == SCHED_DH {
        dh_hash(&flow.dst)
    } else if service.scheduler == SCHED_SH || service.hash == HASH_SRC {
        hash_src(flow)
    } else {
        hash_flow(flow)
    };
    // An explicit check: the verifier rejects a division it cannot prove safe.
    if service.table_size == 0 {
        return None;
    }
    Some(h % service.table_size)
}

/// Most real servers a scheduler that chooses by load looks at (its table holds the available
/// ones, in the order they were added); a bound the datapath's loop needs.
pub const MAX_SCAN: u32 = 256;

/// Positions `rr` and `wrr` try past overloaded real servers before they give up.
pub const RR_TRIES: u32 = 8;

/// A real server as the schedulers that choose by load see it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Candidate {
    pub id: u32,
    pub weight: u32,
    pub active: i64,
    pub inactive: i64,
    /// Over its connection threshold (see [`overloaded`]): no new flows.
    pub overloaded: bool,
}

/// Whether a real server is overloaded now, as IPVS keeps its flag: from the moment its
/// connections (active and inactive) reach the upper threshold until they are under the lower
/// one (three quarters of the upper one when the lower is 0). No upper threshold: never.
#[inline(always)]
pub fn overloaded(was: bool, total: i64, upper: u32, lower: u32) -> bool {
    if upper == 0 {
        return false;
    }
    if total >= upper as i64 {
        return true;
    }
    if !was {
        return false;
    }
    if lower == 0 {
        total * 4 >= upper as i64 * 3
    } else {
        total >= lower as i64
    }
}

impl Candidate {
    /// IPVS's connection overhead (ip_vs_dest_conn_overhead): an active connection weighs as
    /// much as 256 inactive ones.
    #[inline(always)]
    fn overhead(&self) -> i64 {
        (self.active.max(0) << 8) + self.inactive.max(0)
    }

    /// Shortest-expected-delay overhead (ip_vs_sed_dest_overhead).
    #[inline(always)]
    fn sed_overhead(&self) -> i64 {
        self.active.max(0) + 1
    }
}

/// Whether scheduler `sched` may give a new flow to `c` at all (beyond being in the table: a
/// weight above 0).
#[inline(always)]
pub fn eligible(sched: u8, c: &Candidate) -> bool {
    c.weight > 0 && !c.overloaded && !(sched == SCHED_OVF && c.active > c.weight as i64)
}

/// Whether `nq` takes `c` at once: an idle server, the first one in the list.
#[inline(always)]
pub fn at_once(sched: u8, c: &Candidate) -> bool {
    sched == SCHED_NQ && c.active == 0
}

/// Whether scheduler `sched` prefers `c` to `best`, the best so far (earlier in the list; ties
/// keep the earlier one, as IPVS's loops do).
#[inline(always)]
pub fn prefer(sched: u8, best: &Candidate, c: &Candidate) -> bool {
    match sched {
        SCHED_LC => c.overhead() < best.overhead(),
        SCHED_WLC | SCHED_LBLC | SCHED_LBLCR => {
            best.overhead() * c.weight as i64 > c.overhead() * best.weight as i64
        }
        SCHED_SED | SCHED_NQ => {
            best.sed_overhead() * c.weight as i64 > c.sed_overhead() * best.weight as i64
        }
        SCHED_FO | SCHED_OVF => c.weight > best.weight,
        _ => false,
    }
}

/// `lblc`'s and `lblcr`'s notion of a server too busy for its destinations
/// (is_overloaded in ip_vs_lblc.c): more active connections than its weight, while some other
/// server has fewer than half its weight.
#[inline(always)]
pub fn locality_overloaded(c: &Candidate, someone_underloaded: bool) -> bool {
    c.active > c.weight as i64 && someone_underloaded
}

/// Fewer active connections than half the weight: a server `lblc` would rather send a busy
/// server's destinations to.
#[inline(always)]
pub fn underloaded(c: &Candidate) -> bool {
    c.active * 2 < c.weight as i64
}

/// Whether a scheduler keeps a destination's real servers (`lblc`, `lblcr`).
#[inline(always)]
pub fn by_locality(sched: u8) -> bool {
    sched == SCHED_LBLC || sched == SCHED_LBLCR
}

/// Whether a scheduler chooses by a hash of the flow alone (`sh`, `mh`, `dh`): the same flow
/// gets the same real server every time while the table is unchanged.
#[inline(always)]
pub fn by_hash(sched: u8) -> bool {
    matches!(sched, SCHED_SH | SCHED_MH | SCHED_DH)
}

/// Whether a scheduler chooses by load (scans its whole table) rather than by hash or position.
#[inline(always)]
pub fn by_load(sched: u8) -> bool {
    matches!(
        sched,
        SCHED_LC
            | SCHED_WLC
            | SCHED_SED
            | SCHED_NQ
            | SCHED_FO
            | SCHED_OVF
            | SCHED_LBLC
            | SCHED_LBLCR
    )
}

/// The choice of a scheduler that chooses by load among `candidates` (in list order).
pub fn choose(sched: u8, candidates: impl IntoIterator<Item = Candidate>) -> Option<Candidate> {
    let mut best: Option<Candidate> = None;
    for c in candidates.into_iter().filter(|c| eligible(sched, c)) {
        if at_once(sched, &c) {
            return Some(c);
        }
        if best.is_none_or(|b| prefer(sched, &b, &c)) {
            best = Some(c);
        }
    }
    best
}

/// The sequence `wrr` goes through, as IPVS's weighted round robin does (ip_vs_wrr): with `cw`
/// running from the largest weight down to the weights' greatest common divisor in steps of that
/// divisor, every server (in list order) whose weight is at least `cw`. `weights` are in list
/// order; servers of weight 0 never appear.
#[cfg(feature = "alloc")]
pub fn wrr_sequence(weights: &[(u32, u32)]) -> alloc::vec::Vec<u32> {
    let live: alloc::vec::Vec<(u32, u32)> =
        weights.iter().copied().filter(|(_, w)| *w > 0).collect();
    let g = live.iter().fold(0, |g, (_, w)| gcd(g, *w));
    let max = live.iter().map(|(_, w)| *w).max().unwrap_or(0);
    let mut seq = alloc::vec::Vec::new();
    if g == 0 {
        return seq;
    }
    let mut cw = max;
    while cw > 0 {
        seq.extend(live.iter().filter(|(_, w)| *w >= cw).map(|(id, _)| *id));
        cw -= g;
    }
    seq
}

/// The length of [`wrr_sequence`] without building it: the sum of the weights over their
/// greatest common divisor.
pub fn wrr_len(weights: impl IntoIterator<Item = u32> + Clone) -> u64 {
    let g = weights.clone().into_iter().fold(0, gcd);
    if g == 0 {
        return 0;
    }
    weights.into_iter().map(|w| u64::from(w / g)).sum()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

//! The connection table's layout and rules, shared by the datapath and the agent: one BPF array
//! map of [`Bucket`]s, set-associative. A flow's keyed hash picks one bucket of [`WAYS`] slots; a
//! lookup compares tags, then the key, in that bucket alone; an insert writes one slot of it, the
//! one [`victim`] names when the bucket is full. Nothing is allocated, linked or locked: against
//! the kernel's LRU hash it was before, about 20-35 ns less per established packet and about
//! half the cost of a new flow (docs/BENCHMARKS.md). The map's last entry is not a bucket but the
//! table's [`header`], its hash seed, so a pinned table and its seed never part. The persistence
//! templates live in a second table of this layout ([`TEMPLATE_BUCKETS`]), and the LVS/NAT reply
//! index in a third, whose slots hold a [`ReplyEntry`] in place of a [`Conn`] ([`SlotOf`]).
//! docs/conntrack.md is the user's side of them.

use bytemuck::{Pod, Zeroable};

use crate::{Conn, DirectorConfig, FlowKey, ReplyEntry, CONN_ESTABLISHED, CONN_FIN, TEMPLATES_MAX};

/// Slots per bucket: four 64-byte slots, a bucket in four cache lines.
pub const WAYS: usize = 4;

/// [`Slot::tag`] of an empty slot; a flow's tag is never 0.
pub const EMPTY: u32 = 0;

/// [`Slot::mark`]: the entry was looked up since an insert into its bucket last passed it over
/// (its second chance, as in the CLOCK approximation of LRU).
pub const SLOT_REFERENCED: u32 = 1;

/// One entry: a key and what the table holds for it (`E`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotOf<E> {
    /// [`EMPTY`], or the flow's tag ([`Place::tag`]), compared before the key. An insert clears
    /// it first and writes it last, so a reader that finds the same tag before and after reading
    /// the entry has read one flow's.
    pub tag: u32,
    /// [`SLOT_REFERENCED`] or 0.
    pub mark: u32,
    pub key: FlowKey,
    pub entry: E,
}

/// The array map's value: the slots one hash value can go to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketOf<E> {
    pub slots: [SlotOf<E>; WAYS],
}

/// The connection table's and the templates' slots and buckets.
pub type Slot = SlotOf<Conn>;
pub type Bucket = BucketOf<Conn>;
/// The LVS/NAT reply index's (80-byte slots: a reply's translation is 28 bytes).
pub type ReplySlot = SlotOf<ReplyEntry>;
pub type ReplyBucket = BucketOf<ReplyEntry>;

const _: () = assert!(core::mem::size_of::<Slot>() == 64);
const _: () = assert!(core::mem::size_of::<ReplySlot>() == 80);

// SAFETY: repr(C) plain data, sizes checked above: no padding (8 + 40 bytes, then an entry of 4-byte
// fields whose size is a multiple of 8).
unsafe impl Zeroable for Slot {}
unsafe impl Pod for Slot {}
unsafe impl Zeroable for Bucket {}
unsafe impl Pod for Bucket {}
unsafe impl Zeroable for ReplySlot {}
unsafe impl Pod for ReplySlot {}
unsafe impl Zeroable for ReplyBucket {}
unsafe impl Pod for ReplyBucket {}

/// What a table's entries have in common: when one was last used (a full bucket of templates or
/// replies gives up the longest unused), and a place for the header's seed.
pub trait Entry: Copy + Default {
    fn last_used(&self) -> u32;
    fn seed(&self) -> u64;
    fn with_seed(seed: u64) -> Self;
    /// Where a key's entry lives in a table of these entries.
    #[inline(always)]
    fn place(key: &FlowKey, seed: u64, mask: u32) -> Place {
        place(key, seed, mask)
    }
}

impl Entry for Conn {
    #[inline(always)]
    fn last_used(&self) -> u32 {
        self.last_seen
    }
    fn seed(&self) -> u64 {
        self.real as u64 | (self.service as u64) << 32
    }
    fn with_seed(seed: u64) -> Self {
        Conn {
            real: seed as u32,
            service: (seed >> 32) as u32,
            ..Default::default()
        }
    }
}

impl Entry for ReplyEntry {
    #[inline(always)]
    fn last_used(&self) -> u32 {
        self.last_seen
    }
    fn seed(&self) -> u64 {
        self.reply.real as u64 | (self.reply.service as u64) << 32
    }
    fn with_seed(seed: u64) -> Self {
        let mut e = ReplyEntry::default();
        e.reply.real = seed as u32;
        e.reply.service = (seed >> 32) as u32;
        e
    }
    #[inline(always)]
    fn place(key: &FlowKey, seed: u64, mask: u32) -> Place {
        reply_place(key, seed, mask)
    }
}

/// The datapath's globals, set when the object is loaded: the hash seed and the bucket mask
/// (buckets - 1). Load-time constants cost nothing per packet; the defaults (0) put every flow in
/// one bucket, which the tests would notice at once.
pub const SEED_GLOBAL: &str = "CONN_SEED";
pub const MASK_GLOBAL: &str = "CONN_MASK";

/// [`Slot::tag`] of the header's first slot.
pub const HEADER_TAG: u32 = 0x7862_6c31;

/// Entries of the array map for `buckets` buckets: the buckets, then the header.
pub const fn map_entries(buckets: u32) -> u32 {
    buckets + 1
}

/// The header entry that records `seed` (the map's last entry).
pub fn header<E: Entry>(seed: u64) -> BucketOf<E> {
    let mut b = BucketOf::<E>::default();
    b.slots[0].tag = HEADER_TAG;
    b.slots[0].entry = E::with_seed(seed);
    b
}

/// The seed a header records; None if `b` is not a header.
pub fn seed_of<E: Entry>(b: &BucketOf<E>) -> Option<u64> {
    let s = &b.slots[0];
    (s.tag == HEADER_TAG).then_some(s.entry.seed())
}

/// Slots per connection the table is sized for (`--conn-max`): a bucket fills before the table
/// does. Simulated with random flows, a table half full sends about 4 % of inserts to a full
/// bucket, where they push out what is least worth keeping (handshakes and idle entries first).
pub const SLOTS_PER_FLOW: u32 = 2;

/// Buckets of the table for `conn_max` connections.
pub const fn table_buckets(conn_max: u32) -> u32 {
    buckets_for(conn_max.saturating_mul(SLOTS_PER_FLOW))
}

/// Slots of the table for `conn_max` connections.
pub const fn table_slots(conn_max: u32) -> u32 {
    table_buckets(conn_max) * WAYS as u32
}

/// Buckets of the reply index for `nat_max` LVS/NAT connections: sized as the connection table
/// for as many, at least two buckets; one bucket (a BPF array cannot be empty) for 0, which
/// says the director has no LVS/NAT ([`translates_replies`]).
pub const fn reply_buckets(nat_max: u32) -> u32 {
    match nat_max {
        0 => 1,
        n => {
            let b = table_buckets(n);
            if b < 2 {
                2
            } else {
                b
            }
        }
    }
}

/// Whether a reply index of `buckets` was made for LVS/NAT ([`reply_buckets`]).
pub const fn translates_replies(buckets: u32) -> bool {
    buckets > 1
}

/// Buckets for a table of at least `flows` slots: a power of two (the hash's low bits pick one).
pub const fn buckets_for(flows: u32) -> u32 {
    let buckets = flows.div_ceil(WAYS as u32);
    if buckets <= 1 {
        1
    } else {
        buckets.next_power_of_two()
    }
}

/// The persistence templates' table has this layout too, a fixed [`TEMPLATES_MAX`] slots, its own
/// seed ([`TEMPLATE_SEED_GLOBAL`]) and header; it gives up the longest unused template
/// ([`oldest`]).
pub const TEMPLATE_BUCKETS: u32 = buckets_for(TEMPLATES_MAX);
pub const TEMPLATE_SEED_GLOBAL: &str = "TEMPLATE_SEED";

/// The LVS/NAT reply index holds a reply per LVS/NAT connection, `nat_max` of them (by default
/// as many as the connection table's connections), and has its own seed and mask; a new reply
/// takes the slot [`reply_victim`] names.
pub const REPLY_SEED_GLOBAL: &str = "REPLY_SEED";
pub const REPLY_MASK_GLOBAL: &str = "REPLY_MASK";

/// Where a flow's entry lives: its bucket (below the number of buckets) and its tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub bucket: u32,
    pub tag: u32,
}

/// The key as five 8-byte words, the hash's and the compare's input: a view, not a copy (the
/// datapath's stack has no room for one).
#[inline(always)]
pub fn words(key: &FlowKey) -> &[u64; 5] {
    const _: () =
        assert!(core::mem::size_of::<FlowKey>() == 40 && core::mem::align_of::<FlowKey>() == 8);
    // SAFETY: FlowKey is 40 bytes of plain data aligned to 8 (checked above).
    unsafe { &*(key as *const FlowKey).cast::<[u64; 5]>() }
}

/// Whether two keys are the same flow, word by word (a derived `==` compares byte arrays, which
/// the BPF target may turn into a memcmp call it cannot link).
#[inline(always)]
pub fn same(a: &FlowKey, b: &FlowKey) -> bool {
    let (a, b) = (words(a), words(b));
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4]
}

/// A flow's place in a table of `mask + 1` buckets. `seed` is the table's secret: without it,
/// whoever knows the hash could aim a few flows at one bucket and push a chosen flow out. A
/// multiply-xorshift per word (a few instructions each): keyed like the kernel's jhash with its
/// random seed, which is what the LRU hash offers.
#[inline(always)]
pub fn place(key: &FlowKey, seed: u64, mask: u32) -> Place {
    let w = words(key);
    let mut h = seed;
    let mut i = 0;
    while i < w.len() {
        h = mix(h, w[i]);
        i += 1;
    }
    finish(h, mask)
}

/// An LVS/NAT reply's place in the reply index: by its client's side alone (address, port,
/// protocol), which the client's first packet already has, so a new flow's bucket of the index
/// can be fetched while the connection table's is, before the scheduler names the real server
/// the rest of the reply's key holds. (IPVS hashes its connections by the client's side too.)
#[inline(always)]
pub fn reply_place(reply: &FlowKey, seed: u64, mask: u32) -> Place {
    let w = words(reply);
    client_place(w[2], w[3], reply.dport, reply.proto, seed, mask)
}

/// [`reply_place`] of the replies to a client's `flow` (client -> VIP), whichever real server
/// answers.
#[inline(always)]
pub fn reply_place_of_client(flow: &FlowKey, seed: u64, mask: u32) -> Place {
    let w = words(flow);
    client_place(w[0], w[1], flow.sport, flow.proto, seed, mask)
}

#[inline(always)]
fn client_place(a: u64, b: u64, port: u16, proto: u8, seed: u64, mask: u32) -> Place {
    // Word by word, not through an array: xdplb's stack has no room for one.
    let h = mix(mix(mix(seed, a), b), port as u64 | (proto as u64) << 16);
    finish(h, mask)
}

const M: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline(always)]
fn mix(h: u64, w: u64) -> u64 {
    let h = (h ^ w).wrapping_mul(M);
    h ^ h >> 29
}

#[inline(always)]
fn finish(h: u64, mask: u32) -> Place {
    let h = h.wrapping_mul(M);
    let h = h ^ h >> 32;
    Place {
        bucket: h as u32 & mask,
        tag: (h >> 32) as u32 | 1,
    }
}

/// Whether an entry holds a connection the datapath still follows (what the agent counts).
#[inline(always)]
pub fn live(slot: &Slot, now: u32, cfg: &DirectorConfig) -> bool {
    worth(slot, now, cfg) >= 2
}

/// After an insert pushed a live entry out of `bucket`: the others lose their second chance
/// (they must be looked up again to keep it), as CLOCK's hand clears what it passes over.
#[inline(always)]
pub fn age(bucket: &mut Bucket) {
    let mut i = 0;
    while i < WAYS {
        bucket.slots[i].mark = 0;
        i += 1;
    }
}

/// How much an entry is worth keeping: 0 for an empty slot, 1 for one timed out, then a
/// connection in its handshake or closing before an established one, each unreferenced before
/// referenced. A SYN flood's entries (handshakes) never push out an established connection that
/// is in use.
#[inline(always)]
fn worth(slot: &Slot, now: u32, cfg: &DirectorConfig) -> u32 {
    if slot.tag == EMPTY {
        return 0;
    }
    let timeout = slot.entry.idle_timeout(
        &slot.key,
        cfg.tcp_timeout,
        cfg.tcp_fin_timeout,
        cfg.udp_timeout,
    );
    if now.wrapping_sub(slot.entry.last_seen) > timeout {
        return 1;
    }
    let established = slot.entry.flags & (CONN_ESTABLISHED | CONN_FIN) == CONN_ESTABLISHED;
    2 + 2 * established as u32 + (slot.mark & SLOT_REFERENCED)
}

/// The slot an insert into a full bucket writes: the least worth keeping ([`worth`]), the
/// longest idle among equals; an empty slot at once. Not inlined: unrolled over the ways into
/// every call site, its branches nearly exhausted the verifier's budget (issue 16's note).
#[inline(never)]
pub fn victim(bucket: &Bucket, now: u32, cfg: &DirectorConfig) -> usize {
    let mut best = 0;
    let mut best_worth = u32::MAX;
    let mut best_idle = 0;
    let mut i = 0;
    while i < WAYS {
        let slot = &bucket.slots[i];
        let worth = worth(slot, now, cfg);
        if worth == 0 {
            return i;
        }
        let idle = now.wrapping_sub(slot.entry.last_seen);
        if worth < best_worth || (worth == best_worth && idle > best_idle) {
            best = i;
            best_worth = worth;
            best_idle = idle;
        }
        i += 1;
    }
    best
}

/// The slot a new template takes: an empty one, else the longest unused (a template's timeout
/// is its service's, so a full bucket keeps the most recently used, as an LRU).
#[inline(always)]
pub fn oldest<E: Entry>(bucket: &BucketOf<E>, now: u32) -> usize {
    least_kept(bucket, now, |_| 0)
}

/// [`SlotOf::mark`] of a reply whose connection is established (the datapath writes the reply
/// again when the handshake ends).
pub const REPLY_ESTABLISHED: u32 = 2;

/// A reply slot's mark for a connection `established` or not.
#[inline(always)]
pub fn reply_mark(established: bool) -> u32 {
    if established {
        REPLY_ESTABLISHED
    } else {
        0
    }
}

/// The slot a new reply takes: an empty one, else one whose connection is not established (a
/// SYN flood's are not), else any; the longest unused among equals. A flood of new NAT flows
/// never pushes out an established connection's reply while a bucket has another to give up.
#[inline(always)]
pub fn reply_victim(bucket: &ReplyBucket, now: u32) -> usize {
    least_kept(bucket, now, |s| (s.mark & REPLY_ESTABLISHED != 0) as u32)
}

/// An empty slot, else the lowest `rank`, the longest unused among equals.
#[inline(always)]
fn least_kept<E: Entry>(bucket: &BucketOf<E>, now: u32, rank: impl Fn(&SlotOf<E>) -> u32) -> usize {
    let mut best = 0;
    let mut best_rank = u32::MAX;
    let mut best_idle = 0;
    let mut i = 0;
    while i < WAYS {
        let slot = &bucket.slots[i];
        if slot.tag == EMPTY {
            return i;
        }
        let rank = rank(slot);
        let idle = now.wrapping_sub(slot.entry.last_used());
        if rank < best_rank || (rank == best_rank && idle > best_idle) {
            best = i;
            best_rank = rank;
            best_idle = idle;
        }
        i += 1;
    }
    best
}

/// The slot of `key` in its bucket, if it has one.
#[inline(always)]
pub fn find<E>(bucket: &BucketOf<E>, key: &FlowKey, tag: u32) -> Option<usize> {
    let mut i = 0;
    while i < WAYS {
        let slot = &bucket.slots[i];
        if slot.tag == tag && same(&slot.key, key) {
            return Some(i);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{addr_from_v4, IPPROTO_TCP};

    fn flow(n: u32, sport: u16) -> FlowKey {
        FlowKey {
            src: addr_from_v4(n.to_be_bytes()),
            dst: addr_from_v4([10, 0, 0, 100]),
            sport,
            dport: 80,
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        }
    }

    #[test]
    fn the_reply_index_is_one_bucket_without_lvs_nat_and_at_least_two_with() {
        assert_eq!(reply_buckets(0), 1);
        assert!(!translates_replies(reply_buckets(0)));
        for n in [1, 2, 3, 1000, 1_000_000] {
            assert!(translates_replies(reply_buckets(n)), "nat_max {n}");
            assert!(reply_buckets(n) * WAYS as u32 >= n, "nat_max {n}");
        }
        assert_eq!(reply_buckets(1_000_000), table_buckets(1_000_000));
    }

    /// The datapath fetches a new flow's reply bucket by the client's flow, before it knows the
    /// real server: the reply, whichever real server and port send it, must be placed there.
    #[test]
    fn a_reply_is_placed_where_its_clients_flow_says() {
        let (seed, mask) = (0x1234_5678_9abc_def0, (1 << 16) - 1);
        let mut buckets = [0u32; 1000];
        for n in 0..1000u32 {
            let client = flow(0x0a00_0000 + n, 40000 + n as u16);
            let at = reply_place_of_client(&client, seed, mask);
            for (real, port) in [([10, 1, 0, 1], 8080), ([10, 1, 0, 2], 0)] {
                let reply = client.nat_reply(&addr_from_v4(real), port);
                assert_eq!(reply_place(&reply, seed, mask), at, "client {n}");
            }
            buckets[n as usize] = at.bucket;
        }
        // And clients spread over the buckets (the port and address both count).
        buckets.sort_unstable();
        let distinct = 1 + buckets.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(distinct > 990, "{distinct} buckets");
        let other_port = flow(0x0a00_0000, 40001);
        assert_ne!(
            reply_place_of_client(&other_port, seed, mask),
            reply_place_of_client(&flow(0x0a00_0000, 40000), seed, mask)
        );
    }

    fn cfg() -> DirectorConfig {
        DirectorConfig {
            tcp_timeout: 900,
            tcp_fin_timeout: 120,
            udp_timeout: 300,
            ..Default::default()
        }
    }

    fn slot(tag: u32, flags: u32, mark: u32, last_seen: u32) -> Slot {
        Slot {
            tag,
            mark,
            key: flow(tag, 1000),
            entry: Conn {
                real: 1,
                service: 0,
                last_seen,
                flags,
            },
        }
    }

    #[test]
    fn buckets_are_a_power_of_two_holding_at_least_the_flows_asked() {
        for (flows, buckets) in [
            (0, 1),
            (1, 1),
            (4, 1),
            (5, 2),
            (4096, 1024),
            (65_536, 16_384),
            (1_000_000, 262_144),
        ] {
            assert_eq!(buckets_for(flows), buckets, "{flows} flows");
            assert!(buckets as u64 * WAYS as u64 >= flows as u64);
        }
        assert_eq!(core::mem::size_of::<Bucket>(), 64 * WAYS);
    }

    #[test]
    fn a_flow_always_lands_in_the_same_place_and_the_seed_moves_it() {
        let mask = buckets_for(65_536) - 1;
        let mut moved = 0;
        for n in 0..1000 {
            let f = flow(0x0a00_0000 + n, 40000);
            let p = place(&f, 7, mask);
            assert_eq!(p, place(&f, 7, mask));
            assert!(p.bucket <= mask);
            assert_ne!(p.tag, EMPTY);
            moved += (place(&f, 8, mask).bucket != p.bucket) as u32;
        }
        assert!(moved > 990, "another seed moved only {moved} of 1000 flows");
    }

    #[test]
    fn flows_that_differ_in_one_field_spread_over_the_buckets() {
        // Sources in a row, then ports in a row (what a busy client or a flood looks like):
        // filled to a quarter of its slots, about e^-1 of the buckets stay empty.
        let buckets = buckets_for(65_536);
        for by_port in [false, true] {
            let mut load = [0u8; 16_384];
            for n in 0..buckets {
                let f = match by_port {
                    false => flow(0x0a00_0000 + n, 40000),
                    true => flow(0x0a00_0001, n as u16),
                };
                load[place(&f, 0x5eed, buckets - 1).bucket as usize] += 1;
            }
            let empty = load.iter().filter(|&&l| l == 0).count() as f64 / buckets as f64;
            assert!(
                (0.34..0.40).contains(&empty),
                "{empty} of the buckets empty"
            );
            assert!(
                load.iter().all(|&l| l <= 9),
                "a bucket got {:?}",
                load.iter().max()
            );
        }
    }

    #[test]
    fn an_insert_takes_an_empty_slot_first() {
        let mut b = Bucket::default();
        b.slots[0] = slot(3, CONN_ESTABLISHED, 0, 100);
        b.slots[2] = slot(5, 0, 0, 1);
        assert_eq!(victim(&b, 200, &cfg()), 1);
    }

    #[test]
    fn a_full_bucket_gives_up_what_is_least_worth_keeping() {
        let c = cfg();
        let now = 10_000;
        // Timed out beats everything, even referenced and established.
        let mut b = Bucket {
            slots: [
                slot(1, 0, 0, now - 10),
                slot(3, CONN_ESTABLISHED, SLOT_REFERENCED, now - 901),
                slot(5, CONN_ESTABLISHED, 0, now - 500),
                slot(7, 0, SLOT_REFERENCED, now - 1),
            ],
        };
        assert_eq!(victim(&b, now, &c), 1);
        // Then a handshake before an established connection, even one idle far longer.
        b.slots[1] = slot(3, CONN_ESTABLISHED, SLOT_REFERENCED, now - 800);
        assert_eq!(victim(&b, now, &c), 0);
        // An unreferenced handshake before a referenced one idle longer.
        b.slots[0].mark = SLOT_REFERENCED;
        b.slots[3].mark = 0;
        assert_eq!(victim(&b, now, &c), 3);
        // Among equals, the longest idle.
        b.slots[0].mark = 0;
        assert_eq!(victim(&b, now, &c), 0);
        // All established: the unreferenced one.
        b.slots[0] = slot(1, CONN_ESTABLISHED, SLOT_REFERENCED, now - 700);
        b.slots[3] = slot(7, CONN_ESTABLISHED, SLOT_REFERENCED, now - 700);
        assert_eq!(victim(&b, now, &c), 2);
        // A closing connection (FIN) counts as not established, with the FIN timeout.
        b.slots[1].entry.flags |= CONN_FIN;
        assert_eq!(victim(&b, now, &c), 1, "past the FIN timeout");
        b.slots[1].entry.last_seen = now - 100;
        assert_eq!(victim(&b, now, &c), 1, "closing");
    }

    #[test]
    fn a_template_takes_an_empty_slot_else_the_longest_unused() {
        let now = 10_000;
        let mut b = Bucket {
            slots: [
                slot(1, 0, 0, now - 10),
                slot(3, 0, 0, now - 3000),
                slot(5, 0, 0, now - 20),
                slot(7, 0, 0, now - 1),
            ],
        };
        assert_eq!(oldest(&b, now), 1);
        b.slots[2].tag = EMPTY;
        assert_eq!(oldest(&b, now), 2, "an empty slot first");
        // A reply index's bucket, by when a reply last used each.
        let mut r = ReplyBucket::default();
        for (way, used) in [(0, now - 5), (1, now - 7), (2, now - 2), (3, now)] {
            r.slots[way].tag = 1 + way as u32;
            r.slots[way].entry.last_seen = used;
        }
        assert_eq!(oldest(&r, now), 1);
        // A new reply gives up one whose connection is not established first, however recent.
        assert_eq!(reply_victim(&r, now), 1);
        r.slots[1].mark = REPLY_ESTABLISHED;
        r.slots[0].mark = REPLY_ESTABLISHED;
        assert_eq!(reply_victim(&r, now), 2);
        r.slots[2].mark = REPLY_ESTABLISHED;
        r.slots[3].mark = REPLY_ESTABLISHED;
        assert_eq!(
            reply_victim(&r, now),
            1,
            "all established: the longest unused"
        );
        r.slots[3].tag = EMPTY;
        assert_eq!(reply_victim(&r, now), 3, "an empty slot first");
        // A template's key: its service and client, nothing else; two services never share one.
        let client = addr_from_v4([192, 0, 2, 7]);
        let key = |service| crate::TemplateKey { service, client }.flow_key();
        assert_ne!(key(1), key(2));
        assert_eq!(key(1).src, client);
        assert_eq!((key(1).sport, key(1).dport, key(1).proto), (0, 0, 0));
        assert_eq!(TEMPLATE_BUCKETS * WAYS as u32, TEMPLATES_MAX);
    }

    #[test]
    fn the_header_keeps_the_seed_and_is_no_bucket() {
        for seed in [0, 1, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(seed_of(&header::<Conn>(seed)), Some(seed));
            assert_eq!(seed_of(&header::<ReplyEntry>(seed)), Some(seed));
        }
        assert_eq!(seed_of(&Bucket::default()), None);
        assert_eq!(seed_of(&ReplyBucket::default()), None);
        // A header written before the reply index (seed in the entry's real and service ids)
        // reads the same.
        let mut old = Bucket::default();
        old.slots[0].tag = HEADER_TAG;
        (old.slots[0].entry.real, old.slots[0].entry.service) = (0x89ab_cdef, 0x0123_4567);
        assert_eq!(seed_of(&old), Some(0x0123_4567_89ab_cdef));
        assert_eq!(map_entries(buckets_for(4096)), 1025);
    }

    #[test]
    fn liveness_and_aging() {
        let c = cfg();
        let now = 10_000;
        assert!(!live(&Slot::default(), now, &c), "empty");
        assert!(
            !live(&slot(1, CONN_ESTABLISHED, 0, now - 901), now, &c),
            "timed out"
        );
        assert!(live(&slot(1, 0, 0, now - 10), now, &c), "handshake");
        assert!(live(&slot(1, CONN_ESTABLISHED, 0, now - 900), now, &c));
        let mut b = Bucket {
            slots: [slot(1, 0, SLOT_REFERENCED, now); WAYS],
        };
        age(&mut b);
        assert!(b.slots.iter().all(|s| s.mark == 0));
    }

    #[test]
    fn a_lookup_finds_its_flow_by_tag_and_key() {
        let mut b = Bucket::default();
        let f = flow(0x0a00_0001, 40000);
        let p = place(&f, 1, 0);
        b.slots[2] = Slot {
            tag: p.tag,
            key: f,
            ..Default::default()
        };
        assert_eq!(find(&b, &f, p.tag), Some(2));
        assert_eq!(find(&b, &flow(0x0a00_0001, 40001), p.tag), None);
        let mut other = f;
        other.proto = 17;
        assert_eq!(find(&b, &other, p.tag), None, "another protocol");
        other = f;
        other.dst[15] ^= 1;
        assert_eq!(find(&b, &other, p.tag), None, "another destination");
        b.slots[2].tag = EMPTY;
        assert_eq!(find(&b, &f, p.tag), None, "an emptied slot");
    }
}

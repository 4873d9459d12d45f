//! The connection table: flow -> real server, consulted before the scheduler so an established
//! flow keeps its real server when servers or weights change. Set-associative
//! ([`lb_common::conn_table`]): a flow lives in one bucket of four slots its keyed hash picks; a
//! new flow takes an empty slot there or pushes out the entry least worth keeping (timed out,
//! then handshakes and closing connections, then established ones not looked up lately). Per
//! packet it is one hash and one bucket; writes happen only for new flows, a FIN, a RST, a
//! timestamp refresh at most every few seconds, and the first lookup after an eviction.
//!
//! Other CPUs and the agent write the same buckets without a lock: a writer empties the tag,
//! writes key and entry, then the tag. A lookup that races an overwrite of its own slot can read
//! the new entry for one packet (the caller only follows it to a real server of the packet's
//! service); a torn slot has a tag that matches no key and is pushed out like any other.

use aya_ebpf::{helpers::bpf_jiffies64, macros::map, maps::Array};
use lb_common::{
    addr_from_v4,
    conn_table::{self, Bucket, Slot, EMPTY, SLOT_REFERENCED, WAYS},
    Conn, DirectorConfig, FlowKey, CONN_ESTABLISHED, CONN_FIN, DEFAULT_CONN_MAX,
    HANDOFF_ESTABLISHED, HANDOFF_REPLY, IPPROTO_TCP, MAP_MMAPABLE, SYNC_BIND, SYNC_CLOSE,
};

use crate::{
    counts,
    parse::{Packet, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN},
    persist, slots, sync,
};

/// Which of a real server's counts an entry with these flags is in: (active, inactive).
#[inline(always)]
fn state(flags: u32) -> (i64, i64) {
    if flags & (CONN_ESTABLISHED | CONN_FIN) == CONN_ESTABLISHED {
        (1, 0)
    } else {
        (0, 1)
    }
}

/// Its size is set by the agent at load time (`xdplb run --conn-max`), with [`CONN_MASK`] and
/// [`CONN_SEED`]; memory-mapped, so the agent reads and writes it without a system call per entry.
#[map]
static CONN_TABLE: Array<Bucket> = Array::with_max_entries(
    conn_table::map_entries(conn_table::table_buckets(DEFAULT_CONN_MAX)),
    MAP_MMAPABLE,
);

/// The hash's secret and the bucket mask, set at load ([`conn_table::SEED_GLOBAL`]): constants
/// to the verifier, so reading them costs a load each.
#[no_mangle]
static CONN_SEED: u64 = 0;
#[no_mangle]
static CONN_MASK: u32 = 0;

/// Starts fetching the bucket of `flow` ([`slots::fetch`]), for a lookup that comes later.
#[inline(always)]
pub fn fetch(flow: &FlowKey) -> u32 {
    slots::fetch(&CONN_TABLE, place(flow).bucket)
}

/// A flow's bucket and tag.
#[inline(always)]
fn place(flow: &FlowKey) -> conn_table::Place {
    // SAFETY: reads of plain globals; volatile so the compiler does not fold their defaults.
    let (seed, mask) = unsafe {
        (
            core::ptr::read_volatile(&CONN_SEED),
            core::ptr::read_volatile(&CONN_MASK),
        )
    };
    conn_table::place(flow, seed, mask)
}

/// The slot holding this flow's entry, if any, and its tag (for [`slots::still`]).
#[inline(always)]
fn slot(flow: &FlowKey) -> Option<(*mut Slot, u32)> {
    let p = place(flow);
    Some((slots::find(&CONN_TABLE, flow, p)?, p.tag))
}

#[inline(always)]
pub fn flow(pkt: &Packet) -> FlowKey {
    FlowKey {
        src: addr_from_v4(pkt.src),
        dst: addr_from_v4(pkt.dst),
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        _pad: [0; 3],
    }
}

/// The kernel's clock ticks (jiffies): the verifier turns the helper into a single load, where
/// the other clocks cost a call (a tick is a few ms: plenty for timeouts; they wrap, and only
/// differences are used).
#[inline(always)]
pub fn now() -> u32 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_jiffies64() as u32 }
}

/// What a packet changes in its flow's entry: decided by [`lookup`] while the entry's fields are
/// at hand, done by [`refresh`] once the packet has passed its checks (nothing, for nearly every
/// packet of an established flow).
const TOUCH: u32 = 1;
const ESTABLISH: u32 = 2;
const CLOSE: u32 = 4;
const MARK: u32 = 8;

/// A flow's live entry, found by [`lookup`]: its service and real server ids, and what the
/// packet changes in it.
pub struct Entry {
    slot: *mut Slot,
    todo: u32,
    /// Whether the connection is established after the packet (not closing).
    established: bool,
    pub service: u32,
    pub real: u32,
}

impl Entry {
    /// For an LVS/NAT flow, whether its reply entry is written again with this packet, and how
    /// ([`FlowHandoff`](lb_common::FlowHandoff)'s bits): when the packet refreshes the
    /// timestamp (a connection idle for a while may have lost its reply entry to newer ones) or
    /// moves the connection's state (the reply index ranks an established connection's reply
    /// above others, as the connection table ranks its entry).
    #[inline(always)]
    pub fn reply_bits(&self) -> u32 {
        if self.todo & (TOUCH | ESTABLISH | CLOSE) == 0 {
            return 0;
        }
        HANDOFF_REPLY
            | if self.established {
                HANDOFF_ESTABLISHED
            } else {
                0
            }
    }
}

/// The live entry for this flow, as it is; None when there is none, it has timed out, or a SYN
/// reopens a closed connection's ports. (The caller checks the real server still belongs to
/// that service.) Nothing is written: the packet is [`refresh`]ed into it once it has passed
/// the header checks, so a damaged packet never moves a connection's state.
#[inline(always)]
pub fn lookup(flow: &FlowKey, tcp_flags: u8, now: u32, cfg: &DirectorConfig) -> Option<Entry> {
    let (slot, tag) = slot(flow)?;
    // SAFETY: reads of the map's value.
    let (conn, mark) = unsafe { ((*slot).entry, (*slot).mark) };
    let idle = now.wrapping_sub(conn.last_seen);
    let timeout = conn.idle_timeout(flow, cfg.tcp_timeout, cfg.tcp_fin_timeout, cfg.udp_timeout);
    if idle > timeout {
        return None;
    }
    let syn = tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
    if syn && conn.flags & CONN_FIN != 0 {
        return None;
    }
    let mut todo = 0;
    if idle >= cfg.refresh {
        todo |= TOUCH;
    }
    if conn.flags & CONN_FIN == 0 {
        // The handshake's last ACK: the connection becomes active.
        if conn.flags & CONN_ESTABLISHED == 0
            && flow.proto == IPPROTO_TCP
            && tcp_flags & (TCP_FLAG_ACK | TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST)
                == TCP_FLAG_ACK
        {
            todo |= ESTABLISH;
        }
        if tcp_flags & TCP_FLAG_FIN != 0 {
            todo |= CLOSE;
        }
    }
    // Its second chance; written only when clear, so a busy flow's bucket stays unwritten.
    if mark == 0 {
        todo |= MARK;
    }
    let established = (conn.flags & CONN_ESTABLISHED != 0 || todo & ESTABLISH != 0)
        && conn.flags & CONN_FIN == 0
        && todo & CLOSE == 0;
    // An insert on another CPU may be writing another flow over this slot (its bucket's
    // victim): a copy taken across that is half the other flow's.
    if !slots::still(slot, tag) {
        return None;
    }
    Some(Entry {
        slot,
        todo,
        established,
        service: conn.service,
        real: conn.real,
    })
}

/// A packet of an established flow, in its entry: the timestamp (at most every `refresh`), the
/// handshake's end, a FIN, the second-chance mark, as [`lookup`] decided. With sync on, the
/// first FIN and a periodic refresh are announced to the peers, both off the per-packet path.
#[inline(always)]
pub fn refresh(entry: &Entry, flow: &FlowKey, now: u32, cfg: &DirectorConfig) {
    let todo = entry.todo;
    if todo == 0 {
        return;
    }
    // SAFETY: the pointer is into the map's value; races with other CPUs only affect the
    // timestamp, the mark and the FIN flag, which tolerate a lost update.
    let slot = unsafe { &mut *entry.slot };
    let conn = &mut slot.entry;
    if todo & TOUCH != 0 {
        if sync::due(cfg, conn.last_seen, now) {
            sync::event(flow, conn.service, conn.real, SYNC_BIND, conn.flags);
        }
        conn.last_seen = now;
        persist::touch(conn.service, flow, now);
    }
    if todo & ESTABLISH != 0 {
        conn.flags |= CONN_ESTABLISHED;
        counts::add(conn.real, 1, -1);
    }
    if todo & CLOSE != 0 {
        let (was_active, _) = state(conn.flags);
        conn.flags |= CONN_FIN;
        // The FIN timeout runs from the FIN (as IPVS's FIN_WAIT does), not from the last refresh.
        conn.last_seen = now;
        counts::add(conn.real, -was_active, was_active);
        if sync::enabled(cfg) {
            sync::event(flow, conn.service, conn.real, SYNC_BIND, conn.flags);
        }
    }
    if todo & MARK != 0 {
        slot.mark = SLOT_REFERENCED;
    }
}

/// [`lookup`] and [`refresh`] at once, for a packet already checked (an LVS/NAT reply's, its
/// key made the client's): the entry's [`Entry::reply_bits`] (0 without a live entry).
#[inline(always)]
pub fn track(flow: &FlowKey, tcp_flags: u8, now: u32, cfg: &DirectorConfig) -> u32 {
    match lookup(flow, tcp_flags, now, cfg) {
        Some(entry) => {
            refresh(&entry, flow, now, cfg);
            entry.reply_bits()
        }
        None => 0,
    }
}

/// The service and real server ids an entry binds this flow to, as they are: for packets that
/// are about the flow rather than of it (ICMP errors).
#[inline(always)]
pub fn binding(flow: &FlowKey) -> Option<(u32, u32)> {
    let (slot, tag) = slot(flow)?;
    // SAFETY: a copy of two fields of the map's value.
    let ids = unsafe { ((*slot).entry.service, (*slot).entry.real) };
    // As in `lookup`: not another flow's, half written over this one's.
    slots::still(slot, tag).then_some(ids)
}

/// Binds a new flow to a real server (and tells the peers, with sync on).
#[inline(always)]
pub fn insert(
    flow: &FlowKey,
    service: u32,
    real: u32,
    tcp_flags: u8,
    now: u32,
    cfg: &DirectorConfig,
) {
    let flags = first_flags(flow, tcp_flags);
    // A global function must return a number: 1 if written (a failed lookup of its own bucket,
    // which cannot happen, only costs stickiness).
    let _ = xdplb_conn_write(flow, service, real, (flags as u64) << 32 | now as u64, cfg);
    if sync::enabled(cfg) {
        sync::event(flow, service, real, SYNC_BIND, flags);
    }
}

/// A new flow's state, from its first packet's flags.
#[inline(always)]
fn first_flags(flow: &FlowKey, tcp_flags: u8) -> u32 {
    if tcp_flags & TCP_FLAG_FIN != 0 {
        CONN_FIN
    } else if flow.proto == IPPROTO_TCP && tcp_flags & TCP_FLAG_SYN == 0 {
        // First seen mid-connection (its director failed over, or the table forgot it).
        CONN_ESTABLISHED
    } else {
        0
    }
}

/// Whether a new flow is established from its first packet on (taken up mid-connection), as
/// [`insert`] writes it: an LVS/NAT flow's reply entry is ranked the same.
#[inline(always)]
pub fn starts_established(flow: &FlowKey, tcp_flags: u8) -> bool {
    first_flags(flow, tcp_flags) == CONN_ESTABLISHED
}

/// Writes a flow's entry (1; 0 if it could not): into its own slot if it has one (a timed-out
/// or reopened flow), else an empty one, else the one [`conn_table::victim`] gives up, whose live
/// connection leaves its real server's counts. A global function (exported by the linker, see
/// build.rs), so the verifier checks it once per program rather than for every state of its
/// callers: inlined, or even as a static function, the table's writes took xdplb past the
/// 1,000,000 instructions it may process. Hence five arguments at most (the flags and the clock
/// share one) and pointers it checks for null.
#[no_mangle]
#[inline(never)]
pub extern "C" fn xdplb_conn_write(
    flow: *const FlowKey,
    service: u32,
    real: u32,
    flags_now: u64,
    cfg: *const DirectorConfig,
) -> u32 {
    // SAFETY: the verifier sizes both pointers from their types; null is all they can be else.
    let (Some(flow), Some(cfg)) = (unsafe { flow.as_ref() }, unsafe { cfg.as_ref() }) else {
        return 0;
    };
    let (flags, now) = ((flags_now >> 32) as u32, flags_now as u32);
    let p = place(flow);
    let Some(bucket) = CONN_TABLE.get_ptr_mut(p.bucket) else {
        return 0;
    };
    // SAFETY: the pointer is into the map's value.
    let (way, reuse) = match conn_table::find(unsafe { &*bucket }, flow, p.tag) {
        Some(way) => (way, true),
        // SAFETY: as above.
        None => (conn_table::victim(unsafe { &*bucket }, now, cfg), false),
    };
    // SAFETY: the pointer is into the map's value.
    let bucket = unsafe { &mut *bucket };
    let slot = &mut bucket.slots[way & (WAYS - 1)];
    if conn_table::live(slot, now, cfg) {
        let (active, inactive) = state(slot.entry.flags);
        counts::add(slot.entry.real, -active, -inactive);
        if !reuse {
            conn_table::age(bucket);
        }
    }
    let conn = Conn {
        real,
        service,
        last_seen: now,
        flags,
    };
    slots::write(&mut bucket.slots[way & (WAYS - 1)], flow, p.tag, 0, conn);
    let (active, inactive) = state(flags);
    counts::add(real, active, inactive);
    1
}

/// Forgets a flow after a RST; `known` says it had an entry, which the peers forget too.
#[inline(always)]
pub fn close(flow: &FlowKey, service: u32, real: u32, known: bool, cfg: &DirectorConfig) {
    if let Some((slot, tag)) = slot(flow) {
        // SAFETY: a copy of two fields of the map's value.
        let (flags, owner) = unsafe { ((*slot).entry.flags, (*slot).entry.real) };
        // As in `lookup`: another CPU's insert may have given the slot to another flow since
        // it was found (which took this one out of its counts); that flow is left alone.
        if slots::still(slot, tag) {
            // SAFETY: a store into the map's value.
            unsafe { core::ptr::write_volatile(&raw mut (*slot).tag, EMPTY) };
            if known {
                let (active, inactive) = state(flags);
                counts::add(owner, -active, -inactive);
            }
        }
    }
    if known && sync::enabled(cfg) {
        sync::event(flow, service, real, SYNC_CLOSE, CONN_FIN);
    }
}

//! The connection table: flow -> real server, consulted before the scheduler so an established
//! flow keeps its real server when servers or weights change. A kernel LRU hash: when it is full,
//! the least recently used flows make room. Per packet it is one lookup; writes happen only for
//! new flows, a FIN, a RST, or a timestamp refresh at most every few seconds.

use aya_ebpf::{helpers::bpf_jiffies64, macros::map, maps::LruHashMap};
use lb_common::{
    addr_from_v4, Conn, DirectorConfig, FlowKey, BPF_F_NO_COMMON_LRU, CONN_ESTABLISHED, CONN_FIN,
    DEFAULT_CONN_MAX, IPPROTO_TCP, SYNC_BIND, SYNC_CLOSE,
};

use crate::{
    counts,
    parse::{Packet, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN},
    persist, sync,
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

/// Its size is set by the agent at load time (`xdplb run --conn-max`). Per-CPU LRU lists
/// (BPF_F_NO_COMMON_LRU): inserting a new flow takes no lock shared by all CPUs.
#[map]
static CONNS: LruHashMap<FlowKey, Conn> =
    LruHashMap::with_max_entries(DEFAULT_CONN_MAX, BPF_F_NO_COMMON_LRU);

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

/// The service and real server ids of a live entry for this flow, refreshing it; None when
/// there is none, it has timed out, or a SYN reopens a closed connection's ports. (The caller
/// checks the real server still belongs to that service.) With sync on, the first FIN and a
/// periodic refresh are announced to the peers, both off the per-packet path.
#[inline(always)]
pub fn established(
    flow: &FlowKey,
    tcp_flags: u8,
    now: u32,
    cfg: &DirectorConfig,
) -> Option<(u32, u32)> {
    let conn = CONNS.get_ptr_mut(flow)?;
    // SAFETY: the pointer is into the map's value; races with other CPUs only affect the
    // timestamp and the FIN flag, both of which tolerate a lost update.
    let conn = unsafe { &mut *conn };
    let idle = now.wrapping_sub(conn.last_seen);
    let timeout = conn.idle_timeout(flow, cfg.tcp_timeout, cfg.tcp_fin_timeout, cfg.udp_timeout);
    if idle > timeout {
        return None;
    }
    let syn = tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
    if syn && conn.flags & CONN_FIN != 0 {
        return None;
    }
    if idle >= cfg.refresh {
        if sync::due(cfg, conn.last_seen, now) {
            sync::event(flow, conn.service, conn.real, SYNC_BIND, conn.flags);
        }
        conn.last_seen = now;
        persist::touch(conn.service, &flow.src, now);
    }
    // The handshake's last ACK: the connection becomes active.
    if conn.flags & CONN_ESTABLISHED == 0
        && flow.proto == IPPROTO_TCP
        && tcp_flags & (TCP_FLAG_ACK | TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST) == TCP_FLAG_ACK
        && conn.flags & CONN_FIN == 0
    {
        conn.flags |= CONN_ESTABLISHED;
        counts::add(conn.real, 1, -1);
    }
    if tcp_flags & TCP_FLAG_FIN != 0 && conn.flags & CONN_FIN == 0 {
        let (was_active, _) = state(conn.flags);
        conn.flags |= CONN_FIN;
        // The FIN timeout runs from the FIN (as IPVS's FIN_WAIT does), not from the last refresh.
        conn.last_seen = now;
        counts::add(conn.real, -was_active, was_active);
        if sync::enabled(cfg) {
            sync::event(flow, conn.service, conn.real, SYNC_BIND, conn.flags);
        }
    }
    Some((conn.service, conn.real))
}

/// The service and real server ids an entry binds this flow to, as they are: for packets that
/// are about the flow rather than of it (ICMP errors).
#[inline(always)]
pub fn binding(flow: &FlowKey) -> Option<(u32, u32)> {
    // SAFETY: a copy of two fields, read at once.
    unsafe { CONNS.get(flow) }.map(|c| (c.service, c.real))
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
    let flags = if tcp_flags & TCP_FLAG_FIN != 0 {
        CONN_FIN
    } else if flow.proto == IPPROTO_TCP && tcp_flags & TCP_FLAG_SYN == 0 {
        // First seen mid-connection (its director failed over, or the table forgot it).
        CONN_ESTABLISHED
    } else {
        0
    };
    let conn = Conn {
        real,
        service,
        last_seen: now,
        flags,
    };
    // A full table evicts its least recently used flow; an error here only costs stickiness.
    if CONNS.insert(flow, conn, 0).is_ok() {
        let (active, inactive) = state(flags);
        counts::add(real, active, inactive);
    }
    if sync::enabled(cfg) {
        sync::event(flow, service, real, SYNC_BIND, flags);
    }
}

/// Forgets a flow after a RST; `known` says it had an entry, which the peers forget too.
#[inline(always)]
pub fn close(flow: &FlowKey, service: u32, real: u32, known: bool, cfg: &DirectorConfig) {
    if known {
        // SAFETY: read only.
        if let Some(conn) = unsafe { CONNS.get(flow) } {
            let (active, inactive) = state(conn.flags);
            counts::add(conn.real, -active, -inactive);
        }
    }
    let _ = CONNS.remove(flow);
    if known && sync::enabled(cfg) {
        sync::event(flow, service, real, SYNC_CLOSE, CONN_FIN);
    }
}

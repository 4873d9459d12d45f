//! LVS/NAT ("masquerading"): a request's destination becomes the real server's address and port;
//! the real server answers through the director (its default gateway), and the reply's source
//! becomes the VIP and the service's port again. Both rewrites update the IP and TCP/UDP
//! checksums incrementally (RFC 1624) and decrement the TTL, as a router does.
//!
//! Replies are found by their own flow key in NAT_REPLY_INDEX, written when a NAT flow is bound:
//! one lookup on the reply path, no search of the connection table. A reply's bucket is picked
//! by the client's side of the flow alone, so a new flow fetches it before it is scheduled.
//! The index is a table of the connection table's layout ([`conn_table`]), its slots wide
//! enough for a translation: one keyed hash and one bucket, nothing to allocate; a new reply
//! takes an empty slot of its bucket, else one whose connection is not established, the longest
//! unused among equals ([`conn_table::reply_victim`]). Only packets from a NAT real server's
//! address (the NAT_SOURCES prefilter) pay for the lookup. ICMP errors about NAT flows are
//! translated too (`icmp`).

pub mod icmp;
pub mod paths;

use aya_ebpf::{
    macros::map,
    maps::{Array, ProgramArray},
    programs::XdpContext,
};
use lb_common::{
    conn_table::{self, ReplyBucket, ReplySlot, EMPTY},
    csum, vip_filter_index, Addr, FlowKey, NatReply, RealEgress, Reason, ReplyEntry,
    DEFAULT_CONN_MAX, IPPROTO_TCP, MAP_MMAPABLE, NAT_PROG_ICMP, NAT_PROG_REPLY, NAT_PROG_SLOTS,
    VIP_FILTER_SIZE,
};

use crate::{
    conntrack,
    parse::{ptr_at, Packet},
    parse6::Packet6,
    route, slots,
};

/// Reply flow (real server -> client) -> what its source becomes. As many buckets as the
/// connection table (the agent sizes both, with [`REPLY_MASK`] and [`REPLY_SEED`]); memory-mapped
/// for the agent, as that table.
#[map]
static NAT_REPLY_INDEX: Array<ReplyBucket> = Array::with_max_entries(
    conn_table::map_entries(conn_table::table_buckets(DEFAULT_CONN_MAX)),
    MAP_MMAPABLE,
);

/// The index's hash secret and bucket mask, set at load ([`conn_table::REPLY_SEED_GLOBAL`]).
#[no_mangle]
static REPLY_SEED: u64 = 0;
#[no_mangle]
static REPLY_MASK: u32 = 0;

/// Non-zero where a NAT real server's address has its last 16 bits.
#[map]
static NAT_SOURCES: Array<u8> = Array::with_max_entries(VIP_FILTER_SIZE, 0);

/// The reply path's and the ICMP path's programs, set by the agent as it loads them all.
#[map]
static NAT_PROGS: ProgramArray = ProgramArray::with_max_entries(NAT_PROG_SLOTS, 0);

/// Continues with the reply path's program; returns only if it is not there.
#[inline(always)]
pub fn to_reply_path(ctx: &XdpContext) {
    // SAFETY: a tail call does not return when it succeeds; the context is the kernel's.
    unsafe { NAT_PROGS.tail_call(ctx, NAT_PROG_REPLY) };
}

/// Continues with the ICMP path's program; returns only if it is not there.
#[inline(always)]
pub fn to_icmp_path(ctx: &XdpContext) {
    // SAFETY: as in `to_reply_path`.
    unsafe { NAT_PROGS.tail_call(ctx, NAT_PROG_ICMP) };
}

/// Offset of the IPv4 checksum, TTL and addresses in the header.
const IP_CSUM: usize = 10;
const IP_TTL: usize = 8;
const IP_SRC: usize = 12;
const IP_DST: usize = 16;

/// Whether `addr` may be a NAT real server's (a reply's source): it has one's last 16 bits.
#[inline(always)]
pub fn may_be_real(addr: &Addr) -> bool {
    NAT_SOURCES
        .get(vip_filter_index(addr))
        .is_some_and(|b| *b != 0)
}

/// A reply flow's bucket and tag.
#[inline(always)]
fn place(reply: &FlowKey) -> conn_table::Place {
    let (seed, mask) = index_shape();
    conn_table::reply_place(reply, seed, mask)
}

/// The index's hash secret and bucket mask.
#[inline(always)]
fn index_shape() -> (u64, u32) {
    // SAFETY: reads of plain globals; volatile so the compiler does not fold their defaults.
    unsafe {
        (
            core::ptr::read_volatile(&REPLY_SEED),
            core::ptr::read_volatile(&REPLY_MASK),
        )
    }
}

/// Starts fetching the index's bucket for the replies to a new `flow` (client -> VIP), placed
/// by the client's side alone ([`conn_table::reply_place_of_client`]) before the scheduler
/// names the real server: it comes in while the connection table's bucket does, where the
/// reply's insert after the scheduler would wait for it alone. A global function (see
/// build.rs): inlined, xdplb's stack outgrew the verifier's limit.
#[no_mangle]
#[inline(never)]
pub extern "C" fn xdplb_reply_fetch(flow: *const FlowKey) -> u32 {
    // SAFETY: the verifier sizes the pointer from its type; null is all it can be else.
    let Some(flow) = (unsafe { flow.as_ref() }) else {
        return 0;
    };
    let (seed, mask) = index_shape();
    let p = conn_table::reply_place_of_client(flow, seed, mask);
    slots::fetch(&NAT_REPLY_INDEX, p.bucket)
}

/// A reply of a NAT flow, found by [`reply_of`].
pub struct Found {
    /// What the reply's source becomes.
    pub reply: NatReply,
    /// Its slot in the index, for [`rank`].
    pub slot: *mut ReplySlot,
    /// The connection is established and another of its replies came in this tick: the
    /// connection table has seen one (its lookup is one keyed hash and a bucket per reply
    /// otherwise; its refresh and second chance need no finer clock than the tick).
    pub busy: bool,
}

/// The reply's translation, if the packet belongs to a NAT flow; the entry is marked used now.
#[inline(always)]
pub fn reply_of(flow: &FlowKey) -> Option<Found> {
    let p = place(flow);
    let slot = slots::find(&NAT_REPLY_INDEX, flow, p)?;
    // An insert on another CPU may be giving this slot up while it is read (when this reply is
    // the one its bucket gives up): a torn copy would send the reply from another flow's VIP.
    // SAFETY: reads of the map's value.
    let (reply, used, mark) =
        unsafe { ((*slot).entry.reply, (*slot).entry.last_seen, (*slot).mark) };
    if !slots::still(slot, p.tag) {
        return None;
    }
    let now = conntrack::now();
    if used != now {
        // SAFETY: the pointer is into the map's value; a lost timestamp update is harmless.
        unsafe { (*slot).entry.last_seen = now };
    }
    Some(Found {
        reply,
        slot,
        busy: used == now && mark & conn_table::REPLY_ESTABLISHED != 0,
    })
}

/// Ranks the reply found by [`reply_of`] as its connection's state: established or not (the
/// reply path's conntrack can end a handshake or start closing, as the request path's can).
#[inline(always)]
pub fn rank(slot: *mut ReplySlot, established: bool) {
    // SAFETY: the slot [`reply_of`] found, in the map's value; another CPU's insert into it
    // in between would only take this rank, which orders a full bucket's choice.
    unsafe { (*slot).mark = conn_table::reply_mark(established) };
}

/// A reply's key becomes the flow of its client (client -> VIP:port, the connection table's
/// key).
#[inline(always)]
pub fn to_client_flow(flow: &mut FlowKey, reply: &NatReply) {
    flow.src = flow.dst;
    flow.dst = reply.vip;
    flow.sport = flow.dport;
    flow.dport = reply.vport;
}

/// The real server's port for an LVS/NAT flow: its own, or the one the client sent to.
#[inline(always)]
pub fn port(egress: &RealEgress, vport: u16) -> u16 {
    match egress.port {
        0 => vport,
        port => port,
    }
}

/// The key of the replies to `flow` (a client's) from the real server `real` at `addr`, as it
/// sends them.
#[inline(always)]
pub fn reply_key(flow: &FlowKey, addr: &Addr, real: u32) -> FlowKey {
    flow.nat_reply(addr, port(&route::real_egress(real), flow.dport))
}

/// Remembers `flow`'s reply from the real server `real` at `addr` ([`reply_key`]), as it will
/// send it: for a new flow, and again when its connection is refreshed or changes state
/// (`established` or not: [`conntrack::Entry::reply_bits`]).
#[inline(always)]
pub fn remember(flow: &FlowKey, addr: &Addr, real: u32, service: u32, established: bool) {
    let key = reply_key(flow, addr, real);
    let entry = ReplyEntry {
        reply: NatReply {
            vip: flow.dst,
            vport: flow.dport,
            _pad: 0,
            service,
            real,
        },
        last_seen: conntrack::now(),
    };
    let _ = xdplb_reply_write(&key, &entry, conn_table::reply_mark(established));
}

/// Writes a reply's entry with its `mark` (1; 0 if it could not): into its own slot if it has
/// one, else the one [`conn_table::reply_victim`] gives up. A global function (see build.rs),
/// as the connection table's write: the verifier checks it once, not for every state of the
/// new-flow path.
#[no_mangle]
#[inline(never)]
pub extern "C" fn xdplb_reply_write(
    key: *const FlowKey,
    entry: *const ReplyEntry,
    mark: u32,
) -> u32 {
    // SAFETY: the verifier sizes the pointers from their types; null is all they can be else.
    let (Some(key), Some(entry)) = (unsafe { key.as_ref() }, unsafe { entry.as_ref() }) else {
        return 0;
    };
    let victim = |b: &ReplyBucket| conn_table::reply_victim(b, entry.last_seen);
    slots::write_over(&NAT_REPLY_INDEX, key, place(key), mark, entry, victim) as u32
}

/// Forgets a NAT flow's reply (a RST ended it).
#[inline(always)]
pub fn forget(reply: &FlowKey) {
    let _ = xdplb_reply_forget(reply);
}

/// [`forget`]'s work, 1 if there was a reply to forget. A global function (see build.rs): the
/// RST's path is rare, and inlined, its hash took xdplb past the verifier's stack limit.
#[no_mangle]
#[inline(never)]
pub extern "C" fn xdplb_reply_forget(reply: *const FlowKey) -> u32 {
    // SAFETY: as in `xdplb_reply_write`.
    let Some(reply) = (unsafe { reply.as_ref() }) else {
        return 0;
    };
    match slots::find(&NAT_REPLY_INDEX, reply, place(reply)) {
        Some(slot) => {
            // SAFETY: a store into the map's value.
            unsafe { core::ptr::write_volatile(&raw mut (*slot).tag, EMPTY) };
            1
        }
        None => 0,
    }
}

/// The sum of the 16-bit words of an address and a port, for the incremental checksums.
#[inline(always)]
fn words(addr: &[u8], port: u16) -> u32 {
    csum::sum(addr) + port as u32
}

/// Rewrites one end of the packet: its destination (`to_dst`, a request) or its source (a reply)
/// becomes `addr`:`port`, with the checksums, and the TTL goes down by one. Err if the TTL has
/// run out (the kernel answers it) or the frame is too short (the caller checked it whole).
// The headers are copied out, changed and written back whole: one bounds check each, which the
// verifier follows where separate pointers into them it does not.
#[inline(always)]
pub fn rewrite(
    ctx: &XdpContext,
    pkt: &Packet,
    to_dst: bool,
    addr: [u8; 4],
    port: u16,
) -> Result<(), Reason> {
    let (addr_off, port_off, old_addr, old_port) = if to_dst {
        (IP_DST, 2, pkt.dst, pkt.dport)
    } else {
        (IP_SRC, 0, pkt.src, pkt.sport)
    };
    forward_ip(ctx, pkt.l3_off, addr_off, old_addr, addr)?;
    let (old, new) = (words(&old_addr, old_port), words(&addr, port));
    rewrite_port(ctx, pkt.proto, pkt.l4_off, port_off, old, new, port)
}

/// [`rewrite`] for an IPv6 packet: the address in the fixed header (the pseudo-header's, so
/// the TCP/UDP checksum follows it), the port, and the hop limit one less (IPv6 has no header
/// checksum).
#[inline(always)]
pub fn rewrite6(
    ctx: &XdpContext,
    pkt: &Packet6,
    to_dst: bool,
    addr: Addr,
    port: u16,
) -> Result<(), Reason> {
    let (addr_off, port_off, old_addr, old_port) = if to_dst {
        (IP6_DST, 2, pkt.dst, pkt.dport)
    } else {
        (IP6_SRC, 0, pkt.src, pkt.sport)
    };
    forward_ip6(ctx, pkt.l3_off, addr_off, &addr)?;
    let (old, new) = (words(&old_addr, old_port), words(&addr, port));
    rewrite_port(ctx, pkt.proto, pkt.l4_off, port_off, old, new, port)
}

/// The IPv6 header at `l3_off` as a router forwards it with the address at `addr_off` now
/// `addr`: the hop limit one less. Err if it has run out (the kernel answers it) or the frame
/// is too short. In place, field by field, not copied whole: the NAT programs' stacks have no
/// room for the header.
#[inline(always)]
fn forward_ip6(
    ctx: &XdpContext,
    l3_off: usize,
    addr_off: usize,
    addr: &Addr,
) -> Result<(), Reason> {
    let (Some(hop_at), Some(addr_at)) = (
        ptr_at::<[u8; 2]>(ctx, l3_off + IP6_HOP_LIMIT - 1),
        ptr_at::<Addr>(ctx, l3_off + addr_off),
    ) else {
        return Err(Reason::DropMalformed);
    };
    // SAFETY: bounds-checked by ptr_at; unaligned-safe.
    let [next, hops] = unsafe { crate::frame::load(hop_at) };
    if hops <= 1 {
        return Err(Reason::PassTtl);
    }
    // SAFETY: as above.
    unsafe {
        crate::frame::store(hop_at, [next, hops - 1]);
        crate::frame::store(addr_at, *addr);
    }
    Ok(())
}

/// Offsets of the hop limit and the addresses in the IPv6 header.
const IP6_HOP_LIMIT: usize = 7;
const IP6_SRC: usize = 8;
const IP6_DST: usize = 24;

/// The transport half of a rewrite: the port, and the checksum for the port and the
/// pseudo-header's address (words summing to `old` now summing to `new`).
#[inline(always)]
fn rewrite_port(
    ctx: &XdpContext,
    proto: u8,
    l4_off: usize,
    port_off: usize,
    old: u32,
    new: u32,
    port: u16,
) -> Result<(), Reason> {
    if proto == IPPROTO_TCP {
        transport::<TCP_CSUM_END>(ctx, l4_off, port_off, false, old, new, port)
    } else {
        transport::<UDP_HLEN>(ctx, l4_off, port_off, true, old, new, port)
    }
}

/// The IPv4 header at `l3_off` as a router forwards it with one of its addresses (at
/// `addr_off`, now `old`) changed to `addr`: TTL one less, checksum updated. Err if the TTL has
/// run out (the kernel answers it) or the frame is too short.
#[inline(always)]
fn forward_ip(
    ctx: &XdpContext,
    l3_off: usize,
    addr_off: usize,
    old: [u8; 4],
    addr: [u8; 4],
) -> Result<(), Reason> {
    let ip_at = ptr_at::<[u8; 20]>(ctx, l3_off).ok_or(Reason::DropMalformed)?;
    // SAFETY: bounds-checked by ptr_at; unaligned-safe.
    let mut ip = unsafe { crate::frame::load(ip_at) };
    let ttl = ip[IP_TTL];
    if ttl <= 1 {
        return Err(Reason::PassTtl);
    }
    // The TTL is the high byte of its 16-bit word; the protocol beside it does not change.
    let check = csum::update(
        u16::from_be_bytes([ip[IP_CSUM], ip[IP_CSUM + 1]]),
        csum::sum(&old) + ((ttl as u32) << 8),
        csum::sum(&addr) + (((ttl - 1) as u32) << 8),
    );
    ip[IP_TTL] = ttl - 1;
    ip[IP_CSUM..IP_CSUM + 2].copy_from_slice(&check.to_be_bytes());
    ip[addr_off..addr_off + 4].copy_from_slice(&addr);
    // SAFETY: as above.
    unsafe { ip_at.write_unaligned(ip) };
    Ok(())
}

/// Where the TCP checksum ends (it is at 16) and the UDP header's length (checksum at 6).
const TCP_CSUM_END: usize = 18;
const UDP_HLEN: usize = 8;

/// Writes the port at `port_off` of the transport header (the first `N` bytes, ending with its
/// checksum) and updates the checksum for the port and the pseudo-header's address.
#[inline(always)]
fn transport<const N: usize>(
    ctx: &XdpContext,
    l4_off: usize,
    port_off: usize,
    udp: bool,
    old: u32,
    new: u32,
    port: u16,
) -> Result<(), Reason> {
    let at = ptr_at::<[u8; N]>(ctx, l4_off).ok_or(Reason::DropMalformed)?;
    // SAFETY: bounds-checked by ptr_at; unaligned-safe.
    let mut h = unsafe { crate::frame::load(at) };
    h[port_off..port_off + 2].copy_from_slice(&port.to_be_bytes());
    let check = u16::from_be_bytes([h[N - 2], h[N - 1]]);
    h[N - 2..].copy_from_slice(&l4_check(check, udp, old, new).to_be_bytes());
    // SAFETY: as above.
    unsafe { at.write_unaligned(h) };
    Ok(())
}

/// A TCP/UDP checksum after words summing to `old` became words summing to `new`. A UDP
/// checksum of 0 means "none": it stays none, and a computed 0 is sent as 0xffff.
#[inline(always)]
fn l4_check(check: u16, udp: bool, old: u32, new: u32) -> u16 {
    if udp && check == 0 {
        return 0;
    }
    match csum::update(check, old, new) {
        0 if udp => 0xffff,
        check => check,
    }
}

//! Where a frame leaves: back out of the interface it came in on (XDP_TX), or out of another
//! interface the director is attached to (XDP_REDIRECT through a device map), with that
//! interface's MAC as its source. The interface toward a real server is the agent's to find (from
//! the kernel's routes, like its MAC); toward a client of a NAT reply, the kernel's FIB lookup
//! finds the next hop, and a next hop without a neighbour entry is left for the agent to resolve.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams,
        xdp_action::{XDP_ABORTED, XDP_TX},
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::bpf_fib_lookup,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap},
    programs::XdpContext,
};
use lb_common::{
    addr_from_v4, is_v4, Addr, Iface, NeighMiss, RealEgress, RealServer, MAX_IFACES, MAX_REALS,
};

use crate::ether::{self, Mac};

/// The interfaces the director is attached to, by ifindex.
#[map]
static IFACES: HashMap<u32, Iface> = HashMap::with_max_entries(MAX_IFACES, 0);

/// The same interfaces, as redirect targets.
#[map]
static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_IFACES, 0);

/// Each real server's egress interface (0: the ingress one) and NAT port, by real-server id.
#[map]
static REAL_EGRESS: Array<RealEgress> = Array::with_max_entries(MAX_REALS, 0);

/// Next hops (address, interface) a NAT reply found no neighbour entry for; the agent reads,
/// resolves and removes them.
#[map]
static NEIGH_MISSES: LruHashMap<NeighMiss, u8> = LruHashMap::with_max_entries(256, 0);

/// A next hop: the interface to send from ([`SAME_IFACE`]: the one the frame came in on), and
/// the frame's Ethernet addresses.
pub struct Hop {
    pub ifindex: u32,
    pub dst_mac: Mac,
    pub src_mac: Mac,
}

/// [`Hop::ifindex`] of a frame that leaves where it came in: no interface has index 0, and
/// [`send`] need not read the context's ingress interface again (three dependent loads).
pub const SAME_IFACE: u32 = 0;

/// The interface the packet arrived on, as the director knows it (None: not one it set up,
/// such as a test run without IFACES).
#[inline(always)]
pub fn ingress(ctx: &XdpContext) -> Option<&'static Iface> {
    // SAFETY: reads a field of the context the kernel gave the program.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    // SAFETY: a shared reference into a map value that is only written by user space.
    unsafe { IFACES.get(ifindex) }
}

/// A real server's egress interface and NAT port.
#[inline(always)]
pub fn real_egress(id: u32) -> RealEgress {
    REAL_EGRESS.get(id).copied().unwrap_or_default()
}

/// The next hop toward a real server: its MAC (or its router's) on `egress` (0: the ingress
/// interface). The frame leaves from the director's MAC on that link: `here`, the MAC the frame
/// was sent to, when it leaves where it came in (no lookup on the common path), else the egress
/// interface's.
#[inline(always)]
pub fn toward(ctx: &XdpContext, here: Mac, real: &RealServer, egress: u32) -> Hop {
    let mac = ether::real_mac(real);
    // SAFETY: as in `ingress`.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    if egress == 0 || egress == ingress {
        return Hop {
            ifindex: SAME_IFACE,
            dst_mac: mac,
            src_mac: here,
        };
    }
    // SAFETY: as in `ingress`.
    let src_mac = match unsafe { IFACES.get(egress) } {
        Some(i) => ether::mac(i.mac),
        None => here,
    };
    Hop {
        ifindex: egress,
        dst_mac: mac,
        src_mac,
    }
}

/// Why a client's next hop is not known yet.
pub enum NoHop {
    /// No route (or one the director does not send out of): the kernel's business.
    NoRoute,
    /// A route, but no neighbour entry for its next hop: recorded for the agent.
    NoNeigh,
}

/// The kernel's next hop for `dst` (from `src`), by its FIB; either family (IPv4 addresses in
/// their mapped form). `tot_len` is the packet's length from its IP header. A next hop whose
/// neighbour entry is missing is recorded in NEIGH_MISSES, so the agent has the kernel resolve
/// it.
#[inline(always)]
pub fn fib(ctx: &XdpContext, src: &Addr, dst: &Addr, tot_len: u16) -> Result<Hop, NoHop> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid input; the fields are set below.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    // SAFETY: as in `ingress`.
    p.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    p.__bindgen_anon_1.tot_len = tot_len;
    let v4 = is_v4(dst);
    if v4 {
        p.family = 2; // AF_INET
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([src[12], src[13], src[14], src[15]]);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([dst[12], dst[13], dst[14], dst[15]]);
    } else {
        p.family = 10; // AF_INET6
        p.__bindgen_anon_3.ipv6_src = words(src);
        p.__bindgen_anon_4.ipv6_dst = words(dst);
    }
    // SAFETY: the helper reads and writes `p`, whose size it is given.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut p,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        // SAFETY: after the lookup the union holds the next hop's address, of the family.
        let addr = if v4 {
            addr_from_v4(unsafe { p.__bindgen_anon_4.ipv4_dst }.to_ne_bytes())
        } else {
            let w = unsafe { p.__bindgen_anon_4.ipv6_dst };
            let mut a = [0u8; 16];
            let mut i = 0;
            while i < 4 {
                a[i * 4..i * 4 + 4].copy_from_slice(&w[i].to_ne_bytes());
                i += 1;
            }
            a
        };
        let miss = NeighMiss {
            addr,
            ifindex: p.ifindex,
        };
        let _ = NEIGH_MISSES.insert(miss, 0, 0);
        return Err(NoHop::NoNeigh);
    }
    // SAFETY: as in `ingress`.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    // Out of an interface the director sends from: the ingress one, or one in TX_PORTS.
    // SAFETY: as in `ingress`.
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64
        || (p.ifindex != ingress && unsafe { IFACES.get(p.ifindex) }.is_none())
    {
        return Err(NoHop::NoRoute);
    }
    Ok(Hop {
        ifindex: p.ifindex,
        dst_mac: ether::mac(p.dmac),
        src_mac: ether::mac(p.smac),
    })
}

/// An IPv6 address as the FIB lookup's four words, in network order.
#[inline(always)]
fn words(a: &Addr) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// Addresses the frame to `hop` and sends it: back out of the ingress interface, or redirected
/// to another one.
#[inline(always)]
pub fn send(ctx: &XdpContext, hop: &Hop) -> u32 {
    if !ether::write_macs(ctx, hop.dst_mac, hop.src_mac) {
        return XDP_ABORTED;
    }
    // SAFETY: as in `ingress`.
    if hop.ifindex == SAME_IFACE || hop.ifindex == unsafe { (*ctx.ctx).ingress_ifindex } {
        return XDP_TX;
    }
    TX_PORTS.redirect(hop.ifindex, 0).unwrap_or(XDP_ABORTED)
}

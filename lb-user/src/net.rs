//! Netlink queries the agent needs for LVS direct routing: which interface it works on, and the MAC
//! address of each real server on that interface (DR frames are rewritten to that MAC and sent
//! straight to it, so the real server must be a neighbour, not something behind a router).
//!
//! Every call opens its own rtnetlink socket, in the network namespace of the calling thread.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use futures_util::{Stream, StreamExt, TryStreamExt};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteType, RouteVia,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::Handle;

/// A network interface of the director.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// How often the neighbour table is read while ARP is in flight, and for how long.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Neighbour states whose link-layer address the kernel itself would transmit to (its NUD_VALID).
const NUD_USABLE: u16 = 0x02 /* REACHABLE */
    | 0x04 /* STALE */
    | 0x08 /* DELAY */
    | 0x10 /* PROBE */
    | 0x40 /* NOARP */
    | 0x80 /* PERMANENT */;

/// Looks up an interface by name in the current network namespace. Error: "unknown interface 'NAME'".
pub async fn interface(name: &str) -> Result<Interface> {
    // The kernel answers EINVAL rather than ENODEV for names it could never hold; same thing to a user.
    if name.is_empty()
        || name.len() >= libc::IFNAMSIZ
        || name.contains(['/', '\0'])
        || name.contains(char::is_whitespace)
    {
        bail!("unknown interface '{name}'");
    }
    let nl = Netlink::open()?;
    let link = match nl
        .handle
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_next()
        .await
    {
        Ok(Some(link)) => link,
        Ok(None) => bail!("unknown interface '{name}'"),
        Err(e) if matches!(errno(&e), Some(libc::ENODEV | libc::EINVAL)) => {
            bail!("unknown interface '{name}'")
        }
        Err(e) => bail!("cannot look up interface '{name}': {}", reason(&e)),
    };
    let mut iface = Interface {
        index: link.header.index,
        name: name.to_owned(),
        mac: [0; 6],
        mtu: 1500,
    };
    let mut mac = None;
    for attr in link.attributes {
        match attr {
            // Canonical name, in case `name` was an alternative name.
            LinkAttribute::IfName(n) => iface.name = n,
            LinkAttribute::Address(a) => mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
            LinkAttribute::Mtu(m) => iface.mtu = m,
            _ => {}
        }
    }
    iface.mac = mac.ok_or_else(|| anyhow!("interface '{name}' has no Ethernet MAC address"))?;
    Ok(iface)
}

/// The MAC of real server `rip` as seen from interface `iface`, for LVS/DR (frames go straight to it).
///
/// The route to `rip` must leave through `iface` without a gateway. The neighbour table is consulted
/// first; if it has no usable entry the kernel is asked to resolve the address (ARP) and the table is
/// polled for up to 3 s.
pub async fn resolve_real_mac(iface: &Interface, rip: IpAddr) -> Result<[u8; 6]> {
    Ok(real_neighbour(std::slice::from_ref(iface), rip).await?.0)
}

/// [`resolve_real_mac`] on whichever of the director's interfaces `rip` is on-link on: its MAC
/// and that interface's index.
pub async fn real_neighbour(ifaces: &[Interface], rip: IpAddr) -> Result<([u8; 6], u32)> {
    let nl = Netlink::open()?;
    let iface = check_on_link(&nl, ifaces, rip).await?;
    let mac = resolve_neighbour(&nl, iface, rip)
        .await?
        .ok_or_else(|| anyhow!("cannot resolve the MAC address of real server {rip} on {} (no {} reply); give it with --mac", iface.name, resolution(rip)))?;
    Ok((mac, iface.index))
}

/// The MAC of the next hop toward real server `rip`, for LVS/TUN and LVS/NAT (frames go to the
/// router on the way, or to the real server itself when it is on-link), and the index of the
/// director's interface it is reached through. The route must leave through one of `ifaces`:
/// the datapath sends only out of the interfaces it is attached to.
pub async fn next_hop(ifaces: &[Interface], rip: IpAddr) -> Result<([u8; 6], u32)> {
    next_hop_through(ifaces, rip, "real server ").await
}

/// The MAC of the next hop toward `dst`, through `iface` only; errors name it `what` followed by
/// its address (`what` = "real server " for the agent, "" for a plain destination).
pub async fn next_hop_mac(iface: &Interface, dst: Ipv4Addr, what: &str) -> Result<[u8; 6]> {
    Ok(
        next_hop_through(std::slice::from_ref(iface), dst.into(), what)
            .await?
            .0,
    )
}

/// The interface (of `ifaces`) the kernel's route toward real server `rip` leaves through.
pub async fn egress(ifaces: &[Interface], rip: IpAddr) -> Result<u32> {
    let nl = Netlink::open()?;
    let route = route_to(&nl, rip, "real server ").await?;
    Ok(director_iface(&nl, ifaces, &route, rip, "real server ")
        .await?
        .index)
}

/// Which of `ifaces` a route leaves through; an error naming the other interface otherwise.
async fn director_iface<'a>(
    nl: &Netlink,
    ifaces: &'a [Interface],
    route: &Route,
    dst: impl std::fmt::Display,
    what: &str,
) -> Result<&'a Interface> {
    if let Some(i) = ifaces.iter().find(|i| Some(i.index) == route.oif) {
        return Ok(i);
    }
    let other = match route.oif {
        Some(i) => nl.link_name(i).await,
        None => "an unknown interface".to_owned(),
    };
    bail!(
        "{what}{dst} is reached through interface {other}; xdplb sends only out of {}",
        names(ifaces)
    )
}

/// "eth0" or "eth0, eth1": the interfaces for a message.
fn names(ifaces: &[Interface]) -> String {
    let names: Vec<&str> = ifaces.iter().map(|i| i.name.as_str()).collect();
    names.join(", ")
}

async fn next_hop_through(ifaces: &[Interface], dst: IpAddr, what: &str) -> Result<([u8; 6], u32)> {
    let nl = Netlink::open()?;
    let route = route_to(&nl, dst, what).await?;
    let iface = director_iface(&nl, ifaces, &route, dst, what).await?;
    let hop = match (route.gateway, dst) {
        (None, _) => dst,
        (Some(g), _) if g.is_ipv4() == dst.is_ipv4() => g,
        (Some(g), _) => {
            bail!("{what}{dst} is routed via {g}, of the other address family, which its tunnel cannot use")
        }
    };
    let mac = resolve_neighbour(&nl, iface, hop).await?.ok_or_else(|| {
        anyhow!(
            "cannot resolve the MAC address of {hop}, the next hop toward {what}{dst}, on {} (no {} reply); give it with --mac",
            iface.name,
            resolution(hop)
        )
    })?;
    Ok((mac, iface.index))
}

/// Has the kernel resolve neighbour `ip` on `iface` (ARP), without waiting for the answer: an
/// LVS/NAT reply found no entry for its next hop, and the next one will.
pub async fn resolve_later(iface: &Interface, ip: IpAddr) -> Result<()> {
    let nl = Netlink::open()?;
    start_resolution(&nl, iface, ip).await
}

/// Whether the kernel forwards packets of the family (`v6`) that arrive on `iface`: the XDP FIB
/// lookup LVS/NAT replies are routed with honours the same setting (for IPv6, the `all` one).
pub fn forwarding(iface: &Interface, v6: bool) -> bool {
    let path = match v6 {
        true => "/proc/sys/net/ipv6/conf/all/forwarding".to_owned(),
        false => format!("/proc/sys/net/ipv4/conf/{}/forwarding", iface.name),
    };
    std::fs::read_to_string(path).is_ok_and(|s| s.trim() == "1")
}

/// The usable link-layer address of neighbour `ip`: from the table, or after asking the kernel
/// to resolve it (ARP, or IPv6 neighbour discovery) and polling the table for up to 3 s. None
/// when nobody answers.
async fn resolve_neighbour(nl: &Netlink, iface: &Interface, ip: IpAddr) -> Result<Option<[u8; 6]>> {
    if let Some(entry) = nl.neighbour(iface.index, ip).await? {
        if let Some(mac) = usable_mac(&entry) {
            return Ok(Some(mac));
        }
    }
    start_resolution(nl, iface, ip).await?;
    let deadline = tokio::time::Instant::now() + RESOLVE_TIMEOUT;
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        if let Some(entry) = nl.neighbour(iface.index, ip).await? {
            if let Some(mac) = usable_mac(&entry) {
                return Ok(Some(mac));
            }
            // Resolution was (re)started above, so FAILED now means the kernel gave up on this round.
            if entry.header.state == NeighbourState::Failed {
                return Ok(None);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
    }
}

/// What the kernel's route lookup says about a destination.
struct Route {
    oif: Option<u32>,
    gateway: Option<IpAddr>,
}

/// Like `ip route get RIP`: unicast routes only; errors name the address `what` + `rip`.
async fn route_to(nl: &Netlink, rip: IpAddr, what: &str) -> Result<Route> {
    let mut query = RouteMessage::default();
    let (family, length, destination) = match rip {
        IpAddr::V4(a) => (AddressFamily::Inet, 32, RouteAddress::Inet(a)),
        IpAddr::V6(a) => (AddressFamily::Inet6, 128, RouteAddress::Inet6(a)),
    };
    query.header.address_family = family;
    query.header.destination_prefix_length = length;
    query
        .attributes
        .push(RouteAttribute::Destination(destination));
    // No RTA_OIF in the query: with one, the kernel assumes on-link when no route matches.
    let route = match nl.handle.route().get(query).execute().try_next().await {
        Ok(Some(route)) => route,
        Ok(None) => bail!("no route to {what}{rip}"),
        Err(e) if matches!(errno(&e), Some(libc::ENETUNREACH | libc::EHOSTUNREACH)) => {
            bail!("no route to {what}{rip}")
        }
        // Blackhole (EINVAL) and prohibit (EACCES) routes, among others.
        Err(e) => bail!("no route to {what}{rip} (route lookup: {})", reason(&e)),
    };
    match route.header.kind {
        RouteType::Unicast => {}
        RouteType::Local => bail!("{what}{rip} is an address of this director"),
        RouteType::Broadcast => bail!("{what}{rip} is a broadcast address"),
        RouteType::Multicast => bail!("{what}{rip} is a multicast address"),
        _ => bail!("no route to {what}{rip}"),
    }
    let mut found = Route {
        oif: None,
        gateway: None,
    };
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Oif(i) => found.oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => found.gateway = Some(IpAddr::V4(*g)),
            RouteAttribute::Gateway(RouteAddress::Inet6(g))
            | RouteAttribute::Via(RouteVia::Inet6(g)) => found.gateway = Some(IpAddr::V6(*g)),
            RouteAttribute::Via(RouteVia::Inet(g)) => found.gateway = Some(IpAddr::V4(*g)),
            _ => {}
        }
    }
    found.gateway = found.gateway.filter(|g| *g != rip);
    Ok(found)
}

/// DR only works if the real server is reachable on one of `ifaces` without a router: that one.
async fn check_on_link<'a>(
    nl: &Netlink,
    ifaces: &'a [Interface],
    rip: IpAddr,
) -> Result<&'a Interface> {
    let route = route_to(nl, rip, "real server ").await?;
    let iface = ifaces.iter().find(|i| Some(i.index) == route.oif);
    let other_if = match (iface, route.oif) {
        (Some(_), _) => None,
        (None, Some(i)) => Some(nl.link_name(i).await),
        (None, None) => Some("an unknown interface".to_owned()),
    };
    let detail = match (route.gateway, other_if) {
        (None, None) => return Ok(iface.expect("found")),
        (Some(g), None) => format!("routed via {g}"),
        (None, Some(i)) => format!("reached through interface {i}"),
        (Some(g), Some(i)) => format!("routed via {g} through interface {i}"),
    };
    bail!(
        "real server {rip} is not on-link on {} ({detail}); direct routing needs the real server on the director's LAN",
        names(ifaces)
    )
}

/// The addresses of interface `ifindex` (or of every interface), both families, in
/// address-dump order, each once.
async fn addresses(ifindex: Option<u32>) -> Result<Vec<IpAddr>> {
    let nl = Netlink::open()?;
    let mut req = nl.handle.address().get();
    if let Some(i) = ifindex {
        req = req.set_link_index_filter(i);
    }
    let mut dump = req.execute();
    let mut found = Vec::new();
    while let Some(msg) = dump
        .try_next()
        .await
        .map_err(|e| anyhow!("cannot list addresses: {}", reason(&e)))?
    {
        for attr in msg.attributes {
            if let AddressAttribute::Local(a) | AddressAttribute::Address(a) = attr {
                if !found.contains(&a) {
                    found.push(a);
                }
            }
        }
    }
    Ok(found)
}

/// The global IPv6 addresses of interface `ifindex` (or of every interface), in address-dump
/// order (link-local ones cannot be a tunnel's source toward another network).
pub async fn ipv6_global_addresses(ifindex: Option<u32>) -> Result<Vec<Ipv6Addr>> {
    Ok(addresses(ifindex)
        .await?
        .into_iter()
        .filter_map(|a| match a {
            IpAddr::V6(a) if a.segments()[0] & 0xffc0 != 0xfe80 && !a.is_loopback() => Some(a),
            _ => None,
        })
        .collect())
}

/// The IPv4 addresses of the host (every interface), in address-dump order.
pub async fn ipv4_addresses(ifindex: Option<u32>) -> Result<Vec<Ipv4Addr>> {
    Ok(addresses(ifindex)
        .await?
        .into_iter()
        .filter_map(|a| match a {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        })
        .collect())
}

/// "ARP" or "neighbour discovery": how the kernel resolves `ip`, for messages.
fn resolution(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "ARP"
    } else {
        "neighbour discovery"
    }
}

/// Starts resolving `rip` on `iface` (ARP, or neighbour discovery), as the kernel does for any
/// next hop it must transmit to.
async fn start_resolution(nl: &Netlink, iface: &Interface, rip: IpAddr) -> Result<()> {
    // RTM_NEWNEIGH with NTF_USE: neigh_add() creates the entry if needed and calls neigh_event_send(),
    // which sends the ARP request, without touching an entry's address or state otherwise.
    let by_netlink = nl
        .handle
        .neighbours()
        .add(iface.index, rip)
        .replace()
        .state(NeighbourState::None)
        .flags(NeighbourFlags::Use)
        .execute()
        .await;
    let Err(nl_err) = by_netlink else {
        return Ok(());
    };
    // Kernels or sandboxes that refuse it: a datagram towards the real server makes the kernel resolve
    // it too (port 9 is discard; the datagram itself is irrelevant).
    match poke_udp(iface, rip).await {
        Ok(()) => Ok(()),
        Err(e) => bail!(
            "cannot start {} of real server {rip} on {} (netlink: {}; UDP: {e}); give its MAC with --mac",
            resolution(rip),
            iface.name,
            reason(&nl_err)
        ),
    }
}

async fn poke_udp(iface: &Interface, rip: IpAddr) -> io::Result<()> {
    let any: IpAddr = match rip {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let sock = tokio::net::UdpSocket::bind((any, 0)).await?;
    sock.bind_device(Some(iface.name.as_bytes()))?;
    sock.send_to(&[], (rip, 9)).await?;
    Ok(())
}

/// The entry's MAC if the kernel itself would use it.
fn usable_mac(entry: &NeighbourMessage) -> Option<[u8; 6]> {
    if u16::from(entry.header.state) & NUD_USABLE == 0 {
        return None;
    }
    entry.attributes.iter().find_map(|attr| match attr {
        NeighbourAttribute::LinkLayerAddress(a) => <[u8; 6]>::try_from(a.as_slice())
            .ok()
            .filter(|mac| *mac != [0; 6]),
        _ => None,
    })
}

/// An rtnetlink connection whose background task ends with it.
struct Netlink {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Netlink {
    fn open() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| anyhow!("cannot open a netlink socket: {e}"))?;
        Ok(Netlink {
            handle,
            task: tokio::spawn(conn),
        })
    }

    /// The neighbour entry for (`ifindex`, `ip`), if any: a single RTM_GETNEIGH, not a table dump.
    async fn neighbour(&self, ifindex: u32, ip: IpAddr) -> Result<Option<NeighbourMessage>> {
        let mut query = NeighbourMessage::default();
        let (family, destination) = match ip {
            IpAddr::V4(a) => (AddressFamily::Inet, NeighbourAddress::Inet(a)),
            IpAddr::V6(a) => (AddressFamily::Inet6, NeighbourAddress::Inet6(a)),
        };
        query.header.family = family;
        query.header.ifindex = ifindex;
        query
            .attributes
            .push(NeighbourAttribute::Destination(destination));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNeighbour(query));
        req.header.flags = NLM_F_REQUEST;
        let mut replies = self.request(req)?;
        while let Some(reply) = replies.next().await {
            match reply.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(entry)) => {
                    return Ok(Some(entry))
                }
                NetlinkPayload::Error(e) if -e.raw_code() == libc::ENOENT => return Ok(None),
                NetlinkPayload::Error(e) => {
                    bail!("cannot read the neighbour table entry of {ip}: {e}")
                }
                _ => {}
            }
        }
        Ok(None)
    }

    fn request(
        &self,
        req: NetlinkMessage<RouteNetlinkMessage>,
    ) -> Result<impl Stream<Item = NetlinkMessage<RouteNetlinkMessage>>> {
        self.handle
            .clone()
            .request(req)
            .map_err(|e| anyhow!("netlink request failed: {}", reason(&e)))
    }

    /// A name to show for interface `index`; falls back to the number.
    async fn link_name(&self, index: u32) -> String {
        let link = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await;
        link.ok()
            .flatten()
            .and_then(|l| {
                l.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n),
                    _ => None,
                })
            })
            .unwrap_or_else(|| format!("#{index}"))
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// One line describing a netlink failure (the kernel's errno text where there is one).
fn reason(e: &rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
        other => other.to_string(),
    }
}

/// What the agent follows of its interface: whether it carries traffic, whether an XDP program
/// is attached, and the MAC addresses of the devices stacked on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkState {
    /// Administratively up with carrier (what `ip link` shows as LOWER_UP).
    pub up: bool,
    /// The kernel's count of carrier changes: a different count means the link went down and up
    /// in between, however briefly.
    pub carrier_changes: u32,
    /// Whether an XDP program is attached (any mode).
    pub xdp_attached: bool,
    /// The kernel's id of the attached XDP program.
    pub program_id: Option<u32>,
    /// MAC addresses, other than the interface's own, of devices stacked on it (macvlan, such as
    /// keepalived's `use_vmac`) that are up, each with whether it holds an IPv4 address (a VRRP
    /// master's virtual MAC does, a backup's does not).
    pub stacked_macs: Vec<([u8; 6], bool)>,
}

/// The current [`LinkState`] of `iface`.
pub async fn link_state(iface: &Interface) -> Result<LinkState> {
    use rtnetlink::packet_route::link::{LinkFlags, LinkXdp, XdpAttached};
    let nl = Netlink::open()?;
    let mut dump = nl.handle.link().get().execute();
    let mut state = LinkState::default();
    let mut found = false;
    let mut stacked = Vec::new();
    while let Some(link) = dump
        .try_next()
        .await
        .map_err(|e| anyhow!("cannot list interfaces: {}", reason(&e)))?
    {
        let flags = link.header.flags;
        let up = flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp);
        if link.header.index == iface.index {
            found = true;
            state.up = up;
            for attr in &link.attributes {
                match attr {
                    LinkAttribute::CarrierChanges(n) => state.carrier_changes = *n,
                    LinkAttribute::Xdp(xdp) => {
                        state.xdp_attached = xdp
                            .iter()
                            .any(|x| matches!(x, LinkXdp::Attached(a) if *a != XdpAttached::None));
                        state.program_id = xdp.iter().find_map(|x| match x {
                            LinkXdp::ProgId(id) if *id != 0 => Some(*id),
                            _ => None,
                        });
                    }
                    _ => {}
                }
            }
            continue;
        }
        let lower = link
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::Link(l) if *l == iface.index));
        if !lower || !flags.contains(LinkFlags::Up) {
            continue;
        }
        let mac = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(m) => <[u8; 6]>::try_from(m.as_slice()).ok(),
            _ => None,
        });
        if let Some(mac) = mac.filter(|m| *m != iface.mac && !stacked.iter().any(|(_, s)| s == m)) {
            stacked.push((link.header.index, mac));
        }
    }
    if !found {
        bail!("interface {} is gone", iface.name);
    }
    for (index, mac) in stacked {
        let active = !ipv4_addresses(Some(index)).await?.is_empty();
        state.stacked_macs.push((mac, active));
    }
    Ok(state)
}

/// A stream that yields whenever an interface or an IPv4 address of this network namespace
/// changes (netlink's link and address groups, as `ip monitor` listens): the agent then looks
/// again at its interface without polling.
pub fn watch_links() -> Result<impl Stream<Item = ()> + Unpin> {
    use rtnetlink::MulticastGroup;
    let (conn, _handle, messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link, MulticastGroup::Ipv4Ifaddr])
            .map_err(|e| anyhow!("cannot listen for interface changes: {e}"))?;
    let task = tokio::spawn(conn);
    // The connection task lives as long as the stream.
    Ok(Box::pin(futures_util::stream::unfold(
        (messages, task),
        |(mut messages, task)| async move {
            use futures_util::StreamExt as _;
            messages.next().await.map(|_| ((), (messages, task)))
        },
    )))
}

/// Routes of one kernel table as a routing daemon learns them to announce a VIP: one
/// `blackhole VIP/32 proto static` route per announced VIP (BIRD's kernel protocol with
/// `learn`, FRR's `redistribute table`). The table is never consulted for forwarding unless a
/// rule points at it; only the routing daemon reads it.
pub mod announce_routes {
    use super::*;
    use rtnetlink::packet_route::route::RouteProtocol;
    use rtnetlink::RouteMessageBuilder;

    /// The host route (/32, /128) of `vip` in `table`: a blackhole of protocol static, which
    /// the routing daemon learns; the datapath takes the VIP's packets before any route.
    fn message(table: u32, vip: IpAddr) -> RouteMessage {
        match vip {
            IpAddr::V4(v4) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(v4, 32)
                .table_id(table)
                .kind(RouteType::BlackHole)
                .protocol(RouteProtocol::Static)
                .build(),
            IpAddr::V6(v6) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(v6, 128)
                .table_id(table)
                .kind(RouteType::BlackHole)
                .protocol(RouteProtocol::Static)
                .build(),
        }
    }

    /// The VIPs announced in `table`: its blackhole host routes (/32, /128) of protocol static.
    pub async fn list(table: u32) -> Result<Vec<IpAddr>> {
        let nl = Netlink::open()?;
        let queries = [
            RouteMessageBuilder::<Ipv4Addr>::new()
                .table_id(table)
                .build(),
            RouteMessageBuilder::<Ipv6Addr>::new()
                .table_id(table)
                .build(),
        ];
        let mut vips = Vec::new();
        for query in queries {
            let mut dump = nl.handle.route().get(query).execute();
            while let Some(route) = dump
                .try_next()
                .await
                .map_err(|e| anyhow!("cannot list routing table {table}: {}", reason(&e)))?
            {
                let in_table = route.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                });
                let in_table = in_table.unwrap_or(route.header.table as u32);
                if in_table != table
                    || route.header.kind != RouteType::BlackHole
                    || route.header.protocol != RouteProtocol::Static
                {
                    continue;
                }
                let host = |len: u8| route.header.destination_prefix_length == len;
                for a in &route.attributes {
                    match a {
                        RouteAttribute::Destination(RouteAddress::Inet(v)) if host(32) => {
                            vips.push((*v).into())
                        }
                        RouteAttribute::Destination(RouteAddress::Inet6(v)) if host(128) => {
                            vips.push((*v).into())
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(vips)
    }

    pub async fn add(table: u32, vip: IpAddr) -> Result<()> {
        let nl = Netlink::open()?;
        nl.handle
            .route()
            .add(message(table, vip))
            .replace()
            .execute()
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot announce {vip} in routing table {table}: {}",
                    reason(&e)
                )
            })
    }

    pub async fn del(table: u32, vip: IpAddr) -> Result<()> {
        let nl = Netlink::open()?;
        match nl.handle.route().del(message(table, vip)).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(()),
            Err(e) => bail!(
                "cannot withdraw {vip} from routing table {table}: {}",
                reason(&e)
            ),
        }
    }
}

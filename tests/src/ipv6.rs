//! LVS/DR over IPv6 only (no IPv4 address on any test link): a client, a director and real
//! servers on one bridge, 2001:db8::/64.
//!
//! - director 2001:db8::1, plus the VIP 2001:db8::100/128 on its eth0, deprecated (it answers
//!   neighbour solicitations for the VIP, and never sends from it);
//! - real servers `rs1..rsN` at 2001:db8::11.., the VIP on `lo` (IPv6 answers solicitations
//!   only for the receiving interface's addresses, so they never claim it), each running
//!   `lb-testsrv` on [::]:80, answering its name;
//! - client 2001:db8::2 plus [`Dr6Topology::CLIENT_SOURCES`] source addresses 2001:db8::1:1..,
//!   TX checksum offload off;
//! - duplicate address detection off (addresses usable at once) and the XDP_PASS program the
//!   director's switch port needs.

use std::net::{Ipv6Addr, SocketAddr};

use anyhow::Result;
use lb_user::datapath::XdpPass;

use crate::netns::Proc;
use crate::topo::{start_testsrv, Serve, Switch};
use crate::{names, Netns};

pub struct Dr6Topology {
    // Drop order is field order: programs and servers before their namespaces.
    _xdp_pass: Vec<XdpPass>,
    servers: Vec<Proc>,
    client: Netns,
    directors: Vec<Netns>,
    reals: Vec<Netns>,
    _switch: Switch,
}

impl Dr6Topology {
    pub const VIP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
    pub const PORT: u16 = 80;
    pub const CLIENT_SOURCES: u16 = 40;

    pub fn new(n_reals: usize) -> Result<Self> {
        Self::build(n_reals, false, 1, Serve::Once)
    }

    /// Two directors (2001:db8::1 and 2001:db8::3, both holding the VIP, deprecated) in front
    /// of the same real servers, which run `lb-testsrv` as `serve` says: the client's neighbour
    /// entry for the VIP ([`Dr6Topology::send_vip_to`]) decides which director gets its packets.
    pub fn pair(n_reals: usize, serve: Serve) -> Result<Self> {
        Self::build(n_reals, false, 2, serve)
    }

    /// The same hosts dual-stack: IPv4 as in the LVS/DR topology besides IPv6 (director 10.0.0.1
    /// with the VIP 10.0.0.100/32, client 10.0.0.2, real servers 10.0.0.11.. with the IPv4 VIP
    /// on `lo` and the ARP sysctls); the same servers answer both families.
    pub fn dual_stack(n_reals: usize) -> Result<Self> {
        Self::build(n_reals, true, 1, Serve::Once)
    }

    fn build(n_reals: usize, ipv4: bool, n_directors: usize, serve: Serve) -> Result<Self> {
        names::cleanup_stale();
        let prefix = names::unique_prefix();
        let switch = Switch::new(format!("{prefix}-sw6"))?;
        let host = |name: &str, addr: Ipv6Addr| -> Result<Netns> {
            let ns = ipv6_host(&prefix, name)?;
            plug6(&switch, &ns, "eth0", name, &format!("{addr}/64"))?;
            Ok(ns)
        };
        let vip = format!("{}/128", Self::VIP);
        let (mut directors, mut xdp_pass) = (Vec::new(), Vec::new());
        for i in 1..=n_directors {
            let name = match i {
                1 => "director".to_owned(),
                i => format!("director{i}"),
            };
            let director = host(&name, Self::director_addr(i))?;
            hold_vip_deprecated(&director)?;
            xdp_pass.push(switch.pass_xdp(&name)?);
            directors.push(director);
        }
        if ipv4 {
            directors[0]
                .ip_batch("addr add 10.0.0.1/24 dev eth0\naddr add 10.0.0.100/32 dev eth0\n")?;
        }

        let client = host("client", Self::addr(2))?;
        if ipv4 {
            client.ip(&["addr", "add", "10.0.0.2/24", "dev", "eth0"])?;
        }
        let batch: String = Self::client_sources()
            .iter()
            .map(|a| format!("addr add {a}/64 dev eth0 nodad\n"))
            .collect();
        client.ip_batch(&batch)?;
        client.set_tx_checksum("eth0", false)?;

        let mut reals = Vec::new();
        let mut servers = Vec::new();
        for i in 1..=n_reals {
            let name = format!("rs{i}");
            let rs = host(&name, Self::real_addr(i))?;
            // nodad: an address is tentative, and refuses a bind, until the kernel's DAD work
            // runs, even on lo; a test server started right after lost that race on CI.
            rs.ip(&["-6", "addr", "add", &vip, "dev", "lo", "nodad"])?;
            if ipv4 {
                rs.ip_batch(&format!(
                    "addr add {}/24 dev eth0\naddr add 10.0.0.100/32 dev lo\n",
                    Self::real_addr4(i)
                ))?;
                for conf in ["all", "eth0"] {
                    rs.sysctl(&format!("net.ipv4.conf.{conf}.arp_ignore"), "1")?;
                    rs.sysctl(&format!("net.ipv4.conf.{conf}.arp_announce"), "2")?;
                }
            }
            let listen = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), Self::PORT);
            servers.push(start_testsrv(&rs, &name, listen, serve)?);
            reals.push(rs);
        }
        Ok(Self {
            _xdp_pass: xdp_pass,
            servers,
            client,
            directors,
            reals,
            _switch: switch,
        })
    }

    /// Director `i`'s address, counting from 1: 2001:db8::1, then ::3, ::4, ... (::2 is the
    /// client's).
    pub fn director_addr(i: usize) -> Ipv6Addr {
        Self::addr(if i == 1 { 1 } else { i as u16 + 1 })
    }

    /// Points the client's neighbour entry for the VIP at director `i`, as a takeover's
    /// unsolicited neighbour advertisement would.
    pub fn send_vip_to(&self, i: usize) -> Result<()> {
        let mac = self.director_at(i).mac("eth0")?;
        self.client.pin_neighbour(Self::VIP, &mac, "eth0")
    }

    /// 2001:db8::`n`.
    fn addr(n: u16) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n)
    }

    /// Real server `i`'s address, counting from 1: 2001:db8::11 onwards.
    pub fn real_addr(i: usize) -> Ipv6Addr {
        Self::addr(0x10 + i as u16)
    }

    /// Real server `i`'s IPv4 address in the dual-stack topology: 10.0.0.11 onwards.
    pub fn real_addr4(i: usize) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(10, 0, 0, 10 + i as u8)
    }

    pub fn client_sources() -> Vec<Ipv6Addr> {
        (1..=Self::CLIENT_SOURCES)
            .map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, i))
            .collect()
    }

    pub fn service() -> SocketAddr {
        SocketAddr::new(Self::VIP.into(), Self::PORT)
    }

    pub fn client(&self) -> &Netns {
        &self.client
    }

    pub fn director(&self) -> &Netns {
        &self.directors[0]
    }

    /// Director `i`, counting from 1.
    pub fn director_at(&self, i: usize) -> &Netns {
        &self.directors[i - 1]
    }

    pub fn reals(&self) -> &[Netns] {
        &self.reals
    }

    /// Stops real server `i`'s `lb-testsrv` (counting from 1): its port closes, the host stays.
    pub fn kill_server(&mut self, i: usize) -> std::process::ExitStatus {
        self.servers[i - 1].stop()
    }
}

/// LVS/TUN over IPv6: real servers in two other IPv6 subnets behind a router, reached through
/// IPv6-in-IPv6 tunnels, IPv6 only.
///
/// ```text
///  segment 0, 2001:db8::/64               segment 1, 2001:db8:1::/64   segment 2, 2001:db8:2::/64
///  client ::2 (+ ::1:1..), director ::1    rs1 2001:db8:1::11           rs2 2001:db8:2::12
///  (VIP ::100, deprecated, on eth0)        |                            |
///  router ::fe (eth0) -------------------- router :1::fe (eth1) ------- router :2::fe (eth2)
/// ```
///
/// The director routes the remote subnets via the router; the real servers hold the VIP on `lo`,
/// route by default via the router, run `lb-testsrv` on [::]:80 (and `--sink` on [::]:81) and
/// `xdplb decap --iface eth0` (its default VIP set: the host's global addresses). Every link has
/// the same MTU (1500): a full-sized packet no longer fits once tunnelled.
pub struct Tun6Topology {
    // Drop order is field order: programs and servers before their namespaces.
    _decaps: Vec<crate::Decap>,
    _servers: Vec<Proc>,
    _xdp_pass: XdpPass,
    client: Netns,
    director: Netns,
    _router: Netns,
    reals: Vec<Netns>,
    _segments: Vec<Switch>,
}

impl Tun6Topology {
    /// Where the real servers also run `lb-testsrv --sink` (uploads).
    pub const SINK_PORT: u16 = 81;

    /// The real servers' addresses: rs1 in segment 1, rs2 in segment 2.
    pub fn real_addr(i: usize) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, i as u16, 0, 0, 0, 0, 0x10 + i as u16)
    }

    pub fn new() -> Result<Self> {
        Self::build(false)
    }

    /// The same with IPv4 beside IPv6, for an IPv4 service tunnelled to the IPv6 real servers
    /// (IPv4-in-IPv6): segment 0 is 10.0.0.0/24 too (director 10.0.0.1 with the IPv4 VIP
    /// 10.0.0.100/32 on eth0, client 10.0.0.2, router .254), segment `i` 10.`i`.0.0/24 (router
    /// .254, rs`i` [`Tun6Topology::real_addr4`]); the real servers hold the IPv4 VIP on `lo` too
    /// and route IPv4 by default via the router; their servers answer both families.
    pub fn dual_stack() -> Result<Self> {
        Self::build(true)
    }

    /// rs`i`'s IPv4 address ([`Tun6Topology::dual_stack`]): 10.`i`.0.1`i`.
    pub fn real_addr4(i: usize) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(10, i as u8, 0, 10 + i as u8)
    }

    fn build(ipv4: bool) -> Result<Self> {
        names::cleanup_stale();
        let prefix = names::unique_prefix();
        let segments = (0..3)
            .map(|s| Switch::new(format!("{prefix}-s6{s}")))
            .collect::<Result<Vec<_>>>()?;
        let ns = |name: &str| ipv6_host(&prefix, name);
        let plug = |host: &Netns, seg: usize, ifname: &str, port: &str, addr: &str| {
            plug6(&segments[seg], host, ifname, port, addr)
        };
        let router = ns("router6")?;
        router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        for (seg, ifname) in [(0, "eth0"), (1, "eth1"), (2, "eth2")] {
            let net = if seg == 0 {
                "2001:db8::fe/64".to_owned()
            } else {
                format!("2001:db8:{seg}::fe/64")
            };
            plug(&router, seg, ifname, "router", &net)?;
            if ipv4 {
                router.ip(&["addr", "add", &format!("10.{seg}.0.254/24"), "dev", ifname])?;
            }
        }
        if ipv4 {
            router.sysctl("net.ipv4.ip_forward", "1")?;
        }

        let director = ns("director")?;
        plug(&director, 0, "eth0", "director", "2001:db8::1/64")?;
        let vip = format!("{}/128", Dr6Topology::VIP);
        hold_vip_deprecated(&director)?;
        for seg in 1..=2 {
            director.ip(&[
                "-6",
                "route",
                "add",
                &format!("2001:db8:{seg}::/64"),
                "via",
                "2001:db8::fe",
            ])?;
        }
        let xdp_pass = segments[0].pass_xdp("director")?;
        if ipv4 {
            director
                .ip_batch("addr add 10.0.0.1/24 dev eth0\naddr add 10.0.0.100/32 dev eth0\n")?;
        }

        let client = ns("client")?;
        plug(&client, 0, "eth0", "client", "2001:db8::2/64")?;
        if ipv4 {
            client.ip_batch("addr add 10.0.0.2/24 dev eth0\nroute add default via 10.0.0.254\n")?;
        }
        let batch: String = Dr6Topology::client_sources()
            .iter()
            .map(|a| format!("addr add {a}/64 dev eth0 nodad\n"))
            .collect();
        client.ip_batch(&batch)?;
        client.ip(&["-6", "route", "add", "default", "via", "2001:db8::fe"])?;
        client.set_tx_checksum("eth0", false)?;

        let (mut reals, mut servers, mut decaps) = (Vec::new(), Vec::new(), Vec::new());
        for i in 1..=2 {
            let name = format!("rs{i}");
            let rs = ns(&name)?;
            plug(&rs, i, "eth0", &name, &format!("{}/64", Self::real_addr(i)))?;
            rs.ip(&["-6", "addr", "add", &vip, "dev", "lo", "nodad"])?;
            rs.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("2001:db8:{i}::fe"),
            ])?;
            if ipv4 {
                rs.ip_batch(&format!(
                    "addr add {}/24 dev eth0\naddr add 10.0.0.100/32 dev lo\nroute add default via 10.{i}.0.254\n",
                    Self::real_addr4(i)
                ))?;
            }
            let listen = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), Dr6Topology::PORT);
            servers.push(start_testsrv(&rs, &name, listen, Serve::Once)?);
            let sink = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), Self::SINK_PORT);
            servers.push(start_testsrv(&rs, &name, sink, Serve::Sink)?);
            decaps.push(crate::Decap::start(&rs, "eth0", &[])?);
            reals.push(rs);
        }
        Ok(Self {
            _decaps: decaps,
            _servers: servers,
            _xdp_pass: xdp_pass,
            client,
            director,
            _router: router,
            reals,
            _segments: segments,
        })
    }

    pub fn client(&self) -> &Netns {
        &self.client
    }

    pub fn director(&self) -> &Netns {
        &self.director
    }

    pub fn reals(&self) -> &[Netns] {
        &self.reals
    }
}

/// A namespace `<prefix>-<name>` whose IPv6 addresses are usable at once (no duplicate address
/// detection).
fn ipv6_host(prefix: &str, name: &str) -> Result<Netns> {
    let ns = Netns::new(format!("{prefix}-{name}"))?;
    ns.enable_ipv6()?;
    Ok(ns)
}

/// Plugs `host`'s `ifname` into `switch` (bridge port `port`) with IPv6 address `addr` (with
/// its prefix length).
fn plug6(switch: &Switch, host: &Netns, ifname: &str, port: &str, addr: &str) -> Result<String> {
    switch.plug(host, ifname, port)?;
    host.ip(&["-6", "addr", "add", addr, "dev", ifname, "nodad"])
}

/// The director's VIP on its eth0, deprecated (preferred_lft 0): still answered for, never
/// chosen as a source address. A /128 would otherwise win source selection toward the real
/// servers (longest match), and their answers to the VIP, which they hold too, would never
/// come back.
pub(crate) fn hold_vip_deprecated(director: &Netns) -> Result<()> {
    let vip = format!("{}/128", Dr6Topology::VIP);
    director.ip(&[
        "-6",
        "addr",
        "add",
        &vip,
        "dev",
        "eth0",
        "nodad",
        "preferred_lft",
        "0",
    ])?;
    Ok(())
}

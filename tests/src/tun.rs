//! The LVS/TUN topology: real servers in other subnets, behind a router, which the director
//! reaches through IPIP tunnels.

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::Result;
use lb_user::datapath::XdpPass;

use crate::agent::Decap;
use crate::names;
use crate::netns::Proc;
use crate::topo::{client, director, start_servers};
use crate::{DrTopology, Host, Serve, Switch};

/// Three segments joined by a router:
///
/// ```text
///  segment 0, 10.0.0.0/24            segment 1, 10.1.0.0/24     segment 2, 10.2.0.0/24
///  client .2 (+ .101..), director .1  rs1 .11                    rs2 .12
///  (VIP .100 on eth0), rs3 .13         |                          |
///  router .254 (eth0) --------------- router .254 (eth1) ------- router .254 (eth2)
/// ```
///
/// - client, director and the VIP as in [`DrTopology`] (same addresses, client sources, TX
///   checksum offload off, XDP_PASS on the director's switch port), plus routes to
///   [`TunTopology::REMOTE_NETS`] via the router;
/// - the router forwards (ip_forward=1) without reverse-path filtering (rp_filter=0: the real
///   servers' replies come from the VIP, which lives in segment 0, into its eth1/eth2);
/// - real servers rs1 (segment 1) and rs2 (segment 2), for tunnelling, and rs3 in segment 0, for
///   direct routing: each holds the VIP on `lo` (arp_ignore/arp_announce as for DR), has its
///   default route via the router, runs `lb-testsrv` on 0.0.0.0:80 as [`Serve`] says and
///   `xdplb decap --iface eth0` (rs2 with `--vip <VIP>`, the others with the default: every
///   address of the host), so that DR packets crossing a decap program are covered too.
///
/// No agent runs: start one with [`crate::Agent::start`] on [`TunTopology::director`].
pub struct TunTopology {
    // Drop order is field order: programs and servers before their namespaces.
    _decaps: Vec<Decap>,
    _servers: Vec<Proc>,
    _xdp_pass: XdpPass,
    client: Host,
    director: Host,
    router: Host,
    reals: Vec<Host>,
    segments: Vec<Switch>,
}

/// A real server of [`TunTopology`].
struct RealSpec {
    name: &'static str,
    segment: usize,
    addr: Ipv4Addr,
    /// `xdplb decap --vip <VIP>` rather than the default VIP set.
    explicit_vip: bool,
}

impl TunTopology {
    pub const VIP: Ipv4Addr = DrTopology::VIP;
    pub const PORT: u16 = DrTopology::PORT;
    pub const DIRECTOR_ADDR: Ipv4Addr = DrTopology::DIRECTOR_ADDR;
    pub const CLIENT_ADDR: Ipv4Addr = DrTopology::CLIENT_ADDR;
    /// The router's address in each segment; its interface there is `eth<segment>`.
    pub const ROUTER_ADDRS: [Ipv4Addr; 3] = [
        Ipv4Addr::new(10, 0, 0, 254),
        Ipv4Addr::new(10, 1, 0, 254),
        Ipv4Addr::new(10, 2, 0, 254),
    ];
    /// What lies behind the router, seen from segment 0.
    pub const REMOTE_NETS: [&'static str; 2] = ["10.1.0.0/16", "10.2.0.0/16"];

    const REALS: [RealSpec; 3] = [
        RealSpec {
            name: "rs1",
            segment: 1,
            addr: Ipv4Addr::new(10, 1, 0, 11),
            explicit_vip: false,
        },
        RealSpec {
            name: "rs2",
            segment: 2,
            addr: Ipv4Addr::new(10, 2, 0, 12),
            explicit_vip: true,
        },
        RealSpec {
            name: "rs3",
            segment: 0,
            addr: Ipv4Addr::new(10, 0, 0, 13),
            explicit_vip: false,
        },
    ];

    pub fn new(serve: Serve) -> Result<Self> {
        names::cleanup_stale();
        let prefix = names::unique_prefix();
        let segments = (0..Self::ROUTER_ADDRS.len())
            .map(|i| Switch::new(format!("{prefix}-seg{i}")))
            .collect::<Result<Vec<_>>>()?;

        let router = Host::new(&prefix, "router", &segments[0], Self::ROUTER_ADDRS[0])?;
        for (i, addr) in Self::ROUTER_ADDRS.iter().enumerate().skip(1) {
            router.plug(&segments[i], &Self::router_iface(i), *addr)?;
        }
        router.ns().sysctl("net.ipv4.ip_forward", "1")?;
        let ifaces = (0..segments.len()).map(Self::router_iface);
        for conf in ["all".to_owned(), "default".to_owned()]
            .into_iter()
            .chain(ifaces)
        {
            router
                .ns()
                .sysctl(&format!("net.ipv4.conf.{conf}.rp_filter"), "0")?;
        }

        let (director, xdp_pass) = director(&prefix, &segments[0])?;
        let client = client(&prefix, &segments[0])?;
        for host in [&director, &client] {
            for net in Self::REMOTE_NETS {
                host.route(net, Self::ROUTER_ADDRS[0])?;
            }
        }

        let reals = Self::REALS
            .iter()
            .map(|spec| {
                let rs = Host::new(&prefix, spec.name, &segments[spec.segment], spec.addr)?;
                rs.hold_vip(Self::VIP)?;
                rs.route("default", Self::ROUTER_ADDRS[spec.segment])?;
                Ok(rs)
            })
            .collect::<Result<Vec<_>>>()?;
        let servers = start_servers(&reals, serve)?;
        let vip = Self::VIP.to_string();
        let decaps = Self::REALS
            .iter()
            .zip(&reals)
            .map(|(spec, rs)| {
                let args: &[&str] = if spec.explicit_vip {
                    &["--vip", &vip]
                } else {
                    &[]
                };
                Decap::start(rs.ns(), "eth0", args)
            })
            .collect::<Result<Vec<_>>>()?;

        Ok(Self {
            _decaps: decaps,
            _servers: servers,
            _xdp_pass: xdp_pass,
            client,
            director,
            router,
            reals,
            segments,
        })
    }

    /// The router's interface in segment `segment`.
    pub fn router_iface(segment: usize) -> String {
        format!("eth{segment}")
    }

    /// The virtual service, VIP:80.
    pub fn service() -> SocketAddrV4 {
        DrTopology::service()
    }

    /// The client's extra source addresses, as in [`DrTopology::client_sources`].
    pub fn client_sources() -> Vec<Ipv4Addr> {
        DrTopology::client_sources()
    }

    pub fn client(&self) -> &Host {
        &self.client
    }

    pub fn director(&self) -> &Host {
        &self.director
    }

    pub fn router(&self) -> &Host {
        &self.router
    }

    /// rs1, rs2 and rs3, in that order.
    pub fn reals(&self) -> &[Host] {
        &self.reals
    }

    /// The real servers behind the router, rs1 and rs2: reachable through a tunnel only.
    pub fn remote_reals(&self) -> &[Host] {
        &self.reals[..2]
    }

    /// The real server in the director's segment, rs3: reachable by direct routing.
    pub fn local_real(&self) -> &Host {
        &self.reals[2]
    }

    /// The segment a real server is in.
    pub fn segment_of(&self, rs: &Host) -> usize {
        let spec = Self::REALS.iter().find(|spec| spec.name == rs.name());
        spec.expect("a real server of this topology").segment
    }

    /// The real server with address `addr`, if there is one.
    pub fn real_at(&self, addr: Ipv4Addr) -> Option<&Host> {
        self.reals.iter().find(|rs| rs.addr() == addr)
    }

    /// The switches of segments 0, 1 and 2.
    pub fn segments(&self) -> &[Switch] {
        &self.segments
    }
}

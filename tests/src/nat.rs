//! The classic LVS/NAT topology: clients on the outside network, the director with two
//! interfaces, and real servers on a private network whose default gateway is the director.
//!
//! - outside switch, 10.0.0.0/24: director `eth0` 10.0.0.1 with the VIP 10.0.0.100/32; client
//!   10.0.0.2, which also routes for the client addresses 172.16.0.1.. (on its `lo`): the
//!   director reaches them via 10.0.0.2, as it would through a router;
//! - far switch, 10.0.1.0/24, behind the client as a router: `far` 10.0.1.2, a client whose
//!   last hop is narrower than the rest of the path (route MTU 1280 on the client's `eth1`
//!   10.0.1.1), so big replies to it need path MTU discovery through the director;
//! - inside switch, 192.168.10.0/24: director `eth1` 192.168.10.1; real servers `rs1..rsN` at
//!   192.168.10.11.., default route via the director, each running a real HTTP server (Python's
//!   http.server, tests/data/nat-httpd.py) on port 8080, not the service's 80;
//! - with [`NatTopology::with_directors`], a second director `d2` like the first (outside
//!   10.0.0.3, inside 192.168.10.3): the real servers' gateway 192.168.10.1 and the VIP move
//!   to it by the neighbour entries that point at it, as a VRRP takeover's gratuitous ARP does;
//! - the director forwards IP (LVS/NAT routes replies), XDP_PASS programs on its switch ports
//!   (native XDP frames sent into a veth need one), TX checksum offload off on the hosts that
//!   send through it (see [`crate::ethtool`]).

use std::io::{BufRead as _, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use anyhow::{bail, Result};
use lb_user::datapath::XdpPass;

use crate::netns::Proc;
use crate::topo::{Host, Serve, Switch};
use crate::{names, Agent};

pub struct NatTopology {
    // Drop order is field order: programs and servers before their namespaces.
    _xdp_pass: Vec<XdpPass>,
    servers: Vec<Proc>,
    client: Host,
    far: Host,
    directors: Vec<Host>,
    reals: Vec<Host>,
    _outside: Switch,
    _inside: Switch,
    _far: Switch,
    /// Whether [`NatTopology::with_ipv6`] added IPv6.
    ipv6: bool,
}

impl NatTopology {
    pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
    pub const PORT: u16 = 80;
    /// The real servers' HTTP port: LVS/NAT maps VIP:80 to RIP:8080.
    pub const REAL_PORT: u16 = 8080;
    pub const INSIDE_GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 1);
    /// Client source addresses, 172.16.0.1 onwards.
    pub const CLIENT_SOURCES: u8 = 40;
    /// The far client's address, and the MTU of the hop before it.
    pub const FAR: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
    pub const FAR_MTU: u32 = 1280;

    pub fn new(n_reals: usize) -> Result<Self> {
        Self::with_directors(n_reals, 1)
    }

    /// The topology with `n_directors` (1 or 2) directors; the first holds the VIP and the
    /// real servers' gateway.
    pub fn with_directors(n_reals: usize, n_directors: usize) -> Result<Self> {
        Self::build(n_reals, n_directors, true)
    }

    /// The one-interface layout: the real servers on the outside link with the clients' router
    /// (10.0.0.11.., [`NatTopology::outside_real_addr`]), their default route via the
    /// director's 10.0.0.1, and the director run on `eth0` alone
    /// ([`NatTopology::start_agent_outside_only`]).
    pub fn one_interface(n_reals: usize) -> Result<Self> {
        Self::build(n_reals, 1, false)
    }

    fn build(n_reals: usize, n_directors: usize, reals_inside: bool) -> Result<Self> {
        assert!((1..=2).contains(&n_directors));
        names::cleanup_stale();
        let prefix = names::unique_prefix();
        let outside = Switch::new(format!("{prefix}-swo"))?;
        let inside = Switch::new(format!("{prefix}-swi"))?;
        let far_switch = Switch::new(format!("{prefix}-swf"))?;

        let mut directors = Vec::new();
        let mut xdp_pass = Vec::new();
        for i in 1..=n_directors {
            let name = if i == 1 {
                "director".to_owned()
            } else {
                format!("d{i}")
            };
            let outside_addr = Self::director_addr(i);
            let inside_addr = Ipv4Addr::new(192, 168, 10, if i == 1 { 1 } else { i as u8 + 1 });
            let director = Host::new(&prefix, &name, &outside, outside_addr)?;
            director.plug(&inside, "eth1", inside_addr)?;
            if i == 1 {
                let vip = format!("{}/32", Self::VIP);
                director.ns().ip(&["addr", "add", &vip, "dev", "eth0"])?;
            }
            director.ns().sysctl("net.ipv4.ip_forward", "1")?;
            director.route("172.16.0.0/24", Ipv4Addr::new(10, 0, 0, 2))?;
            director.route("10.0.1.0/24", Ipv4Addr::new(10, 0, 0, 2))?;
            xdp_pass.push(outside.pass_xdp(director.name())?);
            xdp_pass.push(inside.pass_xdp(director.name())?);
            directors.push(director);
        }

        let client = Host::new(&prefix, "client", &outside, Ipv4Addr::new(10, 0, 0, 2))?;
        let batch: String = Self::client_sources()
            .iter()
            .map(|a| format!("addr add {a}/32 dev lo\n"))
            .collect();
        client.ns().ip_batch(&batch)?;
        client.ns().set_tx_checksum("eth0", false)?;

        let router = Ipv4Addr::new(10, 0, 1, 1);
        client.plug(&far_switch, "eth1", router)?;
        client.ns().sysctl("net.ipv4.ip_forward", "1")?;
        let mtu = Self::FAR_MTU.to_string();
        client.ns().ip(&[
            "route",
            "replace",
            "10.0.1.0/24",
            "dev",
            "eth1",
            "src",
            "10.0.1.1",
            "mtu",
            &mtu,
        ])?;
        let far = Host::new(&prefix, "far", &far_switch, Self::FAR)?;
        far.route("default", router)?;
        far.ns().set_tx_checksum("eth0", false)?;

        let mut reals = Vec::new();
        let mut servers = Vec::new();
        for i in 1..=n_reals {
            let (switch, addr, gateway) = if reals_inside {
                (&inside, Self::real_addr(i), Self::INSIDE_GATEWAY)
            } else {
                (&outside, Self::outside_real_addr(i), Self::director_addr(1))
            };
            let rs = Host::new(&prefix, &format!("rs{i}"), switch, addr)?;
            rs.route("default", gateway)?;
            rs.ns().set_tx_checksum("eth0", false)?;
            servers.push(start_httpd(&rs)?);
            reals.push(rs);
        }
        Ok(Self {
            _xdp_pass: xdp_pass,
            servers,
            client,
            far,
            directors,
            reals,
            _outside: outside,
            _inside: inside,
            _far: far_switch,
            ipv6: false,
        })
    }

    /// IPv6 beside IPv4 (one director): outside 2001:db8::/64 (director `eth0` ::1 with the
    /// IPv6 VIP [`NatTopology::VIP6`], deprecated; client ::2, which routes for the client
    /// addresses [`NatTopology::client_sources6`] on its `lo` and for the far network
    /// 2001:db8:f::/64 with the far client [`NatTopology::FAR6`] behind the same 1280-byte
    /// hop), inside fd00:10::/64 (director
    /// `eth1` fd00:10::1, real servers [`NatTopology::real_addr6`] with their default route via
    /// it); the director forwards IPv6; the HTTP servers answer both families. Duplicate address
    /// detection is off: the addresses work at once.
    pub fn with_ipv6(mut self) -> Result<Self> {
        let hosts = self
            .directors
            .iter()
            .chain(&self.reals)
            .chain([&self.client, &self.far]);
        for host in hosts {
            host.ns().enable_ipv6()?;
        }
        for (i, director) in self.directors.iter().enumerate() {
            // As in IPv4: d1 ::1 (and the gateway fd00:10::1), d2 ::3.
            let n = if i == 0 { 1 } else { i + 2 };
            let d = director.ns();
            d.ip_batch(&format!(
                "addr add 2001:db8::{n}/64 dev eth0 nodad\n\
                 addr add fd00:10::{n}/64 dev eth1 nodad\n\
                 route add 2001:db8:c::/64 via 2001:db8::2\n\
                 route add 2001:db8:f::/64 via 2001:db8::2\n",
            ))?;
            if i == 0 {
                crate::ipv6::hold_vip_deprecated(d)?;
            }
            d.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        }
        let mut batch = "addr add 2001:db8::2/64 dev eth0 nodad\n".to_owned();
        for a in Self::client_sources6() {
            batch += &format!("addr add {a}/128 dev lo nodad\n");
        }
        // The far client behind the client as a router, its hop narrower (IPv6's minimum MTU).
        batch += &format!(
            // Metric 256: the connected route's, which this one replaces.
            "addr add 2001:db8:f::1/64 dev eth1 nodad\nroute replace 2001:db8:f::/64 dev eth1 metric 256 mtu {}\n",
            Self::FAR_MTU
        );
        self.client.ns().ip_batch(&batch)?;
        self.client
            .ns()
            .sysctl("net.ipv6.conf.all.forwarding", "1")?;
        self.far.ns().ip_batch(&format!(
            "addr add {}/64 dev eth0 nodad\nroute add default via 2001:db8:f::1\n",
            Self::FAR6
        ))?;
        // The HTTP servers again, now that they can listen on both families.
        self.servers.clear();
        for (i, rs) in self.reals.iter().enumerate() {
            rs.ns().ip_batch(&format!(
                "addr add {}/64 dev eth0 nodad\nroute add default via fd00:10::1\n",
                Self::real_addr6(i + 1)
            ))?;
            self.servers.push(start_httpd(rs)?);
        }
        self.ipv6 = true;
        Ok(self)
    }

    /// The far client's IPv6 address ([`NatTopology::with_ipv6`]), behind the same narrower hop.
    pub const FAR6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 2);

    /// The IPv6 VIP of [`NatTopology::with_ipv6`].
    pub const VIP6: std::net::Ipv6Addr = crate::ipv6::Dr6Topology::VIP;

    /// Real server `i`'s IPv6 address ([`NatTopology::with_ipv6`]): fd00:10::11 onwards.
    pub fn real_addr6(i: usize) -> std::net::Ipv6Addr {
        std::net::Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0x10 + i as u16)
    }

    /// The client's IPv6 source addresses ([`NatTopology::with_ipv6`]): 2001:db8:c::1 onwards.
    pub fn client_sources6() -> Vec<std::net::Ipv6Addr> {
        (1..=u16::from(Self::CLIENT_SOURCES))
            .map(|i| std::net::Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, i))
            .collect()
    }

    /// Director `i`'s outside address, counting from 1 (10.0.0.2 is the client's).
    pub fn director_addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, if i == 1 { 1 } else { i as u8 + 1 })
    }

    /// Starts `lb-testsrv` with `serve` on every real server's RIP:`port` as well.
    pub fn start_testsrv(&mut self, port: u16, serve: Serve) -> Result<()> {
        for rs in &self.reals {
            // Echo mode also answers UDP on the VIP, which NAT real servers do not hold.
            rs.ns().sysctl("net.ipv4.ip_nonlocal_bind", "1")?;
            let listen = SocketAddrV4::new(rs.addr(), port);
            self.servers.push(crate::topo::start_testsrv(
                rs.ns(),
                rs.name(),
                listen,
                serve,
            )?);
        }
        if self.ipv6 {
            for (i, rs) in self.reals.iter().enumerate() {
                rs.ns().sysctl("net.ipv6.ip_nonlocal_bind", "1")?;
                let listen = std::net::SocketAddr::new(Self::real_addr6(i + 1).into(), port);
                self.servers.push(crate::topo::start_testsrv(
                    rs.ns(),
                    rs.name(),
                    listen,
                    serve,
                )?);
            }
        }
        Ok(())
    }

    /// Sends the VIP's packets (the client's neighbour entry) and the real servers' replies
    /// (their neighbour entry for their gateway) to director `i`, as a VRRP takeover would.
    pub fn move_to(&self, i: usize) -> Result<()> {
        let d = self.director_at(i).ns();
        let (outside, inside) = (d.mac("eth0")?, d.mac("eth1")?);
        self.client
            .ns()
            .pin_neighbour(Self::VIP, &outside, "eth0")?;
        if self.ipv6 {
            self.client
                .ns()
                .pin_neighbour(Self::VIP6, &outside, "eth0")?;
        }
        for rs in &self.reals {
            rs.ns()
                .pin_neighbour(Self::INSIDE_GATEWAY, &inside, "eth0")?;
            if self.ipv6 {
                rs.ns().pin_neighbour("fd00:10::1", &inside, "eth0")?;
            }
        }
        Ok(())
    }

    /// Real server `i`'s address in the one-interface layout: 10.0.0.11 onwards.
    pub fn outside_real_addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, 10 + i as u8)
    }

    /// `xdplb run` on the director's `eth0` only (the one-interface layout).
    pub fn start_agent_outside_only(&self) -> Result<Agent> {
        Agent::start(self.director().ns(), "eth0", &[])
    }

    /// Real server `i`'s address, counting from 1: 192.168.10.11 onwards.
    pub fn real_addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 10, 10 + i as u8)
    }

    pub fn client_sources() -> Vec<Ipv4Addr> {
        (1..=Self::CLIENT_SOURCES)
            .map(|i| Ipv4Addr::new(172, 16, 0, i))
            .collect()
    }

    pub fn service() -> SocketAddrV4 {
        SocketAddrV4::new(Self::VIP, Self::PORT)
    }

    /// `xdplb run` on both interfaces of director `i` (outside first), with `extra` arguments.
    pub fn start_agent_at(&self, i: usize, extra: &[&str]) -> Result<Agent> {
        let mut args = vec!["--iface", "eth1"];
        args.extend_from_slice(extra);
        Agent::start(self.director_at(i).ns(), "eth0", &args)
    }

    pub fn client(&self) -> &Host {
        &self.client
    }

    /// The client behind the narrower hop.
    pub fn far(&self) -> &Host {
        &self.far
    }

    pub fn director(&self) -> &Host {
        self.director_at(1)
    }

    /// Director `i`, counting from 1.
    pub fn director_at(&self, i: usize) -> &Host {
        &self.directors[i - 1]
    }

    pub fn reals(&self) -> &[Host] {
        &self.reals
    }

    /// `curl` in the client's namespace from source `src`, with `args` (the URL among them):
    /// what it printed, or its error.
    pub fn curl(&self, src: impl Into<std::net::IpAddr>, args: &[&str]) -> Result<String> {
        let src = src.into();
        let src = src.to_string();
        let mut all = vec!["-gsS", "--fail", "--max-time", "30", "--interface", &src];
        all.extend_from_slice(args);
        self.client.ns().exec("curl", &all)
    }
}

/// Starts nat-httpd.py on the real server, on [`NatTopology::REAL_PORT`], and waits until it
/// listens.
fn start_httpd(rs: &Host) -> Result<Proc> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/nat-httpd.py");
    let script = script.to_string_lossy().into_owned();
    let port = NatTopology::REAL_PORT.to_string();
    let mut server = rs
        .ns()
        .spawn("python3", &[script.as_str(), rs.name(), port.as_str()])?;
    let mut line = String::new();
    BufReader::new(server.stdout().expect("stdout is piped")).read_line(&mut line)?;
    if line.trim() != "listening" {
        bail!(
            "the HTTP server of {} did not start: {:?}",
            rs.name(),
            server.stop()
        );
    }
    Ok(server)
}

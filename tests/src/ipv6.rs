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
    _xdp_pass: XdpPass,
    servers: Vec<Proc>,
    client: Netns,
    director: Netns,
    reals: Vec<Netns>,
    _switch: Switch,
}

impl Dr6Topology {
    pub const VIP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
    pub const PORT: u16 = 80;
    pub const CLIENT_SOURCES: u16 = 40;

    pub fn new(n_reals: usize) -> Result<Self> {
        Self::build(n_reals, false)
    }

    /// The same hosts dual-stack: IPv4 as in the LVS/DR topology besides IPv6 (director 10.0.0.1
    /// with the VIP 10.0.0.100/32, client 10.0.0.2, real servers 10.0.0.11.. with the IPv4 VIP
    /// on `lo` and the ARP sysctls); the same servers answer both families.
    pub fn dual_stack(n_reals: usize) -> Result<Self> {
        Self::build(n_reals, true)
    }

    fn build(n_reals: usize, ipv4: bool) -> Result<Self> {
        names::cleanup_stale();
        let prefix = names::unique_prefix();
        let switch = Switch::new(format!("{prefix}-sw6"))?;
        let host = |name: &str, addr: Ipv6Addr| -> Result<Netns> {
            let ns = Netns::new(format!("{prefix}-{name}"))?;
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
            switch.plug(&ns, "eth0", name)?;
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{addr}/64"),
                "dev",
                "eth0",
                "nodad",
            ])?;
            Ok(ns)
        };
        let director = host("director", Self::addr(1))?;
        let vip = format!("{}/128", Self::VIP);
        // Deprecated (preferred_lft 0): still answered for, never chosen as a source address.
        // A /128 would otherwise win source selection toward the real servers (longest match),
        // and their answers to the VIP, which they hold too, would never come back.
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
        let xdp_pass = switch.pass_xdp("director")?;

        if ipv4 {
            director
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
            rs.ip(&["-6", "addr", "add", &vip, "dev", "lo"])?;
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
            servers.push(start_testsrv(&rs, &name, listen, Serve::Once)?);
            reals.push(rs);
        }
        Ok(Self {
            _xdp_pass: xdp_pass,
            servers,
            client,
            director,
            reals,
            _switch: switch,
        })
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
        &self.director
    }

    pub fn reals(&self) -> &[Netns] {
        &self.reals
    }

    /// Stops real server `i`'s `lb-testsrv` (counting from 1): its port closes, the host stays.
    pub fn kill_server(&mut self, i: usize) -> std::process::ExitStatus {
        self.servers[i - 1].stop()
    }
}

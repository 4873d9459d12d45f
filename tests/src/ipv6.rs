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

        let client = host("client", Self::addr(2))?;
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

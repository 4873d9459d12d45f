//! Topologies built from namespaces: hosts plugged into switches, and the LVS/DR setup of the
//! end-to-end tests and the demo.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Mutex;

use anyhow::{bail, Context as _, Result};
use lb_user::datapath::XdpPass;

use crate::client::{fetch_from, UdpFlow};
use crate::names;
use crate::netns::{veth, Netns, Proc};
use crate::Agent;

/// A layer-2 segment: a namespace holding bridge `br0`.
pub struct Switch {
    ns: Netns,
}

impl Switch {
    pub fn new(ns_name: String) -> Result<Self> {
        let ns = Netns::new(ns_name)?;
        ipv4_only(&ns)?;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        Ok(Self { ns })
    }

    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// Plugs interface `ifname` of `host` into the bridge: a veth whose other end, `port`, is a
    /// bridge port in the switch namespace.
    pub fn plug(&self, host: &Netns, ifname: &str, port: &str) -> Result<()> {
        veth(&self.ns, port, host, ifname)?;
        self.ns.ip(&["link", "set", port, "master", "br0"])?;
        Ok(())
    }

    /// Attaches an XDP_PASS program to bridge port `port` until the guard is dropped: a veth
    /// delivers the frames its peer sends with native XDP_TX only when its own end runs an XDP
    /// program, so the port of a host that runs the director needs one.
    pub fn pass_xdp(&self, port: &str) -> Result<XdpPass> {
        let index = self.ns.ifindex(port)?;
        self.ns
            .run_in(|| XdpPass::attach(index))
            .with_context(|| format!("cannot attach XDP_PASS to switch port {port}"))
    }
}

/// A host: its own namespace, with `eth0` plugged into a switch (the bridge port is named after
/// the host) and a primary address.
pub struct Host {
    ns: Netns,
    name: String,
    addr: Ipv4Addr,
}

impl Host {
    /// Creates namespace `<prefix>-<name>`, plugs its `eth0` into `switch` and gives it `addr`/24.
    pub fn new(prefix: &str, name: &str, switch: &Switch, addr: Ipv4Addr) -> Result<Self> {
        let ns = Netns::new(format!("{prefix}-{name}"))?;
        ipv4_only(&ns)?;
        let host = Self {
            ns,
            name: name.to_owned(),
            addr,
        };
        host.plug(switch, "eth0", addr)?;
        Ok(host)
    }

    /// Plugs interface `ifname` into `switch` (the bridge port is named after the host) and gives
    /// it `addr`/24: how a host gets a leg in each of several segments.
    pub fn plug(&self, switch: &Switch, ifname: &str, addr: Ipv4Addr) -> Result<()> {
        switch.plug(&self.ns, ifname, &self.name)?;
        self.ns
            .ip(&["addr", "add", &format!("{addr}/24"), "dev", ifname])?;
        Ok(())
    }

    /// Routes `dest` (a prefix such as `10.1.0.0/16`, or `default`) via the gateway `via`.
    pub fn route(&self, dest: &str, via: Ipv4Addr) -> Result<()> {
        self.ns
            .ip(&["route", "add", dest, "via", &via.to_string()])?;
        Ok(())
    }

    /// Makes the host accept packets for `vip` without ever claiming it on the wire, as an LVS
    /// real server must (DR and TUN alike): the VIP on `lo`, arp_ignore=1 and arp_announce=2.
    pub fn hold_vip(&self, vip: Ipv4Addr) -> Result<()> {
        for conf in ["all", "eth0"] {
            self.ns
                .sysctl(&format!("net.ipv4.conf.{conf}.arp_ignore"), "1")?;
            self.ns
                .sysctl(&format!("net.ipv4.conf.{conf}.arp_announce"), "2")?;
        }
        self.ns
            .ip(&["addr", "add", &format!("{vip}/32"), "dev", "lo"])?;
        Ok(())
    }

    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }
}

/// The tests speak IPv4 only: without IPv6, links stay quiet (no DAD, router solicitations or
/// MLD reports), so the director's counters count only the test's own traffic. Must run before
/// the namespace gets its interfaces, which copy the `default` settings.
fn ipv4_only(ns: &Netns) -> Result<()> {
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
}

/// LVS/DR on one bridge: a client, a director and `n` real servers, all on 10.0.0.0/24.
///
/// - director 10.0.0.1, plus the VIP 10.0.0.100/32 on its eth0 (it answers ARP for the VIP);
/// - real servers `rs1..rsN` at 10.0.0.11.., the VIP on `lo` and arp_ignore=1 / arp_announce=2 so
///   they accept packets for the VIP but never claim it on the wire; each runs `lb-testsrv` on
///   0.0.0.0:80, answering its name ([`Serve`] says whether it also echoes);
/// - client 10.0.0.2 plus [`DrTopology::CLIENT_SOURCES`] extra source addresses, TX checksum
///   offload off (see [`crate::ethtool`]);
/// - an XDP_PASS program on the switch-side end of the director's veth, without which frames the
///   director sends with native XDP_TX are never delivered.
///
/// No agent runs: start one with [`crate::Agent::start`] on [`DrTopology::director`].
pub struct DrTopology {
    // Drop order is field order: the XDP program and the servers before their namespaces.
    _xdp_pass: XdpPass,
    /// `lb-testsrv` of each real server, in their order (behind a lock: stopped and started
    /// again while the test holds the topology).
    servers: Mutex<Vec<Proc>>,
    serve: Serve,
    client: Host,
    director: Host,
    reals: Vec<Host>,
    switch: Switch,
}

impl DrTopology {
    pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
    pub const PORT: u16 = 80;
    pub const DIRECTOR_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    /// Extra client addresses, 10.0.0.101 onwards, so the source-hash scheduler sees many clients.
    pub const CLIENT_SOURCES: u8 = 40;

    /// The topology with `n_reals` real servers answering their name and closing
    /// ([`Serve::Once`]).
    pub fn new(n_reals: usize) -> Result<Self> {
        Self::with_servers(n_reals, Serve::Once)
    }

    /// The topology with `n_reals` real servers serving connections as `serve` says.
    pub fn with_servers(n_reals: usize, serve: Serve) -> Result<Self> {
        assert!(
            (1..=80).contains(&n_reals),
            "real servers get 10.0.0.11..=10.0.0.90"
        );
        names::cleanup_stale();
        let prefix = names::unique_prefix();

        let switch = Switch::new(format!("{prefix}-sw"))?;
        let (director, xdp_pass) = director(&prefix, &switch)?;
        let reals = (1..=n_reals)
            .map(|i| {
                let rs = Host::new(&prefix, &format!("rs{i}"), &switch, Self::real_addr(i))?;
                rs.hold_vip(Self::VIP)?;
                Ok(rs)
            })
            .collect::<Result<Vec<_>>>()?;
        let client = client(&prefix, &switch)?;
        let servers = start_servers(&reals, serve)?;

        Ok(Self {
            _xdp_pass: xdp_pass,
            servers: Mutex::new(servers),
            serve,
            client,
            director,
            reals,
            switch,
        })
    }

    /// Configures `agent` through the CLI as an LVS/DR director for this topology: the service
    /// VIP:80 with the source-hash scheduler, every real server in route mode with weight 1.
    pub fn configure(&self, agent: &Agent) {
        let service = Self::service().to_string();
        agent.cli_ok(&["service", "add", "-t", &service, "-s", "sh"]);
        for rs in &self.reals {
            agent.cli_ok(&[
                "real",
                "add",
                "-t",
                &service,
                "-r",
                &rs.addr.to_string(),
                "-g",
                "-w",
                "1",
            ]);
        }
    }

    /// Address of real server `i`, counting from 1.
    pub fn real_addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, 10 + i as u8)
    }

    /// The client's extra source addresses (10.0.0.101..).
    pub fn client_sources() -> Vec<Ipv4Addr> {
        (1..=Self::CLIENT_SOURCES)
            .map(|i| Ipv4Addr::new(10, 0, 0, 100 + i))
            .collect()
    }

    /// The virtual service, VIP:80.
    pub fn service() -> SocketAddrV4 {
        SocketAddrV4::new(Self::VIP, Self::PORT)
    }

    pub fn client(&self) -> &Host {
        &self.client
    }

    pub fn director(&self) -> &Host {
        &self.director
    }

    pub fn reals(&self) -> &[Host] {
        &self.reals
    }

    /// The real server with address `addr`, if there is one.
    pub fn real_at(&self, addr: Ipv4Addr) -> Option<&Host> {
        self.reals.iter().find(|rs| rs.addr == addr)
    }

    /// The name (`rsN`) of the real server with address `addr`; panics if there is none (for
    /// what `xdplb simulate` or `list` name).
    pub fn real_name(&self, addr: Ipv4Addr) -> &str {
        self.real_at(addr)
            .unwrap_or_else(|| panic!("{addr} is not a real server of the topology"))
            .name()
    }

    /// The names of the real servers `xdplb simulate` gives new flows from `flows` to
    /// `service` ("VIP:PORT"; `proto` `-t` or `-u`) now, in their order.
    pub fn predict(
        &self,
        agent: &Agent,
        proto: &str,
        service: &str,
        flows: &[SocketAddrV4],
    ) -> Vec<String> {
        let reals = agent.simulate(proto, service, flows);
        reals
            .iter()
            .map(|rip| self.real_name(*rip.ip()).to_owned())
            .collect()
    }

    /// Starts a new flow to [`DrTopology::service`] from each of `flows` (fresh ones: see
    /// [`FreshFlows`]), over TCP (`proto` `-t`: a connection, [`fetch_from`]) or UDP (`-u`: one
    /// datagram and its answer, [`UdpFlow`]), and panics unless each is answered by the real
    /// server `xdplb simulate` predicted for it. Returns how many flows each server took. `when`
    /// says when in the test, for the message.
    pub fn new_flows_as_simulated(
        &self,
        agent: &Agent,
        proto: &str,
        flows: &[SocketAddrV4],
        when: &str,
    ) -> BTreeMap<String, usize> {
        let service = Self::service();
        let predicted = self.predict(agent, proto, &service.to_string(), flows);
        let udp = match proto {
            "-t" => false,
            "-u" => true,
            _ => panic!("proto is -t or -u, not {proto:?}"),
        };
        let answers = self.client.ns.run_in(|| {
            let flow = |src| match udp {
                true => UdpFlow::connect(src, service).and_then(|mut f| f.exchange()),
                false => fetch_from(src, service),
            };
            flows.iter().map(|&src| flow(src)).collect::<Vec<_>>()
        });
        let mut landed = BTreeMap::new();
        for ((src, predicted), answer) in flows.iter().zip(predicted).zip(answers) {
            let answer = answer.map_err(|e| format!("{e:#}"));
            assert_eq!(
                answer.as_deref(),
                Ok(predicted.as_str()),
                "{when}: new flow {src} -> {service} ({proto})"
            );
            *landed.entry(predicted).or_default() += 1;
        }
        landed
    }

    /// Which real servers `n` new TCP connections from `fresh` flows reached, by name, in their
    /// order; panics if one fails.
    pub fn answered(&self, fresh: &mut FreshFlows, n: usize) -> Vec<String> {
        let flows = fresh.take(n);
        self.client
            .ns
            .run_in(|| crate::client::fetch_each(&flows, Self::service()))
            .into_iter()
            .map(|r| r.expect("a connection through the director"))
            .collect()
    }

    /// Kills the `lb-testsrv` of real server `i` (counting from 1) with SIGKILL, as a crash
    /// would: the host stays up, but refuses (resets) connections on the port from now on.
    pub fn kill_server(&self, i: usize) -> std::process::ExitStatus {
        self.servers()[i - 1].kill()
    }

    /// Starts the `lb-testsrv` of real server `i` (counting from 1) again, serving as before, and
    /// waits until it listens.
    pub fn restart_server(&self, i: usize) -> Result<()> {
        let listen = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, Self::PORT);
        let rs = &self.reals[i - 1];
        let mut servers = self.servers();
        servers[i - 1].stop();
        servers[i - 1] = start_testsrv(&rs.ns, rs.name(), listen, self.serve)?;
        Ok(())
    }

    fn servers(&self) -> std::sync::MutexGuard<'_, Vec<Proc>> {
        self.servers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn switch(&self) -> &Switch {
        &self.switch
    }
}

/// The director of every topology: host `director` at [`DrTopology::DIRECTOR_ADDR`] on `switch`,
/// with the VIP as a /32 on its eth0 (it answers ARP for it), and the XDP_PASS program its
/// native XDP_TX frames need on its switch port.
pub(crate) fn director(prefix: &str, switch: &Switch) -> Result<(Host, XdpPass)> {
    let director = Host::new(prefix, "director", switch, DrTopology::DIRECTOR_ADDR)?;
    let vip = format!("{}/32", DrTopology::VIP);
    director.ns.ip(&["addr", "add", &vip, "dev", "eth0"])?;
    let xdp_pass = switch.pass_xdp(director.name())?;
    Ok((director, xdp_pass))
}

/// The client of every topology: host `client` at [`DrTopology::CLIENT_ADDR`] on `switch`, plus
/// the [`DrTopology::client_sources`] addresses, with TX checksum offload off (see
/// [`crate::ethtool`]).
pub(crate) fn client(prefix: &str, switch: &Switch) -> Result<Host> {
    let client = Host::new(prefix, "client", switch, DrTopology::CLIENT_ADDR)?;
    let batch: String = DrTopology::client_sources()
        .iter()
        .map(|a| format!("addr add {a}/32 dev eth0\n"))
        .collect();
    client.ns.ip_batch(&batch)?;
    client.ns.set_tx_checksum("eth0", false)?;
    Ok(client)
}

/// `lb-testsrv` on 0.0.0.0:[`DrTopology::PORT`] on every real server, answering its name.
pub(crate) fn start_servers(reals: &[Host], serve: Serve) -> Result<Vec<Proc>> {
    let listen = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, DrTopology::PORT);
    reals
        .iter()
        .map(|rs| start_testsrv(&rs.ns, rs.name(), listen, serve))
        .collect()
}

/// What the real servers' `lb-testsrv` does with a TCP connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Serve {
    /// Answers its name and closes ([`crate::client::fetch`]).
    #[default]
    Once,
    /// Greets with its name, then answers every line until the client closes
    /// ([`crate::client::Stream`]; [`crate::client::fetch`] works too); also answers UDP
    /// datagrams to the VIP:80 ([`crate::client::UdpFlow`]).
    Echo,
    /// Reads until the client closes its side, answers `NAME BYTES` and closes
    /// ([`crate::client::upload`]).
    Sink,
}

/// Starts `lb-testsrv` in a namespace and waits until it listens (it prints one line then).
/// With [`Serve::Echo`] it answers UDP on [`DrTopology::VIP`] at `listen`'s port too.
pub fn start_testsrv(
    ns: &Netns,
    name: &str,
    listen: impl Into<std::net::SocketAddr>,
    serve: Serve,
) -> Result<Proc> {
    let listen = listen.into();
    let bin = crate::binary("LB_TESTSRV_BIN", "lb-testsrv", "cargo build -p lb-tests");
    let listen_arg = listen.to_string();
    // UDP on the VIP of the listening address's family.
    let vip: std::net::IpAddr = match listen.is_ipv6() {
        true => crate::ipv6::Dr6Topology::VIP.into(),
        false => DrTopology::VIP.into(),
    };
    let udp = std::net::SocketAddr::new(vip, listen.port()).to_string();
    let mut args = vec!["--name", name, "--listen", &listen_arg];
    match serve {
        Serve::Once => {}
        Serve::Echo => args.extend(["--echo", "--udp", &udp]),
        Serve::Sink => args.push("--sink"),
    }
    let mut server = ns.spawn(&bin, &args)?;
    let mut line = String::new();
    BufReader::new(server.stdout().expect("stdout is piped")).read_line(&mut line)?;
    if line.is_empty() {
        bail!(
            "lb-testsrv {name} exited before listening: {:?}",
            server.stop()
        );
    }
    Ok(server)
}

/// Client flows (source address and port) never used before by this generator: the client's
/// source addresses ([`DrTopology::client_sources`]) in turn, each flow with the next port. A
/// fresh flow is a NEW flow to the director: no connection-table entry, no TIME_WAIT socket.
pub struct FreshFlows {
    sources: Vec<Ipv4Addr>,
    next_port: u16,
}

impl FreshFlows {
    /// Flows from port `first_port` on; separate generators of one test need separate ranges.
    pub fn new(first_port: u16) -> Self {
        Self::from(DrTopology::client_sources(), first_port)
    }

    /// Flows from these source addresses, from port `first_port` on.
    pub fn from(sources: Vec<Ipv4Addr>, first_port: u16) -> Self {
        Self {
            sources,
            next_port: first_port,
        }
    }

    /// The next `n` flows; panics when the ports run out.
    pub fn take(&mut self, n: usize) -> Vec<SocketAddrV4> {
        (0..n)
            .map(|_| {
                let port = self.next_port;
                self.next_port = port.checked_add(1).expect("fresh flows: out of ports");
                let source = self.sources[usize::from(port) % self.sources.len()];
                SocketAddrV4::new(source, port)
            })
            .collect()
    }
}

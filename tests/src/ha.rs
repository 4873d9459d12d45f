//! The topologies of the high-availability tests: several directors in front of the same real
//! servers, synchronising their connection tables, with the client either on their LAN (a VIP
//! that moves between directors: keepalived, or the client's neighbour entry) or behind a
//! router that spreads the VIP's traffic over them (ECMP, routes from BGP).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use lb_user::datapath::XdpPass;

use crate::client::StreamSet;
use crate::netns::Proc;
use crate::topo::{start_servers, Serve};
use crate::{names, Agent, DrTopology, Host, Switch};

/// Where the client sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAt {
    /// On the directors' LAN (10.0.0.2, sources 10.0.0.101..): the VIP is reached through
    /// whichever director holds it (keepalived) or the client's neighbour entry names.
    Lan,
    /// Behind router `router` (10.0.0.254 on the LAN, 10.9.0.1 toward the client): the client is
    /// 10.9.0.2 with sources 10.9.0.101.., and the real servers route back through the router.
    BehindRouter,
}

/// `n` directors (`d1..dN`: 10.0.0.1, 10.0.0.3, 10.0.0.4, ...) and real servers `rs1..rsM`
/// (10.0.0.11..) on one bridge, the real servers holding the VIP on `lo` and running
/// `lb-testsrv` as [`Serve`] says; each director's switch port has the XDP_PASS program its
/// native XDP_TX frames need. No director holds the VIP and no agent runs.
pub struct HaTopology {
    // Drop order is field order: programs and servers before their namespaces.
    _xdp_pass: Vec<XdpPass>,
    _servers: Vec<Proc>,
    client: Host,
    router: Option<Host>,
    directors: Vec<Host>,
    reals: Vec<Host>,
    client_switch: Option<Switch>,
    switch: Switch,
    dir: PathBuf,
    /// The sync multicast group of the directors' configs, if any.
    sync_group: Option<Ipv4Addr>,
    /// What the real servers' `lb-testsrv` does.
    serve: Serve,
}

impl HaTopology {
    pub const VIP: Ipv4Addr = DrTopology::VIP;
    pub const PORT: u16 = DrTopology::PORT;
    /// The sync port every director listens on.
    pub const SYNC_PORT: u16 = 8742;
    pub const ROUTER_LAN: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
    pub const ROUTER_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
    /// The IPv6 VIP and the router's IPv6 address on the LAN ([`HaTopology::with_ipv6`]).
    pub const VIP6: Ipv6Addr = crate::ipv6::Dr6Topology::VIP;
    pub const ROUTER_LAN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);

    pub fn new(directors: usize, reals: usize, serve: Serve, client_at: ClientAt) -> Result<Self> {
        assert!((1..=8).contains(&directors) && (1..=40).contains(&reals));
        names::cleanup_stale();
        let prefix = names::unique_prefix();
        let switch = Switch::new(format!("{prefix}-sw"))?;
        let mut hosts = Vec::new();
        let mut xdp_pass = Vec::new();
        for i in 1..=directors {
            let d = Host::new(&prefix, &format!("d{i}"), &switch, Self::director_addr(i))?;
            xdp_pass.push(switch.pass_xdp(d.name())?);
            hosts.push(d);
        }
        let real_hosts = (1..=reals)
            .map(|i| {
                let rs = Host::new(
                    &prefix,
                    &format!("rs{i}"),
                    &switch,
                    DrTopology::real_addr(i),
                )?;
                rs.hold_vip(Self::VIP)?;
                if client_at == ClientAt::BehindRouter {
                    rs.route("default", Self::ROUTER_LAN)?;
                }
                Ok(rs)
            })
            .collect::<Result<Vec<_>>>()?;
        let (client, router, client_switch) = match client_at {
            ClientAt::Lan => {
                let client = Host::new(&prefix, "client", &switch, DrTopology::CLIENT_ADDR)?;
                (client, None, None)
            }
            ClientAt::BehindRouter => {
                let router = Host::new(&prefix, "router", &switch, Self::ROUTER_LAN)?;
                let outside = Switch::new(format!("{prefix}-sw9"))?;
                router.plug(&outside, "eth1", Self::ROUTER_CLIENT_SIDE)?;
                router.ns().sysctl("net.ipv4.ip_forward", "1")?;
                // A layer-4 hash: flows of one client spread over the directors.
                router
                    .ns()
                    .sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
                let client = Host::new(&prefix, "client", &outside, Ipv4Addr::new(10, 9, 0, 2))?;
                client.route("default", Self::ROUTER_CLIENT_SIDE)?;
                (client, Some(router), Some(outside))
            }
        };
        let batch: String = Self::client_sources(client_at)
            .iter()
            .map(|a| format!("addr add {a}/32 dev eth0\n"))
            .collect();
        client.ns().ip_batch(&batch)?;
        client.ns().set_tx_checksum("eth0", false)?;
        let servers = start_servers(&real_hosts, serve)?;
        let dir = std::env::temp_dir().join(format!("{prefix}-ha"));
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            _xdp_pass: xdp_pass,
            _servers: servers,
            client,
            router,
            directors: hosts,
            reals: real_hosts,
            client_switch,
            switch,
            dir,
            sync_group: None,
            serve,
        })
    }

    /// IPv6 beside IPv4, behind the router only: the LAN is 2001:db8::/64 too (directors
    /// [`HaTopology::director_addr6`], real servers [`crate::ipv6::Dr6Topology::real_addr`]
    /// with the IPv6 VIP [`HaTopology::VIP6`] on `lo` and a default route via the router's
    /// [`HaTopology::ROUTER_LAN6`]), the client's side 2001:db8:9::/64 (router ::1, client ::2
    /// with sources [`HaTopology::client_sources6`]). Every real server's `lb-testsrv` listens
    /// on [::]:80, both families, as before. Duplicate address detection is off: the addresses
    /// work at once.
    pub fn with_ipv6(mut self) -> Result<Self> {
        let router = self
            .router
            .as_ref()
            .context("IPv6 is set up behind the router only")?;
        let add = |host: &Host, dev: &str, addr: String| {
            host.ns()
                .ip(&["-6", "addr", "add", &addr, "dev", dev, "nodad"])
                .map(drop)
        };
        let hosts = self
            .directors
            .iter()
            .chain(&self.reals)
            .chain([&self.client, router]);
        for host in hosts {
            host.ns().enable_ipv6()?;
        }
        add(router, "eth0", format!("{}/64", Self::ROUTER_LAN6))?;
        add(router, "eth1", "2001:db8:9::1/64".to_owned())?;
        router.ns().sysctl("net.ipv6.conf.all.forwarding", "1")?;
        router
            .ns()
            .sysctl("net.ipv6.fib_multipath_hash_policy", "1")?;
        for (i, d) in self.directors.iter().enumerate() {
            add(d, "eth0", format!("{}/64", Self::director_addr6(i + 1)))?;
        }
        // The servers again, on [::]:80: both families (their health checks go to RIP:80).
        self._servers.clear();
        let any = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), Self::PORT);
        for (i, rs) in self.reals.iter().enumerate() {
            add(
                rs,
                "eth0",
                format!("{}/64", crate::ipv6::Dr6Topology::real_addr(i + 1)),
            )?;
            add(rs, "lo", format!("{}/128", Self::VIP6))?;
            rs.ns().ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &Self::ROUTER_LAN6.to_string(),
            ])?;
            self._servers.push(crate::topo::start_testsrv(
                rs.ns(),
                rs.name(),
                any,
                self.serve,
            )?);
        }
        add(&self.client, "eth0", "2001:db8:9::2/64".to_owned())?;
        let batch: String = Self::client_sources6()
            .iter()
            .map(|a| format!("addr add {a}/64 dev eth0 nodad\n"))
            .collect();
        self.client.ns().ip_batch(&batch)?;
        self.client
            .ns()
            .ip(&["-6", "route", "add", "default", "via", "2001:db8:9::1"])?;
        Ok(self)
    }

    /// Director `i`'s IPv6 address ([`HaTopology::with_ipv6`]): 2001:db8::1, ::3, ::4, ...
    pub fn director_addr6(i: usize) -> Ipv6Addr {
        let [.., last] = Self::director_addr(i).octets();
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last.into())
    }

    /// The client's IPv6 source addresses ([`HaTopology::with_ipv6`]): 2001:db8:9::1:1.. .
    pub fn client_sources6() -> Vec<Ipv6Addr> {
        (1..=DrTopology::CLIENT_SOURCES)
            .map(|i| Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 1, i.into()))
            .collect()
    }

    /// The directors' configs ([`HaTopology::config`]) send sync updates to multicast `group`.
    pub fn with_sync_group(mut self, group: Ipv4Addr) -> Self {
        self.sync_group = Some(group);
        self
    }

    /// Director `i`'s address, counting from 1 (10.0.0.2 is the LAN client's).
    pub fn director_addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, if i == 1 { 1 } else { i as u8 + 1 })
    }

    /// The client's extra source addresses.
    pub fn client_sources(at: ClientAt) -> Vec<Ipv4Addr> {
        let net = match at {
            ClientAt::Lan => 0,
            ClientAt::BehindRouter => 9,
        };
        (1..=DrTopology::CLIENT_SOURCES)
            .map(|i| Ipv4Addr::new(10, net, 0, 100 + i))
            .collect()
    }

    pub fn service() -> SocketAddrV4 {
        SocketAddrV4::new(Self::VIP, Self::PORT)
    }

    pub fn client(&self) -> &Host {
        &self.client
    }

    pub fn router(&self) -> Option<&Host> {
        self.router.as_ref()
    }

    /// Director `i`, counting from 1.
    pub fn director(&self, i: usize) -> &Host {
        &self.directors[i - 1]
    }

    pub fn directors(&self) -> &[Host] {
        &self.directors
    }

    pub fn reals(&self) -> &[Host] {
        &self.reals
    }

    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    /// The switch between the router and the client, when there is a router.
    pub fn client_switch(&self) -> Option<&Switch> {
        self.client_switch.as_ref()
    }

    /// A directory of this topology's, removed with it: for keys and daemon configurations.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the shared sync key (mode 0600) and returns its path.
    pub fn sync_key(&self) -> Result<PathBuf> {
        write_sync_key(&self.dir)
    }

    /// The `[sync]` table of director `i`'s config file: sync with every other director.
    pub fn sync_config(&self, i: usize) -> Result<String> {
        let key = self.sync_key()?;
        let peers: Vec<String> = (1..=self.directors.len())
            .filter(|j| *j != i)
            .map(|j| format!("\"{}:{}\"", Self::director_addr(j), Self::SYNC_PORT))
            .collect();
        let group = self
            .sync_group
            .map_or(String::new(), |g| format!("group = \"{g}\"\n"));
        Ok(format!(
            "[sync]\nlisten = \"{}:{}\"\npeers = [{}]\nkey_file = \"{}\"\n{group}",
            Self::director_addr(i),
            Self::SYNC_PORT,
            peers.join(", "),
            key.display()
        ))
    }

    /// A config file for director `i`: interface eth0, sync with the others, `settings` (more
    /// top-level tables, such as `[announce]`), and the TCP service VIP:80 with scheduler
    /// `scheduler` over the real servers `reals` (numbers from 1, with their weights), each
    /// checked as `check` says (a TOML inline table, or none).
    pub fn config(
        &self,
        i: usize,
        settings: &str,
        scheduler: &str,
        reals: &[(usize, u32)],
        check: Option<&str>,
    ) -> Result<String> {
        let mut text = format!("interface = \"eth0\"\n{}{settings}\n", self.sync_config(i)?);
        text += &format!(
            "[[service]]\nprotocol = \"tcp\"\nvip = \"{}\"\nport = {}\nscheduler = \"{scheduler}\"\n",
            Self::VIP,
            Self::PORT
        );
        for (r, w) in reals {
            text += &format!(
                "[[service.real]]\naddress = \"{}\"\nweight = {w}\n",
                DrTopology::real_addr(*r)
            );
            if let Some(c) = check {
                text += &format!("check = {c}\n");
            }
        }
        Ok(text)
    }

    /// `xdplb run` arguments for director `i`: sync with every other director.
    pub fn sync_args(&self, i: usize) -> Result<Vec<String>> {
        let peers: Vec<Ipv4Addr> = (1..=self.directors.len())
            .filter(|j| *j != i)
            .map(Self::director_addr)
            .collect();
        Ok(sync_args(&self.sync_key()?, Self::director_addr(i), &peers))
    }

    /// Starts an agent on director `i`'s eth0 with sync to the others and `extra` arguments.
    pub fn start_agent(&self, i: usize, extra: &[&str]) -> Result<Agent> {
        let mut args = self.sync_args(i)?;
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Agent::start(self.director(i).ns(), "eth0", &args).with_context(|| format!("agent on d{i}"))
    }

    /// Points the LAN client's neighbour entry for the VIP at director `i`, as a VIP takeover
    /// (a gratuitous ARP) would.
    pub fn send_vip_to(&self, i: usize) -> Result<()> {
        let mac = self.director(i).ns().mac("eth0")?;
        self.client.ns().pin_neighbour(Self::VIP, &mac, "eth0")
    }

    /// Takes director `i`'s link down or up (`ip link set eth0 down|up`), as a cable pulled.
    pub fn set_link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        self.director(i)
            .ns()
            .ip(&["link", "set", "eth0", state])
            .unwrap_or_else(|e| panic!("d{i} link {state}: {e:#}"));
    }
}

/// Writes a sync key (mode 0600) shared by test directors into `dir`; returns its path.
pub fn write_sync_key(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("sync.key");
    std::fs::write(&path, "a shared secret of the test directors\n")?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(path)
}

/// `xdplb run` arguments for a director at `listen` syncing with `peers` (all on
/// [`HaTopology::SYNC_PORT`]) under `key`.
pub fn sync_args<A: Into<IpAddr> + Copy>(key: &Path, listen: A, peers: &[A]) -> Vec<String> {
    let at = |a: A| SocketAddr::new(a.into(), HaTopology::SYNC_PORT).to_string();
    let mut args = vec![
        "--sync-listen".to_owned(),
        at(listen),
        "--sync-key".to_owned(),
        key.display().to_string(),
    ];
    for &peer in peers {
        args.push("--sync-peer".to_owned());
        args.push(at(peer));
    }
    args
}

impl Drop for HaTopology {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until `xdplb check` passes on `agent`; panics with its last answer after `limit`.
/// Returns how long it took.
pub fn wait_fit(agent: &Agent, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let out = agent.cli(&["check"]);
        if out.status.success() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "check still fails after {limit:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many of `streams` `agent`'s table would now send to another real server than the one
/// that greeted them (rsN is 10.0.0.(10+N)): the connections that only a connection table keeps
/// where they are, and that a director without sync would break.
pub fn held_by_connection_table(agent: &Agent, streams: &StreamSet) -> usize {
    let statuses = streams.statuses();
    let Some(service) = statuses.first().map(|s| s.dst) else {
        return 0;
    };
    let flows: Vec<SocketAddr> = statuses.iter().map(|s| s.src).collect();
    let now = agent.simulate("-t", &service.to_string(), &flows);
    now.iter()
        .zip(&statuses)
        .filter(|(r, s)| format!("rs{}", real_number(r.ip())) != s.server)
        .count()
}

/// `n` of real server `rsN` from its address: 10.0.0.(10 + n) or 2001:db8::(0x10 + n).
pub fn real_number(addr: IpAddr) -> u16 {
    match addr {
        IpAddr::V4(a) => u16::from(a.octets()[3]) - 10,
        IpAddr::V6(a) => a.segments()[7] - 0x10,
    }
}

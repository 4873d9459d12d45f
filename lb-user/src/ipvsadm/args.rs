//! ipvsadm's command line, as ipvsadm(8) documents it, turned into what xdplb does: a change
//! request for the agent, or a listing. The same parser reads each line of `-R`.

use std::{
    ffi::OsString,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs as _},
};

use anyhow::{anyhow, bail, Result};
use clap::{Parser, ValueEnum as _};

use crate::{
    control::Request,
    state::{
        Forward, Hash, Netmask, Protocol, RealSpec, Scheduler, SchedulerSpec, ServiceAddr,
        MAX_WEIGHT,
    },
};

/// ipvsadm's default scheduler.
const DEFAULT_SCHEDULER: Scheduler = Scheduler::Wlc;
/// ipvsadm's persistence timeout when `-p` has none, and its largest.
const DEFAULT_PERSISTENCE: &str = "300";
const MAX_PERSISTENCE: u32 = 31 * 24 * 3600;

#[derive(Parser, Debug, Default)]
#[command(
    name = "ipvsadm",
    about = "ipvsadm's command line for xdplb: the same commands and options, applied to the xdplb agent",
    disable_version_flag = true
)]
pub struct Args {
    // Commands: exactly one (none lists, as ipvsadm without arguments).
    #[arg(short = 'A', long = "add-service")]
    add_service: bool,
    #[arg(short = 'E', long = "edit-service")]
    edit_service: bool,
    #[arg(short = 'D', long = "delete-service")]
    delete_service: bool,
    #[arg(short = 'C', long)]
    clear: bool,
    #[arg(short = 'R', long)]
    restore: bool,
    #[arg(short = 'S', long)]
    save: bool,
    #[arg(short = 'a', long = "add-server")]
    add_server: bool,
    #[arg(short = 'e', long = "edit-server")]
    edit_server: bool,
    #[arg(short = 'd', long = "delete-server")]
    delete_server: bool,
    #[arg(short = 'L', short_alias = 'l', long)]
    list: bool,
    #[arg(short = 'Z', long)]
    zero: bool,
    /// --set TCP TCPFIN UDP: connection-table timeouts, seconds (0: unchanged).
    #[arg(long, num_args = 3, value_names = ["TCP", "TCPFIN", "UDP"])]
    set: Option<Vec<String>>,
    #[arg(long = "start-daemon", value_name = "STATE")]
    start_daemon: Option<String>,
    #[arg(long = "stop-daemon", value_name = "STATE")]
    stop_daemon: Option<String>,
    #[arg(short = 'v', long)]
    version: bool,

    // Parameters.
    #[arg(short = 't', long = "tcp-service", value_name = "SERVICE-ADDRESS")]
    tcp_service: Option<String>,
    #[arg(short = 'u', long = "udp-service", value_name = "SERVICE-ADDRESS")]
    udp_service: Option<String>,
    #[arg(long = "sctp-service", value_name = "SERVICE-ADDRESS")]
    sctp_service: Option<String>,
    #[arg(short = 'f', long = "fwmark-service", value_name = "INTEGER")]
    fwmark_service: Option<String>,
    #[arg(short = 's', long)]
    scheduler: Option<String>,
    #[arg(short = 'p', long, value_name = "TIMEOUT", num_args = 0..=1, default_missing_value = DEFAULT_PERSISTENCE)]
    persistent: Option<String>,
    #[arg(short = 'M', long)]
    netmask: Option<String>,
    #[arg(short = 'b', long = "sched-flags", value_name = "FLAGS")]
    sched_flags: Option<String>,
    #[arg(short = 'r', long = "real-server", value_name = "SERVER-ADDRESS")]
    real_server: Option<String>,
    #[arg(short = 'g', long)]
    gatewaying: bool,
    #[arg(short = 'i', long)]
    ipip: bool,
    #[arg(short = 'm', long)]
    masquerading: bool,
    #[arg(long = "tun-type", value_name = "TYPE")]
    tun_type: Option<String>,
    #[arg(long = "tun-port", value_name = "PORT")]
    tun_port: Option<String>,
    #[arg(long = "tun-nocsum")]
    tun_nocsum: bool,
    #[arg(long = "tun-csum")]
    tun_csum: bool,
    #[arg(long = "tun-remcsum")]
    tun_remcsum: bool,
    #[arg(short = 'w', long)]
    weight: Option<String>,
    #[arg(short = 'x', long = "u-threshold", value_name = "UTHRESHOLD")]
    u_threshold: Option<String>,
    #[arg(short = 'y', long = "l-threshold", value_name = "LTHRESHOLD")]
    l_threshold: Option<String>,
    #[arg(long = "mcast-interface", value_name = "INTERFACE")]
    mcast_interface: Option<String>,
    #[arg(long = "mcast-group", value_name = "ADDRESS")]
    mcast_group: Option<String>,
    #[arg(long = "mcast-port", value_name = "PORT")]
    mcast_port: Option<String>,
    #[arg(long = "mcast-ttl", value_name = "TTL")]
    mcast_ttl: Option<String>,
    #[arg(long = "sync-maxlen", value_name = "LENGTH")]
    sync_maxlen: Option<String>,
    #[arg(long, value_name = "SYNCID")]
    syncid: Option<String>,
    #[arg(short = 'n', long)]
    numeric: bool,
    #[arg(short = 'c', long)]
    connection: bool,
    #[arg(long)]
    timeout: bool,
    #[arg(long)]
    daemon: bool,
    #[arg(long)]
    stats: bool,
    #[arg(long)]
    rate: bool,
    #[arg(long)]
    thresholds: bool,
    #[arg(long = "persistent-conn")]
    persistent_conn: bool,
    #[arg(long)]
    nosort: bool,
    #[arg(long)]
    sort: bool,
    #[arg(short = 'X', long)]
    exact: bool,
    #[arg(short = '6', long)]
    ipv6: bool,
    #[arg(short = 'o', long)]
    ops: bool,
    #[arg(long, value_name = "ENGINE")]
    pe: Option<String>,
}

/// What a listing shows besides the services (ipvsadm's precedence: the first given wins).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Columns {
    #[default]
    Plain,
    Stats,
    Rate,
    Thresholds,
    PersistentConn,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    pub columns: Columns,
    /// --exact: whole numbers, not K/M/G/T.
    pub exact: bool,
    /// Off with --nosort: the agent's order.
    pub sort: bool,
}

/// What one ipvsadm command line asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Invocation {
    /// A change of services, real servers or timeouts, or zeroed counters.
    Change(Request),
    /// -L: services (all, or one) in ipvsadm's layout.
    List {
        service: Option<ServiceAddr>,
        options: ListOptions,
    },
    /// -L -c: the connection table.
    Connections,
    /// -L --timeout.
    Timeouts,
    /// -L --daemon.
    Daemon,
    /// -S: the rules, as -R reads them.
    Save,
    /// -R: rules from stdin.
    Restore,
    /// -v.
    Version,
    /// -h: the usage text.
    Help(String),
}

/// Parses one ipvsadm command line (without the program name).
pub fn parse(args: &[OsString]) -> Result<Invocation> {
    let argv = std::iter::once(OsString::from("ipvsadm")).chain(args.iter().cloned());
    match Args::try_parse_from(argv) {
        Ok(args) => args.invocation(),
        Err(e) if !e.use_stderr() => Ok(Invocation::Help(e.render().to_string())),
        Err(e) => bail!(crate::cli::one_line(&e)),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmd {
    Add,
    Edit,
    Del,
    Clear,
    AddServer,
    EditServer,
    DelServer,
    List,
    Zero,
    Set,
    Save,
    Restore,
    Version,
}

impl Cmd {
    fn name(self) -> &'static str {
        match self {
            Cmd::Add => "-A (add-service)",
            Cmd::Edit => "-E (edit-service)",
            Cmd::Del => "-D (delete-service)",
            Cmd::Clear => "-C (clear)",
            Cmd::AddServer => "-a (add-server)",
            Cmd::EditServer => "-e (edit-server)",
            Cmd::DelServer => "-d (delete-server)",
            Cmd::List => "-L (list)",
            Cmd::Zero => "-Z (zero)",
            Cmd::Set => "--set",
            Cmd::Save => "-S (save)",
            Cmd::Restore => "-R (restore)",
            Cmd::Version => "-v (version)",
        }
    }

    /// The options a command takes (by their names in [`Args::given`]), and those it needs.
    fn options(self) -> (&'static [&'static str], &'static [&'static str]) {
        const SERVICE: &[&str] = &["service-address"];
        match self {
            Cmd::Add | Cmd::Edit => (
                &[
                    "service-address",
                    "scheduler",
                    "persistent",
                    "netmask",
                    "sched-flags",
                ],
                SERVICE,
            ),
            Cmd::Del => (SERVICE, SERVICE),
            Cmd::AddServer | Cmd::EditServer => (
                &[
                    "service-address",
                    "real-server",
                    "forwarding-method",
                    "weight",
                    "u-threshold",
                    "l-threshold",
                ],
                &["service-address", "real-server"],
            ),
            Cmd::DelServer => (
                &["service-address", "real-server"],
                &["service-address", "real-server"],
            ),
            Cmd::List => (
                &[
                    "numeric",
                    "connection",
                    "service-address",
                    "timeout",
                    "daemon",
                    "stats",
                    "rate",
                    "thresholds",
                    "persistent-conn",
                    "nosort",
                    "sort",
                    "exact",
                ],
                &[],
            ),
            Cmd::Save => (&["numeric"], &[]),
            Cmd::Zero => (SERVICE, &[]),
            Cmd::Clear | Cmd::Set | Cmd::Restore | Cmd::Version => (&[], &[]),
        }
    }
}

impl Args {
    /// What ipvsadm offers that xdplb cannot do, each with what to do instead.
    fn refuse_unsupported(&self) -> Result<()> {
        if self.fwmark_service.is_some() {
            bail!("firewall-mark services (-f) cannot exist in XDP, which sees packets before netfilter marks them: use a persistent port-0 service (-t VIP:0 -p) to take every port of a VIP");
        }
        if self.sctp_service.is_some() {
            bail!("SCTP services (--sctp-service) are not supported: TCP (-t) and UDP (-u) are");
        }
        if self.ipv6 {
            bail!("-6 (IPv6 firewall-mark services) is not supported: IPv6 is not supported yet");
        }
        if self.ops {
            bail!("-o (one-packet scheduling) is not supported: every UDP flow has a connection-table entry");
        }
        if let Some(pe) = &self.pe {
            bail!("--pe {pe}: persistence engines are not supported");
        }
        if self.start_daemon.is_some()
            || self.stop_daemon.is_some()
            || self.mcast_interface.is_some()
            || self.mcast_group.is_some()
            || self.mcast_port.is_some()
            || self.mcast_ttl.is_some()
            || self.sync_maxlen.is_some()
            || self.syncid.is_some()
        {
            bail!("IPVS's sync daemon (--start-daemon, --stop-daemon, --mcast-*, --syncid) is replaced by xdplb's authenticated connection sync: configure [sync] in the agent's config (see docs/ha.md)");
        }
        if let Some(t) = self.tun_type.as_deref().filter(|t| *t != "ipip") {
            bail!("--tun-type {t}: only IPIP tunnels (-i) are supported");
        }
        if self.tun_port.is_some() || self.tun_nocsum || self.tun_csum || self.tun_remcsum {
            bail!("--tun-port and --tun-*csum are for GUE and GRE tunnels: only IPIP tunnels (-i) are supported");
        }
        Ok(())
    }

    fn command(&self) -> Result<Cmd> {
        let commands = [
            (self.add_service, Cmd::Add),
            (self.edit_service, Cmd::Edit),
            (self.delete_service, Cmd::Del),
            (self.clear, Cmd::Clear),
            (self.add_server, Cmd::AddServer),
            (self.edit_server, Cmd::EditServer),
            (self.delete_server, Cmd::DelServer),
            (self.list, Cmd::List),
            (self.zero, Cmd::Zero),
            (self.set.is_some(), Cmd::Set),
            (self.save, Cmd::Save),
            (self.restore, Cmd::Restore),
            (self.version, Cmd::Version),
        ];
        let given: Vec<Cmd> = commands
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, c)| *c)
            .collect();
        match given[..] {
            [] => Ok(Cmd::List),
            [one] => Ok(one),
            [a, b, ..] => bail!("only one command at a time: {} and {}", a.name(), b.name()),
        }
    }

    /// The options given, by ipvsadm's names for them.
    fn given(&self) -> Vec<&'static str> {
        let service = self.tcp_service.is_some() || self.udp_service.is_some();
        let forward = self.gatewaying || self.ipip || self.tun_type.is_some();
        [
            (self.numeric, "numeric"),
            (self.connection, "connection"),
            (service, "service-address"),
            (self.scheduler.is_some(), "scheduler"),
            (self.persistent.is_some(), "persistent"),
            (self.netmask.is_some(), "netmask"),
            (self.sched_flags.is_some(), "sched-flags"),
            (self.real_server.is_some(), "real-server"),
            (forward, "forwarding-method"),
            (self.weight.is_some(), "weight"),
            (self.u_threshold.is_some(), "u-threshold"),
            (self.l_threshold.is_some(), "l-threshold"),
            (self.timeout, "timeout"),
            (self.daemon, "daemon"),
            (self.stats, "stats"),
            (self.rate, "rate"),
            (self.thresholds, "thresholds"),
            (self.persistent_conn, "persistent-conn"),
            (self.nosort, "nosort"),
            (self.sort, "sort"),
            (self.exact, "exact"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| name)
        .collect()
    }

    fn check_options(&self, cmd: Cmd) -> Result<()> {
        let (allowed, needed) = cmd.options();
        let given = self.given();
        if let Some(o) = given.iter().find(|o| !allowed.contains(o)) {
            bail!("illegal '{o}' option with the {} command", cmd.name());
        }
        if let Some(o) = needed.iter().find(|o| !given.contains(o)) {
            bail!("the {} command needs the '{o}' option", cmd.name());
        }
        if self.tcp_service.is_some() && self.udp_service.is_some() {
            bail!("one service at a time: -t or -u");
        }
        if [self.gatewaying, self.ipip, self.masquerading]
            .iter()
            .filter(|x| **x)
            .count()
            > 1
        {
            bail!("one forwarding method at a time: -g, -i or -m");
        }
        if cmd == Cmd::List {
            let has = |o: &str| given.contains(&o);
            let exclusive: Vec<&str> = ["connection", "service-address", "timeout", "daemon"]
                .into_iter()
                .filter(|o| has(o))
                .collect();
            if let [a, b, ..] = exclusive[..] {
                bail!("the '{b}' option conflicts with the '{a}' option in the list command");
            }
            let other = ["connection", "timeout", "daemon"]
                .into_iter()
                .find(|o| has(o));
            let columns = ["stats", "rate", "thresholds", "persistent-conn"]
                .into_iter()
                .find(|o| has(o) && (*o != "persistent-conn" || other != Some("connection")));
            if let (Some(a), Some(b)) = (other, columns) {
                bail!("the '{b}' option conflicts with the '{a}' option in the list command");
            }
        }
        Ok(())
    }

    fn invocation(&self) -> Result<Invocation> {
        self.refuse_unsupported()?;
        let cmd = self.command()?;
        self.check_options(cmd)?;
        let service = self.service()?;
        let need_service = || service.ok_or_else(|| anyhow!("a service address is needed"));
        Ok(match cmd {
            Cmd::Add | Cmd::Edit => {
                let service = need_service()?;
                let scheduler = self.scheduler_spec(cmd == Cmd::Edit)?;
                if service.port == 0 && scheduler.persistent.unwrap_or(0) == 0 {
                    bail!("port 0 (every port of the VIP) is only for a persistent service (-p)");
                }
                Invocation::Change(match cmd {
                    Cmd::Add => Request::AddService { service, scheduler },
                    _ => Request::EditService { service, scheduler },
                })
            }
            Cmd::Del => Invocation::Change(Request::DelService {
                service: need_service()?,
            }),
            Cmd::Clear => Invocation::Change(Request::Clear),
            Cmd::AddServer | Cmd::EditServer => {
                let service = need_service()?;
                let real = self.real_spec()?;
                Invocation::Change(match cmd {
                    Cmd::AddServer => Request::AddReal { service, real },
                    _ => Request::EditReal { service, real },
                })
            }
            Cmd::DelServer => {
                let service = need_service()?;
                let (addr, port) = self.real_address()?;
                Invocation::Change(Request::DelReal {
                    service,
                    addr,
                    port,
                })
            }
            Cmd::Zero => Invocation::Change(Request::Zero { service }),
            Cmd::Set => {
                let values = self.set.as_deref().unwrap_or_default();
                let secs = |i: usize| -> Result<Option<u32>> {
                    let v = &values[i];
                    match v.parse::<u32>() {
                        Ok(0) => Ok(None),
                        Ok(n) if n <= MAX_PERSISTENCE => Ok(Some(n)),
                        _ => bail!("invalid timeout value '{v}' for --set"),
                    }
                };
                Invocation::Change(Request::SetTimeouts {
                    tcp: secs(0)?,
                    tcp_fin: secs(1)?,
                    udp: secs(2)?,
                })
            }
            Cmd::List if self.connection => Invocation::Connections,
            Cmd::List if self.timeout => Invocation::Timeouts,
            Cmd::List if self.daemon => Invocation::Daemon,
            Cmd::List => Invocation::List {
                service,
                options: ListOptions {
                    columns: if self.stats {
                        Columns::Stats
                    } else if self.rate {
                        Columns::Rate
                    } else if self.thresholds {
                        Columns::Thresholds
                    } else if self.persistent_conn {
                        Columns::PersistentConn
                    } else {
                        Columns::Plain
                    },
                    exact: self.exact,
                    sort: !self.nosort,
                },
            },
            Cmd::Save => Invocation::Save,
            Cmd::Restore => Invocation::Restore,
            Cmd::Version => Invocation::Version,
        })
    }

    fn service(&self) -> Result<Option<ServiceAddr>> {
        let (protocol, text, option) = match (&self.tcp_service, &self.udp_service) {
            (Some(t), _) => (Protocol::Tcp, t, "-t"),
            (None, Some(u)) => (Protocol::Udp, u, "-u"),
            (None, None) => return Ok(None),
        };
        let (vip, port) = address(text, protocol)
            .map_err(|e| anyhow!("illegal virtual server address[:port] {option} {text}: {e}"))?;
        Ok(Some(ServiceAddr {
            protocol,
            vip,
            port: port.unwrap_or(0),
        }))
    }

    fn real_address(&self) -> Result<(IpAddr, Option<u16>)> {
        let text = self.real_server.as_deref().unwrap_or_default();
        let protocol = if self.udp_service.is_some() {
            Protocol::Udp
        } else {
            Protocol::Tcp
        };
        address(text, protocol)
            .map_err(|e| anyhow!("illegal real server address[:port] -r {text}: {e}"))
    }

    /// -A and -E: ipvsadm sends the whole service, so an edit resets what it does not give
    /// (the scheduler to wlc, persistence to none), as ipvsadm's does.
    fn scheduler_spec(&self, edit: bool) -> Result<SchedulerSpec> {
        let scheduler = match &self.scheduler {
            Some(name) => Scheduler::from_str(name, false).map_err(|_| {
                anyhow!("scheduler '{name}' is not one of rr, wrr, lc, wlc, sed, nq, dh, lblc, lblcr, fo, ovf, sh, mh")
            })?,
            None => DEFAULT_SCHEDULER,
        };
        let persistent = match &self.persistent {
            Some(t) => match t.parse::<u32>() {
                Ok(t @ 1..=MAX_PERSISTENCE) => Some(t),
                _ => bail!("invalid persistence timeout '{t}' (-p): 1..={MAX_PERSISTENCE} seconds"),
            },
            None => None,
        };
        let netmask = match &self.netmask {
            Some(m) => Some(
                m.parse::<Netmask>()
                    .map_err(|_| anyhow!("illegal persistence netmask -M {m}"))?,
            ),
            None => None,
        };
        let mut hash = None;
        for flag in self.sched_flags.iter().flat_map(|f| f.split(',')) {
            match (flag, scheduler) {
                // The tables only ever hold available real servers: a flow whose server is
                // gone already goes to the next one.
                ("sh-fallback", Scheduler::Sh) | ("mh-fallback", Scheduler::Mh) => {}
                ("mh-port", Scheduler::Mh) => hash = Some(Hash::Flow),
                ("sh-port", Scheduler::Sh) => bail!("-b sh-port is not supported: xdplb's sh hashes the client address only; -s mh -b mh-port hashes the ports too"),
                (f, s) => bail!("-b {f}: not a flag of the {} scheduler", s.name()),
            }
        }
        if scheduler == Scheduler::Mh {
            // IPVS's mh hashes the client address, and its port with mh-port.
            hash = hash.or(Some(Hash::Src));
        }
        let v6 = self.service()?.is_some_and(|s| s.vip.is_ipv6());
        if netmask.is_some() && persistent.is_none() {
            bail!("a netmask (-M) needs persistence (-p)");
        }
        Ok(SchedulerSpec {
            scheduler: Some(scheduler),
            mh_size: None,
            hash,
            persistent: match persistent {
                None if edit => Some(0),
                p => p,
            },
            netmask: persistent.and(Some(netmask.unwrap_or(Netmask::single(v6)))),
        })
    }

    /// -a and -e: as ipvsadm, what is not given takes ipvsadm's default (weight 1, direct
    /// routing, no thresholds), also in an edit; the real port of DR and TUN is the service's,
    /// as ipvsadm makes it; masquerading (-m) keeps the one given.
    fn real_spec(&self) -> Result<RealSpec> {
        let (addr, port) = self.real_address()?;
        let number = |v: &Option<String>, what: &str, max: u32| -> Result<Option<u32>> {
            match v {
                None => Ok(None),
                Some(s) => match s.parse::<u32>() {
                    Ok(n) if n <= max => Ok(Some(n)),
                    _ => bail!("illegal {what} '{s}' (0..={max})"),
                },
            }
        };
        let weight = number(&self.weight, "weight", MAX_WEIGHT)?;
        let upper = number(&self.u_threshold, "u_threshold (-x)", i32::MAX as u32)?;
        let lower = number(&self.l_threshold, "l_threshold (-y)", i32::MAX as u32)?;
        Ok(RealSpec {
            addr: Some(addr),
            port: port.filter(|_| self.masquerading),
            weight: Some(weight.unwrap_or(1)),
            forward: Some(if self.ipip || self.tun_type.is_some() {
                Forward::Tunnel
            } else if self.masquerading {
                Forward::Masq
            } else {
                Forward::Route
            }),
            mac: None,
            check: None,
            upper: Some(upper.unwrap_or(0)),
            lower: Some(lower.unwrap_or(0)),
        })
    }
}

/// `host[:port]` as ipvsadm reads it: an IPv4 address or a host name, and a port number or a
/// service name (/etc/services); an IPv6 address as `[addr]:port`, or bare without a port.
fn address(text: &str, protocol: Protocol) -> Result<(IpAddr, Option<u16>)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| anyhow!("no ']' after the IPv6 address"))?;
        let addr = host
            .parse::<Ipv6Addr>()
            .map_err(|_| anyhow!("'{host}' is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(p) => Some(port(p, protocol)?),
                None => bail!("expected ':port' after ']'"),
            },
        };
        return Ok((addr.into(), port));
    }
    if text.matches(':').count() > 1 {
        let addr = text
            .parse::<Ipv6Addr>()
            .map_err(|_| anyhow!("'{text}' is not an IPv6 address (with a port: [addr]:port)"))?;
        return Ok((addr.into(), None));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) => (h, Some(port(p, protocol)?)),
        None => (text, None),
    };
    if host.is_empty() {
        bail!("no address");
    }
    let addr = match host.parse::<Ipv4Addr>() {
        Ok(a) => a,
        Err(_) => (host, 0)
            .to_socket_addrs()
            .ok()
            .and_then(|mut all| {
                all.find_map(|a| match a {
                    SocketAddr::V4(v4) => Some(*v4.ip()),
                    SocketAddr::V6(_) => None,
                })
            })
            .ok_or_else(|| anyhow!("'{host}' is not an IPv4 address or a known host name"))?,
    };
    Ok((addr.into(), port))
}

fn port(text: &str, protocol: Protocol) -> Result<u16> {
    if let Ok(p) = text.parse::<u16>() {
        return Ok(p);
    }
    let proto = match protocol {
        Protocol::Tcp => c"tcp",
        Protocol::Udp => c"udp",
    };
    let name = std::ffi::CString::new(text).map_err(|_| anyhow!("'{text}' is not a port"))?;
    // SAFETY: both are NUL-terminated; the entry is read at once, before another call.
    let entry = unsafe { libc::getservbyname(name.as_ptr(), proto.as_ptr()) };
    if entry.is_null() {
        bail!("'{text}' is not a port number or a service name");
    }
    // SAFETY: non-null: a servent the C library owns; s_port is in network byte order.
    Ok(u16::from_be(unsafe { (*entry).s_port } as u16))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> Result<Invocation> {
        let args: Vec<OsString> = line.split_whitespace().map(OsString::from).collect();
        parse(&args)
    }

    fn tcp(vip: [u8; 4], port: u16) -> ServiceAddr {
        ServiceAddr {
            protocol: Protocol::Tcp,
            vip: vip.into(),
            port,
        }
    }

    #[test]
    fn service_commands_use_ipvsadms_defaults() {
        assert_eq!(
            parse_str("-A -t 207.175.44.110:80 -s rr").unwrap(),
            Invocation::Change(Request::AddService {
                service: tcp([207, 175, 44, 110], 80),
                scheduler: SchedulerSpec {
                    scheduler: Some(Scheduler::Rr),
                    ..Default::default()
                },
            })
        );
        // No -s: wlc; an edit without -p makes the service not persistent.
        let Invocation::Change(Request::EditService { scheduler, .. }) =
            parse_str("-E -t 10.0.0.1:80").unwrap()
        else {
            panic!()
        };
        assert_eq!(scheduler.scheduler, Some(Scheduler::Wlc));
        assert_eq!(scheduler.persistent, Some(0));
        let Invocation::Change(Request::AddService { service, scheduler }) =
            parse_str("-A -t 10.0.0.1:0 -s sh -p -M 255.255.255.0").unwrap()
        else {
            panic!()
        };
        assert_eq!(service.port, 0);
        assert_eq!(scheduler.persistent, Some(300));
        assert_eq!(
            scheduler.netmask,
            Some(Netmask::Dotted(Ipv4Addr::new(255, 255, 255, 0)))
        );
        let Invocation::Change(Request::AddService { scheduler, .. }) =
            parse_str("-A -u 10.0.0.1:domain -s mh -b mh-port,mh-fallback -p 60").unwrap()
        else {
            panic!()
        };
        assert_eq!(scheduler.hash, Some(Hash::Flow));
        assert_eq!(scheduler.persistent, Some(60));
        assert_eq!(scheduler.netmask, Some(Netmask::single(false)));
    }

    #[test]
    fn server_commands_use_ipvsadms_defaults() {
        let Invocation::Change(Request::AddReal { service, real }) =
            parse_str("-a -t 10.0.0.1:http -r 10.0.0.11:8080").unwrap()
        else {
            panic!()
        };
        assert_eq!(service, tcp([10, 0, 0, 1], 80));
        // DR keeps the service's port, whatever -r says (as ipvsadm).
        assert_eq!(real.port, None);
        assert_eq!(real.weight, Some(1));
        assert_eq!(real.forward, Some(Forward::Route));
        assert_eq!((real.upper, real.lower), (Some(0), Some(0)));
        let Invocation::Change(Request::EditReal { real, .. }) =
            parse_str("-e -t 10.0.0.1:80 -r 10.0.0.11 -i -w 5 -x 100 -y 50").unwrap()
        else {
            panic!()
        };
        assert_eq!(real.forward, Some(Forward::Tunnel));
        assert_eq!(
            (real.weight, real.upper, real.lower),
            (Some(5), Some(100), Some(50))
        );
        // Masquerading keeps the real server's port; the other methods take the service's.
        let Invocation::Change(Request::AddReal { real, .. }) =
            parse_str("-a -t 10.0.0.1:80 -r 10.0.0.11:8080 -m").unwrap()
        else {
            panic!()
        };
        assert_eq!((real.forward, real.port), (Some(Forward::Masq), Some(8080)));
        let Invocation::Change(Request::AddReal { real, .. }) =
            parse_str("-a -t 10.0.0.1:80 -r 10.0.0.11:8080 -g").unwrap()
        else {
            panic!()
        };
        assert_eq!((real.forward, real.port), (Some(Forward::Route), None));
    }

    #[test]
    fn listings_and_their_options() {
        assert_eq!(
            parse_str("-Ln --thresholds").unwrap(),
            Invocation::List {
                service: None,
                options: ListOptions {
                    columns: Columns::Thresholds,
                    exact: false,
                    sort: true,
                }
            }
        );
        assert_eq!(parse_str("").unwrap(), parse_str("-L").unwrap());
        assert_eq!(parse_str("-l").unwrap(), parse_str("-L").unwrap());
        assert_eq!(parse_str("-Lnc").unwrap(), Invocation::Connections);
        assert_eq!(parse_str("-L --timeout").unwrap(), Invocation::Timeouts);
        let Invocation::List { service, options } =
            parse_str("-L -n -t 10.0.0.1:80 --stats --exact --nosort").unwrap()
        else {
            panic!()
        };
        assert_eq!(service, Some(tcp([10, 0, 0, 1], 80)));
        assert_eq!(options.columns, Columns::Stats);
        assert!(options.exact && !options.sort);
        assert_eq!(parse_str("-S -n").unwrap(), Invocation::Save);
        assert_eq!(
            parse_str("--set 0 60 0").unwrap(),
            Invocation::Change(Request::SetTimeouts {
                tcp: None,
                tcp_fin: Some(60),
                udp: None
            })
        );
    }

    #[test]
    fn ipv6_addresses_in_brackets() {
        let Invocation::Change(Request::AddService { service, .. }) =
            parse_str("-A -t [2001:db8::80]:80 -s rr").unwrap()
        else {
            panic!("not an add")
        };
        assert_eq!(service.vip, "2001:db8::80".parse::<IpAddr>().unwrap());
        let Invocation::Change(Request::AddReal { real, .. }) =
            parse_str("-a -t [2001:db8::80]:80 -r 2001:db8::11 -g").unwrap()
        else {
            panic!("not an add")
        };
        assert_eq!(real.addr, Some("2001:db8::11".parse().unwrap()));
    }

    #[test]
    fn bad_and_unsupported_input_is_named() {
        for (line, named) in [
            ("-A -t 10.0.0.1:80 -s xyz", "xyz"),
            ("-A -t 10.0.0.1:80 -w 3", "'weight'"),
            ("-A -t 10.0.0.300:80", "10.0.0.300"),
            ("-A -t 10.0.0.1:0", "port 0"),
            ("-A -t 10.0.0.1:80 -p 0", "-p"),
            ("-A -t 10.0.0.1:80 -M 255.255.255.0", "-M"),
            ("-A -t 10.0.0.1:80 -s sh -b mh-port", "mh-port"),
            ("-a -t 10.0.0.1:80", "'real-server'"),
            ("-a -t 10.0.0.1:80 -r 10.0.0.2 -w 70000", "70000"),
            (
                "-a -t 10.0.0.1:80 -r 10.0.0.2 -g -i",
                "one forwarding method",
            ),
            ("-A -f 1 -s rr", "port-0 service"),
            ("-A -t [2001:db8::80:80 -s rr", "no ']'"),
            ("-A -t [2001:db8::80]80 -s rr", "':port'"),
            ("--start-daemon master", "docs/ha.md"),
            ("-A -D -t 10.0.0.1:80", "only one command"),
            ("-L -c --stats", "'stats'"),
            ("-L -c -t 10.0.0.1:80", "'service-address'"),
            ("-A -t 10.0.0.1:nosuchport", "nosuchport"),
            ("--set 1 2", "--set"),
            ("-Q", "-Q"),
        ] {
            let err = format!("{:#}", parse_str(line).expect_err(line));
            assert!(err.contains(named), "{line}: {err}");
            assert!(!err.contains('\n'), "{line}: one line: {err}");
        }
    }
}

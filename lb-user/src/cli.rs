//! The `xdplb` command line: ipvsadm's letters, each with a long name, turned into control
//! requests. Parsing rejects malformed input before anything reaches the agent.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
};

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

use crate::addr::{parse_real, parse_service};
use crate::{
    agent::{self, RunOptions},
    config::{Director, Metrics, Timeouts},
    control::{self, Listing, Request, Response, StatsView, DEFAULT_SOCKET},
    datapath::AttachMode,
    health::{Check, HealthCheck},
    state::{
        CheckChange, Forward, Hash, Mac, Protocol, RealSpec, Scheduler, SchedulerSpec, ServiceAddr,
        MAX_WEIGHT,
    },
};
use lb_common::DEFAULT_CONN_MAX;

#[derive(Parser, Debug)]
#[command(
    name = "xdplb",
    version,
    about = "XDP virtual server: LVS-style load balancing in the NIC driver"
)]
pub struct Cli {
    /// The agent's control socket.
    #[arg(long, global = true, env = "XDPLB_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach the director to an interface and serve the control socket; SIGINT/SIGTERM
    /// detach, SIGQUIT leaves the datapath running for the next agent, SIGHUP reloads.
    Run(RunArgs),
    /// Apply the agent's config file again, changing only what differs (as SIGHUP does).
    Reload,
    /// Print the running state as a config file (like ipvsadm -S).
    Save,
    /// Zero all counters (like ipvsadm -Z).
    Zero,
    /// Exit 0 if this director is fit to take traffic: the agent answers, the datapath is
    /// attached to an interface that is up, every service has an available real server, the
    /// connection table is current (sync) and the director is not drained; otherwise print why
    /// and exit 1. For keepalived's vrrp_script.
    Check,
    /// Maintenance: withdraw every announced VIP and fail `check` (keepalived moves the VIP
    /// away), while the datapath keeps forwarding what still arrives.
    Drain,
    /// End maintenance: announce the VIPs (and pass `check`) again.
    Undrain,
    /// Print the manual page (troff), generated from these same definitions:
    /// `xdplb man | man -l -`.
    Man,
    /// Print shell completions: `xdplb completions bash > /etc/bash_completion.d/xdplb`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// A full-screen live view of the director, like top: services and real servers with their
    /// rates, health, connections and weights (s: sort, r: reverse, q: quit).
    Top {
        /// Seconds between refreshes.
        #[arg(long, short = 'd', default_value_t = 1.0, value_name = "SECS", value_parser = parse_interval)]
        delay: f64,
    },
    /// Remove a datapath left running without an agent (after SIGQUIT or a crash).
    Detach {
        #[arg(long, short = 'i', value_name = "IF")]
        iface: String,
        /// Where bpffs is mounted (as given to `run`).
        #[arg(long, env = "XDPLB_BPFFS", default_value = crate::datapath::pin::BPFFS, value_name = "DIR")]
        bpffs: PathBuf,
    },
    /// On a real server: decapsulate LVS/TUN (IPIP) packets for this host's VIPs in XDP, so no
    /// ipip kernel module is needed; runs until SIGINT/SIGTERM.
    Decap {
        /// Interface the tunnelled packets arrive on.
        #[arg(long, short = 'i', value_name = "IF")]
        iface: String,
        /// A VIP to decapsulate for (repeatable); default: every IPv4 address of the host
        /// outside 127.0.0.0/8 and every global IPv6 one, followed as addresses come and go.
        #[arg(long, value_name = "VIP")]
        vip: Vec<IpAddr>,
        #[arg(long, value_enum, default_value = "native")]
        mode: AttachMode,
    },
    /// Add, edit or delete a virtual service (ipvsadm -A/-E/-D).
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
    /// Add, edit or delete a real server of a service (ipvsadm -a/-e/-d).
    Real {
        #[command(subcommand)]
        action: RealAction,
    },
    /// Print the real server the datapath would give new flows from these clients.
    Simulate {
        #[command(flatten)]
        service: ServiceArg,
        /// Client SRC:PORT ([SRC]:PORT for IPv6); repeat it for several flows, or give `-` to read
        /// one per line from stdin.
        #[arg(long, value_name = "SRC:PORT", required = true)]
        from: Vec<String>,
    },
    /// ipvsadm's command line (ipvsadm(8)) and listings, over this agent: `xdplb ipvsadm -Ln`,
    /// `xdplb ipvsadm -A -t VIP:PORT -s wlc`, `ipvsadm-save | xdplb ipvsadm -R`. The binary
    /// does the same when run through a link named ipvsadm (ipvsadm-save: -S,
    /// ipvsadm-restore: -R).
    Ipvsadm {
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<std::ffi::OsString>,
    },
    /// List services and real servers (ipvsadm -L).
    List {
        /// Numeric output (addresses are always shown numerically; accepted for ipvsadm habits).
        #[arg(short = 'n', long)]
        numeric: bool,
        /// Show packet, byte and connection counters.
        #[arg(long)]
        stats: bool,
        /// Show rates per second (measured over one second), like ipvsadm --rate.
        #[arg(long, conflicts_with = "stats")]
        rate: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Show connection sync: the peers, their state, flows sent, received and refused.
        #[arg(long)]
        sync: bool,
    },
    /// Send crafted TCP SYN or UDP frames toward a VIP from many source addresses and ports
    /// (XDP live frames, or the kernel's pktgen), and count what arrives with --sink.
    Pktgen(crate::pktgen::PktgenArgs),
    /// Convert another load balancer's configuration into xdplb's config file, printed on
    /// stdout (`xdplb import keepalived FILE`).
    Import(crate::import::ImportArgs),
}

/// `xdplb run`: either a config file, or the settings on the command line.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Configuration file (TOML, see examples/xdplb.toml): settings, services, real servers.
    #[arg(long, short = 'c', value_name = "FILE", conflicts_with_all = ["iface", "mode", "conn_max", "nat_max", "services_max", "reals_max", "new_flow_limit", "tcp_timeout", "tcp_fin_timeout", "udp_timeout", "tunnel_src", "metrics", "web", "web_token", "web_tls_cert", "web_tls_key", "sync_listen", "sync_peer", "sync_key", "sync_group", "announce_table", "announce_grace"])]
    config: Option<PathBuf>,
    /// Interface that receives the traffic for the virtual services. Repeat it for several
    /// (LVS/NAT's outside and inside interfaces): the first names the director.
    #[arg(
        long,
        short = 'i',
        value_name = "IF",
        required_unless_present = "config"
    )]
    iface: Vec<String>,
    /// XDP attach mode; auto falls back to generic when the driver has no native XDP.
    #[arg(long, value_enum)]
    mode: Option<AttachMode>,
    /// Flows the connection table holds (least recently used ones make room). Default 1000000.
    #[arg(long, value_name = "FLOWS", value_parser = clap::value_parser!(u32).range(1..))]
    conn_max: Option<u32>,
    /// LVS/NAT connections whose replies the director translates (a table sized at start, 160
    /// bytes a connection). 0 on a director without LVS/NAT services gives that memory back.
    /// Default: --conn-max.
    #[arg(long, value_name = "FLOWS")]
    nat_max: Option<u32>,
    /// Services the datapath has room for (its per-service maps are sized at start). Default
    /// 256, at most 65536.
    #[arg(long, value_name = "N")]
    services_max: Option<u32>,
    /// Real servers over all services the datapath has room for (sized at start). Default
    /// 4096, at most 1048576.
    #[arg(long, value_name = "N")]
    reals_max: Option<u32>,
    /// New flows each CPU remembers per second; above it, under a flood, new flows are still
    /// forwarded but not remembered, so established ones keep their entries. 0: no limit.
    /// Default: the table turns over in no less than 8 s (62500 for 1000000 flows on 2 CPUs).
    #[arg(long, value_name = "FLOWS")]
    new_flow_limit: Option<u32>,
    /// Idle timeout of established TCP flows, seconds (ipvsadm --set TCP). Default 900.
    #[arg(long, value_name = "SECS")]
    tcp_timeout: Option<u32>,
    /// Idle timeout of TCP flows after a FIN, seconds (ipvsadm --set TCPFIN). Default 120.
    #[arg(long, value_name = "SECS")]
    tcp_fin_timeout: Option<u32>,
    /// Idle timeout of UDP flows, seconds (ipvsadm --set UDP). Default 300.
    #[arg(long, value_name = "SECS")]
    udp_timeout: Option<u32>,
    /// Source address of LVS/TUN packets, one per family: IPv4 (IPIP; default: the interface's
    /// first IPv4 address) and IPv6 (IPv6-in-IPv6; default: its first global IPv6 address).
    #[arg(long, value_name = "IP")]
    tunnel_src: Vec<IpAddr>,
    /// Serve Prometheus metrics on ADDR (off by default; keep it on localhost or a management
    /// network).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Serve the status page, the read-only HTTP API and /metrics on ADDR (off by default; keep
    /// it on localhost or a management network).
    #[arg(long, value_name = "ADDR")]
    web: Option<std::net::SocketAddr>,
    /// Allow changes through the HTTP API on --web to requests carrying this file's token
    /// (Authorization: Bearer; at least 16 bytes, mode 0600).
    #[arg(long, value_name = "FILE", requires = "web")]
    web_token: Option<PathBuf>,
    /// Serve --web over HTTPS with this certificate chain (PEM; the server's first).
    #[arg(long, value_name = "FILE", requires_all = ["web", "web_tls_key"])]
    web_tls_cert: Option<PathBuf>,
    /// The private key of --web-tls-cert (PEM, mode 0600).
    #[arg(long, value_name = "FILE", requires_all = ["web", "web_tls_cert"])]
    web_tls_key: Option<PathBuf>,
    /// Connection sync: where this director listens for its peers (UDP and TCP) and sends from.
    #[arg(long, value_name = "IP:PORT", requires_all = ["sync_peer", "sync_key"])]
    sync_listen: Option<std::net::SocketAddr>,
    /// Connection sync: a peer director's --sync-listen address (repeat for each peer).
    #[arg(long, value_name = "IP:PORT", requires = "sync_listen")]
    sync_peer: Vec<std::net::SocketAddr>,
    /// Connection sync: the file holding the shared secret (at least 16 bytes, mode 0600).
    #[arg(long, value_name = "FILE", requires = "sync_listen")]
    sync_key: Option<PathBuf>,
    /// Connection sync: send updates once to this multicast group (for every peer) instead of
    /// to each peer.
    #[arg(long, value_name = "GROUP", requires = "sync_listen")]
    sync_group: Option<Ipv4Addr>,
    /// Announce each VIP the director can serve as a route in this kernel routing table, for a
    /// routing daemon (BIRD, FRR) to announce over BGP.
    #[arg(long, value_name = "TABLE")]
    announce_table: Option<u32>,
    /// Seconds the datapath keeps forwarding after SIGTERM withdrew the VIPs. Default 3.
    #[arg(long, value_name = "SECS", requires = "announce_table")]
    announce_grace: Option<u32>,
    /// Where bpffs is (or gets) mounted; the datapath is pinned under it so it outlives the agent.
    #[arg(long, env = "XDPLB_BPFFS", default_value = crate::datapath::pin::BPFFS, value_name = "DIR")]
    bpffs: PathBuf,
    /// Log the datapath's decisions (new flows, drops) through aya-log; costs per packet, off
    /// by default. Shown with XDPLB_LOG=debug.
    #[arg(long)]
    debug_datapath: bool,
}

impl RunArgs {
    fn options(self, socket: PathBuf) -> Result<RunOptions> {
        if let Some(path) = self.config {
            // Parsed once, its sections kept for the agent's reloads.
            let src = crate::config::Source::read(&path)?;
            let read = src.parse_cached(&mut crate::config::ParseCache::default())?;
            return Ok(RunOptions {
                director: read.config.director(),
                timeouts: read.config.timeouts,
                socket,
                config: Some((src, read)),
                bpffs: self.bpffs,
                datapath_log: self.debug_datapath,
            });
        }
        let defaults = Timeouts::default();
        let (mut tunnel_src, mut tunnel_src6) = (None, None);
        for a in &self.tunnel_src {
            let taken = match a {
                IpAddr::V4(v4) => tunnel_src.replace(*v4).is_some(),
                IpAddr::V6(v6) => tunnel_src6.replace(*v6).is_some(),
            };
            if taken {
                bail!("--tunnel-src: give at most one IPv4 and one IPv6 address");
            }
        }
        let director = Director {
            interface: self.iface[0].clone(),
            more_interfaces: self.iface[1..].to_vec(),
            mode: self.mode.unwrap_or(AttachMode::Native),
            conn_max: self.conn_max.unwrap_or(DEFAULT_CONN_MAX),
            nat_max: self.nat_max,
            limits: {
                let default = crate::state::Limits::default();
                crate::state::Limits {
                    services: self.services_max.unwrap_or(default.services),
                    reals: self.reals_max.unwrap_or(default.reals),
                }
            },
            new_flow_limit: self.new_flow_limit,
            tunnel_src,
            tunnel_src6,
            metrics: self.metrics.map(|listen| Metrics { listen }),
            web: self.web.map(|listen| crate::web::Settings {
                listen,
                token_file: self.web_token,
                tls_cert: self.web_tls_cert,
                tls_key: self.web_tls_key,
            }),
            sync: self.sync_listen.map(|listen| crate::sync::Settings {
                listen,
                peers: self.sync_peer,
                key_file: self
                    .sync_key
                    .expect("clap requires --sync-key with --sync-listen"),
                group: self.sync_group,
            }),
            announce: self.announce_table.map(|table| crate::announce::Settings {
                table,
                grace: self
                    .announce_grace
                    .unwrap_or(crate::announce::Settings::DEFAULT_GRACE_SECS),
            }),
        };
        director.validate()?;
        Ok(RunOptions {
            director,
            timeouts: Timeouts {
                tcp: self.tcp_timeout.unwrap_or(defaults.tcp),
                tcp_fin: self.tcp_fin_timeout.unwrap_or(defaults.tcp_fin),
                udp: self.udp_timeout.unwrap_or(defaults.udp),
            },
            socket,
            config: None,
            bpffs: self.bpffs,
            datapath_log: self.debug_datapath,
        })
    }
}

/// Which service: exactly one of -t / -u.
#[derive(Args, Debug, Clone, Copy)]
#[group(required = true, multiple = false)]
pub struct ServiceArg {
    /// TCP service VIP:PORT.
    #[arg(short = 't', long = "tcp-service", value_name = "VIP:PORT", value_parser = parse_service)]
    tcp: Option<SocketAddr>,
    /// UDP service VIP:PORT.
    #[arg(short = 'u', long = "udp-service", value_name = "VIP:PORT", value_parser = parse_service)]
    udp: Option<SocketAddr>,
}

impl ServiceArg {
    fn addr(&self) -> ServiceAddr {
        let (protocol, sa) = match (self.tcp, self.udp) {
            (Some(t), _) => (Protocol::Tcp, t),
            (None, Some(u)) => (Protocol::Udp, u),
            (None, None) => unreachable!("clap requires -t or -u"),
        };
        ServiceAddr {
            protocol,
            vip: sa.ip(),
            port: sa.port(),
        }
    }
}

/// Scheduler options of `service add|edit`.
#[derive(Args, Debug, Clone, Copy)]
pub struct SchedulerArgs {
    /// Scheduler, as ipvsadm names them: rr, wrr, lc, wlc, sed, nq, dh, fo, ovf, sh (source
    /// hashing), or mh (Maglev consistent hashing). Default sh.
    #[arg(short = 's', long, value_enum)]
    scheduler: Option<Scheduler>,
    /// Maglev table size (mh): a prime from 251 to 131071, default 65537, at least 100 per real server.
    #[arg(long, value_name = "PRIME")]
    mh_size: Option<u32>,
    /// What mh hashes: flow (addresses, ports, protocol; default) or src (client affinity).
    #[arg(long, value_enum)]
    hash: Option<Hash>,
    /// Persistence: a client's new connections go to the real server its earlier ones went to,
    /// while any lives and for SECS (default 300) after the last; 0 turns it off.
    #[arg(short = 'p', long, value_name = "SECS", num_args = 0..=1, default_missing_value = "300")]
    persistent: Option<u32>,
    /// Persistence groups clients by this netmask: dotted (IPv4) or a prefix length (IPv6:
    /// 64; IPv4: 24). Default: each address apart (255.255.255.255, 128).
    #[arg(short = 'M', long, value_name = "NETMASK")]
    netmask: Option<crate::state::Netmask>,
}

impl SchedulerArgs {
    fn spec(&self) -> SchedulerSpec {
        SchedulerSpec {
            scheduler: self.scheduler,
            mh_size: self.mh_size,
            hash: self.hash,
            persistent: self.persistent,
            netmask: self.netmask,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum ServiceAction {
    /// Add a virtual service.
    Add {
        #[command(flatten)]
        service: ServiceArg,
        #[command(flatten)]
        scheduler: SchedulerArgs,
    },
    /// Change a virtual service's scheduler or its options (what is not given stays).
    Edit {
        #[command(flatten)]
        service: ServiceArg,
        #[command(flatten)]
        scheduler: SchedulerArgs,
    },
    /// Delete a virtual service and its real servers.
    Del {
        #[command(flatten)]
        service: ServiceArg,
    },
}

#[derive(Args, Debug)]
pub struct RealArgs {
    #[command(flatten)]
    service: ServiceArg,
    /// Real server RIP or RIP:PORT (the port must be the service's, but with -m: DR and TUN do
    /// not rewrite it).
    #[arg(short = 'r', long = "real-server", value_name = "RIP[:PORT]", value_parser = parse_real)]
    real: (IpAddr, Option<u16>),
    /// Direct routing (LVS/DR): rewrite the MAC address; the default.
    #[arg(short = 'g', long = "gatewaying", conflicts_with_all = ["ipip", "masquerading"])]
    gatewaying: bool,
    /// Tunnelling (LVS/TUN): IPIP-encapsulate to the real server, which may be behind routers.
    #[arg(short = 'i', long = "ipip", conflicts_with = "masquerading")]
    ipip: bool,
    /// Masquerading (LVS/NAT): rewrite the destination to RIP:PORT; the real server routes its
    /// replies through the director (its default gateway), which rewrites their source.
    #[arg(short = 'm', long = "masquerading")]
    masquerading: bool,
    /// Weight, 0..=65535 (0: no new clients).
    #[arg(short = 'w', long, value_parser = parse_weight)]
    weight: Option<u32>,
    /// The real server's MAC address, instead of asking the neighbour table.
    #[arg(long, value_name = "MAC")]
    mac: Option<Mac>,
    /// Health check with the default timing (every second, down after 2 failures, up after 2
    /// successes): tcp, http:/PATH or https:/PATH (status 200; https verifies the certificate),
    /// ping, script:COMMAND (exit 0 is up), or none. The config file sets every detail.
    #[arg(long, value_name = "CHECK", value_parser = parse_check)]
    check: Option<CheckArg>,
    /// Upper connection threshold: at this many connections (active and inactive) no new ones
    /// until under the lower threshold (0: none).
    #[arg(short = 'x', long = "u-threshold", value_name = "UPPER")]
    upper: Option<u32>,
    /// Lower connection threshold (0: three quarters of the upper one).
    #[arg(short = 'y', long = "l-threshold", value_name = "LOWER")]
    lower: Option<u32>,
}

/// `top --delay`: 0.1 to 3600 seconds.
fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a delay from 0.1 to 3600 seconds")),
    }
}

/// `--check`'s value: a check, or none (which removes one).
#[derive(Clone, Debug)]
struct CheckArg(Option<HealthCheck>);

fn parse_check(s: &str) -> Result<CheckArg, String> {
    let web = |path: &str, tls: bool| match tls {
        false => Check::Http {
            path: path.to_owned(),
            status: 200,
            body: None,
        },
        true => Check::Https {
            path: path.to_owned(),
            status: 200,
            body: None,
            verify: true,
            sni: None,
            ca_file: None,
        },
    };
    let check = match s {
        "none" => return Ok(CheckArg(None)),
        "tcp" => Check::Tcp,
        "ping" => Check::Ping,
        _ => {
            if let Some(path) = s.strip_prefix("http:") {
                web(path, false)
            } else if let Some(path) = s.strip_prefix("https:") {
                web(path, true)
            } else if let Some(command) = s.strip_prefix("script:") {
                Check::Script {
                    command: command.to_owned(),
                }
            } else {
                return Err(format!(
                    "'{s}' is not a check: tcp, http:/PATH, https:/PATH, ping, script:COMMAND or none"
                ));
            }
        }
    };
    let hc = HealthCheck {
        check,
        ..HealthCheck::default()
    };
    hc.validate().map_err(|e| e.to_string())?;
    Ok(CheckArg(Some(hc)))
}

impl RealArgs {
    fn spec(&self) -> RealSpec {
        RealSpec {
            addr: Some(self.real.0),
            port: self.real.1,
            weight: self.weight,
            forward: if self.ipip {
                Some(Forward::Tunnel)
            } else if self.masquerading {
                Some(Forward::Masq)
            } else {
                self.gatewaying.then_some(Forward::Route)
            },
            mac: self.mac,
            check: self.check.clone().map(|c| CheckChange::from_option(c.0)),
            upper: self.upper,
            lower: self.lower,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum RealAction {
    /// Add a real server to a service (weight 1 unless -w).
    Add(RealArgs),
    /// Change a real server's weight or MAC address.
    Edit(RealArgs),
    /// Remove a real server from a service.
    Del {
        #[command(flatten)]
        service: ServiceArg,
        #[arg(short = 'r', long = "real-server", value_name = "RIP[:PORT]", value_parser = parse_real)]
        real: (IpAddr, Option<u16>),
    },
}

fn parse_weight(s: &str) -> Result<u32, String> {
    match s.parse::<u64>() {
        Ok(w) if w <= MAX_WEIGHT as u64 => Ok(w as u32),
        Ok(w) => Err(format!("weight {w} is out of range 0..={MAX_WEIGHT}")),
        Err(_) => Err(format!("'{s}' is not a weight (0..={MAX_WEIGHT})")),
    }
}

/// Runs a parsed command line.
pub fn execute(cli: Cli) -> Result<()> {
    let request = match cli.command {
        Command::Run(args) => {
            let opts = args.options(cli.socket)?;
            let rt = tokio::runtime::Runtime::new()?;
            return rt.block_on(agent::run(opts));
        }
        Command::Detach { iface, bpffs } => return agent::detach(&bpffs, &iface),
        Command::Man => return manual(&mut std::io::stdout()),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "xdplb", &mut std::io::stdout());
            return Ok(());
        }
        Command::Top { delay } => {
            return crate::top::run(&cli.socket, std::time::Duration::from_secs_f64(delay))
        }
        Command::Pktgen(args) => return crate::pktgen::execute(args),
        Command::Import(args) => return crate::import::execute(args),
        Command::Ipvsadm { args } => return crate::ipvsadm::main(&args, &cli.socket),
        Command::Reload => Request::Reload,
        Command::Zero => Request::Zero { service: None },
        Command::Drain => Request::Drain,
        Command::Undrain => Request::Undrain,
        Command::Check => {
            let answer = control::request_within(
                &cli.socket,
                &Request::Check,
                std::time::Duration::from_secs(CHECK_TIMEOUT_SECS),
            )?;
            let Response::Checked { problem } = answer else {
                bail!("the agent answered a check with something else");
            };
            return match problem {
                None => {
                    println!("ok");
                    Ok(())
                }
                Some(p) => bail!("not ready: {p}"),
            };
        }
        Command::Save => {
            let Response::Saved { config } = control::request(&cli.socket, &Request::Save)? else {
                bail!("the agent answered a save request with something else");
            };
            print!("{config}");
            return Ok(());
        }
        Command::Decap { iface, vip, mode } => {
            let rt = tokio::runtime::Runtime::new()?;
            return rt.block_on(crate::decap::run(&iface, vip, mode));
        }
        Command::Simulate { service, from } => return simulate(&cli.socket, service.addr(), &from),
        Command::Service { action } => match action {
            ServiceAction::Add { service, scheduler } => Request::AddService {
                service: service.addr(),
                scheduler: scheduler.spec(),
            },
            ServiceAction::Edit { service, scheduler } => Request::EditService {
                service: service.addr(),
                scheduler: scheduler.spec(),
            },
            ServiceAction::Del { service } => Request::DelService {
                service: service.addr(),
            },
        },
        Command::Real { action } => match action {
            RealAction::Add(a) => Request::AddReal {
                service: a.service.addr(),
                real: a.spec(),
            },
            RealAction::Edit(a) => Request::EditReal {
                service: a.service.addr(),
                real: a.spec(),
            },
            RealAction::Del { service, real } => Request::DelReal {
                service: service.addr(),
                addr: real.0,
                port: real.1,
            },
        },
        Command::List {
            numeric: _,
            stats,
            rate,
            json,
            sync,
        } => {
            let list = || match control::request(&cli.socket, &Request::List)? {
                Response::Listing(l) => Ok(*l),
                _ => bail!("the agent answered a list request with something else"),
            };
            let listing = if rate {
                let before = list()?;
                let start = std::time::Instant::now();
                std::thread::sleep(std::time::Duration::from_secs(1));
                list()?.per_second(&before, start.elapsed().as_secs_f64())
            } else if stats {
                list()?
            } else {
                list()?.without_stats()
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&listing)?);
            } else if sync {
                print!("{}", format_sync(&listing)?);
            } else {
                print!("{}", format_listing(&listing));
            }
            return Ok(());
        }
    };
    control::request(&cli.socket, &request)?;
    Ok(())
}

/// A clap error as one line naming the problem (clap puts what is missing on the lines after
/// its first); its usage hint would bury it.
pub fn one_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let line: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match line.join(" ") {
        l if l.is_empty() => "error: invalid arguments".to_owned(),
        l => l,
    }
}

/// How long `xdplb check` waits for the agent: keepalived's script timeout is longer.
const CHECK_TIMEOUT_SECS: u64 = 2;

/// `xdplb list --sync`: the director's sync state and one line per peer.
pub fn format_sync(l: &Listing) -> Result<String> {
    let Some(s) = &l.sync else {
        bail!("connection sync is not configured on this director (xdplb run --sync-listen ...)");
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Sync on {}: {} (configuration {})",
        s.listen,
        if s.current { "current" } else { &s.status },
        s.config_digest
    );
    if let Some((peer, flows, secs)) = &s.last_table {
        let _ = writeln!(
            out,
            "Last full table: {flows} flows from {peer}, {secs:.0} s ago"
        );
    }
    let _ = writeln!(
        out,
        "Datapath events: {} written, {} lost (ring full), {} for servers gone",
        s.events_written, s.events_lost, s.events_unnamed
    );
    if !s.rejected.is_empty() {
        let list: Vec<String> = s.rejected.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(out, "Refused messages: {}", list.join(", "));
    }
    let _ = writeln!(
        out,
        "Peer                   State LastContact Config    FlowsSent FlowsRecv  Unknown Unsent Delay(p50/p99)"
    );
    for p in &s.peers {
        let contact = p
            .last_contact_secs
            .map_or("never".to_owned(), |t| format!("{t:.1}s"));
        let config = match p.config_match {
            Some(true) => "same".to_owned(),
            Some(false) => format!("DIFFERS {}", p.config_digest.as_deref().unwrap_or("")),
            None => "?".to_owned(),
        };
        let delay = match (p.delay_p50_us, p.delay_p99_us) {
            (Some(a), Some(b)) => format!("{a}/{b} us"),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<22} {:<5} {:>11} {:<9} {:>9} {:>9} {:>8} {:>6} {}",
            p.address,
            p.state,
            contact,
            config,
            p.flows_sent,
            p.flows_received,
            p.flows_unknown,
            p.datagrams_unsent,
            delay
        );
    }
    Ok(out)
}

/// The manual: a page for the command and one for every subcommand (`xdplb-real-add`, ...), in
/// troff.
pub fn manual(out: &mut dyn std::io::Write) -> Result<()> {
    fn pages(cmd: &clap::Command, name: String, out: &mut dyn std::io::Write) -> Result<()> {
        clap_mangen::Man::new(cmd.clone().name(name.clone())).render(out)?;
        for sub in cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            pages(sub, format!("{name}-{}", sub.get_name()), out)?;
        }
        Ok(())
    }
    pages(
        &<Cli as clap::CommandFactory>::command(),
        "xdplb".into(),
        out,
    )
}

/// `xdplb simulate`: prints "SRC:PORT RIP:PORT" per flow ("-" when no real server would take it).
fn simulate(socket: &std::path::Path, service: ServiceAddr, from: &[String]) -> Result<()> {
    let mut flows_text = Vec::new();
    for f in from {
        if f == "-" {
            flows_text.extend(
                std::io::stdin()
                    .lines()
                    .map_while(Result::ok)
                    .filter(|l| !l.trim().is_empty()),
            );
        } else {
            flows_text.push(f.clone());
        }
    }
    let flows = flows_text
        .iter()
        .map(|f| {
            let sa: SocketAddr = f.trim().parse().map_err(|_| {
                anyhow::anyhow!(
                    "invalid client address '{}': expected SRC:PORT or [SRC]:PORT",
                    f.trim()
                )
            })?;
            Ok((sa.ip(), sa.port()))
        })
        .collect::<Result<Vec<_>>>()?;
    let Response::Simulated { reals } = control::request(
        socket,
        &Request::Simulate {
            service,
            flows: flows.clone(),
        },
    )?
    else {
        bail!("the agent answered a simulate request with something else");
    };
    let mut out = String::new();
    for ((src, sport), real) in flows.iter().zip(reals) {
        let client = SocketAddr::new(*src, *sport);
        let _ = writeln!(out, "{client} {}", real.as_deref().unwrap_or("-"));
    }
    print!("{out}");
    Ok(())
}

fn stats_columns(s: &StatsView) -> String {
    format!(
        "{:>10} {:>12} {:>12} {:>14} {:>14}",
        s.conns, s.packets, s.out_packets, s.bytes, s.out_bytes
    )
}

/// The table `xdplb list` prints, laid out like `ipvsadm -L -n` (with `--stats`, like
/// `ipvsadm -L -n --stats`; DR and TUN replies bypass the director, so only LVS/NAT has
/// outbound counters).
pub fn format_listing(l: &Listing) -> String {
    let stats = l.services.iter().any(|s| s.stats.is_some());
    let mut out = String::new();
    let mode = format!("{:?}", l.mode).to_lowercase();
    let _ = writeln!(
        out,
        "xdplb {} on {} ({mode} XDP)",
        env!("CARGO_PKG_VERSION"),
        l.interface
    );
    if l.agent.as_ref().and_then(|a| a.pins_outlive_agent) == Some(false) {
        let _ = writeln!(
            out,
            "Warning: the datapath dies with this agent (its bpffs is in a private mount namespace): give xdplb run --bpffs a bpffs of the host"
        );
    }
    if stats {
        let _ = writeln!(
            out,
            "Prot LocalAddress:Port                  Conns       InPkts      OutPkts        InBytes       OutBytes"
        );
        let _ = writeln!(out, "  -> RemoteAddress:Port");
    } else {
        let _ = writeln!(out, "Prot LocalAddress:Port Scheduler");
        let _ = writeln!(
            out,
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn MAC               Health"
        );
    }
    for s in &l.services {
        let proto = match s.protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        };
        match &s.stats {
            Some(st) => {
                let _ = writeln!(out, "{proto:<4} {:<28} {}", s.address, stats_columns(st));
            }
            None => {
                let mut options = match (s.mh_size, s.hash) {
                    (Some(size), Some(hash)) => format!(" (size {size}, hash {hash})"),
                    _ => String::new(),
                };
                if let Some(t) = s.persistent {
                    options += &format!(" persistent {t}");
                    if let Some(m) = s.netmask.filter(|m| !m.is_single()) {
                        options += &format!(" mask {m}");
                    }
                }
                let _ = writeln!(out, "{proto:<4} {} {}{options}", s.address, s.scheduler);
            }
        }
        for r in &s.reals {
            match &r.stats {
                Some(st) => {
                    let _ = writeln!(out, "  -> {:<28} {}", r.address, stats_columns(st));
                }
                None => {
                    // Checked real servers show their health, and the last error while there is one.
                    let health = match &r.health {
                        Some(h) => match &h.last_error {
                            Some(e) => format!(" {:<5} ({e})", h.state),
                            None => format!(" {}", h.state),
                        },
                        None => String::new(),
                    };
                    let _ = writeln!(
                        out,
                        "  -> {:<28} {:<7} {:<6} {:<10} {:<9} {}{health}",
                        r.address, r.forward, r.weight, r.active_conns, r.inactive_conns, r.mac
                    );
                }
            }
        }
    }
    if stats && !l.reasons.is_empty() {
        let _ = writeln!(out, "Passed to the kernel / dropped (packets):");
        for (reason, n) in &l.reasons {
            let _ = writeln!(out, "  {reason:<20} {n:>12}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::{Cli, Command};

    /// `xdplb run ARGS`'s director settings, or clap's first line of error.
    fn run_of(args: &[&str]) -> Result<crate::config::Director, String> {
        let all = ["xdplb", "run"].iter().chain(args);
        match Cli::try_parse_from(all) {
            Ok(Cli {
                command: Command::Run(run),
                ..
            }) => Ok(run.options("/tmp/s".into()).unwrap().director),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string().lines().next().unwrap_or_default().to_owned()),
        }
    }

    #[test]
    fn nat_max_is_set_at_start_and_defaults_to_conn_max() {
        let d = run_of(&["--iface", "eth0", "--conn-max", "5000"]).unwrap();
        assert_eq!(d.nat_max(), 5000);
        let d = run_of(&["--iface", "eth0", "--nat-max", "0"]).unwrap();
        assert_eq!((d.nat_max(), d.conn_max), (0, lb_common::DEFAULT_CONN_MAX));
        let e = run_of(&["--config", "x.toml", "--nat-max", "0"]).unwrap_err();
        assert!(e.contains("cannot be used with"), "{e}");
    }

    #[test]
    fn the_manual_has_a_page_per_command_with_its_options() {
        let mut out = Vec::new();
        super::manual(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        for page in [
            "xdplb 1",
            "xdplb-run 1",
            "xdplb-real-add 1",
            "xdplb-service-edit 1",
            "xdplb-pktgen 1",
        ] {
            assert!(text.contains(&format!(".TH {page}")), "no page {page}");
        }
        for option in [
            "tcp\\-service",
            "real\\-server",
            "weight",
            "mh\\-size",
            "config",
        ] {
            assert!(text.contains(option), "no {option} in the manual");
        }
    }
}

#[cfg(test)]
mod check_tests {
    use clap::Parser as _;

    use super::*;

    fn check_of(args: &[&str]) -> Result<Option<CheckChange>, String> {
        let mut all = vec![
            "xdplb",
            "real",
            "add",
            "-t",
            "10.0.0.100:80",
            "-r",
            "10.0.0.11",
        ];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all) {
            Ok(Cli {
                command:
                    Command::Real {
                        action: RealAction::Add(a),
                    },
                ..
            }) => Ok(a.spec().check),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string().lines().next().unwrap_or_default().to_owned()),
        }
    }

    #[test]
    fn check_option() {
        assert_eq!(
            check_of(&[]),
            Ok(None),
            "no --check: keep (or none for a new server)"
        );
        assert_eq!(
            check_of(&["--check", "none"]),
            Ok(Some(CheckChange::Remove))
        );
        let Ok(Some(CheckChange::Set(tcp))) = check_of(&["--check", "tcp"]) else {
            panic!()
        };
        assert_eq!(
            (tcp.check, tcp.interval_ms, tcp.fall),
            (Check::Tcp, 1000, 2)
        );
        let Ok(Some(CheckChange::Set(http))) = check_of(&["--check", "http:/healthz"]) else {
            panic!()
        };
        assert_eq!(
            http.check,
            Check::Http {
                path: "/healthz".into(),
                status: 200,
                body: None
            }
        );
        let set = |arg: &str| match check_of(&["--check", arg]) {
            Ok(Some(CheckChange::Set(c))) => c.check,
            other => panic!("{arg}: {other:?}"),
        };
        assert_eq!(set("ping"), Check::Ping);
        assert_eq!(
            set("https:/"),
            Check::Https {
                path: "/".into(),
                status: 200,
                body: None,
                verify: true,
                sni: None,
                ca_file: None
            }
        );
        assert_eq!(
            set("script:/bin/true --quick"),
            Check::Script {
                command: "/bin/true --quick".into()
            }
        );
        assert!(check_of(&["--check", "icmp"]).unwrap_err().contains(
            "'icmp' is not a check: tcp, http:/PATH, https:/PATH, ping, script:COMMAND or none"
        ));
        assert!(check_of(&["--check", "http:nopath"]).is_err());
        assert!(check_of(&["--check", "script:relative.sh"])
            .unwrap_err()
            .contains("must be an absolute path"));
    }
}

//! The agent (`xdplb run`): owns the datapath of one interface, keeps the desired state, serves
//! the control socket, runs health checks and metrics.
//!
//! - this file: the agent's core, which turns requests, reloads, health transitions and kernel
//!   changes into new states and commits them to the datapath;
//! - `run.rs`: starting (pinning, adopting a running datapath), the event loop, signals, stopping.
//!
//! The datapath is pinned in bpffs and the state saved beside it, so a new agent adopts a running
//! datapath without a dropped packet (after a crash, SIGKILL or SIGQUIT). SIGINT and SIGTERM
//! detach and remove everything (withdrawing announced VIPs first); SIGHUP reloads the config
//! file.
//!
//! Next to the agent, in their own folders: `sync` (connection synchronisation with the other
//! directors) and `announce` (VIP routes for BGP). The agent tells them what changed and asks
//! them what they know; `check` puts it all together for keepalived.

mod run;

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, SystemTime},
};

use anyhow::{anyhow, bail, Result};
use lb_common::DirectorConfig;
use tracing::{error, info, warn};

pub use run::{detach, run, run_dir, RunOptions, RUN_DIR};

use crate::{
    announce::{self, Announcer},
    config::{Config, Director, Reread, Source, Timeouts},
    control::{AnnounceView, Listing, Request, Response},
    datapath::{
        clock::{director_config, with_sync},
        AttachMode, MapWriter,
    },
    health::{Health, Monitor, Target, Transition},
    net::{self, Interface, LinkState},
    state::{self, persist, Forward, Mac, RealSpec, ServiceAddr, State},
    sync::{Directory, SyncDaemon},
};

/// How often kernel-learned MAC addresses (real servers, next hops) and the MTU are re-read.
const REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// How often the next hops LVS/NAT replies missed are looked for: a reply dropped for want of
/// one is retransmitted within a second, and should find it then.
const NEIGH_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often the interface is looked at besides netlink's notifications.
const LINK_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often (at most) the connection counts are checked against the connection table.
const COUNT_INTERVAL: Duration = Duration::from_secs(2);

/// A health-check target: one real server of one service.
type Key = (ServiceAddr, IpAddr);

/// The agent's mutable core: the desired state and the maps it is mirrored into.
pub struct Agent {
    state: State,
    maps: Box<dyn MapWriter>,
    /// The interface the director is named after: the first of `ifaces`.
    iface: Interface,
    /// Every interface the datapath is attached to.
    ifaces: Vec<Interface>,
    mode: AttachMode,
    config: DirectorConfig,
    director: Director,
    /// Whether the reply index has room for LVS/NAT (`nat_max` above 0 when it was made).
    translates_replies: bool,
    /// `--web` over HTTPS: its certificate, read again on reload.
    web_tls: Option<crate::web::tls::Tls>,
    timeouts: Timeouts,
    config_path: Option<PathBuf>,
    /// The state saved beside the pinned datapath, for a restart.
    saver: Option<persist::Saver>,
    monitor: Monitor<Key>,
    started: SystemTime,
    reloads: u64,
    reload_failures: u64,
    /// The config file's parsed sections, for the next reload.
    parse_cache: crate::config::ParseCache,
    /// States committed so far, and how many there were when `parse_cache` was kept: equal,
    /// the state is still the one the cache describes.
    commits: u64,
    kept_at: Option<u64>,
    /// Connection synchronisation, when configured.
    sync: Option<SyncDaemon>,
    /// VIP announcement, when configured.
    announcer: Option<Announcer>,
    /// Maintenance (`xdplb drain`): nothing announced, `check` fails, forwarding goes on.
    drained: bool,
    /// Each of `ifaces` as last seen (up, XDP attached, stacked devices); empty before the
    /// first look.
    links: Vec<LinkState>,
    /// SIGTERM: the VIPs are withdrawn for good.
    stopping: bool,
    /// The outer source address of IPv6 LVS/TUN packets, if the director has one.
    tunnel_src6: Option<std::net::Ipv6Addr>,
    /// Whether the pins outlive the agent (see [`crate::datapath::pin::outlives_agent`]).
    pins_outlive_agent: Option<bool>,
    /// The idle timeouts the connection counts are corrected with (they change on reload).
    count_timeouts: std::sync::Arc<std::sync::Mutex<crate::conntrack::IdleTimeouts>>,
}

/// Why a director with no reply index (started with nat_max 0) refuses LVS/NAT: it would
/// forward the requests and let the kernel have the replies, untranslated.
const NO_NAT: &str = "LVS/NAT needs the reply index, and this director was started with nat_max 0; restart it with room for NAT connections";

/// Refuses a state whose changed services forward by LVS/NAT ([`NO_NAT`]).
fn no_nat(before: &State, next: &State) -> Result<()> {
    for (_, after) in state::service_changes(before, next, false) {
        if let Some(s) = after.filter(|s| s.reals.iter().any(|r| r.forward == Forward::Masq)) {
            bail!("service {}: {NO_NAT}", s.addr);
        }
    }
    Ok(())
}

/// Services parsed by a reload above which the heap is trimmed after it.
const RELEASE_AFTER_PARSING: usize = 100;

/// Gives back to the system the heap a config file's parse used (a large file's document is
/// many times its size, and glibc keeps freed memory for later otherwise).
pub(crate) fn release_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Agent {
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Makes `next` the current state once the datapath holds it.
    fn commit(&mut self, next: State) -> Result<()> {
        if !self.translates_replies {
            no_nat(&self.state, &next)?;
        }
        state::apply(self.maps.as_mut(), &self.state, &next)?;
        self.commits += 1;
        let before = std::mem::replace(&mut self.state, next);
        self.checks_follow(&before);
        if let Some(sync) = &self.sync {
            sync.set_directory(Directory::new(&self.state, &self.config));
        }
        if let Some(saver) = &mut self.saver {
            if let Err(e) = saver.save(self.mode, &before, &self.state) {
                warn!("cannot save the state for a restart: {e:#}");
            }
        }
        Ok(())
    }

    /// Health checks run for exactly the real servers that have one: those of the services
    /// that changed since `before` are set again.
    fn checks_follow(&mut self, before: &State) {
        let changes = state::service_changes(before, &self.state, false);
        let within = changes
            .iter()
            .flat_map(|(old, new)| old.iter().chain(new))
            .flat_map(|s| s.reals.iter().map(|r| (s.addr, r.addr)));
        let targets = changes
            .iter()
            .filter_map(|(_, new)| *new)
            .flat_map(|s| {
                s.reals.iter().filter_map(move |r| {
                    let check = r.check.clone()?;
                    let addr = check.probe_addr(SocketAddr::from((r.addr, r.port)));
                    Some(Target {
                        key: (s.addr, r.addr),
                        addr,
                        check,
                    })
                })
            })
            .collect();
        self.monitor.set_some_targets(within, targets);
    }

    /// At start: the checks begin from the health the saved state knows, so a restarted agent
    /// keeps a dead server out instead of trusting it until `fall` checks fail.
    fn restore_health(&self) {
        for s in self.state.services.values() {
            for r in s.reals.iter().filter(|r| r.health == Health::Down) {
                self.monitor.assume(&(s.addr, r.addr), Health::Down);
            }
        }
    }

    fn listing(&self) -> Result<Listing> {
        let counters = self.maps.counters()?;
        let mut listing = Listing::new(&self.iface.name, self.mode, &self.state, &counters);
        listing.drained = self.drained;
        listing.timeouts = self.timeouts;
        listing.conn_max = self.director.conn_max;
        // What the datapath does, not what was asked: an adopted index of one bucket stays one.
        listing.nat_max = match self.translates_replies {
            true => self.director.nat_max(),
            false => 0,
        };
        listing.agent = Some(crate::control::AgentView {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started: self
                .started
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            reloads: self.reloads,
            reload_failures: self.reload_failures,
            program_id: self.links.first().and_then(|l| l.program_id),
            pins_outlive_agent: self.pins_outlive_agent,
        });
        if self
            .state
            .services
            .values()
            .any(|s| s.persistence.is_some())
        {
            let persistent = self.maps.persistent_conns()?;
            for (s, view) in self.state.services.values().zip(&mut listing.services) {
                for (r, rv) in s.reals.iter().zip(&mut view.reals) {
                    rv.persistent_conns = persistent.get(&r.id).copied().unwrap_or(0);
                }
            }
        }
        if let Some(sync) = &self.sync {
            let mut view = sync.view();
            (view.events_written, view.events_lost) = self.maps.sync_counters()?;
            listing.sync = Some(view);
        }
        listing.announce = self.announcer.as_ref().map(|a| AnnounceView {
            table: a.settings().table,
            announced: a.announced().iter().map(ToString::to_string).collect(),
        });
        Ok(listing)
    }

    pub async fn handle(&mut self, req: Request) -> Response {
        let response = match self.execute(req).await {
            Ok(r) => r,
            Err(e) => Response::error(&e),
        };
        self.follow().await;
        response
    }

    /// Why this director should not take traffic now, if there is a reason: what `xdplb check`
    /// answers, for keepalived's vrrp_script (and what gates announcing VIPs, but for the
    /// real servers, which are per VIP there).
    fn unfit(&self) -> Option<String> {
        if self.drained {
            return Some("drained for maintenance (xdplb undrain ends it)".into());
        }
        if self.stopping {
            return Some("the agent is stopping".into());
        }
        for (iface, link) in self.ifaces.iter().zip(&self.links) {
            if !link.up {
                return Some(format!("interface {} is down", iface.name));
            }
            if !link.xdp_attached {
                return Some(format!("no XDP program is attached to {}", iface.name));
            }
        }
        if let Some(sync) = self.sync.as_ref().filter(|s| !s.is_current()) {
            return Some(format!(
                "the connection table is not current yet: {}",
                sync.view().status
            ));
        }
        None
    }

    /// `xdplb check`: fit to take traffic, with every service able to take new flows.
    fn check(&self) -> Option<String> {
        if let Some(why) = self.unfit() {
            return Some(why);
        }
        if self.state.services.is_empty() {
            return Some("no service is configured".into());
        }
        self.state
            .services
            .values()
            .find(|s| !s.reals.iter().any(|r| r.effective_weight() > 0))
            .map(|s| format!("service {} has no available real server", s.addr))
    }

    /// The VIPs to announce now.
    fn wanted(&self) -> BTreeSet<IpAddr> {
        if self.unfit().is_some() {
            return BTreeSet::new();
        }
        announce::servable(&self.state)
    }

    /// Brings what follows the state up to date: the announced VIPs.
    pub async fn follow(&mut self) {
        if self.announcer.is_none() {
            return;
        }
        let wanted = self.wanted();
        if let Some(a) = &mut self.announcer {
            if *a.announced() != wanted {
                if let Err(e) = a.set(&wanted).await {
                    error!("{e:#}");
                }
            }
        }
    }

    /// Looks at the interfaces again: up or down (sync catches up after a bounce of the
    /// first), XDP still attached, the stacked devices whose MACs are this host's (keepalived's
    /// virtual MACs, on the clients' side or, for LVS/NAT, the real servers' gateway).
    pub async fn link_changed(&mut self) {
        let mut links = Vec::with_capacity(self.ifaces.len());
        for iface in &self.ifaces {
            match net::link_state(iface).await {
                Ok(s) => links.push(s),
                Err(e) => {
                    warn!("cannot read the state of {}: {e:#}", iface.name);
                    return;
                }
            }
        }
        let was_all = std::mem::replace(&mut self.links, links);
        let first = was_all.is_empty();
        for (iface, (was, now)) in self.ifaces.iter().zip(was_all.iter().zip(&self.links)) {
            if was.up != now.up {
                if now.up {
                    info!(interface = %iface.name, "interface up");
                } else {
                    warn!(interface = %iface.name, "interface down");
                }
            }
        }
        let was = was_all.first().cloned().unwrap_or_default();
        let now = self.links[0].clone();
        if let Some(sync) = self.sync.as_ref().filter(|_| !first) {
            // A bounce between two looks still counts: the carrier changed meanwhile.
            if !now.up || was.carrier_changes != now.carrier_changes {
                sync.link_changed(false);
            }
            if now.up {
                sync.link_changed(true);
            }
        }
        let stacked = |links: &[LinkState]| -> Vec<([u8; 6], bool)> {
            links.iter().flat_map(|l| l.stacked_macs.clone()).collect()
        };
        let (was_macs, now_macs) = (stacked(&was_all), stacked(&self.links));
        if was_macs != now_macs || first {
            if let Err(e) = self.maps.set_local_macs(&now_macs) {
                error!("cannot write the stacked devices' MAC addresses: {e:#}");
            } else if !now_macs.is_empty() || !was_macs.is_empty() {
                let macs: Vec<String> = now_macs
                    .iter()
                    .map(|(m, active)| {
                        format!("{}{}", Mac(*m), if *active { "" } else { " (standby)" })
                    })
                    .collect();
                info!(macs = %macs.join(", "), "stacked devices: frames for these MAC addresses are this host's");
            }
        }
        self.follow().await;
    }

    /// SIGTERM with VIPs announced: withdraws them all, for good.
    pub async fn withdraw_all(&mut self) -> Option<Duration> {
        self.stopping = true;
        let a = self.announcer.as_mut()?;
        if let Err(e) = a.set(&BTreeSet::new()).await {
            error!("{e:#}");
        }
        Some(a.settings().grace())
    }

    async fn execute(&mut self, req: Request) -> Result<Response> {
        match req {
            Request::List => Ok(Response::Listing(Box::new(self.listing()?))),
            Request::Connections => Ok(Response::Connections {
                conns: self.connections()?,
            }),
            Request::Simulate { service, flows } => self.simulate(service, &flows),
            Request::Reload => {
                self.reload().await?;
                Ok(Response::Ok)
            }
            Request::Save => {
                let cfg = Config::from_state(self.director.clone(), self.timeouts, &self.state);
                Ok(Response::Saved {
                    config: cfg.to_toml()?,
                })
            }
            Request::Zero { service } => {
                match service {
                    Some(addr) => {
                        let svc = self.state.service(&addr)?;
                        let reals: Vec<u32> = svc.reals.iter().map(|r| r.id).collect();
                        self.maps.reset_counters(&[svc.id], &reals)?;
                    }
                    None => {
                        self.maps.reset_all_counters()?;
                        if let Some(sync) = &self.sync {
                            sync.zero();
                        }
                    }
                }
                Ok(Response::Ok)
            }
            Request::SetTimeouts { tcp, tcp_fin, udp } => {
                let t = Timeouts {
                    tcp: tcp.unwrap_or(self.timeouts.tcp),
                    tcp_fin: tcp_fin.unwrap_or(self.timeouts.tcp_fin),
                    udp: udp.unwrap_or(self.timeouts.udp),
                };
                self.set_timeouts(t)?;
                Ok(Response::Ok)
            }
            Request::Check => Ok(Response::Checked {
                problem: self.check(),
            }),
            Request::Drain | Request::Undrain => {
                let drain = req == Request::Drain;
                if drain != self.drained {
                    self.drained = drain;
                    self.save_drained();
                    match drain {
                        true => warn!("drained: every VIP is withdrawn, forwarding goes on"),
                        false => info!("undrained: VIPs are announced again"),
                    }
                }
                Ok(Response::Ok)
            }
            Request::Batch { requests } => {
                // Every change on top of the one before; the datapath sees only the result.
                let mut next = self.state.clone();
                for (label, r) in requests {
                    next = self
                        .changed(&next, r)
                        .await
                        .map_err(|e| anyhow!("{label}: {e:#}"))?;
                }
                let next = self.routed(next, false).await?;
                self.commit(next)?;
                Ok(Response::Ok)
            }
            change => {
                let next = self.changed(&self.state, change).await?;
                let next = self.routed(next, false).await?;
                self.commit(next)?;
                Ok(Response::Ok)
            }
        }
    }

    /// The state a change request leads to from `from` (checked, not yet committed).
    async fn changed(&self, from: &State, req: Request) -> Result<State> {
        match req {
            Request::AddService { service, scheduler } => from.add_service(service, &scheduler),
            Request::EditService { service, scheduler } => from.edit_service(service, &scheduler),
            Request::DelService { service } => from.del_service(service),
            Request::Clear => Ok(State::default()),
            Request::AddReal { service, real } => {
                from.check_new_real(service, &real)?;
                let learned = self.learn_mac(&real, None).await?;
                from.add_real_learned(service, &real, learned)
            }
            Request::EditReal { service, real } => {
                // Everything is checked before a changed method makes the agent learn a new MAC.
                from.edit_real(
                    service,
                    &RealSpec {
                        mac: None,
                        ..real.clone()
                    },
                )?;
                let before = real
                    .addr
                    .and_then(|a| from.service(&service).ok()?.real(a).cloned());
                let learned = match before {
                    Some(b) if real.forward.is_some_and(|f| f != b.forward) && !b.pinned_mac => {
                        self.learn_mac(&real, Some(b.forward)).await?
                    }
                    _ => None,
                };
                from.edit_real_learned(service, &real, learned)
            }
            Request::DelReal {
                service,
                addr,
                port,
            } => {
                let listed = from.service(&service)?.real(addr).map(|r| r.port);
                if let (Some(p), Some(listed)) = (port, listed) {
                    if p != listed {
                        return Err(state::no_such_real(SocketAddr::new(addr, p), &service));
                    }
                }
                from.del_real(service, addr)
            }
            other => bail!("{} does not change services or real servers", other.name()),
        }
    }

    /// Which real server new flows would get (`xdplb simulate`).
    fn simulate(&self, service: ServiceAddr, flows: &[(IpAddr, u16)]) -> Result<Response> {
        // The flows in turn, as new flows would come: the round-robin position moves
        // on (the first CPU's), and each flow adds to the chosen server's connections.
        let svc = self.state.service(&service)?;
        let counts = self.maps.counters()?.conns;
        let mut loads = state::Loads {
            conns: counts
                .iter()
                .enumerate()
                .map(|(id, c)| (id as u32, *c))
                .collect(),
            position: self.maps.positions(svc.id)?.first().copied().unwrap_or(0),
            locality: self.maps.locality(svc.id, state::addr_of(service.vip))?,
        };
        // A persistent client goes where its template (or an earlier flow of this
        // simulation) sent it, while that server is up.
        let mut remembered: HashMap<IpAddr, u32> = HashMap::new();
        let mut reals = Vec::new();
        for &(src, sport) in flows {
            let masked = svc.persistence.map(|p| (src, p.netmask.apply(src)));
            let template = match masked {
                Some((src, m)) => match remembered.get(&m) {
                    Some(id) => Some(*id),
                    None => self.maps.template(svc.id, src)?.map(|(id, _)| id),
                },
                None => None,
            };
            let kept = template.and_then(|id| {
                svc.reals
                    .iter()
                    .find(|r| r.id == id && r.health == Health::Up)
            });
            let real = match kept {
                Some(r) => Some(r),
                None => self.state.simulate(&service, src, sport, &mut loads)?,
            };
            if let (Some((_, m)), Some(r)) = (masked, real) {
                remembered.insert(m, r.id);
            }
            reals.push(real.map(|r| SocketAddr::new(r.addr, r.port).to_string()));
        }
        Ok(Response::Simulated { reals })
    }

    /// The live entries of the connection table (ipvsadm -Lc).
    fn connections(&self) -> Result<Vec<crate::control::ConnView>> {
        Ok(crate::conntrack::listing::views(
            &self.maps.connections()?,
            &self.state,
            &crate::conntrack::IdleTimeouts::of(&self.config),
            crate::datapath::clock::jiffies_now()?,
            crate::datapath::clock::ticks_per_second()?,
        ))
    }

    /// Applies the config file again, changing only what differs; a bad file changes nothing.
    async fn reload(&mut self) -> Result<()> {
        let result = self.try_reload().await;
        match &result {
            Ok((parsed, services)) => {
                self.reloads += 1;
                info!("configuration reloaded ({parsed} of {services} services parsed anew)");
            }
            Err(e) => {
                self.reload_failures += 1;
                error!("reload rejected, nothing changed: {e:#}");
            }
        }
        result.map(|_| ())
    }

    /// Reloads; how many of the file's services were parsed anew, of how many.
    async fn try_reload(&mut self) -> Result<(usize, usize)> {
        let path = self.config_path.clone().ok_or_else(|| {
            anyhow!("the agent was started without --config: there is nothing to reload")
        })?;
        let (src, read) = Source::reread(&path, &mut self.parse_cache)?;
        // A renewed certificate: read first, installed only if the whole reload succeeds.
        let renewed = match &self.web_tls {
            Some(tls) => Some(tls.read_again()?),
            None => None,
        };
        let untouched = read.untouched(&self.state, self.kept_at == Some(self.commits));
        if let Err(e) = self.apply_read(&path, &read, &untouched, &src).await {
            // The file put right then parses only what changed since this one.
            self.parse_cache.keep_unapplied(src.text, read);
            return Err(e);
        }
        if let (Some(tls), Some(renewed)) = (&self.web_tls, renewed) {
            tls.install(renewed);
        }
        // A reload that parsed little leaves little to give back.
        let (parsed, services) = (read.parsed(), read.config.services.len());
        self.parse_cache
            .keep(src.text, read, &untouched, &self.state);
        self.kept_at = Some(self.commits);
        if parsed > RELEASE_AFTER_PARSING {
            release_memory();
        }
        Ok((parsed, services))
    }

    /// Commits the state a file read again describes, skipping its `untouched` services.
    async fn apply_read(
        &mut self,
        path: &std::path::Path,
        read: &Reread,
        untouched: &[bool],
        src: &Source,
    ) -> Result<()> {
        let cfg = &read.config;
        if cfg.director() != self.director {
            bail!(
                "{}: interface, mode, conn_max, nat_max, services_max, reals_max, new_flow_limit, tunnel_src(6), metrics, web, sync and announce are fixed while the agent runs; restart it to change them",
                path.display()
            );
        }
        let next = self.state_from(read, untouched, src).await?;
        self.set_timeouts(cfg.timeouts)?;
        self.commit(next)
    }

    /// `next` with the interface toward each of its real servers, from the kernel's routes:
    /// those it did not know yet, or (`all`) every one. With one interface there is nothing to
    /// choose: frames leave where they came in.
    async fn routed(&self, next: State, all: bool) -> Result<State> {
        if self.ifaces.len() < 2 {
            return Ok(next);
        }
        let mut egress = next.egress.clone();
        let addrs: BTreeSet<IpAddr> = next
            .services
            .values()
            .flat_map(|s| s.reals.iter().map(|r| r.addr))
            .collect();
        for addr in addrs {
            if all || !egress.contains_key(&addr) {
                match net::egress(&self.ifaces, addr).await {
                    Ok(index) => {
                        egress.insert(addr, index);
                    }
                    Err(e) if all => warn!("keeping the last interface toward {addr}: {e:#}"),
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(next.with_egress(egress))
    }

    /// Has the kernel resolve the next hops LVS/NAT replies found no neighbour entry for.
    pub async fn resolve_misses(&mut self) {
        for (addr, index) in self.maps.take_neigh_misses() {
            let addr = state::ip_of(&addr);
            let Some(iface) = self.ifaces.iter().find(|i| i.index == index) else {
                continue;
            };
            if let Err(e) = net::resolve_later(iface, addr).await {
                warn!("cannot resolve {addr} on {}: {e:#}", iface.name);
            }
        }
    }

    /// New connection-table idle timeouts, for the datapath and the count correction.
    fn set_timeouts(&mut self, timeouts: Timeouts) -> Result<()> {
        if timeouts == self.timeouts {
            return Ok(());
        }
        let config = with_sync(
            director_config(
                self.config.mac,
                &timeouts,
                self.config.mtu,
                self.config.tunnel_src,
            )?,
            self.sync.is_some(),
        );
        self.maps.set_config(&config)?;
        self.config = config;
        self.timeouts = timeouts;
        *self.count_timeouts.lock().unwrap() = crate::conntrack::IdleTimeouts::of(&config);
        Ok(())
    }

    /// The state a file describes, reached from the current one; learns the MACs it needs
    /// first.
    async fn state_from(&self, read: &Reread, skip: &[bool], src: &Source) -> Result<State> {
        let cfg = &read.config;
        let mut learned = HashMap::new();
        for need in cfg.macs_needed_skipping(&self.state, skip) {
            let spec = RealSpec {
                addr: Some(need.addr),
                forward: Some(need.forward),
                ..Default::default()
            };
            let mac = self
                .learn_mac(&spec, None)
                .await
                .map_err(|e| src.error_at(&need.span, format!("{e:#}")))?;
            learned.insert(
                (need.service, need.addr),
                mac.expect("no MAC given, so one was learned"),
            );
        }
        let next = cfg.apply_skipping(&self.state, &learned, src, skip)?;
        self.routed(next, false).await
    }

    /// The MAC address frames for this real server go to, from the kernel's routes and
    /// neighbours, unless --mac gave it. Called after everything else is checked, so bad input
    /// never causes ARP traffic.
    async fn learn_mac(&self, real: &RealSpec, current: Option<Forward>) -> Result<Option<Mac>> {
        let forward = real.forward.or(current).unwrap_or_default();
        if forward == Forward::Masq && !self.translates_replies {
            bail!("{NO_NAT}");
        }
        let v6 = real.addr.is_some_and(|a| a.is_ipv6());
        if let Some(off) = self
            .ifaces
            .iter()
            .find(|i| forward == Forward::Masq && !net::forwarding(i, v6))
        {
            let fix = match v6 {
                true => "net.ipv6.conf.all.forwarding=1",
                false => "net.ipv4.ip_forward=1",
            };
            bail!(
                "LVS/NAT needs IP forwarding on the director, which routes the real servers' replies (off on {}): sysctl -w {fix}",
                off.name
            );
        }
        let Some(addr) = real.addr.filter(|_| real.mac.is_none()) else {
            return Ok(None);
        };
        if forward == Forward::Tunnel {
            let has_source = match addr {
                IpAddr::V4(_) => self.config.tunnel_src != [0; 16],
                IpAddr::V6(_) => self.tunnel_src6.is_some(),
            };
            if !has_source {
                let family = if addr.is_ipv4() {
                    "IPv4"
                } else {
                    "global IPv6"
                };
                bail!(
                    "LVS/TUN needs a tunnel source address: {} has no {family} address; start the agent with --tunnel-src",
                    self.iface.name
                );
            }
        }
        Ok(Some(Mac(resolve_mac(&self.ifaces, forward, addr).await?)))
    }

    /// Re-reads every kernel-learned MAC and the interface MTU; writes what changed.
    async fn refresh(&mut self) -> Result<()> {
        let mut learned = Vec::new();
        for svc in self.state.services.values() {
            for r in svc.reals.iter().filter(|r| !r.pinned_mac) {
                match resolve_mac(&self.ifaces, r.forward, r.addr).await {
                    Ok(mac) if Mac(mac) != r.mac => learned.push((svc.addr, r.addr, Mac(mac))),
                    Ok(_) => {}
                    Err(e) => warn!("keeping the last MAC of {}: {e:#}", r.addr),
                }
            }
        }
        let next = self.state.with_learned_macs(&learned);
        let next = self.routed(next, true).await?;
        if next != self.state {
            self.commit(next)?;
        }
        let mtu = net::interface(&self.iface.name).await?.mtu;
        if mtu != self.config.mtu {
            self.config.mtu = mtu;
            self.maps.set_config(&self.config)?;
        }
        // Someone may have removed an announced route: read the table again.
        let wanted = self.wanted();
        if let Some(a) = &mut self.announcer {
            a.resync(&wanted).await?;
        }
        Ok(())
    }

    /// A health transition: the real server leaves (or rejoins) its service's table.
    fn health_changed(&mut self, t: Transition<Key>) {
        let ((service, addr), health, error) = (t.key, t.health, t.error);
        match health {
            Health::Down => {
                warn!(%service, real = %addr, error = error.as_deref().unwrap_or(""), "real server down")
            }
            Health::Up => info!(%service, real = %addr, "real server up"),
        }
        let next = match self.state.set_health(service, addr, health, error) {
            Ok(next) => next,
            Err(_) => return, // removed meanwhile
        };
        if let Err(e) = self.commit(next) {
            error!("cannot apply the health change of {addr}: {e:#}");
        }
        if let Ok(svc) = self.state.service(&service) {
            if !svc.reals.is_empty() && svc.reals.iter().all(|r| r.effective_weight() == 0) {
                error!(%service, "no real server can take new flows: every one is down or drained; new connections are dropped");
            }
        }
    }

    /// Drain survives a restart of the agent (not a stop): a file beside the saved state.
    fn save_drained(&self) {
        let Some(path) = self
            .saver
            .as_ref()
            .map(|s| s.path().with_file_name("drained"))
        else {
            return;
        };
        let result = match self.drained {
            true => std::fs::write(&path, b""),
            false => std::fs::remove_file(&path).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            }),
        };
        if let Err(e) = result {
            warn!("cannot record the drain in {}: {e}", path.display());
        }
    }
}

/// Where frames for a real server go: itself (DR) or the next hop toward it (TUN, NAT).
async fn resolve_mac(ifaces: &[Interface], forward: Forward, addr: IpAddr) -> Result<[u8; 6]> {
    let (mac, _) = match forward {
        Forward::Route => net::real_neighbour(ifaces, addr).await?,
        Forward::Tunnel | Forward::Masq => net::next_hop(ifaces, addr).await?,
    };
    Ok(mac)
}

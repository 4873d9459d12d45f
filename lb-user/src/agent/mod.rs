//! The agent (`xdplb run`): owns the datapath of one interface, keeps the desired state, serves
//! the control socket, runs health checks and metrics.
//!
//! - this file: the agent's core, which turns requests, reloads, health transitions and kernel
//!   changes into new states and commits them to the datapath;
//! - `run.rs`: starting (pinning, adopting a running datapath), the event loop, signals, stopping.
//!
//! The datapath is pinned in bpffs and the state saved beside it, so a new agent adopts a running
//! datapath without a dropped packet (after a crash, SIGKILL or SIGQUIT). SIGINT and SIGTERM
//! detach and remove everything; SIGHUP reloads the config file.

mod run;

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::{Duration, SystemTime},
};

use anyhow::{anyhow, bail, Result};
use lb_common::DirectorConfig;
use tracing::{error, info, warn};

pub use run::{detach, run, run_dir, RunOptions, RUN_DIR};

use crate::{
    config::{Config, Director, Source, Timeouts},
    control::{Listing, Request, Response},
    datapath::{clock::director_config, AttachMode, MapWriter},
    health::{Health, Monitor, Target, Transition},
    metrics,
    net::{self, Interface},
    state::{self, persist, Forward, Mac, RealSpec, ServiceAddr, State},
};

/// How often kernel-learned MAC addresses (real servers, next hops) and the MTU are re-read.
const REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// A health-check target: one real server of one service.
type Key = (ServiceAddr, Ipv4Addr);

/// The agent's mutable core: the desired state and the maps it is mirrored into.
pub struct Agent {
    state: State,
    maps: Box<dyn MapWriter>,
    iface: Interface,
    mode: AttachMode,
    config: DirectorConfig,
    director: Director,
    timeouts: Timeouts,
    config_path: Option<PathBuf>,
    state_file: Option<PathBuf>,
    monitor: Monitor<Key>,
    started: SystemTime,
    reloads: u64,
    reload_failures: u64,
}

impl Agent {
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Makes `next` the current state once the datapath holds it.
    fn commit(&mut self, next: State) -> Result<()> {
        state::apply(self.maps.as_mut(), &self.state, &next)?;
        self.state = next;
        self.checks_follow_state();
        if let Some(path) = &self.state_file {
            if let Err(e) = persist::save(path, self.mode, &self.state) {
                warn!("cannot save the state for a restart: {e:#}");
            }
        }
        Ok(())
    }

    /// Health checks run for exactly the real servers that have one.
    fn checks_follow_state(&mut self) {
        let targets = self
            .state
            .services
            .values()
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
        self.monitor.set_targets(targets);
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
        Ok(Listing::new(
            &self.iface.name,
            self.mode,
            &self.state,
            &counters,
        ))
    }

    pub async fn handle(&mut self, req: Request) -> Response {
        match self.execute(req).await {
            Ok(r) => r,
            Err(e) => Response::Error {
                message: format!("{e:#}").replace('\n', " "),
            },
        }
    }

    async fn execute(&mut self, req: Request) -> Result<Response> {
        let next = match req {
            Request::List => return Ok(Response::Listing(self.listing()?)),
            Request::AddService { service, scheduler } => {
                self.state.add_service(service, &scheduler)?
            }
            Request::EditService { service, scheduler } => {
                self.state.edit_service(service, &scheduler)?
            }
            Request::DelService { service } => self.state.del_service(service)?,
            Request::AddReal { service, real } => {
                self.state.check_new_real(service, &real)?;
                let learned = self.learn_mac(&real, None).await?;
                self.state.add_real_learned(service, &real, learned)?
            }
            Request::EditReal { service, real } => {
                // Everything is checked before a changed method makes the agent learn a new MAC.
                self.state.edit_real(
                    service,
                    &RealSpec {
                        mac: None,
                        ..real.clone()
                    },
                )?;
                let before = real
                    .addr
                    .and_then(|a| self.state.service(&service).ok()?.real(a).cloned());
                let learned = match before {
                    Some(b) if real.forward.is_some_and(|f| f != b.forward) && !b.pinned_mac => {
                        self.learn_mac(&real, Some(b.forward)).await?
                    }
                    _ => None,
                };
                self.state.edit_real_learned(service, &real, learned)?
            }
            Request::DelReal { service, addr } => self.state.del_real(service, addr)?,
            Request::Simulate { service, flows } => {
                let reals = flows
                    .iter()
                    .map(|&(src, sport)| {
                        let real = self.state.simulate(&service, src, sport)?;
                        Ok(real.map(|r| format!("{}:{}", r.addr, r.port)))
                    })
                    .collect::<Result<_>>()?;
                return Ok(Response::Simulated { reals });
            }
            Request::Reload => {
                self.reload().await?;
                return Ok(Response::Ok);
            }
            Request::Save => {
                let cfg = Config::from_state(self.director.clone(), self.timeouts, &self.state);
                return Ok(Response::Saved {
                    config: cfg.to_toml()?,
                });
            }
            Request::Zero => {
                self.maps.reset_all_counters()?;
                return Ok(Response::Ok);
            }
        };
        self.commit(next)?;
        Ok(Response::Ok)
    }

    /// Applies the config file again, changing only what differs; a bad file changes nothing.
    async fn reload(&mut self) -> Result<()> {
        let result = self.try_reload().await;
        match &result {
            Ok(()) => {
                self.reloads += 1;
                info!("configuration reloaded");
            }
            Err(e) => {
                self.reload_failures += 1;
                error!("reload rejected, nothing changed: {e:#}");
            }
        }
        result
    }

    async fn try_reload(&mut self) -> Result<()> {
        let path = self.config_path.clone().ok_or_else(|| {
            anyhow!("the agent was started without --config: there is nothing to reload")
        })?;
        let src = Source::read(&path)?;
        let cfg = src.parse()?;
        if cfg.director() != self.director {
            bail!(
                "{}: interface, mode, conn_max, tunnel_src and metrics are fixed while the agent runs; restart it to change them",
                path.display()
            );
        }
        let next = self.state_from(&cfg, &src).await?;
        if cfg.timeouts != self.timeouts {
            let config = director_config(
                self.config.mac,
                &cfg.timeouts,
                self.config.mtu,
                self.config.tunnel_src,
            )?;
            self.maps.set_config(&config)?;
            self.config = config;
            self.timeouts = cfg.timeouts;
        }
        self.commit(next)
    }

    /// The state `cfg` describes, reached from the current one; learns the MACs it needs first.
    async fn state_from(&self, cfg: &Config, src: &Source) -> Result<State> {
        let mut learned = HashMap::new();
        for need in cfg.macs_needed(&self.state) {
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
        cfg.apply_to(&self.state, &learned, src)
    }

    /// The MAC address frames for this real server go to, from the kernel's routes and
    /// neighbours, unless --mac gave it. Called after everything else is checked, so bad input
    /// never causes ARP traffic.
    async fn learn_mac(&self, real: &RealSpec, current: Option<Forward>) -> Result<Option<Mac>> {
        let Some(addr) = real.addr.filter(|_| real.mac.is_none()) else {
            return Ok(None);
        };
        let forward = real.forward.or(current).unwrap_or_default();
        if forward == Forward::Tunnel && self.config.tunnel_src == [0; 16] {
            bail!(
                "LVS/TUN needs a tunnel source address: {} has no IPv4 address; start the agent with --tunnel-src",
                self.iface.name
            );
        }
        Ok(Some(Mac(resolve_mac(&self.iface, forward, addr).await?)))
    }

    /// Re-reads every kernel-learned MAC and the interface MTU; writes what changed.
    async fn refresh(&mut self) -> Result<()> {
        let mut learned = Vec::new();
        for svc in self.state.services.values() {
            for r in svc.reals.iter().filter(|r| !r.pinned_mac) {
                match resolve_mac(&self.iface, r.forward, r.addr).await {
                    Ok(mac) if Mac(mac) != r.mac => learned.push((svc.addr, r.addr, Mac(mac))),
                    Ok(_) => {}
                    Err(e) => warn!("keeping the last MAC of {}: {e:#}", r.addr),
                }
            }
        }
        if !learned.is_empty() {
            let next = self.state.with_learned_macs(&learned);
            self.commit(next)?;
        }
        let mtu = net::interface(&self.iface.name).await?.mtu;
        if mtu != self.config.mtu {
            self.config.mtu = mtu;
            self.maps.set_config(&self.config)?;
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

    fn metrics_text(&self) -> Result<String> {
        let info = metrics::AgentInfo {
            version: env!("CARGO_PKG_VERSION"),
            interface: self.iface.name.clone(),
            mode: format!("{:?}", self.mode).to_lowercase(),
            program_id: None,
            started: self.started,
            reloads: self.reloads,
            reload_failures: self.reload_failures,
        };
        let listing = self.listing()?;
        Ok(metrics::render(&listing, &info, |_, r| {
            r.health.as_ref().map(|h| h.state == Health::Up)
        }))
    }
}

/// Where frames for a real server go: itself (DR) or the next hop toward it (TUN).
async fn resolve_mac(iface: &Interface, forward: Forward, addr: Ipv4Addr) -> Result<[u8; 6]> {
    match forward {
        Forward::Route => net::resolve_real_mac(iface, addr).await,
        Forward::Tunnel => net::resolve_next_hop_mac(iface, addr).await,
    }
}

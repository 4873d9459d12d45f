//! The configuration file (TOML): the director's settings and its services and real servers.
//!
//! A file is parsed and checked as a whole; any error names the file, the line and the reason on
//! one line, and nothing is applied. Applying a file to a running state changes only what
//! differs: services and real servers keep their ids, so unchanged services keep their tables and
//! their flows. `xdplb save` writes the running state back in this format.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use lb_common::{DirectorConfig, DEFAULT_CONN_MAX};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::{
    datapath::AttachMode,
    health::HealthCheck,
    state::{
        CheckChange, Forward, Hash, Limits, Mac, Protocol, RealSpec, Scheduler, SchedulerSpec,
        ServiceAddr, State,
    },
};

fn default_mode() -> AttachMode {
    AttachMode::Native
}

fn default_conn_max() -> u32 {
    DEFAULT_CONN_MAX
}

fn default_services_max() -> u32 {
    Limits::default().services
}

fn default_reals_max() -> u32 {
    Limits::default().reals
}

fn is_default_services_max(v: &u32) -> bool {
    *v == default_services_max()
}

fn is_default_reals_max(v: &u32) -> bool {
    *v == default_reals_max()
}

fn default_weight() -> u32 {
    1
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Connection-table idle timeouts, seconds (ipvsadm --set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    pub tcp: u32,
    pub tcp_fin: u32,
    pub udp: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp: DirectorConfig::DEFAULT_TCP_TIMEOUT,
            tcp_fin: DirectorConfig::DEFAULT_TCP_FIN_TIMEOUT,
            udp: DirectorConfig::DEFAULT_UDP_TIMEOUT,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Where Prometheus scrapes: keep it on localhost or a management network.
    pub listen: SocketAddr,
}

/// The director's own settings: fixed while the agent runs (a reload must not change them).
#[derive(Clone, Debug, PartialEq)]
pub struct Director {
    /// The interface the director is named after (its pins, its lock, its listing).
    pub interface: String,
    /// The others it is attached to too (LVS/NAT's inside interface, say).
    pub more_interfaces: Vec<String>,
    pub mode: AttachMode,
    pub conn_max: u32,
    /// LVS/NAT connections whose replies the director translates (the reply index's size);
    /// 0: no LVS/NAT service; None: `conn_max`.
    pub nat_max: Option<u32>,
    /// Room for services and real servers in the datapath's maps.
    pub limits: Limits,
    /// New flows each CPU remembers per second (the new-flow guard); 0: no limit; None: from
    /// the table's size ([`lb_common::default_new_flow_limit`]).
    pub new_flow_limit: Option<u32>,
    pub tunnel_src: Option<Ipv4Addr>,
    /// The outer source of IPv6 LVS/TUN packets; default: the interface's first global IPv6
    /// address.
    pub tunnel_src6: Option<Ipv6Addr>,
    pub metrics: Option<Metrics>,
    /// The status page and the HTTP API on TCP.
    pub web: Option<crate::web::Settings>,
    /// Connection synchronisation with other directors.
    pub sync: Option<crate::sync::Settings>,
    /// Announcing VIPs through a routing table (ECMP with BGP).
    pub announce: Option<crate::announce::Settings>,
}

impl Director {
    /// The reply index's size: `nat_max`, or as many as the connection table holds.
    pub fn nat_max(&self) -> u32 {
        self.nat_max.unwrap_or(self.conn_max)
    }

    /// Every interface, the first one first.
    pub fn interfaces(&self) -> Vec<&str> {
        std::iter::once(self.interface.as_str())
            .chain(self.more_interfaces.iter().map(String::as_str))
            .collect()
    }

    fn check_interfaces(&self) -> Result<()> {
        let all = self.interfaces();
        if let Some((_, dup)) = all.iter().enumerate().find(|(i, n)| all[..*i].contains(n)) {
            bail!("interface {dup} is given twice");
        }
        Ok(())
    }

    /// Checks the settings that can be checked without the kernel.
    pub fn validate(&self) -> Result<()> {
        self.check_interfaces()?;
        crate::state::check_limits(self.limits)?;
        if let Some(s) = &self.sync {
            s.validate()?;
            s.load_key()?;
        }
        if let Some(a) = &self.announce {
            a.validate()?;
        }
        if let Some(web) = &self.web {
            web.validate()?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealConfig {
    pub address: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub forward: Forward,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Without it the agent learns the MAC (DR: the real server's, TUN: the next hop's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<HealthCheck>,
    /// Connection thresholds (ipvsadm --u-threshold, --l-threshold): 0 for none.
    #[serde(default, skip_serializing_if = "is_default")]
    pub u_threshold: u32,
    #[serde(default, skip_serializing_if = "is_default")]
    pub l_threshold: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub protocol: Protocol,
    pub vip: IpAddr,
    pub port: u16,
    #[serde(default, skip_serializing_if = "is_default")]
    pub scheduler: Scheduler,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mh_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<Hash>,
    /// Persistence timeout in seconds (ipvsadm -p); absent: not persistent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent: Option<u32>,
    /// The netmask persistent clients are grouped by (ipvsadm -M).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netmask: Option<crate::state::Netmask>,
    #[serde(default, rename = "real")]
    pub reals: Vec<Spanned<RealConfig>>,
}

impl ServiceConfig {
    pub fn addr(&self) -> ServiceAddr {
        ServiceAddr {
            protocol: self.protocol,
            vip: self.vip,
            port: self.port,
        }
    }

    fn scheduler_spec(&self) -> SchedulerSpec {
        SchedulerSpec {
            scheduler: Some(self.scheduler),
            mh_size: self.mh_size,
            hash: self.hash,
            persistent: Some(self.persistent.unwrap_or(0)),
            netmask: self.netmask,
        }
    }
}

/// A whole configuration file: the director's settings (as [`Director`], which serde cannot
/// flatten together with `deny_unknown_fields`), timeouts, services.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The interface, or `interfaces`: several, the first one naming the director.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub interface: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
    #[serde(default = "default_mode")]
    pub mode: AttachMode,
    #[serde(default = "default_conn_max")]
    pub conn_max: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_max: Option<u32>,
    #[serde(
        default = "default_services_max",
        skip_serializing_if = "is_default_services_max"
    )]
    pub services_max: u32,
    #[serde(
        default = "default_reals_max",
        skip_serializing_if = "is_default_reals_max"
    )]
    pub reals_max: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_flow_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_src: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_src6: Option<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<Spanned<crate::web::Settings>>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<Spanned<crate::sync::Settings>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<Spanned<crate::announce::Settings>>,
    #[serde(default, rename = "service")]
    pub services: Vec<Spanned<ServiceConfig>>,
}

/// A file's text, to turn byte spans into "FILE:LINE:" prefixes.
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    pub fn read(path: &Path) -> Result<Self> {
        Self::from_bytes(path, "", Self::bytes(path)?, (0, 0))
    }

    fn bytes(path: &Path) -> Result<Vec<u8>> {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    }

    /// The file `path` read as `bytes`, which have `same` bytes in common at their start and
    /// end with `like`, text already checked ([`sections::text_like`]).
    fn from_bytes(path: &Path, like: &str, bytes: Vec<u8>, same: (usize, usize)) -> Result<Self> {
        let text = sections::text_like(like, bytes, same)
            .map_err(|line| anyhow!("{}:{line}: not UTF-8 text", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            text,
        })
    }

    fn line(&self, span: &Range<usize>) -> usize {
        self.text[..span.start.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    /// "FILE:LINE: reason", one line.
    pub fn error_at(&self, span: &Range<usize>, reason: impl std::fmt::Display) -> anyhow::Error {
        let reason = reason.to_string().replace('\n', " ");
        anyhow!(
            "{}:{}: {}",
            self.path.display(),
            self.line(span),
            reason.trim()
        )
    }

    /// `text`, a part of this file starting at byte `at`, deserialized; errors name their line
    /// in the whole file.
    pub(crate) fn deserialize<T: serde::de::DeserializeOwned>(
        &self,
        text: &str,
        at: usize,
    ) -> Result<T> {
        toml::from_str(text).map_err(|e| match e.span() {
            Some(span) => self.error_at(&(span.start + at..span.end + at), e.message()),
            None => anyhow!(
                "{}: {}",
                self.path.display(),
                e.message().replace('\n', " ")
            ),
        })
    }

    pub fn parse(&self) -> Result<Config> {
        let mut config: Config = self.deserialize(&self.text, 0)?;
        self.check_skipping(&mut config, &[])?;
        Ok(config)
    }

    /// Checks a parsed file as a whole: what serde cannot. The real servers of a service marked
    /// in `known` passed these checks before (the same text, read again).
    pub(crate) fn check_skipping(&self, config: &mut Config, known: &[bool]) -> Result<()> {
        match (config.interface.is_empty(), config.interfaces.is_empty()) {
            (true, true) => bail!(
                "{}: no interface: set interface = \"eth0\" or interfaces = [\"eth0\", \"eth1\"]",
                self.path.display()
            ),
            (false, false) => bail!(
                "{}: set either interface or interfaces, not both",
                self.path.display()
            ),
            _ => {}
        }
        let director = config.director();
        director
            .check_interfaces()
            .and_then(|()| crate::state::check_limits(director.limits).map(|_| ()))
            .map_err(|e| anyhow!("{}: {e:#}", self.path.display()))?;
        // A relative key or token file is next to the config file.
        let dir = self.path.parent().unwrap_or(Path::new(""));
        let beside = |file: &mut PathBuf| {
            if file.is_relative() && !dir.as_os_str().is_empty() {
                *file = dir.join(&*file);
            }
        };
        if let Some(sync) = &mut config.sync {
            beside(&mut sync.get_mut().key_file);
        }
        if let Some(web) = config.web.as_mut().map(|w| w.get_mut()) {
            let files = [&mut web.token_file, &mut web.tls_cert, &mut web.tls_key];
            for file in files.into_iter().flatten() {
                beside(file);
            }
        }
        if let Some(sync) = &config.sync {
            let s = sync.get_ref();
            s.validate()
                .and_then(|_| s.load_key())
                .map_err(|e| self.error_at(&sync.span(), format!("{e:#}")))?;
        }
        if let Some(web) = &config.web {
            web.get_ref()
                .validate()
                .map_err(|e| self.error_at(&web.span(), format!("{e:#}")))?;
        }
        if let Some(announce) = &config.announce {
            announce
                .get_ref()
                .validate()
                .map_err(|e| self.error_at(&announce.span(), format!("{e:#}")))?;
        }
        // Duplicates are caught here, with the line of the second one; everything else is checked
        // by the same state operations the CLI goes through.
        // foldhash: SipHash's resistance to chosen keys buys nothing for the file's own services,
        // and this set is built on every reload of a large one.
        let mut seen =
            foldhash::HashSet::with_capacity_and_hasher(config.services.len(), Default::default());
        for (i, svc) in config.services.iter().enumerate() {
            if !seen.insert(svc.get_ref().addr()) {
                return Err(self.error_at(
                    &svc.span(),
                    format!("duplicate service {}", svc.get_ref().addr()),
                ));
            }
            if known.get(i) == Some(&true) {
                continue;
            }
            let mut reals = BTreeSet::new();
            for real in &svc.get_ref().reals {
                if !reals.insert(real.get_ref().address) {
                    return Err(self.error_at(
                        &real.span(),
                        format!(
                            "duplicate real server {} in service {}",
                            real.get_ref().address,
                            svc.get_ref().addr()
                        ),
                    ));
                }
                if let Some(check) = &real.get_ref().check {
                    check
                        .validate()
                        .map_err(|e| self.error_at(&real.span(), e))?;
                }
            }
        }
        Ok(())
    }
}

/// A real server whose MAC the agent must learn before the file can be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MacNeeded {
    pub service: ServiceAddr,
    pub addr: IpAddr,
    pub forward: Forward,
    pub span: Range<usize>,
}

impl Config {
    /// Real servers that are new, or change their forwarding method, and have no `mac`.
    pub fn macs_needed(&self, current: &State) -> Vec<MacNeeded> {
        self.macs_needed_skipping(current, &[])
    }

    /// [`Config::macs_needed`], skipping the services [`Config::apply_skipping`] skips.
    pub fn macs_needed_skipping(&self, current: &State, skip: &[bool]) -> Vec<MacNeeded> {
        let mut needed = Vec::new();
        for (i, svc) in self.services.iter().enumerate() {
            if skip.get(i) == Some(&true) {
                continue;
            }
            let addr = svc.get_ref().addr();
            for real in &svc.get_ref().reals {
                let r = real.get_ref();
                let existing = current.services.get(&addr).and_then(|s| s.real(r.address));
                let unchanged = existing.is_some_and(|e| e.forward == r.forward && !e.pinned_mac);
                if r.mac.is_none() && !unchanged {
                    needed.push(MacNeeded {
                        service: addr,
                        addr: r.address,
                        forward: r.forward,
                        span: real.span(),
                    });
                }
            }
        }
        needed
    }

    /// The state this file describes, reached from `current` by the same operations the CLI
    /// uses, so ids (and with them tables and flows) of what did not change are kept. `learned`
    /// holds the MACs of [`Config::macs_needed`].
    pub fn apply_to(
        &self,
        current: &State,
        learned: &HashMap<(ServiceAddr, IpAddr), Mac>,
        src: &Source,
    ) -> Result<State> {
        self.apply_skipping(current, learned, src, &[])
    }

    /// [`Config::apply_to`], skipping the services marked in `skip`: those `current` holds as
    /// applying the same text left them ([`Reread::untouched`]), which applying again would
    /// give back unchanged.
    pub fn apply_skipping(
        &self,
        current: &State,
        learned: &HashMap<(ServiceAddr, IpAddr), Mac>,
        src: &Source,
        skip: &[bool],
    ) -> Result<State> {
        let wanted: foldhash::HashSet<ServiceAddr> =
            self.services.iter().map(|s| s.get_ref().addr()).collect();
        // One copy, changed in place (it is dropped whole if any step fails); a service comes
        // out as the same shared one unless the file changes it, and its table is rebuilt once,
        // after all its real servers.
        let mut next = current.clone();
        for addr in current.services.keys().filter(|a| !wanted.contains(a)) {
            next.del_service_in(*addr)?;
        }
        for (i, svc) in self.services.iter().enumerate() {
            if skip.get(i) == Some(&true) {
                continue;
            }
            let at = |e: anyhow::Error| src.error_at(&svc.span(), format!("{e:#}"));
            let cfg = svc.get_ref();
            let addr = cfg.addr();
            let spec = cfg.scheduler_spec();
            let before = next.services.get(&addr).cloned();
            match before.is_some() {
                true => next.edit_service_in(addr, &spec),
                false => next.add_service_in(addr, &spec),
            }
            .map_err(at)?;
            let keep: BTreeSet<IpAddr> = cfg.reals.iter().map(|r| r.get_ref().address).collect();
            let gone: Vec<IpAddr> = next
                .service(&addr)?
                .reals
                .iter()
                .map(|r| r.addr)
                .filter(|a| !keep.contains(a))
                .collect();
            for real in gone {
                next.del_real_in(addr, real)?;
            }
            for real in &cfg.reals {
                let at = |e: anyhow::Error| src.error_at(&real.span(), format!("{e:#}"));
                let r = real.get_ref();
                let spec = RealSpec {
                    addr: Some(r.address),
                    port: r.port,
                    weight: Some(r.weight),
                    forward: Some(r.forward),
                    mac: r.mac,
                    check: Some(CheckChange::from_option(r.check.clone())),
                    upper: Some(r.u_threshold),
                    lower: Some(r.l_threshold),
                };
                let learned = learned.get(&(addr, r.address)).copied();
                match next.service(&addr)?.real(r.address) {
                    Some(_) => next.edit_real_in(addr, &spec, learned),
                    None => next.add_real_in(addr, &spec, learned),
                }
                .map_err(at)?;
                if r.mac.is_none() {
                    // The file has no MAC: the kernel's is used and kept current.
                    next.unpin_mac_in(addr, r.address, learned).map_err(at)?;
                }
            }
            next.settle(&addr, before.as_ref());
        }
        Ok(next)
    }

    pub fn director(&self) -> Director {
        let (interface, more_interfaces) = match self.interfaces.split_first() {
            Some((first, rest)) => (first.clone(), rest.to_vec()),
            None => (self.interface.clone(), Vec::new()),
        };
        Director {
            interface,
            more_interfaces,
            mode: self.mode,
            conn_max: self.conn_max,
            nat_max: self.nat_max,
            limits: Limits {
                services: self.services_max,
                reals: self.reals_max,
            },
            new_flow_limit: self.new_flow_limit,
            tunnel_src: self.tunnel_src,
            tunnel_src6: self.tunnel_src6,
            metrics: self.metrics.clone(),
            web: self.web.as_ref().map(|w| w.get_ref().clone()),
            sync: self.sync.as_ref().map(|s| s.get_ref().clone()),
            announce: self.announce.as_ref().map(|a| a.get_ref().clone()),
        }
    }

    /// The file for a running state (`xdplb save`).
    pub fn from_state(director: Director, timeouts: Timeouts, state: &State) -> Self {
        let services = state
            .services
            .values()
            .map(|s| {
                let mh = s.scheduler == Scheduler::Mh;
                Spanned::new(
                    0..0,
                    ServiceConfig {
                        protocol: s.addr.protocol,
                        vip: s.addr.vip,
                        port: s.addr.port,
                        scheduler: s.scheduler,
                        mh_size: mh.then_some(s.table.len() as u32),
                        hash: mh.then_some(s.hash),
                        persistent: s.persistence.map(|p| p.timeout),
                        netmask: s.persistence.map(|p| p.netmask).filter(|m| !m.is_single()),
                        reals: s
                            .reals
                            .iter()
                            .map(|r| {
                                Spanned::new(
                                    0..0,
                                    RealConfig {
                                        address: r.addr,
                                        port: (r.port != s.addr.port).then_some(r.port),
                                        forward: r.forward,
                                        weight: r.weight,
                                        mac: r.pinned_mac.then_some(r.mac),
                                        check: r.check.clone(),
                                        u_threshold: r.upper,
                                        l_threshold: r.lower,
                                    },
                                )
                            })
                            .collect(),
                    },
                )
            })
            .collect();
        let (interface, interfaces) = match director.more_interfaces.is_empty() {
            true => (director.interface, Vec::new()),
            false => (
                String::new(),
                std::iter::once(director.interface)
                    .chain(director.more_interfaces)
                    .collect(),
            ),
        };
        Config {
            interface,
            interfaces,
            mode: director.mode,
            conn_max: director.conn_max,
            nat_max: director.nat_max,
            services_max: director.limits.services,
            reals_max: director.limits.reals,
            new_flow_limit: director.new_flow_limit,
            tunnel_src: director.tunnel_src,
            tunnel_src6: director.tunnel_src6,
            metrics: director.metrics,
            web: director.web.map(|w| Spanned::new(0..0, w)),
            timeouts,
            sync: director.sync.map(|s| Spanned::new(0..0, s)),
            announce: director.announce.map(|a| Spanned::new(0..0, a)),
            services,
        }
    }

    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string(self)?)
    }
}

mod sections;
pub use sections::{ParseCache, Reread};

#[cfg(test)]
mod tests;

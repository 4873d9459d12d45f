//! keepalived's LVS configuration (keepalived.conf(5), its `virtual_server` blocks) converted to
//! xdplb's config file, with keepalived's semantics: its defaults (wlc, NAT, UDP, a 60 s
//! delay_loop, a 5 s connect_timeout, one retry), its inheritance (virtual server -> real server
//! -> checker), and its rule that a failed checker takes a real server down and one success
//! brings it back. This file: the virtual and real servers; `checks`: the health checkers and
//! their timing; `values`: the values of statements.
//!
//! The result is built with the same state operations as the CLI (`State::add_service`,
//! `add_real`), so a value xdplb refuses is reported at the keepalived line it came from, and
//! rendered with `Config::from_state`, as `xdplb save` does.

mod checks;
mod values;

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use lb_common::DEFAULT_CONN_MAX;

use super::{
    conf::{self, Item, Pos},
    Report,
};
use crate::{
    config::{Config, Director, Timeouts},
    datapath::AttachMode,
    state::{
        CheckChange, Hash, Limits, Netmask, Protocol, RealSpec, Scheduler, SchedulerSpec,
        ServiceAddr, State, MAX_WEIGHT,
    },
};
use checks::{checker, health_check, Checker, Timing};
use values::{boolean, ip, method, port_number, protocol, scheduler, unsigned, value, At, Method};

/// keepalived's defaults (check_data.c, libipvs.h).
const DEFAULT_PERSISTENCE: u32 = 360;
const MAX_PERSISTENCE: u32 = 31 * 24 * 3600;
const DEFAULT_SCHEDULER: Scheduler = Scheduler::Wlc;

/// The top-level blocks of keepalived's other parts (VRRP, BFD, global settings).
const KEEPALIVED_OWN: &[&str] = &[
    "global_defs",
    "vrrp_instance",
    "vrrp_sync_group",
    "vrrp_script",
    "vrrp_track_file",
    "vrrp_track_process",
    "track_file",
    "track_group",
    "static_ipaddress",
    "static_routes",
    "static_rules",
    "garp_group",
    "linkbeat_interfaces",
    "linkbeat_use_polling",
    "interface_up_down_delays",
    "bfd_instance",
    "net_namespace",
    "net_namespace_ipvs",
    "namespace_with_ipsets",
    "instance",
    "use_pid_dir",
    "child_wait_time",
];

/// Reads `file` and converts it: the config file's text, or None when something could not be
/// converted; the report says why, line by line.
pub fn import(
    file: &Path,
    interface: Option<&str>,
    config_id: Option<&str>,
) -> (Option<String>, Report) {
    let mut report = Report::default();
    let items = conf::read(file, config_id, &mut report);
    let text = match convert(&items, file, interface, &mut report) {
        Some(config) if report.errors() == 0 => match super::render(&config, file, &report) {
            Ok(text) => Some(text),
            Err(e) => {
                report.file_error(
                    file,
                    format!("the converted configuration does not load (an importer bug): {e:#}"),
                );
                None
            }
        },
        _ => None,
    };
    (text, report)
}

/// The configuration the items describe; None after an error.
pub fn convert(
    items: &[Item],
    file: &Path,
    interface: Option<&str>,
    report: &mut Report,
) -> Option<Config> {
    let mut services = Vec::new();
    for item in items {
        match item.keyword() {
            "virtual_server" => services.extend(virtual_server(item, report)),
            "virtual_server_group" => report.note(
                &item.pos,
                format!("{}: xdplb has no virtual server groups: skipped", item.text()),
            ),
            "SSL" => report.note(
                &item.pos,
                "SSL: keepalived's own TLS settings: skipped (an https check takes its ca_file itself and sends no client certificate)",
            ),
            k if KEEPALIVED_OWN.contains(&k) => report.note(
                &item.pos,
                format!(
                    "{}: belongs to keepalived itself: skipped (keep running keepalived for VRRP: see docs/ha.md)",
                    item.text()
                ),
            ),
            k => report.error(&item.pos, format!("unknown keyword '{k}'")),
        }
    }
    if services.is_empty() {
        report.file_note(file, "no virtual_server: the configuration has no services");
    }
    let interface = match interface {
        Some(i) => Some(i.to_owned()),
        None => vrrp_interface(items, file, report),
    };

    // Any number of virtual servers: the director is given room for what the file has.
    let mut state = State::with_limits(Limits {
        services: Limits::SERVICES_CEILING,
        reals: Limits::REALS_CEILING,
    });
    let mut seen: BTreeMap<ServiceAddr, Pos> = BTreeMap::new();
    for vs in services {
        if let Some(first) = seen.insert(vs.addr, vs.pos.clone()) {
            report.error(&vs.pos, format!("{}: the same service as {first}", vs.text));
            continue;
        }
        state = match state.add_service(vs.addr, &vs.spec) {
            Ok(s) => s,
            Err(e) => {
                report.error(&vs.pos, format!("{}: {e:#}", vs.text));
                continue;
            }
        };
        for real in vs.reals {
            match state.add_real(vs.addr, &real.spec) {
                Ok(s) => state = s,
                Err(e) => report.error(&real.pos, format!("{}: {e:#}", real.text)),
            }
        }
    }
    if report.errors() > 0 {
        return None;
    }
    let director = Director {
        interface: interface?,
        more_interfaces: Vec::new(),
        mode: AttachMode::Native,
        conn_max: DEFAULT_CONN_MAX,
        nat_max: None,
        limits: state.room_needed(),
        new_flow_limit: None,
        tunnel_src: None,
        tunnel_src6: None,
        metrics: None,
        web: None,
        sync: None,
        announce: None,
    };
    Some(Config::from_state(director, Timeouts::default(), &state))
}

/// The interface every vrrp_instance names (keepalived's LVS blocks name none).
fn vrrp_interface(items: &[Item], file: &Path, report: &mut Report) -> Option<String> {
    let named: Vec<&Item> = items
        .iter()
        .filter(|i| i.keyword() == "vrrp_instance")
        .flat_map(|i| i.block.iter().flatten())
        .filter(|i| i.keyword() == "interface" && i.args().len() == 1)
        .collect();
    let first = named.first();
    match first {
        Some(first) if named.iter().all(|i| i.args() == first.args()) => {
            report.note(
                &first.pos,
                format!(
                    "{}: the director's interface, taken from the vrrp_instance (--interface chooses another)",
                    first.text()
                ),
            );
            Some(first.args()[0].clone())
        }
        Some(_) => {
            report.file_error(file, "the vrrp_instance blocks name different interfaces: choose the one the director receives its VIPs' traffic on with --interface");
            None
        }
        None => {
            report.file_error(file, "no --interface given, and no vrrp_instance names one: give the interface the director receives its VIPs' traffic on");
            None
        }
    }
}

/// A converted virtual_server, ready for the state operations.
struct Service {
    pos: Pos,
    text: String,
    addr: ServiceAddr,
    spec: SchedulerSpec,
    reals: Vec<Real>,
}

struct Real {
    pos: Pos,
    text: String,
    spec: RealSpec,
}

/// What a virtual_server block says, before defaults and inheritance.
#[derive(Default)]
struct VsConf {
    protocol: Option<Protocol>,
    scheduler: Option<Scheduler>,
    method: Option<Method>,
    /// A method was given, even one that was wrong (and reported).
    method_seen: bool,
    persistence: Option<u32>,
    granularity: Option<At<Netmask>>,
    /// Scheduler flags (sh-port, mh-fallback, flag-1, ops, ...).
    flags: Vec<At<String>>,
    weight: Option<u32>,
    inhibit: bool,
    timing: Timing,
    reals: Vec<RsConf>,
}

fn virtual_server(item: &Item, report: &mut Report) -> Option<Service> {
    let text = item.text();
    let args = item.args();
    match args.first().map(String::as_str) {
        None => {
            report.error(&item.pos, "virtual_server: needs an address and a port");
            return None;
        }
        Some("fwmark") => {
            report.error(&item.pos, format!("{text}: xdplb has no firewall marks (it matches VIP, port and protocol in XDP); for every port of a VIP use `virtual_server VIP 0` with persistence_timeout"));
            return None;
        }
        Some("group") => {
            report.error(
                &item.pos,
                format!("{text}: xdplb has no virtual server groups: write one virtual_server per address"),
            );
            return None;
        }
        _ => {}
    }
    let vip = ip(&args[0], &text, &item.pos, report);
    // keepalived: a missing port (or 0) is every port, for persistent services only.
    let port = match args.get(1) {
        Some(p) => port_number(p, &text, &item.pos, report),
        None => Some(0),
    };
    if let Some(extra) = args.get(2) {
        report.error(&item.pos, format!("{text}: unexpected '{extra}'"));
    }
    let Some(block) = &item.block else {
        report.error(&item.pos, format!("{text}: needs a {{ }} block"));
        return None;
    };

    let mut vs = VsConf::default();
    for sub in block {
        vs_keyword(&mut vs, sub, report);
    }

    let protocol = vs.protocol.unwrap_or_else(|| {
        report.note(
            &item.pos,
            format!("{text}: no protocol: keepalived (and so xdplb) takes UDP"),
        );
        Protocol::Udp
    });
    let scheduler = vs.scheduler.unwrap_or_else(|| {
        report.note(
            &item.pos,
            format!("{text}: no lb_algo: keepalived's default, {DEFAULT_SCHEDULER}, is used"),
        );
        DEFAULT_SCHEDULER
    });
    let hash = scheduler_flags(&vs, scheduler, protocol, report);
    let persistence = match (vs.persistence, &vs.granularity, port) {
        (Some(t), _, _) => Some(t),
        // As keepalived: a granularity, or port 0, makes the service persistent.
        (None, Some(g), _) => {
            report.note(
                &g.pos,
                format!("persistence_granularity without persistence_timeout: persistent for keepalived's default {DEFAULT_PERSISTENCE} s"),
            );
            Some(DEFAULT_PERSISTENCE)
        }
        (None, None, Some(0)) => {
            report.note(
                &item.pos,
                format!("{text}: every port (0) without persistence_timeout: persistent for keepalived's default {DEFAULT_PERSISTENCE} s"),
            );
            Some(DEFAULT_PERSISTENCE)
        }
        _ => None,
    };
    if vs.reals.is_empty() {
        report.note(
            &item.pos,
            format!("{text}: no real_server: keepalived ignores it: skipped"),
        );
        return None;
    }
    let (vip, port) = (vip?, port?);

    let mut reals = Vec::new();
    let mut uninhibited = false;
    let mut no_method = false;
    for rs in &vs.reals {
        let forward = match rs.method.or(vs.method) {
            Some(Method::Forward(f)) => Some(f),
            // A wrong method was reported where it was given.
            None if rs.method_seen || vs.method_seen => None,
            // keepalived's default.
            None => {
                no_method = true;
                Some(crate::state::Forward::Masq)
            }
        };
        let check = health_check(rs, &vs.timing, port, report);
        if check.is_some() && !rs.inhibit.unwrap_or(vs.inhibit) {
            uninhibited = true;
        }
        let masq = forward == Some(crate::state::Forward::Masq);
        if let Some(p) = rs.port.filter(|p| port != 0 && p != &port && !masq) {
            report.note(
                &rs.pos,
                format!("{}: DR and TUN leave ports alone, so traffic reaches port {port} (as with IPVS); its check probes port {p}", rs.text),
            );
        }
        let (Some(addr), Some(forward)) = (rs.addr, forward) else {
            continue;
        };
        reals.push(Real {
            pos: rs.pos.clone(),
            text: rs.text.clone(),
            spec: RealSpec {
                addr: Some(addr),
                // LVS/NAT maps the port; DR and TUN leave it as the client sent it.
                port: rs.port.filter(|_| masq),
                weight: Some(rs.weight.or(vs.weight).unwrap_or(1)),
                forward: Some(forward),
                mac: None,
                check: Some(CheckChange::from_option(check)),
                upper: Some(rs.upper),
                lower: Some(rs.lower),
            },
        });
    }
    if no_method {
        report.note(
            &item.pos,
            format!("{text}: no lb_kind: LVS/NAT, keepalived's default (the real servers route through the director)"),
        );
    }
    if uninhibited {
        report.note(
            &item.pos,
            format!("{text}: real servers without inhibit_on_failure: keepalived removes a failed one, and IPVS then drops its established connections; xdplb keeps those going and gives it no new ones, as inhibit_on_failure does"),
        );
    }
    Some(Service {
        pos: item.pos.clone(),
        text,
        addr: ServiceAddr {
            protocol,
            vip,
            port,
        },
        spec: SchedulerSpec {
            scheduler: Some(scheduler),
            mh_size: None,
            hash,
            persistent: Some(persistence.unwrap_or(0)),
            netmask: vs
                .granularity
                .map(|g| g.value)
                .filter(|_| persistence.is_some()),
        },
        reals,
    })
}

/// One statement of a virtual_server block.
fn vs_keyword(vs: &mut VsConf, sub: &Item, report: &mut Report) {
    let text = sub.text();
    let note = |report: &mut Report, why: &str| report.note(&sub.pos, format!("{text}: {why}"));
    if vs.timing.take(sub, false, report) {
        if sub.keyword() == "alpha" && vs.timing.alpha.as_ref().is_some_and(|a| a.value) {
            note(report, ALPHA);
        }
        return;
    }
    match sub.keyword() {
        "lb_algo" | "lvs_sched" => {
            vs.scheduler = value(sub, report).and_then(|s| scheduler(s, sub, report))
        }
        "lb_kind" | "lvs_method" => {
            vs.method_seen = true;
            vs.method = method(sub, report).or(vs.method);
        }
        "protocol" => vs.protocol = value(sub, report).and_then(|p| protocol(p, sub, report)),
        "persistence_timeout" => {
            vs.persistence = match sub.args().is_empty() {
                true => Some(DEFAULT_PERSISTENCE),
                false => unsigned(sub, 1, MAX_PERSISTENCE, report),
            }
        }
        "persistence_granularity" => {
            let mask = value(sub, report).and_then(|m| match m.parse::<Netmask>() {
                Ok(m) => Some(m),
                Err(e) => {
                    report.error(&sub.pos, format!("{text}: {e}"));
                    None
                }
            });
            vs.granularity = mask.map(|value| At {
                value,
                pos: sub.pos.clone(),
            });
        }
        "ip_family" => match value(sub, report) {
            Some("inet") | None => {}
            // The addresses say the family.
            Some("inet6") => {}
            Some(f) => report.error(&sub.pos, format!("{text}: unknown address family '{f}'")),
        },
        "weight" => vs.weight = unsigned(sub, 1, MAX_WEIGHT, report),
        "inhibit_on_failure" => vs.inhibit = true,
        "hashed" | "ops" | "flag-1" | "flag-2" | "flag-3" | "sh-port" | "sh-fallback"
        | "mh-port" | "mh-fallback" => vs.flags.push(At {
            value: sub.keyword().to_owned(),
            pos: sub.pos.clone(),
        }),
        "real_server" => vs.reals.extend(real_server(sub, report)),
        "persistence_engine" => note(
            report,
            "xdplb has no persistence engines: clients persist by address only",
        ),
        "ha_suspend" => note(
            report,
            "xdplb checks real servers whether or not this director holds the VIP",
        ),
        "smtp_alert" | "snmp_name" => note(report, NO_ALERTS),
        "virtualhost" => note(report, VIRTUALHOST),
        "omega" | "quorum" | "hysteresis" | "quorum_up" | "quorum_down" => note(
            report,
            "xdplb has no quorum: a service goes on with whichever real servers are up",
        ),
        "sorry_server" | "sorry_server_inhibit" | "sorry_server_lvs_method" => note(
            report,
            "xdplb has no sorry server: with every real server down, new connections are dropped",
        ),
        k => report.error(&sub.pos, format!("unknown keyword '{k}' in virtual_server")),
    }
}

const ALPHA: &str = "xdplb starts real servers up (down after `fall` failed probes); keepalived's alpha starts them down until a check passes";
const NO_ALERTS: &str =
    "xdplb sends no e-mail and has no SNMP: it logs, and exports metrics (see [metrics])";
const VIRTUALHOST: &str = "xdplb's HTTP check sends the real server's address as Host";

/// What the scheduler flags mean for xdplb: the hash of `mh` (IPVS's mh hashes the client
/// address, with mh-port its port too), notes for the rest.
fn scheduler_flags(
    vs: &VsConf,
    scheduler: Scheduler,
    protocol: Protocol,
    report: &mut Report,
) -> Option<Hash> {
    let mut hash = (scheduler == Scheduler::Mh).then_some(Hash::Src);
    for flag in &vs.flags {
        let name = flag.value.as_str();
        // flag-1 and flag-2 are sh's and mh's fallback and port flags under another name.
        let meaning = match (scheduler, name) {
            (_, "hashed") => continue,
            (_, "ops") => {
                let why = match protocol {
                    Protocol::Udp => "xdplb has no one-packet scheduling: a UDP flow keeps its real server until idle",
                    Protocol::Tcp => "one-packet scheduling is for UDP only (keepalived ignores it too)",
                };
                report.note(&flag.pos, format!("ops: {why}"));
                continue;
            }
            (Scheduler::Sh, "sh-fallback" | "flag-1") | (Scheduler::Mh, "mh-fallback" | "flag-1") => {
                // xdplb's tables never hold a down or weight-0 server: it always falls back.
                continue;
            }
            (Scheduler::Mh, "mh-port" | "flag-2") => {
                hash = Some(Hash::Flow);
                continue;
            }
            (Scheduler::Sh, "sh-port" | "flag-2") => {
                "xdplb's sh hashes the client address only (lb_algo mh with mh-port hashes ports too)"
            }
            (Scheduler::Sh | Scheduler::Mh, _) => "this flag means nothing to xdplb",
            _ => "only the sh and mh schedulers have flags (keepalived ignores it too)",
        };
        report.note(&flag.pos, format!("{name}: {meaning}"));
    }
    hash
}

/// What a real_server block says.
struct RsConf {
    pos: Pos,
    text: String,
    addr: Option<IpAddr>,
    port: Option<u16>,
    weight: Option<u32>,
    method: Option<Method>,
    method_seen: bool,
    upper: u32,
    lower: u32,
    inhibit: Option<bool>,
    timing: Timing,
    checkers: Vec<Checker>,
}

fn real_server(item: &Item, report: &mut Report) -> Option<RsConf> {
    let text = item.text();
    let args = item.args();
    let Some(addr) = args.first() else {
        report.error(&item.pos, "real_server: needs an address");
        return None;
    };
    let mut rs = RsConf {
        pos: item.pos.clone(),
        text: text.clone(),
        addr: ip(addr, &text, &item.pos, report),
        port: args
            .get(1)
            .and_then(|p| port_number(p, &text, &item.pos, report))
            .filter(|p| *p != 0),
        weight: None,
        method: None,
        method_seen: false,
        upper: 0,
        lower: 0,
        inhibit: None,
        timing: Timing::default(),
        checkers: Vec::new(),
    };
    if let Some(extra) = args.get(2) {
        report.error(&item.pos, format!("{text}: unexpected '{extra}'"));
    }
    for sub in item.block.iter().flatten() {
        let text = sub.text();
        let note = |report: &mut Report, why: &str| report.note(&sub.pos, format!("{text}: {why}"));
        if rs.timing.take(sub, false, report) {
            if sub.keyword() == "alpha" && rs.timing.alpha.as_ref().is_some_and(|a| a.value) {
                note(report, ALPHA);
            }
            continue;
        }
        match sub.keyword() {
            "weight" => rs.weight = unsigned(sub, 0, MAX_WEIGHT, report),
            "lvs_method" => {
                rs.method_seen = true;
                rs.method = method(sub, report).or(rs.method);
            }
            "uthreshold" => rs.upper = unsigned(sub, 0, u32::MAX, report).unwrap_or(0),
            "lthreshold" => rs.lower = unsigned(sub, 0, u32::MAX, report).unwrap_or(0),
            "inhibit_on_failure" => rs.inhibit = boolean(sub, report),
            "notify_up" | "notify_down" => note(
                report,
                "xdplb runs no scripts: it logs the change, and exports it as a metric",
            ),
            "smtp_alert" | "snmp_name" => note(report, NO_ALERTS),
            "virtualhost" => note(report, VIRTUALHOST),
            "TCP_CHECK" | "HTTP_GET" | "SSL_GET" | "MISC_CHECK" | "PING_CHECK" => {
                rs.checkers.extend(checker(sub, report))
            }
            "SMTP_CHECK" | "DNS_CHECK" | "BFD_CHECK" | "UDP_CHECK" | "FILE_CHECK" => report.note(
                &sub.pos,
                format!(
                    "{}: xdplb has no such check: not carried over",
                    sub.keyword()
                ),
            ),
            k => report.error(&sub.pos, format!("unknown keyword '{k}' in real_server")),
        }
    }
    Some(rs)
}

//! The values of keepalived's statements (numbers, TIMERs, BOOLs, addresses, schedulers,
//! forwarding methods), each refused with a one-line error naming the statement.

use std::net::IpAddr;

use crate::{
    import::{
        conf::{Item, Pos},
        Report,
    },
    state::{Forward, Protocol, Scheduler},
};

/// A setting and where it was given.
#[derive(Clone, Debug)]
pub(super) struct At<T> {
    pub(super) value: T,
    pub(super) pos: Pos,
}

/// lb_kind / lvs_method.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Method {
    Forward(Forward),
}

/// The one value of a statement; errors name the statement.
pub(super) fn value<'i>(item: &'i Item, report: &mut Report) -> Option<&'i str> {
    if item.block.is_some() {
        report.error(
            &item.pos,
            format!("{}: takes no {{ }} block", item.keyword()),
        );
        return None;
    }
    match item.args() {
        [v] => Some(v),
        [] => {
            report.error(&item.pos, format!("{}: needs a value", item.keyword()));
            None
        }
        [_, extra, ..] => {
            report.error(&item.pos, format!("{}: unexpected '{extra}'", item.text()));
            None
        }
    }
}

pub(super) fn unsigned(item: &Item, min: u32, max: u32, report: &mut Report) -> Option<u32> {
    let v = value(item, report)?;
    match v.parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Some(n),
        _ => {
            report.error(
                &item.pos,
                format!("{}: '{v}' is out of range {min}..={max}", item.keyword()),
            );
            None
        }
    }
}

/// keepalived's TIMER: seconds, with a fraction down to microseconds; in milliseconds, rounded
/// up (xdplb's resolution).
pub(super) fn timer(item: &Item, min_ms: u64, report: &mut Report) -> Option<u64> {
    let v = value(item, report)?;
    let parsed = (|| {
        let (int, frac) = v.split_once('.').unwrap_or((v, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) || frac.len() > 6 {
            return None;
        }
        let whole: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
        let micros: u64 = format!("{frac:0<6}").parse().ok()?;
        Some(
            whole
                .checked_mul(1_000_000)?
                .checked_add(micros)?
                .div_ceil(1000),
        )
    })();
    match parsed {
        Some(ms) if ms >= min_ms => Some(ms),
        _ => {
            report.error(
                &item.pos,
                format!(
                    "{}: '{v}' is not a time in seconds{}",
                    item.keyword(),
                    if min_ms > 0 { " above 0" } else { "" }
                ),
            );
            None
        }
    }
}

/// keepalived's BOOL, optional after a flag keyword: absent is true.
pub(super) fn boolean(item: &Item, report: &mut Report) -> Option<bool> {
    if item.args().is_empty() {
        return Some(true);
    }
    match value(item, report)? {
        "on" | "true" | "yes" => Some(true),
        "off" | "false" | "no" => Some(false),
        v => {
            report.error(
                &item.pos,
                format!("{}: '{v}' is not on|off|true|false|yes|no", item.keyword()),
            );
            None
        }
    }
}

pub(super) fn ip(s: &str, what: &str, at: &Pos, report: &mut Report) -> Option<IpAddr> {
    match s.parse::<IpAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            report.error(at, format!("{what}: '{s}' is not an IP address"));
            None
        }
    }
}

pub(super) fn port_number(s: &str, what: &str, at: &Pos, report: &mut Report) -> Option<u16> {
    match s.parse::<u16>() {
        Ok(p) => Some(p),
        Err(_) => {
            report.error(at, format!("{what}: '{s}' is not a port"));
            None
        }
    }
}

pub(super) fn scheduler(name: &str, item: &Item, report: &mut Report) -> Option<Scheduler> {
    if let Some(s) = Scheduler::ALL.iter().find(|s| s.name() == name) {
        return Some(*s);
    }
    let why = match name {
        "twos" => "xdplb has no twos scheduler".to_owned(),
        _ => format!(
            "unknown scheduler '{name}' (xdplb has {})",
            Scheduler::ALL.map(Scheduler::name).join(" ")
        ),
    };
    report.error(&item.pos, format!("{}: {why}", item.text()));
    None
}

pub(super) fn protocol(name: &str, item: &Item, report: &mut Report) -> Option<Protocol> {
    match name.to_ascii_uppercase().as_str() {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => {
            report.error(
                &item.pos,
                format!("{}: xdplb balances TCP and UDP only", item.text()),
            );
            None
        }
        _ => {
            report.error(&item.pos, format!("{}: unknown protocol", item.text()));
            None
        }
    }
}

/// `lb_kind`/`lvs_method DR|TUN|NAT`, TUN with `type ipip` (xdplb's only tunnel) and no checksum
/// option (which ipip has not, keepalived says so too).
pub(super) fn method(item: &Item, report: &mut Report) -> Option<Method> {
    let text = item.text();
    let args = item.args();
    let bad = |report: &mut Report, why: String| {
        report.error(&item.pos, format!("{text}: {why}"));
        None
    };
    match args.first().map(String::as_str) {
        Some("DR") if args.len() == 1 => Some(Method::Forward(Forward::Route)),
        Some("NAT") if args.len() == 1 => Some(Method::Forward(Forward::Masq)),
        Some("TUN") => {
            let mut i = 1;
            while i < args.len() {
                match (args[i].as_str(), args.get(i + 1).map(String::as_str)) {
                    ("type", Some("ipip")) => i += 2,
                    ("type", Some(t @ ("gue" | "gre"))) => {
                        return bad(report, format!("xdplb tunnels with IPIP only, not {t}"))
                    }
                    ("type", t) => {
                        return bad(
                            report,
                            format!("unknown tunnel type '{}'", t.unwrap_or_default()),
                        )
                    }
                    ("nocsum", _) => i += 1,
                    ("csum" | "remcsum", _) => {
                        return bad(report, "ipip tunnels have no checksum option".to_owned())
                    }
                    (w, _) => return bad(report, format!("unexpected '{w}'")),
                }
            }
            Some(Method::Forward(Forward::Tunnel))
        }
        Some("DR" | "NAT") => bad(report, format!("unexpected '{}'", args[1])),
        Some(m) => bad(
            report,
            format!("unknown forwarding method '{m}' (DR, TUN or NAT)"),
        ),
        None => bad(report, "needs DR, TUN or NAT".to_owned()),
    }
}

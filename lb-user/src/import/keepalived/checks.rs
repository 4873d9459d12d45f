//! keepalived's health checkers (TCP_CHECK, HTTP_GET, SSL_GET) and their timing, as xdplb's
//! one check per real server.

use super::{
    values::{boolean, timer, unsigned, value, At},
    RsConf, ALPHA, VIRTUALHOST,
};
use crate::{
    health::{Check, HealthCheck},
    import::{
        conf::{Item, Pos},
        Report,
    },
};

/// keepalived's defaults (check_data.c, check_api.c).
const DEFAULT_DELAY_LOOP_MS: u64 = 60_000;
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_RETRY: u32 = 1;
/// The most xdplb's checks allow (health.rs): an hour between probes, 100 failures.
const MAX_CHECK_MS: u64 = 3_600_000;
const MAX_FALL: u32 = 100;

/// The checker settings a virtual server passes to its real servers, and a real server to its
/// checkers (keepalived's "the virtual server setting is the default for real servers").
#[derive(Clone, Debug, Default)]
pub(super) struct Timing {
    pub(super) delay_loop: Option<At<u64>>,
    pub(super) connect_timeout: Option<At<u64>>,
    pub(super) retry: Option<At<u32>>,
    pub(super) delay_before_retry: Option<At<u64>>,
    pub(super) warmup: Option<At<u64>>,
    pub(super) alpha: Option<At<bool>>,
}

impl Timing {
    /// Takes `item` if it is one of these settings. keepalived wants retry >= 1 on a virtual or
    /// real server, >= 0 on a checker.
    pub(super) fn take(&mut self, item: &Item, checker: bool, report: &mut Report) -> bool {
        let at = |value| At {
            value,
            pos: item.pos.clone(),
        };
        match item.keyword() {
            "delay_loop" => self.delay_loop = timer(item, 1, report).map(at),
            "connect_timeout" => self.connect_timeout = timer(item, 1, report).map(at),
            "delay_before_retry" => self.delay_before_retry = timer(item, 0, report).map(at),
            "warmup" => self.warmup = timer(item, 0, report).map(at),
            "retry" => {
                self.retry = unsigned(item, u32::from(!checker), u32::MAX, report).map(|v| At {
                    value: v,
                    pos: item.pos.clone(),
                })
            }
            "alpha" => {
                self.alpha = boolean(item, report).map(|v| At {
                    value: v,
                    pos: item.pos.clone(),
                })
            }
            _ => return false,
        }
        true
    }

    /// These settings, each one not given taken from `parent`.
    pub(super) fn or(&self, parent: &Timing) -> Timing {
        Timing {
            delay_loop: self.delay_loop.clone().or(parent.delay_loop.clone()),
            connect_timeout: self
                .connect_timeout
                .clone()
                .or(parent.connect_timeout.clone()),
            retry: self.retry.clone().or(parent.retry.clone()),
            delay_before_retry: self
                .delay_before_retry
                .clone()
                .or(parent.delay_before_retry.clone()),
            warmup: self.warmup.clone().or(parent.warmup.clone()),
            alpha: self.alpha.clone().or(parent.alpha.clone()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Kind {
    Tcp,
    Http,
    /// SSL_GET: an https check.
    Ssl,
    /// MISC_CHECK: a script check.
    Misc,
    /// PING_CHECK: a ping check.
    Ping,
}

pub(super) struct Checker {
    pub(super) kind: Kind,
    pub(super) pos: Pos,
    pub(super) name: String,
    pub(super) port: Option<u16>,
    pub(super) timing: Timing,
    /// HTTP_GET, SSL_GET: (path, status, body).
    pub(super) http: Option<(String, u16, Option<String>)>,
    /// MISC_CHECK: the command (misc_path).
    pub(super) command: Option<String>,
}

pub(super) fn checker(item: &Item, report: &mut Report) -> Option<Checker> {
    let name = item.keyword().to_owned();
    let kind = match name.as_str() {
        "TCP_CHECK" => Kind::Tcp,
        "HTTP_GET" => Kind::Http,
        "MISC_CHECK" => Kind::Misc,
        "PING_CHECK" => Kind::Ping,
        _ => Kind::Ssl,
    };
    let mut c = Checker {
        kind,
        pos: item.pos.clone(),
        name: name.clone(),
        port: None,
        timing: Timing::default(),
        http: None,
        command: None,
    };
    let mut urls = Vec::new();
    for sub in item.block.iter().flatten() {
        let text = sub.text();
        let note = |report: &mut Report, why: &str| report.note(&sub.pos, format!("{text}: {why}"));
        let http = matches!(kind, Kind::Http | Kind::Ssl);
        let misc = kind == Kind::Misc;
        if c.timing.take(sub, true, report) {
            if sub.keyword() == "alpha" && c.timing.alpha.as_ref().is_some_and(|a| a.value) {
                note(report, ALPHA);
            }
            continue;
        }
        match sub.keyword() {
            "connect_port" => c.port = unsigned(sub, 1, 65535, report).map(|p| p as u16),
            "connect_ip" => note(report, "xdplb checks the real server's own address"),
            "bindto" | "bind_port" | "bind_if" | "fwmark" => note(
                report,
                "xdplb's checks leave from the director's own address",
            ),
            "log_all_failures" => note(report, "xdplb logs changes of state only"),
            // Deprecated in keepalived, but still read.
            "nb_get_retry" if http => {
                c.timing.retry = unsigned(sub, 0, u32::MAX, report).map(|value| At {
                    value,
                    pos: sub.pos.clone(),
                })
            }
            "virtualhost" if http => note(report, VIRTUALHOST),
            "http_protocol" if http => match value(sub, report) {
                Some("1.1") | None => {}
                Some("1.0" | "1.0C" | "1.0c") => note(
                    report,
                    "xdplb's check sends HTTP/1.1 requests (with Host and Connection: close)",
                ),
                Some(v) => report.error(
                    &sub.pos,
                    format!("{text}: unknown version '{v}' (1.0, 1.0C or 1.1)"),
                ),
            },
            "fast_recovery" if http => {
                let _ = boolean(sub, report);
            }
            "enable_sni" | "sni_name" | "tls_compliant" if http => {}
            "url" if http => urls.push(sub),
            // A quoted misc_path is one word; an unquoted one with arguments, several.
            "misc_path" if misc => c.command = Some(sub.args().join(" ")),
            "misc_timeout" if misc => {
                c.timing.connect_timeout = unsigned(sub, 1, u32::MAX, report).map(|s| At {
                    value: u64::from(s) * 1000,
                    pos: sub.pos.clone(),
                })
            }
            "misc_dynamic" if misc => note(
                report,
                "xdplb's script checks say up (exit 0) or down, they set no weight",
            ),
            "user" if misc => note(report, "xdplb runs the script as the agent's user"),
            k => report.error(&sub.pos, format!("unknown keyword '{k}' in {name}")),
        }
    }
    match kind {
        Kind::Tcp | Kind::Ping => return Some(c),
        Kind::Misc if c.command.is_none() => {
            report.error(&item.pos, format!("{name} without misc_path"));
            return None;
        }
        Kind::Misc => return Some(c),
        Kind::Http | Kind::Ssl => {}
    }
    let Some(first) = urls.first() else {
        report.error(
            &item.pos,
            format!("{name} without a url {{ path ... }}: keepalived ignores such a checker"),
        );
        return None;
    };
    for other in &urls[1..] {
        report.note(
            &other.pos,
            format!(
                "url: xdplb checks one url: only the first (line {}) is carried over",
                first.pos.line
            ),
        );
    }
    c.http = Some(url(first, report)?);
    Some(c)
}

/// An HTTP_GET url block: (path, status, body).
fn url(item: &Item, report: &mut Report) -> Option<(String, u16, Option<String>)> {
    let (mut path, mut status, mut body, mut no_match) = (None, None, None, None);
    for sub in item.block.iter().flatten() {
        let text = sub.text();
        let note = |report: &mut Report, why: &str| report.note(&sub.pos, format!("{text}: {why}"));
        match sub.keyword() {
            "path" => path = value(sub, report).map(str::to_owned),
            "status_code" => status = status_code(sub, report),
            "digest" => note(
                report,
                "xdplb does not compare digests: the check looks at the status code",
            ),
            "virtualhost" => note(report, VIRTUALHOST),
            "regex" => match value(sub, report) {
                // A regex without special characters is a substring, which xdplb can look for.
                Some(r) if !r.contains(|c: char| "\\.^$|?*+()[]{}".contains(c)) => {
                    body = Some(r.to_owned())
                }
                Some(_) => note(
                    report,
                    "xdplb looks for a plain substring only: not carried over",
                ),
                None => {}
            },
            "regex_no_match" => no_match = Some(sub.pos.clone()),
            "regex_options" | "regex_min_offset" | "regex_max_offset" | "regex_stack" => {
                note(report, "not carried over")
            }
            "tls_compliant" => {}
            k => report.error(&sub.pos, format!("unknown keyword '{k}' in url")),
        }
    }
    if let (Some(at), Some(_)) = (&no_match, &body) {
        report.note(
            at,
            "regex_no_match: xdplb's check wants the text present: the regex is not carried over",
        );
        body = None;
    }
    let Some(path) = path else {
        report.error(&item.pos, "url without a path: keepalived ignores it");
        return None;
    };
    let status = match status {
        Some(s) => s,
        None => {
            report.note(
                &item.pos,
                "url without status_code: keepalived accepts 200-299, xdplb's check wants 200",
            );
            200
        }
    };
    Some((path, status, body))
}

/// `status_code 200` or a list of codes and ranges (`200-299 301`); xdplb's check wants one.
fn status_code(item: &Item, report: &mut Report) -> Option<u16> {
    let mut ranges = Vec::new();
    for word in item.args() {
        let (lo, hi) = word.split_once('-').unwrap_or((word, word));
        match (lo.parse::<u16>(), hi.parse::<u16>()) {
            (Ok(lo), Ok(hi)) if (100..=599).contains(&lo) && (lo..=599).contains(&hi) => {
                ranges.push((lo, hi))
            }
            _ => {
                report.error(
                    &item.pos,
                    format!("status_code: '{word}' is not a status code (100-599) or range"),
                );
                return None;
            }
        }
    }
    match ranges.as_slice() {
        [] => {
            report.error(&item.pos, "status_code: needs a value");
            None
        }
        [(lo, hi)] if lo == hi => Some(*lo),
        _ => {
            let chosen = if ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&200)) {
                200
            } else {
                ranges.iter().map(|(lo, _)| *lo).min().unwrap_or(200)
            };
            report.note(
                &item.pos,
                format!("{}: xdplb's check wants one status: {chosen}", item.text()),
            );
            Some(chosen)
        }
    }
}

/// The check of a real server: its first checker, with keepalived's timing mapped: `delay_loop` -> interval, `connect_timeout` ->
/// timeout, `retry` -> fall = retry + 1 (the failures before a server is down), rise 1 (one
/// success brings it back).
pub(super) fn health_check(
    rs: &RsConf,
    vs_timing: &Timing,
    service_port: u16,
    report: &mut Report,
) -> Option<HealthCheck> {
    let chosen = rs.checkers.first()?;
    for other in rs.checkers.iter().filter(|c| c.pos != chosen.pos) {
        report.note(
            &other.pos,
            format!(
                "{}: xdplb runs one check per real server: the {} of line {} is carried over, this one is not",
                other.name, chosen.name, chosen.pos.line
            ),
        );
    }
    let c = chosen;
    let probe_port = c.port.or(rs.port);
    let Some(probe_port) = probe_port.or((service_port != 0).then_some(service_port)) else {
        report.error(
            &c.pos,
            format!("{}: the service takes every port (0) and the real server names none: give connect_port", c.name),
        );
        return None;
    };
    if c.kind == Kind::Ssl {
        report.note(
            &c.pos,
            "SSL_GET: an https check that does not verify the certificate (verify = false), as keepalived checks; set verify and ca_file to verify it",
        );
    }

    let t = c.timing.or(&rs.timing).or(vs_timing);
    let at = |s: &Option<At<u64>>| s.as_ref().map_or(&c.pos, |s| &s.pos).clone();
    // A timer, keepalived's default when absent, capped at what xdplb's checks take (noted).
    let mut capped = |timer: &Option<At<u64>>, default: u64, what: &str, cap: &str| {
        let v = timer.as_ref().map_or(default, |d| d.value);
        if v > MAX_CHECK_MS {
            report.note(&at(timer), format!("{what} {}: {cap}: 3600 s", secs(v)));
        }
        v.min(MAX_CHECK_MS)
    };
    let mut interval = capped(
        &t.delay_loop,
        DEFAULT_DELAY_LOOP_MS,
        "delay_loop",
        "xdplb checks at least hourly",
    );
    let timeout = capped(
        &t.connect_timeout,
        DEFAULT_CONNECT_TIMEOUT_MS,
        "connect_timeout",
        "xdplb waits at most",
    );
    if timeout > interval {
        // keepalived waits delay_loop after a probe ends; xdplb's interval runs from start to
        // start and must hold a whole probe.
        let given = |s: &Option<At<u64>>, name: &str, v: u64| match s {
            Some(_) => format!("{name} {}", secs(v)),
            None => format!("{name} (keepalived's default {})", secs(v)),
        };
        report.note(
            &at(&t.connect_timeout),
            format!(
                "{} is longer than {}: xdplb's check interval becomes {}",
                given(&t.connect_timeout, "connect_timeout", timeout),
                given(&t.delay_loop, "delay_loop", interval),
                secs(timeout)
            ),
        );
        interval = timeout;
    }
    let retry = t.retry.as_ref().map_or(DEFAULT_RETRY, |r| r.value);
    let fall = match retry.checked_add(1).filter(|f| *f <= MAX_FALL) {
        Some(f) => f,
        None => {
            let pos = t.retry.as_ref().map_or(&c.pos, |r| &r.pos);
            report.note(
                pos,
                format!("retry {retry}: xdplb takes a server down after at most {MAX_FALL} failed probes"),
            );
            MAX_FALL
        }
    };
    if let Some(d) = t
        .delay_before_retry
        .as_ref()
        .filter(|d| retry > 0 && d.value != interval)
    {
        report.note(
            &d.pos,
            format!(
                "delay_before_retry {}: xdplb repeats a failed probe after its check interval ({}), not sooner",
                secs(d.value),
                secs(interval)
            ),
        );
    }
    if let Some(w) = t.warmup.as_ref().filter(|w| w.value != interval) {
        report.note(
            &w.pos,
            format!(
                "warmup {}: xdplb starts each check at a random point of its first interval ({})",
                secs(w.value),
                secs(interval)
            ),
        );
    }
    let (path, status, body) = c.http.clone().unwrap_or(("/".into(), 200, None));
    let check = HealthCheck {
        check: match c.kind {
            Kind::Tcp => Check::Tcp,
            Kind::Http => Check::Http { path, status, body },
            Kind::Ssl => Check::Https {
                path,
                status,
                body,
                verify: false,
                sni: None,
                ca_file: None,
            },
            Kind::Misc => Check::Script {
                command: c.command.clone().unwrap_or_default(),
            },
            Kind::Ping => Check::Ping,
        },
        port: (probe_port != service_port).then_some(probe_port),
        interval_ms: interval,
        timeout_ms: timeout,
        rise: 1,
        fall,
    };
    if let Err(e) = check.validate() {
        report.error(&c.pos, format!("{}: {e:#}", c.name));
        return None;
    }
    Some(check)
}

/// Seconds, as keepalived writes them: `2 s`, `0.5 s`.
fn secs(ms: u64) -> String {
    match ms % 1000 {
        0 => format!("{} s", ms / 1000),
        _ => format!("{} s", ms as f64 / 1000.0),
    }
}

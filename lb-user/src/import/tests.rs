//! `xdplb import keepalived` without root: keepalived's syntax (comments, quotes, braces,
//! include, parameters, conditionals), each keyword's mapping, the notes for what xdplb does not
//! have and the errors for what cannot be converted, each on its line.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use super::{conf, keepalived, Report};
use crate::{
    config::{Config, ServiceConfig, Source},
    health::{Check, HealthCheck},
    state::{Forward, Hash, Protocol, Scheduler},
};

/// A directory of its own under the system's temporary directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "xdplb-import-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Report lines with this directory left out of the paths.
    fn lines(&self, report: &Report) -> Vec<String> {
        let prefix = format!("{}/", self.0.display());
        report
            .lines()
            .iter()
            .map(|l| l.replace(&prefix, ""))
            .collect()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What importing `text` (as keepalived.conf, for interface eth0) prints: the config file, or
/// None, and the report's lines.
fn import_with(text: &str, interface: Option<&str>) -> (Option<String>, Vec<String>) {
    let dir = Dir::new();
    let path = dir.write("keepalived.conf", text);
    let (out, report) = keepalived::import(&path, interface, Some("main"));
    (out, dir.lines(&report))
}

fn import(text: &str) -> (Option<String>, Vec<String>) {
    import_with(text, Some("eth0"))
}

/// The converted configuration, read back with xdplb's own parser, and the notes.
fn converted(text: &str) -> (Config, Vec<String>) {
    let (out, lines) = import(text);
    let Some(out) = out else {
        panic!("not converted: {lines:#?}")
    };
    let config = Source {
        path: PathBuf::from("out.toml"),
        text: out,
    }
    .parse()
    .unwrap();
    (config, lines)
}

/// The one error importing `text` reports (it must print nothing).
fn error(text: &str) -> String {
    let (out, lines) = import(text);
    assert!(out.is_none(), "converted despite errors: {lines:#?}");
    assert_eq!(lines.len(), 1, "one error expected: {lines:#?}");
    assert!(lines[0].contains(": error: "), "{lines:?}");
    lines[0].clone()
}

/// A TCP virtual server on 10.0.0.100:80 by direct routing: `body` starts on line 4.
fn web(body: &str) -> String {
    format!("virtual_server 10.0.0.100 80 {{\n    lb_kind DR\n    protocol TCP\n{body}\n}}\n")
}

fn service(config: &Config, protocol: Protocol, port: u16) -> &ServiceConfig {
    config
        .services
        .iter()
        .map(|s| s.get_ref())
        .find(|s| s.protocol == protocol && s.port == port)
        .unwrap_or_else(|| panic!("no service {protocol} port {port}: {config:#?}"))
}

fn check(svc: &ServiceConfig, real: usize) -> HealthCheck {
    svc.reals[real].get_ref().check.clone().expect("a check")
}

/// Whether a note on `line` contains `text`.
fn has_note(lines: &[String], line: usize, text: &str) -> bool {
    lines
        .iter()
        .any(|l| l.starts_with(&format!("keepalived.conf:{line}: note: ")) && l.contains(text))
}

#[track_caller]
fn assert_note(lines: &[String], line: usize, text: &str) {
    assert!(
        has_note(lines, line, text),
        "no note on line {line} with {text:?}: {lines:#?}"
    );
}

// ---- keepalived's syntax ----

fn read(text: &str) -> (Vec<conf::Item>, Vec<String>) {
    let dir = Dir::new();
    let path = dir.write("keepalived.conf", text);
    let mut report = Report::default();
    let items = conf::read(&path, Some("main"), &mut report);
    (items, dir.lines(&report))
}

/// The tree as `keyword args... { ... }`, one string.
fn shape(items: &[conf::Item]) -> String {
    items
        .iter()
        .map(|i| match &i.block {
            Some(b) => format!("{}@{} {{ {} }}", i.text(), i.pos.line, shape(b)),
            None => format!("{}@{}", i.text(), i.pos.line),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn comments_quotes_and_braces() {
    let (items, lines) = read(
        "# a comment\n\
         ! another\n\
         a 1 # trailing\n\
         b \"x # y ! z\" c\"d\" \\#e\n\
         c {\n\
         \x20 d { e 1 } f\n\
         }\n\
         g\n\
         {\n\
         \th \"{\" }\n\
         \n\
         i {}\r\n",
    );
    assert_eq!(lines, Vec::<String>::new());
    assert_eq!(
        shape(&items),
        "a 1@3; b x # y ! z c d #e@4; c@5 { d@6 { e 1@6 }; f@6 }; g@8 { h {@10 }; i@12 {  }"
    );
}

#[test]
fn unbalanced_braces_and_quotes_are_errors_on_their_line() {
    let (_, lines) = read("a {\n  b {\n  }\n");
    assert_eq!(lines, ["keepalived.conf:1: error: '{' is never closed"]);
    let (_, lines) = read("a\n}\n");
    assert_eq!(
        lines,
        ["keepalived.conf:2: error: '}' without a '{' before it"]
    );
    let (_, lines) = read("a {}\n{\n}\n");
    assert_eq!(
        lines,
        ["keepalived.conf:2: error: '{' without a keyword before it"]
    );
    let (_, lines) = read("a \"b\n");
    assert_eq!(
        lines,
        ["keepalived.conf:1: error: unterminated quote: a \"b"]
    );
}

#[test]
fn include_globs_relative_to_the_including_file() {
    let dir = Dir::new();
    dir.write("conf.d/b.conf", "b 1\ninclude ../more/c.conf\n");
    dir.write("conf.d/a.conf", "a 1\n");
    dir.write("conf.d/skip.txt", "nope\n");
    dir.write("more/c.conf", "c 1\n");
    let main = dir.write("keepalived.conf", "top {\ninclude conf.d/*.conf\n}\nz\n");
    let mut report = Report::default();
    let items = conf::read(&main, None, &mut report);
    assert_eq!(dir.lines(&report), Vec::<String>::new());
    assert_eq!(shape(&items), "top@1 { a 1@1; b 1@1; c 1@1 }; z@4");
    let files: Vec<String> = items[0].block.as_ref().unwrap()[..]
        .iter()
        .map(|i| {
            i.pos
                .to_string()
                .replace(&format!("{}/", dir.0.display()), "")
        })
        .collect();
    assert_eq!(
        files,
        [
            "conf.d/a.conf:1",
            "conf.d/b.conf:1",
            "conf.d/../more/c.conf:1"
        ]
    );
}

#[test]
fn include_problems() {
    // Plain include tolerates no match; its variants do not.
    let (_, lines) = read("a\ninclude nothing/*.conf\n");
    assert_eq!(
        lines,
        ["keepalived.conf:2: note: include nothing/*.conf: no file matches (skipped, as keepalived does)"]
    );
    let (_, lines) = read("includer none.conf\n");
    assert_eq!(
        lines,
        ["keepalived.conf:1: error: includer none.conf: no file matches"]
    );
    let (_, lines) = read("include keepalived.conf\n");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("nested deeper than 32"), "{lines:?}");
    let (_, lines) = read("include {a,b}.conf\n");
    assert!(lines[0].contains("brace expansion"), "{lines:?}");
}

#[test]
fn parameters_are_substituted() {
    let (items, lines) = read(
        "$PORT=80\n\
         $BASE=10.0.${NET}\n\
         $NET=2\n\
         vs ${BASE}.1 $PORT $UNDEFINED ${_HASH}x\n\
         $PORT=81\n\
         p $PORT,$PORTS\n",
    );
    assert_eq!(lines, Vec::<String>::new());
    assert_eq!(
        shape(&items),
        "vs 10.0.2.1 80 $UNDEFINED #x@4; p 81,$PORTS@6"
    );
    let (_, lines) = read("$M= \\\n  a\n");
    assert!(lines[0].contains("multi-line definitions"), "{lines:?}");
    let (_, lines) = read("~SEQ(N, 1, 3) a $N\n");
    assert!(lines[0].contains("~SEQ: sequence blocks"), "{lines:?}");
    let (_, lines) = read("$A=$A\na $A\n");
    assert!(lines[0].contains("does not end"), "{lines:?}");
}

#[test]
fn conditional_lines_follow_the_config_id() {
    let (items, lines) = read("@main a 1\n@backup b 1\n@^main c 1\n@^backup d 1\n@main\n");
    assert_eq!(lines, Vec::<String>::new());
    assert_eq!(shape(&items), "a 1@1; d 1@4");
    // Without --config-id the host name decides, and a note says so.
    let dir = Dir::new();
    let path = dir.write("keepalived.conf", "x\n@nosuchhost a 1\n");
    let mut report = Report::default();
    conf::read(&path, None, &mut report);
    let lines = dir.lines(&report);
    assert_eq!(lines.len(), 1);
    assert!(lines[0].starts_with("keepalived.conf:2: note: @ lines are read for config id"));
}

// ---- the mapping ----

#[test]
fn every_carried_over_keyword() {
    let text = "\
virtual_server 10.0.0.100 443 {
    lb_algo wrr
    lb_kind TUN type ipip nocsum
    protocol TCP
    persistence_timeout 600
    persistence_granularity 255.255.255.0
    weight 4
    delay_loop 10
    connect_timeout 2.5
    retry 2
    inhibit_on_failure
    real_server 10.0.0.11 443 {
        weight 3
        uthreshold 1000
        lthreshold 800
        TCP_CHECK {
            connect_port 8443
        }
    }
    real_server 10.0.0.12 443 {
        lvs_method DR
        delay_loop 5
        connect_timeout 1
        HTTP_GET {
            url {
                path /healthz
                status_code 204
                regex ok
            }
            nb_get_retry 4
        }
    }
    real_server 10.0.0.13 {
    }
}
";
    let (config, lines) = converted(text);
    assert_eq!(lines, Vec::<String>::new());
    assert_eq!(config.interface, "eth0");
    let svc = service(&config, Protocol::Tcp, 443);
    assert_eq!(svc.vip, Ipv4Addr::new(10, 0, 0, 100));
    assert_eq!(svc.scheduler, Scheduler::Wrr);
    assert_eq!(svc.persistent, Some(600));
    assert_eq!(
        svc.netmask,
        Some(crate::state::Netmask::Dotted(Ipv4Addr::new(
            255, 255, 255, 0
        )))
    );
    let reals: Vec<_> = svc.reals.iter().map(|r| r.get_ref()).collect();
    assert_eq!(
        reals
            .iter()
            .map(|r| (r.address.to_string(), r.weight, r.forward, r.port, r.mac))
            .collect::<Vec<_>>(),
        [
            ("10.0.0.11".to_owned(), 3, Forward::Tunnel, None, None),
            ("10.0.0.12".to_owned(), 4, Forward::Route, None, None),
            ("10.0.0.13".to_owned(), 4, Forward::Tunnel, None, None),
        ]
    );
    assert_eq!((reals[0].u_threshold, reals[0].l_threshold), (1000, 800));
    // delay_loop -> interval, connect_timeout -> timeout, retry -> fall = retry + 1, rise 1.
    assert_eq!(
        check(svc, 0),
        HealthCheck {
            check: Check::Tcp,
            port: Some(8443),
            interval_ms: 10_000,
            timeout_ms: 2_500,
            rise: 1,
            fall: 3,
        }
    );
    assert_eq!(
        check(svc, 1),
        HealthCheck {
            check: Check::Http {
                path: "/healthz".into(),
                status: 204,
                body: Some("ok".into()),
            },
            port: None,
            interval_ms: 5_000,
            timeout_ms: 1_000,
            rise: 1,
            fall: 5,
        }
    );
    assert_eq!(reals[2].check, None);
}

#[test]
fn keepalived_defaults() {
    // No lb_algo (wlc), no protocol (UDP), no timing (60 s, 5 s, one retry).
    let (config, lines) = converted(
        "virtual_server 10.0.0.100 53 {\n    lb_kind DR\n    real_server 10.0.0.11 53 {\n        TCP_CHECK {\n        }\n    }\n}\n",
    );
    let svc = service(&config, Protocol::Udp, 53);
    assert_eq!(svc.scheduler, Scheduler::Wlc);
    assert_eq!(svc.persistent, None);
    assert_eq!(
        check(svc, 0),
        HealthCheck {
            check: Check::Tcp,
            port: None,
            interval_ms: 60_000,
            timeout_ms: 5_000,
            rise: 1,
            fall: 2,
        }
    );
    assert_note(
        &lines,
        1,
        "no protocol: keepalived (and so xdplb) takes UDP",
    );
    assert_note(&lines, 1, "no lb_algo: keepalived's default, wlc, is used");

    // Port 0 or a granularity alone make a service persistent for 360 s, as in keepalived;
    // persistence_timeout without a value too.
    let (config, lines) = converted(
        "virtual_server 10.0.0.100 0 {\n    lb_kind DR\n    protocol TCP\n    lb_algo sh\n    real_server 10.0.0.11 0 {\n    }\n}\n\
         virtual_server 10.0.0.100 80 {\n    lb_kind DR\n    protocol TCP\n    lb_algo sh\n    persistence_granularity 255.255.0.0\n    real_server 10.0.0.11 80 {\n    }\n}\n\
         virtual_server 10.0.0.100 81 {\n    lb_kind DR\n    protocol TCP\n    lb_algo sh\n    persistence_timeout\n    real_server 10.0.0.11 81 {\n    }\n}\n",
    );
    assert_eq!(service(&config, Protocol::Tcp, 0).persistent, Some(360));
    let s80 = service(&config, Protocol::Tcp, 80);
    assert_eq!(
        (s80.persistent, s80.netmask),
        (
            Some(360),
            Some(crate::state::Netmask::Dotted(Ipv4Addr::new(255, 255, 0, 0)))
        )
    );
    assert_eq!(service(&config, Protocol::Tcp, 81).persistent, Some(360));
    assert_note(&lines, 1, "every port (0) without persistence_timeout");
    assert_note(
        &lines,
        12,
        "persistence_granularity without persistence_timeout",
    );
}

#[test]
fn timing_is_inherited_and_fitted_to_xdplb() {
    let (config, lines) = converted(&web(
        "    delay_loop 3\n    retry 200\n    delay_before_retry 1\n    warmup 0\n    lb_algo rr\n    real_server 10.0.0.11 80 {\n        retry 1\n        TCP_CHECK {\n            connect_timeout 4\n        }\n    }\n    real_server 10.0.0.12 80 {\n        TCP_CHECK {\n        }\n    }\n",
    ));
    let svc = service(&config, Protocol::Tcp, 80);
    // A probe must end before the next starts: the interval grows to the timeout.
    let c = check(svc, 0);
    assert_eq!((c.interval_ms, c.timeout_ms, c.fall), (4_000, 4_000, 2));
    assert_note(
        &lines,
        12,
        "connect_timeout 4 s is longer than delay_loop 3 s: xdplb's check interval becomes 4 s",
    );
    // The default timeout of 5 s against delay_loop 3; retry 200 is more than xdplb's fall.
    let c = check(svc, 1);
    assert_eq!((c.interval_ms, c.timeout_ms, c.fall), (5_000, 5_000, 100));
    assert_note(
        &lines,
        16,
        "connect_timeout (keepalived's default 5 s) is longer than delay_loop 3 s",
    );
    assert_note(
        &lines,
        5,
        "retry 200: xdplb takes a server down after at most 100 failed probes",
    );
    assert_note(&lines, 6, "delay_before_retry 1 s: xdplb repeats a failed probe after its check interval (4 s), not sooner");
    assert_note(
        &lines,
        7,
        "warmup 0 s: xdplb starts each check at a random point",
    );
    // Fractions of a second, to the millisecond, rounded up.
    let (config, _) = converted(&web(
        "    lb_algo rr\n    real_server 10.0.0.11 80 {\n        TCP_CHECK {\n            delay_loop 1.5\n            connect_timeout .0001\n        }\n    }\n",
    ));
    let c = check(service(&config, Protocol::Tcp, 80), 0);
    assert_eq!((c.interval_ms, c.timeout_ms), (1_500, 1));
}

#[test]
fn http_checks() {
    let (config, lines) = converted(&web(
        "    lb_algo rr\n    real_server 10.0.0.11 80 {\n        HTTP_GET {\n            url {\n                path /a\n                status_code 200-299 404\n                regex o.k\n            }\n            url {\n                path /b\n            }\n            http_protocol 1.0\n        }\n    }\n    real_server 10.0.0.12 80 {\n        HTTP_GET {\n            url {\n                path /c\n                regex ok\n                regex_no_match\n            }\n        }\n    }\n",
    ));
    let svc = service(&config, Protocol::Tcp, 80);
    assert_eq!(
        check(svc, 0).check,
        Check::Http {
            path: "/a".into(),
            status: 200,
            body: None
        }
    );
    assert_eq!(
        check(svc, 1).check,
        Check::Http {
            path: "/c".into(),
            status: 200,
            body: None
        }
    );
    // HTTP_GET's default delay_before_retry (3 s) is implicit: no note for it.
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("delay_before_retry"))
            .count(),
        0
    );
    assert_note(
        &lines,
        9,
        "status_code 200-299 404: xdplb's check wants one status: 200",
    );
    assert_note(
        &lines,
        10,
        "regex o.k: xdplb looks for a plain substring only",
    );
    assert_note(
        &lines,
        12,
        "url: xdplb checks one url: only the first (line 7) is carried over",
    );
    assert_note(
        &lines,
        15,
        "http_protocol 1.0: xdplb's check sends HTTP/1.1",
    );
    assert_note(
        &lines,
        20,
        "url without status_code: keepalived accepts 200-299",
    );
    assert_note(&lines, 23, "regex_no_match");
}

#[test]
fn one_check_per_real_server() {
    let (config, lines) = converted(&web(
        "    lb_algo rr\n    real_server 10.0.0.11 80 {\n        SSL_GET {\n            url {\n                path /\n            }\n        }\n        HTTP_GET {\n            url {\n                path /h\n                status_code 200\n            }\n        }\n        TCP_CHECK {\n        }\n    }\n    real_server 10.0.0.12 80 {\n        SSL_GET {\n            connect_port 443\n            url {\n                path /\n            }\n        }\n    }\n    real_server 10.0.0.13 80 {\n        MISC_CHECK {\n            misc_path /bin/true\n        }\n    }\n",
    ));
    let svc = service(&config, Protocol::Tcp, 80);
    // The first checker is carried over: an SSL_GET is an https check that does not verify.
    assert!(matches!(
        check(svc, 0).check,
        Check::Https { verify: false, .. }
    ));
    assert_note(
        &lines,
        11,
        "HTTP_GET: xdplb runs one check per real server: the SSL_GET of line 6 is carried over",
    );
    assert_note(
        &lines,
        17,
        "TCP_CHECK: xdplb runs one check per real server",
    );
    let ssl = check(svc, 1);
    assert_eq!(ssl.port, Some(443));
    assert_eq!(
        ssl.check,
        Check::Https {
            path: "/".into(),
            status: 200,
            body: None,
            verify: false,
            sni: None,
            ca_file: None
        }
    );
    assert_note(
        &lines,
        21,
        "SSL_GET: an https check that does not verify the certificate (verify = false)",
    );
    assert_eq!(
        check(svc, 2).check,
        Check::Script {
            command: "/bin/true".into()
        }
    );
}

#[test]
fn misc_and_ping_checks() {
    let (config, lines) = converted(&web(
        "    lb_algo rr\n    real_server 10.0.0.11 80 {\n        MISC_CHECK {\n            misc_path \"/bin/true --quick\"\n            misc_timeout 3\n            misc_dynamic\n        }\n    }\n    real_server 10.0.0.12 80 {\n        PING_CHECK {\n            connect_timeout 2\n        }\n    }\n",
    ));
    let svc = service(&config, Protocol::Tcp, 80);
    let misc = check(svc, 0);
    assert_eq!(
        misc.check,
        Check::Script {
            command: "/bin/true --quick".into()
        }
    );
    assert_eq!(misc.timeout_ms, 3000);
    assert_note(
        &lines,
        9,
        "misc_dynamic: xdplb's script checks say up (exit 0) or down",
    );
    let ping = check(svc, 1);
    assert_eq!((ping.check, ping.timeout_ms), (Check::Ping, 2000));
    let (out, lines) = import(&web(
        "    real_server 10.0.0.13 80 {\n        MISC_CHECK {\n        }\n    }\n",
    ));
    assert!(out.is_none());
    assert!(
        lines.contains(&"keepalived.conf:5: error: MISC_CHECK without misc_path".to_owned()),
        "{lines:#?}"
    );
}

#[test]
fn scheduler_flags() {
    let mh = |flags: &str| {
        let (config, lines) = converted(&web(&format!(
            "    lb_algo mh\n{flags}    real_server 10.0.0.11 80 {{\n    }}\n"
        )));
        (service(&config, Protocol::Tcp, 80).hash, lines)
    };
    // IPVS's mh hashes the client address; with mh-port (flag-2) its port too.
    assert_eq!(mh("").0, Some(Hash::Src));
    assert_eq!(mh("    mh-port\n").0, Some(Hash::Flow));
    assert_eq!(mh("    flag-2\n    mh-fallback\n").0, Some(Hash::Flow));
    let (_, lines) = mh("    flag-3\n");
    assert_note(&lines, 5, "flag-3: this flag means nothing to xdplb");
    let (_, lines) = converted(&web(
        "    lb_algo sh\n    sh-port\n    sh-fallback\n    ops\n    real_server 10.0.0.11 80 {\n    }\n",
    ));
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_note(
        &lines,
        5,
        "sh-port: xdplb's sh hashes the client address only",
    );
    assert_note(&lines, 7, "ops: one-packet scheduling is for UDP only");
}

#[test]
fn what_xdplb_does_not_have_is_noted_on_its_line() {
    let text = "\
global_defs {
    router_id lb1
}
vrrp_sync_group G {
    group {
        VI_1
    }
}
vrrp_instance VI_1 {
    interface eth1
    virtual_router_id 1
}
virtual_server_group WEB {
    10.0.0.100 80
}
SSL {
    ca /etc/ca.pem
}
virtual_server 10.0.0.100 80 {
    lb_algo rr
    lb_kind DR
    protocol TCP
    ha_suspend
    alpha
    omega
    quorum 2
    hysteresis 1
    quorum_up /bin/true
    sorry_server 10.0.0.20 80
    virtualhost www.example.org
    smtp_alert
    persistence_engine sip
    real_server 10.0.0.11 8080 {
        notify_up /bin/true
        alpha on
        TCP_CHECK {
            connect_ip 10.0.0.50
            bindto 10.0.0.1
            log_all_failures
        }
        DNS_CHECK {
            type A
        }
    }
}
";
    let (out, lines) = import_with(text, None);
    let out = out.unwrap_or_else(|| panic!("{lines:#?}"));
    let expected = [
        (1, "global_defs: belongs to keepalived itself: skipped (keep running keepalived for VRRP: see docs/ha.md)"),
        (4, "vrrp_sync_group G: belongs to keepalived itself"),
        (9, "vrrp_instance VI_1: belongs to keepalived itself"),
        (10, "interface eth1: the director's interface, taken from the vrrp_instance"),
        (13, "virtual_server_group WEB: xdplb has no virtual server groups: skipped"),
        (16, "SSL: keepalived's own TLS settings: skipped"),
        (19, "real servers without inhibit_on_failure: keepalived removes a failed one"),
        (23, "ha_suspend: xdplb checks real servers whether or not this director holds the VIP"),
        (24, "alpha: xdplb starts real servers up"),
        (25, "omega: xdplb has no quorum"),
        (26, "quorum 2: xdplb has no quorum"),
        (27, "hysteresis 1: xdplb has no quorum"),
        (28, "quorum_up /bin/true: xdplb has no quorum"),
        (29, "sorry_server 10.0.0.20 80: xdplb has no sorry server"),
        (30, "virtualhost www.example.org: xdplb's HTTP check sends the real server's address as Host"),
        (31, "smtp_alert: xdplb sends no e-mail and has no SNMP"),
        (32, "persistence_engine sip: xdplb has no persistence engines"),
        (33, "real_server 10.0.0.11 8080: DR and TUN leave ports alone, so traffic reaches port 80 (as with IPVS); its check probes port 8080"),
        (34, "notify_up /bin/true: xdplb runs no scripts"),
        (35, "alpha on: xdplb starts real servers up"),
        (37, "connect_ip 10.0.0.50: xdplb checks the real server's own address"),
        (38, "bindto 10.0.0.1: xdplb's checks leave from the director's own address"),
        (39, "log_all_failures: xdplb logs changes of state only"),
        (41, "DNS_CHECK: xdplb has no such check"),
    ];
    for (line, text) in expected {
        assert_note(&lines, line, text);
    }
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    // The notes head the file too, as comments.
    assert!(
        out.contains("keepalived.conf:1: note: global_defs: "),
        "{out}"
    );
    let config = Source {
        path: "out.toml".into(),
        text: out,
    }
    .parse()
    .unwrap();
    assert_eq!(config.interface, "eth1");
    let c = check(service(&config, Protocol::Tcp, 80), 0);
    assert_eq!(c.port, Some(8080));
}

#[test]
fn inhibit_on_failure_is_what_xdplb_does() {
    let body = |inhibit: &str| {
        web(&format!(
            "    lb_algo rr\n{inhibit}    real_server 10.0.0.11 80 {{\n        TCP_CHECK {{\n        }}\n    }}\n"
        ))
    };
    let (_, lines) = converted(&body("    inhibit_on_failure\n"));
    assert_eq!(lines, Vec::<String>::new());
    let (_, lines) = converted(&body(""));
    assert_note(&lines, 1, "real servers without inhibit_on_failure");
    // A real server's own setting wins over its virtual server's.
    let (_, lines) = converted(&web(
        "    lb_algo rr\n    inhibit_on_failure\n    real_server 10.0.0.11 80 {\n        inhibit_on_failure off\n        TCP_CHECK {\n        }\n    }\n",
    ));
    assert_note(&lines, 1, "real servers without inhibit_on_failure");
}

#[test]
fn interface_from_the_command_line_or_vrrp() {
    let vs = web("    lb_algo rr\n    real_server 10.0.0.11 80 {\n    }\n");
    let (config, lines) = {
        let (out, lines) = import_with(&vs, Some("ens3"));
        (out.unwrap(), lines)
    };
    assert!(config.contains("interface = \"ens3\""), "{config}");
    assert_eq!(lines, Vec::<String>::new());
    let (out, lines) = import_with(&vs, None);
    assert!(out.is_none());
    assert_eq!(
        lines,
        ["keepalived.conf: error: no --interface given, and no vrrp_instance names one: give the interface the director receives its VIPs' traffic on"]
    );
    let two = format!(
        "vrrp_instance A {{\n    interface eth0\n}}\nvrrp_instance B {{\n    interface eth1\n}}\n{vs}"
    );
    let (out, lines) = import_with(&two, None);
    assert!(out.is_none());
    assert!(lines[0].contains("name different interfaces"), "{lines:?}");
    let (out, _) = import_with(&two, Some("eth1"));
    assert!(out.unwrap().contains("interface = \"eth1\""));
}

#[test]
fn what_cannot_be_converted_is_an_error_on_its_line() {
    let real = "    real_server 10.0.0.11 80 {\n    }\n";
    let cases: Vec<(String, usize, &str)> = vec![
        (
            web(&format!("    lb_kind TUN type gue port 6080\n{real}")),
            4,
            "xdplb tunnels with IPIP only, not gue",
        ),
        (
            web(&format!("    lb_kind TUN csum\n{real}")),
            4,
            "ipip tunnels have no checksum option",
        ),
        (
            format!("virtual_server fwmark 1 {{\n    lb_kind DR\n{real}}}\n"),
            1,
            "virtual_server fwmark 1: xdplb has no firewall marks",
        ),
        (
            format!("virtual_server group WEB {{\n    lb_kind DR\n{real}}}\n"),
            1,
            "virtual_server group WEB: xdplb has no virtual server groups",
        ),
        (
            format!("virtual_server 10.0.0.300 80 {{\n    lb_kind DR\n{real}}}\n"),
            1,
            "'10.0.0.300' is not an IP address",
        ),
        (
            format!("virtual_server 10.0.0.100 http {{\n    lb_kind DR\n{real}}}\n"),
            1,
            "'http' is not a port",
        ),
        (
            web("    real_server 10.0.0.x 80 {\n    }\n"),
            4,
            "real_server 10.0.0.x 80: '10.0.0.x' is not an IP address",
        ),
        (
            web("    real_server 2001:db8::2 80 {\n    }\n"),
            4,
            "not of the same address family",
        ),
        (
            web(&format!("    protocol SCTP\n{real}")),
            4,
            "protocol SCTP: xdplb balances TCP and UDP only",
        ),
        (
            web(&format!("    lb_algo xyz\n{real}")),
            4,
            "lb_algo xyz: unknown scheduler 'xyz'",
        ),
        (
            web(&format!("    lb_algo twos\n{real}")),
            4,
            "xdplb has no twos scheduler",
        ),
        (
            web("    real_server 10.0.0.11 80 {\n        weight 70000\n    }\n"),
            5,
            "weight: '70000' is out of range 0..=65535",
        ),
        (
            web("    real_server 10.0.0.11 80 {\n        weight\n    }\n"),
            5,
            "weight: needs a value",
        ),
        (
            web(&format!("    delay_loop soon\n{real}")),
            4,
            "delay_loop: 'soon' is not a time in seconds",
        ),
        (
            web(&format!("    persistence_granularity 255.0.255.0\n{real}")),
            1,
            "255.0.255.0 is not a netmask",
        ),
        (
            web("    real_server 10.0.0.11 80 {\n        uthreshold 10\n        lthreshold 20\n    }\n"),
            4,
            "lower connection threshold 20 needs an upper one above it",
        ),
        (
            web(&format!("    bogus 1\n{real}")),
            4,
            "unknown keyword 'bogus' in virtual_server",
        ),
        (
            web("    real_server 10.0.0.11 80 {\n        TCP_CHECK {\n            connect_prot 80\n        }\n    }\n"),
            6,
            "unknown keyword 'connect_prot' in TCP_CHECK",
        ),
        (
            format!("virtal_server 10.0.0.100 80 {{\n{real}}}\n"),
            1,
            "unknown keyword 'virtal_server'",
        ),
        (
            web("    real_server 10.0.0.11 80 {\n        HTTP_GET {\n        }\n    }\n"),
            5,
            "HTTP_GET without a url { path ... }",
        ),
        (
            web("    real_server 10.0.0.11 80 {\n        HTTP_GET {\n            url {\n                path /\n                status_code 2xx\n            }\n        }\n    }\n"),
            8,
            "status_code: '2xx' is not a status code",
        ),
        (
            web("    real_server 10.0.0.11 80 {\n        HTTP_GET {\n            url {\n                path healthz\n            }\n        }\n    }\n"),
            5,
            "HTTP_GET: http check path must start with '/'",
        ),
        (
            "virtual_server 10.0.0.100 0 {\n    lb_kind DR\n    protocol TCP\n    real_server 10.0.0.11 {\n        TCP_CHECK {\n        }\n    }\n}\n".to_owned(),
            5,
            "TCP_CHECK: the service takes every port (0) and the real server names none: give connect_port",
        ),
        (
            web("    real_server 10.0.0.11 80 {\n    }\n    real_server 10.0.0.11 8080 {\n    }\n"),
            6,
            "real server 10.0.0.11:80 already exists",
        ),
        (
            format!("{}{}", web(real), web(real)),
            8,
            "virtual_server 10.0.0.100 80: the same service as keepalived.conf:1",
        ),
        (
            web(&format!("    lb_algo rr\n{}", real.replace(" {\n    }", " {\n        weight 1\n"))),
            1,
            "'{' is never closed",
        ),
    ];
    for (text, line, what) in cases {
        let err = error(&text);
        assert!(
            err.starts_with(&format!("keepalived.conf:{line}: error: ")) && err.contains(what),
            "expected an error on line {line} with {what:?}, got {err:?} for\n{text}"
        );
    }
}

#[test]
fn a_missing_file_is_an_error() {
    let (out, report) = keepalived::import(
        Path::new("/nonexistent/keepalived.conf"),
        Some("eth0"),
        None,
    );
    assert!(out.is_none());
    assert_eq!(
        report.lines(),
        ["/nonexistent/keepalived.conf: error: cannot read /nonexistent/keepalived.conf: No such file or directory (os error 2)"]
    );
}

#[test]
fn every_error_is_reported_and_notes_are_held_back() {
    let (out, lines) = import(&web(
        "    quorum 2\n    lb_algo xyz\n    real_server 10.0.0.11 80 {\n        weight -1\n    }\n",
    ));
    assert!(out.is_none());
    assert_eq!(
        lines,
        [
            "keepalived.conf:5: error: lb_algo xyz: unknown scheduler 'xyz' (xdplb has sh mh rr wrr lc wlc sed nq dh lblc lblcr fo ovf)",
            "keepalived.conf:7: error: weight: '-1' is out of range 0..=65535",
        ]
    );
}

#[test]
fn nat_virtual_servers_become_masquerading_with_their_ports() {
    // lb_kind NAT, and no lb_kind at all (keepalived's default): LVS/NAT, ports mapped.
    let text = "virtual_server 10.0.0.100 80 {\n    lb_kind NAT\n    protocol TCP\n    real_server 192.168.10.11 8080 {\n    }\n}\n\
                virtual_server 10.0.0.100 53 {\n    protocol UDP\n    real_server 192.168.10.12 5353 {\n    }\n}\n";
    let (config, lines) = converted(text);
    let web = service(&config, Protocol::Tcp, 80);
    let real = web.reals[0].get_ref();
    assert_eq!((real.forward, real.port), (Forward::Masq, Some(8080)));
    let dns = service(&config, Protocol::Udp, 53);
    let real = dns.reals[0].get_ref();
    assert_eq!((real.forward, real.port), (Forward::Masq, Some(5353)));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("no lb_kind: LVS/NAT, keepalived's default")),
        "{lines:#?}"
    );
}

/// An IPv6 virtual server (keepalived's `ip_family inet6` or just IPv6 addresses) converts as an
/// IPv4 one does, by direct routing.
#[test]
fn an_ipv6_virtual_server_converts() {
    let (config, _) = converted(
        "virtual_server 2001:db8::100 80 {\n    ip_family inet6\n    lb_kind DR\n    protocol TCP\n    real_server 2001:db8::11 80 {\n    }\n}\n",
    );
    let svc = service(&config, Protocol::Tcp, 80);
    assert_eq!(
        svc.vip,
        "2001:db8::100".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(
        svc.reals[0].get_ref().address,
        "2001:db8::11".parse::<std::net::IpAddr>().unwrap()
    );
}

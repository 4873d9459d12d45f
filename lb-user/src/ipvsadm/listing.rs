//! ipvsadm's listings, column for column: scripts and eyes used to `ipvsadm -Ln` read xdplb's
//! the same way. Addresses are always numeric (as with -n).

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use super::args::{Columns, ListOptions};
use crate::{
    control::{ConnView, Listing, RealView, ServiceView},
    state::{Forward, Hash, Protocol, Scheduler},
};

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

fn forward_name(f: Forward) -> &'static str {
    match f {
        Forward::Route => "Route",
        Forward::Tunnel => "Tunnel",
        Forward::Masq => "Masq",
    }
}

fn forward_switch(f: Forward) -> &'static str {
    match f {
        Forward::Route => "-g",
        Forward::Tunnel => "-i",
        Forward::Masq => "-m",
    }
}

/// "ADDR:PORT" or "[ADDR]:PORT" -> (address, port), for sorting as ipvsadm does (by address,
/// then port; IPv4 before IPv6).
fn sort_key(address: &str) -> (IpAddr, u16) {
    address
        .parse::<SocketAddr>()
        .map(|a| (a.ip(), a.port()))
        .unwrap_or((Ipv4Addr::UNSPECIFIED.into(), 0))
}

/// The services in listing order: sorted by protocol, address and port unless --nosort.
fn ordered(l: &Listing, sort: bool) -> Vec<ServiceView> {
    let mut services = l.services.clone();
    if sort {
        services.sort_by_key(|s| (s.protocol, sort_key(&s.address)));
        for s in &mut services {
            s.reals.sort_by_key(|r| sort_key(&r.address));
        }
    }
    services
}

/// ipvsadm's numbers in 9 columns: exact with --exact, else shortened to K, M, G or T.
fn number(out: &mut String, n: u64, exact: bool) {
    if exact {
        let len = n.to_string().len();
        let _ = write!(out, "{n:>w$}", w = if len <= 8 { 9 } else { len + 1 });
        return;
    }
    let _ = match n {
        0..100_000_000 => write!(out, "{n:>9}"),
        100_000_000..1_000_000_000 => write!(out, "{:>8}K", n / 1_000),
        1_000_000_000..100_000_000_000 => write!(out, "{:>8}M", n / 1_000_000),
        100_000_000_000..100_000_000_000_000 => write!(out, "{:>8}G", n / 1_000_000_000),
        _ => write!(out, "{:>8}T", n / 1_000_000_000_000),
    };
}

fn title(out: &mut String, columns: Columns) {
    let five = |out: &mut String, names: [&str; 5]| {
        let _ = writeln!(
            out,
            "{:<33} {:>8} {:>8} {:>8} {:>8} {:>8}\n  -> RemoteAddress:Port",
            "Prot LocalAddress:Port", names[0], names[1], names[2], names[3], names[4]
        );
    };
    match columns {
        Columns::Stats => five(out, ["Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"]),
        Columns::Rate => five(out, ["CPS", "InPPS", "OutPPS", "InBPS", "OutBPS"]),
        Columns::Thresholds => {
            let _ = writeln!(
                out,
                "{:<33} {:<10} {:<10} {:<10} {:<10}\n  -> RemoteAddress:Port",
                "Prot LocalAddress:Port", "Uthreshold", "Lthreshold", "ActiveConn", "InActConn"
            );
        }
        Columns::PersistentConn => {
            let _ = writeln!(
                out,
                "{:<33} {:<9} {:<11} {:<10} {:<10}\n  -> RemoteAddress:Port",
                "Prot LocalAddress:Port", "Weight", "PersistConn", "ActiveConn", "InActConn"
            );
        }
        Columns::Plain => out.push_str(
            "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n",
        ),
    }
}

fn truncated(s: &str, width: usize) -> &str {
    &s[..s.len().min(width)]
}

/// ipvsadm's --stats columns: Conns, InPkts, OutPkts, InBytes, OutBytes.
fn stats_numbers(out: &mut String, stats: &crate::control::StatsView, exact: bool) {
    for n in [
        stats.conns,
        stats.packets,
        stats.out_packets,
        stats.bytes,
        stats.out_bytes,
    ] {
        number(out, n, exact);
    }
}

fn service_entry(out: &mut String, s: &ServiceView, o: ListOptions) {
    let name = format!("{}  {}", protocol_name(s.protocol), s.address);
    let name = truncated(&name, 33);
    let stats = s.stats.unwrap_or_default();
    match o.columns {
        Columns::Stats | Columns::Rate => {
            let _ = write!(out, "{name:<33}");
            stats_numbers(out, &stats, o.exact);
        }
        _ => {
            let _ = write!(out, "{name} {}", s.scheduler.name());
            if let Some(timeout) = s.persistent {
                let _ = write!(out, " persistent {timeout}");
                if let Some(mask) = s.netmask.filter(|m| !m.is_single()) {
                    let _ = write!(out, " mask {mask}");
                }
            }
        }
    }
    out.push('\n');
    for r in &s.reals {
        real_entry(out, r, o);
    }
}

fn real_entry(out: &mut String, r: &RealView, o: ListOptions) {
    let name = truncated(&r.address, 28);
    let stats = r.stats.unwrap_or_default();
    let _ = match o.columns {
        Columns::Stats => {
            let _ = write!(out, "  -> {name:<28}");
            stats_numbers(out, &stats, o.exact);
            writeln!(out)
        }
        Columns::Rate => {
            let _ = write!(
                out,
                "  -> {name:<28} {:>8} {:>8} {:>8}",
                stats.conns, stats.packets, stats.out_packets
            );
            number(out, stats.bytes, o.exact);
            number(out, stats.out_bytes, o.exact);
            writeln!(out)
        }
        Columns::Thresholds => writeln!(
            out,
            "  -> {name:<28} {:<10} {:<10} {:<10} {:<10}",
            r.u_threshold, r.l_threshold, r.active_conns, r.inactive_conns
        ),
        Columns::PersistentConn => writeln!(
            out,
            "  -> {name:<28} {:<9} {:<11} {:<10} {:<10}",
            r.weight, r.persistent_conns, r.active_conns, r.inactive_conns
        ),
        Columns::Plain => writeln!(
            out,
            "  -> {name:<28} {:<7} {:<6} {:<10} {:<10}",
            forward_name(r.forward),
            r.weight,
            r.active_conns,
            r.inactive_conns
        ),
    };
}

/// `-L`: every service, or the one asked for (which, as ipvsadm, comes without the version line).
pub fn services(l: &Listing, only: Option<(Protocol, &str)>, o: ListOptions) -> String {
    let mut out = String::new();
    if only.is_none() {
        // IPVS's own first line, so that parsers which skip or match it keep working; the size
        // is the connection table's.
        let _ = writeln!(out, "IP Virtual Server version 1.2.1 (size={})", l.conn_max);
    }
    title(&mut out, o.columns);
    for s in ordered(l, o.sort)
        .iter()
        .filter(|s| only.is_none_or(|(p, a)| p == s.protocol && a == s.address))
    {
        service_entry(&mut out, s, o);
    }
    out
}

/// `-S`: the rules `-R` reads back (ipvsadm-save's format, numeric).
pub fn rules(l: &Listing) -> String {
    let mut out = String::new();
    for s in ordered(l, true) {
        let svc = format!(
            "{} {}",
            match s.protocol {
                Protocol::Tcp => "-t",
                Protocol::Udp => "-u",
            },
            s.address
        );
        let _ = write!(out, "-A {svc} -s {}", s.scheduler.name());
        if s.scheduler == Scheduler::Mh && s.hash == Some(Hash::Flow) {
            out.push_str(" -b mh-port");
        }
        if let Some(timeout) = s.persistent {
            let _ = write!(out, " -p {timeout}");
            if let Some(mask) = s.netmask.filter(|m| !m.is_single()) {
                let _ = write!(out, " -M {mask}");
            }
        }
        out.push('\n');
        for r in &s.reals {
            let _ = write!(
                out,
                "-a {svc} -r {} {} -w {}",
                r.address,
                forward_switch(r.forward),
                r.weight
            );
            if r.u_threshold != 0 {
                let _ = write!(out, " -x {}", r.u_threshold);
            }
            if r.l_threshold != 0 {
                let _ = write!(out, " -y {}", r.l_threshold);
            }
            out.push('\n');
        }
    }
    out
}

/// `-L -c`: the connection table as `ipvsadm -Lnc` prints IPVS's.
pub fn connections(conns: &[ConnView]) -> String {
    let mut out = String::from("IPVS connection entries\n");
    let _ = writeln!(
        out,
        "pro expire {:<11} {:<18} {:<18} destination",
        "state", "source", "virtual"
    );
    for c in conns {
        let _ = writeln!(
            out,
            "{:<3} {:<6} {:<11} {:<18} {:<18} {}",
            protocol_name(c.protocol),
            format!("{:02}:{:02}", c.expires / 60, c.expires % 60),
            c.state,
            c.client,
            c.virtual_address,
            c.real
        );
    }
    out
}

/// `-L --timeout`.
pub fn timeouts(l: &Listing) -> String {
    format!(
        "Timeout (tcp tcpfin udp): {} {} {}\n",
        l.timeouts.tcp, l.timeouts.tcp_fin, l.timeouts.udp
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        control::StatsView,
        datapath::AttachMode,
        state::{Mac, Scheduler},
    };

    fn real(address: &str, forward: Forward, weight: u32, active: u64, inactive: u64) -> RealView {
        RealView {
            address: address.to_owned(),
            forward,
            weight,
            mac: Mac([2, 0, 0, 0, 0, 1]),
            health: None,
            active_conns: active,
            inactive_conns: inactive,
            u_threshold: 0,
            l_threshold: 0,
            overloaded: false,
            ..RealView::default()
        }
    }

    fn listing() -> Listing {
        let service = |protocol, address: &str, scheduler, reals| ServiceView {
            protocol,
            address: address.to_owned(),
            scheduler,
            mh_size: None,
            hash: None,
            persistent: None,
            netmask: None,
            stats: None,
            rates: None,
            reals,
        };
        let mut persistent = service(
            Protocol::Tcp,
            "10.0.0.100:0",
            Scheduler::Wlc,
            vec![real("10.0.0.12:0", Forward::Route, 1, 0, 0)],
        );
        persistent.persistent = Some(360);
        persistent.netmask = Some(crate::state::Netmask::Dotted(Ipv4Addr::new(
            255, 255, 255, 0,
        )));
        let mut mh = service(Protocol::Udp, "10.0.0.100:53", Scheduler::Mh, vec![]);
        mh.hash = Some(Hash::Flow);
        Listing {
            interface: "eth0".to_owned(),
            mode: AttachMode::Native,
            services: vec![
                mh,
                service(
                    Protocol::Tcp,
                    "10.0.0.100:80",
                    Scheduler::Rr,
                    vec![
                        real("10.0.0.12:80", Forward::Tunnel, 2, 1234, 5),
                        real("10.0.0.11:80", Forward::Route, 1, 3, 40),
                    ],
                ),
                persistent,
            ],
            reasons: Default::default(),
            drained: false,
            sync: None,
            announce: None,
            timeouts: Default::default(),
            conn_max: 1_000_000,
            nat_max: 1_000_000,
            agent: None,
            reason_rates: Default::default(),
        }
    }

    #[test]
    fn the_list_has_ipvsadms_layout() {
        let o = ListOptions {
            sort: true,
            ..Default::default()
        };
        // Written from ipvsadm's format strings; the trailing blanks are ipvsadm's too.
        let expected = "\
IP Virtual Server version 1.2.1 (size=1000000)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.0.0.100:0 wlc persistent 360 mask 255.255.255.0
  -> 10.0.0.12:0                  Route   1      0          0         
TCP  10.0.0.100:80 rr
  -> 10.0.0.11:80                 Route   1      3          40        
  -> 10.0.0.12:80                 Tunnel  2      1234       5         
UDP  10.0.0.100:53 mh
";
        assert_eq!(services(&listing(), None, o), expected);
        // One service: no version line.
        let one = services(&listing(), Some((Protocol::Udp, "10.0.0.100:53")), o);
        assert_eq!(
            one,
            "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\nUDP  10.0.0.100:53 mh\n"
        );
    }

    #[test]
    fn stats_thresholds_and_numbers() {
        let mut l = listing();
        l.services[1].stats = Some(StatsView {
            conns: 7,
            packets: 123_456_789,
            bytes: 12_345_678_901,
            ..Default::default()
        });
        l.services[1].reals[0].u_threshold = 100;
        l.services[1].reals[0].l_threshold = 75;
        let o = ListOptions {
            columns: Columns::Stats,
            sort: false,
            exact: false,
        };
        let out = services(&l, Some((Protocol::Tcp, "10.0.0.100:80")), o);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes"
        );
        assert_eq!(lines[1], "  -> RemoteAddress:Port");
        assert_eq!(
            lines[2],
            "TCP  10.0.0.100:80                       7  123456K        0   12345M        0"
        );
        assert_eq!(
            lines[3],
            "  -> 10.0.0.12:80                        0        0        0        0        0"
        );
        let exact = services(
            &l,
            Some((Protocol::Tcp, "10.0.0.100:80")),
            ListOptions { exact: true, ..o },
        );
        assert!(
            exact.contains("        7 123456789        0 12345678901        0\n"),
            "{exact}"
        );
        let t = services(
            &l,
            Some((Protocol::Tcp, "10.0.0.100:80")),
            ListOptions {
                columns: Columns::Thresholds,
                ..o
            },
        );
        assert!(
            t.contains(
                "\n  -> 10.0.0.12:80                 100        75         1234       5         \n"
            ),
            "{t}"
        );
    }

    #[test]
    fn rules_are_what_restore_reads() {
        assert_eq!(
            rules(&listing()),
            "\
-A -t 10.0.0.100:0 -s wlc -p 360 -M 255.255.255.0
-a -t 10.0.0.100:0 -r 10.0.0.12:0 -g -w 1
-A -t 10.0.0.100:80 -s rr
-a -t 10.0.0.100:80 -r 10.0.0.11:80 -g -w 1
-a -t 10.0.0.100:80 -r 10.0.0.12:80 -i -w 2
-A -u 10.0.0.100:53 -s mh -b mh-port
"
        );
    }

    #[test]
    fn connections_as_ipvsadm_lnc() {
        let c = ConnView {
            protocol: Protocol::Tcp,
            client: "10.1.0.1:40000".to_owned(),
            virtual_address: "10.0.0.100:80".to_owned(),
            real: "10.0.0.11:80".to_owned(),
            state: "ESTABLISHED".to_owned(),
            expires: 899,
        };
        assert_eq!(
            connections(&[c]),
            "IPVS connection entries\npro expire state       source             virtual            destination\nTCP 14:59  ESTABLISHED 10.1.0.1:40000     10.0.0.100:80      10.0.0.11:80\n"
        );
    }
}

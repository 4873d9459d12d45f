//! The policy layer without root: state transitions and what they write, against a fake datapath.

use std::{collections::HashMap, net::Ipv4Addr};

use anyhow::{bail, Result};
use lb_common::{DirectorConfig, FlowKey, RealServer, ServiceInfo, ServiceKey};

use super::*;
use crate::datapath::{DatapathCounters, MapWriter};

/// An in-memory datapath that records the order of writes and can fail on the n-th one.
#[derive(Default)]
struct FakeMaps {
    services: HashMap<ServiceKey, ServiceInfo>,
    tables: HashMap<u32, Vec<u32>>,
    filter: HashMap<u32, bool>,
    reals: HashMap<u32, RealServer>,
    log: Vec<String>,
    fail_at: Option<usize>,
}

impl FakeMaps {
    fn write(&mut self, what: String) -> Result<()> {
        if self.fail_at == Some(self.log.len()) {
            self.fail_at = None;
            bail!("injected failure at {what}");
        }
        self.log.push(what);
        Ok(())
    }

    /// What the datapath would do for a new flow: the real server id its slot leads to.
    fn pick(&self, svc: &ServiceAddr, flow: &FlowKey) -> Option<u32> {
        let info = self.services.get(&svc.key())?;
        let slot = lb_common::sched::slot(info, flow)?;
        let id = *self.tables.get(&info.id)?.get(slot as usize)?;
        self.reals
            .get(&id)
            .filter(|r| r.flags != 0 && r.service == info.id)
            .map(|_| id)
    }
}

impl MapWriter for FakeMaps {
    fn set_config(&mut self, _: &DirectorConfig) -> Result<()> {
        self.write("config".into())
    }
    fn set_new_flow_limit(&mut self, limit: u32) -> Result<()> {
        self.write(format!("new flow limit {limit}"))
    }
    fn set_service(&mut self, key: &ServiceKey, info: &ServiceInfo) -> Result<()> {
        self.write(format!("service+ {}", info.id))?;
        self.services.insert(*key, *info);
        Ok(())
    }
    fn set_vip_filter(&mut self, index: u32, on: bool) -> Result<()> {
        self.write(format!("filter {index} {on}"))?;
        self.filter.insert(index, on);
        Ok(())
    }
    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        self.write("service-".into())?;
        self.services.remove(key);
        Ok(())
    }
    fn set_table(&mut self, service_id: u32, table: &[u32]) -> Result<()> {
        self.write(format!("table {service_id} x{}", table.len()))?;
        self.tables.insert(service_id, table.to_vec());
        Ok(())
    }
    fn set_real(&mut self, id: u32, real: &RealServer) -> Result<()> {
        self.write(format!("real {id} {}", real.flags))?;
        self.reals.insert(id, *real);
        Ok(())
    }
    fn counters(&self) -> Result<DatapathCounters> {
        Ok(DatapathCounters::default())
    }
    fn reset_counters(&mut self, _: &[u32], _: &[u32]) -> Result<()> {
        Ok(())
    }
    fn reset_all_counters(&mut self) -> Result<()> {
        Ok(())
    }
    fn service_keys(&self) -> Result<Vec<ServiceKey>> {
        Ok(self.services.keys().copied().collect())
    }
    fn set_local_macs(&mut self, _: &[([u8; 6], bool)]) -> Result<()> {
        self.write("local macs".into())
    }
    fn sync_counters(&self) -> Result<(u64, u64)> {
        Ok((0, 0))
    }
    fn set_limits(&mut self, id: u32, limits: &lb_common::RealLimits) -> Result<()> {
        self.write(format!("limits {id} {}", limits.weight))
    }
    fn reset_position(&mut self, service_id: u32) -> Result<()> {
        self.write(format!("position {service_id}"))
    }
    fn positions(&self, _: u32) -> Result<Vec<u64>> {
        Ok(vec![0])
    }
    fn locality(&self, _: u32, _: lb_common::Addr) -> Result<Vec<u32>> {
        Ok(Vec::new())
    }
    fn set_persistence(&mut self, id: u32, p: Option<&super::Persistence>) -> Result<()> {
        self.write(format!("persistence {id} {p:?}"))
    }
    fn template(&self, _: u32, _: std::net::IpAddr) -> Result<Option<(u32, u32)>> {
        Ok(None)
    }
    fn set_egress(&mut self, id: u32, e: &lb_common::RealEgress) -> Result<()> {
        self.write(format!("egress {id} {} {}", e.ifindex, e.port))
    }
    fn set_interfaces(&mut self, _: &[(u32, lb_common::Iface)]) -> Result<()> {
        self.write("interfaces".into())
    }
    fn take_neigh_misses(&mut self) -> Vec<(lb_common::Addr, u32)> {
        Vec::new()
    }
    fn set_nat_source(&mut self, index: u32, on: bool) -> Result<()> {
        self.write(format!("nat source {index} {on}"))
    }
    fn persistent_conns(&self) -> Result<std::collections::HashMap<u32, u64>> {
        Ok(Default::default())
    }
    fn connections(&self) -> Result<Vec<(lb_common::FlowKey, lb_common::Conn)>> {
        Ok(Vec::new())
    }
    fn release_templates(&mut self, released: &[(u32, u32)]) -> Result<()> {
        self.write(format!("release {released:?}"))
    }
    fn set_tunnel_src6(&mut self, _: lb_common::Addr) -> Result<()> {
        Ok(())
    }
}

fn tcp(vip: [u8; 4], port: u16) -> ServiceAddr {
    ServiceAddr {
        protocol: Protocol::Tcp,
        vip: vip.into(),
        port,
    }
}

fn real(addr: [u8; 4], weight: u32) -> RealSpec {
    RealSpec {
        addr: Some(addr.into()),
        weight: Some(weight),
        mac: Some(Mac([2, 0, 0, 0, 0, addr[3]])),
        ..Default::default()
    }
}

fn three_reals() -> (State, ServiceAddr) {
    let svc = tcp([10, 0, 0, 100], 80);
    let mut s = State::default()
        .add_service(svc, &SchedulerSpec::default())
        .unwrap();
    for i in 11..=13 {
        s = s.add_real(svc, &real([10, 0, 0, i], 1)).unwrap();
    }
    (s, svc)
}

#[test]
fn bad_changes_are_rejected_with_one_line_and_change_nothing() {
    let (s, svc) = three_reals();
    let before = s.clone();
    let errors = [
        s.add_service(svc, &SchedulerSpec::default()).unwrap_err(),
        s.add_service(tcp([10, 0, 0, 1], 0), &SchedulerSpec::default())
            .unwrap_err(),
        s.add_real(svc, &real([10, 0, 0, 11], 1)).unwrap_err(),
        s.add_real(svc, &real([10, 0, 0, 20], 65536)).unwrap_err(),
        s.add_real(tcp([10, 0, 0, 9], 80), &real([10, 0, 0, 20], 1))
            .unwrap_err(),
        s.add_real(
            svc,
            &RealSpec {
                port: Some(8080),
                ..real([10, 0, 0, 20], 1)
            },
        )
        .unwrap_err(),
        s.edit_real(svc, &real([10, 0, 0, 99], 1)).unwrap_err(),
        s.del_real(svc, [10, 0, 0, 99].into()).unwrap_err(),
        s.del_service(tcp([10, 0, 0, 100], 81)).unwrap_err(),
    ];
    for e in errors {
        let msg = format!("{e:#}");
        assert!(!msg.contains('\n') && !msg.is_empty(), "{msg}");
    }
    assert_eq!(s, before);
}

#[test]
fn messages_name_the_problem() {
    let (s, svc) = three_reals();
    let msg = |e: anyhow::Error| format!("{e:#}");
    assert_eq!(
        msg(s.add_service(svc, &SchedulerSpec::default()).unwrap_err()),
        "service TCP 10.0.0.100:80 already exists"
    );
    assert_eq!(
        msg(s.add_real(svc, &real([10, 0, 0, 20], 70000)).unwrap_err()),
        "weight 70000 is out of range 0..=65535"
    );
    assert_eq!(
        msg(s.del_real(svc, [10, 0, 0, 99].into()).unwrap_err()),
        "no such real server 10.0.0.99 in service TCP 10.0.0.100:80"
    );
    assert_eq!(
        msg(s.del_service(tcp([10, 0, 0, 7], 80)).unwrap_err()),
        "no such service: TCP 10.0.0.7:80"
    );
}

#[test]
fn new_service_is_written_table_first_and_fully() {
    let (s, svc) = three_reals();
    let mut maps = FakeMaps::default();
    apply(&mut maps, &State::default(), &s).unwrap();
    let service_at = maps
        .log
        .iter()
        .position(|l| l.starts_with("service+"))
        .unwrap();
    let slots_at = maps
        .log
        .iter()
        .position(|l| l.starts_with("table"))
        .unwrap();
    assert!(slots_at < service_at, "{:?}", maps.log);
    assert!(
        maps.log
            .iter()
            .take(slots_at)
            .filter(|l| l.starts_with("real"))
            .count()
            == 3
    );
    let service = s.service(&svc).unwrap();
    assert_eq!(maps.tables[&service.id], *service.table);
    // The fake datapath picks what the state predicts, for every client.
    for i in 0..=255u8 {
        let flow = service.flow(Ipv4Addr::new(192, 168, 7, i).into(), 1000 + i as u16);
        assert_eq!(maps.pick(&svc, &flow), service.pick(&flow).map(|r| r.id));
    }
}

#[test]
fn deleting_a_real_moves_only_its_clients() {
    let (s, svc) = three_reals();
    let mut maps = FakeMaps::default();
    apply(&mut maps, &State::default(), &s).unwrap();
    let gone = s
        .service(&svc)
        .unwrap()
        .real([10, 0, 0, 12].into())
        .unwrap()
        .id;
    let next = s.del_real(svc, [10, 0, 0, 12].into()).unwrap();
    apply(&mut maps, &s, &next).unwrap();
    for i in 0..=255u8 {
        let flow = s
            .service(&svc)
            .unwrap()
            .flow(Ipv4Addr::new(172, 16, 0, i).into(), 999);
        let before = s.service(&svc).unwrap().pick(&flow).unwrap().id;
        let after = maps.pick(&svc, &flow).unwrap();
        if before != gone {
            assert_eq!(before, after, "client {i} moved");
        } else {
            assert_ne!(after, gone);
        }
    }
    assert_eq!(maps.reals[&gone].flags, 0, "deleted real is deactivated");
}

#[test]
fn deleting_a_service_removes_its_entry_first() {
    let (s, svc) = three_reals();
    let mut maps = FakeMaps::default();
    apply(&mut maps, &State::default(), &s).unwrap();
    maps.log.clear();
    let next = s.del_service(svc).unwrap();
    apply(&mut maps, &s, &next).unwrap();
    assert_eq!(maps.log[0], "service-");
    assert!(maps.services.is_empty());
    assert!(maps.reals.values().all(|r| r.flags == 0));
}

#[test]
fn a_failed_write_restores_the_old_datapath() {
    let (s, svc) = three_reals();
    let mut maps = FakeMaps::default();
    apply(&mut maps, &State::default(), &s).unwrap();
    let tables = maps.tables.clone();
    let next = s.del_real(svc, [10, 0, 0, 11].into()).unwrap();
    maps.fail_at = Some(maps.log.len() + 1);
    assert!(apply(&mut maps, &s, &next).is_err());
    assert!(maps.tables == tables, "the table was not restored");
    assert!(maps.reals.values().all(|r| r.flags != 0));
}

#[test]
fn weight_zero_takes_a_real_out_of_the_table() {
    let (s, svc) = three_reals();
    let next = s
        .edit_real(
            svc,
            &RealSpec {
                addr: Some([10, 0, 0, 13].into()),
                weight: Some(0),
                ..Default::default()
            },
        )
        .unwrap();
    let id = next
        .service(&svc)
        .unwrap()
        .real([10, 0, 0, 13].into())
        .unwrap()
        .id;
    assert!(!next.service(&svc).unwrap().table.contains(&id));
}

fn mh(size: Option<u32>, hash: Option<Hash>) -> SchedulerSpec {
    SchedulerSpec {
        scheduler: Some(Scheduler::Mh),
        mh_size: size,
        hash,
        ..Default::default()
    }
}

#[test]
fn maglev_options_are_checked() {
    let svc = tcp([10, 0, 0, 100], 80);
    let s = State::default();
    let msg = |e: anyhow::Error| format!("{e:#}");
    assert!(msg(s.add_service(svc, &mh(Some(1000), None)).unwrap_err())
        .starts_with("Maglev table size 1000 is not one of 251,"));
    assert_eq!(
        msg(s
            .add_service(
                svc,
                &SchedulerSpec {
                    hash: Some(Hash::Src),
                    ..Default::default()
                }
            )
            .unwrap_err()),
        "--mh-size and --hash apply to the mh scheduler only"
    );
    let s = s.add_service(svc, &mh(Some(251), None)).unwrap();
    let s = s.add_real(svc, &real([10, 0, 0, 11], 1)).unwrap();
    let s = s.add_real(svc, &real([10, 0, 0, 12], 1)).unwrap();
    let before = s.clone();
    assert!(msg(s.add_real(svc, &real([10, 0, 0, 13], 1)).unwrap_err())
        .contains("choose a larger --mh-size"));
    assert_eq!(s, before);
    // Defaults: 65537 slots, flow hash.
    let t = State::default().add_service(svc, &mh(None, None)).unwrap();
    let got = t.service(&svc).unwrap();
    assert_eq!((got.table.len(), got.hash), (65537, Hash::Flow));
}

#[test]
fn changing_the_scheduler_rebuilds_and_a_shrinking_table_follows_its_entry() {
    let (s, svc) = three_reals();
    let mut maps = FakeMaps::default();
    apply(&mut maps, &State::default(), &s).unwrap();
    let m = s
        .edit_service(svc, &mh(Some(65537), Some(Hash::Src)))
        .unwrap();
    maps.log.clear();
    apply(&mut maps, &s, &m).unwrap();
    assert_eq!(
        maps.log,
        ["table 0 x65537", "service+ 0"],
        "a growing table goes first"
    );
    // Source hashing in mh: every port of a client goes to the same real server.
    let service = m.service(&svc).unwrap();
    for i in 0..50u8 {
        let client = Ipv4Addr::new(10, 9, 0, i);
        let first = maps.pick(&svc, &service.flow(client.into(), 1));
        assert_eq!(maps.pick(&svc, &service.flow(client.into(), 2)), first);
        assert_eq!(
            first,
            service.pick(&service.flow(client.into(), 3)).map(|r| r.id)
        );
    }
    let back = m
        .edit_service(
            svc,
            &SchedulerSpec {
                scheduler: Some(Scheduler::Sh),
                ..Default::default()
            },
        )
        .unwrap();
    maps.log.clear();
    apply(&mut maps, &m, &back).unwrap();
    assert_eq!(
        maps.log,
        ["service+ 0", "table 0 x4096"],
        "a shrinking table goes last"
    );
}

#[test]
fn maglev_removal_moves_few_other_flows() {
    let svc = tcp([10, 0, 0, 100], 80);
    let mut s = State::default().add_service(svc, &mh(None, None)).unwrap();
    for i in 11..=20 {
        s = s.add_real(svc, &real([10, 0, 0, i], 1)).unwrap();
    }
    let next = s.del_real(svc, [10, 0, 0, 15].into()).unwrap();
    let (a, b) = (
        &s.service(&svc).unwrap().table,
        &next.service(&svc).unwrap().table,
    );
    let moved = a.iter().zip(b.iter()).filter(|(x, y)| x != y).count() as f64 / a.len() as f64;
    assert!((0.1..0.15).contains(&moved), "{moved}");
    // And back: it gets its id back (the lowest free one) and the table is the same again.
    let again = next.add_real(svc, &real([10, 0, 0, 15], 1)).unwrap();
    let id = |st: &State| {
        st.service(&svc)
            .unwrap()
            .real([10, 0, 0, 15].into())
            .unwrap()
            .id
    };
    assert_eq!(id(&again), id(&s));
    assert_eq!(&again.service(&svc).unwrap().table, a);
}

#[test]
fn the_vip_prefilter_follows_the_services() {
    let a = tcp([10, 0, 0, 100], 80);
    let b = ServiceAddr {
        protocol: Protocol::Udp,
        vip: [10, 9, 0, 100].into(),
        port: 53,
    };
    let s1 = State::default()
        .add_service(a, &SchedulerSpec::default())
        .unwrap();
    let s2 = s1.add_service(b, &SchedulerSpec::default()).unwrap();
    let mut maps = FakeMaps::default();
    apply(&mut maps, &State::default(), &s2).unwrap();
    // Both VIPs end in 0.100: one entry, opened before any service entry.
    let index = lb_common::vip_filter_index(&a.key().vip);
    assert_eq!(maps.filter.get(&index), Some(&true));
    assert!(maps.log[0].starts_with("filter"), "{:?}", maps.log);
    // It stays while one of them is left, and closes with the last.
    apply(&mut maps, &s2, &s1).unwrap();
    assert_eq!(maps.filter.get(&index), Some(&true));
    let empty = s1.del_service(a).unwrap();
    maps.log.clear();
    apply(&mut maps, &s1, &empty).unwrap();
    assert_eq!(maps.filter.get(&index), Some(&false));
    assert_eq!(maps.log.last().unwrap(), &format!("filter {index} false"));
}

/// LVS/NAT maps ports, the other methods cannot; apply writes each real server's port and the
/// reply prefilter, and clears them when the NAT real servers go.
#[test]
fn masquerading_maps_the_port_and_opens_the_reply_prefilter() {
    let (s, svc) = three_reals();
    let nat = RealSpec {
        port: Some(8080),
        forward: Some(Forward::Masq),
        ..real([192, 168, 10, 21], 1)
    };
    let next = s.add_real(svc, &nat).unwrap();
    let r = next
        .service(&svc)
        .unwrap()
        .real([192, 168, 10, 21].into())
        .unwrap();
    assert_eq!((r.port, r.forward), (8080, Forward::Masq));
    // One port per address and service: another port of the same address is refused.
    let again = RealSpec {
        port: Some(8081),
        ..nat.clone()
    };
    let msg = format!("{:#}", next.check_new_real(svc, &again).unwrap_err());
    assert!(
        msg.contains("192.168.10.21 is already in service")
            && msg.contains("as 192.168.10.21:8080"),
        "{msg}"
    );
    // Without a port it is the service's.
    let plain = RealSpec {
        forward: Some(Forward::Masq),
        ..real([192, 168, 10, 22], 1)
    };
    assert_eq!(
        s.add_real(svc, &plain)
            .unwrap()
            .service(&svc)
            .unwrap()
            .reals[3]
            .port,
        80
    );
    // Made DR it takes the service's port, as ipvsadm does; DR cannot keep another one.
    let to_dr = RealSpec {
        forward: Some(Forward::Route),
        ..real([192, 168, 10, 21], 1)
    };
    let dr = next.edit_real(svc, &to_dr).unwrap();
    assert_eq!(dr.service(&svc).unwrap().reals[3].port, 80);
    let keep = RealSpec {
        port: Some(8080),
        ..to_dr
    };
    let Err(e) = next.edit_real(svc, &keep) else {
        panic!("DR kept port 8080")
    };
    let msg = format!("{e:#}");
    assert!(
        msg.contains("direct routing and tunnelling cannot change the port"),
        "{msg}"
    );

    let mut maps = FakeMaps::default();
    apply(&mut maps, &State::default(), &next).unwrap();
    let id = r.id;
    let index = lb_common::vip_filter_index(&lb_common::addr_from_v4([192, 168, 10, 21]));
    assert!(
        maps.log.contains(&format!("egress {id} 0 8080")),
        "{:?}",
        maps.log
    );
    assert!(
        maps.log.contains(&format!("nat source {index} true")),
        "{:?}",
        maps.log
    );
    // The DR real servers get no port.
    assert!(maps
        .log
        .iter()
        .any(|l| l.starts_with("egress ") && l.ends_with(" 0 0")));
    // The service's entry says it has a NAT real server (its new flows fetch their reply's
    // bucket early), and no longer once the last one goes.
    let flags = |maps: &FakeMaps| maps.services[&svc.key()].flags;
    assert_eq!(flags(&maps) & lb_common::SVC_NAT, lb_common::SVC_NAT);
    let after = next.del_real(svc, [192, 168, 10, 21].into()).unwrap();
    maps.log.clear();
    apply(&mut maps, &next, &after).unwrap();
    assert!(
        maps.log.contains(&format!("nat source {index} false")),
        "{:?}",
        maps.log
    );
    assert_eq!(flags(&maps) & lb_common::SVC_NAT, 0);
}

/// IPv6 services and real servers: written with their 16-byte addresses, reached by direct
/// routing, tunnelling or masquerading; a real server of the other family is refused with a line naming what is wrong.
#[test]
fn ipv6_services_take_ipv6_real_servers_by_direct_routing() {
    let v6 = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let svc = ServiceAddr {
        protocol: Protocol::Tcp,
        vip: v6("2001:db8::100"),
        port: 80,
    };
    let s = State::default()
        .add_service(svc, &SchedulerSpec::default())
        .unwrap();
    assert_eq!(svc.to_string(), "TCP [2001:db8::100]:80");
    let dr = RealSpec {
        addr: Some(v6("2001:db8::11")),
        mac: Some(Mac([2, 0, 0, 0, 0, 0x11])),
        ..Default::default()
    };
    let next = s.add_real(svc, &dr).unwrap();
    let mut maps = FakeMaps::default();
    apply(&mut maps, &State::default(), &next).unwrap();
    let key = svc.key();
    let octets = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
    assert_eq!(key.vip, octets("2001:db8::100"));
    assert!(maps.services.contains_key(&key));
    let real = maps.reals.values().next().expect("a real server entry");
    assert_eq!(
        real.addr,
        "2001:db8::11"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
    );
    assert_eq!(real.method, lb_common::FWD_DR);

    let refused = |spec: RealSpec, what: &str| {
        let msg = format!("{:#}", s.add_real(svc, &spec).unwrap_err());
        assert!(msg.contains(what) && !msg.contains('\n'), "{msg}");
    };
    refused(
        RealSpec {
            addr: Some(v6("10.0.0.11")),
            ..dr.clone()
        },
        "not of the same address family",
    );
    // Masqueraded, with a port of its own: the datapath's reply index and prefilter take the
    // IPv6 address.
    let masq = RealSpec {
        forward: Some(Forward::Masq),
        port: Some(8080),
        ..dr.clone()
    };
    let with_masq = s.add_real(svc, &masq).unwrap();
    let mut maps = FakeMaps::default();
    apply(&mut maps, &s, &with_masq).unwrap();
    assert!(
        maps.log.iter().any(|l| l
            == &format!(
                "nat source {} true",
                lb_common::vip_filter_index(&octets("2001:db8::11"))
            )),
        "{:?}",
        maps.log
    );
    let tun = RealSpec {
        forward: Some(Forward::Tunnel),
        ..dr.clone()
    };
    assert!(
        s.add_real(svc, &tun).is_ok(),
        "IPv6 real servers may be tunnelled"
    );
    // An IPv4 service takes an IPv6 real server by tunnelling only (IPv4-in-IPv6), and an
    // IPv6 service no IPv4 one.
    let (v4, svc4) = three_reals();
    for forward in [None, Some(Forward::Masq)] {
        let spec = RealSpec {
            forward,
            ..dr.clone()
        };
        let msg = format!("{:#}", v4.add_real(svc4, &spec).unwrap_err());
        assert!(msg.contains("by tunnelling only"), "{msg}");
    }
    let with6 = v4.add_real(svc4, &tun).unwrap();
    let mut maps = FakeMaps::default();
    apply(&mut maps, &v4, &with6).unwrap();
    assert!(
        maps.reals.values().any(|r| r.method == lb_common::FWD_TUN
            && r.addr == octets("2001:db8::11")
            && r.service == with6.services[&svc4].id),
        "{:?}",
        maps.reals
    );
}

/// Persistence netmasks as ipvsadm takes them: dotted or a prefix length for IPv4 services
/// (kept and listed dotted), a prefix length for IPv6 ones; the datapath gets the mask over its
/// 16-byte addresses; what does not fit the family is refused and changes nothing.
#[test]
fn persistence_netmasks_take_each_family_s_form() {
    use super::Netmask;
    let spec = |m: &str| SchedulerSpec {
        persistent: Some(600),
        netmask: Some(m.parse::<Netmask>().unwrap()),
        ..Default::default()
    };
    let svc6 = ServiceAddr {
        protocol: Protocol::Tcp,
        vip: "2001:db8::100".parse().unwrap(),
        port: 0,
    };
    let (v4, svc4) = three_reals();
    let kept = |s: &State, a: ServiceAddr| s.services[&a].persistence.unwrap();

    let s = State::default().add_service(svc6, &spec("/64")).unwrap();
    let p = kept(&s, svc6);
    assert_eq!((p.timeout, p.netmask.to_string()), (600, "64".to_string()));
    let mut want = [0u8; 16];
    want[..8].fill(0xff);
    assert_eq!(p.mask(), want);
    let mut maps = FakeMaps::default();
    apply(&mut maps, &State::default(), &s).unwrap();
    assert!(maps
        .log
        .iter()
        .any(|l| l.starts_with("persistence ") && l.contains("Prefix(64)")));
    assert_eq!(
        p.netmask.apply("2001:db8:1:2:3:4:5:6".parse().unwrap()),
        "2001:db8:1:2::".parse::<std::net::IpAddr>().unwrap()
    );
    // The default for an IPv6 service: each client address apart.
    let s = State::default()
        .add_service(
            svc6,
            &SchedulerSpec {
                persistent: Some(300),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(kept(&s, svc6).mask(), [0xff; 16]);
    assert!(kept(&s, svc6).netmask.is_single());

    // IPv4: a prefix length becomes the dotted mask; the mask keeps the first 12 bytes.
    let s = v4.edit_service(svc4, &spec("24")).unwrap();
    let p = kept(&s, svc4);
    assert_eq!(p.netmask.to_string(), "255.255.255.0");
    let mut want = [0xffu8; 16];
    want[15] = 0;
    assert_eq!(p.mask(), want);
    assert_eq!(
        p.netmask.apply("10.1.2.3".parse().unwrap()),
        "10.1.2.0".parse::<std::net::IpAddr>().unwrap()
    );

    for (svc, state, mask, what) in [
        (
            svc6,
            State::default(),
            "255.255.255.0",
            "an IPv6 service takes a prefix length",
        ),
        (svc6, State::default(), "129", "is not a netmask"),
        (svc4, v4.clone(), "33", "longer than an IPv4 address"),
        (
            svc4,
            v4.clone(),
            "255.0.255.0",
            "is not a netmask (ones, then zeros)",
        ),
    ] {
        let result = mask
            .parse::<Netmask>()
            .map_err(anyhow::Error::msg)
            .and_then(|m| {
                let spec = SchedulerSpec {
                    persistent: Some(60),
                    netmask: Some(m),
                    ..Default::default()
                };
                match state.services.contains_key(&svc) {
                    true => state.edit_service(svc, &spec),
                    false => state.add_service(svc, &spec),
                }
            });
        let msg = format!("{:#}", result.unwrap_err());
        assert!(msg.contains(what) && !msg.contains('\n'), "{mask}: {msg}");
    }
    assert_eq!(
        v4.services[&svc4].persistence, None,
        "a refusal changes nothing"
    );

    // Saved state and config files: either form reads back; a bare number in TOML too.
    let back: Netmask = serde_json::from_str("\"255.255.0.0\"").unwrap();
    assert_eq!(
        back,
        Netmask::Dotted(std::net::Ipv4Addr::new(255, 255, 0, 0))
    );
    assert_eq!(
        serde_json::to_string(&Netmask::Prefix(48)).unwrap(),
        "\"48\""
    );
    assert_eq!(
        serde_json::from_str::<Netmask>("56").unwrap(),
        Netmask::Prefix(56)
    );
}

#[test]
fn limits_bound_the_ids_and_a_full_director_names_its_limit() {
    let mut s = State::with_limits(Limits {
        services: 3,
        reals: 4,
    });
    let svc = |n: u8| tcp([10, 0, 0, 100], 80 + u16::from(n));
    for n in 0..3 {
        s = s.add_service(svc(n), &SchedulerSpec::default()).unwrap();
    }
    let e = s
        .add_service(svc(3), &SchedulerSpec::default())
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "too many services: at most 3 (the director's services_max)"
    );
    for (n, r) in [(0, 11), (0, 12), (1, 13), (2, 14)] {
        s = s.add_real(svc(n), &real([10, 0, 0, r], 1)).unwrap();
    }
    let e = s.add_real(svc(2), &real([10, 0, 0, 15], 1)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "too many real servers: at most 4 over all services (the director's reals_max)"
    );
    assert!(s.ids_consistent());
    // Deleting a service frees its id and its real servers' ids, lowest first again.
    s = s.del_service(svc(0)).unwrap();
    assert!(s.ids_consistent());
    s = s.add_service(svc(3), &SchedulerSpec::default()).unwrap();
    assert_eq!(s.service(&svc(3)).unwrap().id, 0);
    s = s.add_real(svc(3), &real([10, 0, 0, 16], 1)).unwrap();
    s = s.add_real(svc(3), &real([10, 0, 0, 17], 1)).unwrap();
    let ids: Vec<u32> = s
        .service(&svc(3))
        .unwrap()
        .reals
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, [0, 1]);
    s = s.del_real(svc(1), "10.0.0.13".parse().unwrap()).unwrap();
    assert!(s.ids_consistent());
    s = s.add_real(svc(3), &real([10, 0, 0, 18], 1)).unwrap();
    assert_eq!(
        s.service(&svc(3))
            .unwrap()
            .real("10.0.0.18".parse().unwrap())
            .unwrap()
            .id,
        2
    );
    assert!(s.ids_consistent());
}

#[test]
fn a_change_to_one_of_many_services_writes_only_that_service() {
    let limits = Limits {
        services: 1000,
        reals: 10_000,
    };
    let svc = |n: u32| tcp([10, 1, (n / 250) as u8, (n % 250) as u8], 80);
    let mut s = State::with_limits(limits);
    for n in 0..1000u32 {
        s.add_service_in(svc(n), &SchedulerSpec::default()).unwrap();
        for r in 0..10u8 {
            s.add_real_in(svc(n), &real([10, 2, r, (n % 250) as u8], 1), None)
                .unwrap();
        }
        s.settle(&svc(n), None);
    }
    assert!(s.ids_consistent());
    let mut maps = FakeMaps::default();
    apply(&mut maps, &State::default(), &s).unwrap();
    maps.log.clear();
    let target = svc(500);
    let next = s
        .edit_real(target, &real([10, 2, 3, (500 % 250) as u8], 5))
        .unwrap();
    // Every other service is still the one both states share.
    for (addr, svc) in &next.services {
        assert_eq!(
            Arc::ptr_eq(svc, &s.services[addr]),
            *addr != target,
            "{addr}"
        );
    }
    apply(&mut maps, &s, &next).unwrap();
    let service = next.service(&target).unwrap();
    let real_ids: Vec<String> = service.reals.iter().map(|r| r.id.to_string()).collect();
    assert!(!maps.log.is_empty());
    for line in &maps.log {
        let id = line.split_whitespace().nth(1).unwrap();
        let ours = if line.starts_with("table") || line.starts_with("service") {
            id == service.id.to_string()
        } else {
            real_ids.iter().any(|r| r == id)
        };
        assert!(ours, "{line} is not service {target}'s: {:?}", maps.log);
    }
    let changed = service.real("10.2.3.0".parse().unwrap()).unwrap().id;
    assert!(
        maps.log.contains(&format!("limits {changed} 5")),
        "{:?}",
        maps.log
    );
}

/// Real servers of a persistent service that fail or go in one change release their clients'
/// templates in one walk of the template table; a removed persistent service's are released
/// before any service (which may take its id) is written.
#[test]
fn released_templates_take_one_walk_per_change() {
    let persistent = SchedulerSpec {
        persistent: Some(300),
        ..Default::default()
    };
    let svc = tcp([10, 0, 0, 100], 80);
    let mut s = State::default().add_service(svc, &persistent).unwrap();
    for i in 11..=13 {
        s = s.add_real(svc, &real([10, 0, 0, i], 1)).unwrap();
    }
    let ip = |i| std::net::IpAddr::from(Ipv4Addr::new(10, 0, 0, i));
    let mut maps = FakeMaps::default();
    apply(&mut maps, &State::default(), &s).unwrap();
    let id = s.services[&svc].id;
    let reals: Vec<u32> = s.services[&svc].reals.iter().map(|r| r.id).collect();

    let next = s
        .set_health(svc, ip(11), crate::health::Health::Down, None)
        .unwrap()
        .set_health(svc, ip(12), crate::health::Health::Down, None)
        .unwrap()
        .del_real(svc, ip(13))
        .unwrap();
    maps.log.clear();
    apply(&mut maps, &s, &next).unwrap();
    let releases: Vec<&String> = maps
        .log
        .iter()
        .filter(|l| l.starts_with("release"))
        .collect();
    let want = format!(
        "release {:?}",
        [(id, reals[0]), (id, reals[1]), (id, reals[2])]
    );
    assert_eq!(releases, [&want], "{:?}", maps.log);

    // The service removed and another added in one change: its release comes first.
    let other = tcp([10, 0, 0, 101], 80);
    let last = next
        .del_service(svc)
        .unwrap()
        .add_service(other, &persistent)
        .unwrap();
    maps.log.clear();
    apply(&mut maps, &next, &last).unwrap();
    let at = |prefix: &str| maps.log.iter().position(|l| l.starts_with(prefix));
    assert!(
        at("release") < at("service+"),
        "release after a service was written: {:?}",
        maps.log
    );
    assert!(at("release").is_some(), "{:?}", maps.log);
}

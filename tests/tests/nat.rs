//! LVS/NAT in the datapath (BPF_PROG_TEST_RUN), asserting bytes: a request leaves with the real
//! server's address and port, a reply with the VIP's, routed to the client's next hop by the
//! kernel's FIB. Every expected frame is built from scratch by `FrameSpec` (which computes the
//! checksums whole), so the datapath's incremental checksums are checked independently.
//! The tests run in a namespace of their own: two veth interfaces, `out0` toward the clients
//! (through a router) and `in0` toward the real servers, with IP forwarding on. ICMP errors about
//! NAT flows are translated both ways, quoted headers included.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use lb_common::{FlowKey, NatReply, Reason, CONN_FIN, IPPROTO_TCP, IPPROTO_UDP};
use lb_tests::fixture::{
    default_config, over_ipv6, Fixture, RoutedNet, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX,
};
use lb_tests::require_root;
use lb_user::{
    datapath::{LoadOptions, MapWriter as _},
    packet::{Frame6Spec, FrameSpec},
    state::{Forward, Mac, Protocol, RealSpec, SchedulerSpec, ServiceAddr},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
const RIP: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 11);
const REAL_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x11];
const REAL_PORT: u16 = 8080;
/// A client behind the router on the outside link.
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const ROUTER: &str = "192.0.2.254";
const ROUTER_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0xfe];

fn service(protocol: Protocol) -> ServiceAddr {
    ServiceAddr {
        protocol,
        vip: VIP.into(),
        port: 80,
    }
}

/// The director's namespace: `out0` toward the clients (through a router), `in0` toward the
/// real servers.
type Net = RoutedNet;

fn net() -> Net {
    RoutedNet::new("nat")
}

/// A director attached to `out0` and `in0` with one NAT real server (RIP:8080) per protocol.
fn fixture(net: &Net) -> Fixture {
    nat_director(net, Fixture::new())
}

/// [`fixture`] on a datapath of its own.
fn nat_director(net: &Net, mut fx: Fixture) -> Fixture {
    fx.maps.set_interfaces(&net.ifaces()).unwrap();
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        fx.add_service(service(protocol), SchedulerSpec::default());
        fx.add_real_spec(
            service(protocol),
            RealSpec {
                addr: Some(RIP.into()),
                port: Some(REAL_PORT),
                forward: Some(Forward::Masq),
                mac: Some(Mac(REAL_MAC)),
                ..Default::default()
            },
        );
    }
    fx
}

const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
const RIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0x11);
/// An IPv6 client behind the clients' router.
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 7);
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0xfe);

fn service6(protocol: Protocol) -> ServiceAddr {
    ServiceAddr {
        protocol,
        vip: VIP6.into(),
        port: 80,
    }
}

/// [`net`] with IPv6 too (see [`RoutedNet::with_ipv6`]).
fn net6() -> Net {
    net().with_ipv6()
}

/// [`fixture`] plus the IPv6 service [VIP6]:80, TCP and UDP, over one NAT real server
/// [RIP6]:8080.
fn fixture6(net: &Net) -> Fixture {
    let mut fx = fixture(net);
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        fx.add_service(service6(protocol), SchedulerSpec::default());
        fx.add_real_spec(
            service6(protocol),
            RealSpec {
                addr: Some(RIP6.into()),
                port: Some(REAL_PORT),
                forward: Some(Forward::Masq),
                mac: Some(Mac(REAL_MAC)),
                ..Default::default()
            },
        );
    }
    fx
}

/// [`request`] over IPv6: from [`CLIENT6`] to the IPv6 service.
fn request6(net: &Net, proto: u8) -> Frame6Spec {
    over_ipv6(request(net, proto), CLIENT6, VIP6)
}

/// [`reply`] over IPv6: the real server's answer to [`request6`].
fn reply6(net: &Net, proto: u8) -> Frame6Spec {
    over_ipv6(reply(net, proto), RIP6, CLIENT6)
}

/// A client's packet to the service, as it arrives on `out0`.
fn request(net: &Net, proto: u8) -> FrameSpec {
    FrameSpec {
        dst_mac: net.out0.1,
        src_mac: ROUTER_MAC,
        src: CLIENT,
        dst: VIP,
        proto,
        sport: 40000,
        dport: 80,
        tcp_flags: 0x02,
        payload: b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        ..Default::default()
    }
}

/// The real server's answer to [`request`], as it arrives on `in0`.
fn reply(net: &Net, proto: u8) -> FrameSpec {
    FrameSpec {
        dst_mac: net.in0.1,
        src_mac: REAL_MAC,
        src: RIP,
        dst: CLIENT,
        proto,
        sport: REAL_PORT,
        dport: 40000,
        tcp_flags: 0x12,
        payload: b"HTTP/1.0 200 OK\r\n\r\nhello".to_vec(),
        ..Default::default()
    }
}

/// The connection-table key of [`request`]'s TCP flow.
fn client_flow() -> FlowKey {
    FlowKey {
        src: lb_common::addr_from_v4(CLIENT.octets()),
        dst: lb_common::addr_from_v4(VIP.octets()),
        sport: 40000,
        dport: 80,
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    }
}

/// What the director sends the real server for a client's `request` that came in on `out0`
/// and goes out of it again: the real server's MAC, address and port, the TTL one lower.
fn to_real(net: &Net, request: &FrameSpec) -> FrameSpec {
    FrameSpec {
        dst_mac: REAL_MAC,
        src_mac: net.out0.1,
        dst: RIP,
        dport: REAL_PORT,
        ttl: request.ttl - 1,
        ..request.clone()
    }
}

/// What the director sends the clients' router for the real server's `reply`: from the VIP
/// and the service's port, out of `out0`, the TTL one lower.
fn to_client(net: &Net, reply: &FrameSpec) -> FrameSpec {
    FrameSpec {
        dst_mac: ROUTER_MAC,
        src_mac: net.out0.1,
        src: VIP,
        sport: 80,
        ttl: reply.ttl - 1,
        ..reply.clone()
    }
}

#[test]
fn a_request_leaves_with_the_real_servers_address_and_port() {
    if !require_root() {
        return;
    }
    let net = net();
    net.ns.run_in(|| {
        let mut fx = fixture(&net);
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            let input = request(&net, proto);
            let (verdict, out) = fx.run_on(net.out0.0, &input.build()).unwrap();
            // The real server is reached out of the interface the request came in on (no
            // egress learned): XDP_TX, from the MAC the frame came to.
            assert_eq!(verdict, XDP_TX, "proto {proto}");
            let expected = to_real(&net, &input).build();
            assert_eq!(
                out, expected,
                "proto {proto}: addresses, port, TTL, checksums"
            );
            // Its replies are known by their own flow.
            let reply_key = FlowKey {
                src: lb_common::addr_from_v4(RIP.octets()),
                dst: lb_common::addr_from_v4(CLIENT.octets()),
                sport: REAL_PORT,
                dport: 40000,
                proto,
                _pad: [0; 3],
            };
            let got = fx.maps.nat_reply(&reply_key).expect("a reply entry");
            let svc = fx
                .state
                .service(&service(if proto == IPPROTO_TCP {
                    Protocol::Tcp
                } else {
                    Protocol::Udp
                }))
                .unwrap();
            assert_eq!(
                got,
                NatReply {
                    vip: lb_common::addr_from_v4(VIP.octets()),
                    vport: 80,
                    _pad: 0,
                    service: svc.id,
                    real: svc.reals[0].id,
                }
            );
        }
        // Learned to be behind in0: redirected there, from in0's MAC.
        let egress = BTreeMap::from([(RIP.into(), net.in0.0)]);
        fx.change(|s| Ok(s.with_egress(egress)));
        let input = request(&net, IPPROTO_TCP);
        let (verdict, out) = fx.run_on(net.out0.0, &input.build()).unwrap();
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(out[0..6], REAL_MAC);
        assert_eq!(out[6..12], net.in0.1, "from the inside interface's MAC");
        // A TTL that runs out here is the kernel's to answer.
        let dying = FrameSpec {
            ttl: 1,
            ..request(&net, IPPROTO_TCP)
        }
        .build();
        assert_eq!(fx.run_on(net.out0.0, &dying).unwrap(), (XDP_PASS, dying));
        assert_eq!(fx.reason(Reason::PassTtl), 1);
    });
}

#[test]
fn a_reply_leaves_from_the_vip_toward_the_clients_router() {
    if !require_root() {
        return;
    }
    let net = net();
    net.ns.run_in(|| {
        let mut fx = fixture(&net);
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            fx.run_on(net.out0.0, &request(&net, proto).build())
                .unwrap();
            let input = reply(&net, proto);
            let (verdict, out) = fx.run_on(net.in0.0, &input.build()).unwrap();
            assert_eq!(verdict, XDP_REDIRECT, "proto {proto}: out of out0");
            let expected = to_client(&net, &input).build();
            assert_eq!(
                out, expected,
                "proto {proto}: addresses, port, TTL, checksums"
            );
        }
        // Counted outbound, per service and real server (ipvsadm's OutPkts/OutBytes).
        let c = fx.maps.counters().unwrap();
        let svc = fx.state.service(&service(Protocol::Tcp)).unwrap();
        let real = svc.reals[0].id;
        assert_eq!(c.reals_out[real as usize].packets, 1);
        assert_eq!(c.services_out[svc.id as usize].packets, 1);
        assert_eq!(
            c.reals_out[real as usize].bytes,
            reply(&net, IPPROTO_TCP).build().len() as u64
        );
    });
}

#[test]
fn the_real_servers_other_traffic_goes_to_the_kernel_untouched() {
    if !require_root() {
        return;
    }
    let net = net();
    net.ns.run_in(|| {
        let mut fx = fixture(&net);
        fx.run_on(net.out0.0, &request(&net, IPPROTO_TCP).build())
            .unwrap();
        let others = [
            // Its own DNS query, an update download: not a reply to any client.
            FrameSpec {
                dst: Ipv4Addr::new(8, 8, 8, 8),
                sport: 33000,
                dport: 53,
                proto: IPPROTO_UDP,
                ..reply(&net, IPPROTO_UDP)
            },
            FrameSpec {
                sport: 34000,
                dport: 443,
                tcp_flags: 0x02,
                ..reply(&net, IPPROTO_TCP)
            },
            // The same ports to another client.
            FrameSpec {
                dst: Ipv4Addr::new(198, 51, 100, 8),
                ..reply(&net, IPPROTO_TCP)
            },
        ];
        for spec in others {
            let frame = spec.build();
            assert_eq!(fx.run_on(net.in0.0, &frame).unwrap(), (XDP_PASS, frame));
        }
        assert_eq!(fx.reason(Reason::PassNoService), 3);
    });
}

#[test]
fn a_reply_without_a_next_hop_is_dropped_never_leaked() {
    if !require_root() {
        return;
    }
    let net = net();
    net.ns.run_in(|| {
        let mut fx = fixture(&net);
        // An on-link client the kernel has no neighbour entry for, and one it has no route to.
        for (client, reason) in [
            (Ipv4Addr::new(192, 0, 2, 77), Reason::DropNoNeigh),
            (Ipv4Addr::new(203, 0, 113, 5), Reason::DropNoRoute),
        ] {
            let req = FrameSpec {
                src: client,
                ..request(&net, IPPROTO_TCP)
            };
            fx.run_on(net.out0.0, &req.build()).unwrap();
            let rep = FrameSpec {
                dst: client,
                ..reply(&net, IPPROTO_TCP)
            };
            let (verdict, _) = fx.run_on(net.in0.0, &rep.build()).unwrap();
            assert_eq!(verdict, XDP_DROP, "{client}");
            assert_eq!(fx.reason(reason), 1, "{client}");
        }
        // The agent is told which next hop to resolve.
        assert_eq!(
            fx.maps.take_neigh_misses(),
            [(lb_common::addr_from_v4([192, 0, 2, 77]), net.out0.0)]
        );
        assert!(fx.maps.take_neigh_misses().is_empty(), "removed once read");
    });
}

#[test]
fn the_real_servers_fin_and_rst_end_the_connection() {
    if !require_root() {
        return;
    }
    let net = net();
    net.ns.run_in(|| {
        let mut fx = fixture(&net);
        let flow = client_flow();
        fx.run_on(net.out0.0, &request(&net, IPPROTO_TCP).build())
            .unwrap();
        let fin = FrameSpec {
            tcp_flags: 0x11,
            ..reply(&net, IPPROTO_TCP)
        };
        assert_eq!(fx.run_on(net.in0.0, &fin.build()).unwrap().0, XDP_REDIRECT);
        assert_ne!(fx.maps.conn(&flow).expect("entry").flags & CONN_FIN, 0);
        let rst = FrameSpec {
            tcp_flags: 0x04,
            ..reply(&net, IPPROTO_TCP)
        };
        assert_eq!(fx.run_on(net.in0.0, &rst.build()).unwrap().0, XDP_REDIRECT);
        assert!(fx.maps.conn(&flow).is_none(), "the RST removed the entry");
        // And the reply translation with it: later packets of that flow are not the service's.
        let late = reply(&net, IPPROTO_TCP).build();
        assert_eq!(fx.run_on(net.in0.0, &late).unwrap(), (XDP_PASS, late));
    });
}

/// A busy connection's replies: one that comes after a quiet tick refreshes the connection's
/// entry (a stream only the real server sends on keeps its connection), and a FIN or RST right
/// after another reply, in the same tick, still ends the connection; a connection taken up
/// mid-stream ranks its reply established at once; either family.
#[test]
fn the_real_servers_replies_keep_a_busy_connection_and_its_fin_and_rst_end_it() {
    if !require_root() {
        return;
    }
    let net = net6();
    net.ns.run_in(|| {
        let mut fx = fixture6(&net);
        let v6 = |key: FlowKey, src: Ipv6Addr, dst: Ipv6Addr| FlowKey {
            src: src.octets(),
            dst: dst.octets(),
            ..key
        };
        let reply_key = FlowKey {
            src: lb_common::addr_from_v4(RIP.octets()),
            dst: lb_common::addr_from_v4(CLIENT.octets()),
            sport: REAL_PORT,
            dport: 40000,
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let flagged = |spec: FrameSpec, tcp_flags| FrameSpec { tcp_flags, ..spec };
        let (tcp_request, tcp_reply) = (request(&net, IPPROTO_TCP), reply(&net, IPPROTO_TCP));
        let ipv4 = Family {
            request: &|flags| flagged(tcp_request.clone(), flags).build(),
            reply: &|flags| flagged(tcp_reply.clone(), flags).build(),
            flow: client_flow(),
            reply_key,
        };
        let ipv6 = Family {
            request: &|flags| over_ipv6(flagged(tcp_request.clone(), flags), CLIENT6, VIP6).build(),
            reply: &|flags| over_ipv6(flagged(tcp_reply.clone(), flags), RIP6, CLIENT6).build(),
            flow: v6(client_flow(), CLIENT6, VIP6),
            reply_key: v6(reply_key, RIP6, CLIENT6),
        };
        for (name, family) in [("IPv4", ipv4), ("IPv6", ipv6)] {
            busy_replies(&mut fx, &net, &family, name);
        }
    });
}

/// One family's frames and keys for [`busy_replies`].
struct Family<'a> {
    request: &'a dyn Fn(u8) -> Vec<u8>,
    reply: &'a dyn Fn(u8) -> Vec<u8>,
    flow: FlowKey,
    reply_key: FlowKey,
}

fn busy_replies(fx: &mut Fixture, net: &Net, f: &Family, name: &str) {
    let hz = lb_user::datapath::clock::ticks_per_second().unwrap();
    // The client's packets with these flags, and then the reply entry, ranked established.
    let established_after = |fx: &mut Fixture, packets: &[u8], what: &str| {
        for flags in packets {
            fx.run_on(net.out0.0, &(f.request)(*flags)).unwrap();
        }
        let table = fx.maps.reply_table().unwrap();
        let slot = table.slot(&f.reply_key).unwrap().expect("a reply entry");
        let established = lb_common::conn_table::REPLY_ESTABLISHED;
        assert_eq!(slot.mark, established, "{name}: {what}");
        slot.entry.reply
    };
    let open = |fx: &mut Fixture| established_after(fx, &[0x02, 0x10], "a handshake");
    let reply = |fx: &mut Fixture, flags| {
        let (verdict, _) = fx.run_on(net.in0.0, &(f.reply)(flags)).unwrap();
        assert_eq!(verdict, XDP_REDIRECT, "{name}: reply with flags {flags:#x}");
    };
    let translation = open(fx);
    // Last seen 10 s ago (past the few seconds between refreshes), its reply in an earlier
    // tick: the next reply refreshes the connection.
    let now = lb_user::datapath::clock::jiffies_now().unwrap();
    let mut conn = fx.maps.conn(&f.flow).expect("the connection's entry");
    conn.last_seen = now.wrapping_sub(10 * hz);
    fx.maps.set_conn(&f.flow, &conn).unwrap();
    let table = fx.maps.reply_table().unwrap();
    table
        .upsert_reply(&f.reply_key, &translation, now.wrapping_sub(5), true)
        .unwrap();
    reply(fx, 0x18);
    let seen = fx
        .maps
        .conn(&f.flow)
        .expect("the connection's entry")
        .last_seen;
    assert!(
        seen.wrapping_sub(now) < hz,
        "{name}: refreshed by the reply (last seen {seen}, now {now})"
    );
    // Right after another reply (the same tick, but for a tick boundary in between): the FIN
    // closes, the RST ends the connection and its translation.
    reply(fx, 0x18);
    reply(fx, 0x11);
    let conn = fx.maps.conn(&f.flow).expect("the connection's entry");
    assert_ne!(conn.flags & CONN_FIN, 0, "{name}: the server's FIN");
    open(fx);
    reply(fx, 0x18);
    reply(fx, 0x04);
    assert!(fx.maps.conn(&f.flow).is_none(), "{name}: the server's RST");
    assert!(
        fx.maps.nat_reply(&f.reply_key).is_none(),
        "{name}: its translation"
    );
    // Taken up mid-connection (an ACK first: its director failed over), the connection is
    // established, and its reply ranks so from the start.
    established_after(fx, &[0x10], "mid-connection");
    let conn = fx.maps.conn(&f.flow).expect("the connection's entry");
    assert_ne!(conn.flags & lb_common::CONN_ESTABLISHED, 0, "{name}");
}

/// The reply index is a table of the connection table's layout: a new NAT flow's reply takes an
/// empty slot of its bucket, else one whose connection is not established, the longest unused
/// among equals; a reply marks its entry used; the client's packets write it again when they
/// end the handshake (ranked established), close the connection, or refresh it after an idle
/// while (an entry given up meanwhile comes back).
#[test]
fn a_new_reply_never_pushes_out_an_established_connections_while_others_can_go() {
    if !require_root() {
        return;
    }
    let net = net();
    net.ns.run_in(|| {
        let mut fx = fixture(&net);
        let shape = fx.maps.reply_table().unwrap().shape();
        // The reply of client n's port 40000 (client 0: the request's).
        let reply_key = |n: u32| FlowKey {
            src: lb_common::addr_from_v4(RIP.octets()),
            dst: lb_common::addr_from_v4((u32::from(CLIENT) + n).to_be_bytes()),
            sport: REAL_PORT,
            dport: 40000,
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let bucket =
            |key: &FlowKey| lb_common::conn_table::reply_place(key, shape.seed, shape.mask).bucket;
        // Four other clients' replies fill the bucket of the request's.
        let full = bucket(&reply_key(0));
        let others: Vec<u32> = (1..)
            .filter(|n| bucket(&reply_key(*n)) == full)
            .take(lb_common::conn_table::WAYS)
            .collect();
        let now = lb_user::datapath::clock::jiffies_now().unwrap();
        let value = NatReply {
            vip: lb_common::addr_from_v4(VIP.octets()),
            vport: 80,
            _pad: 0,
            service: 0,
            real: 0,
        };
        // (ticks since used, established): the one unused longest is established.
        let others_are = [(1, false), (2, true), (10_000, true), (4, false)];
        for (n, (age, established)) in others.iter().zip(others_are) {
            let table = fx.maps.reply_table().unwrap();
            let used = now.wrapping_sub(age);
            table
                .upsert_reply(&reply_key(*n), &value, used, established)
                .unwrap();
        }
        fx.run_on(net.out0.0, &request(&net, IPPROTO_TCP).build())
            .unwrap();
        let slot = |fx: &Fixture| fx.maps.reply_table().unwrap().slot(&reply_key(0)).unwrap();
        let mark = slot(&fx).expect("the new flow's reply").mark;
        assert_eq!(mark, 0, "a handshake's reply ranks as not established");
        for (n, (age, established)) in others.iter().zip(others_are) {
            let kept = fx.maps.nat_reply(&reply_key(*n)).is_some();
            // Given up: the one not established unused longest.
            let gone = age == 4;
            assert_eq!(
                kept, !gone,
                "used {age} ticks ago, established {established}"
            );
        }
        // A reply marks its entry used: aged by hand, its reply brings it back to now.
        let ours = slot(&fx).unwrap().entry;
        let table = fx.maps.reply_table().unwrap();
        let long_ago = now.wrapping_sub(50_000);
        table
            .upsert_reply(&reply_key(0), &ours.reply, long_ago, false)
            .unwrap();
        let (verdict, _) = fx
            .run_on(net.in0.0, &reply(&net, IPPROTO_TCP).build())
            .unwrap();
        assert_eq!(verdict, XDP_REDIRECT);
        let used = slot(&fx).unwrap().entry.last_seen;
        assert!(used.wrapping_sub(now) < 1000, "last used {used}, now {now}");
        // The client's ACK ends the handshake: the reply is written again, established.
        let packet = |tcp_flags| {
            FrameSpec {
                tcp_flags,
                ..request(&net, IPPROTO_TCP)
            }
            .build()
        };
        fx.run_on(net.out0.0, &packet(0x10)).unwrap();
        let mark = slot(&fx).unwrap().mark;
        assert_eq!(mark, lb_common::conn_table::REPLY_ESTABLISHED);
        // Given up while the connection was idle (another reply took its slot), it comes back
        // with the client's next packet, which refreshes the connection's entry.
        let flow = client_flow();
        let mut conn = fx.maps.conn(&flow).expect("the connection's entry");
        conn.last_seen = long_ago;
        fx.maps.set_conn(&flow, &conn).unwrap();
        fx.maps
            .reply_table()
            .unwrap()
            .remove(&reply_key(0))
            .unwrap();
        let input = reply(&net, IPPROTO_TCP).build();
        assert_eq!(fx.run_on(net.in0.0, &input).unwrap(), (XDP_PASS, input));
        fx.run_on(net.out0.0, &packet(0x18)).unwrap();
        let back = slot(&fx).expect("the reply, written again");
        assert_eq!(back.entry.reply, ours.reply);
        assert_eq!(back.mark, lb_common::conn_table::REPLY_ESTABLISHED);
        let (verdict, _) = fx
            .run_on(net.in0.0, &reply(&net, IPPROTO_TCP).build())
            .unwrap();
        assert_eq!(verdict, XDP_REDIRECT);
        // Its FIN: closing, the reply ranks as not established again.
        fx.run_on(net.out0.0, &packet(0x11)).unwrap();
        assert_eq!(slot(&fx).unwrap().mark, 0);
    });
}

/// Issue 16's flood, for LVS/NAT (whose new flows the new-flow guard always remembers: their
/// replies need the translation): a SYN flood of 20 times the connection table's size leaves
/// every established connection its entry and its reply's, so its replies are still translated.
#[test]
fn a_flood_of_new_nat_flows_leaves_established_connections_their_replies() {
    if !require_root() {
        return;
    }
    const CONN_MAX: u32 = 4096;
    const ESTABLISHED: u32 = 100;
    let net = net();
    net.ns.run_in(|| {
        let small = Fixture::with_options(default_config(), LoadOptions::flows(CONN_MAX));
        let mut fx = nat_director(&net, small);
        let client = |n: u32| Ipv4Addr::from(u32::from(CLIENT) + n);
        let request_of = |n: u32, tcp_flags: u8| {
            FrameSpec {
                src: client(n),
                tcp_flags,
                ..request(&net, IPPROTO_TCP)
            }
            .build()
        };
        let reply_to = |n: u32| {
            FrameSpec {
                dst: client(n),
                tcp_flags: 0x10,
                ..reply(&net, IPPROTO_TCP)
            }
            .build()
        };
        for n in 0..ESTABLISHED {
            assert_eq!(
                fx.run_on(net.out0.0, &request_of(n, 0x02)).unwrap().0,
                XDP_TX
            );
            assert_eq!(fx.run_on(net.in0.0, &reply_to(n)).unwrap().0, XDP_REDIRECT);
            assert_eq!(
                fx.run_on(net.out0.0, &request_of(n, 0x10)).unwrap().0,
                XDP_TX
            );
        }
        // The flood: new sources and ports, each SYN a new NAT flow (both tables' inserts).
        let flood = 20 * CONN_MAX;
        for i in 0..flood {
            let syn = FrameSpec {
                src: Ipv4Addr::from(0x6440_0000 + i / 16),
                sport: 1024 + (i % 16) as u16 * 1000,
                ..request(&net, IPPROTO_TCP)
            }
            .build();
            assert_eq!(fx.run_on(net.out0.0, &syn).unwrap().0, XDP_TX, "SYN {i}");
        }
        let mut lost = Vec::new();
        for n in 0..ESTABLISHED {
            let key = FlowKey {
                src: lb_common::addr_from_v4(client(n).octets()),
                ..client_flow()
            };
            let entry = fx.maps.conn(&key).is_some();
            let translated = fx.run_on(net.in0.0, &reply_to(n)).unwrap().0 == XDP_REDIRECT;
            if !(entry && translated) {
                lost.push((n, entry, translated));
            }
        }
        assert!(
            lost.is_empty(),
            "connections that lost their entry or their reply's (n, entry, reply): {lost:?}"
        );
    });
}

#[test]
fn truncated_nat_packets_are_never_sent() {
    if !require_root() {
        return;
    }
    let net = net();
    net.ns.run_in(|| {
        let mut fx = fixture(&net);
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            let req = request(&net, proto).build();
            let rep = reply(&net, proto).build();
            fx.run_on(net.out0.0, &req).unwrap();
            // ICMP errors about the flow, each way.
            let error = |dst_mac, src, dst, quoted: FrameSpec| {
                let outer = FrameSpec {
                    dst_mac,
                    src,
                    dst,
                    ..Default::default()
                };
                outer.icmp_error(ICMP_UNREACH, FRAG_NEEDED, MTU_1280, &quoted.build()[14..])
            };
            let inbound = error(
                net.out0.1,
                CLIENT,
                VIP,
                FrameSpec {
                    src: VIP,
                    sport: 80,
                    ..reply(&net, proto)
                },
            );
            let outbound = error(
                net.in0.1,
                RIP,
                CLIENT,
                FrameSpec {
                    dst: RIP,
                    dport: REAL_PORT,
                    ..request(&net, proto)
                },
            );
            for (ingress, frame) in [
                (net.out0.0, &req),
                (net.in0.0, &rep),
                (net.out0.0, &inbound),
                (net.in0.0, &outbound),
            ] {
                for len in 1..frame.len() {
                    let cut = &frame[..len];
                    // Frames this short the kernel refuses to run at all.
                    let Ok((verdict, _)) = fx.run_on(ingress, cut) else {
                        continue;
                    };
                    assert!(
                        verdict == XDP_PASS || verdict == XDP_DROP,
                        "proto {proto}, cut at {len}: verdict {verdict}"
                    );
                }
            }
        }
    });
}

const ICMP_UNREACH: u8 = 3;
const FRAG_NEEDED: u8 = 4;
const PORT_UNREACH: u8 = 3;
/// "Fragmentation needed" with a next-hop MTU of 1280.
const MTU_1280: [u8; 4] = [0, 0, 0x05, 0x00];
/// A router on the inside network, between the director and the real servers.
const INSIDE_ROUTER: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 254);

/// The first `len` bytes of a frame's IP packet (what an ICMP error quotes of it).
fn quote(spec: &FrameSpec, len: usize) -> Vec<u8> {
    spec.build()[14..].iter().take(len).copied().collect()
}

/// The two lengths a quote comes in: the IP header and 8 bytes (RFC 792, most routers), and
/// the whole packet (Linux quotes up to 576 bytes).
const QUOTES: [usize; 2] = [28, usize::MAX];

#[test]
fn icmp_errors_about_a_nat_flow_are_translated_both_ways() {
    if !require_root() {
        return;
    }
    let net = net();
    net.ns.run_in(|| {
        let mut fx = fixture(&net);
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            fx.run_on(net.out0.0, &request(&net, proto).build())
                .unwrap();
            // The director's outgoing packets, as the ICMP errors quote them (one hop on).
            let sent_reply = FrameSpec {
                src: VIP,
                sport: 80,
                ttl: 63,
                ..reply(&net, proto)
            };
            let sent_request = FrameSpec {
                dst: RIP,
                dport: REAL_PORT,
                ttl: 63,
                ..request(&net, proto)
            };
            for len in QUOTES {
                // A router on the clients' side cannot pass the reply on: "fragmentation
                // needed", to the VIP. It reaches the real server, about its own reply.
                let from_router = FrameSpec {
                    dst_mac: net.out0.1,
                    src_mac: ROUTER_MAC,
                    src: ROUTER.parse().unwrap(),
                    dst: VIP,
                    ..Default::default()
                };
                let input = from_router.icmp_error(
                    ICMP_UNREACH,
                    FRAG_NEEDED,
                    MTU_1280,
                    &quote(&sent_reply, len),
                );
                let (verdict, out) = fx.run_on(net.out0.0, &input).unwrap();
                assert_eq!(
                    verdict, XDP_TX,
                    "proto {proto}, quote {len}: to the real server"
                );
                let as_real_sent = FrameSpec {
                    ttl: 63,
                    ..reply(&net, proto)
                };
                let expected = FrameSpec {
                    dst_mac: REAL_MAC,
                    src_mac: net.out0.1,
                    dst: RIP,
                    ttl: from_router.ttl - 1,
                    ..from_router.clone()
                }
                .icmp_error(
                    ICMP_UNREACH,
                    FRAG_NEEDED,
                    MTU_1280,
                    &quote(&as_real_sent, len),
                );
                assert_eq!(
                    out, expected,
                    "proto {proto}, quote {len}: toward the real server"
                );

                // The real server answers the request with "port unreachable": the client
                // gets it from the VIP, about what it sent to the VIP.
                let from_real = FrameSpec {
                    dst_mac: net.in0.1,
                    src_mac: REAL_MAC,
                    src: RIP,
                    dst: CLIENT,
                    ..Default::default()
                };
                let as_client_sent = FrameSpec {
                    ttl: 63,
                    ..request(&net, proto)
                };
                let to_client = |from: &FrameSpec, src: Ipv4Addr, code: u8, rest: [u8; 4]| {
                    FrameSpec {
                        dst_mac: ROUTER_MAC,
                        src_mac: net.out0.1,
                        src,
                        ttl: from.ttl - 1,
                        ..from.clone()
                    }
                    .icmp_error(
                        ICMP_UNREACH,
                        code,
                        rest,
                        &quote(&as_client_sent, len),
                    )
                };
                let input = from_real.icmp_error(
                    ICMP_UNREACH,
                    PORT_UNREACH,
                    [0; 4],
                    &quote(&sent_request, len),
                );
                let (verdict, out) = fx.run_on(net.in0.0, &input).unwrap();
                assert_eq!(
                    verdict, XDP_REDIRECT,
                    "proto {proto}, quote {len}: out of out0"
                );
                assert_eq!(
                    out,
                    to_client(&from_real, VIP, PORT_UNREACH, [0; 4]),
                    "proto {proto}, quote {len}: toward the client, from the VIP"
                );

                // A router on the inside cannot pass the request on: its own address stays.
                let from_inside_router = FrameSpec {
                    src: INSIDE_ROUTER,
                    ..from_real.clone()
                };
                let input = from_inside_router.icmp_error(
                    ICMP_UNREACH,
                    FRAG_NEEDED,
                    MTU_1280,
                    &quote(&sent_request, len),
                );
                let (verdict, out) = fx.run_on(net.in0.0, &input).unwrap();
                assert_eq!(verdict, XDP_REDIRECT);
                assert_eq!(
                    out,
                    to_client(&from_inside_router, INSIDE_ROUTER, FRAG_NEEDED, MTU_1280),
                    "proto {proto}, quote {len}: toward the client, from the router"
                );
            }
        }
        // Counted with the flow, each way.
        let c = fx.maps.counters().unwrap();
        let svc = fx.state.service(&service(Protocol::Tcp)).unwrap();
        let real = svc.reals[0].id as usize;
        assert_eq!(
            c.reals[real].packets,
            1 + 2,
            "the request and two errors to the real server"
        );
        assert_eq!(c.reals_out[real].packets, 4, "four errors to the client");
    });
}

/// IPv4 options are checked on every LVS/NAT path (the request, the real server's reply, an
/// ICMP error about a flow): a source route (which Linux refuses) is dropped and counted as
/// drop_bad_options; a record route is translated like any packet, its options kept.
#[test]
fn ip_options_are_checked_on_every_nat_path() {
    if !require_root() {
        return;
    }
    const RECORD_ROUTE: [u8; 8] = [7, 7, 4, 0, 0, 0, 0, 0];
    const SOURCE_ROUTE: [u8; 8] = [131, 7, 4, 192, 0, 2, 1, 0];
    let with = |options: [u8; 8], spec: FrameSpec| FrameSpec {
        ip_options: options.to_vec(),
        ..spec
    };
    let net = net();
    net.ns.run_in(|| {
        let mut fx = fixture(&net);
        let mut refused = 0;
        let mut assert_refused = |fx: &mut Fixture, iface: u32, frame: Vec<u8>, what: &str| {
            assert_eq!(fx.run_on(iface, &frame).unwrap().0, XDP_DROP, "{what}");
            refused += 1;
            assert_eq!(fx.reason(Reason::DropBadOptions), refused, "{what} counted");
        };
        type Sent = fn(&Net, &FrameSpec) -> FrameSpec;
        let paths: [(&str, u32, FrameSpec, u32, Sent); 2] = [
            (
                "request",
                net.out0.0,
                request(&net, IPPROTO_TCP),
                XDP_TX,
                to_real,
            ),
            (
                "reply",
                net.in0.0,
                reply(&net, IPPROTO_TCP),
                XDP_REDIRECT,
                to_client,
            ),
        ];
        for (what, iface, spec, verdict, sent) in paths {
            let source_routed = with(SOURCE_ROUTE, spec.clone()).build();
            assert_refused(&mut fx, iface, source_routed, what);
            let input = with(RECORD_ROUTE, spec);
            let (got, out) = fx.run_on(iface, &input.build()).unwrap();
            assert_eq!(got, verdict, "{what} with a record route");
            let expected = sent(&net, &input).build();
            assert_eq!(out, expected, "{what} translated, options kept");
        }

        // A router's "fragmentation needed" about the reply, options in its own header.
        let sent_reply = FrameSpec {
            src: VIP,
            sport: 80,
            ttl: 63,
            ..reply(&net, IPPROTO_TCP)
        };
        let from_router = |options| {
            with(
                options,
                FrameSpec {
                    dst_mac: net.out0.1,
                    src_mac: ROUTER_MAC,
                    src: ROUTER.parse().unwrap(),
                    dst: VIP,
                    ..Default::default()
                },
            )
        };
        let error = |spec: &FrameSpec, quoted: &FrameSpec| {
            spec.icmp_error(ICMP_UNREACH, FRAG_NEEDED, MTU_1280, &quote(quoted, 28))
        };
        let source_routed = error(&from_router(SOURCE_ROUTE), &sent_reply);
        assert_refused(&mut fx, net.out0.0, source_routed, "ICMP error");
        let input = from_router(RECORD_ROUTE);
        let (verdict, out) = fx.run_on(net.out0.0, &error(&input, &sent_reply)).unwrap();
        assert_eq!(verdict, XDP_TX, "ICMP error with a record route");
        let expected = FrameSpec {
            dst_mac: REAL_MAC,
            src_mac: net.out0.1,
            dst: RIP,
            ttl: input.ttl - 1,
            ..input.clone()
        };
        let as_real_sent = FrameSpec {
            ttl: 63,
            ..reply(&net, IPPROTO_TCP)
        };
        assert_eq!(
            out,
            error(&expected, &as_real_sent),
            "ICMP error translated, options kept"
        );
    });
}

#[test]
fn icmp_that_is_not_about_a_nat_flow_goes_to_the_kernel_untouched() {
    if !require_root() {
        return;
    }
    let net = net();
    net.ns.run_in(|| {
        let mut fx = fixture(&net);
        fx.run_on(net.out0.0, &request(&net, IPPROTO_TCP).build())
            .unwrap();
        let sent_reply = FrameSpec {
            src: VIP,
            sport: 80,
            ttl: 63,
            ..reply(&net, IPPROTO_TCP)
        };
        let from_router = FrameSpec {
            dst_mac: net.out0.1,
            src_mac: ROUTER_MAC,
            src: ROUTER.parse().unwrap(),
            dst: VIP,
            ..Default::default()
        };
        let about = |spec: &FrameSpec| {
            from_router.icmp_error(ICMP_UNREACH, FRAG_NEEDED, MTU_1280, &quote(spec, 28))
        };
        let frames = [
            // A ping to the VIP.
            from_router.icmp_error(8, 0, [0, 1, 0, 1], b"ping"),
            // About a flow the director does not know.
            about(&FrameSpec {
                dport: 40001,
                ..sent_reply.clone()
            }),
            // Not sent to the quoted packet's source.
            FrameSpec {
                dst: Ipv4Addr::new(192, 0, 2, 1),
                ..from_router.clone()
            }
            .icmp_error(ICMP_UNREACH, FRAG_NEEDED, MTU_1280, &quote(&sent_reply, 28)),
            // Quoting too little for the ports, or a fragment.
            about(&sent_reply)[..14 + 20 + 8 + 20 + 2].to_vec(),
            about(&FrameSpec {
                frag: 0x2000 | 10,
                ..sent_reply.clone()
            }),
        ];
        for (i, frame) in frames.iter().enumerate() {
            let mut frame = frame.clone();
            if i == 3 {
                // Cut, with a total length to match.
                let len = (frame.len() - 14) as u16;
                frame[16..18].copy_from_slice(&len.to_be_bytes());
                frame[24..26].copy_from_slice(&[0, 0]);
                let check = lb_common::csum::fold(lb_common::csum::sum(&frame[14..34]));
                frame[24..26].copy_from_slice(&check.to_be_bytes());
            }
            assert_eq!(
                fx.run_on(net.out0.0, &frame).unwrap(),
                (XDP_PASS, frame.clone()),
                "frame {i}"
            );
        }
        // An error whose TTL runs out here is the kernel's to answer.
        let dying = FrameSpec {
            ttl: 1,
            ..from_router.clone()
        }
        .icmp_error(ICMP_UNREACH, FRAG_NEEDED, MTU_1280, &quote(&sent_reply, 28));
        assert_eq!(fx.run_on(net.out0.0, &dying).unwrap(), (XDP_PASS, dying));
        assert_eq!(fx.reason(Reason::PassTtl), 1);
    });
}

/// LVS/NAT over IPv6: a request leaves with the real server's address and port and the hop
/// limit one less, its reply from the VIP toward the client's router by the kernel's IPv6 FIB;
/// the TCP/UDP checksums (over the IPv6 pseudo-header) are checked against frames built whole;
/// the reply index holds the IPv6 reply flow; a hop limit that runs out is the kernel's, and a
/// reply with no route is dropped, never leaked.
#[test]
fn ipv6_requests_and_replies_are_translated() {
    if !require_root() {
        return;
    }
    let (vip6, rip6, client6) = (VIP6, RIP6, CLIENT6);
    let net = net6();
    net.ns.run_in(|| {
        let mut fx = fixture6(&net);
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            let request = request6(&net, proto);
            let (verdict, out) = fx.run_on(net.out0.0, &request.build()).unwrap();
            assert_eq!(verdict, XDP_TX, "proto {proto}");
            let expected = Frame6Spec {
                dst_mac: REAL_MAC,
                src_mac: net.out0.1,
                dst: rip6,
                dport: REAL_PORT,
                hop_limit: request.hop_limit - 1,
                ..request.clone()
            };
            assert_eq!(out, expected.build(), "proto {proto}: request");
            let reply_key = FlowKey {
                src: rip6.octets(),
                dst: client6.octets(),
                sport: REAL_PORT,
                dport: 40000,
                proto,
                _pad: [0; 3],
            };
            let got = fx.maps.nat_reply(&reply_key).expect("a reply entry");
            assert_eq!((got.vip, got.vport), (vip6.octets(), 80));
            if proto == IPPROTO_TCP {
                // The client's ACK ends the handshake: xdplb_nat6 writes the reply again,
                // ranked established, as the IPv4 path does.
                let mark = |fx: &Fixture| {
                    let table = fx.maps.reply_table().unwrap();
                    table.slot(&reply_key).unwrap().expect("a reply entry").mark
                };
                assert_eq!(mark(&fx), 0);
                let ack = Frame6Spec {
                    tcp_flags: 0x10,
                    ..request.clone()
                };
                assert_eq!(fx.run_on(net.out0.0, &ack.build()).unwrap().0, XDP_TX);
                assert_eq!(mark(&fx), lb_common::conn_table::REPLY_ESTABLISHED);
            }

            let reply = reply6(&net, proto);
            let (verdict, out) = fx.run_on(net.in0.0, &reply.build()).unwrap();
            assert_eq!(verdict, XDP_REDIRECT, "proto {proto}: out of out0");
            let expected = Frame6Spec {
                dst_mac: ROUTER_MAC,
                src_mac: net.out0.1,
                src: vip6,
                sport: 80,
                hop_limit: reply.hop_limit - 1,
                ..reply.clone()
            };
            assert_eq!(out, expected.build(), "proto {proto}: reply");

            // A hop limit that runs out here: the kernel's to answer, both ways.
            let dying = Frame6Spec {
                hop_limit: 1,
                ..reply.clone()
            }
            .build();
            assert_eq!(fx.run_on(net.in0.0, &dying).unwrap(), (XDP_PASS, dying));
        }
        let svc = fx.state.service(&service6(Protocol::Tcp)).unwrap();
        let c = fx.maps.counters().unwrap();
        assert_eq!(c.reals_out[svc.reals[0].id as usize].packets, 1);

        // A reply toward a client with no route: dropped, counted.
        let lost: Ipv6Addr = "2001:db8:d::9".parse().unwrap();
        let request = Frame6Spec {
            dst_mac: net.out0.1,
            src: lost,
            dst: vip6,
            sport: 41000,
            dport: 80,
            ..Default::default()
        };
        assert_eq!(fx.run_on(net.out0.0, &request.build()).unwrap().0, XDP_TX);
        let reply = Frame6Spec {
            dst_mac: net.in0.1,
            src: rip6,
            dst: lost,
            sport: REAL_PORT,
            dport: 41000,
            ..Default::default()
        };
        let before = fx.reason(Reason::DropNoRoute);
        assert_eq!(fx.run_on(net.in0.0, &reply.build()).unwrap().0, XDP_DROP);
        assert_eq!(fx.reason(Reason::DropNoRoute), before + 1);
    });
}

/// ICMPv6 errors about IPv6 NAT flows, both ways, byte for byte against frames built whole:
/// "packet too big" from a router on the clients' side, sent to the VIP about a reply, reaches
/// the real server about its own reply (outer destination and quoted source RIP:RPORT); "port
/// unreachable" from the real server reaches the client from the VIP, about what it sent to
/// the VIP. Quotes of the headers only and of the whole packet; other ICMPv6 is the kernel's.
#[test]
fn icmpv6_errors_about_an_ipv6_nat_flow_are_translated_both_ways() {
    if !require_root() {
        return;
    }
    let (vip6, rip6, client6, router6) = (VIP6, RIP6, CLIENT6, ROUTER6);
    const TOO_BIG: u8 = 2;
    const UNREACH: u8 = 1;
    const PORT_UNREACH6: u8 = 4;
    let net = net6();
    net.ns.run_in(|| {
        let mut fx = fixture6(&net);
        let quote = |spec: &Frame6Spec, len: usize| -> Vec<u8> {
            spec.build()[14..].iter().take(len).copied().collect()
        };
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            let request = request6(&net, proto);
            assert_eq!(fx.run_on(net.out0.0, &request.build()).unwrap().0, XDP_TX);
            let reply = Frame6Spec {
                hop_limit: 63,
                ..reply6(&net, proto)
            };
            // The director's own packets, as the errors quote them.
            let sent_reply = Frame6Spec {
                src: vip6,
                sport: 80,
                ..reply.clone()
            };
            let sent_request = Frame6Spec {
                dst: rip6,
                dport: REAL_PORT,
                hop_limit: 63,
                ..request.clone()
            };
            // 48: the headers and 8 bytes (UDP's checksum, not TCP's); else the whole packet.
            for len in [48, usize::MAX] {
                let from_router = Frame6Spec {
                    dst_mac: net.out0.1,
                    src_mac: ROUTER_MAC,
                    src: router6,
                    dst: vip6,
                    ..Default::default()
                };
                let mtu = 1280u32.to_be_bytes();
                let input = from_router.icmp_error(TOO_BIG, 0, mtu, &quote(&sent_reply, len));
                let (verdict, out) = fx.run_on(net.out0.0, &input).unwrap();
                assert_eq!(verdict, XDP_TX, "proto {proto}, quote {len}");
                let expected = Frame6Spec {
                    dst_mac: REAL_MAC,
                    src_mac: net.out0.1,
                    dst: rip6,
                    hop_limit: from_router.hop_limit - 1,
                    ..from_router.clone()
                }
                .icmp_error(TOO_BIG, 0, mtu, &quote(&reply, len));
                assert_eq!(
                    out, expected,
                    "proto {proto}, quote {len}: to the real server"
                );

                let from_real = Frame6Spec {
                    dst_mac: net.in0.1,
                    src_mac: REAL_MAC,
                    src: rip6,
                    dst: client6,
                    ..Default::default()
                };
                let input = from_real.icmp_error(
                    UNREACH,
                    PORT_UNREACH6,
                    [0; 4],
                    &quote(&sent_request, len),
                );
                let (verdict, out) = fx.run_on(net.in0.0, &input).unwrap();
                assert_eq!(
                    verdict, XDP_REDIRECT,
                    "proto {proto}, quote {len}: out of out0"
                );
                let as_client_sent = Frame6Spec {
                    hop_limit: 63,
                    ..request.clone()
                };
                let expected = Frame6Spec {
                    dst_mac: ROUTER_MAC,
                    src_mac: net.out0.1,
                    src: vip6,
                    hop_limit: from_real.hop_limit - 1,
                    ..from_real.clone()
                }
                .icmp_error(
                    UNREACH,
                    PORT_UNREACH6,
                    [0; 4],
                    &quote(&as_client_sent, len),
                );
                assert_eq!(out, expected, "proto {proto}, quote {len}: to the client");
            }
        }
        // Not about a NAT flow, and not an error: the kernel's, untouched.
        let stranger = Frame6Spec {
            dst_mac: net.out0.1,
            src: router6,
            dst: vip6,
            ..Default::default()
        };
        let unrelated = Frame6Spec {
            src: client6,
            dst: vip6,
            sport: 1,
            dport: 80,
            ..Default::default()
        };
        let echo = stranger.icmp_error(128, 0, [0, 1, 0, 1], b"ping");
        let other = stranger.icmp_error(TOO_BIG, 0, 1280u32.to_be_bytes(), &quote(&unrelated, 100));
        for frame in [echo, other] {
            assert_eq!(
                fx.run_on(net.out0.0, &frame).unwrap(),
                (XDP_PASS, frame.clone())
            );
        }
    });
}

//! The connection table as `ipvsadm -Lnc` lists it: each entry with its service's and real
//! server's addresses, IPVS's name for its state and the seconds left until it expires.

use std::net::SocketAddr;

use lb_common::{Addr, Conn, FlowKey, CONN_ESTABLISHED, CONN_FIN, IPPROTO_UDP};

use super::IdleTimeouts;
use crate::{
    control::ConnView,
    state::{ip_of, State},
};

fn endpoint(addr: &Addr, port: u16) -> String {
    SocketAddr::new(ip_of(addr), port).to_string()
}

/// IPVS's state names for what the datapath knows of a flow: a director that sees one direction
/// knows a TCP connection as opening (SYN_RECV), established, or closing (FIN_WAIT).
fn state_name(flow: &FlowKey, conn: &Conn) -> &'static str {
    if flow.proto == IPPROTO_UDP {
        "UDP"
    } else if conn.flags & CONN_FIN != 0 {
        "FIN_WAIT"
    } else if conn.flags & CONN_ESTABLISHED != 0 {
        "ESTABLISHED"
    } else {
        "SYN_RECV"
    }
}

/// The live entries among `entries` (ticks `now`, `hz` ticks a second), sorted by service, then
/// client; entries of services or real servers that are gone are left out.
pub fn views(
    entries: &[(FlowKey, Conn)],
    state: &State,
    timeouts: &IdleTimeouts,
    now: u32,
    hz: u32,
) -> Vec<ConnView> {
    let mut views: Vec<(FlowKey, ConnView)> = entries
        .iter()
        .filter(|(flow, conn)| timeouts.alive(flow, conn, now))
        .filter_map(|(flow, conn)| {
            let service = state.services.values().find(|s| s.id == conn.service)?;
            let real = service.reals.iter().find(|r| r.id == conn.real)?;
            let left = timeouts
                .timeout(flow, conn)
                .saturating_sub(super::idle(now, conn.last_seen));
            let view = ConnView {
                protocol: service.addr.protocol,
                client: endpoint(&flow.src, flow.sport),
                virtual_address: endpoint(&flow.dst, flow.dport),
                // DR and TUN keep the port: a port-0 service's real server answers on the
                // port the client asked for.
                real: SocketAddr::new(
                    real.addr,
                    if real.port == 0 {
                        flow.dport
                    } else {
                        real.port
                    },
                )
                .to_string(),
                state: state_name(flow, conn).to_owned(),
                expires: left.div_ceil(hz.max(1)),
            };
            Some((*flow, view))
        })
        .collect();
    views.sort_by(|(a, va), (b, vb)| {
        (va.protocol, a.dst, a.dport, a.src, a.sport).cmp(&(
            vb.protocol,
            b.dst,
            b.dport,
            b.src,
            b.sport,
        ))
    });
    views.into_iter().map(|(_, v)| v).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Mac, Protocol, RealSpec, SchedulerSpec, ServiceAddr};
    use lb_common::{addr_from_v4, IPPROTO_TCP};

    fn state() -> State {
        let svc = ServiceAddr {
            protocol: Protocol::Tcp,
            vip: [10, 0, 0, 100].into(),
            port: 80,
        };
        let s = State::default()
            .add_service(svc, &SchedulerSpec::default())
            .unwrap();
        s.add_real(
            svc,
            &RealSpec {
                addr: Some([10, 0, 0, 11].into()),
                mac: Some(Mac([2, 0, 0, 0, 0, 11])),
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn flow(client: u8, proto: u8) -> FlowKey {
        FlowKey {
            src: addr_from_v4([10, 1, 0, client]),
            dst: addr_from_v4([10, 0, 0, 100]),
            sport: 40000,
            dport: 80,
            proto,
            _pad: [0; 3],
        }
    }

    #[test]
    fn entries_read_as_ipvsadm_lists_them() {
        let s = state();
        let real = s.services.values().next().unwrap().reals[0].id;
        let conn = |flags, last_seen| Conn {
            real,
            service: 0,
            last_seen,
            flags,
        };
        let t = IdleTimeouts {
            tcp: 900 * 100,
            tcp_fin: 120 * 100,
            udp: 300 * 100,
        };
        let entries = [
            (flow(3, IPPROTO_TCP), conn(CONN_ESTABLISHED, 100_000)),
            (flow(1, IPPROTO_TCP), conn(0, 100_000 - 150)),
            (
                flow(2, IPPROTO_TCP),
                conn(CONN_ESTABLISHED | CONN_FIN, 99_000),
            ),
            // Timed out: not listed.
            (flow(4, IPPROTO_TCP), conn(CONN_FIN, 100_000 - 12_001)),
            // Another service's (gone): not listed.
            (
                flow(5, IPPROTO_TCP),
                Conn {
                    service: 7,
                    ..conn(0, 100_000)
                },
            ),
        ];
        let v = views(&entries, &s, &t, 100_000, 100);
        let got: Vec<(String, &str, u32)> = v
            .iter()
            .map(|c| (c.client.clone(), c.state.as_str(), c.expires))
            .collect();
        assert_eq!(
            got,
            [
                ("10.1.0.1:40000".to_owned(), "SYN_RECV", 899),
                ("10.1.0.2:40000".to_owned(), "FIN_WAIT", 110),
                ("10.1.0.3:40000".to_owned(), "ESTABLISHED", 900),
            ]
        );
        assert_eq!(v[0].virtual_address, "10.0.0.100:80");
        assert_eq!(v[0].real, "10.0.0.11:80");
    }
}

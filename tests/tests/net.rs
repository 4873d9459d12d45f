//! `lb_user::net` against real kernel objects: every test builds its own network namespaces with the
//! harness (deleted on every exit path) and runs the functions inside the director's namespace.
//! Needs root.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use lb_tests::netns::veth;
use lb_tests::{names, require_root, Netns};
use lb_user::net::{interface, resolve_real_mac, Interface};

/// `count` namespaces `<prefix>-ns0`, `<prefix>-ns1`, ... (index 0 is the director), each with
/// its loopback up.
fn namespaces(count: usize) -> Vec<Netns> {
    names::cleanup_stale();
    let prefix = names::unique_prefix();
    (0..count)
        .map(|i| Netns::new(format!("{prefix}-ns{i}")).expect("cannot create a namespace"))
        .collect()
}

/// A veth pair from `a` (`a_if` with `a_addr`) to `b` (`b_if` with `b_addr`), both up.
fn link(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    veth(a, a_if, b, b_if).expect("cannot create the veth pair");
    a.ip(&["addr", "add", a_addr, "dev", a_if]).unwrap();
    b.ip(&["addr", "add", b_addr, "dev", b_if]).unwrap();
}

/// Director (v0 10.77.0.1/24) and real server (v1 10.77.0.2/24).
fn director_and_real_server() -> Vec<Netns> {
    let ns = namespaces(2);
    link(&ns[0], "v0", "10.77.0.1/24", &ns[1], "v1", "10.77.0.2/24");
    ns
}

/// Runs `fut` to completion inside `ns`, on a current-thread runtime (so every netlink socket it
/// opens belongs to that namespace).
fn block_on_in<F: Future + Send>(ns: &Netns, fut: F) -> F::Output
where
    F::Output: Send,
{
    ns.run_in(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(fut)
    })
}

fn mac(ns: &Netns, dev: &str) -> [u8; 6] {
    let json: serde_json::Value =
        serde_json::from_str(&ns.ip(&["-j", "link", "show", "dev", dev]).unwrap()).unwrap();
    let bytes: Vec<u8> = json[0]["address"]
        .as_str()
        .unwrap()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

/// `resolve_real_mac(interface(dev), rip)` inside `director`; the error as its Display text.
fn resolve(director: &Netns, dev: &str, rip: &str) -> Result<[u8; 6], String> {
    let rip: IpAddr = rip.parse().unwrap();
    block_on_in(director, async move {
        let iface = interface(dev).await.map_err(|e| e.to_string())?;
        resolve_real_mac(&iface, rip)
            .await
            .map_err(|e| e.to_string())
    })
}

fn neighbour_entries(ns: &Netns, dev: &str, addr: &str) -> usize {
    let json: serde_json::Value =
        serde_json::from_str(&ns.ip(&["-j", "neigh", "show", "dev", dev]).unwrap()).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["dst"] == addr)
        .count()
}

#[test]
fn interface_lookup() {
    if !require_root() {
        return;
    }
    let ns = director_and_real_server();
    let (found, missing, too_long) = block_on_in(&ns[0], async {
        (
            interface("v0").await.map_err(|e| e.to_string()),
            interface("nosuch0").await.map_err(|e| e.to_string()),
            interface("averyveryverylongname")
                .await
                .map_err(|e| e.to_string()),
        )
    });
    assert_eq!(
        found.unwrap(),
        Interface {
            index: ns[0].ifindex("v0").unwrap(),
            name: "v0".into(),
            mac: mac(&ns[0], "v0"),
            mtu: 1500,
        }
    );
    assert_eq!(missing.unwrap_err(), "unknown interface 'nosuch0'");
    assert_eq!(
        too_long.unwrap_err(),
        "unknown interface 'averyveryverylongname'"
    );
}

#[test]
fn resolves_a_neighbour_not_yet_in_the_table() {
    if !require_root() {
        return;
    }
    let ns = director_and_real_server();
    assert_eq!(
        neighbour_entries(&ns[0], "v0", "10.77.0.2"),
        0,
        "test premise: no entry yet"
    );
    let started = Instant::now();
    assert_eq!(resolve(&ns[0], "v0", "10.77.0.2"), Ok(mac(&ns[1], "v1")));
    // Resolved by the ARP the call triggered, not by waiting out its 3 s limit.
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        started.elapsed()
    );
    // Now it comes from the table.
    assert_eq!(neighbour_entries(&ns[0], "v0", "10.77.0.2"), 1);
    assert_eq!(resolve(&ns[0], "v0", "10.77.0.2"), Ok(mac(&ns[1], "v1")));
}

#[test]
fn a_static_neighbour_entry_is_used_as_is() {
    if !require_root() {
        return;
    }
    let ns = director_and_real_server();
    // Not the peer's MAC: proves the answer is the table's, with no ARP involved.
    ns[0]
        .ip(&[
            "neigh",
            "add",
            "10.77.0.2",
            "lladdr",
            "02:00:5e:00:53:01",
            "dev",
            "v0",
            "nud",
            "permanent",
        ])
        .unwrap();
    assert_eq!(
        resolve(&ns[0], "v0", "10.77.0.2"),
        Ok([0x02, 0x00, 0x5e, 0x00, 0x53, 0x01])
    );
    // A static entry for another address does not get in the way of resolving this one.
    ns[0]
        .ip(&["neigh", "del", "10.77.0.2", "dev", "v0"])
        .unwrap();
    ns[0]
        .ip(&[
            "neigh",
            "add",
            "10.77.0.3",
            "lladdr",
            "02:00:5e:00:53:02",
            "dev",
            "v0",
            "nud",
            "permanent",
        ])
        .unwrap();
    assert_eq!(resolve(&ns[0], "v0", "10.77.0.2"), Ok(mac(&ns[1], "v1")));
}

#[test]
fn a_failed_entry_is_resolved_again() {
    if !require_root() {
        return;
    }
    let ns = director_and_real_server();
    // Left over from a time the real server did not answer.
    ns[0]
        .ip(&["neigh", "add", "10.77.0.2", "dev", "v0", "nud", "failed"])
        .unwrap();
    assert_eq!(resolve(&ns[0], "v0", "10.77.0.2"), Ok(mac(&ns[1], "v1")));
}

#[test]
fn real_servers_that_are_not_neighbours_are_rejected() {
    if !require_root() {
        return;
    }
    let ns = director_and_real_server();
    ns[0]
        .ip(&["route", "add", "10.99.0.0/24", "via", "10.77.0.2"])
        .unwrap();
    assert_eq!(
        resolve(&ns[0], "v0", "10.99.0.5"),
        Err(
            "real server 10.99.0.5 is not on-link on v0 (routed via 10.77.0.2); \
             direct routing needs the real server on the director's LAN"
                .into()
        )
    );
    assert_eq!(
        resolve(&ns[0], "v0", "10.77.0.1"),
        Err("real server 10.77.0.1 is an address of this director".into())
    );
    assert_eq!(
        resolve(&ns[0], "v0", "192.0.2.1"),
        Err("no route to real server 192.0.2.1".into())
    );
    assert_eq!(
        resolve(&ns[0], "v0", "10.77.0.255"),
        Err("real server 10.77.0.255 is a broadcast address".into())
    );
}

#[test]
fn a_real_server_on_another_interface_is_rejected() {
    if !require_root() {
        return;
    }
    let ns = namespaces(3);
    link(&ns[0], "v0", "10.77.0.1/24", &ns[1], "v1", "10.77.0.2/24");
    link(&ns[0], "w0", "10.78.0.1/24", &ns[2], "w1", "10.78.0.2/24");
    assert_eq!(
        resolve(&ns[0], "v0", "10.78.0.2"),
        Err(
            "real server 10.78.0.2 is not on-link on v0 (reached through interface w0); \
             direct routing needs the real server on the director's LAN"
                .into()
        )
    );
    // The same address from the right interface is fine.
    assert_eq!(resolve(&ns[0], "w0", "10.78.0.2"), Ok(mac(&ns[2], "w1")));
}

#[test]
fn an_address_nobody_answers_times_out() {
    if !require_root() {
        return;
    }
    let ns = director_and_real_server();
    let started = Instant::now();
    assert_eq!(
        resolve(&ns[0], "v0", "10.77.0.99"),
        Err("cannot resolve the MAC address of real server 10.77.0.99 on v0 (no ARP reply); give it with --mac".into())
    );
    let took = started.elapsed();
    assert!(
        // It waits for the reply (3 s), but does not hang.
        took >= Duration::from_millis(2500) && took < Duration::from_secs(10),
        "took {took:?}"
    );
}

/// Director (v0 2001:db8:77::1/64) and real server (v1 2001:db8:77::2/64), IPv6 only, without
/// duplicate address detection.
fn ipv6_director_and_real_server() -> Vec<Netns> {
    let ns = namespaces(2);
    for n in &ns {
        n.sysctl("net.ipv6.conf.default.accept_dad", "0").unwrap();
    }
    veth(&ns[0], "v0", &ns[1], "v1").expect("cannot create the veth pair");
    for (n, dev, addr) in [
        (&ns[0], "v0", "2001:db8:77::1/64"),
        (&ns[1], "v1", "2001:db8:77::2/64"),
    ] {
        n.ip(&["-6", "addr", "add", addr, "dev", dev, "nodad"])
            .unwrap();
    }
    ns
}

#[test]
fn resolves_an_ipv6_real_server_by_neighbour_discovery() {
    if !require_root() {
        return;
    }
    let ns = ipv6_director_and_real_server();
    assert_eq!(
        neighbour_entries(&ns[0], "v0", "2001:db8:77::2"),
        0,
        "test premise: no entry yet"
    );
    let started = Instant::now();
    assert_eq!(
        resolve(&ns[0], "v0", "2001:db8:77::2"),
        Ok(mac(&ns[1], "v1"))
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "took {:?}: resolved by waiting out the limit?",
        started.elapsed()
    );
    assert_eq!(
        resolve(&ns[0], "v0", "2001:db8:77::99"),
        Err("cannot resolve the MAC address of real server 2001:db8:77::99 on v0 (no neighbour discovery reply); give it with --mac".into())
    );
    ns[0]
        .ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:99::/64",
            "via",
            "2001:db8:77::2",
        ])
        .unwrap();
    assert_eq!(
        resolve(&ns[0], "v0", "2001:db8:99::5"),
        Err(
            "real server 2001:db8:99::5 is not on-link on v0 (routed via 2001:db8:77::2); \
             direct routing needs the real server on the director's LAN"
                .into()
        )
    );
}

#[test]
fn futures_are_send() {
    // Compile-time check (the futures are never polled): the agent awaits these inside spawned tasks.
    fn send<T: Send>(_: &T) {}
    let iface = Interface {
        index: 1,
        name: "lo".into(),
        mac: [0; 6],
        mtu: 65536,
    };
    send(&interface("lo"));
    send(&resolve_real_mac(&iface, Ipv4Addr::LOCALHOST.into()));
}

//! `lb_user::net` against real kernel objects: every test builds its own network namespaces (deleted on
//! every exit path) and runs the functions inside the "director" namespace. Needs root.

use std::future::Future;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lb_user::net::{interface, resolve_real_mac, Interface};

/// False (after saying so) when the test cannot run; CI must not skip silently.
fn have_root() -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("needs root");
    }
    eprintln!("skipped: needs root");
    false
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("cannot run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Network namespaces named uniquely for this process and test; deleted on drop, panics included.
struct Netns {
    names: Vec<String>,
}

impl Netns {
    fn new(count: usize) -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "xnl{}t{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut ns = Netns { names: Vec::new() };
        for suffix in ["a", "b", "c"].into_iter().take(count) {
            let name = format!("{prefix}{suffix}");
            ip(&["netns", "add", &name]);
            ns.names.push(name);
            ip(&["-n", ns.names.last().unwrap(), "link", "set", "lo", "up"]);
        }
        ns
    }

    fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// `ip -n NS ARGS...`
    fn ip(&self, i: usize, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name(i)];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A veth pair from namespace `a` (`a_if`, `a_addr`) to namespace `b` (`b_if`, `b_addr`), both up.
    fn veth(&self, a: usize, a_if: &str, a_addr: &str, b: usize, b_if: &str, b_addr: &str) {
        self.ip(
            a,
            &[
                "link",
                "add",
                a_if,
                "type",
                "veth",
                "peer",
                "name",
                b_if,
                "netns",
                self.name(b),
            ],
        );
        self.ip(a, &["addr", "add", a_addr, "dev", a_if]);
        self.ip(b, &["addr", "add", b_addr, "dev", b_if]);
        self.ip(a, &["link", "set", a_if, "up"]);
        self.ip(b, &["link", "set", b_if, "up"]);
    }

    fn mac(&self, i: usize, dev: &str) -> [u8; 6] {
        let json: serde_json::Value =
            serde_json::from_str(&self.ip(i, &["-j", "link", "show", "dev", dev])).unwrap();
        parse_mac(json[0]["address"].as_str().unwrap())
    }

    /// Runs `f` on a thread inside namespace `i`, on a current-thread runtime (so every netlink socket
    /// it opens belongs to that namespace).
    fn run<T, F, Fut>(&self, i: usize, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        let path = format!("/run/netns/{}", self.name(i));
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(
                unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                0,
                "setns {path}"
            );
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn parse_mac(s: &str) -> [u8; 6] {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

/// Director "a" (v0 10.77.0.1/24) and real server "b" (v1 10.77.0.2/24).
fn director_and_real_server() -> Netns {
    let ns = Netns::new(2);
    ns.veth(0, "v0", "10.77.0.1/24", 1, "v1", "10.77.0.2/24");
    ns
}

/// `resolve_real_mac(interface(dev), rip)` inside the director; the error as its Display text.
fn resolve(ns: &Netns, dev: &'static str, rip: &str) -> Result<[u8; 6], String> {
    let rip: Ipv4Addr = rip.parse().unwrap();
    ns.run(0, move || async move {
        let iface = interface(dev).await.map_err(|e| e.to_string())?;
        resolve_real_mac(&iface, rip)
            .await
            .map_err(|e| e.to_string())
    })
}

fn neighbour_entries(ns: &Netns, dev: &str, addr: &str) -> usize {
    let json: serde_json::Value =
        serde_json::from_str(&ns.ip(0, &["-j", "neigh", "show", "dev", dev])).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["dst"] == addr)
        .count()
}

#[test]
fn interface_lookup() {
    if !have_root() {
        return;
    }
    let ns = director_and_real_server();
    let (found, missing, too_long) = ns.run(0, || async {
        (
            interface("v0").await.map_err(|e| e.to_string()),
            interface("nosuch0").await.map_err(|e| e.to_string()),
            interface("averyveryverylongname")
                .await
                .map_err(|e| e.to_string()),
        )
    });
    let json: serde_json::Value =
        serde_json::from_str(&ns.ip(0, &["-j", "link", "show", "dev", "v0"])).unwrap();
    assert_eq!(
        found.unwrap(),
        Interface {
            index: json[0]["ifindex"].as_u64().unwrap() as u32,
            name: "v0".into(),
            mac: ns.mac(0, "v0")
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
    if !have_root() {
        return;
    }
    let ns = director_and_real_server();
    assert_eq!(
        neighbour_entries(&ns, "v0", "10.77.0.2"),
        0,
        "test premise: no entry yet"
    );
    let started = Instant::now();
    assert_eq!(resolve(&ns, "v0", "10.77.0.2"), Ok(ns.mac(1, "v1")));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    // Now it comes from the table.
    assert_eq!(neighbour_entries(&ns, "v0", "10.77.0.2"), 1);
    assert_eq!(resolve(&ns, "v0", "10.77.0.2"), Ok(ns.mac(1, "v1")));
}

#[test]
fn a_static_neighbour_entry_is_used_as_is() {
    if !have_root() {
        return;
    }
    let ns = director_and_real_server();
    // Not the peer's MAC: proves the answer is the table's, with no ARP involved.
    ns.ip(
        0,
        &[
            "neigh",
            "add",
            "10.77.0.2",
            "lladdr",
            "02:00:5e:00:53:01",
            "dev",
            "v0",
            "nud",
            "permanent",
        ],
    );
    assert_eq!(
        resolve(&ns, "v0", "10.77.0.2"),
        Ok([0x02, 0x00, 0x5e, 0x00, 0x53, 0x01])
    );
    // A static entry for another address does not get in the way of resolving this one.
    ns.ip(0, &["neigh", "del", "10.77.0.2", "dev", "v0"]);
    ns.ip(
        0,
        &[
            "neigh",
            "add",
            "10.77.0.3",
            "lladdr",
            "02:00:5e:00:53:02",
            "dev",
            "v0",
            "nud",
            "permanent",
        ],
    );
    assert_eq!(resolve(&ns, "v0", "10.77.0.2"), Ok(ns.mac(1, "v1")));
}

#[test]
fn a_failed_entry_is_resolved_again() {
    if !have_root() {
        return;
    }
    let ns = director_and_real_server();
    // Left over from a time the real server did not answer.
    ns.ip(
        0,
        &["neigh", "add", "10.77.0.2", "dev", "v0", "nud", "failed"],
    );
    assert_eq!(resolve(&ns, "v0", "10.77.0.2"), Ok(ns.mac(1, "v1")));
}

#[test]
fn real_servers_that_are_not_neighbours_are_rejected() {
    if !have_root() {
        return;
    }
    let ns = director_and_real_server();
    ns.ip(0, &["route", "add", "10.99.0.0/24", "via", "10.77.0.2"]);
    assert_eq!(
        resolve(&ns, "v0", "10.99.0.5"),
        Err(
            "real server 10.99.0.5 is not on-link on v0 (routed via 10.77.0.2); \
             direct routing needs the real server on the director's LAN"
                .into()
        )
    );
    assert_eq!(
        resolve(&ns, "v0", "10.77.0.1"),
        Err("real server 10.77.0.1 is an address of this director".into())
    );
    assert_eq!(
        resolve(&ns, "v0", "192.0.2.1"),
        Err("no route to real server 192.0.2.1".into())
    );
    assert_eq!(
        resolve(&ns, "v0", "10.77.0.255"),
        Err("real server 10.77.0.255 is a broadcast address".into())
    );
}

#[test]
fn a_real_server_on_another_interface_is_rejected() {
    if !have_root() {
        return;
    }
    let ns = Netns::new(3);
    ns.veth(0, "v0", "10.77.0.1/24", 1, "v1", "10.77.0.2/24");
    ns.veth(0, "w0", "10.78.0.1/24", 2, "w1", "10.78.0.2/24");
    assert_eq!(
        resolve(&ns, "v0", "10.78.0.2"),
        Err(
            "real server 10.78.0.2 is not on-link on v0 (reached through interface w0); \
             direct routing needs the real server on the director's LAN"
                .into()
        )
    );
    // The same address from the right interface is fine.
    assert_eq!(resolve(&ns, "w0", "10.78.0.2"), Ok(ns.mac(2, "w1")));
}

#[test]
fn an_address_nobody_answers_times_out() {
    if !have_root() {
        return;
    }
    let ns = director_and_real_server();
    let started = Instant::now();
    assert_eq!(
        resolve(&ns, "v0", "10.77.0.99"),
        Err("cannot resolve the MAC address of real server 10.77.0.99 on v0 (no ARP reply); give it with --mac".into())
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(4),
        "took {took:?}"
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
    };
    send(&interface("lo"));
    send(&resolve_real_mac(&iface, Ipv4Addr::LOCALHOST));
}

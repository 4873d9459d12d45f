//! Test harness shared by the integration tests and the demo: network namespaces joined by veths
//! and bridges (in the style of xdp-tools' test environment), the LVS/DR and LVS/TUN topologies
//! built from them, the `xdplb` agent (started from arguments or a config file, killed and
//! restarted), CLI and real-server decapsulation, TCP clients that connect from a chosen source
//! address and port: short connections, uploads and long-lived streams, a scraper of the
//! agent's Prometheus metrics, its HTTP API and status page through curl and headless
//! Chromium, and real HTTP load: nginx real servers and a wrk client.
//!
//! Everything lives in namespaces this harness creates and names uniquely per run; nothing is
//! created in the root namespace, and every guard tears its part down on Drop, panics included.

pub mod agent;
pub mod bench;
pub mod capture;
pub mod client;
pub mod daemons;
pub mod ethtool;
pub mod fixture;
pub mod ha;
pub mod http_load;
pub mod ipv6;
pub mod legacy;
pub mod metrics;
pub mod names;
pub mod nat;
pub mod netns;
pub mod scratch;
pub mod tls;
pub mod topo;
pub mod tun;
pub mod web;

pub use agent::{Agent, Decap, Listing};
pub use daemons::{require_program, Bird, Keepalived};
pub use ha::{ClientAt, HaTopology};
pub use http_load::{Nginx, Wrk, WrkSummary};
pub use netns::{Netns, Proc};
pub use topo::{DrTopology, FreshFlows, Host, Serve, Switch};
pub use tun::TunTopology;

/// Whether the caller may build namespaces. Tests call it first and return early when it is false.
/// Under CI (env `CI` set) a missing root is a failure, not a silent skip.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("these tests need root (network namespaces, XDP) and CI is set: run them as root");
    }
    eprintln!("skipped: needs root (network namespaces, XDP)");
    false
}

/// Path of an executable of this workspace: `$<env_var>` if set, else the file next to the running
/// executable (target/debug/ for the demo) or one level up (target/debug/deps/ for tests).
/// Panics with how to build it when it is missing.
pub fn binary(env_var: &str, name: &str, build_hint: &str) -> std::path::PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        return path.into();
    }
    let exe = std::env::current_exe().expect("cannot locate the running executable");
    let dir = exe.parent().expect("an executable has a directory");
    [dir.join(name), dir.join("..").join(name)]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found in {} or its parent (or ${env_var}): build it with {build_hint}",
                dir.display()
            )
        })
}

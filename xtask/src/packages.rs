//! The distribution's packages the tests start daemons and clients from (keepalived for VRRP,
//! BIRD for BGP, curl and headless Chromium for the HTTP API and the status page, openssl's
//! TLS server for the https checks, nginx and wrk for the soak under HTTP load): installed with
//! apt-get when missing, so a fresh machine runs every test with one command.
//! Installing starts no service here (policy-rc.d, no systemd): the tests start the daemons
//! themselves, inside their namespaces.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::toolchain::run;

/// (program the tests run, Debian package that has it).
const NEEDED: [(&str, &str); 9] = [
    ("keepalived", "keepalived"),
    ("bird", "bird2"),
    ("curl", "curl"),
    ("chromium", "chromium"),
    // The TLS server and certificates of the https check tests.
    ("openssl", "openssl"),
    // The real servers and the load generator of the soak (tests/tests/soak.rs).
    ("nginx", "nginx"),
    ("wrk", "wrk"),
    // The benchmark's sampling of where a case's time goes (tests/src/bench/profile.rs).
    ("perf", "linux-perf"),
    // The benchmark's memory of the maps an agent made (tests/src/bench/scale.rs).
    ("bpftool", "bpftool"),
];

fn installed(program: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(program).is_file())
}

/// What the peer benchmark (../shared/peer-bench, Katran timed beside us by `cargo xtask
/// bench`) builds Katran and its harness with: (file it needs, Debian package that has it).
const PEER_BENCH: [(&str, &str); 3] = [
    ("/usr/bin/clang", "clang"),
    ("/usr/bin/llc", "llvm"),
    // bpf_helpers.h, which the harness programs include.
    ("/usr/include/bpf/bpf_helpers.h", "libbpf-dev"),
];

/// Installs what is missing (needs root; without it the tests that need a daemon say so).
pub fn ensure() -> Result<()> {
    let missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(program, _)| !installed(program))
        .map(|(_, package)| *package)
        .collect();
    install(missing)
}

/// Installs what the peer benchmark builds with, where missing.
pub fn ensure_peer_bench() -> Result<()> {
    let missing: Vec<&str> = PEER_BENCH
        .iter()
        .filter(|(file, _)| !Path::new(file).is_file())
        .map(|(_, package)| *package)
        .collect();
    install(missing)
}

fn install(missing: Vec<&str>) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::is_root() {
        eprintln!(
            "xtask: not root, so not installing {} (the tests that need them will say so)",
            missing.join(" ")
        );
        return Ok(());
    }
    eprintln!("xtask: installing {} (apt-get)", missing.join(" "));
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run(&mut apt(&["update", "-q"])).context("apt-get update")?;
    let mut install = apt(&["install", "-y", "-q", "--no-install-recommends"]);
    install.args(&missing);
    run(&mut install).with_context(|| format!("apt-get install {}", missing.join(" ")))?;
    if missing.contains(&"nginx") {
        stop_nginx_service();
    }
    Ok(())
}

/// Where nothing forbids it (no policy-rc.d), nginx's package starts a system nginx on the host's
/// port 80: the tests start their own, in namespaces, so stop the one the install just started.
fn stop_nginx_service() {
    if Path::new("/run/nginx.pid").exists() {
        eprintln!("xtask: stopping the nginx service the package started");
        if let Err(e) = run(Command::new("nginx").args(["-s", "quit"])) {
            eprintln!("xtask: warning: nginx -s quit: {e:#}");
        }
    }
}

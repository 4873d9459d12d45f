//! Packaging: `cargo xtask deb` builds a Debian package that installs (into a scratch root) an
//! `xdplb` that runs, with its manual page, completions, systemd unit and example config; the
//! completions are generated for each shell; the unit's capability set is enough for a director
//! that forwards and pings, and the agent cannot start without CAP_BPF or CAP_NET_ADMIN.

use std::path::{Path, PathBuf};
use std::process::Command;

use lb_tests::agent::xdplb_bin;
use lb_tests::client::fetch_each;
use lb_tests::{require_program, require_root, Agent, DrTopology, FreshFlows};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_debian_package_installs_a_working_xdplb() {
    if !require_program("dpkg-deb", "dpkg") {
        return;
    }
    let scratch = std::env::temp_dir().join(format!("xdplb-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    // The xtask binary beside the xdplb one (`cargo xtask` builds both), packaging that xdplb.
    let xtask = xdplb_bin().with_file_name("xtask");
    let mut build = match xtask.exists() {
        true => Command::new(&xtask),
        false => {
            let mut c = Command::new(std::env::var("CARGO").unwrap_or("cargo".into()));
            c.args(["run", "-q", "-p", "xtask", "--"]);
            c
        }
    };
    let deb = output(
        build
            .current_dir(root())
            .args(["deb", "--bin"])
            .arg(xdplb_bin())
            .arg("--out")
            .arg(&scratch),
    );
    let deb = PathBuf::from(deb.trim());
    assert!(deb.starts_with(&scratch), "{}", deb.display());

    let info = output(Command::new("dpkg-deb").arg("--info").arg(&deb));
    for field in [
        "Package: xdplb",
        "Version: 0.1.0",
        "Depends: libc6",
        "Section: net",
    ] {
        assert!(info.contains(field), "{field} in\n{info}");
    }
    let contents = output(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for file in [
        "./usr/sbin/xdplb",
        "./usr/share/man/man1/xdplb.1.gz",
        "./usr/share/bash-completion/completions/xdplb",
        "./usr/share/zsh/vendor-completions/_xdplb",
        "./usr/share/fish/vendor_completions.d/xdplb.fish",
        "./lib/systemd/system/xdplb.service",
        "./usr/share/doc/xdplb/examples/xdplb.toml",
    ] {
        assert!(contents.contains(file), "{file} in\n{contents}");
    }
    assert!(contents.contains("root/root"), "owned by root:\n{contents}");

    // Installed into a scratch root, it runs.
    let installed = scratch.join("root");
    output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&installed));
    let version = output(Command::new(installed.join("usr/sbin/xdplb")).arg("--version"));
    assert_eq!(version.trim(), "xdplb 0.1.0");
    let man = output(
        Command::new("gzip")
            .arg("-dc")
            .arg(installed.join("usr/share/man/man1/xdplb.1.gz")),
    );
    assert!(
        man.contains(".TH xdplb 1"),
        "{}",
        &man[..man.len().min(300)]
    );
    assert_eq!(
        std::fs::read_to_string(installed.join("lib/systemd/system/xdplb.service")).unwrap(),
        std::fs::read_to_string(root().join("examples/xdplb.service")).unwrap()
    );
    std::fs::remove_dir_all(&scratch).unwrap();
}

#[test]
fn completions_for_each_shell() {
    let completions = |shell: &str| output(Command::new(xdplb_bin()).args(["completions", shell]));
    let bash = completions("bash");
    assert!(bash.contains("complete -F _xdplb"), "{}", &bash[..200]);
    assert!(bash.contains("--web-token"), "every option is there");
    assert!(completions("zsh").starts_with("#compdef xdplb"));
    assert!(completions("fish").contains("complete -c xdplb"));
    let out = Command::new(xdplb_bin())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'tcsh'"));
}

/// The capabilities the systemd unit leaves the agent, in setpriv's names (`bpf`, ...).
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(root().join("examples/xdplb.service")).unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds the capabilities");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

#[test]
fn the_units_capabilities_are_enough_for_a_director() {
    if !require_root() || !require_program("setpriv", "util-linux") {
        return;
    }
    let caps = unit_capabilities();
    assert!(caps.len() < 10, "not every capability: {caps:?}");
    let topo = DrTopology::new(2).expect("topology");
    let director = topo.director().ns();
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
    let agent = Agent::start_with_capabilities(director, "eth0", &caps).expect("agent");
    topo.configure(&agent);
    agent.set_check("10.0.0.100:80", "10.0.0.11", "ping");
    let flows = FreshFlows::new(25000).take(20);
    let answers = topo
        .client()
        .ns()
        .run_in(|| fetch_each(&flows, DrTopology::service()));
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let listing = agent.list_config();
    assert_eq!(
        listing.real("10.0.0.100:80", "10.0.0.11:80")["health"]["state"],
        "up",
        "a ping check works with the unit's capabilities: {}",
        listing.0
    );
    drop(agent);

    // Each of CAP_BPF and CAP_NET_ADMIN is needed: without it the agent does not start.
    for missing in ["bpf", "net_admin"] {
        let fewer: Vec<&str> = caps.iter().copied().filter(|c| *c != missing).collect();
        let err = Agent::start_with_capabilities(director, "eth0", &fewer)
            .err()
            .unwrap_or_else(|| panic!("an agent without CAP_{}", missing.to_uppercase()));
        let want = format!("xdplb run needs CAP_{}", missing.to_uppercase());
        assert!(format!("{err:#}").contains(&want), "{err:#}");
    }
}

//! `cargo xtask demo`: LVS/DR with native XDP in throwaway network namespaces. Builds a client, a
//! director and three real servers on one bridge, starts the agent, configures it through the CLI
//! (showing each command), connects from several client addresses, shows which real server
//! answered each, and the agent's listing with counters. Everything is removed at the end, on
//! errors and on Ctrl-C too.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};
use lb_tests::client::fetch;
use lb_tests::{Agent, DrTopology};

const SOURCES: usize = 10;
const CONNECTIONS_PER_SOURCE: usize = 2;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Stops the demo between steps after Ctrl-C; returning an error unwinds the guards in order.
fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

fn main() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "xdplb-demo needs root (it creates network namespaces and attaches XDP programs)"
        );
        std::process::exit(1);
    }
    // Ctrl-C must not kill the demo before its guards have removed the namespaces.
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
    if let Err(e) = run() {
        eprintln!("xdplb-demo: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    println!("Building the topology: client, director, rs1..rs3 on one bridge (namespaces)...");
    let topo = DrTopology::new(3)?;
    println!(
        "  client {} (+ sources {}..), director {} with VIP {}, real servers {}",
        DrTopology::CLIENT_ADDR,
        DrTopology::client_sources()[0],
        DrTopology::DIRECTOR_ADDR,
        DrTopology::VIP,
        topo.reals()
            .iter()
            .map(|rs| format!("{} {}", rs.name(), rs.addr()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    check_interrupted()?;

    println!("\nStarting the agent in the director's namespace (native XDP on eth0)...");
    let mut agent = Agent::start(topo.director().ns(), "eth0", &[])?;
    agent.set_echo(true);
    topo.configure(&agent);
    check_interrupted()?;

    let service = DrTopology::service();
    println!("\nConnecting to {service} from {SOURCES} client addresses, {CONNECTIONS_PER_SOURCE} times each:");
    let sources = &DrTopology::client_sources()[..SOURCES];
    let results = topo.client().ns().run_in(|| {
        sources
            .iter()
            .map(|&src| {
                (
                    src,
                    (0..CONNECTIONS_PER_SOURCE)
                        .map(|_| fetch(src, service))
                        .collect::<Vec<_>>(),
                )
            })
            .collect::<Vec<_>>()
    });
    println!("  {:<15} -> real server that answered", "client source");
    for (src, answers) in results {
        let answers: Vec<String> = answers
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| format!("FAILED: {e:#}")))
            .collect();
        println!("  {:<15} -> {}", src.to_string(), answers.join(", "));
    }
    check_interrupted()?;

    println!();
    print!("{}", agent.cli_ok(&["list", "--stats"]));
    println!("\nTearing down.");
    Ok(())
}

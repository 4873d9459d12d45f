//! `xdplb pktgen`: a traffic generator for the director's tests and benchmarks, and a counting
//! sink to see what arrived where.
//!
//! The generator (engine `xdp`) is xdp-tools' xdp-trafficgen technique: an XDP program
//! (`xdp_pktgen`) run by BPF_PROG_TEST_RUN in live-frames mode, one thread per chosen CPU, each
//! pinned there (live frames are transmitted on the calling CPU). The kernel hands the program
//! copies of a template frame and transmits whatever it returns with XDP_TX out of the
//! interface named in the context; the program gives each frame the source address and port of
//! the next flow over the configured ranges and fixes both checksums incrementally. Engine
//! `kernel` drives the kernel's own pktgen through /proc/net/pktgen where the kernel has it.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use lb_user::pktgen::{self, RunOptions, Sink, Traffic};
//! // In the receiving namespace (on its own thread): count what arrives on interface 7.
//! let sink = Sink::attach(7)?;
//! // In the sending namespace: 100000 TCP SYNs to the VIP from 10.1.0.0/16, ports 1024-65535.
//! let mut traffic = Traffic::for_interface("eth0", "10.0.0.100:80".parse()?)?;
//! traffic.src = "10.1.0.0/16".parse().map_err(anyhow::Error::msg)?;
//! let summary = pktgen::run(&traffic, &RunOptions::count(100_000))?;
//! println!("{} packets, {:.0} pps; sink: {:?}", summary.packets, summary.pps, sink.count());
//! # Ok(()) }
//! ```
//!
//! Everything happens in the network namespace of the calling thread: the generator's threads
//! inherit it, and the interface index must be one of that namespace. Another way to see where
//! traffic went through the director is its per-real counters, `xdplb list --stats`.

mod args;
mod frame;
pub mod kernel;
mod pace;
mod range;
mod sink;
mod xdp;

use std::net::SocketAddrV4;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use serde::Serialize;

pub use args::{execute, PktgenArgs};
pub use frame::{checksums_valid, source_of, walk, Traffic, DEFAULT_SIZE, ETH_HLEN};
pub use pace::{due, rates, Work};
pub use range::{AddrRange, PortRange};
pub use sink::{Sink, SinkAction};
pub use xdp::{Generator, CALL_PACED_MAX};

use crate::net;

/// When a run ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// After this many frames (in all, over the threads).
    Count(u64),
    /// After this long.
    Duration(Duration),
    /// When [`RunOptions::stop`] is set.
    UntilStopped,
}

/// How a run goes: how much, how fast, on which CPUs.
#[derive(Clone, Debug)]
pub struct RunOptions<'a> {
    pub limit: Limit,
    /// Packets per second in all; None: as fast as the CPUs go.
    pub rate: Option<u64>,
    /// CPUs to send from, one thread each; empty: the first CPU this thread may run on.
    pub cpus: Vec<usize>,
    /// Frames the kernel runs through the program before transmitting them together (1..=256).
    pub batch: u32,
    /// Set it (from a signal handler, another thread) to end the run early.
    pub stop: Option<&'a AtomicBool>,
}

impl RunOptions<'_> {
    /// The default batch of the live-frames mode (NAPI's budget).
    pub const DEFAULT_BATCH: u32 = 64;

    /// `n` frames at full speed from the default CPU.
    pub fn count(n: u64) -> Self {
        Self::with_limit(Limit::Count(n))
    }

    /// Full speed for `d` from the default CPU.
    pub fn duration(d: Duration) -> Self {
        Self::with_limit(Limit::Duration(d))
    }

    pub fn with_limit(limit: Limit) -> Self {
        Self {
            limit,
            rate: None,
            cpus: Vec::new(),
            batch: Self::DEFAULT_BATCH,
            stop: None,
        }
    }
}

/// Where a run is, reported about ten times a second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub sent: u64,
    pub elapsed: Duration,
}

/// The outcome of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// `xdp` or `kernel`.
    pub engine: &'static str,
    pub iface: String,
    /// Frames the generator produced and handed to the interface.
    pub packets: u64,
    /// Their bytes: frame length (Ethernet header included, FCS not) times packets.
    pub bytes: u64,
    pub frame_size: usize,
    pub seconds: f64,
    /// Packets and bits (of `bytes`) per second.
    pub pps: f64,
    pub bps: f64,
    pub cpus: Vec<usize>,
}

impl Summary {
    fn new(
        engine: &'static str,
        traffic: &Traffic,
        packets: u64,
        elapsed: Duration,
        cpus: Vec<usize>,
    ) -> Self {
        let (pps, bps) = rates(packets, traffic.size, elapsed);
        Self {
            engine,
            iface: traffic.ifname.clone(),
            packets,
            bytes: packets * traffic.size as u64,
            frame_size: traffic.size,
            seconds: elapsed.as_secs_f64(),
            pps,
            bps,
            cpus,
        }
    }
}

/// Which engine generates the frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// XDP program in BPF_PROG_TEST_RUN live-frames mode.
    #[default]
    Xdp,
    /// The kernel's pktgen (/proc/net/pktgen), UDP only.
    Kernel,
}

/// Sends `traffic` with the xdp engine as `opts` says, from the calling thread's namespace.
pub fn run(traffic: &Traffic, opts: &RunOptions) -> Result<Summary> {
    run_with(Engine::Xdp, traffic, opts, &mut |_| {})
}

/// Sends `traffic` with `engine`, calling `progress` about ten times a second.
pub fn run_with(
    engine: Engine,
    traffic: &Traffic,
    opts: &RunOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Summary> {
    match engine {
        Engine::Xdp => Generator::new(traffic)?.run(opts, progress),
        Engine::Kernel => kernel::run(traffic, opts, progress),
    }
}

impl Traffic {
    /// TCP SYNs to `dst` out of interface `ifname` of the calling thread's namespace, from its
    /// MAC to the kernel's neighbour for `dst` (resolved by ARP if needed), from the
    /// interface's first IPv4 address and ports 1024-65535, in 60-byte frames. Change the
    /// fields as needed.
    pub fn for_interface(ifname: &str, dst: SocketAddrV4) -> Result<Self> {
        block_on(async {
            let iface = net::interface(ifname).await?;
            let dst_mac = destination_mac(&iface, dst).await?;
            let src = first_address(&iface).await?;
            Ok(Traffic::new(&iface, dst_mac, dst, src))
        })
    }
}

/// The interface's first IPv4 address, the default source.
async fn first_address(iface: &net::Interface) -> Result<AddrRange> {
    match net::ipv4_addresses(Some(iface.index)).await?.first() {
        Some(a) => Ok(AddrRange::single(*a)),
        None => bail!(
            "interface {} has no IPv4 address to send from; give the sources with --src",
            iface.name
        ),
    }
}

/// The MAC frames to `dst` go to on `iface`: the neighbour entry of `dst` (or of the gateway
/// toward it), asking the kernel to resolve it when it has none.
async fn destination_mac(iface: &net::Interface, dst: SocketAddrV4) -> Result<[u8; 6]> {
    net::next_hop_mac(iface, *dst.ip(), "").await.map_err(|e| {
        let reason = format!("{e:#}");
        let hint = if reason.contains("--mac") {
            ""
        } else {
            "; give it with --dst-mac"
        };
        anyhow!("no destination MAC for {}: {reason}{hint}", dst.ip())
    })
}

/// Runs a future of lb_user::net on a runtime of the calling thread (and so in its namespace).
fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a tokio runtime")?
        .block_on(f)
}

/// The CPUs this thread may run on.
pub fn allowed_cpus() -> Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is an empty set; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; the size is the set's.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } != 0 {
        bail!(
            "cannot read this thread's CPUs: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: i is below CPU_SETSIZE.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect())
}

/// `cpus`, checked against the CPUs this thread may use; empty: the first of those.
pub fn cpus_or_default(cpus: &[usize]) -> Result<Vec<usize>> {
    let allowed = allowed_cpus()?;
    if cpus.is_empty() {
        return Ok(allowed.first().copied().into_iter().collect());
    }
    let mut chosen = Vec::new();
    for &c in cpus {
        if !allowed.contains(&c) {
            let list: Vec<String> = allowed.iter().map(ToString::to_string).collect();
            bail!(
                "CPU {c} is not available (this process may use CPUs {})",
                list.join(",")
            );
        }
        if chosen.contains(&c) {
            bail!("CPU {c} is given twice");
        }
        chosen.push(c);
    }
    Ok(chosen)
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; cpu is below CPU_SETSIZE (checked by the
    // caller against the allowed CPUs).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } != 0 {
        bail!(
            "cannot pin a generator thread to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

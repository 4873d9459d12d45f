//! The `xdplb pktgen` command line: parse, check, send, report.

use std::net::SocketAddrV4;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::pace::{human, rates};
use super::{
    block_on, destination_mac, first_address, kernel, run_with, AddrRange, Engine, Limit,
    PortRange, Progress, RunOptions, Sink, SinkAction, Summary, Traffic, DEFAULT_SIZE,
};
use crate::datapath::AttachMode;
use crate::net;
use crate::packet::{TCP_ACK, TCP_SYN};
use crate::state::{Mac, Protocol};

/// `xdplb pktgen`: crafted TCP SYN (or ACK) or UDP frames toward a VIP, from many source
/// addresses and ports, at full speed or a given rate.
#[derive(Args, Debug)]
pub struct PktgenArgs {
    /// Interface to send out of.
    #[arg(long, short = 'i', value_name = "IF")]
    iface: String,
    /// Destination VIP:PORT.
    #[arg(long, value_name = "VIP:PORT", value_parser = parse_dst)]
    dst: SocketAddrV4,
    /// Send UDP datagrams instead of TCP SYNs.
    #[arg(long)]
    udp: bool,
    /// Send TCP ACKs instead of SYNs: packets of connections already open, which a director
    /// forwards by its connection table (its established path) once it holds their flows.
    #[arg(long, conflicts_with = "udp")]
    ack: bool,
    /// Destination MAC; default: the kernel's neighbour for the VIP (or its gateway) on IF,
    /// resolved by ARP if needed.
    #[arg(long, visible_alias = "mac", value_name = "MAC")]
    dst_mac: Option<Mac>,
    /// Source addresses: A.B.C.D/LEN, FIRST-LAST or one address; default: IF's first address.
    #[arg(long, value_name = "RANGE")]
    src: Option<AddrRange>,
    /// Source ports: FIRST-LAST or one port.
    #[arg(long, value_name = "RANGE", default_value = "1024-65535")]
    sport: PortRange,
    /// Frame size in bytes, Ethernet header included, FCS not (60: the 64-byte minimum frame).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_SIZE)]
    size: usize,
    /// Send this many packets (in all); without --count or --duration: until Ctrl-C.
    #[arg(long, short = 'n', value_name = "N", conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Send for this many seconds (fractions allowed).
    #[arg(long, short = 'd', value_name = "SECS", value_parser = parse_secs)]
    duration: Option<Duration>,
    /// Packets per second in all; default: as fast as the CPUs go.
    #[arg(long, value_name = "PPS", value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// CPUs to send from, one pinned thread each: 0,1 or 0-3; default: the first CPU allowed.
    #[arg(long, value_name = "LIST")]
    cpus: Option<CpuList>,
    /// xdp: an XDP program in BPF_PROG_TEST_RUN live-frames mode; kernel: the kernel's pktgen
    /// (/proc/net/pktgen, UDP only).
    #[arg(long, value_enum, default_value = "xdp")]
    engine: Engine,
    /// Count what arrives on this interface (of this namespace) with an XDP program that drops
    /// it, and report it (repeatable). On a veth this also lets the peer's XDP_TX frames in.
    /// Through a director, `xdplb list --stats` shows what each real server was sent.
    #[arg(long, value_name = "IF")]
    sink: Vec<String>,
    /// Let the sinks pass what they counted to the kernel instead of dropping it.
    #[arg(long, requires = "sink")]
    sink_pass: bool,
    /// Frames the kernel runs through the program per transmit batch (xdp engine, 1..=256).
    #[arg(long, value_name = "N", default_value_t = RunOptions::DEFAULT_BATCH, value_parser = clap::value_parser!(u32).range(1..=256))]
    batch: u32,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// A list of CPUs: `0,1`, `0-3`, `0,2-3`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

impl FromStr for CpuList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let num = |n: &str| -> Result<usize, String> {
            n.trim()
                .parse()
                .map_err(|_| format!("'{}' is not a CPU number", n.trim()))
        };
        let mut cpus = Vec::new();
        for part in s.split(',') {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err(format!("empty CPU range {part}"));
                    }
                    cpus.extend(a..=b);
                }
                None => cpus.push(num(part)?),
            }
        }
        Ok(Self(cpus))
    }
}

fn parse_dst(s: &str) -> Result<SocketAddrV4, String> {
    let addr: SocketAddrV4 = s
        .parse()
        .map_err(|_| format!("'{s}' is not VIP:PORT, e.g. 10.0.0.100:80"))?;
    if addr.port() == 0 {
        return Err("port 0 is not a valid destination port".into());
    }
    Ok(addr)
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() && v < 1e9 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("'{s}' is not a positive number of seconds")),
    }
}

/// Set by SIGINT/SIGTERM: the run ends and the summary is printed.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn catch_signals() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe. No SA_RESTART:
    // a live-frames call returns EINTR and the generator threads see the stop.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut());
    }
}

/// One sink's count in the report.
#[derive(Serialize)]
struct SinkReport {
    iface: String,
    packets: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct Report<'a> {
    #[serde(flatten)]
    summary: &'a Summary,
    sinks: Vec<SinkReport>,
}

/// Runs `xdplb pktgen`.
pub fn execute(args: PktgenArgs) -> Result<()> {
    if args.engine == Engine::Kernel {
        kernel::available(std::path::Path::new(kernel::PROC_DIR))?;
    }
    let protocol = if args.udp {
        Protocol::Udp
    } else {
        Protocol::Tcp
    };
    let (traffic, sinks) = block_on(async {
        let iface = net::interface(&args.iface).await?;
        let src = match args.src {
            Some(r) => r,
            None => first_address(&iface).await?,
        };
        let mut traffic = Traffic {
            protocol,
            sport: args.sport,
            size: args.size,
            tcp_flags: if args.ack { TCP_ACK } else { TCP_SYN },
            ..Traffic::new(&iface, [0; 6], args.dst, src)
        };
        // Bad input first, before waiting for an ARP reply.
        traffic.validate()?;
        let mut sinks = Vec::new();
        for name in &args.sink {
            sinks.push(net::interface(name).await?);
        }
        traffic.dst_mac = match args.dst_mac {
            Some(m) => m.0,
            None => destination_mac(&iface, args.dst).await?,
        };
        Ok((traffic, sinks))
    })?;
    let action = if args.sink_pass {
        SinkAction::Pass
    } else {
        SinkAction::Drop
    };
    let attached: Vec<(String, Sink)> = sinks
        .iter()
        .map(|i| {
            Sink::attach_with(i.index, action, AttachMode::Native)
                .with_context(|| format!("sink {}", i.name))
                .map(|s| (i.name.clone(), s))
        })
        .collect::<Result<_>>()?;

    let limit = match (args.count, args.duration) {
        (Some(n), _) => Limit::Count(n),
        (None, Some(d)) => Limit::Duration(d),
        (None, None) => Limit::UntilStopped,
    };
    catch_signals();
    let opts = RunOptions {
        limit,
        rate: args.rate,
        cpus: args.cpus.map(|c| c.0).unwrap_or_default(),
        batch: args.batch,
        stop: Some(&STOP),
    };
    let bar = progress_bar(limit);
    let mut last = Progress {
        sent: 0,
        elapsed: Duration::ZERO,
    };
    let mut on_progress = |p: Progress| {
        let (pps, _) = rates(
            p.sent.saturating_sub(last.sent),
            traffic.size,
            p.elapsed.saturating_sub(last.elapsed),
        );
        last = p;
        match limit {
            Limit::Duration(_) => {
                bar.set_position(p.elapsed.as_millis() as u64);
                bar.set_message(format!("{} packets, {}pps", p.sent, human(pps)));
            }
            _ => {
                bar.set_position(p.sent);
                bar.set_message(format!("{}pps", human(pps)));
            }
        }
    };
    let summary = run_with(args.engine, &traffic, &opts, &mut on_progress);
    bar.finish_and_clear();
    let summary = summary?;

    let mut reports = Vec::new();
    for (iface, sink) in &attached {
        let (packets, bytes) = sink.settle(Duration::from_millis(100), Duration::from_secs(2))?;
        reports.push(SinkReport {
            iface: iface.clone(),
            packets,
            bytes,
        });
    }
    if args.json {
        let report = Report {
            summary: &summary,
            sinks: reports,
        };
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let cpus: Vec<String> = summary.cpus.iter().map(ToString::to_string).collect();
    println!(
        "sent {} packets in {:.3} s: {}pps, {}bit/s ({} engine, {}-byte frames out of {}, CPU {})",
        summary.packets,
        summary.seconds,
        human(summary.pps),
        human(summary.bps),
        summary.engine,
        summary.frame_size,
        summary.iface,
        cpus.join(",")
    );
    for r in reports {
        let share = if summary.packets > 0 {
            format!(
                " ({:.1}% of sent)",
                r.packets as f64 * 100.0 / summary.packets as f64
            )
        } else {
            String::new()
        };
        println!(
            "sink {}: {} packets{share}, {} bytes",
            r.iface, r.packets, r.bytes
        );
    }
    Ok(())
}

fn progress_bar(limit: Limit) -> ProgressBar {
    let (bar, template) = match limit {
        Limit::Count(n) => (
            ProgressBar::new(n),
            "{bar:30} {pos}/{len} packets  {msg}  {elapsed}",
        ),
        Limit::Duration(d) => (
            ProgressBar::new(d.as_millis() as u64),
            "{bar:30} {msg}  {elapsed}",
        ),
        Limit::UntilStopped => (
            ProgressBar::new_spinner(),
            "{spinner} {pos} packets  {msg}  {elapsed}  (Ctrl-C stops)",
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!("0,1".parse(), Ok(CpuList(vec![0, 1])));
        assert_eq!("0-3".parse(), Ok(CpuList(vec![0, 1, 2, 3])));
        assert_eq!("0,2-3".parse(), Ok(CpuList(vec![0, 2, 3])));
        assert!("3-1".parse::<CpuList>().unwrap_err().contains("empty"));
        assert!("x".parse::<CpuList>().unwrap_err().contains("not a CPU"));
    }

    #[test]
    fn destinations_and_durations() {
        assert_eq!(
            parse_dst("10.0.0.100:80"),
            Ok("10.0.0.100:80".parse().unwrap())
        );
        assert!(parse_dst("10.0.0.100").unwrap_err().contains("VIP:PORT"));
        assert!(parse_dst("10.0.0.100:0").unwrap_err().contains("port 0"));
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
        assert!(
            parse_secs("0").is_err() && parse_secs("-1").is_err() && parse_secs("inf").is_err()
        );
    }
}

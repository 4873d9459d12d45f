//! `--engine kernel`: the kernel's own packet generator, driven through /proc/net/pktgen where
//! the kernel has it (module pktgen). It sends UDP only; one kernel thread (kpktgend_N) per
//! chosen CPU, each with its own device entry `IF@N` on the interface.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::frame::Traffic;
use super::{Limit, Progress, RunOptions, Summary};
use crate::state::{Mac, Protocol};

/// Where the kernel's pktgen takes its commands.
pub const PROC_DIR: &str = "/proc/net/pktgen";

/// One command: a line written to one file under /proc/net/pktgen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub file: String,
    pub line: String,
}

/// What the kernel threads are asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// (CPU, frames for its thread; 0 = until stopped, pktgen's "count 0").
    pub threads: Vec<(usize, u64)>,
    /// Packets per second per thread.
    pub rate_per_thread: Option<u64>,
}

/// Splits `total` into `parts` shares differing by at most one, larger ones first.
fn split(total: u64, parts: usize) -> Vec<u64> {
    let parts = parts as u64;
    (0..parts)
        .map(|i| total / parts + u64::from(i < total % parts))
        .collect()
}

/// Which threads run and how much each sends. A thread never gets a count or a rate of 0 (which
/// pktgen reads as "no limit"): with fewer packets or packets per second than CPUs, fewer CPUs
/// work.
pub fn plan(cpus: &[usize], count: Option<u64>, rate: Option<u64>) -> Job {
    let mut n = cpus.len().max(1);
    if let Some(c) = count {
        n = n.min(c.max(1) as usize);
    }
    if let Some(r) = rate {
        n = n.min(r.max(1) as usize);
    }
    let counts = match count {
        Some(c) => split(c, n),
        None => vec![0; n],
    };
    Job {
        threads: cpus.iter().copied().zip(counts).collect(),
        rate_per_thread: rate.map(|r| (r / n as u64).max(1)),
    }
}

/// The device entry of the thread on `cpu`.
pub fn device(ifname: &str, cpu: usize) -> String {
    format!("{ifname}@{cpu}")
}

/// Every command that sets the job up, in order; writing "start" to pgctrl then runs it.
pub fn commands(traffic: &Traffic, job: &Job) -> Vec<Write> {
    let w = |file: &str, line: String| Write {
        file: file.to_string(),
        line,
    };
    let mut out = vec![w("pgctrl", "stop".into())];
    for (cpu, _) in &job.threads {
        let thread = format!("kpktgend_{cpu}");
        out.push(w(&thread, "rem_device_all".into()));
        out.push(w(
            &thread,
            format!("add_device {}", device(&traffic.ifname, *cpu)),
        ));
    }
    for (cpu, count) in &job.threads {
        let dev = device(&traffic.ifname, *cpu);
        let mut set = |line: String| out.push(w(&dev, line));
        set(format!("count {count}"));
        set(format!("pkt_size {}", traffic.size));
        // Every packet differs (addresses, ports): no clones of one skb.
        set("clone_skb 0".into());
        match job.rate_per_thread {
            Some(r) => set(format!("ratep {r}")),
            None => set("delay 0".into()),
        }
        set(format!("dst {}", traffic.dst.ip()));
        set(format!("dst_mac {}", Mac(traffic.dst_mac)));
        set(format!("src_min {}", traffic.src.first));
        set(format!("src_max {}", traffic.src.last));
        set(format!("udp_src_min {}", traffic.sport.first));
        set(format!("udp_src_max {}", traffic.sport.last));
        set(format!("udp_dst_min {}", traffic.dst.port()));
        set(format!("udp_dst_max {}", traffic.dst.port()));
        // Random within the ranges: sequential addresses and ports would advance together
        // and make only as many flows as the larger range has values.
        if traffic.src.len() > 1 {
            set("flag IPSRC_RND".into());
        }
        if traffic.sport.len() > 1 {
            set("flag UDPSRC_RND".into());
        }
    }
    out
}

/// From a device entry's text: frames sent so far ("pkts-sofar: N").
pub fn parse_sofar(text: &str) -> Option<u64> {
    let rest = text.split("pkts-sofar:").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// From a device entry's text after a run: (microseconds, frames sent), from
/// "Result: OK: 1234(c1200+d34) usec, 1000 (60byte,0frags)".
pub fn parse_result(text: &str) -> Option<(u64, u64)> {
    let rest = text.split("Result: OK: ").nth(1)?;
    let (usec, rest) = rest.split_once('(')?;
    let rest = rest.split_once("usec, ")?.1;
    let packets = rest.split_whitespace().next()?;
    Some((usec.trim().parse().ok()?, packets.parse().ok()?))
}

/// Whether this kernel has pktgen, with the one-line reason when it has not.
pub fn available(dir: &Path) -> Result<()> {
    if !dir.join("pgctrl").exists() {
        bail!(
            "the kernel's pktgen is not available here ({} is missing: no pktgen module in this kernel, or not loaded: modprobe pktgen); use --engine xdp",
            dir.display()
        );
    }
    Ok(())
}

fn write(dir: &Path, cmd: &Write) -> Result<()> {
    let path = dir.join(&cmd.file);
    fs::write(&path, &cmd.line)
        .with_context(|| format!("kernel pktgen: '{}' > {}", cmd.line, path.display()))
}

/// Runs the job with the kernel's pktgen.
pub fn run(
    traffic: &Traffic,
    opts: &RunOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Summary> {
    let dir = PathBuf::from(PROC_DIR);
    available(&dir)?;
    if traffic.protocol != Protocol::Udp {
        bail!("the kernel's pktgen sends UDP only: add --udp, or use --engine xdp");
    }
    traffic.validate()?;
    let cpus = super::cpus_or_default(&opts.cpus)?;
    let count = match opts.limit {
        Limit::Count(n) => Some(n),
        _ => None,
    };
    let job = plan(&cpus, count, opts.rate);
    for cmd in commands(traffic, &job) {
        write(&dir, &cmd)?;
    }
    let deadline = match opts.limit {
        Limit::Duration(d) => Some(Instant::now() + d),
        _ => None,
    };
    let devices: Vec<PathBuf> = job
        .threads
        .iter()
        .map(|(cpu, _)| dir.join(device(&traffic.ifname, *cpu)))
        .collect();
    let done = AtomicBool::new(false);
    let start = Instant::now();
    let started = std::thread::scope(|s| {
        let runner = s.spawn(|| {
            let r = write(
                &dir,
                &Write {
                    file: "pgctrl".into(),
                    line: "start".into(),
                },
            );
            done.store(true, Ordering::Relaxed);
            r
        });
        let mut stopped = false;
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            let sent = devices
                .iter()
                .filter_map(|d| parse_sofar(&fs::read_to_string(d).ok()?))
                .sum();
            progress(Progress {
                sent,
                elapsed: start.elapsed(),
            });
            let over = deadline.is_some_and(|d| Instant::now() >= d)
                || opts.stop.is_some_and(|s| s.load(Ordering::Relaxed));
            if over && !stopped {
                stopped = true;
                let _ = write(
                    &dir,
                    &Write {
                        file: "pgctrl".into(),
                        line: "stop".into(),
                    },
                );
            }
        }
        runner.join().expect("the pktgen runner does not panic")
    });
    started?;
    let mut packets = 0;
    let mut usec = 0;
    for d in &devices {
        let text = fs::read_to_string(d).unwrap_or_default();
        if let Some((u, p)) = parse_result(&text) {
            usec = usec.max(u);
            packets += p;
        }
    }
    let elapsed = if usec > 0 {
        Duration::from_micros(usec)
    } else {
        start.elapsed()
    };
    Ok(Summary::new("kernel", traffic, packets, elapsed, cpus))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traffic() -> Traffic {
        let mut t =
            super::super::frame::tests::traffic(Protocol::Udp, "10.1.0.0/16", "1024-65535", 60);
        t.ifname = "eth1".into();
        t.dst.set_port(53);
        t
    }

    fn lines(cmds: &[Write], file: &str) -> Vec<String> {
        cmds.iter()
            .filter(|c| c.file == file)
            .map(|c| c.line.clone())
            .collect()
    }

    #[test]
    fn one_thread_per_cpu_with_its_share() {
        let job = plan(&[0, 1], Some(1001), None);
        assert_eq!(job.threads, vec![(0, 501), (1, 500)]);
        let cmds = commands(&traffic(), &job);
        assert_eq!(
            cmds[0],
            Write {
                file: "pgctrl".into(),
                line: "stop".into()
            }
        );
        assert_eq!(
            lines(&cmds, "kpktgend_0"),
            ["rem_device_all", "add_device eth1@0"]
        );
        assert_eq!(
            lines(&cmds, "kpktgend_1"),
            ["rem_device_all", "add_device eth1@1"]
        );
        assert_eq!(
            lines(&cmds, "eth1@0"),
            [
                "count 501",
                "pkt_size 60",
                "clone_skb 0",
                "delay 0",
                "dst 10.0.0.100",
                "dst_mac 02:00:00:00:00:aa",
                "src_min 10.1.0.0",
                "src_max 10.1.255.255",
                "udp_src_min 1024",
                "udp_src_max 65535",
                "udp_dst_min 53",
                "udp_dst_max 53",
                "flag IPSRC_RND",
                "flag UDPSRC_RND",
            ]
        );
        assert_eq!(lines(&cmds, "eth1@1")[0], "count 500");
        // Threads are set up before their devices are configured.
        let add = cmds
            .iter()
            .position(|c| c.line == "add_device eth1@1")
            .unwrap();
        let first_dev = cmds.iter().position(|c| c.file == "eth1@0").unwrap();
        assert!(add < first_dev);
    }

    #[test]
    fn rates_durations_and_single_values() {
        let job = plan(&[2, 3], None, Some(10_000));
        assert_eq!(job.threads, vec![(2, 0), (3, 0)]);
        assert_eq!(job.rate_per_thread, Some(5000));
        let mut t = traffic();
        t.src = "10.0.0.2".parse().unwrap();
        t.sport = "4000".parse().unwrap();
        let cmds = commands(&t, &job);
        let dev = lines(&cmds, "eth1@3");
        assert!(dev.contains(&"ratep 5000".to_string()));
        assert!(dev.contains(&"count 0".to_string()));
        assert!(!dev.iter().any(|l| l.starts_with("flag") || l == "delay 0"));
        assert!(dev.contains(&"src_min 10.0.0.2".to_string()));
        assert!(dev.contains(&"udp_src_max 4000".to_string()));
    }

    #[test]
    fn never_a_zero_count_or_rate_per_thread() {
        assert_eq!(
            plan(&[0, 1, 2], Some(2), None).threads,
            vec![(0, 1), (1, 1)]
        );
        let slow = plan(&[0, 1], Some(100), Some(1));
        assert_eq!(
            (slow.threads, slow.rate_per_thread),
            (vec![(0, 100)], Some(1))
        );
    }

    #[test]
    fn results_are_parsed() {
        let text = "Params: count 1000  min_pkt_size: 60  max_pkt_size: 60\n\
            Current:\n     pkts-sofar: 1000  errors: 0\n     started: 1us  stopped: 2us idle: 3us\n\
            Result: OK: 1234(c1200+d34) usec, 1000 (60byte,0frags)\n  810372pps 388Mb/sec (388978560bps) errors: 0\n";
        assert_eq!(parse_sofar(text), Some(1000));
        assert_eq!(parse_result(text), Some((1234, 1000)));
        assert_eq!(parse_result("Result: Idle\n"), None);
    }

    #[test]
    fn missing_pktgen_says_so_in_one_line() {
        let e = available(Path::new("/nonexistent/pktgen"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not available") && e.ends_with("use --engine xdp"),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }
}

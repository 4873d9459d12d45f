//! Engine `xdp`: the generator program in BPF_PROG_TEST_RUN live-frames mode.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{Array, MapData, PerCpuArray, PerCpuValues},
    programs::{ProgramError, TestRun as _, TestRunAttrs, TestRunOptions, Xdp},
    util::nr_cpus,
    Ebpf, EbpfLoader,
};
use lb_common::{map_names, program_names, PktgenConfig, PktgenState};

use super::pace::{chunk, due, Work};
use super::{cpus_or_default, pin_to, Limit, Progress, RunOptions, Summary, Traffic};
use crate::datapath::OBJECT;

/// Loads program `name` of the datapath object on fresh maps of its own (with a connection
/// table of one entry and the datapath's logs off: neither is used here), the globals given
/// set first.
pub(super) fn load(name: &str, globals: &[(&'static str, u8)]) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(map_names::CONNS, 1);
    loader.override_global("AYA_LOG_LEVEL", &0u8, true);
    for (global, value) in globals {
        loader.override_global(global, value, true);
    }
    let mut ebpf = loader
        .load(OBJECT)
        .context("cannot load the XDP object into the kernel")?;
    program(&mut ebpf, name)?
        .load()
        .with_context(|| format!("the kernel rejected the XDP program '{name}'"))?;
    Ok(ebpf)
}

pub(super) fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("the XDP object has no program '{name}'"))?
        .try_into()
        .map_err(|e: ProgramError| anyhow!("'{name}' is not an XDP program: {e}"))
}

/// How often a run reports its progress.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// The generator program loaded and configured for one traffic description. Runs may follow
/// one another; each continues the walk over the flows where the last one left it.
pub struct Generator {
    ebpf: Ebpf,
    traffic: Traffic,
    template: Vec<u8>,
    config: PktgenConfig,
    /// Whether the per-CPU walks were placed for the CPUs of a run yet.
    placed: Option<Vec<usize>>,
}

impl Generator {
    /// Loads the program and writes its settings; fails on traffic that cannot be sent.
    pub fn new(traffic: &Traffic) -> Result<Self> {
        traffic.validate()?;
        let template = traffic.template();
        let config = traffic.config(&template);
        let mut ebpf = load(program_names::PKTGEN, &[])?;
        let mut map: Array<&mut MapData, PktgenConfig> = Array::try_from(
            ebpf.map_mut(map_names::PKTGEN_CONFIG)
                .context("the XDP object has no PKTGEN_CONFIG map")?,
        )?;
        map.set(0, config, 0)
            .context("cannot write the generator's settings")?;
        Ok(Self {
            ebpf,
            traffic: traffic.clone(),
            template,
            config,
            placed: None,
        })
    }

    /// The frame every generated frame starts from.
    pub fn template(&self) -> &[u8] {
        &self.template
    }

    pub fn config(&self) -> &PktgenConfig {
        &self.config
    }

    /// The loaded program, e.g. to run it without live frames in tests.
    pub fn program(&mut self) -> Result<&mut Xdp> {
        program(&mut self.ebpf, program_names::PKTGEN)
    }

    fn states(&mut self) -> Result<PerCpuArray<&mut MapData, PktgenState>> {
        Ok(PerCpuArray::try_from(
            self.ebpf
                .map_mut(map_names::PKTGEN_STATE)
                .context("the XDP object has no PKTGEN_STATE map")?,
        )?)
    }

    /// Frames generated so far, over all CPUs and runs.
    pub fn generated(&mut self) -> Result<u64> {
        let values = self.states()?.get(&0, 0)?;
        Ok(values.iter().map(|s| s.sent).sum())
    }

    /// Gives the i-th of `cpus` its own part of the flows to start from (flow i * flows / n),
    /// so CPUs do not send the same sequence.
    fn place(&mut self, cpus: &[usize]) -> Result<()> {
        if self.placed.as_deref() == Some(cpus) {
            return Ok(());
        }
        let flows = self.config.flows();
        let config = self.config;
        let possible = nr_cpus().map_err(|(_, e)| anyhow!("cannot count the CPUs: {e}"))?;
        let mut states = self.states()?;
        let old = states.get(&0, 0)?;
        let values: Vec<PktgenState> = (0..possible)
            .map(|cpu| {
                let sent = old.get(cpu).map_or(0, |s| s.sent);
                let start = match cpus.iter().position(|c| *c == cpu) {
                    Some(i) => (flows as u128 * i as u128 / cpus.len() as u128) as u64,
                    None => 0,
                };
                PktgenState {
                    sent,
                    ..PktgenState::at(start, &config)
                }
            })
            .collect();
        states.set(0, PerCpuValues::try_from(values)?, 0)?;
        self.placed = Some(cpus.to_vec());
        Ok(())
    }

    /// Sends as `opts` says; calls `progress` about ten times a second from the calling thread.
    pub fn run(&mut self, opts: &RunOptions, progress: &mut dyn FnMut(Progress)) -> Result<Summary> {
        if !(1..=256).contains(&opts.batch) {
            bail!("batch {} is outside 1..=256", opts.batch);
        }
        let cpus = cpus_or_default(&opts.cpus)?;
        self.place(&cpus)?;
        let before = self.generated()?;
        let limit = match opts.limit {
            Limit::Count(n) => n,
            Limit::Duration(_) | Limit::UntilStopped => u64::MAX,
        };
        let work = Work::new(limit);
        let chunk = chunk(opts.rate);
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. XDP_TX leaves through ingress_ifindex.
        let ctx: Vec<u8> = [0, self.template.len() as u32, 0, self.traffic.ifindex, 0, 0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let failed = AtomicBool::new(false);
        let sent = AtomicU64::new(0);
        let start = Instant::now();
        let deadline = match opts.limit {
            Limit::Duration(d) => Some(start + d),
            _ => None,
        };
        let shared = Shared {
            work: &work,
            chunk,
            batch: opts.batch,
            rate: opts.rate,
            start,
            deadline,
            stop: opts.stop,
            failed: &failed,
            sent: &sent,
            frame: &self.template,
            ctx: &ctx,
            ifname: &self.traffic.ifname,
        };
        let prog: &Xdp = self
            .ebpf
            .program(program_names::PKTGEN)
            .context("the XDP object has no generator program")?
            .try_into()?;
        let results: Vec<Result<Instant>> = std::thread::scope(|s| {
            let workers: Vec<_> = cpus
                .iter()
                .map(|&cpu| {
                    let shared = &shared;
                    s.spawn(move || shared.work(prog, cpu))
                })
                .collect();
            let mut reported = start;
            while !workers.iter().all(|w| w.is_finished()) {
                std::thread::sleep(Duration::from_millis(10));
                if reported.elapsed() >= PROGRESS_INTERVAL {
                    reported = Instant::now();
                    progress(Progress {
                        sent: sent.load(Ordering::Relaxed),
                        elapsed: start.elapsed(),
                    });
                }
            }
            workers
                .into_iter()
                .map(|w| w.join().expect("a generator thread panicked"))
                .collect()
        });
        let mut end = start;
        for r in results {
            end = end.max(r?);
        }
        let packets = self.generated()? - before;
        progress(Progress {
            sent: packets,
            elapsed: end - start,
        });
        Ok(Summary::new("xdp", &self.traffic, packets, end - start, cpus))
    }
}

/// What the generator threads share.
struct Shared<'a> {
    work: &'a Work,
    chunk: u32,
    batch: u32,
    rate: Option<u64>,
    start: Instant,
    deadline: Option<Instant>,
    stop: Option<&'a AtomicBool>,
    failed: &'a AtomicBool,
    sent: &'a AtomicU64,
    frame: &'a [u8],
    ctx: &'a [u8],
    ifname: &'a str,
}

impl Shared<'_> {
    fn over(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
            || self.stop.is_some_and(|s| s.load(Ordering::Relaxed))
            || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Sleeps until `when`, in slices, so a stop is noticed; false when the run ended meanwhile
    /// or `when` is past the deadline.
    fn wait_until(&self, when: Instant) -> bool {
        if self.deadline.is_some_and(|d| when >= d) {
            return false;
        }
        loop {
            if self.over() {
                return false;
            }
            let now = Instant::now();
            if now >= when {
                return true;
            }
            std::thread::sleep((when - now).min(Duration::from_millis(50)));
        }
    }

    /// One generator thread on `cpu`: claims chunks until the work is done or the run ends.
    /// Returns when it finished.
    fn work(&self, prog: &Xdp, cpu: usize) -> Result<Instant> {
        let r = self.work_inner(prog, cpu);
        if r.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
        r
    }

    fn work_inner(&self, prog: &Xdp, cpu: usize) -> Result<Instant> {
        pin_to(cpu)?;
        while !self.over() {
            let Some((first, n)) = self.work.claim(self.chunk) else {
                break;
            };
            if let Some(rate) = self.rate {
                let when = self.start.checked_add(due(first, rate));
                if !when.is_some_and(|w| self.wait_until(w)) {
                    break;
                }
            }
            let opts = TestRunOptions {
                data_in: Some(self.frame),
                ctx_in: Some(self.ctx),
                repeat: n,
                attrs: TestRunAttrs::new().xdp_live_frames(self.batch.min(n)),
                ..Default::default()
            };
            match prog.test_run(opts) {
                Ok(_) => {
                    self.sent.fetch_add(n as u64, Ordering::Relaxed);
                }
                // A signal (Ctrl-C): the kernel stopped this call; the loop sees the stop.
                Err(ProgramError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(live_frames_error(e, self.ifname, self.frame.len())),
            }
        }
        Ok(Instant::now())
    }
}

fn live_frames_error(e: ProgramError, ifname: &str, size: usize) -> anyhow::Error {
    let io = match &e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    };
    let detail = match &e {
        ProgramError::SyscallError(s) => s.io_error.to_string(),
        other => other.to_string(),
    };
    let hint = match io {
        Some(libc::ENODEV) => format!(" ({ifname} is not an interface of this network namespace)"),
        Some(libc::EINVAL) if size > 1514 => {
            " (a live frame must fit one page with its headroom: try a smaller --size)".to_string()
        }
        Some(libc::EINVAL) => " (live-frames mode needs kernel 5.18 or later)".to_string(),
        _ => String::new(),
    };
    anyhow!("cannot send frames out of {ifname} in live-frames mode: {detail}{hint}")
}

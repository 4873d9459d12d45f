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

use super::pace::{due, Work};
use super::{cpus_or_default, pin_to_cpu, Limit, Progress, RunOptions, Summary, Traffic};
use crate::datapath::OBJECT;

/// Loads program `name` of the datapath object on fresh maps of its own (with a connection
/// table of one entry and the datapath's logs off: neither is used here), the globals given
/// set first.
pub(super) fn load(name: &str, globals: &[(&'static str, u8)]) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(map_names::CONN_TABLE, lb_common::conn_table::map_entries(1))
        .map_max_entries(
            map_names::NAT_REPLY_INDEX,
            lb_common::conn_table::map_entries(1),
        );
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
        let mut generator = Self {
            ebpf,
            traffic: traffic.clone(),
            template,
            config,
            placed: None,
        };
        // Every CPU at the first flow, without limit or pacing, until a run places them.
        let possible = nr_cpus().map_err(|(_, e)| anyhow!("cannot count the CPUs: {e}"))?;
        let start = vec![PktgenState::at(0, &config); possible];
        generator
            .states()?
            .set(0, PerCpuValues::try_from(start)?, 0)
            .context("cannot write the generator's state")?;
        Ok(generator)
    }

    /// Runs the program once on the template in plain test mode (nothing is sent): the verdict
    /// and the frame it produced. Each call is the next frame of the calling CPU's walk.
    pub fn run_once(&self) -> Result<(u32, Vec<u8>)> {
        let prog: &Xdp = self
            .ebpf
            .program(program_names::PKTGEN)
            .context("the XDP object has no generator program")?
            .try_into()?;
        let mut out = vec![0u8; self.template.len()];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(&self.template),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN of the generator")?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }

    /// The frame every generated frame starts from.
    pub fn template(&self) -> &[u8] {
        &self.template
    }

    pub fn config(&self) -> &PktgenConfig {
        &self.config
    }

    fn states(&mut self) -> Result<PerCpuArray<&mut MapData, PktgenState>> {
        Ok(PerCpuArray::try_from(
            self.ebpf
                .map_mut(map_names::PKTGEN_STATE)
                .context("the XDP object has no PKTGEN_STATE map")?,
        )?)
    }

    /// The per-CPU states.
    fn read_states(&self) -> Result<Vec<PktgenState>> {
        let map: PerCpuArray<&MapData, PktgenState> = PerCpuArray::try_from(
            self.ebpf
                .map(map_names::PKTGEN_STATE)
                .context("the XDP object has no PKTGEN_STATE map")?,
        )?;
        Ok(map.get(&0, 0)?.iter().copied().collect())
    }

    /// Frames generated so far, over all CPUs and runs.
    pub fn generated(&self) -> Result<u64> {
        Ok(self.read_states()?.iter().map(|s| s.sent).sum())
    }

    /// Writes the per-CPU states for a run on `cpus`: the i-th CPU gets its own part of the
    /// flows to start from (flow i * flows / n) the first time, so CPUs do not send the same
    /// sequence (later runs on the same CPUs go on where they were); `limits[i]` more frames at
    /// most (None: no limit) and `rates[i]` frames per second (0: full speed).
    fn prepare(&mut self, cpus: &[usize], limits: &[Option<u64>], rates: &[u64]) -> Result<()> {
        let flows = self.config.flows();
        let config = self.config;
        let place = self.placed.as_deref() != Some(cpus);
        let mut values = self.read_states()?;
        for (cpu, state) in values.iter_mut().enumerate() {
            if place {
                let start = match cpus.iter().position(|c| *c == cpu) {
                    Some(i) => (flows as u128 * i as u128 / cpus.len() as u128) as u64,
                    None => 0,
                };
                *state = PktgenState {
                    sent: state.sent,
                    ..PktgenState::at(start, &config)
                };
            }
            let i = cpus.iter().position(|c| *c == cpu);
            let limit = i.and_then(|i| limits[i]);
            state.limit = limit.map_or(u64::MAX, |l| state.sent + l);
            state.set_rate(i.map_or(0, |i| rates[i]));
        }
        let possible = nr_cpus().map_err(|(_, e)| anyhow!("cannot count the CPUs: {e}"))?;
        values.resize(possible, PktgenState::default());
        self.states()?.set(0, PerCpuValues::try_from(values)?, 0)?;
        self.placed = Some(cpus.to_vec());
        Ok(())
    }

    /// Sends as `opts` says; calls `progress` about ten times a second from the calling thread.
    pub fn run(
        &mut self,
        opts: &RunOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Summary> {
        if !(1..=256).contains(&opts.batch) {
            bail!("batch {} is outside 1..=256", opts.batch);
        }
        let cpus = cpus_or_default(&opts.cpus)?;
        let n = cpus.len();
        let pacing = Pacing::choose(opts.rate, n);
        let count = match opts.limit {
            Limit::Count(c) => Some(c),
            Limit::Duration(_) | Limit::UntilStopped => None,
        };
        // Per CPU: a share of the count and of the rate, unless the calls are paced from here
        // (then the threads draw frames from one counter).
        let (limits, rates): (Vec<Option<u64>>, Vec<u64>) = match pacing {
            Pacing::Calls(_) => (vec![None; n], vec![0; n]),
            Pacing::None | Pacing::Program(_) => {
                let limits = match count {
                    Some(c) => split(c, n).into_iter().map(Some).collect(),
                    None => vec![None; n],
                };
                let rates = match pacing {
                    Pacing::Program(r) => split(r, n),
                    _ => vec![0; n],
                };
                (limits, rates)
            }
        };
        self.prepare(&cpus, &limits, &rates)?;
        let before = self.generated()?;
        let before_per_cpu: Vec<u64> = self.read_states()?.iter().map(|s| s.sent).collect();

        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. XDP_TX leaves through ingress_ifindex.
        let ctx: Vec<u8> = [0, self.template.len() as u32, 0, self.traffic.ifindex, 0, 0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        install_wakeup();
        let work = Work::new(count.unwrap_or(u64::MAX));
        let failed = AtomicBool::new(false);
        let start = Instant::now();
        let deadline = match opts.limit {
            Limit::Duration(d) => Some(start + d),
            _ => None,
        };
        let slots: Vec<Slot> = cpus
            .iter()
            .zip(&limits)
            .map(|(&cpu, limit)| Slot {
                cpu,
                share: *limit,
                tid: AtomicU64::new(0),
                stop: AtomicBool::new(false),
                finished: AtomicBool::new(false),
            })
            .collect();
        let shared = Shared {
            pacing,
            batch: opts.batch,
            work: &work,
            start,
            deadline,
            failed: &failed,
            frame: &self.template,
            ctx: &ctx,
            ifname: &self.traffic.ifname,
        };
        let prog: &Xdp = self
            .ebpf
            .program(program_names::PKTGEN)
            .context("the XDP object has no generator program")?
            .try_into()?;
        let this = &*self;
        let results: Vec<Result<Instant>> = std::thread::scope(|s| {
            let workers: Vec<_> = slots
                .iter()
                .map(|slot| {
                    let shared = &shared;
                    s.spawn(move || shared.work(prog, slot))
                })
                .collect();
            let mut reported = start;
            // Each CPU's count is watched from here when it is paced: its thread keeps the
            // kernel running the program until told to stop.
            let watch = count.is_some() && matches!(pacing, Pacing::Program(_));
            while !slots.iter().all(|s| s.finished.load(Ordering::Relaxed)) {
                std::thread::sleep(WATCH_INTERVAL);
                let over = failed.load(Ordering::Relaxed)
                    || opts.stop.is_some_and(|s| s.load(Ordering::Relaxed))
                    || deadline.is_some_and(|d| Instant::now() >= d);
                let states = if watch || reported.elapsed() >= PROGRESS_INTERVAL {
                    this.read_states().ok()
                } else {
                    None
                };
                for slot in &slots {
                    let done = match (&states, slot.share) {
                        (Some(st), Some(share)) if watch => {
                            st[slot.cpu].sent >= before_per_cpu[slot.cpu] + share
                        }
                        _ => false,
                    };
                    if over || done {
                        slot.stop.store(true, Ordering::Relaxed);
                    }
                    slot.wake();
                }
                if reported.elapsed() >= PROGRESS_INTERVAL {
                    reported = Instant::now();
                    if let Some(st) = &states {
                        let sent: u64 = st.iter().map(|s| s.sent).sum();
                        progress(Progress {
                            sent: sent - before,
                            elapsed: start.elapsed(),
                        });
                    }
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
        Ok(Summary::new(
            "xdp",
            &self.traffic,
            packets,
            end - start,
            cpus,
        ))
    }
}

/// Splits `total` into `parts` shares differing by at most one, larger ones first.
fn split(total: u64, parts: usize) -> Vec<u64> {
    let parts = parts as u64;
    (0..parts)
        .map(|i| total / parts + u64::from(i < total % parts))
        .collect()
}

/// Per-thread rates up to this are paced from user space, one frame per system call (a call of
/// one frame skips the XDP dispatcher switch that costs a call of more); higher ones inside the
/// program, which then spins (dropping the frames it runs ahead of time).
pub const CALL_PACED_MAX: u64 = 20_000;

/// How the rate is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pacing {
    /// As fast as the CPUs go.
    None,
    /// One frame per system call, each when due: this many frames per second in all.
    Calls(u64),
    /// Each CPU paces itself inside long calls: this many frames per second in all.
    Program(u64),
}

impl Pacing {
    fn choose(rate: Option<u64>, threads: usize) -> Self {
        match rate {
            None => Pacing::None,
            Some(r) if r <= CALL_PACED_MAX * threads as u64 => Pacing::Calls(r),
            Some(r) => Pacing::Program(r),
        }
    }
}

/// How often the threads are watched (stop, deadline, per-CPU counts).
const WATCH_INTERVAL: Duration = Duration::from_millis(5);

/// The signal that interrupts a generator thread's system call: the kernel checks for pending
/// signals between batches and returns EINTR. Real-time, so nothing else uses it.
fn wakeup_signal() -> libc::c_int {
    libc::SIGRTMIN() + 2
}

extern "C" fn on_wakeup(_: libc::c_int) {}

/// Installs the (empty) handler of the wake-up signal: without one the signal would be ignored
/// or kill the process. No SA_RESTART: the interrupted call must return.
fn install_wakeup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: an empty handler is async-signal-safe; the action is fully initialised.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_wakeup as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(wakeup_signal(), &action, std::ptr::null_mut());
        }
    });
}

/// One generator thread, as the watching thread sees it.
struct Slot {
    cpu: usize,
    /// Its share of a count, when it has one.
    share: Option<u64>,
    /// Its pthread id, once running (0 before).
    tid: AtomicU64,
    /// Asked to stop.
    stop: AtomicBool,
    finished: AtomicBool,
}

impl Slot {
    /// Interrupts the thread's system call if it was asked to stop and still runs. Repeated
    /// until it finishes, so a signal that came just before the call is not the last one.
    fn wake(&self) {
        let tid = self.tid.load(Ordering::Acquire);
        if tid != 0 && self.stop.load(Ordering::Relaxed) && !self.finished.load(Ordering::Acquire) {
            // SAFETY: the thread is not joined yet (the scope joins after the watch loop), so its
            // pthread id is valid; the signal has a handler.
            unsafe { libc::pthread_kill(tid as libc::pthread_t, wakeup_signal()) };
        }
    }
}

/// What the generator threads share.
struct Shared<'a> {
    pacing: Pacing,
    batch: u32,
    /// Frames drawn one at a time when the calls are paced from user space.
    work: &'a Work,
    start: Instant,
    deadline: Option<Instant>,
    failed: &'a AtomicBool,
    frame: &'a [u8],
    ctx: &'a [u8],
    ifname: &'a str,
}

impl Shared<'_> {
    /// One generator thread, pinned to its CPU. Returns when it finished.
    fn work(&self, prog: &Xdp, slot: &Slot) -> Result<Instant> {
        let r = self.work_inner(prog, slot);
        if r.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
        slot.finished.store(true, Ordering::Release);
        r
    }

    fn work_inner(&self, prog: &Xdp, slot: &Slot) -> Result<Instant> {
        pin_to_cpu(slot.cpu)?;
        // SAFETY: pthread_self has no preconditions.
        slot.tid
            .store(unsafe { libc::pthread_self() } as u64, Ordering::Release);
        let stopped = || slot.stop.load(Ordering::Relaxed);
        match self.pacing {
            Pacing::Calls(rate) => {
                while !stopped() {
                    let Some((k, _)) = self.work.claim(1) else {
                        break;
                    };
                    let when = self.start.checked_add(due(k, rate));
                    if !when.is_some_and(|w| self.wait_until(w, &stopped)) {
                        break;
                    }
                    self.send(prog, 1)?;
                }
            }
            Pacing::None | Pacing::Program(_) => {
                // Unpaced with a share: exactly that many iterations. Otherwise the program
                // decides what leaves and the calls run until this thread is told to stop.
                let exact = self.pacing == Pacing::None;
                let mut left = slot.share.unwrap_or(u64::MAX);
                while !stopped() && left > 0 {
                    let n = if exact && slot.share.is_some() {
                        left.min(u32::MAX as u64) as u32
                    } else {
                        u32::MAX
                    };
                    if self.send(prog, n)? && exact && slot.share.is_some() {
                        left -= n as u64;
                    }
                }
            }
        }
        Ok(Instant::now())
    }

    /// Runs the program `n` times in live-frames mode; false when a signal cut the call short.
    fn send(&self, prog: &Xdp, n: u32) -> Result<bool> {
        let opts = TestRunOptions {
            data_in: Some(self.frame),
            ctx_in: Some(self.ctx),
            repeat: n,
            attrs: TestRunAttrs::new().xdp_live_frames(self.batch.min(n)),
            ..Default::default()
        };
        match prog.test_run(opts) {
            Ok(_) => Ok(true),
            Err(ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EINTR) =>
            {
                Ok(false)
            }
            Err(e) => Err(live_frames_error(e, self.ifname, self.frame.len())),
        }
    }

    /// Sleeps until `when`, in slices, so a stop is noticed; false when the thread was stopped
    /// meanwhile or `when` is past the deadline.
    fn wait_until(&self, when: Instant, stopped: &dyn Fn() -> bool) -> bool {
        if self.deadline.is_some_and(|d| when >= d) {
            return false;
        }
        loop {
            if stopped() {
                return false;
            }
            let now = Instant::now();
            if now >= when {
                return true;
            }
            std::thread::sleep((when - now).min(Duration::from_millis(50)));
        }
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

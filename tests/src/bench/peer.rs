//! Katran's XDP balancer, measured by the peer benchmark (`../shared/peer-bench`: it builds
//! Katran from its source and times it with BPF_PROG_TEST_RUN next to a bare XDP_TX program, on
//! the same CPU as ours) right before and right after xdplb's cases, so that both are read from
//! the same state of the machine. Right after each of its runs, while it has Katran's program
//! loaded, ours times the paths our targets are read against, with our wrapper in front of
//! Katran's program and the way ours are timed (`Bench::measure_peer`): its established flow,
//! and its new flows with a new source every packet, which that benchmark does not time.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{Map, MapData, PerCpuArray, PerCpuValues},
    programs::Xdp,
    util::nr_cpus,
};
use aya_obj::programs::XdpAttachType;

use super::{Bench, PeerMeasurement};

/// Katran's figures from one run: medians over its rounds, cost above its bare XDP_TX.
#[derive(Clone, Debug, PartialEq)]
pub struct Katran {
    pub commit: String,
    /// The bare XDP_TX program's own time in that run.
    pub bare_ns: f64,
    /// A packet for no VIP (XDP_PASS).
    pub pass_ns: f64,
    /// An established flow: LRU hit and IPIP encapsulation.
    pub established_ns: f64,
    /// A new flow: the LRU insert (of one key, rewritten every iteration).
    pub new_flow_ns: f64,
    /// A new flow every iteration (a new source address each time): a new LRU key each time.
    /// The peer benchmark does not time it: `cargo xtask bench` does, with our wrapper in front
    /// of Katran's program ([`PeerBench::new_sources`]). None until then.
    pub new_source: Option<PeerMeasurement>,
    /// The established flow again, timed by `cargo xtask bench` as its own cases are
    /// ([`PeerBench::established`]). None until then.
    pub established_here: Option<PeerMeasurement>,
    /// A SYN with Katran's default flood guard (most iterations skip the LRU insert).
    pub flood_guard_ns: f64,
    /// The SYN and the ACK the peer benchmark sends Katran (74 bytes), as it prints them;
    /// empty if it did not.
    pub syn_frame: Vec<u8>,
    pub ack_frame: Vec<u8>,
}

/// Where the peer benchmark's scripts are and where it builds.
pub struct PeerBench {
    scripts: PathBuf,
    work: PathBuf,
}

/// Katran's default build (balancer_consts.h): the slot of its stats map counting this second's
/// new connections (MAX_VIPS + NEW_CONN_RATE_CNTR), and the count past which its flood guard stops
/// inserting them (MAX_CONN_RATE, per CPU).
const CONN_RATE_SLOT: u32 = 512 + 2;
pub const KATRAN_MAX_CONN_RATE: u32 = 125_000;

/// Iterations of a run of Katran's new flows with a new source every packet: under its flood
/// guard's rate, so that every one is inserted (its count is reset before each run).
pub const NEW_SOURCE_REPEAT: u32 = 100_000;
const _: () = assert!(NEW_SOURCE_REPEAT < KATRAN_MAX_CONN_RATE);

/// The rows of the peer benchmark's summary this reads, by the start of their label.
const BARE: &str = "bare XDP_TX";
const PASS: &str = "Katran pass path (non-VIP), direct";
const ESTABLISHED: &str = "Katran established flow (LRU hit, IPIP encap), net";
const NEW_FLOW: &str = "Katran new flow SYN + LRU insert, net";
const FLOOD_GUARD: &str = "Katran SYN, default flood guard";

impl PeerBench {
    /// The peer benchmark from `XDPLB_PEER_BENCH` (its scripts) and `KATRAN_BENCH_DIR` (its
    /// build, default /var/tmp/peer), built first from the Katran git directory in `KATRAN_GIT`
    /// when it is not built yet. Err says what is missing.
    pub fn find() -> Result<Self> {
        let scripts = PathBuf::from(
            std::env::var_os("XDPLB_PEER_BENCH").context("XDPLB_PEER_BENCH is not set")?,
        );
        if !scripts.join("run.sh").is_file() {
            bail!("no run.sh in {}", scripts.display());
        }
        let work = std::env::var_os("KATRAN_BENCH_DIR")
            .map_or_else(|| PathBuf::from("/var/tmp/peer"), PathBuf::from);
        let bench = Self { scripts, work };
        if !bench.built() {
            let git = std::env::var_os("KATRAN_GIT").with_context(|| {
                format!(
                    "Katran is not built in {} and KATRAN_GIT (a Katran git directory) is not set",
                    bench.work.display()
                )
            })?;
            bench.script("build.sh").arg(git).status_ok()?;
        }
        Ok(bench)
    }

    fn built(&self) -> bool {
        self.work.join("build/bpfprog/bpf/balancer.bpf.o").is_file()
    }

    fn script(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.scripts.join(name));
        cmd.env("KATRAN_BENCH_DIR", &self.work);
        cmd
    }

    /// One run of `rounds` interleaved rounds; Katran's maps stay loaded for the next run.
    pub fn run(&self, rounds: usize) -> Result<Katran> {
        let out = self
            .script("run.sh")
            .env("ROUNDS", rounds.to_string())
            .output()
            .context("cannot run the peer benchmark")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "the peer benchmark failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        parse(&text)
    }

    /// Frees Katran's maps (about 1 GB).
    pub fn unload(&self) -> Result<()> {
        self.script("run.sh").arg("--unload").status_ok()
    }

    /// Katran's program, as a run left it loaded (pinned in the peer benchmark's bpffs).
    fn program(&self) -> Result<Xdp> {
        let path = self.work.join("bpffs/katran");
        Xdp::from_pin(&path, XdpAttachType::Interface)
            .with_context(|| format!("cannot open Katran's program pinned at {}", path.display()))
    }

    /// Katran's new flows with a new source every packet, which the peer benchmark does not
    /// time: our wrapper in front of its program, on the SYN the run `k` printed, while that run
    /// has it loaded (right after it, in the same state of the machine), over `rounds` rounds.
    pub fn new_sources(
        &self,
        bench: &mut Bench,
        k: &Katran,
        rounds: usize,
    ) -> Result<PeerMeasurement> {
        self.timed(bench, &k.syn_frame, "SYN", true, rounds, NEW_SOURCE_REPEAT)
    }

    /// Katran's established flow (an LRU hit and the IPIP encapsulation), timed as ours are:
    /// our wrapper in front of its program, on the ACK the run `k` printed (of the flow its SYN
    /// bound), over `rounds` rounds of `repeat` iterations.
    pub fn established(
        &self,
        bench: &mut Bench,
        k: &Katran,
        rounds: usize,
        repeat: u32,
    ) -> Result<PeerMeasurement> {
        self.timed(bench, &k.ack_frame, "ACK", false, rounds, repeat)
    }

    fn timed(
        &self,
        bench: &mut Bench,
        frame: &[u8],
        name: &str,
        vary: bool,
        rounds: usize,
        repeat: u32,
    ) -> Result<PeerMeasurement> {
        if frame.is_empty() {
            bail!("the peer benchmark printed no {name} frame");
        }
        let program = self.program()?;
        bench.measure_peer(program.fd()?, frame, vary, rounds, repeat, || {
            self.reset_conn_rate()
        })
    }

    /// Zeroes Katran's count of this second's new connections on every CPU, as the peer
    /// benchmark does before its SYN cases: a run of fewer than [`KATRAN_MAX_CONN_RATE`] SYNs
    /// then inserts every one.
    fn reset_conn_rate(&self) -> Result<()> {
        let path = self.work.join("bpffs/katran_maps/stats");
        let map = MapData::from_pin(&path)
            .with_context(|| format!("cannot open Katran's stats map at {}", path.display()))?;
        let mut stats = PerCpuArray::<MapData, [u64; 2]>::try_from(Map::PerCpuArray(map))?;
        let cpus = nr_cpus().map_err(|(_, e)| e)?;
        stats.set(
            CONN_RATE_SLOT,
            PerCpuValues::try_from(vec![[0u64; 2]; cpus])?,
            0,
        )?;
        Ok(())
    }

    pub fn scripts(&self) -> &Path {
        &self.scripts
    }
}

trait StatusOk {
    fn status_ok(&mut self) -> Result<()>;
}

impl StatusOk for Command {
    /// Runs the script with its standard output sent to our standard error: the bench's own
    /// standard output is the report (a stray "unloaded" line ended up in BENCHMARKS.md).
    fn status_ok(&mut self) -> Result<()> {
        let status = self.stdout(std::io::stderr()).status()?;
        if !status.success() {
            bail!("{self:?}: {status}");
        }
        Ok(())
    }
}

/// A summary row's median and its cost above bare: the first and the last figure after the
/// label (`label  median min max  xN  xN  +D`).
fn row(text: &str, label: &str) -> Result<(f64, f64)> {
    let line = text
        .lines()
        .find(|l| l.starts_with(label))
        .with_context(|| format!("no \"{label}\" row in the peer benchmark's summary"))?;
    let figures: Vec<f64> = line[label.len()..]
        .split_whitespace()
        .filter_map(|w| w.trim_start_matches('x').trim().parse().ok())
        .collect();
    match (figures.first(), figures.last()) {
        (Some(m), Some(d)) if figures.len() >= 2 => Ok((*m, *d)),
        _ => bail!("cannot read the figures of \"{line}\""),
    }
}

/// Reads the summary the peer benchmark prints.
pub fn parse(text: &str) -> Result<Katran> {
    let summary = text
        .split_once("== SUMMARY")
        .context("the peer benchmark printed no summary")?
        .1;
    let commit = text
        .lines()
        .find_map(|l| l.strip_prefix("# katran commit: "))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    Ok(Katran {
        commit,
        bare_ns: row(summary, BARE)?.0,
        pass_ns: row(summary, PASS)?.1,
        established_ns: row(summary, ESTABLISHED)?.1,
        new_flow_ns: row(summary, NEW_FLOW)?.1,
        new_source: None,
        established_here: None,
        flood_guard_ns: row(summary, FLOOD_GUARD)?.1,
        syn_frame: printed_frame(text, "SYN")?,
        ack_frame: printed_frame(text, "ACK")?,
    })
}

/// A frame the peer benchmark prints, by its name: `# packets (74 B each): SYN  <hex>`, then
/// `#    ACK  <hex>` lines; empty if it printed none.
fn printed_frame(text: &str, name: &str) -> Result<Vec<u8>> {
    let Some(hex) = text.lines().find_map(|l| {
        let l = l.strip_prefix('#')?;
        let rest = l.split_once("):").map_or(l, |(_, r)| r).trim_start();
        rest.strip_prefix(name)
            .filter(|r| r.starts_with(char::is_whitespace))
            .map(str::trim)
    }) else {
        return Ok(Vec::new());
    };
    if hex.len() % 2 != 0 || !hex.is_ascii() {
        bail!("the peer benchmark's {name} frame is not hex: {hex}");
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&hex[i..i + 2], 16)
                .with_context(|| format!("the peer benchmark's {name} frame is not hex: {hex}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The peer benchmark's output as it prints it (a run on this machine kind).
    const SAMPLE: &str = "\
# katran commit: 19f08fec82fb7b5fb14d935a80057bdc0897c8de
# packets (74 B each): SYN   0a00000000020a00000000010800450000
#                      ACK   0a00000000020a00000000010800450010
#                      PASS  0a00000000020a00000000010800450020
== raw ns/packet (BPF_PROG_TEST_RUN duration, repeat=1000000, 9 rounds interleaved) ==
bare XDP_TX (direct)                                          27.0    27    28  TX

== SUMMARY: ns/packet, median [min..max] over rounds; ratios/deltas are medians of per-round values ==
                                                          median    min    max   /bare    /macswap  -bare(ns)
bare XDP_TX                                                 27.0   27.0   28.0   x 1.00   x 0.87      +0.0
MAC-swap XDP_TX                                             31.0   30.0   31.0   x 1.15   x 1.00      +4.0
Katran pass path (non-VIP), direct                          92.0   92.0   94.0   x 3.41   x 2.97     +65.0
Katran established flow (LRU hit, IPIP encap), net         159.0  157.0  160.0   x 5.85   x 5.13    +132.0
Katran new flow SYN + LRU insert, net                      362.0  361.0  388.0   x13.41   x11.68    +335.0
Katran new flow SYN, new source every packet + LRU insert, net   612.0  580.0  700.0   x22.67   x19.74    +585.0
Katran SYN, default flood guard (87.5% skip LRU), net      178.0  177.0  180.0   x 6.59   x 5.74    +151.0
";

    #[test]
    fn the_summary_rows_are_read_as_cost_above_bare() {
        let k = parse(SAMPLE).unwrap();
        assert_eq!(
            k,
            Katran {
                commit: "19f08fec82fb7b5fb14d935a80057bdc0897c8de".into(),
                bare_ns: 27.0,
                pass_ns: 65.0,
                established_ns: 132.0,
                new_flow_ns: 335.0,
                new_source: None,
                established_here: None,
                flood_guard_ns: 151.0,
                syn_frame: vec![10, 0, 0, 0, 0, 2, 10, 0, 0, 0, 0, 1, 8, 0, 0x45, 0, 0],
                ack_frame: vec![10, 0, 0, 0, 0, 2, 10, 0, 0, 0, 0, 1, 8, 0, 0x45, 0, 0x10],
            }
        );
    }

    #[test]
    fn a_syn_frame_that_is_not_hex_is_an_error() {
        let text = SAMPLE.replace("0a00000000020a", "0a00000000020z");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("not hex"), "{e}");
        let none = SAMPLE.replace("): SYN", "): none");
        assert!(parse(&none).unwrap().syn_frame.is_empty());
        // Each frame by its own name: without the ACK line, no ACK frame, the SYN still read.
        let no_ack = SAMPLE.replace(" ACK ", " FIN ");
        let k = parse(&no_ack).unwrap();
        assert!(k.ack_frame.is_empty());
        assert_eq!(k.syn_frame.len(), 17);
    }

    #[test]
    fn a_missing_row_is_an_error_naming_it() {
        let text = SAMPLE.replace("Katran new flow", "Katran renamed flow");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("Katran new flow SYN + LRU insert"), "{e}");
    }
}

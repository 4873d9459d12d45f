//! Datapath cost per packet, measured with BPF_PROG_TEST_RUN and `repeat`: every case next to a
//! bare XDP_TX program on the same frame in the same run, rounds alternating between the two, so
//! the drift of a shared machine cancels out. Cases that change the packet, or need a new flow
//! each iteration, run behind the `xdp_bench` wrapper, and so does their baseline.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{Array, MapData, PerCpuArray, PerCpuValues, ProgramArray},
    programs::{ProgramFd, TestRun as _, TestRunOptions},
    util::nr_cpus,
};
use lb_common::{map_names, program_names, BenchFrame, BENCH_FRAME_MAX};
use lb_user::{
    datapath::{clock::with_sync, AttachMode, Datapath, LoadOptions, MapWriter as _, SyncRing},
    packet::{Frame6Spec, FrameSpec, TCP_ACK, TCP_SYN},
    state::{Forward, Mac, Protocol, RealSpec, Scheduler, SchedulerSpec, ServiceAddr},
};

use crate::fixture::{default_config, real_mac, Fixture, XDP_PASS, XDP_TX};
use crate::{names, netns::veth, Netns};

pub mod jit_lines;
pub mod live;
pub mod peer;
pub mod profile;
pub mod scale;
mod stats;

use stats::median_of;
pub use stats::{
    median, moved, percentile, stats, steadiest, sub_runs, ATTEMPTS, DRIFT_LIMIT, SUB_RUNS,
};

/// The CPU every BPF_PROG_TEST_RUN measurement runs on, ours and the peer benchmark's: one
/// CPU's caches and frequency for every figure set side by side.
pub const BENCH_CPU: usize = 0;

/// The calling thread pinned to one CPU (threads it starts inherit it) until dropped.
pub struct Pinned {
    before: libc::cpu_set_t,
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> Result<Pinned> {
    // SAFETY: cpu_set_t is plain data; the calls read and write only the sets given.
    unsafe {
        let mut before: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(0, size, &mut before) != 0 {
            bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        if libc::sched_setaffinity(0, size, &one) != 0 {
            bail!(
                "cannot pin to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Pinned { before })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: as in pin_to_cpu.
        unsafe {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.before);
        }
    }
}

/// One benchmark case: what runs, on which frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// A packet for no service: parse, one failed lookup, XDP_PASS.
    NonVipPass,
    /// `sh` service, established flow (connection-table hit), LVS/DR.
    DrShEstablished,
    /// `mh` service, a new flow every packet (connection-table insert), LVS/DR.
    DrMhNewFlow,
    /// `mh` service, established flow, LVS/DR.
    DrMhEstablished,
    /// [`Case::DrMhEstablished`] over [`MANY_FLOWS`] established flows, one after another:
    /// each packet's connection-table entry is not in the CPU's nearest caches, as with real
    /// traffic (the other established cases repeat one flow, whose entry stays in L1).
    DrMhEstablishedMany,
    /// `mh` service, established flow, LVS/TUN (IPIP encapsulation).
    TunEstablished,
    /// [`Case::DrMhEstablished`] with IPv4 options (a record route): the tail call to the
    /// options' checker, its walk, and the director's program run again.
    DrMhEstablishedOptions,
    /// [`Case::DrMhNewFlow`] with connection sync on: each new flow also writes an event into
    /// its CPU's ring for the agent (drained between rounds, as the agent does).
    DrMhNewFlowSync,
    /// [`Case::DrMhEstablished`] with connection sync on: must cost what it costs without.
    DrMhEstablishedSync,
    /// [`Case::DrMhNewFlowSync`] with the ring full (no agent reading it): the event is lost
    /// and counted, the packet forwarded.
    DrMhNewFlowSyncRingFull,
    /// [`Case::DrMhNewFlow`] with the new-flow guard's limit reached: the flow is scheduled and
    /// forwarded but not remembered (a SYN flood's packets), comparable with Katran's SYN path
    /// under its flood guard.
    DrMhNewFlowGuarded,
    /// A new flow every packet for a service of this scheduler (over 3 real servers): the
    /// scheduler's new-flow path, comparable with [`Case::DrMhNewFlow`].
    DrNewFlow(Scheduler),
    /// A new client every packet for a persistent `rr` service: the template lookup that
    /// misses, the scheduler, and the template insert.
    DrPersistentNewFlow,
    /// `mh` service, established flow, LVS/NAT request: destination address and port
    /// rewritten (VIP:83 to RIP:8080), checksums updated incrementally, TTL decremented.
    NatRequest,
    /// A new flow every packet for the LVS/NAT service: DR's new flow, the request's rewrite,
    /// and the reply index's insert (the reply's own flow key, for the reply path).
    NatNewFlow,
    /// The reply of [`Case::NatRequest`]'s flow from the real server: the prefilter, the reply
    /// index, the tail call to the reply program, the connection table, the source rewrite and
    /// the kernel's FIB lookup toward the client (on the interface it came in on: XDP_TX).
    NatReply,
    /// An IPv6 `mh` service, established flow, LVS/DR: the IPv6 pipeline (a tail call, the
    /// IPv6 header) in front of the same stages.
    Dr6MhEstablished,
    /// [`Case::Dr6MhEstablished`] with a new flow every packet.
    Dr6MhNewFlow,
    /// [`Case::DrPersistentNewFlow`] over IPv6: a new client every packet for an IPv6
    /// persistent `rr` service (a template keyed by the client's IPv6 address).
    Dr6PersistentNewFlow,
    /// An IPv6 `mh` service, established flow, LVS/TUN (IPv6-in-IPv6).
    Tun6MhEstablished,
    /// [`Case::NatRequest`] over IPv6: the IPv6 pipeline, then the tail call to the IPv6 NAT
    /// program, which parses the packet again and rewrites it.
    Nat6Request,
    /// [`Case::NatNewFlow`] over IPv6: the IPv6 pipeline's new flow, then xdplb_nat6's rewrite
    /// and its insert into the reply index.
    Nat6NewFlow,
    /// [`Case::NatReply`] over IPv6: the reply of [`Case::Nat6Request`]'s flow.
    Nat6Reply,
    /// An IPv4 `mh` service whose real servers are IPv6, established flow, LVS/TUN
    /// (IPv4-in-IPv6): the IPv4 pipeline, then the tail call to the 4in6 program.
    Tun4in6Established,
    /// The kernel's FIB lookup alone (`xdp_fib`), as a NAT reply makes it toward the client:
    /// the kernel's share of the NAT reply, which its budget counts as measured here.
    FibLookup,
    /// [`Case::FibLookup`] over IPv6: the IPv6 routing table's walk.
    Fib6Lookup,
}

/// What a case's cost above the bare XDP_TX program is held to.
#[derive(Clone, Copy, Debug)]
pub enum Goal {
    /// A figure the issue sets, nanoseconds.
    AtMost(f64),
    /// A share of Katran's cost on the comparable path (the issue's targets against the peer).
    OfKatran(f64),
    /// The issue's rule for a path added after it: the nearest existing path, as measured in the
    /// same run, plus a budget in nanoseconds for the work this one must add (`work`).
    Over {
        nearest: Case,
        added: f64,
        work: &'static str,
        /// Cases measured in the same run whose costs the budget adds (or, negative,
        /// subtracts): the kernel's own work the path must do.
        measured: &'static [(Case, f64)],
    },
    /// Measured without a target.
    None,
}

/// Flows of [`Case::DrMhEstablishedMany`]: half of the bench table's connections, its entries
/// 2 MiB of the table's 8 MiB, beyond the CPU's L2.
const MANY_FLOWS: u32 = 32_768;

/// Where the wrapper's numbering of sources starts: it writes the number's low 24 bits under
/// the template's first byte, so from 0 the 100th source would be 10.0.0.100, the VIP, which
/// the director drops (source = destination), and a test run ending there fails its verdict
/// (a smoke run's test runs of 100 iterations did). From here, 10.128.0.1 on: far from the
/// frames' addresses (10.0.0.0/24, the real servers' 10.1.0.0/24) for 8 million sources.
const FIRST_SOURCE: u32 = 0x80_0000;

/// The schedulers with a new-flow case of their own (mh's is [`Case::DrMhNewFlow`]).
fn schedulers() -> impl Iterator<Item = Scheduler> {
    Scheduler::ALL.into_iter().filter(|s| *s != Scheduler::Mh)
}

/// The service port of a scheduler's new-flow case, and of the persistent one.
fn scheduler_port(s: Scheduler) -> u16 {
    100 + Scheduler::ALL.iter().position(|x| *x == s).unwrap_or(0) as u16
}
const PERSISTENT_PORT: u16 = 99;
/// The port of the IPv4 service tunnelled to IPv6 real servers.
const TUN_4IN6_PORT: u16 = 84;

impl Case {
    /// Every case, in the order of the report.
    pub fn all() -> Vec<Case> {
        let mut all = vec![
            Case::NonVipPass,
            Case::DrShEstablished,
            Case::DrMhNewFlow,
            Case::DrMhNewFlowGuarded,
            Case::DrMhEstablished,
            Case::DrMhEstablishedMany,
            Case::DrMhEstablishedOptions,
            Case::TunEstablished,
            Case::Tun4in6Established,
            Case::DrMhNewFlowSync,
            Case::DrMhEstablishedSync,
            Case::DrMhNewFlowSyncRingFull,
        ];
        all.extend(schedulers().map(Case::DrNewFlow));
        all.push(Case::DrPersistentNewFlow);
        // The NAT new flows of both families first: they fill the reply index (one for both)
        // many times over, which would push out the replies of the requests' flows (a request
        // binds the flow its reply belongs to), measured and then profiled after them.
        all.extend([
            Case::NatNewFlow,
            Case::Nat6NewFlow,
            Case::NatRequest,
            Case::NatReply,
        ]);
        all.extend([
            Case::Dr6MhEstablished,
            Case::Dr6MhNewFlow,
            Case::Dr6PersistentNewFlow,
            Case::Tun6MhEstablished,
            Case::Nat6Request,
            Case::Nat6Reply,
            Case::FibLookup,
            Case::Fib6Lookup,
        ]);
        all
    }

    pub fn name(self) -> String {
        match self {
            Case::NonVipPass => "non-VIP pass".into(),
            Case::DrShEstablished => "DR sh, established flow".into(),
            Case::DrMhNewFlow => "DR mh, new flow (connection-table insert)".into(),
            Case::DrMhEstablished => "DR mh, established flow".into(),
            Case::DrMhEstablishedMany => {
                format!("DR mh, established flows, {MANY_FLOWS} in turn (entries not in cache)")
            }
            Case::DrMhEstablishedOptions => {
                "DR mh, established flow, IPv4 options (checker and back)".into()
            }
            Case::TunEstablished => "TUN mh, established flow (IPIP encapsulation)".into(),
            Case::DrMhNewFlowSync => "DR mh, new flow, sync on (event in its CPU's ring)".into(),
            Case::DrMhEstablishedSync => "DR mh, established flow, sync on".into(),
            Case::DrMhNewFlowSyncRingFull => {
                "DR mh, new flow, sync on, ring full (event lost)".into()
            }
            Case::DrMhNewFlowGuarded => {
                "DR mh, new flow, guard limit reached (not remembered)".into()
            }
            Case::DrNewFlow(s) => format!("DR {}, new flow", s.name()),
            Case::DrPersistentNewFlow => "DR rr persistent, new client (template insert)".into(),
            Case::NatRequest => "NAT mh, established flow, request (destination rewrite)".into(),
            Case::NatReply => "NAT mh, reply (reply index, source rewrite, FIB lookup)".into(),
            Case::NatNewFlow => {
                "NAT mh, new flow (connection-table and reply-index inserts)".into()
            }
            Case::Dr6MhEstablished => "IPv6 DR mh, established flow".into(),
            Case::Dr6MhNewFlow => "IPv6 DR mh, new flow (connection-table insert)".into(),
            Case::Dr6PersistentNewFlow => {
                "IPv6 DR rr persistent, new client (template insert)".into()
            }
            Case::Tun6MhEstablished => {
                "IPv6 TUN mh, established flow (IPv6-in-IPv6 encapsulation)".into()
            }
            Case::Nat6Request => {
                "IPv6 NAT mh, established flow, request (destination rewrite)".into()
            }
            Case::Nat6Reply => {
                "IPv6 NAT mh, reply (reply index, source rewrite, FIB lookup)".into()
            }
            Case::Nat6NewFlow => {
                "IPv6 NAT mh, new flow (connection-table and reply-index inserts)".into()
            }
            Case::Tun4in6Established => {
                "TUN mh to IPv6 real servers, established flow (IPv4-in-IPv6)".into()
            }
            Case::FibLookup => "the kernel's FIB lookup alone, toward a NAT reply's client".into(),
            Case::Fib6Lookup => {
                "the kernel's IPv6 FIB lookup alone, toward a NAT reply's client".into()
            }
        }
    }

    /// Whether connection sync is on for the case.
    pub fn sync(self) -> bool {
        matches!(
            self,
            Case::DrMhNewFlowSync | Case::DrMhEstablishedSync | Case::DrMhNewFlowSyncRingFull
        )
    }

    /// Iterations per round at most: a new flow with sync on writes an event per iteration, and
    /// one round must fit the ring (drained between rounds).
    fn max_repeat(self) -> u32 {
        match self {
            Case::DrMhNewFlowSync => 50_000,
            // Each round goes once over the flows.
            Case::DrMhEstablishedMany => MANY_FLOWS,
            _ => u32::MAX,
        }
    }

    /// What the case's cost above the bare XDP_TX program is held to.
    pub fn goal(self) -> Goal {
        // The issue's rule for the paths added after it: nearest path plus the work it adds.
        let over = |nearest: Case, added: f64, work: &'static str| Goal::Over {
            nearest,
            added,
            work,
            measured: &[],
        };
        const IPV6: &str = "the tail call to the IPv6 pipeline and its 40-byte header";
        // The schedulers that choose by load.
        const SCAN: &str = "the scan of the service's 3 real servers in place of the Maglev \
            table's read: the bpf_loop helper (15) and, per server, its table slot, limits and \
            counts read and compared (10 each)";
        match self {
            Case::NonVipPass => Goal::AtMost(15.0),
            Case::DrShEstablished | Case::DrMhEstablished => Goal::AtMost(50.0),
            // DR established's work, with its entry fetched from memory: what that costs is the
            // machine's, not a target of ours (both connection tables measured about the same).
            Case::DrMhEstablishedMany => Goal::None,
            Case::DrMhNewFlow => Goal::OfKatran(0.7),
            Case::TunEstablished => Goal::OfKatran(0.8),
            Case::DrMhNewFlowGuarded => over(
                Case::DrMhEstablished,
                50.0,
                "the service lookup (an established flow's entry names its service), the \
                 Maglev pick (the flow's hash, a read of the service's table) and the guard's \
                 per-CPU count, in place of the connection table's lookup (a flood's SYN skips \
                 it)",
            ),
            Case::DrMhNewFlowSync => over(
                Case::DrMhNewFlow,
                40.0,
                "the sync event: the CPU's ring cursor read, the 64-byte event written with the \
                 kernel's tick (a load), the cursor moved, the event counted",
            ),
            Case::DrMhNewFlowSyncRingFull => over(
                Case::DrMhNewFlow,
                20.0,
                "the CPU's ring cursor read and found full, the lost event counted",
            ),
            Case::DrMhEstablishedSync => over(
                Case::DrMhEstablished,
                0.0,
                "nothing: an established flow sends no event",
            ),
            Case::DrNewFlow(Scheduler::Sh | Scheduler::Mh | Scheduler::Dh) => over(
                Case::DrMhNewFlow,
                0.0,
                "nothing: the same table read, by the hash of one address (sh the source, dh \
                 the destination)",
            ),
            Case::DrNewFlow(Scheduler::Rr | Scheduler::Wrr) => over(
                Case::DrMhNewFlow,
                0.0,
                "nothing: a per-CPU position read and written in place of the flow's hash",
            ),
            Case::DrNewFlow(Scheduler::Lblc | Scheduler::Lblcr) => over(
                Case::DrMhNewFlow,
                90.0,
                "the scan as lc's (45), the destination's entry in the locality table (the \
                 kernel's LRU hash, 30) and the scan of its set (15)",
            ),
            Case::DrNewFlow(_) => over(Case::DrMhNewFlow, 45.0, SCAN),
            Case::DrPersistentNewFlow => over(
                Case::DrNewFlow(Scheduler::Rr),
                150.0,
                "the templates' table (the connection table's layout): a lookup that misses \
                 and an insert that pushes one out",
            ),
            Case::DrMhEstablishedOptions => over(
                Case::DrMhEstablished,
                70.0,
                "the director's program run again after the checker (DR established's target, \
                 50), two tail calls and the walk of the options (20)",
            ),
            Case::Tun4in6Established => over(
                Case::TunEstablished,
                30.0,
                "the hand-off to the 4in6 program (a tail call, the packet parsed again) and an \
                 outer header twice as long",
            ),
            Case::NatRequest => over(
                Case::DrMhEstablished,
                20.0,
                "the rewrite of the destination address and port with the incremental checksums \
                 (as TUN adds its encapsulation)",
            ),
            Case::NatNewFlow => over(
                Case::DrMhNewFlow,
                170.0,
                "the request's rewrite (20) and the reply index's insert (a second table's \
                 insert, 150, as the persistent new client's)",
            ),
            Case::NatReply => Goal::Over {
                nearest: Case::NatRequest,
                added: 40.0,
                work: "the reply index's lookup (a keyed hash of the reply's flow and a bucket \
                       read, 25), the tail call to the reply program (15) and the kernel's FIB \
                       lookup toward the client, which no other path needs (as measured alone \
                       in this run)",
                measured: &[(Case::FibLookup, 1.0)],
            },
            Case::Dr6MhEstablished => over(Case::DrMhEstablished, 10.0, IPV6),
            Case::Dr6MhNewFlow => over(Case::DrMhNewFlow, 10.0, IPV6),
            Case::Dr6PersistentNewFlow => over(Case::DrPersistentNewFlow, 10.0, IPV6),
            // Written as 20 when TUN added about that to DR; read in the same run since.
            Case::Tun6MhEstablished => Goal::Over {
                nearest: Case::Dr6MhEstablished,
                added: 0.0,
                work: "the encapsulation, as TUN adds to DR in this run (an outer IPv6 header \
                       in place of IPv4's, twice as long but without a checksum)",
                measured: &[(Case::TunEstablished, 1.0), (Case::DrMhEstablished, -1.0)],
            },
            Case::Nat6Request => over(
                Case::Dr6MhEstablished,
                40.0,
                "NAT's rewrite (20, as NAT's request adds to DR) and the hand-off to a program \
                 of its own (a tail call, the packet parsed again: the IPv6 pipeline's stack has \
                 no room for the rewrite, 20)",
            ),
            Case::Nat6NewFlow => over(
                Case::Dr6MhNewFlow,
                190.0,
                "what the IPv6 NAT request adds to IPv6 DR (the rewrite and the hand-off to \
                 xdplb_nat6, 40) and the reply index's insert (150, as the NAT new flow's)",
            ),
            Case::Nat6Reply => Goal::Over {
                nearest: Case::NatReply,
                added: 20.0,
                work: "the IPv6 header, its stages in frames of their own (calls) for the stack \
                       (20), and what the kernel's IPv6 FIB lookup costs over its IPv4 one (as \
                       both measured alone in this run)",
                measured: &[(Case::Fib6Lookup, 1.0), (Case::FibLookup, -1.0)],
            },
            // The kernel's, measured for the NAT replies' budgets.
            Case::FibLookup | Case::Fib6Lookup => Goal::None,
        }
    }

    /// The verdict the program must give the case's frame: a benchmark that measured a pass
    /// where it meant a forward would report the wrong path's cost.
    fn verdict(self) -> u32 {
        match self {
            Case::NonVipPass => XDP_PASS,
            _ => XDP_TX,
        }
    }

    /// Whether the frame must be restored (or varied) before every iteration: every case the
    /// program forwards, as forwarding rewrites at least the destination MAC, and the next
    /// iteration would see a frame for another host.
    fn wrapped(self) -> bool {
        self.verdict() == XDP_TX && !self.fib()
    }

    /// Whether the case times the kernel's FIB lookup alone (`xdp_fib`), not the director.
    fn fib(self) -> bool {
        matches!(self, Case::FibLookup | Case::Fib6Lookup)
    }

    /// The program the case times.
    fn program(self) -> &'static str {
        if self.fib() {
            program_names::FIB
        } else {
            program_names::LB
        }
    }

    /// Whether the case's frame is IPv6.
    fn ipv6(self) -> bool {
        matches!(
            self,
            Case::Dr6MhEstablished
                | Case::Dr6MhNewFlow
                | Case::Dr6PersistentNewFlow
                | Case::Tun6MhEstablished
                | Case::Nat6Request
                | Case::Nat6NewFlow
                | Case::Nat6Reply
                | Case::Fib6Lookup
        )
    }

    /// Whether the frame must arrive on an interface: a NAT reply's FIB lookup needs one.
    fn arrives(self) -> bool {
        matches!(
            self,
            Case::NatReply | Case::Nat6Reply | Case::FibLookup | Case::Fib6Lookup
        )
    }

    /// The baseline the case is measured against (its program, and the shape of its frame):
    /// cases with the same one must find it at the same time within a run, or the machine
    /// changed state during the run.
    pub fn baseline(self) -> String {
        let program = if self.wrapped() {
            "the wrapper in front of bare XDP_TX"
        } else {
            "bare XDP_TX"
        };
        let frame = match (self.ipv6(), self == Case::DrMhEstablishedOptions) {
            (true, _) => "IPv6",
            (false, true) => "IPv4 with options",
            (false, false) => "IPv4",
        };
        let source = if self.new_flow() {
            ", a new source each iteration"
        } else if self.varied() {
            ", sources in turn"
        } else {
            ""
        };
        let ingress = if self.arrives() {
            ", arriving on an interface"
        } else {
            ""
        };
        format!("{program}, {frame}{source}{ingress}")
    }

    /// Where the wrapper varies the frame (its source address, IPv4's or the tail of IPv6's)
    /// for a case that varies it ([`Case::varied`]).
    fn vary_at(self) -> Option<u32> {
        self.varied().then_some(if self.ipv6() {
            SRC6_ADDR_TAIL_OFFSET
        } else {
            SRC_ADDR_OFFSET
        })
    }

    /// The nearest path an added path is held against ([`Goal::Over`]).
    pub fn nearest(self) -> Option<Case> {
        match self.goal() {
            Goal::Over { nearest, .. } => Some(nearest),
            _ => None,
        }
    }

    /// Whether the wrapper varies the source address: a new flow every iteration, or
    /// [`MANY_FLOWS`] established ones in turn.
    fn varied(self) -> bool {
        self.new_flow() || self == Case::DrMhEstablishedMany
    }

    /// Whether every iteration is a new flow.
    fn new_flow(self) -> bool {
        matches!(
            self,
            Case::DrMhNewFlow
                | Case::DrMhNewFlowSync
                | Case::DrMhNewFlowSyncRingFull
                | Case::DrMhNewFlowGuarded
                | Case::DrNewFlow(_)
                | Case::DrPersistentNewFlow
                | Case::NatNewFlow
                | Case::Dr6MhNewFlow
                | Case::Dr6PersistentNewFlow
                | Case::Nat6NewFlow
        )
    }
}

/// Measured cost of one case: per-packet times over the rounds, nanoseconds.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub case: Case,
    /// The case's own time, and the baseline's, per round.
    pub case_ns: Vec<f64>,
    pub base_ns: Vec<f64>,
    /// For an added path ([`Goal::Over`]): its nearest path's time in the same rounds, right
    /// before or after the case (its frame and configuration), so that what the path adds is
    /// measured in one machine state and one connection table, not across cases minutes apart.
    pub nearest_ns: Vec<f64>,
    /// How many times the case was measured (see [`steadiest`]); these rounds are the last's
    /// or an earlier, steadier attempt's.
    pub attempts: usize,
}

/// A peer's program measured behind the wrapper ([`Bench::measure_peer`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerMeasurement {
    /// The bare program behind the wrapper, per round.
    pub base_ns: Vec<f64>,
    /// The peer's cost above it, per round.
    pub extra_ns: Vec<f64>,
    /// As [`Measurement::attempts`].
    pub attempts: usize,
}

impl PeerMeasurement {
    /// The peer's median cost above the bare program.
    pub fn cost(&self) -> f64 {
        median(&self.extra_ns)
    }
}

/// Per-round differences `a - b`.
fn per_round(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

impl Measurement {
    /// Per-round differences case - nearest path, for an added path.
    pub fn over_nearest_ns(&self) -> Vec<f64> {
        per_round(&self.case_ns, &self.nearest_ns)
    }

    /// Per-round differences case - baseline.
    pub fn extra_ns(&self) -> Vec<f64> {
        per_round(&self.case_ns, &self.base_ns)
    }
}

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
/// The LVS/NAT service's port, its one real server and that server's port.
const NAT_PORT: u16 = 83;
const NAT_REAL: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 21);
const NAT_REAL_PORT: u16 = 8080;
/// The IPv6 LVS/NAT service's one real server (on [VIP6]:NAT_PORT, the same port).
const NAT6_REAL: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x21);

/// Offset of the IPv4 source address in an untagged frame: what the wrapper varies; in an IPv6
/// frame, the last 4 bytes of the source address.
const SRC_ADDR_OFFSET: u32 = 26;
const IPV4_CSUM_OFFSET: u32 = 24;
const SRC6_ADDR_TAIL_OFFSET: u32 = 14 + 8 + 12;

/// Everything loaded for the benchmarks: the director's program with a `sh` service on port 80
/// and an `mh` service on port 81 (DR) and 82 (TUN), each over 3 real servers, and on port 83
/// (NAT) over one; the bare XDP_TX program; the wrapper, once with the director and once with
/// the bare program behind it; and a namespace whose routes the NAT reply's FIB lookup uses.
pub struct Bench {
    net: Netns,
    /// The interface of `net` NAT replies arrive on, toward the client too.
    ingress: u32,
    fx: Fixture,
    bare: Datapath,
    wrap_lb: Datapath,
    wrap_bare: Datapath,
    /// The director's sync ring, drained (or left full) as a case needs.
    ring: SyncRing,
}

fn service(port: u16) -> ServiceAddr {
    ServiceAddr {
        protocol: Protocol::Tcp,
        vip: VIP.into(),
        port,
    }
}

fn wrapper(target: &mut Datapath, target_name: &str) -> Result<Datapath> {
    let fd = target.program(target_name)?.fd()?.try_clone()?;
    wrapper_of(&fd)
}

/// The wrapper in front of the program `fd` refers to (ours, or a peer's).
fn wrapper_of(fd: &ProgramFd) -> Result<Datapath> {
    let mut wrap = Datapath::load(program_names::BENCH, LoadOptions::flows(1))?;
    // Set through the object's own handle: the kernel empties a program array once user space
    // holds no reference to it.
    let map = wrap
        .ebpf_mut()
        .map_mut(map_names::BENCH_PROGS)
        .context("no BENCH_PROGS map")?;
    ProgramArray::<&mut MapData>::try_from(map)?.set(0, fd, 0)?;
    Ok(wrap)
}

/// Attaches `program` of `datapath` natively to a veth of its own in `net` (`ifname`, made
/// anew), which stays down: no frame ever reaches it. The kernel's XDP dispatcher then holds
/// the program, and a BPF_PROG_TEST_RUN of it no longer puts it there and takes it out again
/// around the timed loop, each time with an RCU grace period (some 16 ms here, most of a short
/// test run's time) and the other CPUs interrupted to see the dispatcher's new code. The
/// timed loop runs the program through the dispatcher either way.
fn dispatched(net: &Netns, datapath: &mut Datapath, program: &str, ifname: &str) -> Result<()> {
    let _ = net.ip(&["link", "del", ifname]);
    let peer = format!("{ifname}p");
    net.ip(&["link", "add", ifname, "type", "veth", "peer", "name", &peer])?;
    let ifindex = net.ifindex(ifname)?;
    net.run_in(|| datapath.attach_program(program, ifindex, AttachMode::Native))
        .with_context(|| format!("attaching {program} to {ifname}"))?;
    Ok(())
}

/// A namespace with one interface, `b0`, on the clients' network: the benchmark frames' client
/// (10.0.0.2, 2001:db8::2) is on it, with permanent neighbour entries, and IP forwarding is on
/// (the FIB lookup helper wants it).
fn nat_net() -> Result<(Netns, u32)> {
    names::cleanup_stale();
    let net = Netns::new(format!("{}-bench", names::unique_prefix()))?;
    veth(&net, "b0", &net, "b1")?;
    let client = FrameSpec::default();
    let mac: Vec<String> = client.src_mac.iter().map(|b| format!("{b:02x}")).collect();
    let mac = mac.join(":");
    net.ip_batch(&format!(
        "addr add 10.0.0.1/24 dev b0\n\
         addr add 2001:db8::1/64 dev b0 nodad\n\
         neigh replace {} lladdr {mac} nud permanent dev b0\n\
         neigh replace {} lladdr {mac} nud permanent dev b0\n",
        client.src,
        Frame6Spec::default().src,
    ))?;
    net.sysctl("net.ipv4.ip_forward", "1")?;
    net.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    let ingress = net.ifindex("b0")?;
    Ok((net, ingress))
}

impl Bench {
    pub fn new() -> Result<Self> {
        Self::with_object(lb_user::datapath::OBJECT)
    }

    /// The bench over another build's datapath object (for a paired comparison of two builds).
    pub fn with_object(object: &[u8]) -> Result<Self> {
        let mut fx = Fixture::with_object(object, default_config(), LoadOptions::flows(65536));
        let mh = SchedulerSpec {
            scheduler: Some(Scheduler::Mh),
            ..Default::default()
        };
        let persistent = SchedulerSpec {
            scheduler: Some(Scheduler::Rr),
            persistent: Some(300),
            ..Default::default()
        };
        let mut services = vec![
            (80, SchedulerSpec::default(), Forward::Route),
            (81, mh, Forward::Route),
            (82, mh, Forward::Tunnel),
            (PERSISTENT_PORT, persistent, Forward::Route),
        ];
        for s in schedulers() {
            let spec = SchedulerSpec {
                scheduler: Some(s),
                ..Default::default()
            };
            services.push((scheduler_port(s), spec, Forward::Route));
        }
        for (port, spec, forward) in services {
            fx.add_service(service(port), spec);
            for n in 11..=13u8 {
                fx.add_real_spec(
                    service(port),
                    RealSpec {
                        addr: Some(Ipv4Addr::new(10, 1, 0, n).into()),
                        forward: Some(forward),
                        mac: Some(Mac(real_mac(n))),
                        ..Default::default()
                    },
                );
            }
        }
        let v6 = |port| ServiceAddr {
            vip: VIP6.into(),
            ..service(port)
        };
        // LVS/NAT, each family: one real server.
        for (svc, rip) in [
            (service(NAT_PORT), IpAddr::from(NAT_REAL)),
            (v6(NAT_PORT), NAT6_REAL.into()),
        ] {
            fx.add_service(svc, mh);
            fx.add_real_spec(
                svc,
                RealSpec {
                    addr: Some(rip),
                    port: Some(NAT_REAL_PORT),
                    forward: Some(Forward::Masq),
                    mac: Some(Mac(real_mac(21))),
                    ..Default::default()
                },
            );
        }
        // Three IPv6 real servers: the IPv6 services, Maglev with LVS/DR on 80 and LVS/TUN on
        // 82, persistent rr as on IPv4, and an IPv4 service tunnelled to them (IPv4-in-IPv6).
        for (svc, spec, forward) in [
            (v6(80), mh, Forward::Route),
            (v6(82), mh, Forward::Tunnel),
            (v6(PERSISTENT_PORT), persistent, Forward::Route),
            (service(TUN_4IN6_PORT), mh, Forward::Tunnel),
        ] {
            fx.add_service(svc, spec);
            for n in 11..=13u8 {
                fx.add_real_spec(
                    svc,
                    RealSpec {
                        addr: Some(format!("2001:db8::{n}").parse::<Ipv6Addr>()?.into()),
                        forward: Some(forward),
                        mac: Some(Mac(real_mac(n))),
                        ..Default::default()
                    },
                );
            }
        }
        let tunnel_src6: Ipv6Addr = "2001:db8::1".parse()?;
        fx.maps.set_tunnel_src6(tunnel_src6.octets())?;
        let (net, ingress) = nat_net()?;
        let mut bare = Datapath::load(program_names::TX, LoadOptions::flows(1))?;
        let wrap_lb = wrapper(&mut fx.datapath, program_names::LB)?;
        let wrap_bare = wrapper(&mut bare, program_names::TX)?;
        let ring = fx.datapath.sync_events()?;
        // The FIB lookup's own program, on the director's maps (an older object for a paired
        // comparison may not have it: its cases are not compared).
        if let Ok(fib) = fx.datapath.program(program_names::FIB) {
            fib.load().context("the kernel rejected xdp_fib")?;
            dispatched(&net, &mut fx.datapath, program_names::FIB, "xdfib")?;
        }
        dispatched(&net, &mut fx.datapath, program_names::LB, "xdlb")?;
        dispatched(&net, &mut bare, program_names::TX, "xdtx")?;
        let mut wrap_lb = wrap_lb;
        let mut wrap_bare = wrap_bare;
        for (wrap, ifname) in [(&mut wrap_lb, "xdwraplb"), (&mut wrap_bare, "xdwraptx")] {
            dispatched(&net, wrap, program_names::BENCH, ifname)?;
            Self::restart_sources(wrap)?;
        }
        Ok(Self {
            net,
            ingress,
            fx,
            bare,
            wrap_lb,
            wrap_bare,
            ring,
        })
    }

    fn frame(case: Case) -> Vec<u8> {
        // A new flow's packet is its SYN; an established flow's, an ACK (a SYN on a known flow
        // is a retransmission, which also takes the SYN-flood guard's check).
        let tcp_flags = if case.new_flow() { TCP_SYN } else { TCP_ACK };
        if case.ipv6() {
            let request = Frame6Spec {
                dst: VIP6,
                dport: match case {
                    Case::Tun6MhEstablished => 82,
                    Case::Nat6Request | Case::Nat6NewFlow | Case::Nat6Reply => NAT_PORT,
                    Case::Dr6PersistentNewFlow => PERSISTENT_PORT,
                    _ => 80,
                },
                tcp_flags,
                ..Default::default()
            };
            // A reply to the client: the real server's, or (the FIB lookup alone) as
            // translated, from the VIP.
            if matches!(case, Case::Nat6Reply | Case::Fib6Lookup) {
                let (src, sport) = match case {
                    Case::Fib6Lookup => (VIP6, NAT_PORT),
                    _ => (NAT6_REAL, NAT_REAL_PORT),
                };
                return Frame6Spec {
                    src,
                    dst: request.src,
                    sport,
                    dport: request.sport,
                    ..request
                }
                .build();
            }
            return request.build();
        }
        let (dst, dport) = match case {
            Case::NonVipPass => (Ipv4Addr::new(10, 0, 0, 1), 80),
            Case::DrShEstablished => (VIP, 80),
            Case::DrMhNewFlow
            | Case::DrMhEstablished
            | Case::DrMhEstablishedMany
            | Case::DrMhEstablishedOptions
            | Case::DrMhNewFlowSync
            | Case::DrMhEstablishedSync
            | Case::DrMhNewFlowSyncRingFull
            | Case::DrMhNewFlowGuarded => (VIP, 81),
            Case::TunEstablished => (VIP, 82),
            Case::Tun4in6Established => (VIP, TUN_4IN6_PORT),
            Case::DrNewFlow(s) => (VIP, scheduler_port(s)),
            Case::DrPersistentNewFlow => (VIP, PERSISTENT_PORT),
            Case::NatRequest | Case::NatNewFlow => (VIP, NAT_PORT),
            Case::Dr6MhEstablished
            | Case::Dr6MhNewFlow
            | Case::Dr6PersistentNewFlow
            | Case::Tun6MhEstablished
            | Case::Nat6Request
            | Case::Nat6NewFlow
            | Case::Nat6Reply
            | Case::Fib6Lookup => unreachable!("IPv6, above"),
            // As in IPv6, above.
            Case::NatReply | Case::FibLookup => {
                let (src, sport) = match case {
                    Case::FibLookup => (VIP, NAT_PORT),
                    _ => (NAT_REAL, NAT_REAL_PORT),
                };
                let request = FrameSpec::default();
                return FrameSpec {
                    src,
                    dst: request.src,
                    sport,
                    dport: request.sport,
                    tcp_flags: TCP_ACK,
                    ..request
                }
                .build();
            }
        };
        let ip_options = match case {
            Case::DrMhEstablishedOptions => vec![7, 7, 4, 0, 0, 0, 0, 0],
            _ => Vec::new(),
        };
        FrameSpec {
            dst,
            dport,
            ip_options,
            tcp_flags,
            ..Default::default()
        }
        .build()
    }

    /// Mean time per iteration of `program` over `repeat` runs on `frame`; with `ingress`, as
    /// if the frame had arrived on that interface of `net` (measured from a thread in it).
    fn time(
        net: &Netns,
        ingress: Option<u32>,
        datapath: &mut Datapath,
        program: &str,
        frame: &[u8],
        repeat: u32,
        verdict: u32,
    ) -> Result<f64> {
        match ingress {
            None => Self::time_here(datapath, program, frame, repeat, verdict, None),
            Some(_) => {
                net.run_in(|| Self::time_here(datapath, program, frame, repeat, verdict, ingress))
            }
        }
    }

    /// The median of [`SUB_RUNS`] test runs sharing `repeat` iterations (see [`sub_runs`]).
    fn time_here(
        datapath: &mut Datapath,
        program: &str,
        frame: &[u8],
        repeat: u32,
        verdict: u32,
        ingress: Option<u32>,
    ) -> Result<f64> {
        let mut out = vec![0u8; frame.len() + 256];
        let ctx = crate::fixture::xdp_md(frame, ingress);
        let prog = datapath.program(program)?;
        let (runs, each) = sub_runs(repeat);
        median_of(runs, || {
            let r = prog
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ctx_in: ingress.is_some().then_some(&ctx[..]),
                    repeat: each,
                    ..Default::default()
                })
                .map_err(|e| anyhow::anyhow!("test run of {program}: {e}"))?;
            if r.return_value != verdict {
                bail!(
                    "{program} returned {} where {verdict} was expected",
                    r.return_value
                );
            }
            Ok(r.duration.as_nanos() as f64)
        })
    }

    /// One timed run behind the wrapper: of the director's program, or of the bare one (the
    /// wrapped cases' baseline).
    fn wrapped_run(
        &mut self,
        bare: bool,
        ingress: Option<u32>,
        frame: &[u8],
        repeat: u32,
        verdict: u32,
    ) -> Result<f64> {
        let wrap = if bare {
            &mut self.wrap_bare
        } else {
            &mut self.wrap_lb
        };
        Self::time_wrapper(&self.net, ingress, wrap, frame, repeat, verdict)
    }

    /// One timed run of `wrap`, a wrapper in front of whichever program it tail-calls.
    fn time_wrapper(
        net: &Netns,
        ingress: Option<u32>,
        wrap: &mut Datapath,
        frame: &[u8],
        repeat: u32,
        verdict: u32,
    ) -> Result<f64> {
        Self::time(
            net,
            ingress,
            wrap,
            program_names::BENCH,
            frame,
            repeat,
            verdict,
        )
    }

    /// Sets the wrapper's per-CPU counter, which numbers the sources it writes, back to
    /// [`FIRST_SOURCE`].
    fn restart_sources(wrap: &mut Datapath) -> Result<()> {
        let map = wrap
            .ebpf_mut()
            .map_mut(map_names::BENCH_SEQ)
            .context("no BENCH_SEQ map")?;
        let mut seq = PerCpuArray::<&mut MapData, u32>::try_from(map)?;
        let first = vec![FIRST_SOURCE; nr_cpus().map_err(|(_, e)| e)?];
        seq.set(0, PerCpuValues::try_from(first)?, 0)?;
        Ok(())
    }

    fn set_template(wrap: &mut Datapath, frame: &[u8], vary: Option<u32>) -> Result<()> {
        let mut t = BenchFrame {
            len: frame.len() as u32,
            vary_at: u32::MAX,
            csum_at: u32::MAX,
            bytes: [0; BENCH_FRAME_MAX],
        };
        t.bytes[..frame.len()].copy_from_slice(frame);
        if let Some(at) = vary {
            t.vary_at = at;
            if at == SRC_ADDR_OFFSET {
                // The source address is in the IPv4 header: its checksum follows.
                t.csum_at = IPV4_CSUM_OFFSET;
            }
        }
        let mut map: Array<&mut MapData, BenchFrame> = wrap
            .ebpf_mut()
            .map_mut(map_names::BENCH_FRAME)
            .context("no BENCH_FRAME map")?
            .try_into()?;
        map.set(0, t, 0)?;
        Ok(())
    }

    /// The director's configuration for `case`: sync on or off, and the new-flow guard's
    /// limit (one flow a second remembered for the guarded case, so that every other
    /// iteration finds the limit reached; none otherwise).
    fn configure(&mut self, case: Case) -> Result<()> {
        let guarded = case == Case::DrMhNewFlowGuarded;
        self.fx
            .maps
            .set_config(&with_sync(default_config(), case.sync()))?;
        self.fx.maps.set_new_flow_limit(u32::from(guarded))
    }

    /// One timed run of `nearest` within a round of `case`: its configuration and frame, then
    /// `case`'s put back. The connection table and the sync ring stay as `case` left them.
    fn nearest_run(&mut self, case: Case, nearest: Case, frame: &[u8], repeat: u32) -> Result<f64> {
        if !nearest.wrapped() || !case.wrapped() {
            bail!(
                "{}: its nearest path must run behind the wrapper",
                case.name()
            );
        }
        let near_frame = Self::frame(nearest);
        let ingress = nearest.arrives().then_some(self.ingress);
        self.configure(nearest)?;
        Self::set_template(&mut self.wrap_lb, &near_frame, nearest.vary_at())?;
        let t = self.wrapped_run(false, ingress, &near_frame, repeat, nearest.verdict());
        self.configure(case)?;
        Self::set_template(&mut self.wrap_lb, frame, case.vary_at())?;
        t
    }

    /// Empties the sync ring as the agent would; returns how many events it held.
    fn drain(&mut self) -> usize {
        self.ring.drain(|_, _| ())
    }

    /// A program that is not ours (a peer's, by `target`) on `frame` (IPv4) behind the wrapper,
    /// with a new source address every iteration when `vary` (as our new-flow cases run): per
    /// round, the bare program behind the wrapper and the peer's cost above it, over `rounds`
    /// alternating rounds of `repeat` iterations after one discarded; measured again as ours are
    /// while the baseline moved ([`steadiest`]). `before_each` runs before each of its runs.
    pub fn measure_peer(
        &mut self,
        target: &ProgramFd,
        frame: &[u8],
        vary: bool,
        rounds: usize,
        repeat: u32,
        mut before_each: impl FnMut() -> Result<()>,
    ) -> Result<PeerMeasurement> {
        let mut wrap = wrapper_of(target)?;
        dispatched(&self.net, &mut wrap, program_names::BENCH, "xdwrappeer")?;
        Self::restart_sources(&mut wrap)?;
        let vary = vary.then_some(SRC_ADDR_OFFSET);
        Self::set_template(&mut wrap, frame, vary)?;
        Self::set_template(&mut self.wrap_bare, frame, vary)?;
        let mut peer = |net: &Netns| -> Result<f64> {
            before_each()?;
            Self::time_wrapper(net, None, &mut wrap, frame, repeat, XDP_TX)
        };
        peer(&self.net)?;
        let (mut m, attempts) = steadiest(
            || {
                let mut m = PeerMeasurement::default();
                for round in 0..rounds {
                    // Alternate which goes first, as in `measure`.
                    let (base, case) = if round % 2 == 0 {
                        let base = self.wrapped_run(true, None, frame, repeat, XDP_TX)?;
                        (base, peer(&self.net)?)
                    } else {
                        let case = peer(&self.net)?;
                        (self.wrapped_run(true, None, frame, repeat, XDP_TX)?, case)
                    };
                    m.base_ns.push(base);
                    m.extra_ns.push(case - base);
                }
                Ok(m)
            },
            |m: &PeerMeasurement| &m.base_ns,
        )?;
        m.attempts = attempts;
        Ok(m)
    }

    /// Measures `case` over `rounds` rounds of `repeat` iterations, alternating with its
    /// baseline, and with its nearest path for an added path ([`Measurement::nearest_ns`]);
    /// again, up to [`ATTEMPTS`] times, while the baseline moved within the rounds (the
    /// steadiest attempt is kept, see [`steadiest`]).
    pub fn measure(&mut self, case: Case, rounds: usize, repeat: u32) -> Result<Measurement> {
        self.measure_with(case, rounds, repeat, true)
    }

    /// As [`measure`](Self::measure), without the nearest path's runs: what a profile samples
    /// and two builds are compared on is the case alone.
    pub fn measure_alone(&mut self, case: Case, rounds: usize, repeat: u32) -> Result<Measurement> {
        self.measure_with(case, rounds, repeat, false)
    }

    fn measure_with(
        &mut self,
        case: Case,
        rounds: usize,
        repeat: u32,
        nearest: bool,
    ) -> Result<Measurement> {
        let (mut m, attempts) = steadiest(
            || self.measure_once(case, rounds, repeat, nearest),
            |m: &Measurement| &m.base_ns,
        )?;
        m.attempts = attempts;
        Ok(m)
    }

    fn measure_once(
        &mut self,
        case: Case,
        rounds: usize,
        repeat: u32,
        with_nearest: bool,
    ) -> Result<Measurement> {
        let frame = Self::frame(case);
        let repeat = repeat.min(case.max_repeat());
        // Only the NAT reply's FIB lookup needs an interface of its own to arrive on.
        let ingress = case.arrives().then_some(self.ingress);
        let mut m = Measurement {
            case,
            case_ns: Vec::new(),
            base_ns: Vec::new(),
            nearest_ns: Vec::new(),
            attempts: 1,
        };
        self.configure(case)?;
        if case.wrapped() {
            Self::set_template(&mut self.wrap_lb, &frame, case.vary_at())?;
            Self::set_template(&mut self.wrap_bare, &frame, case.vary_at())?;
        }
        self.drain();
        if case == Case::DrMhNewFlowSyncRingFull {
            // Fill the ring with new flows nobody reads, as a director without its agent would.
            while self.fx.maps.sync_counters()?.1 == 0 {
                self.wrapped_run(false, ingress, &frame, 50_000, XDP_TX)?;
            }
        }
        if case == Case::DrMhEstablishedMany {
            // The flows' first packets bind them; the rounds time their packets after that.
            Self::restart_sources(&mut self.wrap_lb)?;
            self.wrapped_run(false, ingress, &frame, repeat, XDP_TX)?;
        }
        for round in 0..rounds {
            // Alternate which goes first, so neither always runs on a warmer or colder machine.
            for first in [round % 2 == 0, round % 2 == 1] {
                if case == Case::DrMhEstablishedMany {
                    // Every run over the same flows.
                    Self::restart_sources(&mut self.wrap_bare)?;
                    Self::restart_sources(&mut self.wrap_lb)?;
                }
                if first {
                    let t = if case.wrapped() {
                        self.wrapped_run(true, ingress, &frame, repeat, XDP_TX)?
                    } else {
                        Self::time(
                            &self.net,
                            ingress,
                            &mut self.bare,
                            program_names::TX,
                            &frame,
                            repeat,
                            XDP_TX,
                        )?
                    };
                    m.base_ns.push(t);
                } else {
                    // The nearest path between the baseline and the case: before the case in
                    // one round, after it in the next, as the baseline alternates.
                    let nearest = case.nearest().filter(|_| with_nearest);
                    if let Some(near) = nearest.filter(|_| round % 2 == 0) {
                        m.nearest_ns
                            .push(self.nearest_run(case, near, &frame, repeat)?);
                    }
                    if case == Case::DrMhNewFlowSync {
                        self.drain();
                    }
                    let v = case.verdict();
                    let t = if case.wrapped() {
                        self.wrapped_run(false, ingress, &frame, repeat, v)?
                    } else {
                        Self::time(
                            &self.net,
                            ingress,
                            &mut self.fx.datapath,
                            case.program(),
                            &frame,
                            repeat,
                            v,
                        )?
                    };
                    m.case_ns.push(t);
                    if let Some(near) = nearest.filter(|_| round % 2 == 1) {
                        m.nearest_ns
                            .push(self.nearest_run(case, near, &frame, repeat)?);
                    }
                }
            }
        }
        if case == Case::DrMhNewFlowSync {
            let (_, lost) = self.fx.maps.sync_counters()?;
            if lost > 0 {
                bail!(
                    "{}: the ring overflowed ({lost} events lost): fewer iterations per round",
                    case.name()
                );
            }
        }
        if case == Case::DrMhEstablishedMany {
            // The warm-up binds each flow once; after it nearly every packet must find its flow
            // (a few share a bucket with four others and push each other out).
            let new: u64 = self
                .fx
                .maps
                .counters()?
                .services
                .iter()
                .map(|c| c.conns)
                .sum();
            let timed = u64::from(repeat) * rounds as u64;
            if new > u64::from(repeat) + timed / 50 {
                bail!(
                    "{}: {new} new flows where {repeat} were bound: its flows did not stay \
                     in the connection table",
                    case.name()
                );
            }
        }
        if case == Case::DrMhNewFlowGuarded {
            let unremembered = self
                .fx
                .maps
                .counters()?
                .packets(lb_common::Reason::TxNotRemembered);
            // One remembered a second: at most two in a round (one each side of a second's turn).
            let rounds = rounds as u64;
            if unremembered + 2 * rounds < u64::from(repeat) * rounds {
                bail!(
                    "{}: only {unremembered} flows went unremembered",
                    case.name()
                );
            }
            self.fx.maps.set_new_flow_limit(0)?;
        }
        self.drain();
        self.fx.maps.set_config(&default_config())?;
        self.fx.maps.reset_all_counters()?;
        Ok(m)
    }
}

/// Duration of a closure, for the control-plane figures.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = std::time::Instant::now();
    let r = f();
    (r, start.elapsed())
}

/// Time from a CLI command to the datapath acting on it: the agent writes the maps before it
/// answers, so the datapath acts on the next packet once the command returns. Measured with the
/// real `xdplb` process per change (what an operator's script sees) and with a request on the
/// control socket (the agent's own share), for weight changes that rebuild a Maglev table.
pub struct ControlPlane {
    /// Whole `xdplb real edit` commands, milliseconds.
    pub cli_ms: Vec<f64>,
    /// The same change as one control-socket request, milliseconds.
    pub socket_ms: Vec<f64>,
}

pub fn control_plane(changes: usize) -> Result<ControlPlane> {
    use crate::{names, netns::veth, Agent, Netns};
    use lb_user::control::{request, Request};

    let prefix = names::unique_prefix();
    let director = Netns::new(format!("{prefix}-director"))?;
    let peer = Netns::new(format!("{prefix}-peer"))?;
    veth(&director, "eth0", &peer, "eth0")?;
    director.ip(&["addr", "add", "10.0.0.1/24", "dev", "eth0"])?;
    let agent = Agent::start(&director, "eth0", &["--conn-max", "1024"])?;
    let svc = "10.0.0.100:80";
    agent.cli_ok(&["service", "add", "-t", svc, "-s", "mh"]);
    for n in 11..=13u8 {
        let (rip, mac) = (format!("10.0.0.{n}"), format!("02:ee:00:00:00:{n:02x}"));
        agent.cli_ok(&["real", "add", "-t", svc, "-r", &rip, "--mac", &mac]);
    }
    let mut out = ControlPlane {
        cli_ms: Vec::new(),
        socket_ms: Vec::new(),
    };
    for i in 0..changes {
        let weight = (1 + i % 2).to_string();
        let (_, took) =
            timed(|| agent.cli_ok(&["real", "edit", "-t", svc, "-r", "10.0.0.11", "-w", &weight]));
        out.cli_ms.push(took.as_secs_f64() * 1e3);
    }
    let service = ServiceAddr {
        protocol: Protocol::Tcp,
        vip: VIP.into(),
        port: 80,
    };
    for i in 0..changes {
        let real = RealSpec {
            addr: Some(Ipv4Addr::new(10, 0, 0, 12).into()),
            weight: Some(1 + (i % 2) as u32),
            ..Default::default()
        };
        let (r, took) = timed(|| request(agent.socket(), &Request::EditReal { service, real }));
        r?;
        out.socket_ms.push(took.as_secs_f64() * 1e3);
    }
    Ok(out)
}

/// A counting sink (XDP, drops everything) on each real server's eth0.
pub(crate) fn sinks(reals: &[crate::Host]) -> Result<Vec<lb_user::pktgen::Sink>> {
    reals
        .iter()
        .map(|rs| {
            let index = rs.ns().ifindex("eth0")?;
            rs.ns().run_in(|| lb_user::pktgen::Sink::attach(index))
        })
        .collect()
}

pub(crate) fn mac_of(ns: &crate::Netns) -> Result<[u8; 6]> {
    let json: serde_json::Value = serde_json::from_str(&ns.ip(&["-j", "link", "show", "eth0"])?)?;
    let text = json[0]["address"].as_str().context("no MAC")?;
    Ok(text.parse::<Mac>().map_err(anyhow::Error::msg)?.0)
}

/// One run of the sync benchmark: new flows at a rate into director A, synchronised to B.
#[derive(Clone, Debug)]
pub struct SyncRun {
    /// The rate asked of the generator (None: as fast as it goes).
    pub rate: Option<u64>,
    /// New flows the generator sent, and per second.
    pub sent: u64,
    pub sent_pps: f64,
    /// A's datapath: events written to the ring, and lost because it was full.
    pub events: u64,
    pub lost: u64,
    /// A's agent: flows sent to B, datagrams, UDP payload bytes, datagrams the socket refused.
    pub flows_sent: u64,
    pub datagrams: u64,
    pub bytes: u64,
    pub unsent: u64,
    /// B: flows written into its table, and the sync delay (bound on A -> in B's table), µs.
    pub received: u64,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
}

impl SyncRun {
    /// Bytes on the wire per flow: UDP payload plus IPv4, UDP and Ethernet headers.
    pub fn wire_bytes_per_flow(&self) -> f64 {
        (self.bytes + self.datagrams * (20 + 8 + 14)) as f64 / self.flows_sent.max(1) as f64
    }
}

/// Connection sync under load: two directors with sync (agents from config files), `xdplb
/// pktgen` in the client sending TCP SYNs of new flows to director A at each of `rates` (None:
/// full speed) for `each`; then what B received and how late, from the agents' own counters.
pub fn sync_delay(rates: &[Option<u64>], each: Duration) -> Result<Vec<SyncRun>> {
    use lb_user::pktgen::{self, RunOptions as GenOptions, Traffic};

    use crate::{Agent, ClientAt, HaTopology, Serve};

    let topo = HaTopology::new(2, 3, Serve::Once, ClientAt::Lan)?;
    let _client_port = topo.switch().pass_xdp(topo.client().name())?;
    let agents: Vec<Agent> = (1..=2)
        .map(|i| {
            let config = topo.config(i, "", "mh", &[(1, 1), (2, 1), (3, 1)], None)?;
            Agent::start_with_config(topo.director(i).ns(), &config)
        })
        .collect::<Result<_>>()?;
    let current = |a: &Agent| a.list_config().0["sync"]["current"] == true;
    let start = std::time::Instant::now();
    while !agents.iter().all(current) {
        if start.elapsed() > Duration::from_secs(15) {
            bail!("the directors' tables are not current");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The real servers' kernels never see the SYNs (their sinks drop everything); the agents
    // learned their MACs already.
    let _sinks = sinks(topo.reals())?;
    topo.send_vip_to(1)?;
    let vip = std::net::SocketAddrV4::new(VIP, 80);
    let peer = |a: &Agent| a.list_config().0["sync"].clone();
    let mut runs = Vec::new();
    for (i, rate) in rates.iter().enumerate() {
        for a in &agents {
            a.cli_ok(&["zero"]);
        }
        // Flows never sent before: another source-port range each run.
        let traffic = topo.client().ns().run_in(|| -> Result<Traffic> {
            let mut t = Traffic::for_interface("eth0", vip)?;
            t.src = "10.1.0.0/16".parse().map_err(anyhow::Error::msg)?;
            let base = 2000 + i * 100;
            t.sport = format!("{base}-{}", base + 99)
                .parse()
                .map_err(anyhow::Error::msg)?;
            Ok(t)
        })?;
        let mut opts = GenOptions::duration(each);
        opts.rate = *rate;
        let summary = topo.client().ns().run_in(|| pktgen::run(&traffic, &opts))?;
        // Let the last datagrams arrive.
        std::thread::sleep(Duration::from_millis(1500));
        let (a, b) = (peer(&agents[0]), peer(&agents[1]));
        let (pa, pb) = (&a["peers"][0], &b["peers"][0]);
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        runs.push(SyncRun {
            rate: *rate,
            sent: summary.packets,
            sent_pps: summary.pps,
            events: n(&a["events_written"]),
            lost: n(&a["events_lost"]),
            flows_sent: n(&pa["flows_sent"]),
            datagrams: n(&pa["datagrams_sent"]),
            bytes: n(&pa["bytes_sent"]),
            unsent: n(&pa["datagrams_unsent"]),
            received: n(&pb["flows_received"]),
            p50_us: pb["delay_p50_us"].as_u64(),
            p99_us: pb["delay_p99_us"].as_u64(),
        });
    }
    Ok(runs)
}

/// Two builds of the datapath (their objects, `a` and `b`) loaded side by side, each case's
/// rounds paired (one round of A and one of B, each against its own bare baseline, the order
/// alternating so that neither always runs second), and B - A taken pair by pair: the machine's
/// drift between rounds, which moves a whole run's figures by up to 2x here, is common to both
/// halves of a pair and cancels out. `only`: the cases whose names contain it. A Markdown table.
pub fn compare(a: &[u8], b: &[u8], only: &str, rounds: usize, repeat: u32) -> Result<String> {
    use std::fmt::Write as _;
    let mut a = Bench::with_object(a).context("loading object A (needs root)")?;
    let mut b = Bench::with_object(b).context("loading object B")?;
    let _pinned = pin_to_cpu(BENCH_CPU)?;
    let mut out = format!(
        "{rounds} paired rounds of {repeat} iterations per case, on CPU {BENCH_CPU}.\n\n\
         | case | A above bare (ns) | B above bare (ns) | B - A per pair: median [q1, q3] (ns) |\n\
         |---|---:|---:|---:|\n"
    );
    // The kernel's FIB lookup is no build's: older objects have no program for it.
    let cases: Vec<Case> = Case::all()
        .into_iter()
        .filter(|c| c.name().contains(only) && !c.fib())
        .collect();
    if cases.is_empty() {
        bail!("no case's name contains \"{only}\"");
    }
    for case in cases {
        eprintln!("comparing: {}", case.name());
        let (mut ea, mut eb, mut diff) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let (ma, mb) = if round % 2 == 0 {
                let ma = a.measure_alone(case, 1, repeat)?;
                (ma, b.measure_alone(case, 1, repeat)?)
            } else {
                let mb = b.measure_alone(case, 1, repeat)?;
                (a.measure_alone(case, 1, repeat)?, mb)
            };
            ea.extend(ma.extra_ns());
            eb.extend(mb.extra_ns());
            // The same wrapper and baseline for both: the case's own times compare directly.
            diff.extend(mb.case_ns.iter().zip(&ma.case_ns).map(|(y, x)| y - x));
        }
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} | {:.1} [{:.1}, {:.1}] |",
            case.name(),
            median(&ea),
            median(&eb),
            median(&diff),
            percentile(&diff, 0.25),
            percentile(&diff, 0.75)
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The TCP flags of a case's frame.
    fn flags(frame: &[u8]) -> u8 {
        let l4 = match u16::from_be_bytes([frame[12], frame[13]]) {
            0x86dd => 14 + 40,
            _ => 14 + (frame[14] & 0x0f) as usize * 4,
        };
        frame[l4 + 13]
    }

    /// An established flow's case times what an established connection sends, ACKs (as
    /// Katran's established case does; a SYN of a known flow is a retransmission, with the
    /// flood guard's check besides), and a new flow's case its SYNs.
    #[test]
    fn established_cases_send_acks_new_flows_syns() {
        for case in Case::all() {
            let want = match case {
                Case::NonVipPass => continue,
                _ if case.new_flow() => TCP_SYN,
                _ => TCP_ACK,
            };
            assert_eq!(flags(&Bench::frame(case)), want, "{}", case.name());
        }
    }
}

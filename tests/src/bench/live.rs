//! Live forwarding through a namespace topology: `xdplb pktgen` drives real frames through the
//! director's veth, and the kernel's own per-program statistics (run time and run count, on
//! while this runs) give the datapath's time per packet on them, next to a bare forwarder's.
//! A third director configuration takes a SYN flood many times its connection table, to set
//! its cost per packet beside its cost on established flows.

use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::maps::{Array, MapData};
use lb_common::{default_new_flow_limit, map_names, program_names, Reason};
use lb_user::{
    datapath::{AttachMode, Datapath, LoadOptions, MapWriter as _},
    packet::TCP_ACK,
    pktgen::{self, RunOptions as GenOptions, Traffic},
    state::{Mac, RealSpec, Scheduler, SchedulerSpec, State},
};

use super::{mac_of, service, sinks, VIP};
use crate::DrTopology;

/// The director's connection table in these rounds: small, so that a flood of a round's length
/// is many times what it holds.
pub const LIVE_TABLE: u32 = 16_384;
/// The established rounds' flows (256 sources x 16 ports): they fit the table's share of one
/// CPU many times over, so after the warm-up every packet is a connection-table hit.
const ESTABLISHED_SRC: &str = "10.1.0.0/24";
const ESTABLISHED_PORTS: &str = "10000-10015";
/// The flood's flows: 65,536 sources x 64,512 ports, so no flow comes twice in a round.
const FLOOD_SRC: &str = "10.2.0.0/16";
const FLOOD_PORTS: &str = "1024-65535";

/// What a round ran on the director.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Director {
    /// Two MAC addresses and XDP_TX, to the first real server.
    Bare,
    /// xdplb (`mh`, DR), every packet of a flow it holds.
    Established,
    /// xdplb under a flood of new flows, the new-flow guard at its default for the table.
    Flood,
}

impl Director {
    pub const ALL: [Director; 3] = [Director::Bare, Director::Established, Director::Flood];

    pub fn name(self) -> &'static str {
        match self {
            Director::Bare => "bare XDP_TX forwarder",
            Director::Established => "xdplb, established flows",
            Director::Flood => "xdplb, SYN flood (every packet a new flow)",
        }
    }
}

/// One round: frames delivered to the real servers and sent per second, and the director
/// program's own time per packet from the kernel's statistics.
#[derive(Clone, Copy, Debug)]
pub struct Round {
    pub director: Director,
    pub delivered_pps: f64,
    pub sent_pps: f64,
    pub ns_per_packet: f64,
    /// Packets the program ran on.
    pub packets: u64,
}

/// Every round, and what the flood left: flows forwarded without being remembered (the guard),
/// and the guard's limit.
pub struct Live {
    pub rounds: Vec<Round>,
    pub unremembered: u64,
    pub guard_limit: u32,
}

impl Live {
    /// The rounds of one director configuration, each figure picked by `f`.
    pub fn of(&self, d: Director, f: impl Fn(&Round) -> f64) -> Vec<f64> {
        self.rounds
            .iter()
            .filter(|r| r.director == d)
            .map(f)
            .collect()
    }
}

/// Run time and run count of a program so far (statistics on).
fn run_stats(datapath: &mut Datapath, name: &str) -> Result<(Duration, u64)> {
    let info = datapath.program(name)?.info()?;
    Ok((info.run_time(), info.run_count()))
}

fn traffic(topo: &DrTopology, src: &str, sport: &str) -> Result<Traffic> {
    topo.client().ns().run_in(|| -> Result<Traffic> {
        let mut t = Traffic::for_interface("eth0", std::net::SocketAddrV4::new(VIP, 80))?;
        t.src = src.parse().map_err(anyhow::Error::msg)?;
        t.sport = sport.parse().map_err(anyhow::Error::msg)?;
        Ok(t)
    })
}

/// `rounds` rounds of `each` per director configuration, interleaved; the new-flow guard at
/// `guard_limit` flows a second per CPU (None: its default for the table).
pub fn live(rounds: usize, each: Duration, guard_limit: Option<u32>) -> Result<Live> {
    let topo = DrTopology::new(3)?;
    // The generator's XDP_TX frames enter the switch through the client's port.
    let _client_port = topo.switch().pass_xdp(topo.client().name())?;
    let director = topo.director().ns();
    let dir_ifindex = director.ifindex("eth0")?;
    let dir_mac = mac_of(director)?;
    let real_macs: Vec<[u8; 6]> = topo
        .reals()
        .iter()
        .map(|r| mac_of(r.ns()))
        .collect::<Result<_>>()?;
    // The real servers never send (their sinks drop everything), and the generator's frames are
    // not learned from either: without static entries the bridge would flood every frame to
    // every port, and every sink would count it.
    for host in topo.reals().iter().chain([topo.director(), topo.client()]) {
        let mac = Mac(mac_of(host.ns())?).to_string();
        let switch = topo.switch().ns().name();
        let args = [
            "-n",
            switch,
            "fdb",
            "replace",
            &mac,
            "dev",
            host.name(),
            "master",
            "static",
        ];
        crate::netns::run(std::process::Command::new("bridge").args(args))?;
    }

    // xdplb, configured as the agent would (real servers' MACs given: the sinks drop ARP).
    let mut lb = Datapath::load_lb(LoadOptions::flows(LIVE_TABLE))?;
    let mut maps = lb.maps()?;
    maps.set_config(&crate::fixture::default_config_for(dir_mac))?;
    let svc = service(80);
    let mh = SchedulerSpec {
        scheduler: Some(Scheduler::Mh),
        ..Default::default()
    };
    let mut state = State::default().add_service(svc, &mh)?;
    for (rs, mac) in topo.reals().iter().zip(&real_macs) {
        let spec = RealSpec {
            addr: Some(rs.addr().into()),
            mac: Some(Mac(*mac)),
            ..Default::default()
        };
        state = state.add_real(svc, &spec)?;
    }
    lb_user::state::apply(&mut maps, &State::default(), &state)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let guard_limit = guard_limit.unwrap_or_else(|| default_new_flow_limit(LIVE_TABLE, cpus));

    // The bare forwarder, to the first real server.
    let mut bare = Datapath::load(program_names::FWD, LoadOptions::flows(1))?;
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&real_macs[0]);
    macs[6..].copy_from_slice(&dir_mac);
    let mut fwd: Array<&mut MapData, [u8; 12]> = bare
        .ebpf_mut()
        .map_mut(map_names::BENCH_FWD)
        .context("no BENCH_FWD map")?
        .try_into()?;
    fwd.set(0, macs, 0)?;

    let sinks = sinks(topo.reals())?;
    // Established flows send what open connections do, ACKs; the flood, SYNs.
    let established = Traffic {
        tcp_flags: TCP_ACK,
        ..traffic(&topo, ESTABLISHED_SRC, ESTABLISHED_PORTS)?
    };
    let flood = traffic(&topo, FLOOD_SRC, FLOOD_PORTS)?;
    let send = |t: &Traffic, d: Duration| {
        topo.client()
            .ns()
            .run_in(|| pktgen::run(t, &GenOptions::duration(d)))
    };

    // The kernel counts run time only while someone holds this.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("cannot turn on the kernel's BPF run-time statistics")?;
    // Warm-up: the established flows enter the table with the guard off, as flows that came
    // before a flood would have.
    maps.set_new_flow_limit(0)?;
    let link = director
        .run_in(|| lb.attach(dir_ifindex, AttachMode::Native))?
        .0;
    send(&established, Duration::from_millis(500))?;
    lb.program(program_names::LB)?.detach(link)?;
    maps.set_new_flow_limit(guard_limit)?;

    let mut out = Live {
        rounds: Vec::new(),
        unremembered: 0,
        guard_limit,
    };
    for round in 0..rounds * Director::ALL.len() {
        let which = Director::ALL[round % Director::ALL.len()];
        let (datapath, name, frames) = match which {
            Director::Bare => (&mut bare, program_names::FWD, &established),
            Director::Established => (&mut lb, program_names::LB, &established),
            Director::Flood => (&mut lb, program_names::LB, &flood),
        };
        let link = director
            .run_in(|| datapath.attach_program(name, dir_ifindex, AttachMode::Native))?
            .0;
        let before: u64 = sinks.iter().map(|s| s.count().0).sum();
        let (time0, count0) = run_stats(datapath, name)?;
        let summary = send(frames, each)?;
        std::thread::sleep(Duration::from_millis(200));
        let (time1, count1) = run_stats(datapath, name)?;
        let after: u64 = sinks.iter().map(|s| s.count().0).sum();
        datapath.program(name)?.detach(link)?;
        let packets = count1 - count0;
        out.rounds.push(Round {
            director: which,
            delivered_pps: (after - before) as f64 / summary.seconds,
            sent_pps: summary.pps,
            ns_per_packet: (time1 - time0).as_nanos() as f64 / packets.max(1) as f64,
            packets,
        });
    }
    out.unremembered = maps.counters()?.packets(Reason::TxNotRemembered);
    Ok(out)
}

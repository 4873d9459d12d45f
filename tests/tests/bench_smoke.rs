//! A seconds-long run of every benchmark case, only to keep the benchmarks working (the figures
//! come from `cargo xtask bench`): each case runs, its program does what the case says, and its
//! times are positive.

use lb_common::program_names;
use lb_tests::bench::{
    compare, control_plane,
    live::{live, Director},
    pin_to_cpu,
    profile::profile,
    scale::{scale, Size},
    sync_delay, Bench, Case, ATTEMPTS, BENCH_CPU,
};
use lb_tests::require_root;
use lb_user::{
    datapath::{Datapath, LoadOptions},
    packet::{FrameSpec, TCP_SYN},
};

#[test]
fn every_datapath_case_runs() {
    if !require_root() {
        return;
    }
    let mut bench = Bench::new().expect("load the benchmark programs");
    let pinned = pin_to_cpu(BENCH_CPU).expect("pin to one CPU");
    // The measurements run where the report says they do, and so do the threads they start.
    let cpu = std::thread::scope(|s| s.spawn(|| unsafe { libc::sched_getcpu() }).join());
    assert_eq!(cpu.unwrap(), BENCH_CPU as i32);
    for case in Case::all() {
        let m = bench
            .measure(case, 2, 1000)
            .unwrap_or_else(|e| panic!("{}: {e:#}", case.name()));
        assert_eq!(m.case_ns.len(), 2);
        assert!((1..=ATTEMPTS).contains(&m.attempts), "{m:?}");
        assert!(
            m.case_ns.iter().chain(&m.base_ns).all(|t| *t > 0.0),
            "{m:?}"
        );
        // An added path's nearest path runs in each of its rounds, with its own verdict.
        let nearest_rounds = if case.nearest().is_some() { 2 } else { 0 };
        assert_eq!(m.nearest_ns.len(), nearest_rounds, "{m:?}");
        assert!(m.nearest_ns.iter().all(|t| *t > 0.0), "{m:?}");
    }
    let mut sampled = |case: Case| {
        profile(&mut bench, case, BENCH_CPU, &std::env::temp_dir())
            .unwrap_or_else(|e| panic!("profile {}: {e:#}", case.name()))
    };
    // perf samples the benchmark's CPU: the director's JITed program is among what it finds.
    let p = sampled(Case::DrMhNewFlow);
    assert!(
        p.symbols.iter().any(|s| s.symbol == "xdplb (JITed BPF)"),
        "{p:?}"
    );
    // Its own samples fall on lines of the datapath's sources (by the kernel's JIT line info).
    let sources: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf/src"))
            .expect("lb-ebpf's sources")
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
    assert!(p.program_samples() > 0, "{p:?}");
    assert!(
        p.lines
            .iter()
            .any(|l| sources.iter().any(|f| l.line.starts_with(&format!("{f}:")))),
        "no line of lb-ebpf among {:?}",
        p.lines
    );
    // A case whose work is in the programs the director tail-calls (the IPv6 pipeline, the
    // IPv6 NAT program): their samples are split by line too. Counted by program: the lines
    // that stand out in a short run can all be code the programs share (a table's lookup).
    let p6 = sampled(Case::Nat6Request);
    let samples = |name: &str| {
        p6.by_program
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, count)| *count)
    };
    assert!(
        samples(program_names::IPV6) > 0 && samples(program_names::NAT6) > 0,
        "no samples of the IPv6 programs: {:?}",
        p6.by_program
    );
    // A program that is not the bench's (how Katran's new flows are timed): here a bare XDP_TX
    // loaded on its own, behind the wrapper, a new source every iteration.
    let mut other = Datapath::load(program_names::TX, LoadOptions::flows(1)).unwrap();
    let fd = other.program(program_names::TX).unwrap().fd().unwrap();
    let syn = FrameSpec {
        tcp_flags: TCP_SYN,
        ..Default::default()
    }
    .build();
    for vary in [true, false] {
        let mut runs = 0;
        let m = bench
            .measure_peer(fd, &syn, vary, 2, 1000, || {
                runs += 1;
                Ok(())
            })
            .expect("a peer's program behind the wrapper");
        assert_eq!((m.extra_ns.len(), m.base_ns.len()), (2, 2));
        assert!((1..=ATTEMPTS).contains(&m.attempts), "{m:?}");
        assert_eq!(
            runs,
            1 + 2 * m.attempts,
            "before each of its runs, the discarded one too"
        );
    }
    drop(pinned);
}

/// The smoke's new-flow guard, flows a second per CPU.
const SMOKE_GUARD: u32 = 64;

#[test]
fn live_forwarding_and_control_plane_run() {
    if !require_root() {
        return;
    }
    // A guard far below the default (2048 flows a second per CPU): a flood of 300 ms outruns it
    // however slowly a loaded machine generates (CI once sent too few to reach the default).
    let lv =
        live(1, std::time::Duration::from_millis(300), Some(SMOKE_GUARD)).expect("live forwarding");
    for d in Director::ALL {
        let r = lv.of(d, |r| r.delivered_pps)[0];
        assert!(r > 0.0, "{}: nothing delivered", d.name());
        // The kernel's statistics counted the director's program on the frames it forwarded.
        let (packets, ns) = (
            lv.of(d, |r| r.packets as f64)[0],
            lv.of(d, |r| r.ns_per_packet)[0],
        );
        assert!(
            packets > 0.0 && ns > 0.0,
            "{}: no run-time statistics",
            d.name()
        );
    }
    // The flood outran the guard: flows were forwarded without being remembered.
    assert!(lv.unremembered > 0, "the new-flow guard never engaged");
    let c = control_plane(3).expect("control plane");
    assert_eq!((c.cli_ms.len(), c.socket_ms.len()), (3, 3));
}

#[test]
fn the_control_plane_at_scale_runs() {
    if !require_root() {
        return;
    }
    // Beyond the default room (256 services): the file sets services_max and reals_max.
    let size = Size {
        services: 300,
        per_service: 3,
    };
    let s = scale(size, 2).expect("control plane at scale");
    // The maps made while an agent started are counted (other tests of this file make maps at
    // the same time, so the two figures are not compared here; the bench runs alone).
    assert!(s.maps_bytes > 0 && s.maps_empty_bytes > 0, "{s:?}");
    assert!(s.rss_kib > 0 && s.start_ms > 0.0, "{s:?}");
    assert_eq!(
        (s.reload_ms.len(), s.cli_ms.len(), s.socket_ms.len()),
        (2, 2, 2)
    );
}

#[test]
fn sync_delay_runs() {
    if !require_root() {
        return;
    }
    let runs =
        sync_delay(&[Some(2000)], std::time::Duration::from_millis(500)).expect("sync delay");
    let r = &runs[0];
    assert!(r.sent > 0 && r.events > 0, "{r:?}");
    assert!(
        r.received > 0 && r.p50_us.is_some(),
        "nothing arrived at B: {r:?}"
    );
}

/// `cargo xtask bench --compare`: two builds' objects side by side (here the same one twice);
/// a name no case has is an error, not an empty table.
#[test]
fn comparing_two_builds_runs() {
    if !require_root() {
        return;
    }
    let object = lb_user::datapath::OBJECT;
    let table = compare(object, object, "non-VIP", 2, 1000).expect("compare two builds");
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| non-VIP"))
        .collect();
    assert_eq!(rows.len(), 1, "{table}");
    let err = compare(object, object, "no such case", 2, 1000).unwrap_err();
    assert!(format!("{err}").contains("no such case"), "{err}");
}

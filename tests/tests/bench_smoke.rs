//! A seconds-long run of every benchmark case, only to keep the benchmarks working (the figures
//! come from `cargo xtask bench`): each case runs, its program does what the case says, and its
//! times are positive.

use lb_tests::bench::{control_plane, sync_delay, throughput, Bench, Case};
use lb_tests::require_root;

#[test]
fn every_datapath_case_runs() {
    if !require_root() {
        return;
    }
    let mut bench = Bench::new().expect("load the benchmark programs");
    for case in Case::all() {
        let m = bench
            .measure(case, 2, 1000)
            .unwrap_or_else(|e| panic!("{}: {e:#}", case.name()));
        assert_eq!(m.case_ns.len(), 2);
        assert!(
            m.case_ns.iter().chain(&m.base_ns).all(|t| *t > 0.0),
            "{m:?}"
        );
    }
}

#[test]
fn throughput_and_control_plane_run() {
    if !require_root() {
        return;
    }
    let t = throughput(1, std::time::Duration::from_millis(300)).expect("throughput");
    assert!(
        t.xdplb_pps[0] > 0.0 && t.bare_pps[0] > 0.0,
        "nothing delivered"
    );
    let c = control_plane(3).expect("control plane");
    assert_eq!((c.cli_ms.len(), c.socket_ms.len()), (3, 3));
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

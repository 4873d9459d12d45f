//! A seconds-long run of every benchmark case, only to keep the benchmarks working (the figures
//! come from `cargo xtask bench`): each case runs, its program does what the case says, and its
//! times are positive.

use lb_tests::bench::{Bench, Case};
use lb_tests::require_root;

#[test]
fn every_datapath_case_runs() {
    if !require_root() {
        return;
    }
    let mut bench = Bench::new().expect("load the benchmark programs");
    for case in Case::ALL {
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

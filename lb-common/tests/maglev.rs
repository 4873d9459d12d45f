//! Maglev (`mh`) lookup-table properties, measured and asserted: balance, weights, disruption
//! when a real server goes or comes back, and determinism (any input order, a pinned known
//! answer). The figures themselves are printed by `examples/maglev_figures.rs`
//! (docs/BENCHMARKS.md); these tests only check the bounds, and time nothing.

mod common;

use common::servers;
use lb_common::{
    addr_from_v4,
    maglev::{build, Backend},
    rng::XorShift64,
    sched::{MH_DEFAULT_SIZE, MH_SIZES, NO_REAL},
};

const M: u32 = MH_DEFAULT_SIZE;

/// Slots held by each of `backends`, in their order; panics on a slot nobody should hold.
fn counts(table: &[u32], backends: &[Backend]) -> Vec<u32> {
    let mut c = vec![0u32; backends.len()];
    for &s in table {
        let i = backends
            .iter()
            .position(|b| b.id == s)
            .unwrap_or_else(|| panic!("slot holds {s:#x}, not a member"));
        c[i] += 1;
    }
    c
}

/// Fraction of slots whose real server differs between two tables of the same size.
fn changed(a: &[u32], b: &[u32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
}

/// `count` indices spread evenly over 0..n (first, last and in between).
fn spread(n: usize, count: usize) -> Vec<usize> {
    (0..count).map(|k| k * (n - 1) / (count - 1)).collect()
}

/// FNV-1a (64-bit) over the little-endian bytes of the table: a platform-independent fingerprint.
fn fingerprint(table: &[u32]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &s in table {
        for byte in s.to_le_bytes() {
            h ^= byte as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[test]
fn fixture_addresses_and_ids_are_distinct_and_unrelated() {
    let s = servers(1000);
    let mut addrs: Vec<_> = s.iter().map(|b| b.addr).collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), 1000);
    let mut ids: Vec<_> = s.iter().map(|b| b.id).collect();
    assert!(
        ids.windows(2).any(|w| w[0] > w[1]),
        "ids follow the address order"
    );
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1000);
}

#[test]
fn equal_weights_are_balanced_within_one_percent() {
    for n in [3usize, 10, 100, 1000] {
        let s = servers(n);
        let t = build(&s, M);
        assert_eq!(t.len(), M as usize);
        assert!(!t.contains(&NO_REAL), "N = {n}: empty slot");
        let c = counts(&t, &s);
        let mean = M as f64 / n as f64;
        let max = *c.iter().max().unwrap() as f64 / mean;
        let min = *c.iter().min().unwrap() as f64 / mean;
        println!("N = {n}: max/mean {max:.5}, min/mean {min:.5}");
        // The issue asserts N in {3, 10, 100}; N = 1000 (65.5 slots each) is reported only.
        if n <= 100 {
            assert!(max <= 1.01, "N = {n}: max/mean = {max}");
        }
    }
}

#[test]
fn weights_1_2_3_4_get_10_20_30_40_percent() {
    let mut s = servers(4);
    for (i, b) in s.iter_mut().enumerate() {
        b.weight = i as u32 + 1;
    }
    for m in MH_SIZES {
        let t = build(&s, m);
        let c = counts(&t, &s);
        for (i, &n) in c.iter().enumerate() {
            let share = 100.0 * n as f64 / m as f64;
            let want = 10.0 * (i + 1) as f64;
            assert!(
                (share - want).abs() <= 0.5,
                "M = {m}, weight {}: {share:.3} % of the slots, want {want} % ± 0.5",
                i + 1
            );
        }
    }
}

/// Removes each of `victims` from `n` servers in turn: the table changes in at most 1.5/N of its
/// slots (the worst victim is asserted), and adding the server back restores the original table
/// bit for bit, wherever it is put back in the list.
fn check_removals(n: usize, victims: &[usize]) {
    let s = servers(n);
    let full = build(&s, M);
    let mut worst = (0.0f64, 0usize);
    for &v in victims {
        let mut fewer = s.clone();
        let gone = fewer.remove(v);
        let t = build(&fewer, M);
        // The removed server's slots must all move; nobody else's share changes by more than one.
        assert!(!t.contains(&gone.id));
        let moved = changed(&full, &t);
        assert!(moved >= 1.0 / n as f64 - 1.0 / M as f64);
        if moved > worst.0 {
            worst = (moved, v);
        }
        // Back at the end of the list rather than where it was: the set is what counts.
        fewer.push(gone);
        assert!(
            build(&fewer, M) == full,
            "N = {n}: re-adding server {v} did not restore the table"
        );
    }
    let (moved, v) = worst;
    println!(
        "N = {n}: worst removal (server {v}) changes {:.4} % of the slots = {:.3}/N",
        100.0 * moved,
        moved * n as f64
    );
    assert!(
        moved <= 1.5 / n as f64,
        "N = {n}: removing server {v} changes {moved:.5} of the slots = {:.3}/N > 1.5/N",
        moved * n as f64
    );
}

#[test]
fn removing_one_of_10_moves_at_most_1_5_over_n() {
    check_removals(10, &(0..10).collect::<Vec<_>>());
}

#[test]
fn removing_one_of_100_moves_at_most_1_5_over_n() {
    check_removals(100, &spread(100, 10));
}

#[test]
fn any_input_order_gives_the_same_table() {
    let mut rng = XorShift64::new(42);
    for n in [3usize, 10, 100] {
        let mut s = servers(n);
        // Unequal weights too, so ties in the apportionment are not the only case.
        for (i, b) in s.iter_mut().enumerate() {
            b.weight = 1 + (i as u32 * 7) % 5;
        }
        let t = build(&s, M);
        let mut r = s.clone();
        r.reverse();
        assert!(build(&r, M) == t, "N = {n}: reversed order differs");
        for _ in 0..3 {
            rng.shuffle(&mut s);
            assert!(build(&s, M) == t, "N = {n}: shuffled order differs");
        }
    }
}

/// Known answer: if this changes, the algorithm or a hash changed (or differs on this platform),
/// and every director running the old one would send clients elsewhere.
/// (The values were also reproduced by a separate Python transcription of the algorithm and
/// MurmurHash3, so they do not merely echo this build.)
#[test]
fn known_answer_for_three_servers_m_251() {
    let s = [
        Backend {
            addr: addr_from_v4([10, 1, 0, 1]),
            weight: 1,
            id: 7,
        },
        Backend {
            addr: addr_from_v4([10, 1, 0, 2]),
            weight: 2,
            id: 3,
        },
        Backend {
            addr: addr_from_v4([10, 1, 0, 3]),
            weight: 3,
            id: 5,
        },
    ];
    let t = build(&s, 251);
    println!(
        "first 16 {:?}, fingerprint {:#018x}",
        &t[..16],
        fingerprint(&t)
    );
    assert_eq!(counts(&t, &s), [42, 84, 125]);
    assert_eq!(&t[..16], &KNOWN_FIRST_16);
    assert_eq!(fingerprint(&t), KNOWN_FINGERPRINT);
}

const KNOWN_FIRST_16: [u32; 16] = [7, 3, 5, 7, 3, 5, 5, 3, 7, 5, 3, 5, 5, 5, 3, 3];
const KNOWN_FINGERPRINT: u64 = 0x73a7_15eb_4bb2_0290;

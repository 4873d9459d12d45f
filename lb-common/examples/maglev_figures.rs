//! Prints the measured properties of the Maglev (`mh`) lookup table as Markdown, for
//! docs/BENCHMARKS.md:
//!
//!     cargo run --release -p lb-common --features alloc --example maglev_figures
//!
//! Balance, disruption when one real server is removed (against plain modulo hashing and plain
//! Maglev's round-robin population, for contrast), weighted shares and build time. The bounds are
//! asserted by tests/maglev.rs; this only measures.

use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;
use common::servers;

use lb_common::{
    addr_from_v4,
    hash::{hash_addr, hash_addr_seeded},
    maglev::{build, Backend},
    sched::{MH_DEFAULT_SIZE, NO_REAL},
};

const M: u32 = MH_DEFAULT_SIZE;
const SIZES: [usize; 4] = [3, 10, 100, 1000];
/// Removals measured per N: every server when there are at most this many, else this many
/// spread evenly over the list.
const REMOVALS: usize = 10;
const BUILD_RUNS: usize = 5;
/// Client addresses hashed for the modulo-hashing contrast.
const CLIENTS: u32 = 65536;

fn victims(n: usize) -> Vec<usize> {
    if n <= REMOVALS {
        (0..n).collect()
    } else {
        (0..REMOVALS)
            .map(|k| k * (n - 1) / (REMOVALS - 1))
            .collect()
    }
}

fn changed(a: &[u32], b: &[u32]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
}

/// Plain Maglev (the paper's population: servers take turns, each claiming its next preferred
/// free slot) with the same permutations as [`build`], for equal weights only.
fn plain_maglev(backends: &[Backend], m: u32) -> Vec<u32> {
    let mut sorted = backends.to_vec();
    sorted.sort_by_key(|b| b.addr);
    let perm: Vec<(u64, u64)> = sorted
        .iter()
        .map(|b| {
            let offset = hash_addr_seeded(&b.addr, 0x6d61_676c) % m;
            let skip = hash_addr_seeded(&b.addr, 0x736b_6970) % (m - 1) + 1;
            (offset as u64, skip as u64)
        })
        .collect();
    let mut next = vec![0u64; sorted.len()];
    let mut table = vec![NO_REAL; m as usize];
    let mut filled = 0;
    'fill: loop {
        for (i, b) in sorted.iter().enumerate() {
            let (offset, skip) = perm[i];
            loop {
                let c = ((offset + next[i] * skip) % m as u64) as usize;
                next[i] += 1;
                if table[c] == NO_REAL {
                    table[c] = b.id;
                    break;
                }
            }
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    table
}

/// Plain modulo hashing: a client goes to server `hash % N` of the list.
fn modulo(backends: &[Backend], hashes: &[u32]) -> Vec<u32> {
    hashes
        .iter()
        .map(|&h| backends[h as usize % backends.len()].id)
        .collect()
}

/// Worst and mean fraction of entries changed over the removals, for a table builder.
fn disruption(s: &[Backend], table: impl Fn(&[Backend]) -> Vec<u32>) -> (f64, f64, bool) {
    let full = table(s);
    let mut worst = 0.0f64;
    let mut sum = 0.0;
    let mut restored = true;
    let v = victims(s.len());
    for &i in &v {
        let mut fewer = s.to_vec();
        let gone = fewer.remove(i);
        let moved = changed(&full, &table(&fewer));
        worst = worst.max(moved);
        sum += moved;
        fewer.push(gone);
        restored &= table(&fewer) == full;
    }
    (worst, sum / v.len() as f64, restored)
}

fn median_build_time(s: &[Backend]) -> Duration {
    let mut t: Vec<Duration> = (0..BUILD_RUNS)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(build(std::hint::black_box(s), M));
            start.elapsed()
        })
        .collect();
    t.sort();
    t[BUILD_RUNS / 2]
}

fn main() {
    if cfg!(debug_assertions) {
        eprintln!("warning: debug build; run with --release for meaningful build times");
    }
    let hashes: Vec<u32> = (0..CLIENTS)
        .map(|i| hash_addr(&addr_from_v4([100, 64, (i >> 8) as u8, i as u8])))
        .collect();

    println!("Table size M = {M}; N equal-weight real servers at 10.1.x.y.");
    println!();
    println!("### Balance (slots per server / mean)");
    println!();
    println!("| N | mean slots | max/mean | min/mean |");
    println!("|---:|---:|---:|---:|");
    for n in SIZES {
        let s = servers(n);
        let t = build(&s, M);
        let mut count = std::collections::HashMap::<u32, u32>::new();
        for &id in &t {
            *count.entry(id).or_default() += 1;
        }
        assert_eq!(count.len(), n, "a server without slots, or an empty slot");
        let mean = M as f64 / n as f64;
        let max = *count.values().max().unwrap() as f64 / mean;
        let min = *count.values().min().unwrap() as f64 / mean;
        println!("| {n} | {mean:.1} | {max:.4} | {min:.4} |");
    }

    println!();
    println!("### Disruption when one real server is removed");
    println!();
    println!(
        "Fraction of the table (for modulo hashing: of {CLIENTS} client addresses) that changes \
         real server, worst and mean over {REMOVALS} removals spread over the list (every \
         server for N <= {REMOVALS}), and as a multiple of 1/N (1/N is the minimum: the removed \
         server's own share). \"Restored\": adding the server back gives the original `mh` table \
         bit for bit. Plain Maglev: the paper's population (servers take turns claiming their \
         next preferred free slot) with the same permutations, for contrast; modulo: client \
         to server `hash % N` of the list."
    );
    println!();
    println!(
        "| N | `mh` worst | `mh` mean | restored | plain Maglev worst | plain Maglev mean | \
         modulo worst | modulo mean |"
    );
    println!("|---:|---:|---:|:---:|---:|---:|---:|---:|");
    let cell = |f: f64, n: usize| format!("{:.3} % = {:.2}/N", 100.0 * f, f * n as f64);
    for n in SIZES {
        let s = servers(n);
        let (w, mean, restored) = disruption(&s, |b| build(b, M));
        let (pw, pmean, _) = disruption(&s, |b| plain_maglev(b, M));
        let (mw, mmean, _) = disruption(&s, |b| modulo(b, &hashes));
        println!(
            "| {n} | {} | {} | {} | {} | {} | {} | {} |",
            cell(w, n),
            cell(mean, n),
            if restored { "yes" } else { "**no**" },
            cell(pw, n),
            cell(pmean, n),
            cell(mw, n),
            cell(mmean, n),
        );
    }

    println!();
    println!("### Weights 1:2:3:4");
    println!();
    println!("| weight | slots | share | wanted |");
    println!("|---:|---:|---:|---:|");
    let mut s = servers(4);
    for (i, b) in s.iter_mut().enumerate() {
        b.weight = i as u32 + 1;
    }
    let t = build(&s, M);
    for b in &s {
        let n = t.iter().filter(|&&x| x == b.id).count();
        println!(
            "| {} | {n} | {:.3} % | {} % |",
            b.weight,
            100.0 * n as f64 / M as f64,
            10 * b.weight
        );
    }

    println!();
    println!("### Table build time (median of {BUILD_RUNS}, one thread)");
    println!();
    println!("| N | build time |");
    println!("|---:|---:|");
    for n in [10, 100, 1000] {
        let d = median_build_time(&servers(n));
        println!("| {n} | {:.2} ms |", d.as_secs_f64() * 1e3);
    }
}

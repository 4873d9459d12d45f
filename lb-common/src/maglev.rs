//! Maglev consistent hashing (Eisenbud et al., NSDI 2016) with weights. Each real server has its
//! own permutation of the table (offset and skip from hashes of its address) and walks it,
//! claiming slots until it holds its share: exactly its largest-remainder share of w/sum(w) of
//! the table. Where two servers want the same slot, the one that reached it earlier in its own
//! permutation keeps it and the other walks on (deferred acceptance: the result is the same
//! whatever order the servers walk in). Compared with plain Maglev's round-robin claims this moves
//! fewer slots when a server comes or goes: with M = 65537 and 100 servers, removing one moves
//! about 1.3/N of the slots instead of 1.6/N (docs/BENCHMARKS.md).
//!
//! The table depends only on the set of (address, weight) pairs, not on their order or on any
//! per-process seed: every director builds the same table, and adding back a removed server
//! restores the previous table exactly.

use alloc::{collections::VecDeque, vec, vec::Vec};

use crate::{hash::hash_addr_seeded, sched::NO_REAL, table::apportion, table::Member, Addr};

const SEED_OFFSET: u32 = 0x6d61_676c; // "magl"
const SEED_SKIP: u32 = 0x736b_6970; // "skip"

/// A real server as Maglev sees it: its address (which fixes its permutation), weight and id
/// (the value stored in its slots).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    pub addr: Addr,
    pub weight: u32,
    pub id: u32,
}

/// Builds the lookup table of size `m` (a prime) for `backends`.
pub fn build(backends: &[Backend], m: u32) -> Vec<u32> {
    // Canonical order: ties between equal ranks go to the lower address, whatever the input order.
    let mut sorted: Vec<Backend> = backends.to_vec();
    sorted.sort_by_key(|b| b.addr);
    let members: Vec<Member> = sorted
        .iter()
        .map(|b| Member {
            id: b.id,
            weight: b.weight,
        })
        .collect();
    let mut need = apportion(&members, m);
    let perm: Vec<(u64, u64)> = sorted
        .iter()
        .map(|b| {
            let offset = hash_addr_seeded(&b.addr, SEED_OFFSET) % m;
            let skip = hash_addr_seeded(&b.addr, SEED_SKIP) % (m - 1) + 1;
            (offset as u64, skip as u64)
        })
        .collect();
    // How far each server has walked its permutation; per slot, who holds it and at which step.
    let mut next = vec![0u64; sorted.len()];
    let mut holder = vec![usize::MAX; m as usize];
    let mut held_at = vec![u64::MAX; m as usize];
    let mut walking: VecDeque<usize> = (0..sorted.len()).filter(|&i| need[i] > 0).collect();
    while let Some(i) = walking.pop_front() {
        let (offset, skip) = perm[i];
        while need[i] > 0 {
            let step = next[i];
            next[i] += 1;
            let c = ((offset + step * skip) % m as u64) as usize;
            let h = holder[c];
            if h != usize::MAX && (held_at[c], h) <= (step, i) {
                continue;
            }
            if h != usize::MAX {
                // Displaced: the holder walks on for one more slot.
                need[h] += 1;
                if need[h] == 1 {
                    walking.push_back(h);
                }
            }
            holder[c] = i;
            held_at[c] = step;
            need[i] -= 1;
        }
    }
    holder
        .iter()
        .map(|&h| {
            if h == usize::MAX {
                NO_REAL
            } else {
                sorted[h].id
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{addr_from_v4, sched::MH_DEFAULT_SIZE};

    const M: u32 = MH_DEFAULT_SIZE;

    fn backends(weights: &[u32]) -> Vec<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Backend {
                addr: addr_from_v4([10, 1, (i >> 8) as u8, i as u8]),
                weight: w,
                id: i as u32,
            })
            .collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<u32> {
        let mut c = vec![0u32; n];
        for &s in table {
            c[s as usize] += 1;
        }
        c
    }

    #[test]
    fn every_slot_is_filled_with_exact_shares() {
        let t = build(&backends(&[1, 2, 3, 4]), M);
        let c = counts(&t, 4);
        assert_eq!(c.iter().sum::<u32>(), M);
        for (i, n) in c.iter().enumerate() {
            let share = *n as f64 / M as f64;
            let want = (i + 1) as f64 / 10.0;
            assert!((share - want).abs() < 0.005, "weight {}: {share}", i + 1);
        }
    }

    #[test]
    fn order_does_not_matter() {
        let mut b = backends(&[1, 5, 2, 7]);
        let t = build(&b, 4093);
        b.reverse();
        assert_eq!(build(&b, 4093), t);
    }

    #[test]
    fn zero_weight_and_empty() {
        let t = build(&backends(&[0, 1]), 251);
        assert!(t.iter().all(|&s| s == 1));
        assert!(build(&backends(&[0, 0]), 251).iter().all(|&s| s == NO_REAL));
        assert!(build(&[], 251).iter().all(|&s| s == NO_REAL));
    }
}

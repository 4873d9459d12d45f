//! Building a service's source-hashing lookup table from its real servers and weights.
//!
//! Two properties matter to users:
//! - weights are honoured exactly: a real server with weight w gets w/sum(w) of the slots, rounded
//!   by largest remainder (so every share is the exact share rounded down or up), weight 0 gets none;
//! - a change moves only the slots that must move: slots stay with their real server as long as it
//!   keeps its share, so deleting a server or changing a weight leaves every other client where it
//!   was (without a connection table, a moved client's connection would be reset).

use alloc::vec;
use alloc::vec::Vec;

use crate::sched::NO_REAL;

/// A real server as the table builder sees it: its id (the value stored in the slots) and weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u32,
    pub weight: u32,
}

/// Slots each member gets out of `size`, by largest remainder; ties go to the earlier member.
pub fn apportion(members: &[Member], size: u32) -> Vec<u32> {
    let total: u64 = members.iter().map(|m| m.weight as u64).sum();
    if total == 0 {
        return vec![0; members.len()];
    }
    let exact = |m: &Member| m.weight as u64 * size as u64;
    let mut quota: Vec<u32> = members.iter().map(|m| (exact(m) / total) as u32).collect();
    let given: u32 = quota.iter().sum();
    let mut order: Vec<usize> = (0..members.len()).collect();
    // Stable sort: equal remainders keep member order, which makes the result deterministic.
    order.sort_by(|&a, &b| (exact(&members[b]) % total).cmp(&(exact(&members[a]) % total)));
    for &i in order.iter().take((size - given) as usize) {
        quota[i] += 1;
    }
    quota
}

/// Refills `table` (the service's current slots, or all [`NO_REAL`] for a new one) for
/// `members`, moving as few slots as possible; see the module documentation.
pub fn rebalance(table: &mut [u32], members: &[Member]) {
    let quota = apportion(members, table.len() as u32);
    let mut left = quota.clone();
    let position = |id: u32| members.iter().position(|m| m.id == id);
    // Keep every slot whose owner is still a member with share left.
    let mut free = 0u32;
    for slot in table.iter_mut() {
        match position(*slot) {
            Some(i) if left[i] > 0 => left[i] -= 1,
            _ => {
                *slot = NO_REAL;
                free += 1;
            }
        }
    }
    // Hand out the free slots by smooth weighted round robin over what each member still lacks,
    // so a member's new slots are spread over the table rather than bunched together.
    let want: Vec<i64> = left.iter().map(|&n| n as i64).collect();
    let mut current = vec![0i64; members.len()];
    for slot in table.iter_mut().filter(|s| **s == NO_REAL) {
        let mut best: Option<usize> = None;
        for i in 0..members.len() {
            if left[i] == 0 {
                continue;
            }
            current[i] += want[i];
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let Some(b) = best else { break };
        current[b] -= free as i64;
        left[b] -= 1;
        *slot = members[b].id;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::SH_TABLE_SIZE;

    fn members(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Member {
                id: 100 + i as u32,
                weight: w,
            })
            .collect()
    }

    fn counts(table: &[u32], members: &[Member]) -> Vec<u32> {
        members
            .iter()
            .map(|m| table.iter().filter(|&&s| s == m.id).count() as u32)
            .collect()
    }

    fn fresh(members: &[Member]) -> Vec<u32> {
        let mut t = vec![NO_REAL; SH_TABLE_SIZE as usize];
        rebalance(&mut t, members);
        t
    }

    #[test]
    fn weights_are_honoured_exactly() {
        for weights in [
            &[1u32, 2, 3][..],
            &[1, 1, 1],
            &[5],
            &[0, 7, 0, 1],
            &[65535, 1, 300],
            &[3; 97],
        ] {
            let m = members(weights);
            let t = fresh(&m);
            let c = counts(&t, &m);
            let total: u64 = weights.iter().map(|&w| w as u64).sum();
            assert_eq!(c.iter().sum::<u32>(), SH_TABLE_SIZE, "every slot filled");
            for (w, n) in weights.iter().zip(&c) {
                let exact = *w as u64 * SH_TABLE_SIZE as u64;
                let floor = (exact / total) as u32;
                let ceil = floor + (!exact.is_multiple_of(total)) as u32;
                assert!(
                    *n == floor || *n == ceil,
                    "weight {w}: {n} slots, exact share {floor}..={ceil}"
                );
                if *w == 0 {
                    assert_eq!(*n, 0);
                }
            }
        }
        // Shares that divide the table evenly are met to the slot.
        let m = members(&[1, 3]);
        assert_eq!(counts(&fresh(&m), &m), [1024, 3072]);
    }

    #[test]
    fn all_zero_or_no_members_empties_the_table() {
        assert!(fresh(&members(&[0, 0])).iter().all(|&s| s == NO_REAL));
        let mut t = fresh(&members(&[1, 2]));
        rebalance(&mut t, &[]);
        assert!(t.iter().all(|&s| s == NO_REAL));
    }

    #[test]
    fn deleting_a_real_server_moves_only_its_slots() {
        let m = members(&[1, 1, 1, 1]);
        let before = fresh(&m);
        let mut after = before.clone();
        rebalance(&mut after, &m[1..]);
        for (b, a) in before.iter().zip(&after) {
            if *b != m[0].id {
                assert_eq!(a, b, "a slot of a remaining server moved");
            } else {
                assert_ne!(*a, m[0].id);
            }
        }
        let c = counts(&after, &m[1..]);
        assert!(c.iter().all(|&n| n == 1365 || n == 1366), "{c:?}");
    }

    #[test]
    fn weight_change_moves_the_minimum() {
        let m = members(&[1, 1]);
        let before = fresh(&m);
        let mut after = before.clone();
        let changed = members(&[3, 1]);
        rebalance(&mut after, &changed);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        assert_eq!(moved, 1024, "exactly the difference in shares moves");
        assert_eq!(counts(&after, &changed), [3072, 1024]);
    }

    #[test]
    fn new_slots_are_interleaved() {
        let m = members(&[1, 1]);
        let t = fresh(&m);
        // Not two halves: neighbours alternate.
        assert_ne!(t[0], t[1]);
        assert_ne!(t[1], t[2]);
    }

    #[test]
    fn deterministic() {
        let m = members(&[4, 9, 2]);
        assert_eq!(fresh(&m), fresh(&m));
    }
}

//! The director's room for services and real servers (the datapath's per-service and
//! per-real-server arrays, sized when it starts), and the ids in use in them.

use std::sync::Arc;

use anyhow::{bail, Result};
pub use lb_common::Limits;

/// Checks that both limits are within 1 and their ceilings.
pub fn check_limits(limits: Limits) -> Result<Limits> {
    for (name, value, ceiling) in [
        ("services_max", limits.services, Limits::SERVICES_CEILING),
        ("reals_max", limits.reals, Limits::REALS_CEILING),
    ] {
        if !(1..=ceiling).contains(&value) {
            bail!("{name} {value} is out of range: 1 to {ceiling}");
        }
    }
    Ok(limits)
}

/// A set of ids, a bit each, lowest free first. Shared between states until one of them takes
/// or frees an id (then copied: 128 KiB at a million ids).
#[derive(Clone, Debug, Default)]
pub struct Ids(Arc<Vec<u64>>);

impl Ids {
    /// The lowest id not in the set, if below `limit`.
    pub fn first_free(&self, limit: u32) -> Option<u32> {
        let id = match self.0.iter().position(|w| *w != u64::MAX) {
            Some(i) => i as u32 * 64 + (!self.0[i]).trailing_zeros(),
            None => self.0.len() as u32 * 64,
        };
        (id < limit).then_some(id)
    }

    pub fn contains(&self, id: u32) -> bool {
        self.0
            .get((id / 64) as usize)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    pub fn take(&mut self, id: u32) {
        let (word, bit) = ((id / 64) as usize, id % 64);
        let v = Arc::make_mut(&mut self.0);
        if v.len() <= word {
            v.resize(word + 1, 0);
        }
        v[word] |= 1 << bit;
    }

    pub fn release(&mut self, id: u32) {
        let (word, bit) = ((id / 64) as usize, id % 64);
        if word < self.0.len() {
            Arc::make_mut(&mut self.0)[word] &= !(1 << bit);
        }
    }

    /// The words up to the last one with an id.
    fn used(&self) -> &[u64] {
        let end = self.0.iter().rposition(|w| *w != 0).map_or(0, |i| i + 1);
        &self.0[..end]
    }
}

/// The same ids, however many empty words each keeps.
impl PartialEq for Ids {
    fn eq(&self, other: &Self) -> bool {
        self.used() == other.used()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_free_id_comes_first_and_a_freed_one_is_reused() {
        let mut ids = Ids::default();
        for id in 0..130 {
            assert_eq!(ids.first_free(1000), Some(id));
            ids.take(id);
        }
        ids.release(64);
        ids.release(3);
        assert_eq!(ids.first_free(1000), Some(3));
        ids.take(3);
        assert_eq!(ids.first_free(1000), Some(64));
        ids.take(64);
        assert_eq!(ids.first_free(1000), Some(130));
        assert_eq!(ids.first_free(130), None, "the limit is exclusive");
    }

    #[test]
    fn sets_with_the_same_ids_are_equal_whatever_their_length() {
        let (mut a, mut b) = (Ids::default(), Ids::default());
        a.take(1);
        b.take(1);
        b.take(200);
        assert_ne!(a, b);
        b.release(200);
        assert_eq!(a, b);
    }

    #[test]
    fn limits_out_of_range_are_refused_by_name() {
        let e = check_limits(Limits {
            services: 0,
            reals: 10,
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "services_max 0 is out of range: 1 to 65536");
        let e = check_limits(Limits {
            services: 10,
            reals: Limits::REALS_CEILING + 1,
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "reals_max 1048577 is out of range: 1 to 1048576"
        );
    }
}

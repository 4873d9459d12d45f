//! Real servers for the Maglev tests and the figures example (`#[path]`-included there), so
//! both measure the same configurations.

use lb_common::{addr_from_v4, maglev::Backend, rng::XorShift64};

/// `n` equal-weight real servers at distinct addresses 10.1.x.y (y in 1..=250), listed in address
/// order, with ids that are a shuffle of 1000..1000+n: unrelated to the address order.
pub fn servers(n: usize) -> Vec<Backend> {
    let mut ids: Vec<u32> = (0..n as u32).map(|i| 1000 + i).collect();
    XorShift64::new(0x9e37_79b9_7f4a_7c15 ^ n as u64).shuffle(&mut ids);
    (0..n)
        .map(|i| Backend {
            addr: addr_from_v4([10, 1, (i / 250) as u8, (i % 250 + 1) as u8]),
            weight: 1,
            id: ids[i],
        })
        .collect()
}

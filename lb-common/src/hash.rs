//! The hashes: MurmurHash3 (x86, 32-bit) with fixed seeds, defined on bytes, so every director,
//! every run and every platform computes the same value for the same input (directors behind
//! ECMP agree, and user space predicts the datapath exactly).

use crate::{Addr, FlowKey};

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;
/// Seed of the scheduling hashes; changing it moves every client to a different slot.
pub const SEED: u32 = 0x7864_706c; // "xdpl"

#[inline(always)]
fn mix(h: u32, word: u32) -> u32 {
    let k = word.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32, len: u32) -> u32 {
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// MurmurHash3 x86_32 of `N` little-endian words (4·N bytes). A fixed N keeps the loop bounded
/// and unrolled for the verifier.
#[inline(always)]
pub fn murmur3<const N: usize>(words: &[u32; N], seed: u32) -> u32 {
    let mut h = seed;
    let mut i = 0;
    while i < N {
        h = mix(h, words[i]);
        i += 1;
    }
    finish(h, (N * 4) as u32)
}

#[inline(always)]
fn addr_words(a: &Addr) -> [u32; 4] {
    let w = |i: usize| u32::from_le_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// Hash of a 16-byte address with [`SEED`]: what source hashing (`sh`, `mh --hash src`) uses.
#[inline(always)]
pub fn hash_addr(addr: &Addr) -> u32 {
    murmur3(&addr_words(addr), SEED)
}

/// Hash of an address with another seed: Maglev's per-real-server offset and skip.
#[inline(always)]
pub fn hash_addr_seeded(addr: &Addr, seed: u32) -> u32 {
    murmur3(&addr_words(addr), seed)
}

/// Hash of a whole flow (both addresses, both ports, protocol) with [`SEED`]: `mh --hash flow`.
#[inline(always)]
pub fn hash_flow(f: &FlowKey) -> u32 {
    let s = addr_words(&f.src);
    let d = addr_words(&f.dst);
    let ports = ((f.sport as u32) << 16) | f.dport as u32;
    murmur3(
        &[
            s[0],
            s[1],
            s[2],
            s[3],
            d[0],
            d[1],
            d[2],
            d[3],
            ports,
            f.proto as u32,
        ],
        SEED,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr_from_v4;

    /// Known answers (checked against the reference MurmurHash3 x86_32 with this seed): if these
    /// change, every deployed director would send clients elsewhere.
    #[test]
    fn hash_is_stable() {
        assert_eq!(hash_addr(&[0; 16]), 0x0fb0_bc22);
        assert_eq!(hash_addr(&addr_from_v4([10, 0, 0, 1])), 0x0191_b45a);
        assert_eq!(hash_addr(&addr_from_v4([192, 168, 1, 200])), 0x2052_269a);
    }

    #[test]
    fn flow_hash_is_stable() {
        let f = FlowKey {
            src: addr_from_v4([10, 0, 0, 2]),
            dst: addr_from_v4([10, 0, 0, 100]),
            sport: 40000,
            dport: 80,
            proto: 6,
            _pad: [0; 3],
        };
        assert_eq!(hash_flow(&f), FLOW_KNOWN_ANSWER);
        // Every field matters.
        assert_ne!(hash_flow(&FlowKey { sport: 40001, ..f }), hash_flow(&f));
        assert_ne!(hash_flow(&FlowKey { dport: 81, ..f }), hash_flow(&f));
        assert_ne!(hash_flow(&FlowKey { proto: 17, ..f }), hash_flow(&f));
    }

    // The reference hash of the 40 bytes src, dst, (sport << 16 | dport) LE, proto LE.
    const FLOW_KNOWN_ANSWER: u32 = 0x0f86_89ae;

    #[test]
    fn hash_spreads_neighbouring_addresses() {
        // Consecutive client addresses must not fall into consecutive slots.
        let mut seen = [0u32; 64];
        for i in 0..6400u32 {
            let a = addr_from_v4([10, 1, (i >> 8) as u8, i as u8]);
            seen[(hash_addr(&a) & 63) as usize] += 1;
        }
        for n in seen {
            assert!((60..=140).contains(&n), "bucket count {n} far from 100");
        }
    }
}

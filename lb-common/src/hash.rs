//! The hashes: MurmurHash3 (x86, 32-bit) with fixed seeds, defined on bytes, so every director,
//! every run and every platform computes the same value for the same input (directors behind
//! ECMP agree, and user space predicts the datapath exactly).

use crate::{Addr, FlowKey};

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;
/// Seed of the scheduling hashes; changing it moves every client to a different slot.
pub const SEED: u32 = 0x7864_706c; // "xdpl"

/// One step of MurmurHash3 as its reference writes it (the tests compare [`step`] with it).
#[cfg(test)]
fn mix(h: u32, word: u32) -> u32 {
    let k = word.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// One step of MurmurHash3 on a state whose low 32 bits are the hash's (the bits above them are
/// left over and never read): [`spread`] of the state and the word's scrambled value.
#[inline(always)]
fn step(h: u64, word: u32) -> u64 {
    let k = word.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    spread(h ^ k as u64)
}

/// `rotate_left(13)`, `* 5`, `+ 0xe6546b64` of the low 32 bits of `x`, in its low 32 bits, as
/// sums the CPU can work on side by side: the rotation's two halves, `x << 13` and `x >> 19`,
/// share no bit, so it is their sum, and each times 5 is itself plus itself times 4. The right
/// half is taken from `x` with its bits under 19 (and its leftovers above 32) cleared, so that
/// `>> 17` is exactly four times `>> 19`. Five instructions deep, where rotating and then
/// multiplying is eight; the hash's chain is ten of these.
#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
fn spread(x: u64) -> u64 {
    let high = x & 0xfff8_0000;
    (x << 13)
        .wrapping_add(x << 15)
        .wrapping_add(0xe654_6b64)
        .wrapping_add(high >> 19)
        .wrapping_add(high >> 17)
}

/// [`spread`] for the datapath, written out: LLVM folds the shifted sums back into a rotation
/// and a multiplication.
#[cfg(target_arch = "bpf")]
#[inline(always)]
fn spread(mut x: u64) -> u64 {
    // SAFETY: arithmetic on registers only.
    unsafe {
        core::arch::asm!(
            "{a} = {x}",
            "{a} <<= 13",
            "{b} = {x}",
            "{b} <<= 15",
            "{x} &= {high}",
            "{a} += {b}",
            "{b} = {x}",
            "{b} >>= 17",
            "{x} >>= 19",
            // 0xe6546b64, sign-extended: the same low 32 bits.
            "{a} += -430675100",
            "{x} += {b}",
            "{x} += {a}",
            x = inout(reg) x,
            high = in(reg) 0xfff8_0000u64,
            a = out(reg) _,
            b = out(reg) _,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    x
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
    let mut h = seed as u64;
    let mut i = 0;
    while i < N {
        h = step(h, words[i]);
        i += 1;
    }
    finish(h as u32, (N * 4) as u32)
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

/// Hash of a flow's source address with [`SEED`]: [`hash_addr`] of `f.src`, read from the
/// aligned key a word at a time (see [`key_words`]).
#[inline(always)]
pub fn hash_src(f: &FlowKey) -> u32 {
    let w = key_words(f);
    murmur3(&[w(0), w(1), w(2), w(3)], SEED)
}

/// Hash of a whole flow (both addresses, both ports, protocol) with [`SEED`]: `mh --hash flow`.
#[inline(always)]
pub fn hash_flow(f: &FlowKey) -> u32 {
    let w = key_words(f);
    let ports = ((f.sport as u32) << 16) | f.dport as u32;
    murmur3(
        &[
            w(0),
            w(1),
            w(2),
            w(3),
            w(4),
            w(5),
            w(6),
            w(7),
            ports,
            f.proto as u32,
        ],
        SEED,
    )
}

/// The key's words as the hash reads them, little-endian: 0 to 3 are `src`, 4 to 7 `dst` (the
/// ports and protocol after them are laid out otherwise than the hash takes them, so callers
/// build those words from the fields). Read from the key itself, aligned to 8: the datapath's
/// target splits a load it cannot prove aligned into bytes, and gathering the two addresses a
/// byte at a time (with the bytes spilled to the stack) cost a new flow more than the hash's
/// own arithmetic.
#[inline(always)]
fn key_words(f: &FlowKey) -> impl Fn(usize) -> u32 + '_ {
    const _: () =
        assert!(core::mem::size_of::<FlowKey>() == 40 && core::mem::align_of::<FlowKey>() == 8);
    // SAFETY: FlowKey is 40 bytes of plain data aligned to 8 (checked above).
    let words = unsafe { &*(f as *const FlowKey).cast::<[u32; 10]>() };
    move |i| u32::from_le(words[i])
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

    /// The datapath's step, leftover high bits and all, is the reference's.
    #[test]
    fn a_step_is_the_references() {
        let mut rng = crate::rng::XorShift64::new(3);
        for _ in 0..100_000 {
            let (h, word) = (rng.next(), rng.next() as u32);
            assert_eq!(
                step(h, word) as u32,
                mix(h as u32, word),
                "{h:#x} {word:#x}"
            );
        }
    }

    /// The word-at-a-time reads of the key agree with the hashes defined on its bytes.
    #[test]
    fn key_words_are_the_bytes_words() {
        let mut f = FlowKey {
            src: [0; 16],
            dst: [0; 16],
            sport: 0,
            dport: 0,
            proto: 17,
            _pad: [0; 3],
        };
        for i in 0..16u8 {
            f.src[i as usize] = i.wrapping_mul(37).wrapping_add(1);
            f.dst[i as usize] = i.wrapping_mul(91).wrapping_add(200);
        }
        assert_eq!(hash_src(&f), hash_addr(&f.src));
        let (s, d) = (addr_words(&f.src), addr_words(&f.dst));
        let ports = ((f.sport as u32) << 16) | f.dport as u32;
        let reference = murmur3(
            &[s[0], s[1], s[2], s[3], d[0], d[1], d[2], d[3], ports, 17],
            SEED,
        );
        assert_eq!(hash_flow(&f), reference);
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

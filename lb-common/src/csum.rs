//! The Internet checksum (RFC 1071), shared by the datapath (headers it builds) and user space
//! (frames it crafts and checks).

/// One's-complement sum of `data` as big-endian 16-bit words (an odd last byte is padded with
/// zero), not yet folded: sums of several pieces can be added before [`fold`].
#[inline(always)]
pub fn sum(data: &[u8]) -> u32 {
    let mut s = 0u32;
    let mut i = 0;
    while i + 1 < data.len() {
        s += u16::from_be_bytes([data[i], data[i + 1]]) as u32;
        i += 2;
    }
    if i < data.len() {
        s += (data[i] as u32) << 8;
    }
    s
}

/// Folds a sum to 16 bits and complements it: the value to store in a checksum field.
#[inline(always)]
pub fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// A sum folded to 16 bits with end-around carries, not complemented.
#[inline(always)]
pub fn fold_carries(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// A checksum field after the 16-bit words summing to `old` were replaced by words summing to
/// `new` (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')): rewriting an address or a port updates the
/// checksum without reading the rest of the packet.
#[inline(always)]
pub fn update(check: u16, old: u32, new: u32) -> u16 {
    let s = (!check) as u32 + (!fold_carries(old)) as u32 + fold_carries(new) as u32;
    !fold_carries(s)
}

/// The checksum of `words`, 32-bit words in memory order (its checksum field zero), as the
/// bytes of the value to store in that field (`to_ne_bytes`). Summed over the words as they
/// are, whatever the byte order: a ones' complement sum comes out as the same bytes either way
/// (RFC 1071), where a sum of big-endian 16-bit words swaps every one of them.
#[inline(always)]
pub fn of_words(words: &[u32]) -> [u8; 2] {
    let mut sum = 0u64;
    let mut i = 0;
    while i < words.len() {
        sum += words[i] as u64;
        i += 1;
    }
    // 2^32 and 2^16 are both 1 in ones' complement arithmetic: fold to 16 bits.
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    (!fold_carries((sum as u32 & 0xffff) + (sum >> 16) as u32)).to_ne_bytes()
}

/// The checksum of an IPv4 header without options whose checksum field is zero.
#[inline(always)]
pub fn ipv4_header(h: &[u8; 20]) -> u16 {
    fold(sum(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_header() {
        // The example header from RFC 1071 discussions: 4500 0073 0000 4000 4011 ...
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header(&h), 0xb861);
        let mut with = h;
        with[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(fold(sum(&with)), 0, "a correct header sums to zero");
    }

    #[test]
    fn an_update_equals_a_recomputation() {
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let before = ipv4_header(&h);
        // New destination and a TTL one lower, as NAT rewrites them.
        let old = sum(&h[16..20]) + sum(&h[8..10]);
        h[16..20].copy_from_slice(&[10, 1, 2, 3]);
        h[8] -= 1;
        let new = sum(&h[16..20]) + sum(&h[8..10]);
        assert_eq!(update(before, old, new), ipv4_header(&h));
        // Edge words: all ones, zero, carries.
        for (a, b) in [
            (0xffffu16, 0u16),
            (0, 0xffff),
            (1, 0xfffe),
            (0xedcb, 0x1234),
        ] {
            let before = [0x12, 0x34, (a >> 8) as u8, a as u8];
            let after = [0x12, 0x34, (b >> 8) as u8, b as u8];
            let updated = update(fold(sum(&before)), sum(&before[2..]), sum(&after[2..]));
            // 0 and 0xffff are the same one's-complement number.
            let recomputed = fold(sum(&after));
            assert!(
                updated == recomputed || updated ^ recomputed == 0xffff,
                "{a:#x} -> {b:#x}: {updated:#x} vs {recomputed:#x}"
            );
        }
    }

    #[test]
    fn odd_length() {
        assert_eq!(sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }
}

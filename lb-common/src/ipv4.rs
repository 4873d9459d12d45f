//! IPv4 headers the datapath builds (IPIP outer headers, ICMP errors) and user space builds or
//! checks (test frames, the packet generator): one definition for both.

use crate::csum;

pub const HEADER_LEN: usize = 20;
/// "Don't fragment", in the flags and fragment-offset field.
pub const DF: u16 = 0x4000;

/// A complete IPv4 header without options (IHL 5, id 0), its checksum filled in.
#[inline(always)]
pub fn header(
    tos: u8,
    tot_len: u16,
    frag: u16,
    ttl: u8,
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
) -> [u8; HEADER_LEN] {
    let (src, dst) = (u32::from_ne_bytes(src), u32::from_ne_bytes(dst));
    let h = header_words(tos, tot_len, frag, ttl, proto, src, dst);
    crate::words_bytes(&h)
}

/// [`header`] as five 32-bit words in memory order, the addresses given as theirs (the bytes
/// of each in memory order): how the datapath builds it, its checksum summed over those words
/// ([`csum::of_words`]).
#[inline(always)]
pub fn header_words(
    tos: u8,
    tot_len: u16,
    frag: u16,
    ttl: u8,
    proto: u8,
    src: u32,
    dst: u32,
) -> [u32; HEADER_LEN / 4] {
    let (len, frag) = (tot_len.to_be_bytes(), frag.to_be_bytes());
    let w0 = u32::from_ne_bytes([0x45, tos, len[0], len[1]]);
    let w1 = u32::from_ne_bytes([0, 0, frag[0], frag[1]]);
    let check = csum::of_words(&[w0, w1, u32::from_ne_bytes([ttl, proto, 0, 0]), src, dst]);
    let w2 = u32::from_ne_bytes([ttl, proto, check[0], check[1]]);
    [w0, w1, w2, src, dst]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_header_checks_out() {
        let h = header(0x10, 60, DF, 64, 4, [10, 0, 0, 1], [10, 1, 0, 11]);
        assert_eq!(csum::fold(csum::sum(&h)), 0);
        assert_eq!((h[0], h[1], h[6], h[8], h[9]), (0x45, 0x10, 0x40, 64, 4));
    }

    /// The word-wise build is the header RFC 791 lays out byte by byte, its checksum the
    /// RFC 1071 sum of its big-endian 16-bit words, for any field values (all-ones sums
    /// included, where an end-around carry is easy to drop).
    #[test]
    fn the_words_are_the_header_byte_by_byte() {
        let mut rng = crate::rng::XorShift64::new(0x1f0e_2d3c);
        for n in 0..100_000 {
            let (r, a, b) = match n {
                0 => (u64::MAX, u32::MAX, u32::MAX),
                _ => (rng.next(), rng.next() as u32, rng.next() as u32),
            };
            let (tos, len, frag) = (r as u8, (r >> 8) as u16, (r >> 24) as u16);
            let (ttl, proto, src, dst) = (
                (r >> 40) as u8,
                (r >> 48) as u8,
                a.to_be_bytes(),
                b.to_be_bytes(),
            );
            let mut want = [0u8; HEADER_LEN];
            want[0] = 0x45;
            want[1] = tos;
            want[2..4].copy_from_slice(&len.to_be_bytes());
            want[6..8].copy_from_slice(&frag.to_be_bytes());
            want[8] = ttl;
            want[9] = proto;
            want[12..16].copy_from_slice(&src);
            want[16..20].copy_from_slice(&dst);
            let check = csum::ipv4_header(&want);
            want[10..12].copy_from_slice(&check.to_be_bytes());
            assert_eq!(header(tos, len, frag, ttl, proto, src, dst), want);
        }
    }
}

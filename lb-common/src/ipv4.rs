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
    let mut h = [0u8; HEADER_LEN];
    h[0] = 0x45;
    h[1] = tos;
    h[2..4].copy_from_slice(&tot_len.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = ttl;
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let c = csum::ipv4_header(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
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
}

//! IPv6 headers the datapath builds (tunnel outer headers, ICMPv6 errors) and user space builds
//! (test frames): one definition for both, as [`crate::ipv4`].

use crate::maps::Addr;

pub const HEADER_LEN: usize = 40;

/// A fixed IPv6 header: `first` its version, traffic class and flow label (the first four
/// bytes), then the payload length, next header and hop limit given, from `src` to `dst`.
#[inline(always)]
pub fn header(
    first: [u8; 4],
    payload_len: u16,
    next_header: u8,
    hop_limit: u8,
    src: &Addr,
    dst: &Addr,
) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&first);
    h[4..6].copy_from_slice(&payload_len.to_be_bytes());
    h[6] = next_header;
    h[7] = hop_limit;
    h[8..24].copy_from_slice(src);
    h[24..40].copy_from_slice(dst);
    h
}

/// The first four bytes of an IPv6 header with traffic class `tc` and no flow label.
#[inline(always)]
pub const fn first_word(tc: u8) -> [u8; 4] {
    [0x60 | (tc >> 4), tc << 4, 0, 0]
}

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
    let words = |a: &Addr| -> [u32; 4] { bytemuck::cast(*a) };
    let h = header_words(
        first,
        payload_len,
        next_header,
        hop_limit,
        words(src),
        words(dst),
    );
    crate::words_bytes(&h)
}

/// [`header`] as ten 32-bit words in memory order, the addresses given as theirs: how the
/// datapath builds it, from addresses it reads a word at a time (gathered from bytes, each
/// address took 16 loads and as many stack slots).
#[inline(always)]
pub fn header_words(
    first: [u8; 4],
    payload_len: u16,
    next_header: u8,
    hop_limit: u8,
    src: [u32; 4],
    dst: [u32; 4],
) -> [u32; HEADER_LEN / 4] {
    let len = payload_len.to_be_bytes();
    [
        u32::from_ne_bytes(first),
        u32::from_ne_bytes([len[0], len[1], next_header, hop_limit]),
        src[0],
        src[1],
        src[2],
        src[3],
        dst[0],
        dst[1],
        dst[2],
        dst[3],
    ]
}

/// The first four bytes of an IPv6 header with traffic class `tc` and no flow label.
#[inline(always)]
pub const fn first_word(tc: u8) -> [u8; 4] {
    [0x60 | (tc >> 4), tc << 4, 0, 0]
}

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
    fn odd_length() {
        assert_eq!(sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }
}

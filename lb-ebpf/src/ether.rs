//! The Ethernet header across a move of the frame's head: encapsulation and the ICMP answer grow
//! the frame in front, decapsulation shrinks it, and each needs the old Ethernet header (with its
//! VLAN tag, if any) written back in front of what follows.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};

use crate::{
    frame,
    parse::{ptr_at, read},
};

/// Grows (negative) or shrinks (positive) the frame at its head; false without headroom.
#[inline(always)]
pub fn adjust_head(ctx: &XdpContext, delta: i32) -> bool {
    // SAFETY: the helper checks the bounds itself; packet pointers are re-read afterwards.
    unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) == 0 }
}

/// A copy of the frame's Ethernet header: the two MAC addresses and what follows them up to
/// the IP header (the ethertype, or a VLAN tag and the ethertype).
pub struct EthHeader {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    tail: [u8; 6],
    tagged: bool,
}

impl EthHeader {
    /// Copies the header of a frame whose IP header starts at `l3_off` (14, or 18 with a tag).
    #[inline(always)]
    pub fn read(ctx: &XdpContext, l3_off: usize) -> Option<Self> {
        let macs = read::<[u8; 12]>(ctx, 0)?;
        let mut h = EthHeader {
            dst: [0; 6],
            src: [0; 6],
            tail: [0; 6],
            tagged: l3_off == 18,
        };
        h.dst.copy_from_slice(&macs[..6]);
        h.src.copy_from_slice(&macs[6..]);
        if h.tagged {
            h.tail = read::<[u8; 6]>(ctx, 12)?;
        } else {
            let ty = read::<[u8; 2]>(ctx, 12)?;
            h.tail[..2].copy_from_slice(&ty);
        }
        Some(h)
    }

    /// Sets the ethertype (after the tag, if any): the network protocol a tunnel's outer header
    /// changes.
    #[inline(always)]
    pub fn set_type(&mut self, ty: u16) {
        let at = if self.tagged { 4 } else { 0 };
        self.tail[at..at + 2].copy_from_slice(&ty.to_be_bytes());
    }

    /// Writes the header at the start of the frame; false if the frame is too short.
    #[inline(always)]
    pub fn write(&self, ctx: &XdpContext) -> bool {
        let Some(eth) = ptr_at::<[u8; 12]>(ctx, 0) else {
            return false;
        };
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&self.dst);
        macs[6..].copy_from_slice(&self.src);
        // SAFETY: every write below is bounds-checked by ptr_at.
        unsafe { frame::store(eth, macs) };
        if self.tagged {
            let Some(to) = ptr_at::<[u8; 6]>(ctx, 12) else {
                return false;
            };
            unsafe { frame::store(to, self.tail) };
        } else {
            let Some(to) = ptr_at::<[u8; 2]>(ctx, 12) else {
                return false;
            };
            unsafe { frame::store(to, [self.tail[0], self.tail[1]]) };
        }
        true
    }
}

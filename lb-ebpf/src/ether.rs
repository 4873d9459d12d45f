//! The Ethernet header across a move of the frame's head: encapsulation and the ICMP answer grow
//! the frame in front, decapsulation shrinks it, and each needs the old Ethernet header (with its
//! VLAN tag, if any) written back in front of what follows.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::RealServer;

use crate::{
    frame,
    parse::{ptr_at, read},
};

/// An Ethernet address in the low 48 bits, its first byte lowest: how the frame's addresses are
/// moved, in registers (see `frame::load_mac`).
pub type Mac = u64;

/// An address held as bytes (in a map, or the FIB helper's answer).
#[inline(always)]
pub fn mac(b: [u8; 6]) -> Mac {
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], 0, 0])
}

/// A real server's MAC: two aligned loads from its map entry, not six byte loads.
#[inline(always)]
pub fn real_mac(real: &RealServer) -> Mac {
    const {
        assert!(core::mem::offset_of!(RealServer, mac) % 4 == 0);
        assert!(core::mem::align_of::<RealServer>() >= 4);
    };
    let p = core::ptr::addr_of!(real.mac) as *const u8;
    // SAFETY: the field is 4-byte aligned (asserted above) and 6 bytes long.
    unsafe {
        u32::from_le((p as *const u32).read()) as u64
            | (u16::from_le((p.add(4) as *const u16).read()) as u64) << 32
    }
}

/// The frame's destination MAC: the director's own on the link it came in on.
#[inline(always)]
pub fn dst_mac(ctx: &XdpContext) -> Option<Mac> {
    let p = ptr_at::<[u8; 6]>(ctx, 0)?;
    // SAFETY: ptr_at checked the 6 bytes are inside the frame.
    Some(unsafe { frame::load_mac(p as *const u8) })
}

/// Writes the frame's two addresses; false if the frame is too short.
#[inline(always)]
pub fn write_macs(ctx: &XdpContext, dst: Mac, src: Mac) -> bool {
    let Some(eth) = ptr_at::<[u8; 12]>(ctx, 0) else {
        return false;
    };
    // SAFETY: ptr_at checked the 12 bytes are inside the frame.
    unsafe { frame::store_macs(eth as *mut u8, dst, src) };
    true
}

/// Grows (negative) or shrinks (positive) the frame at its head; false without headroom.
#[inline(always)]
pub fn adjust_head(ctx: &XdpContext, delta: i32) -> bool {
    // SAFETY: the helper checks the bounds itself; packet pointers are re-read afterwards.
    unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) == 0 }
}

/// A copy of the frame's Ethernet header: the two MAC addresses and what follows them up to
/// the IP header (the ethertype, or a VLAN tag and the ethertype).
pub struct EthHeader {
    pub dst: Mac,
    pub src: Mac,
    tail: [u8; 6],
    tagged: bool,
}

impl EthHeader {
    /// Copies the header of a frame whose IP header starts at `l3_off` (14, or 18 with a tag).
    #[inline(always)]
    pub fn read(ctx: &XdpContext, l3_off: usize) -> Option<Self> {
        let macs = ptr_at::<[u8; 12]>(ctx, 0)? as *const u8;
        // SAFETY: ptr_at checked the 12 bytes are inside the frame.
        let (dst, src) = unsafe { (frame::load_mac(macs), frame::load_mac(macs.add(6))) };
        let mut h = EthHeader {
            dst,
            src,
            tail: [0; 6],
            tagged: l3_off == 18,
        };
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
        write_macs(ctx, self.dst, self.src) && self.write_type(ctx)
    }

    /// Writes what follows the MAC addresses (the tag, if any, and the ethertype): for frames
    /// whose addresses [`crate::route::send`] writes next.
    #[inline(always)]
    pub fn write_type(&self, ctx: &XdpContext) -> bool {
        // SAFETY: every write below is bounds-checked by ptr_at.
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

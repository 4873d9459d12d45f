//! Forwarding methods. LVS/DR (direct routing): the frame goes to the real server's MAC address
//! from the director's, the IP packet untouched; the real server holds the VIP and answers the
//! client itself.

use aya_ebpf::programs::XdpContext;
use lb_common::{DirectorConfig, RealServer};

use crate::parse::ptr_at;

/// Rewrites the Ethernet addresses for `real`; false if the frame is too short to hold them.
#[inline(always)]
pub fn direct_route(ctx: &XdpContext, config: &DirectorConfig, real: &RealServer) -> bool {
    let Some(eth) = ptr_at::<[u8; 12]>(ctx, 0) else {
        return false;
    };
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&real.mac);
    macs[6..].copy_from_slice(&config.mac);
    // SAFETY: ptr_at checked the 12 bytes are inside the frame.
    unsafe { eth.write_unaligned(macs) };
    true
}

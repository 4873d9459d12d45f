//! Whether a frame is addressed to this host: the director acts only on frames for a MAC address
//! it owns on the link (the interface's own, or a device stacked on it such as keepalived's
//! `use_vmac` macvlan), as IPVS only ever sees what the NIC accepted. Frames a switch floods to
//! every port (an unknown destination after a port flap or a MAC table timeout) go to the kernel
//! untouched, which drops them: a backup director never forwards what the master forwards.

use aya_ebpf::{macros::map, maps::Array, programs::XdpContext};
use lb_common::{DirectorConfig, LocalMacs, MAX_LOCAL_MACS};

use crate::parse::read;

/// Index 0: the stacked devices' MACs, written by the agent as devices come and go.
#[map]
static LOCAL_MACS: Array<LocalMacs> = Array::with_max_entries(1, 0);

/// Whose a frame is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// This host's: the interface's own MAC, or an active stacked device's.
    Local,
    /// A stacked device's that holds no address (a VRRP backup's virtual MAC).
    Standby,
    /// Another host's.
    Other,
}

#[inline(always)]
pub fn owner(ctx: &XdpContext, config: &DirectorConfig) -> Owner {
    let Some(dst) = read::<[u8; 6]>(ctx, 0) else {
        return Owner::Other;
    };
    // The interface's own MAC: one compare, the common case.
    if dst == config.mac {
        return Owner::Local;
    }
    // Another interface the director is attached to (LVS/NAT's inside one, say).
    if crate::route::ingress(ctx).is_some_and(|i| i.mac == dst) {
        return Owner::Local;
    }
    let Some(local) = LOCAL_MACS.get(0) else {
        return Owner::Other;
    };
    let mut i = 0;
    while i < MAX_LOCAL_MACS {
        if (i as u32) < local.count && local.macs[i] == dst {
            return if local.active & (1 << i) != 0 {
                Owner::Local
            } else {
                Owner::Standby
            };
        }
        i += 1;
    }
    Owner::Other
}

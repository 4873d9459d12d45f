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

#[inline(always)]
pub fn is_local(ctx: &XdpContext, config: &DirectorConfig) -> bool {
    let Some(dst) = read::<[u8; 6]>(ctx, 0) else {
        return false;
    };
    // The interface's own MAC: one compare, the common case.
    if dst == config.mac {
        return true;
    }
    let Some(local) = LOCAL_MACS.get(0) else {
        return false;
    };
    let mut i = 0;
    while i < MAX_LOCAL_MACS {
        if (i as u32) < local.count && local.macs[i] == dst {
            return true;
        }
        i += 1;
    }
    false
}

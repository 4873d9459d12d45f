//! The one ethtool setting the tests need, through the SIOCETHTOOL ioctl: the ethtool binary is not
//! installed on these machines.
//!
//! In native XDP mode a frame that the director sends on with XDP_TX loses the skb's "checksum
//! still to be completed" state (CHECKSUM_PARTIAL, which a veth passes along untouched), so the
//! real server would drop it. Turning TX checksum offload off on the sending client makes its
//! kernel write full checksums. (This also turns TSO off; GSO then segments in software before
//! the veth, so no other offload needs touching.)

use std::io;

use anyhow::{bail, Result};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` as SIOCETHTOOL reads it: the name, then a pointer to the ethtool command.
#[repr(C)]
struct IfreqData {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16], // the ifreq union is 24 bytes
}

/// Sets TX checksum offload of an interface of the CALLING THREAD's namespace (see
/// [`crate::Netns::set_tx_checksum`]), and checks that the setting took.
pub fn set_tx_checksum(ifname: &str, on: bool) -> Result<()> {
    ethtool_value(ifname, ETHTOOL_STXCSUM, on as u32)?;
    let now = ethtool_value(ifname, ETHTOOL_GTXCSUM, 0)?;
    if (now != 0) != on {
        bail!(
            "{ifname}: tx checksum offload is still {}",
            if now != 0 { "on" } else { "off" }
        );
    }
    Ok(())
}

/// Issues one get/set ethtool_value command; returns the value the kernel left in `data`.
fn ethtool_value(ifname: &str, cmd: u32, data: u32) -> Result<u32> {
    if ifname.len() >= libc::IFNAMSIZ {
        bail!("interface name too long: {ifname}");
    }
    let mut value = EthtoolValue { cmd, data };
    let mut req = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 16],
    };
    for (dst, src) in req.name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain socket; the ioctl reads `req` and the EthtoolValue it points to, both alive
    // for the duration of the call, and the fd is closed right after.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", io::Error::last_os_error());
        }
        let rc = libc::ioctl(fd, SIOCETHTOOL as _, &mut req);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc < 0 {
            bail!("SIOCETHTOOL {cmd:#x} on {ifname}: {err}");
        }
    }
    Ok(value.data)
}

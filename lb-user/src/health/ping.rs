//! Ping checks (keepalived's PING_CHECK): one ICMP or ICMPv6 echo request, answered by an echo
//! reply from the real server. An unprivileged ICMP socket where the system allows one
//! (net.ipv4.ping_group_range), else a raw socket (CAP_NET_RAW, which the agent has).

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicU16, Ordering},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

use super::io_message;

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
const PAYLOAD: &[u8; 16] = b"xdplb-health-chk";

/// Each probe's sequence number (and, on raw sockets, its identifier with the process's id).
static SEQUENCE: AtomicU16 = AtomicU16::new(0);

/// Sends one echo request to `ip` and waits for its reply (the caller bounds the wait).
pub async fn echo(ip: IpAddr) -> Result<(), String> {
    let (socket, raw) = open(ip).map_err(|e| format!("ping {ip}: {}", io_message(&e)))?;
    let id = std::process::id() as u16;
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let request = request(ip, id, seq);
    socket
        .connect(&SockAddr::from(SocketAddr::new(ip, 0)))
        .and_then(|()| socket.send(&request))
        .map_err(|e| format!("ping {ip}: {}", io_message(&e)))?;
    // SAFETY: the socket is ours alone and lives inside the AsyncFd until it is dropped.
    let socket = unsafe { AsyncFd::register(socket) }
        .map_err(|e| format!("ping {ip}: {}", io_message(&e.into_parts().1)))?;
    let mut buf = [0u8; 1500];
    loop {
        let mut guard = socket
            .readable()
            .await
            .map_err(|e| format!("ping {ip}: {}", io_message(&e)))?;
        let n = match guard.try_io(|s| recv(s.get_ref(), &mut buf)) {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(format!("ping {ip}: {}", io_message(&e))),
            Err(_would_block) => continue,
        };
        if is_reply(ip, raw, &buf[..n], id, seq) {
            return Ok(());
        }
    }
}

/// A socket for ICMP to `ip`, and whether it is raw (replies then come with the IPv4 header, and
/// the identifier is ours to choose and match).
fn open(ip: IpAddr) -> io::Result<(Socket, bool)> {
    let (domain, protocol) = match ip {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let (socket, raw) = match Socket::new(domain, Type::DGRAM, Some(protocol)) {
        Ok(s) => (s, false),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => {
            (Socket::new(domain, Type::RAW, Some(protocol))?, true)
        }
        Err(e) => return Err(e),
    };
    socket.set_nonblocking(true)?;
    Ok((socket, raw))
}

fn recv(socket: &Socket, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: u8 and MaybeUninit<u8> have the same layout; recv only writes initialised bytes.
    let uninit = unsafe { &mut *(std::ptr::from_mut(buf) as *mut [std::mem::MaybeUninit<u8>]) };
    socket.recv(uninit)
}

/// An echo request; the kernel computes the ICMPv6 checksum (and, on an unprivileged socket,
/// sets the identifier).
fn request(ip: IpAddr, id: u16, seq: u16) -> Vec<u8> {
    let kind = match ip {
        IpAddr::V4(_) => ECHO_REQUEST_V4,
        IpAddr::V6(_) => ECHO_REQUEST_V6,
    };
    let mut packet = vec![kind, 0, 0, 0];
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(PAYLOAD);
    if ip.is_ipv4() {
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// The Internet checksum of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether `packet` is the reply to our request (a raw IPv4 socket hands over the IP header
/// too; an unprivileged socket gets only replies to its own identifier).
fn is_reply(ip: IpAddr, raw: bool, packet: &[u8], id: u16, seq: u16) -> bool {
    let icmp = match (ip, raw) {
        (IpAddr::V4(_), true) => {
            let ihl = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
            packet.get(ihl..).unwrap_or_default()
        }
        _ => packet,
    };
    let reply = match ip {
        IpAddr::V4(_) => ECHO_REPLY_V4,
        IpAddr::V6(_) => ECHO_REPLY_V6,
    };
    icmp.len() >= 8
        && icmp[0] == reply
        && (!raw || icmp[4..6] == id.to_be_bytes())
        && icmp[6..8] == seq.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_a_valid_checksum_and_replies_are_matched() {
        let ip: IpAddr = "10.0.0.11".parse().unwrap();
        let r = request(ip, 0x1234, 7);
        assert_eq!(checksum(&r), 0, "a packet with its checksum sums to 0");
        assert_eq!((r[0], &r[4..8]), (8, &[0x12, 0x34, 0, 7][..]));
        let mut reply = r.clone();
        reply[0] = ECHO_REPLY_V4;
        assert!(is_reply(ip, false, &reply, 0, 7));
        assert!(!is_reply(ip, false, &reply, 0, 8), "another probe's");
        assert!(!is_reply(ip, false, &r, 0, 7), "our own request");
        let mut with_header = vec![0x45; 20];
        with_header.extend_from_slice(&reply);
        assert!(is_reply(ip, true, &with_header, 0x1234, 7));
        assert!(!is_reply(ip, true, &with_header, 0x1235, 7));
        assert!(!is_reply(ip, true, &with_header[..24], 0x1234, 7), "short");
        let v6: IpAddr = "2001:db8::11".parse().unwrap();
        let mut reply6 = request(v6, 1, 2);
        assert_eq!(reply6[0], ECHO_REQUEST_V6);
        reply6[0] = ECHO_REPLY_V6;
        assert!(is_reply(v6, true, &reply6, 1, 2));
    }

    #[tokio::test]
    async fn loopback_answers() {
        // Needs CAP_NET_RAW or a ping group: as root (a failure under CI, where tests run as
        // root), or where ping works unprivileged.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs the tests as root"
            );
            return;
        }
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            echo("127.0.0.1".parse().unwrap()),
        )
        .await;
        assert_eq!(r, Ok(Ok(())));
    }
}

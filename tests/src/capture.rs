//! A packet capture on one interface of a namespace (an AF_PACKET socket: tcpdump is not installed
//! on these machines), and a parser for the IPv4 headers the tests look at.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{bail, Result};

use crate::Netns;

/// One captured frame: its first [`Capture::SNAPLEN`] bytes, Ethernet header included.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Sent by the interface (else received).
    pub outgoing: bool,
    pub data: Vec<u8>,
}

impl Frame {
    /// The IPv4 packet the frame carries, if any (untagged Ethernet only).
    pub fn ipv4(&self) -> Option<Ipv4Packet<'_>> {
        match self.data.get(12..14) {
            Some([0x08, 0x00]) => Ipv4Packet::parse(&self.data[14..]),
            _ => None,
        }
    }
}

/// The fields of an IPv4 header the tests check, and what follows the header (as captured).
#[derive(Clone, Copy, Debug)]
pub struct Ipv4Packet<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub ttl: u8,
    /// The "don't fragment" flag.
    pub df: bool,
    pub total_len: u16,
    pub payload: &'a [u8],
}

impl<'a> Ipv4Packet<'a> {
    pub const IPIP: u8 = 4;

    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        let ihl = usize::from(*bytes.first()? & 0x0f) * 4;
        if bytes[0] >> 4 != 4 || ihl < 20 || bytes.len() < ihl {
            return None;
        }
        let addr =
            |at: usize| Ipv4Addr::new(bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]);
        Some(Self {
            src: addr(12),
            dst: addr(16),
            protocol: bytes[9],
            ttl: bytes[8],
            df: bytes[6] & 0x40 != 0,
            total_len: u16::from_be_bytes([bytes[2], bytes[3]]),
            payload: &bytes[ihl..],
        })
    }

    /// The packet inside, if this is an IPIP packet.
    pub fn inner(&self) -> Option<Ipv4Packet<'a>> {
        (self.protocol == Self::IPIP)
            .then(|| Self::parse(self.payload))
            .flatten()
    }
}

/// Captures every frame received and sent on an interface, in a background thread, until
/// [`Capture::stop`] (or Drop).
pub struct Capture {
    frames: Arc<Mutex<Vec<Frame>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    /// Bytes kept of each frame: the Ethernet header, two IPv4 headers with options and more.
    pub const SNAPLEN: usize = 128;
    /// Frames kept at most; later ones are not kept.
    const MAX_FRAMES: usize = 100_000;

    /// Starts capturing on `ifname` of `ns`.
    pub fn start(ns: &Netns, ifname: &str) -> Result<Self> {
        let ifindex = ns.ifindex(ifname)?;
        let socket = ns.run_in(|| packet_socket(ifindex))?;
        let frames = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (frames, stop) = (Arc::clone(&frames), Arc::clone(&stop));
            std::thread::spawn(move || receive(&socket, &frames, &stop))
        };
        Ok(Self {
            frames,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops capturing and returns the frames, in order.
    pub fn stop(mut self) -> Vec<Frame> {
        self.join();
        std::mem::take(&mut *self.frames.lock().expect("capture lock"))
    }

    fn join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.join();
    }
}

/// An AF_PACKET socket receiving every protocol on `ifindex` of the calling thread's namespace,
/// with a 50 ms receive timeout so that the reader notices a stop.
fn packet_socket(ifindex: u32) -> Result<OwnedFd> {
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all)) };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = all;
    addr.sll_ifindex = ifindex as i32;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: valid pointers and lengths for bind(2) and setsockopt(2) on our own socket.
    let ok = unsafe {
        libc::bind(
            fd,
            std::ptr::from_ref(&addr).cast(),
            std::mem::size_of_val(&addr) as libc::socklen_t,
        ) == 0
            && libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&timeout).cast(),
                std::mem::size_of_val(&timeout) as libc::socklen_t,
            ) == 0
    };
    if !ok {
        bail!("AF_PACKET bind: {}", std::io::Error::last_os_error());
    }
    Ok(socket)
}

fn receive(socket: &OwnedFd, frames: &Mutex<Vec<Frame>>, stop: &AtomicBool) {
    let mut buf = [0u8; 65536];
    loop {
        // Once stopped, what is still queued in the socket was seen before the stop: keep it.
        let stopping = stop.load(Ordering::Relaxed);
        let flags = if stopping { libc::MSG_DONTWAIT } else { 0 };
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = std::mem::size_of_val(&from) as libc::socklen_t;
        // SAFETY: recvfrom(2) into buffers we own, with their true lengths.
        let n = unsafe {
            libc::recvfrom(
                socket.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                flags,
                std::ptr::from_mut(&mut from).cast(),
                &mut from_len,
            )
        };
        let Ok(n) = usize::try_from(n) else {
            if stopping {
                return; // drained
            }
            continue; // the timeout (or a signal): look at the stop flag
        };
        let mut frames = frames.lock().expect("capture lock");
        if frames.len() < Capture::MAX_FRAMES {
            frames.push(Frame {
                outgoing: from.sll_pkttype == libc::PACKET_OUTGOING,
                data: buf[..n.min(Capture::SNAPLEN)].to_vec(),
            });
        }
    }
}

//! The test client: one TCP connection from a chosen source address, reading what the server says.

use std::io::ErrorKind::{Interrupted, TimedOut, WouldBlock};
use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use socket2::{Domain, Protocol, Socket, Type};

/// How long one connection may take, connect to EOF.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Connects from `src` (any port) to `dst` in the CALLING THREAD's namespace (run it through
/// [`crate::Netns::run_in`] or [`crate::Netns::thread`]), reads until the server closes, and
/// returns what it said without the trailing newline: with `lb-testsrv`, the server's name.
/// Refused, reset and timed-out connections are errors naming the reason.
pub fn fetch(src: Ipv4Addr, dst: SocketAddrV4) -> Result<String> {
    let deadline = Instant::now() + TIMEOUT;
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket
        .bind(&SocketAddr::from((src, 0)).into())
        .with_context(|| format!("bind {src}"))?;
    socket
        .connect_timeout(&SocketAddr::V4(dst).into(), TIMEOUT)
        .with_context(|| format!("connect {src} -> {dst}"))?;
    let mut stream = std::net::TcpStream::from(socket);
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "{src} -> {dst}: timed out reading (got {:?})",
                String::from_utf8_lossy(&reply)
            );
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            // Interrupted, or the read timeout fired: the loop checks the deadline.
            Err(e) if matches!(e.kind(), Interrupted | WouldBlock | TimedOut) => {}
            Err(e) => return Err(e).with_context(|| format!("{src} -> {dst}: read")),
        }
    }
    let reply = String::from_utf8(reply).context("reply is not UTF-8")?;
    Ok(reply.trim_end().to_owned())
}

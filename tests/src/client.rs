//! The test clients, connecting from a chosen source address (and port, so that a flow is known
//! before it starts): [`fetch`], one short connection reading what the server says, and
//! [`Stream`], one long-lived connection exchanging lines with `lb-testsrv --echo`, driven in a
//! background thread that records which server answers and how the connection ends (many at
//! once: [`StreamSet`]), [`upload`], one connection sending many bytes to `lb-testsrv --sink`,
//! [`UdpFlow`], datagrams to `lb-testsrv --udp`, and [`http_get`], for the agent's metrics.

use std::io::ErrorKind::{
    BrokenPipe, ConnectionAborted, ConnectionReset, Interrupted, TimedOut, UnexpectedEof,
    WouldBlock,
};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use socket2::{Domain, Protocol, Socket, Type};

use crate::Netns;

/// How long one connection may take, connect to EOF.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Connects from `src` (any port) to `dst` in the CALLING THREAD's namespace (run it through
/// [`crate::Netns::run_in`] or [`crate::Netns::thread`]), reads until the server closes, and
/// returns what it said without the trailing newline: with `lb-testsrv`, the server's name.
/// Refused, reset and timed-out connections are errors naming the reason.
pub fn fetch(src: Ipv4Addr, dst: SocketAddrV4) -> Result<String> {
    fetch_from(SocketAddrV4::new(src, 0), dst)
}

/// Like [`fetch`], from source address AND port `src` (port 0: any). The client half-closes
/// right after connecting (it has nothing to say), so `lb-testsrv --echo` closes after its
/// greeting just like the default mode does.
pub fn fetch_from(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>) -> Result<String> {
    let (src, dst) = (src.into(), dst.into());
    let deadline = Instant::now() + TIMEOUT;
    let mut stream = connect(src, dst)?;
    stream
        .shutdown(Shutdown::Write)
        .with_context(|| format!("{src} -> {dst}: shutdown"))?;
    read_reply(&mut stream, deadline).with_context(|| format!("{src} -> {dst}"))
}

/// Connects from `src` (port 0: any) to `dst` in the CALLING THREAD's namespace (see [`fetch`]),
/// sends `bytes` bytes, closes its sending side and returns what the server answers before it
/// closes, without the trailing newline: with `lb-testsrv --sink`, `NAME BYTES`. All within
/// `timeout`.
pub fn upload(
    src: impl Into<SocketAddr>,
    dst: impl Into<SocketAddr>,
    bytes: usize,
    timeout: Duration,
) -> Result<String> {
    let (src, dst) = (src.into(), dst.into());
    let deadline = Instant::now() + timeout;
    let mut stream = connect(src, dst)?;
    let chunk = [b'x'; 64 * 1024];
    let mut sent = 0;
    while sent < bytes {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("{src} -> {dst}: timed out after sending {sent} of {bytes} bytes");
        }
        stream.set_write_timeout(Some(left))?;
        let n = chunk.len().min(bytes - sent);
        match stream.write(&chunk[..n]) {
            Ok(n) => sent += n,
            Err(e) if matches!(e.kind(), Interrupted | WouldBlock | TimedOut) => {}
            Err(e) => return Err(e).with_context(|| format!("{src} -> {dst}: send ({sent} sent)")),
        }
    }
    stream
        .shutdown(Shutdown::Write)
        .with_context(|| format!("{src} -> {dst}: shutdown"))?;
    read_reply(&mut stream, deadline).with_context(|| format!("{src} -> {dst}"))
}

/// Reads until the server closes, by `deadline`; what it said, without the trailing newline.
fn read_reply(stream: &mut TcpStream, deadline: Instant) -> Result<String> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "timed out reading (got {:?})",
                String::from_utf8_lossy(&reply)
            );
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            // Interrupted, or the read timeout fired: the loop checks the deadline.
            Err(e) if matches!(e.kind(), Interrupted | WouldBlock | TimedOut) => {}
            Err(e) => return Err(e).context("read"),
        }
    }
    let reply = String::from_utf8(reply).context("reply is not UTF-8")?;
    Ok(reply.trim_end().to_owned())
}

/// A TCP connection from `src` (port 0: any) to `dst`, within [`TIMEOUT`].
fn connect(src: SocketAddr, dst: SocketAddr) -> Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    socket
        .bind(&src.into())
        .with_context(|| format!("bind {src}"))?;
    socket
        .connect_timeout(&dst.into(), TIMEOUT)
        .with_context(|| format!("connect {src} -> {dst}"))?;
    Ok(socket.into())
}

/// How a [`Stream`] stopped working.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamError {
    /// The peer reset the connection (e.g. a real server that does not know it).
    Reset,
    /// The server closed the connection.
    Eof,
    /// No answer within [`Stream::STALL`].
    Stall,
    /// An answer that is not `NAME SEQ` for the line just sent, or from another server.
    Garbled(String),
    /// Any other socket error.
    Io(String),
}

impl From<std::io::Error> for StreamError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            ConnectionReset | ConnectionAborted | BrokenPipe => Self::Reset,
            WouldBlock | TimedOut => Self::Stall,
            UnexpectedEof => Self::Eof,
            _ => Self::Io(e.to_string()),
        }
    }
}

/// A long-lived connection to `lb-testsrv --echo`: [`Stream::connect`] reads the greeting (the
/// server's name), each [`Stream::exchange`] sends a sequence number and expects
/// `NAME SEQ` back. [`Stream::drive`] exchanges in a background thread.
pub struct Stream {
    src: SocketAddr,
    dst: SocketAddr,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    server: String,
    seq: u64,
}

impl Stream {
    /// An answer slower than this is a stall: the connection counts as broken.
    pub const STALL: Duration = Duration::from_secs(2);

    /// Connects from `src` (address AND port, so the flow is known in advance) to `dst` in the
    /// CALLING THREAD's namespace (see [`fetch`]) and reads the server's greeting. The socket
    /// keeps its namespace: the stream may be used, and driven, from any thread.
    pub fn connect(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>) -> Result<Self> {
        Self::connect_with_stall(src, dst, Self::STALL)
    }

    /// Like [`Stream::connect`], with another stall limit: for connections that must ride out a
    /// failover, where TCP's retransmission backoff adds seconds to the outage itself.
    pub fn connect_with_stall(
        src: impl Into<SocketAddr>,
        dst: impl Into<SocketAddr>,
        stall: Duration,
    ) -> Result<Self> {
        let (src, dst) = (src.into(), dst.into());
        let writer = connect(src, dst)?;
        writer.set_read_timeout(Some(stall))?;
        writer.set_write_timeout(Some(stall))?;
        let mut reader = BufReader::new(writer.try_clone()?);
        let server = read_line(&mut reader)
            .map_err(|e| anyhow::anyhow!("{src} -> {dst}: greeting: {e:?}"))?;
        Ok(Self {
            src,
            dst,
            reader,
            writer,
            server,
            seq: 0,
        })
    }

    /// The client end of the flow.
    pub fn src(&self) -> SocketAddr {
        self.src
    }

    /// The server that greeted this connection.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// One line out, one line back, from the server that greeted the connection.
    pub fn exchange(&mut self) -> Result<(), StreamError> {
        self.seq += 1;
        self.writer
            .write_all(format!("{}\n", self.seq).as_bytes())?;
        let answer = read_line(&mut self.reader)?;
        if answer != format!("{} {}", self.server, self.seq) {
            return Err(StreamError::Garbled(format!(
                "sent {}, got {answer:?}",
                self.seq
            )));
        }
        Ok(())
    }

    /// Exchanges every `interval` in a background thread until the first failure or until the
    /// returned handle stops it.
    pub fn drive(mut self, interval: Duration) -> DrivenStream {
        let status = Arc::new(Mutex::new(StreamStatus {
            src: self.src,
            dst: self.dst,
            server: self.server.clone(),
            exchanges: 0,
            last_ok: Instant::now(),
            longest_wait: Duration::ZERO,
            failure: None,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (status, stop) = (Arc::clone(&status), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let result = self.exchange();
                    let mut status = status.lock().expect("stream status lock");
                    match result {
                        Ok(()) => {
                            let now = Instant::now();
                            status.exchanges += 1;
                            status.longest_wait = status.longest_wait.max(now - status.last_ok);
                            status.last_ok = now;
                        }
                        Err(e) => {
                            status.failure = Some((Instant::now(), e));
                            return;
                        }
                    }
                    drop(status);
                    std::thread::sleep(interval);
                }
            })
        };
        DrivenStream {
            status,
            stop,
            thread: Some(thread),
        }
    }
}

/// A line without its newline; EOF before a whole line is [`StreamError::Eof`].
fn read_line(reader: &mut BufReader<TcpStream>) -> Result<String, StreamError> {
    let mut line = String::new();
    loop {
        match reader.read_line(&mut line) {
            Ok(_) if line.ends_with('\n') => {
                line.pop();
                return Ok(line);
            }
            Ok(_) => return Err(StreamError::Eof),
            Err(e) if e.kind() == Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// What a driven stream did so far.
#[derive(Clone, Debug)]
pub struct StreamStatus {
    pub src: SocketAddr,
    /// The service it connected to.
    pub dst: SocketAddr,
    /// The server that greeted the connection; every answer came from it.
    pub server: String,
    /// Successful exchanges.
    pub exchanges: u64,
    /// When the last exchange succeeded (or the stream started driving, before the first).
    pub last_ok: Instant,
    /// The longest time between two successful exchanges (the first counted from the start of
    /// driving), the pause between exchanges included: how long the stream ever stalled.
    pub longest_wait: Duration,
    /// When and how the stream broke, if it did; a broken stream exchanges no more.
    pub failure: Option<(Instant, StreamError)>,
}

/// A [`Stream`] exchanging in its own thread; stopped (and the connection closed) by
/// [`DrivenStream::stop`] or on Drop.
pub struct DrivenStream {
    status: Arc<Mutex<StreamStatus>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DrivenStream {
    /// A snapshot of the stream's status.
    pub fn status(&self) -> StreamStatus {
        self.status.lock().expect("stream status lock").clone()
    }

    /// Stops exchanging, closes the connection and returns the final status.
    pub fn stop(mut self) -> StreamStatus {
        if let Err(panic) = self.join() {
            std::panic::resume_unwind(panic);
        }
        self.status()
    }

    fn join(&mut self) -> std::thread::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(Ok(()), JoinHandle::join)
    }
}

impl Drop for DrivenStream {
    fn drop(&mut self) {
        // Never a second panic from Drop: stop() reports a panicked thread.
        let _ = self.join();
    }
}

/// Many [`Stream`]s to one service, driven together and checked together.
pub struct StreamSet {
    streams: Vec<DrivenStream>,
}

impl StreamSet {
    /// Each stream exchanges a line this often.
    pub const INTERVAL: Duration = Duration::from_millis(50);
    /// The longest a stream may wait for an answer before [`StreamSet::assert_flowing`] calls it
    /// stalled: a single lost segment costs TCP a retransmission timeout (200 ms at least, more
    /// for a SYN), so this is well above what a busy 2-core machine adds to [`Self::INTERVAL`],
    /// and well below what losing packets for a moment costs.
    pub const MAX_WAIT: Duration = Duration::from_millis(1000);

    /// Connects a [`Stream`] from each of `flows` to `dst` inside `ns` (each reads its server's
    /// greeting), then drives them all, each exchanging every [`StreamSet::INTERVAL`].
    pub fn open<A: Into<SocketAddr> + Copy>(
        ns: &Netns,
        flows: &[A],
        dst: impl Into<SocketAddr>,
    ) -> Result<Self> {
        Self::open_with_stall(ns, flows, dst, Stream::STALL)
    }

    /// Like [`StreamSet::open`], each stream broken only after `stall` without an answer
    /// ([`Stream::connect_with_stall`]).
    pub fn open_with_stall<A: Into<SocketAddr> + Copy>(
        ns: &Netns,
        flows: &[A],
        dst: impl Into<SocketAddr>,
        stall: Duration,
    ) -> Result<Self> {
        let dst = dst.into();
        let flows: Vec<SocketAddr> = flows.iter().map(|&f| f.into()).collect();
        let streams = ns.run_in(|| {
            flows
                .iter()
                .map(|&src| Stream::connect_with_stall(src, dst, stall))
                .collect::<Result<Vec<_>>>()
        })?;
        let streams = streams
            .into_iter()
            .map(|s| s.drive(Self::INTERVAL))
            .collect();
        Ok(Self { streams })
    }

    /// A snapshot of every stream's status, in the order of the flows.
    pub fn statuses(&self) -> Vec<StreamStatus> {
        self.streams.iter().map(DrivenStream::status).collect()
    }

    /// Panics unless every stream works: none broke, and none waited [`StreamSet::MAX_WAIT`] or
    /// longer for an answer, ever (see [`StreamStatus::longest_wait`]) or since its last answer.
    /// `when` says when in the test, for the message.
    pub fn assert_flowing(&self, when: &str) {
        let now = Instant::now();
        for status in self.statuses() {
            let stream = format!("{when}: stream {} on {}", status.src, status.server);
            assert_eq!(status.failure, None, "{stream} broke: {status:?}");
            let waiting = now - status.last_ok;
            assert!(
                waiting.max(status.longest_wait) < Self::MAX_WAIT,
                "{stream} stalled: waited {:?} for an answer, {waiting:?} now (less than {:?} \
                 allowed): {status:?}",
                status.longest_wait,
                Self::MAX_WAIT
            );
        }
    }

    /// Panics unless every stream works again after an outage that began at `since`: none broke,
    /// each answered after `since`, and none waited longer than `limit` for an answer, ever.
    pub fn assert_recovered(&self, since: Instant, limit: Duration, when: &str) {
        for status in self.statuses() {
            let stream = format!("{when}: stream {} on {}", status.src, status.server);
            assert_eq!(status.failure, None, "{stream} broke: {status:?}");
            assert!(
                status.last_ok > since,
                "{stream} has not answered since the outage began: {status:?}"
            );
            assert!(
                status.longest_wait < limit,
                "{stream} waited {:?} for an answer (less than {limit:?} allowed): {status:?}",
                status.longest_wait
            );
        }
    }

    /// Total successful exchanges of all the streams so far.
    pub fn exchanges(&self) -> u64 {
        self.statuses().iter().map(|s| s.exchanges).sum()
    }

    /// Stops every stream, closes their connections and returns their final statuses.
    pub fn stop(self) -> Vec<StreamStatus> {
        // All told first, so they close together rather than one interval apart each.
        for s in &self.streams {
            s.stop.store(true, Ordering::Relaxed);
        }
        self.streams.into_iter().map(DrivenStream::stop).collect()
    }
}

/// [`fetch_from`] each of `flows` to `dst`, one after the other, in the CALLING THREAD's
/// namespace (see [`fetch`]): what each server said, or the error, in the order of the flows.
pub fn fetch_each<A: Into<SocketAddr> + Copy>(
    flows: &[A],
    dst: impl Into<SocketAddr> + Copy,
) -> Vec<Result<String>> {
    flows.iter().map(|&src| fetch_from(src, dst)).collect()
}

/// An HTTP response as [`http_get`] read it.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case, with their values, in their order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The value of header `name` (any case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` (HTTP/1.1, `Connection: close`) to `dst` in the CALLING THREAD's namespace (see
/// [`fetch`]), read until the server closes, within [`TIMEOUT`]. Any status is returned; a
/// connection that fails, or an answer that is not HTTP, is an error.
pub fn http_get(dst: SocketAddrV4, path: &str) -> Result<HttpResponse> {
    let deadline = Instant::now() + TIMEOUT;
    let mut stream = connect(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0).into(),
        dst.into(),
    )?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {dst}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .with_context(|| format!("GET http://{dst}{path}: send"))?;
    let reply =
        read_reply(&mut stream, deadline).with_context(|| format!("GET http://{dst}{path}"))?;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = match status_line.split(' ').collect::<Vec<_>>()[..] {
        [version, code, ..] if version.starts_with("HTTP/1.") => code.parse().ok(),
        _ => None,
    };
    let status = status
        .with_context(|| format!("GET http://{dst}{path}: bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// A UDP flow from a chosen SRC:PORT to `lb-testsrv --udp`: each [`UdpFlow::exchange`] sends a
/// sequence number and returns the name of the server that answered it, whichever it is.
pub struct UdpFlow {
    socket: UdpSocket,
    src: SocketAddrV4,
    seq: u64,
}

impl UdpFlow {
    /// A socket bound to `src` and connected to `dst`, in the CALLING THREAD's namespace (see
    /// [`fetch`]).
    pub fn connect(src: SocketAddrV4, dst: SocketAddrV4) -> Result<Self> {
        let socket = UdpSocket::bind(src).with_context(|| format!("bind UDP {src}"))?;
        socket
            .connect(dst)
            .with_context(|| format!("connect UDP {src} -> {dst}"))?;
        socket.set_read_timeout(Some(TIMEOUT))?;
        Ok(Self {
            socket,
            src,
            seq: 0,
        })
    }

    pub fn src(&self) -> SocketAddrV4 {
        self.src
    }

    /// One datagram out, its answer `NAME SEQ` back within [`TIMEOUT`]: the server's name.
    pub fn exchange(&mut self) -> Result<String> {
        self.exchange_sized(0)
    }

    /// Like [`UdpFlow::exchange`], the sequence number padded with leading zeros to `size`
    /// bytes of UDP payload (if shorter): for datagrams of a chosen size.
    pub fn exchange_sized(&mut self, size: usize) -> Result<String> {
        self.seq += 1;
        let seq = format!("{:0>size$}", self.seq);
        self.socket
            .send(seq.as_bytes())
            .with_context(|| format!("UDP {}: send", self.src))?;
        let mut buf = vec![0u8; 65536];
        let n = self
            .socket
            .recv(&mut buf)
            .with_context(|| format!("UDP {}: no answer to {} bytes", self.src, seq.len()))?;
        let answer = String::from_utf8_lossy(&buf[..n]);
        match answer.split_once(' ') {
            Some((name, s)) if s == seq => Ok(name.to_owned()),
            _ => bail!("UDP {}: sent {seq}, got {answer:?}", self.src),
        }
    }

    /// Whether the datagrams leave with the IPv4 "don't fragment" bit (Linux sets it by
    /// default: path MTU discovery, `IP_PMTUDISC_WANT`) or without it (`IP_PMTUDISC_DONT`).
    pub fn set_dont_fragment(&self, on: bool) -> Result<()> {
        let value: libc::c_int = if on {
            libc::IP_PMTUDISC_WANT
        } else {
            libc::IP_PMTUDISC_DONT
        };
        // SAFETY: setsockopt on our own socket with a valid int option value.
        let rc = unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                std::ptr::from_ref(&value).cast(),
                std::mem::size_of_val(&value) as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("UDP {}: IP_MTU_DISCOVER", self.src));
        }
        Ok(())
    }
}

/// New connections tried one after the other in a background thread (in a namespace), each from
/// a fresh flow, recording when each was tried and how it went: what a failover does to clients
/// that connect meanwhile.
pub struct ConnectionProbe {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<ProbeResult>>>,
}

/// One new connection of a [`ConnectionProbe`]: when it started, and the server that answered
/// or why none did.
#[derive(Clone, Debug)]
pub struct ProbeResult {
    pub at: Instant,
    pub flow: SocketAddrV4,
    pub answer: Result<String, String>,
}

impl ConnectionProbe {
    /// Connects from each of `flows` in turn to `dst` inside `ns`, one every `interval`, until
    /// stopped (or the flows run out).
    pub fn start(
        ns: &Netns,
        flows: Vec<SocketAddrV4>,
        dst: SocketAddrV4,
        interval: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            ns.thread(move || {
                let mut results = Vec::new();
                for flow in flows {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let at = Instant::now();
                    let answer = fetch_from(flow, dst).map_err(|e| format!("{e:#}"));
                    results.push(ProbeResult { at, flow, answer });
                    std::thread::sleep(interval.saturating_sub(at.elapsed()));
                }
                results
            })
        };
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns every connection tried, in order.
    pub fn stop(mut self) -> Vec<ProbeResult> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().expect("running").join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for ConnectionProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

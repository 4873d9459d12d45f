//! The sync protocol's messages, byte for byte, and their authentication.
//!
//! One format for both transports: UDP datagrams (flow updates, hellos) and the frames of a
//! full-table transfer over TCP (each prefixed with its length). Every message is
//!
//! ```text
//! header (40 bytes, big-endian)   magic "XLBS", version 1, kind, record count (u16),
//!                                 sender epoch (u64: its start time, unix ns), sequence (u64),
//!                                 sender's clock at sending (u64, unix ns), nonce (u64)
//! body                            flow records, or a hello, or a transfer's end
//! tag (32 bytes)                  HMAC-SHA256(key, header and body)
//! ```
//!
//! The tag is checked before a single byte of the body is looked at. A flow record names the
//! flow and its real server by address (ids differ between directors):
//!
//! ```text
//! op (1: bind, 2: close), flags (1: FIN seen, 2: established), protocol, families (bit 0: the flow is IPv6,
//! bit 1: the real server is), client port, virtual port, real port (u16 each), age (u32, µs the
//! event waited on the sender), client address, virtual address, real address (4 or 16 bytes)
//! ```
//!
//! 26 bytes for an IPv4 flow, so a datagram of at most [`MAX_DATAGRAM`] bytes carries 51.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

const MAGIC: [u8; 4] = *b"XLBS";
const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 40;
pub const TAG_LEN: usize = 32;
/// Largest UDP payload sent: fits a 1500-byte MTU with IPv4 or IPv6 and UDP headers.
pub const MAX_DATAGRAM: usize = 1400;
/// Largest frame of a full-table transfer (TCP): many records per HMAC.
pub const MAX_FRAME: usize = 64 * 1024;
/// Fewest bytes a key may have: an HMAC key is only as strong as its entropy.
pub const MIN_KEY_LEN: usize = 16;

/// What a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Flow records, sent as the datapath binds and closes flows.
    Flows = 1,
    /// Every second: "I am here", with the sender's configuration digest.
    Hello = 2,
    /// A full-table transfer's first frame, from the server: its challenge (the nonce).
    Challenge = 3,
    /// The requester's answer: send me your table (the nonce is the challenge).
    Request = 4,
    /// Records of a full-table transfer.
    Table = 5,
    /// The transfer's end, with the number of records sent.
    TableEnd = 6,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Kind::Flows,
            2 => Kind::Hello,
            3 => Kind::Challenge,
            4 => Kind::Request,
            5 => Kind::Table,
            6 => Kind::TableEnd,
            _ => return None,
        })
    }
}

/// [`Record::op`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// The flow goes to this real server (new, still alive, or its FIN was seen).
    Bind = 1,
    /// The flow was reset: forget it.
    Close = 2,
}

/// One flow as directors tell each other about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub op: Op,
    /// A FIN was seen: the shorter timeout applies.
    pub fin: bool,
    /// The TCP handshake completed (an active connection, until its FIN).
    pub established: bool,
    pub proto: u8,
    pub client: IpAddr,
    pub cport: u16,
    pub vip: IpAddr,
    pub vport: u16,
    pub real: IpAddr,
    pub rport: u16,
    /// How long the event waited on the sender before it was sent, microseconds (saturating).
    pub age_us: u32,
}

impl Record {
    const FIXED: usize = 14;

    /// Its size on the wire, bytes.
    pub fn wire_len(&self) -> usize {
        Self::FIXED + 2 * addr_len(&self.client) + addr_len(&self.real)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let fam = (self.client.is_ipv6() as u8) | ((self.real.is_ipv6() as u8) << 1);
        let flags = self.fin as u8 | (self.established as u8) << 1;
        out.extend_from_slice(&[self.op as u8, flags, self.proto, fam]);
        for p in [self.cport, self.vport, self.rport] {
            out.extend_from_slice(&p.to_be_bytes());
        }
        out.extend_from_slice(&self.age_us.to_be_bytes());
        for a in [self.client, self.vip, self.real] {
            match a {
                IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
                IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, Reject> {
        let [op, flags, proto, fam] = r.array::<4>()?;
        let op = match op {
            1 => Op::Bind,
            2 => Op::Close,
            _ => return Err(Reject::Malformed("unknown flow operation")),
        };
        if flags > 3 || fam > 3 {
            return Err(Reject::Malformed("unknown flow flags"));
        }
        let (cport, vport, rport) = (r.u16()?, r.u16()?, r.u16()?);
        let age_us = r.u32()?;
        let flow_v6 = fam & 1 != 0;
        let (client, vip) = (r.addr(flow_v6)?, r.addr(flow_v6)?);
        let real = r.addr(fam & 2 != 0)?;
        Ok(Self {
            op,
            fin: flags & 1 != 0,
            established: flags & 2 != 0,
            proto,
            client,
            cport,
            vip,
            vport,
            real,
            rport,
            age_us,
        })
    }
}

fn addr_len(a: &IpAddr) -> usize {
    if a.is_ipv6() {
        16
    } else {
        4
    }
}

/// A hello's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// SHA-256 of the sender's services and real servers (see `Directory::digest`).
    pub digest: [u8; 32],
    /// Whether the sender's table is current (it is not while it waits for a full table).
    pub current: bool,
}

/// What a message carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Flows(Vec<Record>),
    Hello(Hello),
    Challenge,
    Request,
    Table(Vec<Record>),
    TableEnd { total: u64 },
}

impl Body {
    fn kind(&self) -> Kind {
        match self {
            Body::Flows(_) => Kind::Flows,
            Body::Hello(_) => Kind::Hello,
            Body::Challenge => Kind::Challenge,
            Body::Request => Kind::Request,
            Body::Table(_) => Kind::Table,
            Body::TableEnd { .. } => Kind::TableEnd,
        }
    }
}

/// The header fields a sender sets per message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub epoch: u64,
    pub seq: u64,
    pub sent_ns: u64,
    pub nonce: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub body: Body,
}

/// Why a message was not accepted; each is counted under its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Too short for a tag, or the tag is not the key's: never looked at further.
    Auth,
    /// Authentic but not well formed (a peer running something else).
    Malformed(&'static str),
}

impl Reject {
    pub fn name(&self) -> &'static str {
        match self {
            Reject::Auth => "auth",
            Reject::Malformed(_) => "malformed",
        }
    }
}

/// The shared secret.
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A key from the key file's content: surrounding whitespace (a trailing newline) is not
    /// part of it; it must have at least [`MIN_KEY_LEN`] bytes.
    pub fn new(bytes: &[u8]) -> Result<Self, String> {
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < MIN_KEY_LEN {
            return Err(format!(
                "is too short ({} bytes): use at least {MIN_KEY_LEN} random bytes, e.g. `head -c 32 /dev/urandom | base64`",
                trimmed.len()
            ));
        }
        Ok(Self(trimmed.to_vec()))
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }
}

/// The message's bytes with its tag.
pub fn encode(key: &Key, msg: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_DATAGRAM);
    let count = match &msg.body {
        Body::Flows(r) | Body::Table(r) => r.len(),
        _ => 0,
    };
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(msg.body.kind() as u8);
    out.extend_from_slice(&(count as u16).to_be_bytes());
    let h = &msg.header;
    for v in [h.epoch, h.seq, h.sent_ns, h.nonce] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    match &msg.body {
        Body::Flows(records) | Body::Table(records) => {
            for r in records {
                r.encode(&mut out);
            }
        }
        Body::Hello(hello) => {
            out.extend_from_slice(&hello.digest);
            out.push(hello.current as u8);
        }
        Body::Challenge | Body::Request => {}
        Body::TableEnd { total } => out.extend_from_slice(&total.to_be_bytes()),
    }
    let mut mac = key.mac();
    mac.update(&out);
    out.extend_from_slice(&mac.finalize().into_bytes());
    out
}

/// Checks the tag, then parses. Nothing of an unauthenticated message is interpreted.
pub fn decode(key: &Key, bytes: &[u8]) -> Result<Message, Reject> {
    if bytes.len() < HEADER_LEN + TAG_LEN {
        return Err(Reject::Auth);
    }
    let (data, tag) = bytes.split_at(bytes.len() - TAG_LEN);
    let mut mac = key.mac();
    mac.update(data);
    mac.verify_slice(tag).map_err(|_| Reject::Auth)?;

    let mut r = Reader(data);
    if r.array::<4>()? != MAGIC {
        return Err(Reject::Malformed("not a sync message"));
    }
    if r.array::<1>()?[0] != VERSION {
        return Err(Reject::Malformed("unknown protocol version"));
    }
    let kind = Kind::from_u8(r.array::<1>()?[0]).ok_or(Reject::Malformed("unknown kind"))?;
    let count = r.u16()? as usize;
    let header = Header {
        epoch: r.u64()?,
        seq: r.u64()?,
        sent_ns: r.u64()?,
        nonce: r.u64()?,
    };
    let records = |r: &mut Reader<'_>| -> Result<Vec<Record>, Reject> {
        // Each record has at least FIXED + 12 bytes: a count the body cannot hold is a lie.
        if count > r.0.len() / (Record::FIXED + 12) {
            return Err(Reject::Malformed("record count larger than the message"));
        }
        (0..count).map(|_| Record::decode(r)).collect()
    };
    let body = match kind {
        Kind::Flows => Body::Flows(records(&mut r)?),
        Kind::Table => Body::Table(records(&mut r)?),
        Kind::Hello => Body::Hello(Hello {
            digest: r.array::<32>()?,
            current: match r.array::<1>()?[0] {
                0 => false,
                1 => true,
                _ => return Err(Reject::Malformed("bad hello")),
            },
        }),
        Kind::Challenge => Body::Challenge,
        Kind::Request => Body::Request,
        Kind::TableEnd => Body::TableEnd { total: r.u64()? },
    };
    if !r.0.is_empty() {
        return Err(Reject::Malformed("trailing bytes"));
    }
    if count != 0 && !matches!(kind, Kind::Flows | Kind::Table) {
        return Err(Reject::Malformed("records in a message that has none"));
    }
    Ok(Message { header, body })
}

/// Bounds-checked reads from a message.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Reject> {
        if self.0.len() < N {
            return Err(Reject::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        Ok(head.try_into().expect("N bytes"))
    }

    fn u16(&mut self) -> Result<u16, Reject> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, Reject> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, Reject> {
        self.array().map(u64::from_be_bytes)
    }

    fn addr(&mut self, v6: bool) -> Result<IpAddr, Reject> {
        Ok(if v6 {
            IpAddr::V6(Ipv6Addr::from(self.array::<16>()?))
        } else {
            IpAddr::V4(Ipv4Addr::from(self.array::<4>()?))
        })
    }
}

/// Packs records into messages of at most `limit` bytes each (tag included).
pub fn pack(records: &[Record], limit: usize) -> Vec<&[Record]> {
    let room = limit - HEADER_LEN - TAG_LEN;
    let mut out = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, r) in records.iter().enumerate() {
        if used + r.wire_len() > room || i - start == u16::MAX as usize {
            out.push(&records[start..i]);
            (start, used) = (i, 0);
        }
        used += r.wire_len();
    }
    if start < records.len() {
        out.push(&records[start..]);
    }
    out
}

/// Per peer: which (epoch, sequence) pairs were accepted, so a recorded message replayed later is
/// refused. A new epoch (the peer restarted) starts a new window; an older epoch is refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    epoch: u64,
    top: u64,
    /// Bit i: sequence `top - i` was seen.
    seen: u64,
}

/// What [`ReplayWindow::accept`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fresh {
    /// A new message of the epoch the window knows.
    Yes,
    /// The first message of a new epoch: the peer (re)started.
    NewEpoch,
    /// Seen before, or too old: a replay.
    Replay,
}

impl ReplayWindow {
    pub fn accept(&mut self, epoch: u64, seq: u64) -> Fresh {
        if epoch > self.epoch {
            *self = Self {
                epoch,
                top: seq,
                seen: 1,
            };
            return Fresh::NewEpoch;
        }
        if epoch < self.epoch {
            return Fresh::Replay;
        }
        if seq > self.top {
            let shift = seq - self.top;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift } | 1;
            self.top = seq;
            return Fresh::Yes;
        }
        let back = self.top - seq;
        if back >= 64 || self.seen & (1 << back) != 0 {
            return Fresh::Replay;
        }
        self.seen |= 1 << back;
        Fresh::Yes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::new(b"0123456789abcdef0123456789abcdef\n").unwrap()
    }

    fn header() -> Header {
        Header {
            epoch: 1_700_000_000_000_000_000,
            seq: 7,
            sent_ns: 1_700_000_000_500_000_000,
            nonce: 0,
        }
    }

    fn record(i: u16) -> Record {
        Record {
            op: Op::Bind,
            fin: i.is_multiple_of(3),
            established: i.is_multiple_of(2),
            proto: 6,
            client: IpAddr::V4(Ipv4Addr::new(10, 1, (i >> 8) as u8, i as u8)),
            cport: 40000 + i,
            vip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100)),
            vport: 80,
            real: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 11)),
            rport: 80,
            age_us: 123 * i as u32,
        }
    }

    #[test]
    fn every_kind_round_trips() {
        let v6 = Record {
            client: "2001:db8::1".parse().unwrap(),
            vip: "2001:db8::100".parse().unwrap(),
            real: "10.0.0.12".parse().unwrap(),
            op: Op::Close,
            ..record(1)
        };
        for body in [
            Body::Flows(vec![record(1), record(2), v6]),
            Body::Table((0..100).map(record).collect()),
            Body::Hello(Hello {
                digest: [7; 32],
                current: true,
            }),
            Body::Challenge,
            Body::Request,
            Body::TableEnd { total: 12345 },
        ] {
            let msg = Message {
                header: header(),
                body,
            };
            assert_eq!(decode(&key(), &encode(&key(), &msg)), Ok(msg));
        }
    }

    #[test]
    fn an_ipv4_flow_takes_26_bytes_and_51_fit_a_datagram() {
        assert_eq!(record(1).wire_len(), 26);
        let records: Vec<Record> = (0..200).map(record).collect();
        let packs = pack(&records, MAX_DATAGRAM);
        assert_eq!(packs[0].len(), 51);
        assert_eq!(packs.iter().map(|p| p.len()).sum::<usize>(), 200);
        for p in packs {
            let msg = Message {
                header: header(),
                body: Body::Flows(p.to_vec()),
            };
            assert!(encode(&key(), &msg).len() <= MAX_DATAGRAM);
        }
    }

    #[test]
    fn a_wrong_key_or_any_changed_byte_is_refused_unread() {
        let msg = Message {
            header: header(),
            body: Body::Flows(vec![record(1), record(2)]),
        };
        let bytes = encode(&key(), &msg);
        let other = Key::new(b"another key, long enough").unwrap();
        assert_eq!(decode(&other, &bytes), Err(Reject::Auth));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert_eq!(decode(&key(), &bad), Err(Reject::Auth), "byte {i} flipped");
        }
        for len in 0..bytes.len() {
            assert_eq!(
                decode(&key(), &bytes[..len]),
                Err(Reject::Auth),
                "cut at {len}"
            );
        }
    }

    /// Authentic garbage (a peer with the key but a broken encoder) is refused as malformed,
    /// never half-read: every way of lying about lengths.
    #[test]
    fn authentic_but_malformed_messages_are_refused() {
        let sign = |data: &[u8]| {
            let mut mac = key().mac();
            mac.update(data);
            let mut out = data.to_vec();
            out.extend_from_slice(&mac.finalize().into_bytes());
            out
        };
        let good = encode(
            &key(),
            &Message {
                header: header(),
                body: Body::Flows(vec![record(1)]),
            },
        );
        let data = &good[..good.len() - TAG_LEN];
        // Every truncation of the body, re-signed.
        for len in 0..data.len() {
            assert!(
                matches!(
                    decode(&key(), &sign(&data[..len])),
                    Err(Reject::Malformed(_)) | Err(Reject::Auth)
                ),
                "cut at {len}"
            );
        }
        let mut lie = data.to_vec();
        lie[6..8].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(
            decode(&key(), &sign(&lie)),
            Err(Reject::Malformed("record count larger than the message"))
        );
        let mut extra = data.to_vec();
        extra.push(0);
        assert_eq!(
            decode(&key(), &sign(&extra)),
            Err(Reject::Malformed("trailing bytes"))
        );
        let mut op = data.to_vec();
        op[HEADER_LEN] = 9;
        assert_eq!(
            decode(&key(), &sign(&op)),
            Err(Reject::Malformed("unknown flow operation"))
        );
        let mut version = data.to_vec();
        version[4] = 2;
        assert_eq!(
            decode(&key(), &sign(&version)),
            Err(Reject::Malformed("unknown protocol version"))
        );
        let mut kind = data.to_vec();
        kind[5] = 0;
        assert_eq!(
            decode(&key(), &sign(&kind)),
            Err(Reject::Malformed("unknown kind"))
        );
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(Key::new(b"short\n")
            .unwrap_err()
            .contains("too short (5 bytes)"));
        assert!(Key::new(b"  \n").is_err());
        assert!(Key::new(b"sixteen bytes!!!").is_ok());
    }

    #[test]
    fn the_replay_window_refuses_repeats_and_old_epochs() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.accept(10, 5), Fresh::NewEpoch);
        assert_eq!(w.accept(10, 5), Fresh::Replay);
        assert_eq!(w.accept(10, 7), Fresh::Yes);
        assert_eq!(w.accept(10, 6), Fresh::Yes, "reordered, not seen before");
        assert_eq!(w.accept(10, 6), Fresh::Replay);
        assert_eq!(w.accept(10, 200), Fresh::Yes);
        assert_eq!(w.accept(10, 100), Fresh::Replay, "older than the window");
        assert_eq!(w.accept(9, 1000), Fresh::Replay, "an older run of the peer");
        assert_eq!(w.accept(11, 1), Fresh::NewEpoch, "the peer restarted");
        assert_eq!(w.accept(10, 300), Fresh::Replay);
    }
}

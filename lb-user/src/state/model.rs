//! The vocabulary of the desired state, named after LVS: services, real servers, schedulers,
//! forwarding methods.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::IPPROTO_TCP,
            Protocol::Udp => lb_common::IPPROTO_UDP,
        }
    }
}

impl Protocol {
    /// `tcp` or `udp`: the name in paths, labels and config files.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// A virtual service's address: what `-t`/`-u VIP:PORT` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceAddr {
    pub protocol: Protocol,
    pub vip: IpAddr,
    pub port: u16,
}

/// An address as the maps hold it: IPv4 in its IPv4-mapped IPv6 form, IPv6 as it is.
pub fn addr_of(ip: IpAddr) -> lb_common::Addr {
    match ip {
        IpAddr::V4(v4) => lb_common::addr_from_v4(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address a map holds: IPv4 if it is IPv4-mapped, else IPv6 ([`addr_of`] undone).
pub fn ip_of(addr: &lb_common::Addr) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(*addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

impl ServiceAddr {
    pub fn key(&self) -> lb_common::ServiceKey {
        lb_common::ServiceKey {
            vip: addr_of(self.vip),
            port: self.port,
            proto: self.protocol.number(),
            _pad: 0,
        }
    }
}

impl fmt::Display for ServiceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}",
            self.protocol,
            SocketAddr::new(self.vip, self.port)
        )
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    /// Source hashing: a client address always goes to the same real server.
    #[default]
    Sh,
    /// Maglev consistent hashing: a server coming or going moves few other flows.
    Mh,
    /// Round robin: the available real servers in turn.
    Rr,
    /// Weighted round robin: in turn, as often as their weights say (IPVS's sequence).
    Wrr,
    /// Least connections: the fewest active (x256) plus inactive connections.
    Lc,
    /// Weighted least connections: the fewest connections for the weight (ipvsadm's default).
    Wlc,
    /// Shortest expected delay: the fewest active connections plus one, for the weight.
    Sed,
    /// Never queue: an idle real server if there is one, else as `sed`.
    Nq,
    /// Destination hashing: the destination address picks the real server (cache clusters).
    Dh,
    /// Locality-based least connections: a destination keeps its real server until that one is
    /// overloaded while another is half idle; then the least loaded (cache clusters).
    Lblc,
    /// The same with a set of real servers per destination, grown when its least loaded member
    /// is too busy.
    Lblcr,
    /// Weighted failover: the available real server of the highest weight.
    Fo,
    /// Weighted overflow: the highest weight whose active connections are under its weight.
    Ovf,
}

impl Scheduler {
    pub const ALL: [Scheduler; 13] = [
        Scheduler::Sh,
        Scheduler::Mh,
        Scheduler::Rr,
        Scheduler::Wrr,
        Scheduler::Lc,
        Scheduler::Wlc,
        Scheduler::Sed,
        Scheduler::Nq,
        Scheduler::Dh,
        Scheduler::Lblc,
        Scheduler::Lblcr,
        Scheduler::Fo,
        Scheduler::Ovf,
    ];

    pub fn id(self) -> u8 {
        use lb_common::*;
        match self {
            Scheduler::Sh => SCHED_SH,
            Scheduler::Mh => SCHED_MH,
            Scheduler::Rr => SCHED_RR,
            Scheduler::Wrr => SCHED_WRR,
            Scheduler::Lc => SCHED_LC,
            Scheduler::Wlc => SCHED_WLC,
            Scheduler::Sed => SCHED_SED,
            Scheduler::Nq => SCHED_NQ,
            Scheduler::Dh => SCHED_DH,
            Scheduler::Lblc => SCHED_LBLC,
            Scheduler::Lblcr => SCHED_LBLCR,
            Scheduler::Fo => SCHED_FO,
            Scheduler::Ovf => SCHED_OVF,
        }
    }

    /// ipvsadm's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Sh => "sh",
            Scheduler::Mh => "mh",
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Lc => "lc",
            Scheduler::Wlc => "wlc",
            Scheduler::Sed => "sed",
            Scheduler::Nq => "nq",
            Scheduler::Dh => "dh",
            Scheduler::Lblc => "lblc",
            Scheduler::Lblcr => "lblcr",
            Scheduler::Fo => "fo",
            Scheduler::Ovf => "ovf",
        }
    }

    /// Whether the real server a new flow gets follows from the flow alone (a hash), so that
    /// `xdplb simulate` can answer for any flow; the others depend on a position or on loads.
    pub fn deterministic(self) -> bool {
        matches!(self, Scheduler::Sh | Scheduler::Mh | Scheduler::Dh)
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// What a hashing scheduler hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Hash {
    /// Source and destination address and port, and protocol: flows spread evenly.
    Flow,
    /// The client address only: a client sticks to one real server (like `sh`).
    Src,
}

impl Hash {
    pub fn id(self) -> u8 {
        match self {
            Hash::Flow => lb_common::HASH_FLOW,
            Hash::Src => lb_common::HASH_SRC,
        }
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Hash::Flow => "flow",
            Hash::Src => "src",
        })
    }
}

/// The scheduler a `service add|edit` asks for; `None` takes the default (add) or keeps the
/// current value (edit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSpec {
    pub scheduler: Option<Scheduler>,
    /// Maglev table size (`mh` only).
    pub mh_size: Option<u32>,
    pub hash: Option<Hash>,
    /// Persistence timeout in seconds (ipvsadm -p); 0 turns persistence off.
    #[serde(default)]
    pub persistent: Option<u32>,
    /// The netmask a persistent client's address is grouped by (ipvsadm -M).
    #[serde(default)]
    pub netmask: Option<Netmask>,
}

/// A persistent service's settings (ipvsadm -p TIMEOUT -M NETMASK).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persistence {
    /// Seconds a client's template outlives its last connection.
    pub timeout: u32,
    /// Clients whose addresses agree under this mask share a template: dotted for an IPv4
    /// service, a prefix length for an IPv6 one (see [`Netmask::for_family`]).
    pub netmask: Netmask,
}

impl Persistence {
    /// ipvsadm's default: 300 s.
    pub const DEFAULT_TIMEOUT: u32 = 300;

    /// The netmask over the datapath's 16-byte addresses. The netmask is kept in its service's
    /// family's form: a prefix length only for an IPv6 service.
    pub fn mask(&self) -> [u8; 16] {
        self.netmask
            .bytes(matches!(self.netmask, Netmask::Prefix(_)))
    }
}

/// A persistence netmask as ipvsadm takes it (-M): a dotted mask (IPv4) or a prefix length
/// (IPv6, and IPv4 too). Written as ipvsadm lists it: dotted for IPv4 services, the length for
/// IPv6 ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Netmask {
    Dotted(Ipv4Addr),
    Prefix(u8),
}

impl Netmask {
    /// One client address per template: ipvsadm's default for the family.
    pub fn single(v6: bool) -> Netmask {
        match v6 {
            true => Netmask::Prefix(128),
            false => Netmask::Dotted(Ipv4Addr::BROADCAST),
        }
    }

    /// The prefix length this mask keeps.
    pub fn prefix_len(self) -> u8 {
        match self {
            Netmask::Dotted(m) => u32::from(m).leading_ones() as u8,
            Netmask::Prefix(n) => n,
        }
    }

    /// This mask for a service of the family (`v6`) in the form it is kept and listed in; an
    /// error says why it does not fit the family.
    pub fn for_family(self, v6: bool) -> Result<Netmask, String> {
        match (self, v6) {
            (Netmask::Dotted(m), false) => {
                let bits = u32::from(m);
                if bits.leading_ones() + bits.trailing_zeros() != 32 {
                    return Err(format!("{m} is not a netmask (ones, then zeros)"));
                }
                Ok(self)
            }
            (Netmask::Dotted(m), true) => Err(format!(
                "netmask {m} is an IPv4 mask: an IPv6 service takes a prefix length (-M 64)"
            )),
            (Netmask::Prefix(n), false) if n <= 32 => Ok(Netmask::Dotted(Ipv4Addr::from(
                u32::MAX.checked_shl(32 - u32::from(n)).unwrap_or(0),
            ))),
            (Netmask::Prefix(n), false) => Err(format!(
                "netmask /{n} is longer than an IPv4 address (0..=32)"
            )),
            (Netmask::Prefix(n), true) if n <= 128 => Ok(self),
            (Netmask::Prefix(n), true) => Err(format!(
                "netmask /{n} is longer than an IPv6 address (0..=128)"
            )),
        }
    }

    /// Whether the mask, in its family's form ([`Netmask::for_family`]), keeps every bit of a
    /// client address: ipvsadm's default, left out of listings.
    pub fn is_single(self) -> bool {
        self == Netmask::single(false) || self == Netmask::single(true)
    }

    /// The mask over the datapath's 16-byte addresses: an IPv4 address is kept in the last four
    /// bytes, so the first twelve are kept whole.
    pub fn bytes(self, v6: bool) -> [u8; 16] {
        let keep = u32::from(self.prefix_len()) + if v6 { 0 } else { 96 };
        let bits = u128::MAX.checked_shl(128 - keep.min(128)).unwrap_or(0);
        bits.to_be_bytes()
    }

    /// `addr` with the bits this mask drops cleared.
    pub fn apply(self, addr: IpAddr) -> IpAddr {
        match addr {
            IpAddr::V4(a) => {
                let m = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len().min(32)))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
            }
            IpAddr::V6(a) => {
                let m = u128::from_be_bytes(self.bytes(true));
                IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a) & m))
            }
        }
    }
}

impl fmt::Display for Netmask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Netmask::Dotted(m) => write!(f, "{m}"),
            Netmask::Prefix(n) => write!(f, "{n}"),
        }
    }
}

impl std::str::FromStr for Netmask {
    type Err = String;

    /// `255.255.255.0`, `64` or `/64`.
    fn from_str(text: &str) -> Result<Netmask, String> {
        if text.contains('.') {
            return text
                .parse()
                .map(Netmask::Dotted)
                .map_err(|_| format!("'{text}' is not a netmask"));
        }
        match text.strip_prefix('/').unwrap_or(text).parse::<u8>() {
            Ok(n) if n <= 128 => Ok(Netmask::Prefix(n)),
            _ => Err(format!(
                "'{text}' is not a netmask (a dotted IPv4 mask or a prefix length 0..=128)"
            )),
        }
    }
}

impl Serialize for Netmask {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Netmask {
    /// A string (either form) or, in a config file, a bare prefix length.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Netmask, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            Len(u8),
            Text(String),
        }
        match Text::deserialize(d)? {
            Text::Len(n) => Netmask::Prefix(n).to_string().parse(),
            Text::Text(t) => t.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

/// Forwarding method, ipvsadm's `-g`, `-i` and `-m`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forward {
    /// LVS/DR, "gatewaying": rewrite the destination MAC, leave the IP packet alone.
    #[default]
    Route,
    /// LVS/TUN: wrap the packet in IPIP to the real server, wherever it is routable.
    Tunnel,
    /// LVS/NAT, "masquerading": rewrite the destination to the real server's address and port;
    /// its replies come back through the director, which rewrites their source.
    #[serde(alias = "nat")]
    Masq,
}

impl Forward {
    pub fn method(self) -> u8 {
        match self {
            Forward::Route => lb_common::FWD_DR,
            Forward::Tunnel => lb_common::FWD_TUN,
            Forward::Masq => lb_common::FWD_NAT,
        }
    }

    /// Whether the packet reaches the real server with the destination the client sent it to,
    /// so the real server must hold the VIP and listen on the service's port (DR, TUN).
    pub fn keeps_destination(self) -> bool {
        self != Forward::Masq
    }
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Forward::Route => "Route",
            Forward::Tunnel => "Tunnel",
            Forward::Masq => "Masq",
        })
    }
}

/// An Ethernet address, shown and parsed as aa:bb:cc:dd:ee:ff.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid MAC address '{s}': expected six hex bytes like 02:00:00:00:00:01");
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut mac {
            let p = parts.next().ok_or_else(bad)?;
            if p.is_empty() || p.len() > 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(mac))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

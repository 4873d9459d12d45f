//! Source address and port ranges: `10.1.0.0/16`, `10.1.0.1-10.1.3.255`, `10.1.0.7`;
//! `1024-65535`, `5000`. Bounds are inclusive; an empty range is an error.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Consecutive IPv4 addresses, `first ..= last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrRange {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl AddrRange {
    /// One address.
    pub fn single(addr: Ipv4Addr) -> Self {
        Self {
            first: addr,
            last: addr,
        }
    }

    /// How many addresses (1 ..= 2^32).
    pub fn len(&self) -> u64 {
        u32::from(self.last) as u64 - u32::from(self.first) as u64 + 1
    }

    /// Never: a range holds at least one address.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&addr)
    }
}

impl FromStr for AddrRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let addr = |a: &str| -> Result<Ipv4Addr, String> {
            a.trim()
                .parse()
                .map_err(|_| format!("'{}' is not an IPv4 address", a.trim()))
        };
        if let Some((net, len)) = s.split_once('/') {
            let net = addr(net)?;
            let len: u32 = match len.parse() {
                Ok(l) if l <= 32 => l,
                _ => return Err(format!("'/{len}' is not a prefix length (0..=32)")),
            };
            let host_bits = u32::MAX.checked_shr(len).unwrap_or(0);
            let first = u32::from(net);
            if first & host_bits != 0 {
                let masked = Ipv4Addr::from(first & !host_bits);
                return Err(format!(
                    "{s} has host bits set: the network is {masked}/{len}"
                ));
            }
            return Ok(Self {
                first: net,
                last: Ipv4Addr::from(first | host_bits),
            });
        }
        if let Some((a, b)) = s.split_once('-') {
            let (first, last) = (addr(a)?, addr(b)?);
            if first > last {
                return Err(format!("empty address range {s}: {first} is above {last}"));
            }
            return Ok(Self { first, last });
        }
        Ok(Self::single(addr(s)?))
    }
}

impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Consecutive ports, `first ..= last`, never port 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// The unprivileged ports, the default source ports.
    pub const EPHEMERAL: PortRange = PortRange {
        first: 1024,
        last: 65535,
    };

    pub fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }

    /// How many ports (1 ..= 65535).
    pub fn len(&self) -> u64 {
        self.last as u64 - self.first as u64 + 1
    }

    /// Never: a range holds at least one port.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let port = |p: &str| -> Result<u16, String> {
            match p.trim().parse::<u16>() {
                Ok(0) => Err("port 0 cannot be a source port".to_string()),
                Ok(p) => Ok(p),
                Err(_) => Err(format!("'{}' is not a port number (1..=65535)", p.trim())),
            }
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(s)?;
                (p, p)
            }
        };
        if first > last {
            return Err(format!("empty port range {s}: {first} is above {last}"));
        }
        Ok(Self { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Result<AddrRange, String> {
        s.parse()
    }

    #[test]
    fn prefixes() {
        let r = addr("10.1.0.0/16").unwrap();
        assert_eq!(r.first, Ipv4Addr::new(10, 1, 0, 0));
        assert_eq!(r.last, Ipv4Addr::new(10, 1, 255, 255));
        assert_eq!(r.len(), 65536);
        assert_eq!(addr("10.1.2.3/32").unwrap().len(), 1);
        let all = addr("0.0.0.0/0").unwrap();
        assert_eq!((all.len(), all.last), (1 << 32, Ipv4Addr::BROADCAST));
        assert_eq!(
            addr("10.1.0.5/16").unwrap_err(),
            "10.1.0.5/16 has host bits set: the network is 10.1.0.0/16"
        );
        assert!(addr("10.1.0.0/33").unwrap_err().contains("prefix length"));
        assert!(addr("10.1.0/16")
            .unwrap_err()
            .contains("not an IPv4 address"));
    }

    #[test]
    fn spans_and_single_addresses() {
        let r = addr("10.1.0.1-10.1.3.255").unwrap();
        assert_eq!(r.len(), 3 * 256 + 255);
        assert!(r.contains(Ipv4Addr::new(10, 1, 2, 0)));
        assert!(!r.contains(Ipv4Addr::new(10, 1, 0, 0)));
        assert_eq!(r.to_string(), "10.1.0.1-10.1.3.255");
        let one = addr("192.0.2.7").unwrap();
        assert_eq!((one.len(), one.to_string()), (1, "192.0.2.7".to_string()));
        assert_eq!(
            addr("10.0.0.9-10.0.0.1").unwrap_err(),
            "empty address range 10.0.0.9-10.0.0.1: 10.0.0.9 is above 10.0.0.1"
        );
        assert!(addr("10.0.0.1-").is_err());
    }

    #[test]
    fn ports() {
        let p: PortRange = "1024-65535".parse().unwrap();
        assert_eq!((p, p.len()), (PortRange::EPHEMERAL, 64512));
        assert_eq!("80".parse::<PortRange>().unwrap(), PortRange::single(80));
        assert_eq!(
            "2000-1000".parse::<PortRange>().unwrap_err(),
            "empty port range 2000-1000: 2000 is above 1000"
        );
        assert!("0-10".parse::<PortRange>().unwrap_err().contains("port 0"));
        assert!("70000"
            .parse::<PortRange>()
            .unwrap_err()
            .contains("not a port"));
        assert_eq!(PortRange::single(5).to_string(), "5");
        assert_eq!(p.to_string(), "1024-65535");
    }
}

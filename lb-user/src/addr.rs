//! Addresses as operators write them, IPv4 or IPv6: `10.0.0.100:80`, `[2001:db8::100]:80`, a
//! real server as `RIP`, `RIP:PORT`, `2001:db8::11` or `[2001:db8::11]:8080` (ipvsadm's forms).
//! Shared by the CLI and the ipvsadm front end; errors are one line, for clap to print.

use std::net::{IpAddr, SocketAddr};

/// An IPv4 or IPv6 address, brackets allowed around an IPv6 one.
pub fn parse_ip(s: &str) -> Result<IpAddr, String> {
    let bare = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    bare.parse()
        .map_err(|_| format!("'{s}' is not an IP address"))
}

/// A port; 0 (every port of the VIP, for persistent services) is checked by the agent, which
/// knows whether the service is persistent.
pub fn parse_port(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .map_err(|_| format!("'{s}' is not a port number (0..=65535)"))
}

/// `VIP:PORT`, the VIP of an IPv6 service in brackets.
pub fn parse_service(s: &str) -> Result<SocketAddr, String> {
    match split_port(s) {
        Some((ip, Some(port))) => Ok(SocketAddr::new(parse_ip(ip)?, parse_port(port)?)),
        _ => Err(format!(
            "'{s}': expected VIP:PORT, e.g. 10.0.0.100:80 or [2001:db8::100]:80"
        )),
    }
}

/// `RIP` or `RIP:PORT`, an IPv6 address bare or in brackets (with a port, in brackets).
pub fn parse_real(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(ip) = parse_ip(s) {
        return Ok((ip, None));
    }
    match split_port(s) {
        Some((ip, port)) => Ok((parse_ip(ip)?, port.map(parse_port).transpose()?)),
        None => Err(format!("'{s}' is not an IP address")),
    }
}

/// `ADDR:PORT` or `[ADDR]:PORT` split at the port's colon (None when there is no port).
fn split_port(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        return match after {
            "" => Some((ip, None)),
            _ => Some((ip, Some(after.strip_prefix(':')?))),
        };
    }
    let (ip, port) = s.rsplit_once(':')?;
    // A bare IPv6 address has colons of its own: only an IPv4 one takes a port unbracketed.
    (!ip.contains(':')).then_some((ip, Some(port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_families_in_every_form() {
        let v6: IpAddr = "2001:db8::11".parse().unwrap();
        let v4: IpAddr = "10.0.0.11".parse().unwrap();
        assert_eq!(parse_real("10.0.0.11"), Ok((v4, None)));
        assert_eq!(parse_real("10.0.0.11:8080"), Ok((v4, Some(8080))));
        assert_eq!(parse_real("2001:db8::11"), Ok((v6, None)));
        assert_eq!(parse_real("[2001:db8::11]"), Ok((v6, None)));
        assert_eq!(parse_real("[2001:db8::11]:8080"), Ok((v6, Some(8080))));
        assert_eq!(
            parse_service("[2001:db8::100]:80"),
            Ok("[2001:db8::100]:80".parse().unwrap())
        );
        assert_eq!(
            parse_service("10.0.0.100:80"),
            Ok("10.0.0.100:80".parse().unwrap())
        );
    }

    #[test]
    fn malformed_addresses_name_what_is_wrong() {
        assert_eq!(
            parse_real("10.0.0.300"),
            Err("'10.0.0.300' is not an IP address".into())
        );
        assert_eq!(
            parse_real("[2001:db8::11]:http"),
            Err("'http' is not a port number (0..=65535)".into())
        );
        assert_eq!(
            parse_real("[2001:db8::11"),
            Err("'[2001:db8::11' is not an IP address".into())
        );
        for bad in [
            "2001:db8::100",
            "2001:db8::100:80",
            "10.0.0.100",
            "[2001:db8::100]",
        ] {
            assert!(
                parse_service(bad)
                    .unwrap_err()
                    .contains("expected VIP:PORT"),
                "{bad}"
            );
        }
    }
}

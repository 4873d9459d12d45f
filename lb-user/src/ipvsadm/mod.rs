//! The ipvsadm front end (`xdplb ipvsadm ARGS`, or the binary run through a link named
//! `ipvsadm`, `ipvsadm-save` or `ipvsadm-restore`): ipvsadm's command line and listings over the
//! xdplb agent, so existing rules, scripts and habits carry over.
//!
//! - `args.rs`: the command line, checked as ipvsadm checks it, into a request or a listing;
//! - `listing.rs`: ipvsadm's listings and its save format.
//!
//! Differences from ipvsadm are refusals with a reason (masquerading, firewall marks, IPv6, the
//! IPVS sync daemon); `-R` applies all its lines or none.

mod args;
mod listing;

use std::{ffi::OsString, io::Read as _, path::Path};

use anyhow::{anyhow, bail, Result};

pub use args::{parse, Invocation};

use crate::control::{self, Listing, Request, Response};

/// Runs one ipvsadm command line against the agent behind `socket`.
pub fn main(args: &[OsString], socket: &Path) -> Result<()> {
    match parse(args)? {
        Invocation::Change(req) => {
            control::request(socket, &req)?;
        }
        Invocation::List { service, options } => {
            let mut l = list(socket)?;
            if options.columns == args::Columns::Rate {
                let start = std::time::Instant::now();
                std::thread::sleep(std::time::Duration::from_secs(1));
                l = list(socket)?.per_second(&l, start.elapsed().as_secs_f64());
            }
            let only = service.map(|s| {
                (
                    s.protocol,
                    std::net::SocketAddr::new(s.vip, s.port).to_string(),
                )
            });
            if let Some((protocol, addr)) = &only {
                if !l
                    .services
                    .iter()
                    .any(|v| v.protocol == *protocol && v.address == *addr)
                {
                    bail!("no such service: {addr}");
                }
            }
            let only = only.as_ref().map(|(p, a)| (*p, a.as_str()));
            print!("{}", listing::services(&l, only, options));
        }
        Invocation::Connections => {
            let Response::Connections { conns } = control::request(socket, &Request::Connections)?
            else {
                bail!("the agent answered a connection listing with something else");
            };
            print!("{}", listing::connections(&conns));
        }
        Invocation::Timeouts => print!("{}", listing::timeouts(&list(socket)?)),
        Invocation::Daemon => {
            // IPVS lists its sync daemons here; xdplb's sync is not one (see `xdplb list --sync`).
            if let Some(sync) = list(socket)?.sync {
                println!("xdplb connection sync (listen={})", sync.listen);
            }
        }
        Invocation::Save => print!("{}", listing::rules(&list(socket)?)),
        Invocation::Restore => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            control::request(socket, &restore(&text)?)?;
        }
        Invocation::Help(text) => print!("{text}"),
        Invocation::Version => println!(
            "ipvsadm front end of xdplb {} (IPVS's command line over XDP)",
            env!("CARGO_PKG_VERSION")
        ),
    }
    Ok(())
}

fn list(socket: &Path) -> Result<Listing> {
    match control::request(socket, &Request::List)? {
        Response::Listing(l) => Ok(*l),
        _ => bail!("the agent answered a list request with something else"),
    }
}

/// `-R`: every line of `text` (ipvsadm-save's format, or any ipvsadm command lines that change
/// services and real servers) as one batch the agent applies whole or not at all. Blank lines
/// and `#` comments are skipped, and so is a leading `ipvsadm`.
pub fn restore(text: &str) -> Result<Request> {
    let mut requests = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let label = format!("line {}", n + 1);
        let line = line.split('#').next().unwrap_or_default();
        let words: Vec<OsString> = line
            .split_whitespace()
            .filter(|w| *w != "ipvsadm")
            .map(OsString::from)
            .collect();
        if words.is_empty() {
            continue;
        }
        match parse(&words).map_err(|e| anyhow!("{label}: {e:#}"))? {
            Invocation::Change(
                req @ (Request::AddService { .. }
                | Request::EditService { .. }
                | Request::DelService { .. }
                | Request::Clear
                | Request::AddReal { .. }
                | Request::EditReal { .. }
                | Request::DelReal { .. }),
            ) => requests.push((label, req)),
            _ => bail!("{label}: only commands that change services and real servers (-A -E -D -C -a -e -d) can be restored"),
        }
    }
    Ok(Request::Batch { requests })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_reads_ipvsadm_save_and_names_a_bad_line() {
        let text = "\
# ipvsadm-save -n
-A -t 207.175.44.110:80 -s rr

ipvsadm -a -t 207.175.44.110:80 -r 192.168.10.1:80 -g   # the first
-a -t 207.175.44.110:80 -r 192.168.10.2:80 -g -w 2
";
        let Request::Batch { requests } = restore(text).unwrap() else {
            panic!()
        };
        let labels: Vec<&str> = requests.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(labels, ["line 2", "line 4", "line 5"]);
        assert!(matches!(
            &requests[2].1,
            Request::AddReal { real, .. } if real.weight == Some(2)
        ));
        let bad = format!("{text}-a -t 207.175.44.110:80 -r 192.168.10.3:80 -m -g\n");
        let err = format!("{:#}", restore(&bad).unwrap_err());
        assert!(err.starts_with("line 6: one forwarding method"), "{err}");
        let err = format!("{:#}", restore("-L -n\n").unwrap_err());
        assert!(err.starts_with("line 1: only commands"), "{err}");
    }
}

//! The control protocol between the CLI and the agent: one JSON request per connection on a
//! root-only Unix socket, answered by one JSON response. The HTTP API ([`crate::web`]) speaks
//! the same requests on the same socket (the agent tells the two apart by the first byte).

mod client;
mod listing;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use client::{request, request_within};
pub use listing::{
    AgentView, AnnounceView, ConnView, HealthView, Listing, RealView, ServiceView, StatsView,
};

use crate::state::{RealSpec, SchedulerSpec, ServiceAddr};

/// Where `xdplb run` listens and the CLI connects unless `--socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/xdplb/xdplb.sock";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    AddService {
        service: ServiceAddr,
        scheduler: SchedulerSpec,
    },
    EditService {
        service: ServiceAddr,
        scheduler: SchedulerSpec,
    },
    DelService {
        service: ServiceAddr,
    },
    AddReal {
        service: ServiceAddr,
        real: RealSpec,
    },
    EditReal {
        service: ServiceAddr,
        real: RealSpec,
    },
    DelReal {
        service: ServiceAddr,
        addr: IpAddr,
        /// The port given with the address, if one was: it must be the real server's.
        #[serde(default)]
        port: Option<u16>,
    },
    List,
    /// Which real server new flows from these client addresses and ports would get.
    Simulate {
        service: ServiceAddr,
        flows: Vec<(IpAddr, u16)>,
    },
    /// Apply the config file again (as SIGHUP does).
    Reload,
    /// The running state as a config file (`xdplb save`).
    Save,
    /// Zero the counters of one service and its real servers, or every counter (`xdplb zero`,
    /// ipvsadm -Z).
    Zero {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<ServiceAddr>,
    },
    /// Delete every service (ipvsadm -C).
    Clear,
    /// Change the connection-table idle timeouts, seconds; what is not given stays
    /// (ipvsadm --set).
    SetTimeouts {
        tcp: Option<u32>,
        tcp_fin: Option<u32>,
        udp: Option<u32>,
    },
    /// The entries of the connection table (ipvsadm -Lc).
    Connections,
    /// Changes applied all together or not at all (ipvsadm -R): each with a label (where it
    /// came from) that names it in an error.
    Batch {
        requests: Vec<(String, Request)>,
    },
    /// Whether this director is fit to take traffic (`xdplb check`, keepalived's vrrp_script).
    Check,
    /// Maintenance: withdraw every VIP and fail `check`, but keep forwarding what still arrives.
    Drain,
    /// End of maintenance: announce (and pass `check`) again.
    Undrain,
}

impl Request {
    /// The request's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Request::AddService { .. } => "add service",
            Request::EditService { .. } => "edit service",
            Request::DelService { .. } => "delete service",
            Request::AddReal { .. } => "add real server",
            Request::EditReal { .. } => "edit real server",
            Request::DelReal { .. } => "delete real server",
            Request::List => "list",
            Request::Simulate { .. } => "simulate",
            Request::Reload => "reload",
            Request::Save => "save",
            Request::Zero { .. } => "zero",
            Request::Clear => "clear",
            Request::SetTimeouts { .. } => "set timeouts",
            Request::Connections => "list connections",
            Request::Batch { .. } => "batch",
            Request::Check => "check",
            Request::Drain => "drain",
            Request::Undrain => "undrain",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Ok,
    Error {
        message: String,
        /// What kind of failure, where it is one the HTTP API answers with its own status.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<Failure>,
    },
    Listing(Box<Listing>),
    Connections {
        conns: Vec<ConnView>,
    },
    /// One entry per simulated flow: "RIP:PORT", or None when the service has no real server.
    Simulated {
        reals: Vec<Option<String>>,
    },
    Saved {
        config: String,
    },
    /// `check`: None when fit to take traffic, else why not (one line).
    Checked {
        problem: Option<String>,
    },
}

/// Failures the HTTP API tells apart from bad input (400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// No such service or real server (404).
    NotFound,
    /// The service or real server exists already (409).
    Exists,
}

impl Response {
    /// The answer for a failed request: its one-line message, and its kind when the error
    /// chain carries one (see [`crate::state::NotFound`], [`crate::state::Exists`]).
    pub fn error(e: &anyhow::Error) -> Self {
        let kind = e.chain().find_map(|c| {
            if c.is::<crate::state::NotFound>() {
                Some(Failure::NotFound)
            } else if c.is::<crate::state::Exists>() {
                Some(Failure::Exists)
            } else {
                None
            }
        });
        Response::Error {
            message: format!("{e:#}").replace('\n', " "),
            kind,
        }
    }
}

//! xdplb user space: the agent that owns the datapath and the CLI that drives it.
//!
//! Data flows one way: CLI, HTTP API or config file -> agent [`state`] -> tables built by
//! lb-common -> [`datapath`] map writer -> the XDP program.

pub mod addr;
pub mod agent;
pub mod announce;
pub mod cli;
pub mod config;
pub mod conntrack;
pub mod control;
pub mod datapath;
pub mod decap;
pub mod health;
pub mod import;
pub mod ipvsadm;
pub mod metrics;
pub mod net;
pub mod packet;
pub mod pktgen;
pub mod secret;
pub mod state;
pub mod sync;
pub mod top;
pub mod web;

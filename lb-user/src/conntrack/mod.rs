//! The datapath's connection table (flow -> real server) as the agent sees it: read and written
//! through a narrow interface (`table`: sync writes what peers report, and reads it whole for a
//! peer), and each real server's connection counts kept honest against it (`counts`).

pub mod counts;
pub mod listing;
pub mod migrate;
pub mod table;

use lb_common::{Conn, DirectorConfig, FlowKey};

/// Idle timeouts in kernel ticks, as the datapath applies them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdleTimeouts {
    pub tcp: u32,
    pub tcp_fin: u32,
    pub udp: u32,
}

impl IdleTimeouts {
    pub fn of(config: &DirectorConfig) -> Self {
        Self {
            tcp: config.tcp_timeout,
            tcp_fin: config.tcp_fin_timeout,
            udp: config.udp_timeout,
        }
    }

    /// The idle timeout that applies to an entry now, ticks.
    pub fn timeout(&self, flow: &FlowKey, conn: &Conn) -> u32 {
        conn.idle_timeout(flow, self.tcp, self.tcp_fin, self.udp)
    }

    /// Whether an entry is still alive at `now` (ticks): the datapath would follow it.
    pub fn alive(&self, flow: &FlowKey, conn: &Conn, now: u32) -> bool {
        now.wrapping_sub(conn.last_seen) <= self.timeout(flow, conn)
    }
}

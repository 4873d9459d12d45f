//! The datapath's connection table (flow -> real server) as the agent sees it: read and written
//! through a narrow interface (`table`: sync writes what peers report, and reads it whole for a
//! peer), and each real server's connection counts kept honest against it (`counts`).

pub mod counts;
pub mod listing;
pub mod migrate;
pub mod table;

use lb_common::{Conn, DirectorConfig, FlowKey};

/// Ticks an entry last seen at `last_seen` has been idle at `now`; 0 for a time a little ahead
/// of `now`: user space's tick count (`clock::jiffies_now`) can trail the kernel's by a tick or
/// two, and an entry the datapath touched meanwhile is not idle for 2^32 ticks.
pub fn idle(now: u32, last_seen: u32) -> u32 {
    let d = now.wrapping_sub(last_seen);
    if (d as i32) < 0 {
        0
    } else {
        d
    }
}

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
        idle(now, conn.last_seen) <= self.timeout(flow, conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_touched_a_tick_ahead_of_user_spaces_clock_is_alive() {
        let t = IdleTimeouts {
            tcp: 100,
            tcp_fin: 10,
            udp: 50,
        };
        let flow = FlowKey {
            proto: lb_common::IPPROTO_TCP,
            ..Default::default()
        };
        let conn = |last_seen| Conn {
            last_seen,
            flags: lb_common::CONN_ESTABLISHED,
            ..Default::default()
        };
        // The datapath's jiffies one and two ticks past the agent's: just touched.
        assert!(t.alive(&flow, &conn(1001), 1000));
        assert!(t.alive(&flow, &conn(1002), 1000));
        assert!(t.alive(&flow, &conn(0), u32::MAX), "across the wrap");
        assert!(t.alive(&flow, &conn(900), 1000));
        assert!(!t.alive(&flow, &conn(899), 1000));
        assert_eq!(idle(1000, 1002), 0);
        assert_eq!(idle(1000, 900), 100);
    }
}

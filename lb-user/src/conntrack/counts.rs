//! Active and inactive connections per real server, as IPVS counts them (ActiveConn: TCP
//! established; InActConn: every other entry, SYN_RECV, after a FIN, UDP). The datapath keeps
//! the counts as flows open, establish, see a FIN and are reset; what it cannot see (entries
//! that time out, or that the LRU table evicts, or that sync writes from a peer) the agent puts
//! right: it counts the live entries of the table every few seconds and adds the difference.

use std::collections::HashMap;

use anyhow::Result;
use lb_common::{Conn, FlowKey, CONN_ESTABLISHED, CONN_FIN};

use super::{table::ConnTable, IdleTimeouts};
use crate::datapath::ConnCounts;

/// (active, inactive) per real server id, over the live entries.
pub fn tally(
    entries: &[(FlowKey, Conn)],
    now: u32,
    timeouts: &IdleTimeouts,
) -> HashMap<u32, (i64, i64)> {
    let mut counts: HashMap<u32, (i64, i64)> = HashMap::new();
    for (flow, conn) in entries.iter().filter(|(f, c)| timeouts.alive(f, c, now)) {
        let c = counts.entry(conn.real).or_default();
        if conn.flags & (CONN_ESTABLISHED | CONN_FIN) == CONN_ESTABLISHED {
            c.0 += 1;
        } else {
            c.1 += 1;
        }
        let _ = flow;
    }
    counts
}

/// Puts the counts right: reads them, counts the table, and adds the difference (atomically, so
/// what the datapath added meanwhile stays). Returns the number of live entries.
pub fn correct(
    table: &dyn ConnTable,
    counts: &ConnCounts,
    now: impl Fn() -> u32,
    timeouts: &IdleTimeouts,
) -> Result<usize> {
    let before: Vec<_> = (0..counts.entries() as u32)
        .map(|i| counts.get(i))
        .collect();
    let entries = table.entries()?;
    let truth = tally(&entries, now(), timeouts);
    for (id, was) in before.iter().enumerate() {
        let (active, inactive) = truth.get(&(id as u32)).copied().unwrap_or_default();
        counts.add(id as u32, active - was.active, inactive - was.inactive);
    }
    Ok(truth.values().map(|(a, i)| (a + i) as usize).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(port: u16, proto: u8) -> FlowKey {
        FlowKey {
            sport: port,
            proto,
            ..Default::default()
        }
    }

    #[test]
    fn live_entries_count_as_ipvs_counts_them() {
        let t = IdleTimeouts {
            tcp: 100,
            tcp_fin: 10,
            udp: 50,
        };
        let conn = |real, flags, last_seen| Conn {
            real,
            service: 0,
            last_seen,
            flags,
        };
        let entries = [
            (flow(1, 6), conn(1, CONN_ESTABLISHED, 990)),
            (flow(2, 6), conn(1, 0, 990)), // SYN seen only
            (flow(3, 6), conn(1, CONN_ESTABLISHED | CONN_FIN, 995)), // after a FIN
            (flow(4, 17), conn(2, 0, 960)), // UDP
            (flow(5, 6), conn(2, CONN_ESTABLISHED, 800)), // timed out
            (flow(6, 6), conn(2, CONN_ESTABLISHED | CONN_FIN, 980)), // FIN timed out
        ];
        let counts = tally(&entries, 1000, &t);
        assert_eq!(counts[&1], (1, 2));
        assert_eq!(counts[&2], (0, 1));
    }
}

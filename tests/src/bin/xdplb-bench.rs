//! `cargo xtask bench` runs this: measures the datapath cost per packet of every case next to a
//! bare XDP_TX program, and prints a Markdown section (with an SVG chart written next to the
//! output file). Root is needed (BPF).

use std::{fmt::Write as _, path::PathBuf};

use anyhow::{Context as _, Result};
use lb_tests::bench::{
    control_plane, median, percentile, sync_delay, throughput, Bench, Case, Measurement,
};

/// Alternating rounds per case, and BPF_PROG_TEST_RUN iterations per round.
const ROUNDS: usize = 9;
const REPEAT: u32 = 200_000;
/// Alternating rounds of the throughput benchmark.
const THROUGHPUT_ROUNDS: usize = 3;
/// Changes timed for the control-plane figures.
const CHANGES: usize = 100;

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(v), min, max)
}

fn table(ms: &[Measurement]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| case | bare XDP_TX (ns) | case (ns) | cost above bare: median [min, max] (ns) | target | met |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|:---:|");
    for m in ms {
        let (extra, lo, hi) = stats(&m.extra_ns());
        let target = m.case.target_ns();
        let verdict = if extra <= target {
            "yes".to_owned()
        } else {
            format!("no, by {:.0} ns", extra - target)
        };
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} | {extra:.1} [{lo:.1}, {hi:.1}] | <= {target:.0} | {verdict} |",
            m.case.name(),
            median(&m.base_ns),
            median(&m.case_ns),
        );
    }
    out
}

/// A horizontal bar chart of the median cost above bare XDP_TX, with each case's target marked.
fn svg(ms: &[Measurement]) -> String {
    let (w, row, left) = (760.0, 34.0, 330.0);
    let scale_max = ms
        .iter()
        .map(|m| median(&m.extra_ns()).max(m.case.target_ns()))
        .fold(1.0, f64::max)
        * 1.15;
    let h = row * ms.len() as f64 + 50.0;
    let x = |ns: f64| left + (ns.max(0.0) / scale_max) * (w - left - 20.0);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<text x="10" y="18" font-weight="bold">Datapath cost above a bare XDP_TX program (median ns per packet; | = target)</text>
"#
    );
    for (i, m) in ms.iter().enumerate() {
        let y = 30.0 + row * i as f64;
        let extra = median(&m.extra_ns());
        let colour = if extra <= m.case.target_ns() {
            "#3a7d44"
        } else {
            "#b33a3a"
        };
        let _ = write!(
            s,
            r#"<text x="10" y="{ty}">{name}</text>
<rect x="{left}" y="{y}" width="{bw:.1}" height="20" fill="{colour}"/>
<text x="{tx:.1}" y="{ty}">{extra:.1}</text>
<line x1="{gx:.1}" x2="{gx:.1}" y1="{y0}" y2="{y1}" stroke="black" stroke-width="2"/>
"#,
            ty = y + 14.0,
            name = m.case.name(),
            bw = x(extra) - left,
            tx = x(extra) + 4.0,
            gx = x(m.case.target_ns()),
            y0 = y - 2.0,
            y1 = y + 22.0,
        );
    }
    s.push_str("</svg>\n");
    s
}

fn main() -> Result<()> {
    let out_dir: PathBuf = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| "docs".into());
    let mut bench = Bench::new().context("loading the benchmark programs (needs root)")?;
    let mut ms = Vec::new();
    for case in Case::all() {
        eprintln!("measuring: {}", case.name());
        ms.push(bench.measure(case, ROUNDS, REPEAT)?);
    }
    std::fs::write(out_dir.join("benchmarks-datapath.svg"), svg(&ms))?;
    println!("## Datapath cost per packet\n");
    println!(
        "BPF_PROG_TEST_RUN with repeat = {REPEAT}, {ROUNDS} rounds alternating each case with a bare \
         `return XDP_TX` program on the same TCP frame (54 bytes; 74 for IPv6); the kernel's mean \
         time per iteration. \
         Every case the program forwards runs behind the `xdp_bench` wrapper, which restores the \
         frame from a template (forwarding rewrites at least its destination MAC, and the director \
         acts only on frames for its own) or varies its source (a new flow every iteration) and \
         tail-calls the program; their baseline is the wrapper in front of the bare program, so the \
         wrapper's own cost cancels out. Each run checks the program's verdict. New flows with sync \
         on run 50,000 iterations per round (what the ring holds; drained between rounds, as the \
         agent drains it).\n"
    );
    print!("{}", table(&ms));
    println!("\n![datapath cost](benchmarks-datapath.svg)\n");
    println!(
        "Connection sync's own cost, measured in the same rounds as its case with sync off right \
         after (the same frames, the same program, the configuration switched), so the machine's \
         drift between rounds cancels out:\n"
    );
    println!("| path | sync on - sync off: median [min, max] (ns) |");
    println!("|---|---:|");
    for m in ms.iter().filter(|m| !m.sync_off_ns.is_empty()) {
        let (d, lo, hi) = stats(&m.sync_ns());
        println!("| {} | {d:.1} [{lo:.1}, {hi:.1}] |", m.case.name());
    }
    println!();
    println!(
        "Where the time goes. Non-VIP traffic stops at the VIP prefilter (one array read). An \
         established flow costs one connection-table lookup (a 40-byte key, IPv6-sized, hashed by the \
         LRU map: most of the cost), the real server's entry, the per-service and per-real counters, \
         and the rewrite; the service lookup is skipped (the flow names the service) and the clock is \
         jiffies (one load). IPIP adds growing the frame and writing a 20-byte header with its \
         checksum. A new flow adds the service lookup, the flow hash, the Maglev table (an inner map \
         of an array of maps) and above all the LRU insert, the largest single cost; with a full \
         table it also evicts. The bench's connection table holds 65,536 flows; a larger one (the \
         default is 1,000,000) misses the CPU caches more on an insert: the persistent case's \
         262,144-entry template table costs about twice what a 65,536-entry one does. The \
         schedulers that choose by load add the scan of the real servers (bpf_loop) and the count \
         updates; rr and wrr a per-CPU position. An LVS/NAT request adds to DR's established path \
         the rewrite of the destination address and port with the incremental checksums. A NAT \
         reply takes the real-server prefilter, a tail call to the reply program, a second lookup \
         (the reply index, keyed by the reply's own flow) besides the connection table's, the \
         rewrite, and the kernel's FIB lookup helper toward the client (route and neighbour), \
         which no other path needs. IPv6 adds the tail call to its pipeline and parsing a 40-byte \
         header; the table keys are IPv6-sized for both families, so its lookups cost the same. \
         Every packet for a service also has its IPv4 header checked as the kernel would (the \
         checksum over 5 to 15 words, the source, the TTL) and one compare for options; a packet \
         with options takes a tail call to the options' checker, its walk, and the director's \
         program a second time, so it costs more than twice DR's established path (rare traffic: \
         options are all but unused on the Internet). \
         For scale, Katran's XDP balancer (commit 19f08fe, \
         ../shared/peer-bench, run on this machine right after this one): +19 ns on its pass \
         path, +61 ns on an established (IPIP) flow, +146 ns on a new flow, its new-flow case \
         rewriting one LRU key every iteration where xdplb's inserts a new flow into a full table \
         and evicts; Katran has no NAT.\n"
    );

    eprintln!("measuring: forwarding throughput");
    let tp = throughput(THROUGHPUT_ROUNDS, std::time::Duration::from_secs(2))?;
    let (lb, bare, sent) = (
        median(&tp.xdplb_pps),
        median(&tp.bare_pps),
        median(&tp.sent_pps),
    );
    let ratio = lb / bare * 100.0;
    println!("## Forwarding throughput through a namespace topology\n");
    println!(
        "`xdplb pktgen` (one CPU, 60-byte TCP SYNs, 25,600 flows) in the client namespace sends to the \
         VIP as fast as it can for 2 s; the director (native XDP on a veth into a bridge) forwards to \
         three real-server namespaces whose XDP sinks count what arrives. The director is xdplb (`mh`, \
         DR, connection table) or a bare forwarder (two MAC addresses, XDP_TX) in alternating rounds \
         ({THROUGHPUT_ROUNDS} each; medians). Both cross the same bridge, so its cost is common to both.\n"
    );
    println!("| director | delivered (pps) | of the bare forwarder | generator sent (pps) |");
    println!("|---|---:|---:|---:|");
    println!("| bare XDP_TX forwarder | {bare:.0} | 100 % | {sent:.0} |");
    println!(
        "| xdplb | {lb:.0} | {ratio:.1} % ({}) | {sent:.0} |",
        if ratio >= 90.0 {
            "target >= 90 %: met".to_owned()
        } else {
            format!("target >= 90 %: missed by {:.1} points", 90.0 - ratio)
        }
    );
    println!();

    eprintln!("measuring: connection sync");
    let runs = sync_delay(
        &[Some(1_000), Some(50_000), None],
        std::time::Duration::from_secs(4),
    )?;
    println!(
        "## Connection sync between two directors
"
    );
    println!(
        "Two directors in namespaces on one bridge, each `xdplb run` from a config file with `[sync]` \
         naming the other. `xdplb pktgen` in the client sends TCP SYNs of flows never seen before to \
         director A for 4 s at each rate (the last row as fast as one CPU goes); A binds each, its \
         datapath writes an event into the ring buffer, its agent batches the events into \
         HMAC-authenticated datagrams to B, and B writes them into its connection table. Sync delay \
         is B's own measure per flow, from A's datapath binding it (the event's kernel timestamp, \
         plus the time its datagram was on the way, both directors on this machine's clock) to B's \
         table holding it. Bytes per flow count the datagrams' payload (hellos included) and their \
         IPv4, UDP and Ethernet headers.\n"
    );
    println!("| new flows/s asked | sent (flows/s) | events written / lost (ring full) | flows sent to B | datagrams (unsent) | B received | delay p50 / p99 | bytes on the wire per flow |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &runs {
        let asked = r.rate.map_or("max".to_owned(), |v| v.to_string());
        let delay = match (r.p50_us, r.p99_us) {
            (Some(a), Some(b)) => format!("{:.2} / {:.2} ms", a as f64 / 1e3, b as f64 / 1e3),
            _ => "-".to_owned(),
        };
        println!(
            "| {asked} | {:.0} | {} / {} | {} | {} ({}) | {} | {delay} | {:.1} |",
            r.sent_pps,
            r.events,
            r.lost,
            r.flows_sent,
            r.datagrams,
            r.unsent,
            r.received,
            r.wire_bytes_per_flow()
        );
    }
    println!(
        "\nBeyond what the agent or the link carries, the datapath never waits: a full ring loses the \
         event (counted in `events lost` and `xdplb_sync_events_total{{result=\"lost\"}}`), the packet \
         is forwarded all the same, and the flow is known to B only through a later refresh (while it \
         lives) or a full-table transfer. Datagrams the socket refuses are counted per peer \
         (`datagrams_unsent`).\n"
    );

    eprintln!("measuring: control plane");
    let cp = control_plane(CHANGES)?;
    println!("## Control plane: from a command to the datapath acting on it\n");
    println!(
        "{CHANGES} weight changes of one real server of an `mh` service (M = 65537, 3 real servers): each \
         rebuilds the Maglev table and swaps it in. The agent answers only once the maps hold the \
         change, so the datapath acts on the next packet after the command returns. Measured as a whole \
         `xdplb real edit` process (what a script sees) and as one request on the control socket (the \
         agent's own share).\n"
    );
    println!("| measured | p50 (ms) | p99 (ms) | max (ms) |");
    println!("|---|---:|---:|---:|");
    for (what, v) in [
        ("`xdplb real edit` command", &cp.cli_ms),
        ("control-socket request", &cp.socket_ms),
    ] {
        println!(
            "| {what} | {:.1} | {:.1} | {:.1} |",
            percentile(v, 0.5),
            percentile(v, 0.99),
            v.iter().copied().fold(0.0, f64::max)
        );
    }
    println!();
    Ok(())
}

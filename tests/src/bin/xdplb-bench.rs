//! `cargo xtask bench` runs this: measures the datapath cost per packet of every case next to a
//! bare XDP_TX program, and prints a Markdown section (with an SVG chart written next to the
//! output file). Root is needed (BPF).

use std::{fmt::Write as _, path::PathBuf};

use anyhow::{Context as _, Result};
use lb_tests::bench::{
    compare, control_plane, live,
    live::{Director, Live, LIVE_TABLE},
    median, moved,
    peer::{self, Katran, PeerBench},
    percentile, pin_to_cpu,
    profile::{profile, Profile, LINE_LIMIT},
    scale::{scale, Scale, Size},
    stats, sub_runs, sync_delay, Bench, Case, Goal, Measurement, PeerMeasurement, ATTEMPTS,
    BENCH_CPU, DRIFT_LIMIT, SUB_RUNS,
};

/// The control plane's size at scale, and the changes timed there.
const SCALE: Size = Size {
    services: 10_000,
    per_service: 10,
};
const SCALE_CHANGES: usize = 50;

/// The cases sampled by perf in every run: the paths with a target against Katran or in the
/// issue, and the NAT replies with their kernel helpers; every case that misses its target in
/// the run is sampled too.
const PROFILED: [Case; 6] = [
    Case::DrMhEstablished,
    Case::TunEstablished,
    Case::DrMhNewFlow,
    Case::DrMhNewFlowGuarded,
    Case::NatReply,
    Case::Nat6Reply,
];

/// Source lines shown per profiled case, at most.
const LINES_SHOWN: usize = 12;

/// Paired rounds per case when two builds are compared (`--compare`).
const COMPARE_ROUNDS: usize = 40;

/// Alternating rounds per case, and BPF_PROG_TEST_RUN iterations per round.
const ROUNDS: usize = 15;
const REPEAT: u32 = 200_000;
/// Rounds of the peer benchmark, before and after ours.
const PEER_ROUNDS: usize = 9;
/// Alternating rounds of the live benchmark, per director configuration.
const LIVE_ROUNDS: usize = 3;
/// Changes timed for the control-plane figures.
const CHANGES: usize = 100;

/// A set of baseline rounds: what was measured against it, and which baseline it is.
struct Baseline<'a> {
    name: String,
    kind: String,
    rounds: &'a [f64],
    attempts: usize,
}

/// Our cases' baselines and those of Katran's paths timed by this bench: all are held to the
/// same rule.
fn baselines<'a>(
    ms: &'a [Measurement],
    katran: Option<(&'a Katran, &'a Katran)>,
) -> Vec<Baseline<'a>> {
    let mut all: Vec<Baseline> = ms
        .iter()
        .map(|m| Baseline {
            name: m.case.name(),
            kind: m.case.baseline(),
            rounds: &m.base_ns,
            attempts: m.attempts,
        })
        .collect();
    for (when, k) in katran
        .into_iter()
        .flat_map(|(b, a)| [("before", b), ("after", a)])
    {
        for (path, kind, m) in katran_timed_here(k) {
            let Some(m) = m else { continue };
            all.push(Baseline {
                name: format!("Katran, {path}, {when}"),
                kind: kind.to_owned(),
                rounds: &m.base_ns,
                attempts: m.attempts,
            });
        }
    }
    all
}

/// Katran's paths this bench times: (path, the baseline it is measured against, figures).
fn katran_timed_here(k: &Katran) -> [(&'static str, &'static str, &Option<PeerMeasurement>); 2] {
    [
        (
            "established flow",
            "the wrapper in front of bare XDP_TX, Katran's frame",
            &k.established_here,
        ),
        (
            "a new source every packet",
            "the wrapper in front of bare XDP_TX, Katran's frame, a new source each iteration",
            &k.new_source,
        ),
    ]
}

/// Whether the baselines held still during the run: within each case's rounds, and between
/// the cases measured against the same baseline. Returns the Markdown paragraph saying so.
fn drift(all: &[Baseline]) -> (bool, String) {
    let (within, worst_case) = all
        .iter()
        .map(|b| (moved(b.rounds), b.name.clone()))
        .fold((0.0, String::new()), |a, b| if b.0 > a.0 { b } else { a });
    let mut kinds: Vec<(String, Vec<f64>)> = Vec::new();
    for b in all {
        match kinds.iter_mut().find(|(k, _)| *k == b.kind) {
            Some((_, v)) => v.push(median(b.rounds)),
            None => kinds.push((b.kind.clone(), vec![median(b.rounds)])),
        }
    }
    let (between, worst_kind) = kinds
        .iter()
        .map(|(k, v)| (moved(v), k.clone()))
        .fold((0.0, String::new()), |a, b| if b.0 > a.0 { b } else { a });
    let again: Vec<String> = all
        .iter()
        .filter(|b| b.attempts > 1)
        .map(|b| format!("{} ({} times)", b.name, b.attempts))
        .collect();
    let again = if again.is_empty() {
        "No case needed measuring again.".to_owned()
    } else {
        format!(
            "Measured again because their baselines moved: {} of {}: {}.",
            again.len(),
            all.len(),
            again.join("; ")
        )
    };
    let flagged = within > DRIFT_LIMIT || between > DRIFT_LIMIT;
    let verdict = if flagged {
        format!(
            "**Flagged: a baseline moved more than {:.0} % within this run; the machine changed \
             state while it ran, so compare figures only with the baseline in their own row.**",
            DRIFT_LIMIT * 100.0
        )
    } else {
        format!(
            "Steady: no baseline moved more than {:.0} % within this run.",
            DRIFT_LIMIT * 100.0
        )
    };
    let text = format!(
        "Baselines: within a case's rounds they moved at most {:.1} % ({worst_case}); between the \
         cases measured against the same baseline, at most {:.1} % ({worst_kind}). {again} \
         {verdict}\n",
        within * 100.0,
        between * 100.0
    );
    (flagged, text)
}

fn table(ms: &[Measurement], katran: Option<(&Katran, &Katran)>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| case | bare XDP_TX (ns) | baseline moved | case (ns) | cost above bare: median [min, max] (ns) | target | met |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|:---:|");
    for m in ms {
        let (extra, lo, hi) = stats(&m.extra_ns());
        let (target, verdict) = match target(ms, katran, m.case) {
            Some(t) => (t.shown.clone(), t.verdict(extra)),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} % | {:.1} | {extra:.1} [{lo:.1}, {hi:.1}] | {target} | {verdict} |",
            m.case.name(),
            median(&m.base_ns),
            moved(&m.base_ns) * 100.0,
            median(&m.case_ns),
        );
    }
    out
}

/// The added paths' budgets: each one's nearest path and the work it must add, as the targets
/// above read them.
fn budgets(ms: &[Measurement]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| path | nearest path | work it adds | budget (ns) | over it in the same rounds: \
         median [min, max] (ns) |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---:|");
    for case in Case::all() {
        if let Goal::Over {
            nearest,
            added,
            work,
            measured,
        } = case.goal()
        {
            let budget = match measured_part(ms, measured) {
                _ if measured.is_empty() => format!("{added:.0}"),
                Some(m) => format!("{:.0} ({added:.0} + {m:.0} measured)", added + m),
                None => format!("{added:.0} + not measured"),
            };
            let over = match ms
                .iter()
                .find(|m| m.case == case && !m.nearest_ns.is_empty())
            {
                Some(m) => {
                    let (d, lo, hi) = stats(&m.over_nearest_ns());
                    format!("{d:.1} [{lo:.1}, {hi:.1}]")
                }
                None => "not measured".to_owned(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {work} | {budget} | {over} |",
                case.name(),
                nearest.name()
            );
        }
    }
    out
}

/// The part of a budget measured in this run: the signed sum of those cases' costs (None if
/// one was not measured).
fn measured_part(ms: &[Measurement], measured: &[(Case, f64)]) -> Option<f64> {
    measured
        .iter()
        .map(|(case, sign)| Some(sign * cost(ms, *case)?))
        .sum()
}

/// A case's target in this run, as figured from its goal.
struct Target {
    /// Nanoseconds above bare; None when what it is read against was not measured.
    ns: Option<f64>,
    /// How the table shows it.
    shown: String,
}

impl Target {
    fn verdict(&self, extra: f64) -> String {
        match self.ns {
            Some(t) if extra <= t => "yes".to_owned(),
            Some(t) => format!("no, by {:.0} ns", extra - t),
            None => "not measured".to_owned(),
        }
    }
}

/// Katran's figure for the path of `case`, where it has a comparable one.
fn katran_figure(case: Case) -> Option<fn(&Katran) -> Option<f64>> {
    match case {
        Case::NonVipPass => Some(|k| Some(k.pass_ns)),
        Case::TunEstablished => Some(|k| k.established_here.as_ref().map(PeerMeasurement::cost)),
        Case::DrMhNewFlow => Some(|k| k.new_source.as_ref().map(PeerMeasurement::cost)),
        Case::DrMhNewFlowGuarded => Some(|k| Some(k.flood_guard_ns)),
        _ => None,
    }
}

/// The mean of Katran's two runs (before and after ours) for the path of `case`.
fn katran_mean(katran: Option<(&Katran, &Katran)>, case: Case) -> Option<f64> {
    let f = katran_figure(case)?;
    let (before, after) = katran?;
    Some((f(before)? + f(after)?) / 2.0)
}

/// What `case` must reach in this run: a figure of the issue, a share of Katran's cost measured
/// right before and after, or its nearest path's cost in this run plus its budget.
fn target(ms: &[Measurement], katran: Option<(&Katran, &Katran)>, case: Case) -> Option<Target> {
    Some(match case.goal() {
        Goal::None => return None,
        Goal::AtMost(ns) => Target {
            ns: Some(ns),
            shown: format!("<= {ns:.0}"),
        },
        Goal::OfKatran(share) => match katran_mean(katran, case) {
            Some(k) => Target {
                ns: Some(share * k),
                shown: format!("<= {:.0} ({share:.1}x Katran)", share * k),
            },
            None => Target {
                ns: None,
                shown: format!("<= {share:.1}x Katran"),
            },
        },
        Goal::Over {
            nearest,
            added,
            measured,
            ..
        } => match (nearest_in_round(ms, case), measured_part(ms, measured)) {
            (Some(base), Some(m)) => {
                let added = added + m;
                Target {
                    ns: Some(base + added),
                    shown: format!("<= {:.0} ({base:.0} + {added:.0})", base + added),
                }
            }
            (Some(base), None) => Target {
                ns: None,
                shown: format!("<= {base:.0} + {added:.0} + not measured"),
            },
            (None, _) => Target {
                ns: None,
                shown: format!("<= {} + {added:.0}", nearest.name()),
            },
        },
    })
}

/// A horizontal bar chart of the median cost above bare XDP_TX, with each case's target marked.
fn svg(ms: &[Measurement], katran: Option<(&Katran, &Katran)>) -> String {
    let (w, row, left) = (760.0, 34.0, 330.0);
    let target_ns = |case| target(ms, katran, case).and_then(|t| t.ns);
    let scale_max = ms
        .iter()
        .map(|m| median(&m.extra_ns()).max(target_ns(m.case).unwrap_or(0.0)))
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
        let colour = match target_ns(m.case) {
            Some(t) if extra <= t => "#3a7d44",
            Some(_) => "#b33a3a",
            None => "#777777",
        };
        // A case without a target has no mark.
        let mark = target_ns(m.case).map_or(String::new(), |t| {
            format!(
                r#"<line x1="{gx:.1}" x2="{gx:.1}" y1="{y0}" y2="{y1}" stroke="black" stroke-width="2"/>
"#,
                gx = x(t),
                y0 = y - 2.0,
                y1 = y + 22.0,
            )
        });
        let _ = write!(
            s,
            r#"<text x="10" y="{ty}">{name}</text>
<rect x="{left}" y="{y}" width="{bw:.1}" height="20" fill="{colour}"/>
<text x="{tx:.1}" y="{ty}">{extra:.1}</text>
{mark}"#,
            ty = y + 14.0,
            name = m.case.name(),
            bw = x(extra) - left,
            tx = x(extra) + 4.0,
        );
    }
    s.push_str("</svg>\n");
    s
}

/// An added path's nearest path as measured in its own rounds: its cost above bare less the
/// median of its per-round difference from the nearest path, so that the case is within its
/// target exactly when that difference is within its budget.
fn nearest_in_round(ms: &[Measurement], case: Case) -> Option<f64> {
    let m = ms.iter().find(|m| m.case == case)?;
    if m.nearest_ns.is_empty() {
        return None;
    }
    Some(median(&m.extra_ns()) - median(&m.over_nearest_ns()))
}

/// The median cost above bare of `case` in this run.
fn cost(ms: &[Measurement], case: Case) -> Option<f64> {
    ms.iter()
        .find(|m| m.case == case)
        .map(|m| median(&m.extra_ns()))
}

/// xdplb's cases beside Katran's, measured right before and right after them.
fn katran_table(ms: &[Measurement], before: &Katran, after: &Katran) -> String {
    type Figure = fn(&Katran) -> Option<f64>;
    // (path, Katran's figure, our case, whether the row is judged by the case's target)
    let rows: [(&str, Option<Figure>, Case, bool); 7] = [
        (
            "packet for no VIP (pass)",
            katran_figure(Case::NonVipPass),
            Case::NonVipPass,
            true,
        ),
        (
            "established flow, IPIP (LVS/TUN)",
            katran_figure(Case::TunEstablished),
            Case::TunEstablished,
            true,
        ),
        (
            "established flow, IPIP, as the peer benchmark times it",
            Some(|k| Some(k.established_ns)),
            Case::TunEstablished,
            false,
        ),
        (
            "new flow with connection-table insert (a new source every packet, both)",
            katran_figure(Case::DrMhNewFlow),
            Case::DrMhNewFlow,
            true,
        ),
        (
            "new flow, Katran's own case (one LRU key rewritten every packet)",
            Some(|k| Some(k.new_flow_ns)),
            Case::DrMhNewFlow,
            false,
        ),
        (
            "new flow, flood guard engaged (not remembered)",
            katran_figure(Case::DrMhNewFlowGuarded),
            Case::DrMhNewFlowGuarded,
            false,
        ),
        (
            "established flow, LVS/DR (Katran has no DR)",
            None,
            Case::DrMhEstablished,
            true,
        ),
    ];
    let mut out = String::new();
    let _ = writeln!(out, "| path | Katran before (ns) | Katran after (ns) | xdplb (ns) | xdplb / Katran | target | met |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|:---:|");
    for (path, katran, case, judged) in rows {
        let Some(ours) = cost(ms, case) else { continue };
        let k = katran
            .and_then(|f| Some((f(before)?, f(after)?)))
            .map(|(b, a)| (b, a, (b + a) / 2.0));
        let ratio = k.map(|(_, _, mean)| ours / mean);
        let (wanted, met) = match target(ms, Some((before, after)), case).filter(|_| judged) {
            Some(t) => (t.shown.clone(), t.verdict(ours)),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let fmt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".to_owned(), f);
        let _ = writeln!(
            out,
            "| {path} | {} | {} | +{ours:.1} | {} | {wanted} | {met} |",
            fmt(k.map(|x| x.0), &|v| format!("+{v:.1}")),
            fmt(k.map(|x| x.1), &|v| format!("+{v:.1}")),
            fmt(ratio, &|v| format!("{v:.2}")),
        );
    }
    out
}

/// The live forwarding section: pps and the program's own time per packet, per director.
fn live_section(lv: &Live) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Live forwarding through a namespace topology\n");
    let _ = writeln!(
        out,
        "`xdplb pktgen` (one CPU, 60-byte TCP frames) in the client namespace sends to the VIP as \
         fast as it can for 2 s; the director (native XDP on a veth into a bridge) forwards to \
         three real-server namespaces whose XDP sinks count what arrives. Three directors take \
         turns ({LIVE_ROUNDS} rounds each; medians): a bare forwarder (two MAC addresses, XDP_TX); \
         xdplb (`mh`, DR, a {LIVE_TABLE}-flow connection table) on ACKs of 4,096 flows it holds \
         (`pktgen --ack`); and \
         xdplb under a SYN flood of flows never seen before (no flow twice), the new-flow guard at \
         its default for the table ({} flows a second per CPU). The time per packet is the \
         director program's own, from the kernel's BPF statistics (run time / run count while the \
         round ran): the real program on real frames, beside the bare forwarder's.\n",
        lv.guard_limit
    );
    let _ = writeln!(
        out,
        "| director | program time per packet (ns) | delivered (pps) | of the bare forwarder | generator sent (pps) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    let bare = median(&lv.of(Director::Bare, |r| r.delivered_pps));
    for d in Director::ALL {
        let delivered = median(&lv.of(d, |r| r.delivered_pps));
        let _ = writeln!(
            out,
            "| {} | {:.1} | {delivered:.0} | {:.1} % | {:.0} |",
            d.name(),
            median(&lv.of(d, |r| r.ns_per_packet)),
            delivered / bare * 100.0,
            median(&lv.of(d, |r| r.sent_pps)),
        );
    }
    let flood_packets: f64 = lv.of(Director::Flood, |r| r.packets as f64).iter().sum();
    let idle = median(&lv.of(Director::Established, |r| r.ns_per_packet));
    let flood = median(&lv.of(Director::Flood, |r| r.ns_per_packet));
    let ratio = flood / idle;
    let _ = writeln!(
        out,
        "\nUnder the flood the program took {ratio:.2}x its time per packet on established flows \
         (target: at most 1.5x; {}). The flood sent {flood_packets:.0} new flows in all, {:.0} \
         times the table; the guard forwarded {} of them without remembering them, so they could \
         not push established flows out (that established connections keep their real servers \
         through such a flood is asserted by `tests/tests/flood.rs`).\n",
        if ratio <= 1.5 { "met" } else { "missed" },
        flood_packets / f64::from(LIVE_TABLE),
        lv.unremembered
    );
    out
}

/// The control plane at scale: memory, load, reload and CLI figures with their targets.
fn scale_section(s: &Scale) -> String {
    let mut out = String::new();
    let mib = |b: f64| b / (1024.0 * 1024.0);
    let _ = writeln!(out, "## Control plane at scale\n");
    let _ = writeln!(
        out,
        "An agent started from a config file of {} services (`wlc`, ipvsadm's default; LVS/DR) with \
         {} real servers each, {} in all ({:.1} MiB of TOML), `services_max` and `reals_max` set \
         to fit; beside it the same agent, with the same room, started with no service. Memory: \
         the agent's resident set, and the BPF maps it made (`bpftool map list`, bytes_memlock: \
         the connection table of 1,000,000 flows, the per-service and per-real-server maps, and \
         each service's lookup table, an inner map). A reload rewrites the file with one real \
         server's weight changed and runs `xdplb reload` ({SCALE_CHANGES} times); a CLI change is \
         `xdplb real edit -w` on a service in the middle, as a whole command and as one \
         control-socket request.\n",
        s.size.services,
        s.size.per_service,
        s.size.reals(),
        mib(s.file_bytes as f64)
    );
    let _ = writeln!(
        out,
        "| measured | with every service | with none | target | met |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|:---:|");
    let load = s.start_ms - s.start_empty_ms;
    let _ = writeln!(
        out,
        "| agent start to serving (ms) | {:.0} | {:.0} | the file's load (the difference) under 2000 | {} |",
        s.start_ms,
        s.start_empty_ms,
        if load < 2000.0 {
            format!("yes ({load:.0} ms)")
        } else {
            format!("no ({load:.0} ms)")
        }
    );
    let _ = writeln!(
        out,
        "| agent resident memory (MiB) | {:.1} | {:.1} | - | - |",
        s.rss_kib as f64 / 1024.0,
        s.rss_empty_kib as f64 / 1024.0
    );
    let _ = writeln!(
        out,
        "| BPF maps (MiB) | {:.1} | {:.1} | - | - |",
        mib(s.maps_bytes as f64),
        mib(s.maps_empty_bytes as f64)
    );
    let _ = writeln!(
        out,
        "\n| change | p50 (ms) | p99 (ms) | max (ms) | target | met |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|:---:|");
    for (what, v, target) in [
        (
            "`xdplb reload`, one service changed",
            &s.reload_ms,
            Some(20.0),
        ),
        (
            "parsing the whole file once, in this process (for comparison)",
            &s.parse_ms,
            None,
        ),
        ("`xdplb real edit` command", &s.cli_ms, Some(10.0)),
        ("control-socket request", &s.socket_ms, Some(10.0)),
    ] {
        let p99 = percentile(v, 0.99);
        let (t, met) = match target {
            Some(t) => (
                format!("p99 < {t:.0}"),
                if p99 < t { "yes" } else { "no" }.to_owned(),
            ),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let _ = writeln!(
            out,
            "| {what} | {:.1} | {p99:.1} | {:.1} | {t} | {met} |",
            percentile(v, 0.5),
            v.iter().copied().fold(0.0, f64::max)
        );
    }
    let _ = writeln!(
        out,
        "\nA change touches only its own service's maps: services are shared between the agent's \
         state and the next one until a change copies the one it touches, and the map writer \
         skips every service the two share (asserted without timing by the state's and the config's \
         unit tests: a weight change among 1,000 services writes only that service's entries, a \
         reload of a 300-service file that changes one keeps the other 299 untouched, and a reload \
         parses and applies only the sections that changed, with the same result as a whole parse \
         and apply). The saved \
         state for restarts takes a journal line per change (the services it changed), folded into \
         a snapshot once the journal outgrows it.\n\n\
         Where the time goes. Starting takes about 2 s with no service at all, mostly the \
         kernel's verifier checking the datapath's programs (3 to 5 s until the load-based \
         schedulers' scan became a function it checks once). Loading the file adds its parse \
         (once: the command line hands the parsed file to the agent), building the state, and \
         writing the \
         maps: the real servers' arrays and counters in one batch system call per map, and the {} \
         lookup tables, each a map of its own, swapped into the array of maps in one batch (the \
         kernel waits for an RCU grace period on every update of an array of maps: one at a time, \
         10,000 tables took over two minutes). A reload compares the file with the one the agent \
         last applied from both ends, parses only the `[[service]]` sections between the first and \
         the last difference that are not the same text as before, and applies only those \
         services and any the CLI changed since (a service whose section is unchanged and whose \
         state is still what the last reload made of it is skipped); health checks and the saved \
         state follow only the services that changed. The file is compared with the last one \
         once, and checked for UTF-8 only where it differs; with nothing committed since the last \
         reload, the unchanged services are known without looking each up (2026-12-03, paired \
         against the build before, 80 reloads: about -2.2 ms, p50 12.4 to 10.4 ms). What is left \
         of its time, by a profile of the agent: the kernel's copy of the 9 MB file and the \
         comparison (about a third), copying the state's index of the 10,000 services for the \
         change and dropping the old one (about a fifth; a persistent map, tried, made the \
         lookups dearer by as much), and the command's own start (about 3 ms, as `xdplb real \
         edit`). The agent's memory is mostly the state, the parsed \
         file kept for reloads, and the lookup tables it keeps mapped (a page each); the maps' is \
         mostly the connection table (1,000,000 flows and as many LVS/NAT reply entries), then a \
         page per lookup table.\n",
        s.size.services
    );
    out
}

/// Adds the paths this bench times of Katran (its established flow, and its new flows with a
/// new source every packet) to a peer run's figures, measured right after it (a row shows xdplb
/// alone if that fails, and stderr says why).
fn katran_timed(peer: &Result<PeerBench>, bench: &mut Bench, katran: &mut Result<Katran, String>) {
    let (Ok(peer), Ok(k)) = (peer, katran) else {
        return;
    };
    eprintln!("measuring: Katran, established flow");
    match peer.established(bench, k, PEER_ROUNDS, REPEAT) {
        Ok(m) => k.established_here = Some(m),
        Err(e) => eprintln!("Katran, established flow: not measured: {e:#}"),
    }
    eprintln!("measuring: Katran, a new source every packet");
    match peer.new_sources(bench, k, PEER_ROUNDS) {
        Ok(m) => k.new_source = Some(m),
        Err(e) => eprintln!("Katran, a new source every packet: not measured: {e:#}"),
    }
}

fn main() -> Result<()> {
    let out_dir: PathBuf = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| "docs".into());
    if std::env::args().nth(2).as_deref() == Some("--scale-only") {
        print!("{}", scale_section(&scale(SCALE, SCALE_CHANGES)?));
        return Ok(());
    }
    if std::env::args().nth(2).as_deref() == Some("--compare") {
        let object = |n: usize| -> Result<Vec<u8>> {
            let path = std::env::args()
                .nth(n)
                .context("--compare needs two datapath objects")?;
            std::fs::read(&path).with_context(|| format!("cannot read the object {path}"))
        };
        let only = std::env::args().nth(5).unwrap_or_default();
        let (a, b) = (object(3)?, object(4)?);
        print!("{}", compare(&a, &b, &only, COMPARE_ROUNDS, REPEAT)?);
        return Ok(());
    }
    let mut bench = Bench::new().context("loading the benchmark programs (needs root)")?;
    let peer = PeerBench::find();
    let peer_run = |when: &str| -> Result<Katran, String> {
        let p = peer.as_ref().map_err(|e| format!("{e:#}"))?;
        eprintln!("measuring: Katran ({when}), {}", p.scripts().display());
        p.run(PEER_ROUNDS).map_err(|e| format!("{e:#}"))
    };
    // Every test run on one CPU, ours and Katran's, back to back.
    let pinned = pin_to_cpu(BENCH_CPU)?;
    let mut katran_before = peer_run("before");
    katran_timed(&peer, &mut bench, &mut katran_before);
    let mut ms = Vec::new();
    for case in Case::all() {
        eprintln!("measuring: {}", case.name());
        ms.push(bench.measure(case, ROUNDS, REPEAT)?);
    }
    let mut katran_after = peer_run("after");
    katran_timed(&peer, &mut bench, &mut katran_after);
    if let Ok(p) = &peer {
        p.unload()?;
    }
    let katran = katran_before.as_ref().ok().zip(katran_after.as_ref().ok());
    let missed = |case: Case| {
        let t = target(&ms, katran, case).and_then(|t| t.ns);
        t.zip(cost(&ms, case)).is_some_and(|(t, c)| c > t)
    };
    let mut profiled: Vec<Case> = Case::all()
        .into_iter()
        .filter(|c| PROFILED.contains(c) || missed(*c))
        .collect();
    // The NAT new flows fill the reply index: sampled after the replies, which need theirs.
    profiled.sort_by_key(|c| matches!(c, Case::NatNewFlow | Case::Nat6NewFlow));
    let profiles: Vec<(Case, Result<Profile, String>)> = profiled
        .into_iter()
        .map(|case| {
            eprintln!("profiling: {}", case.name());
            let shares = profile(&mut bench, case, BENCH_CPU, &std::env::temp_dir());
            (case, shares.map_err(|e| format!("{e:#}")))
        })
        .collect();
    drop(pinned);
    std::fs::write(out_dir.join("benchmarks-datapath.svg"), svg(&ms, katran))?;
    println!("## Datapath cost per packet\n");
    println!(
        "BPF_PROG_TEST_RUN, {ROUNDS} rounds alternating each case with a bare \
         `return XDP_TX` program on the same TCP frame (54 bytes; 74 for IPv6: a SYN for a new \
         flow, an ACK for an established one), every run pinned to CPU {BENCH_CPU}. A round \
         times {REPEAT} iterations of each as {SUB_RUNS} test runs of {each} (the kernel's mean \
         time per iteration in each) and takes their median, so that a disturbance shorter than \
         a few of them (an interrupt, the host taking the CPU away) lands in one test run and \
         not in the figure. A case whose baseline moved more than {limit:.0} % within its rounds \
         is measured again, up to {ATTEMPTS} times in all, and the attempt whose baseline moved \
         least is kept: chosen by the baseline alone, never by the case's own times; the paths \
         of Katran this bench times follow the same rule. Every program a test run starts is \
         held in the kernel's XDP dispatcher (attached to a veth of its own that stays down, so \
         no frame reaches it): a test run then does not add and remove it around its loop, an \
         RCU grace period and an interrupt to every CPU each time (up to the twenty-fifth run; \
         see the history below). \
         Every case the program forwards runs behind the `xdp_bench` wrapper, which restores the \
         frame from a template (forwarding rewrites at least its destination MAC, and the director \
         acts only on frames for its own) or varies its source (a new flow every iteration) and \
         tail-calls the program; their baseline is the wrapper in front of the bare program, so the \
         wrapper's own cost cancels out. Each run checks the program's verdict. New flows with sync \
         on run 50,000 iterations per round (what the ring holds; drained between rounds, as the \
         agent drains it). \"Baseline moved\" is (max - min) / median of the case's baseline rounds.\n",
        each = sub_runs(REPEAT).1,
        limit = DRIFT_LIMIT * 100.0,
    );
    let (_, drift_text) = drift(&baselines(&ms, katran));
    println!("{drift_text}");
    print!("{}", table(&ms, katran));
    println!("\n![datapath cost](benchmarks-datapath.svg)\n");
    println!(
        "The targets. The issue sets four: non-VIP at most +15 ns, DR established at most +50, \
         TUN at most 0.8x Katran's established path and a new flow at most 0.7x Katran's (the \
         mean of its two runs, next section); and a rule for every path added after it: no more \
         than its nearest existing path plus the work it must add, written down. Each added \
         path's target is read that way and measured so: its nearest path runs in every one of \
         the case's rounds too (between the baseline and the case, before the case in one round \
         and after it in the next, with its own frame and configuration, on the same connection \
         table), and the case meets its target when the median of its per-round difference from \
         that path is within the budget below (the last column there). The table above shows it \
         as (nearest + budget), the nearest path's cost read in the case's own rounds: the \
         case's cost above bare less that difference. Up to the twenty-sixth run the nearest \
         path's figure was its own row's, measured minutes apart, and a new flow's row moved by \
         up to 80 ns between two runs whose baselines held (in two such runs the DR \
         schedulers' new flows moved by -7.5 to +81 against DR mh's +18): more than most \
         budgets, so a verdict said more about when a row ran than about the path (only sync's \
         own cost was measured in its case's rounds, against sync off). Up to the fifteenth run they were fixed figures, \
         each the nearest path's own fixed target plus the budget, with 150 for every new flow, \
         which the issue does not ask (its new-flow target is against Katran); that 150 made \
         every scheduler's and every derived new flow's row a miss whatever the scheduler added. \
         The budgets are those figures' where they were written down; where they were not (0 \
         for the sync event, the scans of the schedulers that choose by load and the locality \
         table; the NAT reply's FIB lookup counted as nearly free) they are what the work costs \
         by the profiles and the stage-by-stage figures below. Since the twentieth run the NAT \
         replies' budgets count the kernel's FIB lookup as measured alone in the same run (the \
         last two rows of the table above: `xdp_fib` calls the helper as the reply path does, \
         on the translated reply's frame, arriving on the same interface), the IPv4 reply's in \
         place of the 60 ns read off its profile before, the IPv6 reply's as what the IPv6 \
         lookup costs over the IPv4 one, which its budget of 20 left out. Since the twenty-eighth \
         run IPv6 TUN's budget, written as what TUN adds to DR (20 when it was written), is \
         read so in the same run: TUN's established path less DR mh's (23 in the \
         twenty-seventh).\n"
    );
    print!("{}", budgets(&ms));
    println!();
    println!(
        "Where the time goes. Non-VIP traffic stops at the VIP prefilter (one array read). An \
         established flow costs one connection-table lookup (a keyed hash of the 40-byte key, IPv6-sized, then the tags and the key of one 4-slot \
         bucket), the real server's entry, the per-service and per-real counters, \
         and the rewrite; the service lookup is skipped (the flow names the service) and the clock is \
         jiffies (one load). IPIP adds growing the frame and writing a 20-byte header with its \
         checksum. A new flow adds the service lookup (among the services its CPU found last; in \
         the kernel's hash map when those do not hold it, or the services changed since), the \
         flow hash, the Maglev table (an inner map \
         of an array of maps) and the connection table's insert, which in the bench's full table (for 65,536 \
         connections, 131,072 slots) ranks the flow's bucket and pushes one entry out, taking its \
         connection off its real server's counts. A larger table (the default is for 1,000,000 \
         connections) misses the CPU caches more. A persistent service's new client adds a \
         second table of the same layout, the templates' (262,144 slots): a lookup that misses \
         and an insert. A new flow \
         the guard does not remember skips the insert; a SYN to a service that schedules by hash \
         (sh, mh, dh) on a CPU past its limit also skips the connection table's lookup, as Katran's \
         SYN path does (the hash gives a remembered flow's SYN sent again the same server): what \
         is left is the service lookup and the scheduler. The \
         schedulers that choose by load add the scan of the real servers (bpf_loop) and the count \
         updates; rr and wrr a per-CPU position. An LVS/NAT request adds to DR's established path \
         the rewrite of the destination address and port with the incremental checksums; a NAT \
         connection's first packet adds to DR's new flow that rewrite and a second insert, into \
         the reply index (a third table of the same layout, as large as the connection table). \
         A NAT reply takes the real-server prefilter, a tail call to the reply program, the \
         reply index's lookup (keyed by the reply's own flow; the connection table's too for a \
         busy connection's first reply in each clock tick, for a SYN, FIN or RST, and for a \
         connection not established), the rewrite, and the kernel's FIB lookup helper toward the \
         client (route and neighbour), which no other path needs. \
         IPv6 adds the tail call to its pipeline and parsing a 40-byte \
         header; the table keys are IPv6-sized for both families, so its lookups cost the same. \
         IPv6 NAT requests and LVS/TUN to IPv6 real servers (IPv4-in-IPv6) add one more \
         hand-off: a tail call to a program of their own, which parses the packet again (the \
         pipeline's stack has no room for the rewrite or the 40-byte outer header); the IPv6 \
         reply path runs its stages in frames of their own (calls) for the same reason. \
         Every packet for a service also has its IPv4 header checked as the kernel would (the \
         checksum over 5 to 15 words, the source, the TTL) and one compare for options; a packet \
         with options takes a tail call to the options' checker, its walk, and the director's \
         program a second time, so it costs more than twice DR's established path (rare traffic: \
         options are all but unused on the Internet).\n\n\
         Stage by stage (measured once, 2026-12-03, with variants of the program that stop after \
         each stage; not rerun by this command): DR established, about 88 ns above bare: parsing \
         ~7, the prefilter and the director's checks ~2, building the flow key ~7, the \
         connection-table lookup with its checks and the real server's entry ~47 (the kernel's \
         hash lookup ~27 of it: hashing the 40-byte key ~16, walking the bucket ~7), the IPv4 \
         header checks ~13, forwarding and the counters ~12 (the two counter updates at most ~5). \
         IPIP adds 25 to 40 ns, mostly the head-adjust helper and writing the outer header (then \
         a byte at a time); its checksum is a few ns, so a \
         per-real-server precomputed sum would save almost nothing (0 to 7 ns measured without \
         any). A new flow, about 500 ns: up to the service lookup (with the table miss) ~100, the \
         header checks ~20, the Maglev choice ~55, the real server and the guard ~5, the \
         connection-table insert 300 to 400 (bpf_lru_pop_free ~130, htab_lru_map_update_elem ~53, \
         lookup_nulls_elem_raw ~40, htab_map_hash ~36, memcpy ~20 per packet in a perf sample), \
         mostly cold memory: a fresh node and its bucket. Tried and measured, no gain: a shared \
         LRU without per-CPU lists; a 16-byte key for IPv4 flows (within 5 ns established, 20 ns \
         new, in a throwaway map; not worth changing a pinned map's layout); reusing the header \
         bytes the checksum check read. With the production default of 1,000,000 flows instead \
         of the bench's 65,536, a new flow costs about 170 ns more and a guarded one about 100 \
         more (cache misses). Since then the frame is read and written a word at a time \
         (lb-ebpf's `frame`: LLVM's BPF backend splits every load and store it cannot prove \
         aligned into single bytes, and headers sit at any alignment in a frame); `cargo xtask \
         bench --compare` of the builds before and after, 40 paired rounds: DR established -13 \
         ns, TUN -18, IPv4 options -30, the NAT reply -44, IPv6 DR -12, IPv6 TUN -30, non-VIP \
         -2, new flows within their spread. Then (2026-12-03, later; paired runs in both \
         orders): the load-based schedulers' scan became a global function the verifier checks \
         once (xdplb's verification from about 600,000 processed instructions to about 220,000, \
         which made room for the next change); the usual IPv4 header's checksum is summed from one \
         20-byte read (DR established about -8 ns); the Ethernet addresses are written from \
         registers (the per-line profile's hot spot on the frame store, a store-forwarding stall, \
         is gone; about -1 ns); and the established cases send ACKs (they sent SYNs, which also \
         took the SYN-flood guard's per-CPU check, about 5 % of the program's samples). The \
         tunnels then stopped writing the outer frame's Ethernet addresses twice (the \
         encapsulation wrote them, converting the director's MAC per packet, then the send): TUN \
         and IPv6 TUN about -6 to -13 ns. A frame that leaves by the interface it came in on \
         is then sent without reading the ingress interface again: TUN about -4 ns, IPv4 options \
         -8, IPv6 -2 to -3, DR and NAT within 2. What is \
         left, by the per-line profile below: the connection table's lookup, whose call site \
         holds about a fifth of the program's own samples, with the kernel's hashing and bucket \
         walk on top; no other line holds more than about 6 %. Also tried: skipping the table's \
         lookup for every SYN of a service that schedules by hash, as Katran does (about 4 % of \
         a new flow; not done, since a SYN sent again after a table change would then leave its \
         flow's entry and its real server's counts behind).\n\n\
         Then (2026-12-03, night) the connection table became a set-associative table of our own \
         (docs/conntrack.md, lb-common's `conn_table`) in place of the kernel's LRU hash: one BPF \
         array of 4-slot buckets, 64 bytes a slot, picked by a keyed multiply-xorshift hash of \
         the key's five 8-byte words with a random seed per table; a lookup compares tags, then \
         the key, in one bucket; a new flow takes an empty or timed-out slot, else pushes out the \
         entry least worth keeping (handshakes and closing connections before established ones, \
         those not looked up lately first, then the longest idle), whose connection leaves its \
         real server's counts. Nothing to allocate, link, lock or unlink. `cargo xtask bench \
         --compare` of the builds before (8c07060) and after, 40 paired rounds in one machine \
         state, above bare, before -> after (median difference per pair): DR mh established 66.5 \
         -> 46.0 (-20.5), DR sh established -24, with sync on -18, IPv4 options 155.5 -> 126.0 \
         (-31), TUN 98.5 -> 87.0 (-20), NAT request -22.5, NAT reply -28, IPv6 DR 95.0 -> 53.5 \
         (-35), IPv6 TUN -22, non-VIP 0; new flows about halved: DR mh 708 -> 318 (-347), sh 840 \
         -> 351, rr 890 -> 339, lc 952 -> 450, wlc 596 -> 340, dh 449 -> 247, lblcr 1047 -> 498, \
         IPv6 mh 705 -> 328, the persistent new client 1948 -> 1090 (its templates were still an \
         LRU hash, until the change below); a new flow past the guard within 2. Two costs found on the way: ranking the \
         bucket's slots costs about 25 to 35 ns a new flow against plain longest-idle, the price \
         of sparing established connections under a flood; an alternate bucket for a flow whose \
         own is full of live entries (simulated: 0.4 % instead of 4 % of connections pushed out \
         at the rated size) cost 70 to 115 ns a new flow in a full table, where both buckets are \
         always full: not kept. The write of a new entry is a global function \
         (`xdplb_conn_write`) for the verifier's sake: as a static one it took xdplb past the \
         1,000,000 instructions the verifier may process. \
         Paired again on 2026-12-04, the machine in a slower state, this build was +61 above \
         bare on DR mh established; a variant hashing with NH (the universal hash of UMAC: five \
         multiplications that do not wait on each other, where the chained hash's do) came within \
         3 ns of it in every established case: not kept. Every full run \
         of this command from the change to the reply index's below (thirteen, 2026-12-03 and \
         04) was flagged, baselines moving 30 to 184 % within a case and Katran's own established case by up to 45 ns \
         between its two runs: DR mh established +48 to +74, TUN +72 to +141 (0.62x to 1.00x \
         Katran in the same run), new flow 0.51x to 0.70x Katran's new-source case. The DR \
         target of +50 is met in one machine state and missed in the other. Since the ninth, \
         a flow's entry is refreshed only once its packet has passed the header checks \
         (docs/RELIABILITY.md; +1 to +2 ns on the established paths, paired). Then (2026-12-04, \
         later) the persistence templates moved from the kernel's \
         LRU hash into a table of the connection table's layout (`TEMPLATE_TABLE`, 262,144 \
         slots; a new template takes an empty slot of its bucket or the longest unused, as the \
         LRU gave up its least recently used): paired, 40 rounds, before -> after, the \
         persistent new client 984.5 -> 570.5 (-403.5 per pair), DR mh new flow -3.5, IPv6 new \
         flow -14.5, the established paths within 1 ns but IPv4 options (+5). Then (2026-12-04, \
         evening) the LVS/NAT reply index moved from the kernel's LRU hash into a third table of \
         this layout (`NAT_REPLY_TABLE`, 80-byte slots, as many buckets as the connection \
         table; a new reply takes an empty slot, else the longest unused): paired, 40 rounds, \
         before -> after, the NAT new flow (a row added then) 1071 -> 620 (-433 per pair), the \
         NAT reply 209.5 -> 179.5 (-27), the IPv6 NAT reply 345 -> 308 (-37), every other case \
         within its spread. Its first full run (the thirteenth above) was not committed: its \
         baselines moved up to 184 % within a case (DR mh established +51, TUN 1.02x Katran, \
         where paired runs the same hour gave +50 and +74 above bare), and it found the NAT \
         reply's profile run with no reply entry left (the NAT new flows, measured after it, had \
         filled the index many times over: they now run before the request and its reply). The \
         same build then ranked replies as the connection table ranks entries (a new reply gives \
         up one whose connection is not established first; the client's packets write the reply \
         again when they end the handshake, close, or refresh the connection, so one given up \
         while idle comes back), so that a flood of NAT flows, which the new-flow guard always \
         remembers, cannot push out established connections' replies (paired against the build \
         before, 40 rounds: the NAT cases within their spread, new flow -4, reply +5, IPv6 reply \
         -5; the IPv4 established paths 7 to 11 ns less, the program's layout, not chased). The \
         fourteenth run was of that build (flagged at 69 %; every target of the issue met in \
         it: DR mh established +49, TUN 0.69x Katran, new flow 0.53x). A test flooding NAT \
         flows then found replies whose handshake the server's ACK had ended left unranked; \
         the reply path now ranks its own entry (paired, 40 rounds, the machine noisier: NAT \
         reply -0.5 [-29, 19], IPv6 NAT reply +8.5 [-22, 42], NAT new flow -11 [-62, 47]). The \
         fifteenth run was of that build (flagged at 112.5 %). The sixteenth (2026-12-04, night) \
         was of the same datapath (a review since moved code without changing what it does, \
         and `nat_max` changed only the agent): the first with the targets read as the issue \
         words them (the nearest path in the same run plus a written budget, above) and with a \
         sampled profile of every case that misses (below); flagged at 98 %, the machine slow \
         (DR mh new flow +366, 0.66x Katran's +530/+573; DR mh established +49, DR sh +68), 12 \
         of the 27 added paths within their budgets. Then lblc and lblcr stopped scanning every \
         real server of the service for each new flow: the destination's server is taken as \
         soon as it is not busy (no more active connections than its weight), as IPVS's \
         is_overloaded looks at the others only then, and a set of one is read without the \
         loop (paired, 40 rounds, B - A per pair: lblc new flow -137.5 [-182, -94], lblcr \
         -152.5 [-188, -134], every other case within its spread). Tried and not kept: a SYN's \
         service looked up ahead of the connection table and its Maglev slot fetched while the \
         table's bucket is, so the two waits the profiles show would overlap (DR mh new flow \
         +16.5 [4, 32] per pair; the early lookup alone moved the schedulers' new flows by -21 \
         to +23). The seventeenth run was of the build with the lblc change. The NAT reply's \
         check of its slot's tag after the copy landed after it (paired, 40 rounds: NAT reply +2 \
         [1, 4] ns, IPv6 NAT reply -1 [-3, 0]), then the same check for the connection table's \
         lookup and the persistence templates' read, which a new flow or client written over \
         their slot on another CPU could otherwise tear (paired, 40 rounds, B - A per pair: DR \
         mh established +2 [-1, 6], DR sh +1.5 [-2, 4], IPv4 options +4.5 [0, 13], NAT reply +3 \
         [-1, 18], the new flows -4 to -30, the program's layout). Two IPv6 cases came with it, \
         a persistent service's new client and the LVS/NAT new flow (their budgets in the table \
         above). The eighteenth run was of that build. Then an established LVS/NAT \
         connection's replies after the first in a clock tick stopped looking the connection \
         up (the first of each tick refreshes its entry; a SYN, FIN or RST is always tracked), \
         and a connection taken up mid-stream ranks its reply established from the start \
         (paired, 40 rounds, B - A per pair: NAT reply -17 [-18, -16], IPv6 NAT reply -25 \
         [-28, -23], NAT new flow -11 [-27, -5], every other case within its spread). The \
         nineteenth run was of that build; the twentieth of the same datapath, the first with the kernel's FIB lookup measured alone for the NAT replies' \
         budgets. After it, an IPv6 TCP or UDP frame from a NAT real \
         server's address to no VIP goes from xdplb straight to the IPv6 reply program, without \
         xdplb_v6's tail call and parse (paired, 40 rounds, B - A per pair: IPv6 NAT reply -19 \
         [-20, -19]; the other IPv6 cases +1 to +4, the peek at the fixed header every IPv6 \
         frame now takes in xdplb). Then (2026-12-05) the reply index's bucket is \
         picked by the client's side of the flow alone, so a new flow of a service with \
         an LVS/NAT real server starts fetching it before the scheduler runs (paired, 40 \
         rounds, B - A per pair: NAT mh new flow -36 [-60, -16], IPv6 NAT mh new flow \
         -56.5 [-74, -36]; DR mh new flow +2 [-8, 15], IPv6 DR mh new flow +12.5 [3, 25], \
         sync on +1.5, guard -6, ring full -3.5; fetched for every service, DR's new flow \
         paid +147 for a bucket it never reads: not kept). \
         Then a SYN's service is looked up before the connection table, and the buckets \
         its new flow will need beside the table's are fetched with it: its reply's for a \
         service with an LVS/NAT real server (in place of the fetch in the scheduler's \
         stage just above), its client's template for a persistent service (paired, 40 \
         rounds, against the build before, B - A per pair: the persistent new client \
         -73.5 [-89, -63], IPv6 -117.5 [-135, -88]; NAT mh new flow -93 [-138, -66], IPv6 \
         -13.5 [-52, 25]; the other schedulers' new flows -4.5 to -23 but lblc +1; DR mh \
         new flow -4.5 [-11, 11], the guard's +8 [7, 10], IPv6 DR mh new flow +24 [3, 43]). The \
         twenty-first run was of that build. Then (2026-12-05) connection sync's events left the \
         kernel's ring buffer (a spin lock taken with interrupts off for every reserve, and an \
         interrupt to wake the agent whenever it had kept up) for a ring of each CPU's own in \
         one memory-mapped array, written without a lock (a CPU's XDP programs never run two at \
         a time) and read by the agent every millisecond (paired, 40 rounds, B - A per pair: DR \
         mh new flow with sync on -19.5 [-53, 2], -14 [-31, 2] in a second run; the event lost \
         to a full ring -55 [-89, -17], -20.5 [-36, -9]; the established paths within 1). The \
         twenty-second run was of that build; in its sync section the agent's read every \
         millisecond shows in the delay at 1,000 flows/s (p50 0.58 ms, 0.07 when the ring buffer \
         woke the agent for each event) and in the batching at 50,000 (p99 4.1 ms against 14.3, \
         half the datagrams). Then the event's time became the kernel's tick (bpf_jiffies64, a \
         load) in place of bpf_ktime_get_ns() (a helper call, most of what the event still \
         cost), the agent placing each event between its two looks at the ring and within that \
         tick (paired, 40 rounds, B - A per pair: DR mh new flow with sync on -38 [-65, -15], \
         -37.5 [-51, -23] in a trial without any time; the event lost to a full ring -14.5 [-37, \
         28]; the established paths -4 to +3). The twenty-third run, of that build, was not \
         committed: its baselines moved up to 54 % within a case and 48 % between cases measured \
         against the same baseline (4 to 16 % in the runs before), and rows running the same \
         code parted by more than their targets (DR mh established +47, with sync on +72; the \
         event lost to a full ring +427, 152 over the new flow it is part of); it met the \
         issue's own targets (new flow 0.47x Katran) and 19 of the 29 added paths' budgets, sync \
         on's new flow missing by 14 (+9 over sync off in the same rounds). The twenty-fourth \
         run, right after it (flagged at 54 % within a case and 46 % between cases), met the \
         issue's targets but DR's established path (DR mh +67, where the same path with sync on \
         took +46 and DR sh +47; TUN 0.69x Katran, the new flow 0.59x, non-VIP +8) and 19 of the \
         29 added paths' budgets, sync on +27 over sync off in the same rounds. Then \
         (2026-12-05, morning) the bench itself changed: a round's time became the median of ten \
         test runs of a tenth of its iterations each, a case whose baseline moved more than 10 % \
         within its rounds is measured again, up to three times, keeping the attempt whose \
         baseline moved least (chosen by the baseline alone), and Katran's two paths our targets \
         are read against, its established flow and its new flows with a new source, are timed \
         by this bench in that same way right after each peer run (the peer benchmark's own \
         established figure shown beside). The bench's programs are also held in the kernel's \
         XDP dispatcher (each attached to a veth of its own that stays down), so a test run no \
         longer adds and removes its program there around the timed loop: an RCU grace period, \
         some 16 ms here, and an interrupt to every CPU each time (smp_call_function_many_cond, \
         3 to 7 % of the samples of the twenty-fifth run's profiles of established paths, which \
         ran before that part; the timed loops run through the dispatcher either way). The \
         twenty-fifth run, of that bench before its dispatcher part and of the twenty-fourth's \
         datapath, fell in the machine's slow state (flagged at 49 % within a case and 35 % \
         between cases, 36 of 41 baselines measured again; DR mh established +68, TUN 0.82x \
         Katran, the new flow 0.72x, 23 of the 29 budgets; it took 27 minutes). The twenty-sixth \
         run, of the whole bench and the same datapath, was the first unflagged one: the \
         datapath's cases took under two minutes of it, and its baselines held (9.5 % within a \
         case, 2.1 % between cases): the dispatcher's updates around every test run, an RCU \
         grace period and an interrupt to every CPU each, had been most of every run's time and, \
         it seems, much of what moved its baselines. It met every target of the issue (non-VIP \
         +9; DR mh established +46, DR sh +45.5; TUN +70, 0.66x Katran; the new flow +206.5, \
         0.48x Katran's new-source case) and 20 of the 29 added paths' budgets, each read then \
         against its nearest path's own row. A run of the same build later that morning (not \
         committed; flagged by one of Katran's baselines alone, at 40 %; ours held, within 6 % \
         and 2.4 %) moved the established rows by \
         at most 4 ns but the new flows' rows by -44 to +81 (DR mh +18, the DR schedulers -7.5 \
         to +81, sync on -44, IPv6 DR -31.5), and its verdicts with them (wlc 54 over its budget \
         where the run before had it 2 over, sh 14 over where it had been within): a new flow's \
         rows, each minutes from its nearest path's, could not tell a path's added work from \
         when its rounds ran. Since then each added path's nearest path runs in the case's own \
         rounds (the targets' paragraph above). The twenty-seventh run, of that bench and the \
         same datapath (2026-12-05, forenoon), was unflagged too (9.8 % within a case, 2.2 % \
         between cases): every target of the issue met (DR mh established +46, TUN 0.64x Katran, \
         the new flow 0.48x), 23 of the 29 budgets; the misses: the guard +62.5 over DR's \
         established path (50), the persistent new client +180 over rr's new flow (150), IPv4 \
         options +79 (70), the IPv6 NAT reply +146.5 (134), IPv6 TUN +25 over IPv6 DR (20, where \
         TUN added 23 to DR in the same run) and sync on's established flow +0.5 over sync off \
         (0). Tried after the first runs \
         of that bench and not kept: a SYN's connection-table bucket fetched (a load nothing \
         waits on) before its service lookup, so that the table's miss overlaps the lookup \
         (paired, 40 rounds, against the build before, B - A per pair: DR mh new flow -13 and -1 \
         in two comparisons, sh -19, lblc and lblcr -27, the event lost to a full ring -21, IPv6 \
         DR mh -35 and -48.5, though the same object compared with itself gave -15.5 there, the \
         comparison's known IPv6 position bias; but the persistent new client +49 to +60 in four \
         comparisons, IPv6 +36 to +61: with the table's miss outstanding through the lookup, the \
         template bucket's fetch, which needs the service's id, enters the CPU's window only \
         once that miss is back, so two misses that overlapped follow each other). Also tried, \
         no gain: an IPv4 address's hash started from MurmurHash3's state after the three words \
         every IPv4-mapped address begins with (the same result, three steps of its chain fewer; \
         the guarded new flow +0.8 [-1, 2.5] per pair, where the hash's lines hold a third of \
         its samples: the chain seems hidden behind the loads of the service lookup and the \
         Maglev table). And xdplb built for the BPF instruction set's 32-bit registers \
         (bpf-linker --cpu-features=+alu32) is refused by the verifier (a register spilled \
         before it was written). The twenty-eighth run, of the same datapath, IPv6 TUN's budget \
         read in the run since (see the targets), was unflagged too (9.5 % and 2.4 %): every \
         target of the issue met (DR mh established +47.5, TUN 0.67x Katran, the new flow \
         0.52x), 25 of the 29 budgets, the misses the guard (+59 over DR's established path), \
         IPv4 options (+77.5), the IPv6 NAT reply (+154 over the IPv4 reply) and the persistent \
         new client (+157 over rr's new flow). Then a packet with IPv4 options went to their \
         checker before the pipeline, right after the VIP prefilter, the checker coming back \
         with its verdict in the mark, so that the director's program runs once for it where it \
         ran up to its check stage and again (its check stage drops a refused packet where a \
         service is at stake; one for no service goes to the kernel as before). The pipeline \
         going on past a failed hand-off made the verifier refuse xdplb (the same spill as \
         alu32's), and the hand-off before the prefilter took it past the verifier's 1,000,000 \
         instructions; a failed hand-off now drops the packet (paired, 40 rounds, B - A per \
         pair: IPv4 options -35 [-36, -35], TUN -5.5; DR established +1 to +1.5 and sync on +3, \
         where the same object compared with itself showed +1.5 to +2 in that position; the \
         guarded new flow -1). The twenty-ninth run was of that build. Then (2026-12-05, \
         afternoon) a new flow's service lookup and scheduling hash got cheaper. A variant with \
         a trivial hash in place of MurmurHash3 was 27 ns faster on the guarded new flow: the \
         hash is about a quarter of that path, but its values are fixed (directors behind ECMP \
         must agree, and user space predicts them). So it is computed the same, but faster: the \
         flow key's addresses are read a word at a time from the aligned key, where their bytes \
         had been gathered one by one and spilled to the stack (guarded new flow -3 ns per \
         pair); and MurmurHash3's step, rotate by 13, times 5, plus a constant, is computed as \
         sums that do not wait on each other, five instructions deep instead of eight (-2.5). \
         Each CPU then keeps the services it found last (64 slots of a per-CPU array). A slot is \
         used only while a generation number, which the agent bumps with every change to the \
         services, still holds the value the slot was filled under. Before, every new flow \
         looked its service up in the kernel's hash map, hashing the 20-byte key. Paired, 40 \
         rounds, the three changes against the twenty-ninth run's build, B - A per pair: the \
         guarded new flow -18 [-19, -17]; DR mh new flow -23; the other schedulers' new flows -6 \
         to -20.5; the persistent new client -17; NAT mh new flow -30; IPv6 DR mh new flow \
         -21.5; the IPv6 persistent new client -30.5; IPv6 NAT new flow -34.5. The established \
         paths moved 0 to +2.5, the comparison's position bias. The IPv6 NAT reply's +20.5 is \
         that bias too: the same object against itself gives +22 in that position. Tried first, \
         no gain: the Maglev slot's modulo as a multiply and shift (+1.5 per pair, and it would \
         move clients between servers). The thirtieth run was of that build, and a second run \
         right after it (not committed) gave the guarded new flow +44 and the persistent new \
         client +188 over rr's new flow. Then a persistent service's SYN fetches the connection \
         table's bucket together with its template's, so that the two misses come in together, \
         where the table's had been issued by its lookup a stage later. Only a persistent \
         service's SYNs pay for it: one more keyed hash of the flow (paired, 40 rounds, both \
         orders, B - A per pair: the persistent new client -10.8 and -2, IPv6 -5.5 and +2.2, so \
         about -4 each; DR rr new flow +1.2 and -1). Fetching all four slots of the template's \
         bucket instead of the first (a slot is a cache line) gave nothing (-1) and cost the NAT \
         new flow about 15 ns through the same helper: not kept. The thirty-first run was of that \
         build. Then (2026-12-05, evening) a \
         persistent service's SYN stopped building its template's key from bytes: the netmask's \
         AND and the copies into the 40-byte key took some 60 instructions a key, three keys a \
         SYN (the fetch, the lookup, the write), and the mask's line held a quarter of the \
         director's samples in the thirty-first run's profile of the persistent new client. The \
         key is now built from the flow key's two address words and the mask's (paired, 40 \
         rounds, both orders, B - A per pair: the persistent new client -29 and -15, IPv6 -27 and \
         -18). Each CPU also keeps the last template key it placed and its place (a per-CPU array \
         of one entry), so the lookup and the write take the fetch's place without hashing the \
         key again (-12 and -6, IPv6 -8 and -5.5). Both changes against the thirty-first run's \
         build, every new-flow case in the rounds: the persistent new client -69.5 [-82.5, -65], \
         IPv6 -56 [-60.5, -46], the other new flows and the established paths within their \
         spread. The outer headers of LVS/TUN are built from their addresses' words: IPv6's, \
         whose address bytes had been read one at a time and kept in 16 stack slots across the \
         helper that grows the frame (IPv6 TUN -3.5 in both orders, IPv4-in-IPv6 -2.5 and -3), \
         and IPIP's, its checksum summed over those words as they are, not over byte-swapped \
         halves (TUN -1.5 in both orders). Tried, no gain: the connection table's hash started, \
         for an IPv4 flow (whose key's first word is always 0), from a state computed once at \
         load, one multiply fewer in the chain every lookup waits on (0.0 on every established \
         path, both orders). The thirty-second run, of that build, is the tables above; it ran on \
         another machine of this kind, an Intel Xeon where the runs before ran on an AMD EPYC \
         (the machine section), so its figures compare with the runs before only through the \
         baselines and Katran's paths in the same run: Katran's established path took +55 to \
         +57 there \
         (+112 on the EPYC), its new source +441 to +546 (+443). Telling a persistent or LVS/NAT \
         service's SYN from \
         the others' before the lookup would need a hint finer than the VIP prefilter's, which \
         is per address (this bench, as many sites, has both kinds on one VIP). \
         Where the NAT reply's time goes, by its sampled profile below (its fixed target of 120 then assumed DR's \
         established path plus a lookup, a tail call and a cheap FIB lookup): the kernel's FIB \
         lookup helper (bpf_ipv4_fib_lookup, fib_table_lookup, the MTU check it always makes \
         for XDP) takes about a fifth of the samples, 60 to 75 ns of the case's time in the \
         two runs profiled before the reply index's change, about DR's whole established path; \
         the reply index (a kernel LRU hash then, its hashing and bucket walk about 7 % of the \
         samples) and the connection table's lookup followed; the reply program's own lines were spread thin (none over 13 %). The \
         IPv6 reply's FIB lookup (bpf_ipv6_fib_lookup and the IPv6 routing table's walk under \
         it) takes about a third of its samples, some 150 ns: most of what it costs over the \
         IPv4 reply; its stages run in frames of their own (calls), the IPv6 pipeline's stack \
         having no room for them inline. In the fourteenth run's profile, the reply index in a \
         table of the connection table's layout, the FIB helper (with the route lookup and the \
         MTU check under it) took about a quarter of the IPv4 reply's samples, and the two keyed \
         hashes of the 40-byte key (the reply index's and then the connection table's, the \
         multiply-xorshift lines of conn_table.rs) about a fifth of the reply program's own: a \
         reply hashes twice where a request hashes once. \
         The row of 32768 established flows in turn (added 2026-12-04) times DR's established \
         path with each packet's connection-table entry out of the CPU's caches, as real traffic \
         has it (the other established rows repeat one flow, whose entry stays in L1): paired, \
         the kernel's LRU hash (8c07060) and this table cost about the same there, +248 and +255 \
         above bare (B - A per pair: +7 [-35, 31], and +12.5 [-10, 42] in a second run), four \
         to five times the one-flow figure. The entry is the only memory an established packet \
         reads that differs from flow to flow: what it costs to fetch is the machine's, so that \
         row has no target.\n"
    );

    println!("## Against Katran\n");
    match (&katran_before, &katran_after) {
        (Ok(before), Ok(after)) => {
            println!(
                "Katran's XDP balancer (commit {}, built and timed by the peer benchmark, \
                 `../shared/peer-bench`), run on CPU {BENCH_CPU} right before and right after the \
                 cases above; its bare XDP_TX took {:.1} ns before and {:.1} ns after (ours: {:.1} \
                 ns, the median of the first case's baseline). Costs above each one's own bare \
                 XDP_TX; the ratio uses the mean of Katran's two runs. The two paths our \
                 targets are read against, the established flow and new flows with a new \
                 source every packet, are timed by this bench right after each of those runs, \
                 exactly as ours are ({PEER_ROUNDS} rounds, each the median of its test runs, \
                 measured again while the baseline moved), with our wrapper in front of \
                 Katran's program as the run left it loaded, on the peer benchmark's own frames; \
                 its own figure for the established flow (a mean over each round's \
                 1,000,000 iterations) is shown next to it. The other rows are the peer \
                 benchmark's.\n",
                before.commit,
                before.bare_ns,
                after.bare_ns,
                ms.first().map_or(0.0, |m| median(&m.base_ns))
            );
            print!("{}", katran_table(&ms, before, after));
            println!(
                "\nWhat differs between the cases: Katran's frames are 74 bytes (TCP with \
                 options), ours 54. Ours inserts a new flow every iteration into a full table \
                 for 65,536 connections (131,072 slots) shared by the CPUs, pushing one out. \
                 Katran's new flows are timed two ways. With a new source address every \
                 iteration, by this bench: its wrapper in front of Katran's program as the peer \
                 benchmark's run left it loaded, on that benchmark's own SYN, right after each \
                 of its runs, {PEER_ROUNDS} rounds of {repeat} against the \
                 same wrapper in front of the bare program, Katran's count of the second's new \
                 connections reset before each (its flood guard stops inserting past \
                 {max_rate} a second per CPU). Each SYN inserts a new key, as ours does, into a \
                 per-CPU LRU of 4M entries that does not fill in a run (fresh nodes, no \
                 evictions; a 4M-entry table that never fills was about 40 ns cheaper for our \
                 former LRU table than its full 65,536-entry one); the target is read against \
                 that one. And the peer benchmark's own case, which rewrites one LRU key every \
                 iteration (an update in place whose node and bucket stay in the CPU's cache): \
                 unlike work, shown for reference. Katran's flood-guard case skips the insert \
                 for 87.5 % of its iterations; ours for all but one a second, and both skip the \
                 connection table's lookup for those SYNs. Katran has no LVS/DR (it only \
                 encapsulates) and no NAT. If the new-source measurement fails, its row shows \
                 xdplb alone.\n",
                repeat = peer::NEW_SOURCE_REPEAT,
                max_rate = peer::KATRAN_MAX_CONN_RATE,
            );
        }
        (before, after) => {
            let why = before.as_ref().err().or(after.as_ref().err());
            println!(
                "Not measured in this run: {}. Build the peer benchmark once \
                 (`KATRAN_GIT=/path/to/katran.git`, or `KATRAN_BENCH_DIR` where it is built) and \
                 run `cargo xtask bench` again.\n",
                why.map_or("unknown", |s| s.as_str())
            );
        }
    }

    println!("## Where the time goes, sampled\n");
    println!(
        "Every case that missed its target in this run, and the paths the issue names, the NAT \
         replies with them: `perf record` (the software clock: this machine has no hardware counters, so \
         `bpftool prog profile` cannot count cycles) samples CPU {BENCH_CPU} while each case runs \
         again for a few seconds, its baseline rounds included; `perf report` splits the samples by \
         symbol: the JITed programs (xdplb, the bench's wrapper `xdp_bench`, the bare `xdp_tx`) and \
         the kernel functions they call. Symbols with at least 2 % of the samples:\n"
    );
    println!("| case | where the samples fell |");
    println!("|---|---|");
    for (case, profile) in &profiles {
        let text = match profile {
            Ok(p) => p
                .symbols
                .iter()
                .map(|s| format!("{:.1} % {}", s.percent, s.symbol))
                .collect::<Vec<_>>()
                .join("; "),
            Err(e) => format!("not profiled: {e}"),
        };
        println!("| {} | {text} |", case.name());
    }
    println!();
    println!(
        "The director's programs' own samples (the JITed code of xdplb and of the programs it \
         tail-calls, xdplb_v6, the NAT programs, xdplb_4in6 and the options' checker; not the \
         kernel functions they call) by the lb-ebpf source \
         line each sampled instruction came from: the kernel keeps \
         the JIT address of every line of a program loaded with BTF (jited_line_info), which is \
         how this goes below the symbols (perf here cannot disassemble JITed BPF, and `bpftool \
         prog profile` needs hardware counters). The software clock's sample is the instruction \
         the timer found next, so a line's share includes waiting on the one before it (a map \
         lookup's call, a load that missed the cache). Inlined helpers show as their own source \
         (aya's `helpers.rs` is a map lookup or a helper call). Lines with at least {LINE_LIMIT} % \
         of the programs' samples, at most {LINES_SHOWN} a case:\n"
    );
    for (case, profile) in &profiles {
        let Ok(p) = profile else { continue };
        // Which programs they fell in: the lines several programs share do not say.
        let split: Vec<String> = p
            .by_program
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| {
                format!(
                    "{name} {:.0} %",
                    *n as f64 * 100.0 / p.program_samples() as f64
                )
            })
            .collect();
        println!(
            "{} ({} samples in the director's programs: {}):\n",
            case.name(),
            p.program_samples(),
            split.join(", "),
        );
        println!("| share | source line |");
        println!("|---:|---|");
        for l in p.lines.iter().take(LINES_SHOWN) {
            println!("| {:.1} % | `{}` |", l.percent, l.line.replace('|', "\\|"));
        }
        println!();
    }
    println!(
        "What the thirty-second run says. Flagged, by Katran's own new-source case alone: its \
         baseline moved 12.7 % within its rounds, and stayed over 10 % when it was measured \
         again; ours held (at most 6.5 % within a case, 4.7 % between cases). It ran on an Intel \
         Xeon, where the runs before ran on an AMD EPYC, so its figures are set beside Katran's \
         in the same run, not beside those runs. Every target of the issue was met: non-VIP +5; \
         DR mh established +33 and DR sh +33; TUN +40.5, 0.72x Katran's established path timed \
         the same way (+55, +57; +60 and +61 by the peer benchmark's own harness); the new flow \
         +147, 0.28x Katran's new-source case (+546, +495.5; Katran's own case, one LRU key \
         rewritten every packet, +143 and +146). All 29 added paths were within their budgets: \
         the persistent new client +67 over rr's new flow (150; +180.5 in the thirty-first run, \
         on the EPYC), the guarded new flow +28.5 over DR's established path (50), IPv6 TUN +6 \
         over IPv6 DR (8, what TUN added to DR in the same rounds). Two runs of the build before \
         the IPIP change, on this machine the same hour (not committed; both flagged by the same \
         Katran case), had met every budget too, but TUN at 0.75x and then 0.82x Katran (+42 and \
         +45 against +56 and +55): on this machine TUN's target is the tightest, some 4 ns of \
         room. The first of them also took the reload of one changed service to a p99 of 20.2 ms \
         over its 50 reloads (target 20), where this run took 12.8 and the other 11.4: one slow \
         reload in fifty.\n"
    );

    eprintln!("measuring: live forwarding");
    let lv = live::live(LIVE_ROUNDS, std::time::Duration::from_secs(2), None)?;
    print!("{}", live_section(&lv));

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
         datapath writes an event into its CPU's ring, its agent reads the rings every \
         millisecond and batches the events into HMAC-authenticated datagrams to B, and B writes \
         them into its connection table. Sync delay is B's own measure per flow, from A's \
         datapath binding it (placed by A's agent between its two looks at the ring that bound \
         it, within the kernel tick the datapath stamped; plus the time its datagram was on the \
         way, both directors on this machine's clock) to B's table holding it. Bytes per flow count the datagrams' payload (hellos included) and their \
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
         rebuilds the Maglev table (about 3 ms) and rewrites it in place, slot by slot (a table of \
         another size is swapped in instead, which makes the kernel wait for an RCU grace period: \
         every update of an array of maps does). The agent answers only once the maps hold the \
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

    eprintln!("measuring: control plane at scale");
    print!("{}", scale_section(&scale(SCALE, SCALE_CHANGES)?));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(case: Case, case_ns: &[f64], base_ns: &[f64], nearest_ns: &[f64]) -> Measurement {
        Measurement {
            case,
            case_ns: case_ns.to_vec(),
            base_ns: base_ns.to_vec(),
            nearest_ns: nearest_ns.to_vec(),
            attempts: 1,
        }
    }

    /// An added path is judged by what it costs over its nearest path in its own rounds, not
    /// against that path's figure from rounds of its own: the nearest path's own row here is
    /// far cheaper (another machine state), and does not decide the verdict.
    #[test]
    fn an_added_path_is_judged_in_its_own_rounds() {
        let guarded = Case::DrMhNewFlowGuarded;
        let Goal::Over { added, .. } = guarded.goal() else {
            panic!("the guarded new flow is an added path");
        };
        let nearest = measured(Case::DrMhEstablished, &[60.0; 3], &[50.0; 3], &[]);
        let within = added - 1.0;
        let ms = [
            nearest.clone(),
            measured(guarded, &[200.0 + within; 3], &[50.0; 3], &[200.0; 3]),
        ];
        let t = target(&ms, None, guarded).expect("a target");
        assert_eq!(t.ns, Some(150.0 + added));
        assert_eq!(t.verdict(median(&ms[1].extra_ns())), "yes");
        let over = added + 3.0;
        let ms = [
            nearest,
            measured(guarded, &[200.0 + over; 3], &[50.0; 3], &[200.0; 3]),
        ];
        let t = target(&ms, None, guarded).expect("a target");
        assert_eq!(t.verdict(median(&ms[1].extra_ns())), "no, by 3 ns");
        // Its nearest path not measured in its rounds: no verdict.
        let ms = [measured(guarded, &[200.0; 3], &[50.0; 3], &[])];
        assert_eq!(target(&ms, None, guarded).expect("a target").ns, None);
    }
}

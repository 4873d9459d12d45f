//! `xdplb top`: a full-screen view of the director, refreshed every second, like `top`:
//! services and their real servers with rates, health, connections and weights, sortable; the
//! pass/drop reasons that are moving. ratatui draws it on crossterm; [`draw`] is a pure function
//! of a [`View`], so the screen can be rendered anywhere (a test backend, [`screen`]).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use ratatui::{
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Cell, Paragraph, Row, Table},
    Frame,
};

use crate::{
    control::{self, Listing, RealView, Request, Response, ServiceView, StatsView},
    health::Health,
    state::Forward,
};

/// What the rows are ordered by (services, and the real servers within each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sort {
    Address,
    #[default]
    Conns,
    Packets,
    Bytes,
    Active,
    Weight,
}

impl Sort {
    const ALL: [Sort; 6] = [
        Sort::Address,
        Sort::Conns,
        Sort::Packets,
        Sort::Bytes,
        Sort::Active,
        Sort::Weight,
    ];

    fn name(self) -> &'static str {
        match self {
            Sort::Address => "address",
            Sort::Conns => "conn/s",
            Sort::Packets => "pkt/s",
            Sort::Bytes => "bytes/s",
            Sort::Active => "active",
            Sort::Weight => "weight",
        }
    }

    fn next(self) -> Sort {
        let i = Sort::ALL.iter().position(|s| *s == self).unwrap_or(0);
        Sort::ALL[(i + 1) % Sort::ALL.len()]
    }
}

/// What the screen shows: the last listing, its counters as rates against the one before, the
/// order, and the last error talking to the agent.
#[derive(Default)]
pub struct View {
    pub listing: Option<Listing>,
    /// The last listing's counters per second (none after the first).
    pub rates: Option<Listing>,
    previous: Option<(Instant, Listing)>,
    pub sort: Sort,
    /// Ascending instead of descending (descending puts the busiest first).
    pub reverse: bool,
    pub error: Option<String>,
}

impl View {
    /// Takes in a listing read at `now`.
    pub fn update(&mut self, listing: Listing, now: Instant) {
        if let Some((then, earlier)) = &self.previous {
            let secs = now.duration_since(*then).as_secs_f64();
            if secs > 0.0 {
                self.rates = Some(listing.clone().per_second(earlier, secs));
            }
        }
        self.previous = Some((now, listing.clone()));
        self.listing = Some(listing);
        self.error = None;
    }

    /// Reads the agent behind `socket`.
    pub fn fetch(&mut self, socket: &Path) {
        match control::request_within(socket, &Request::List, Duration::from_secs(5)) {
            Ok(Response::Listing(l)) => self.update(*l, Instant::now()),
            Ok(other) => self.error = Some(format!("unexpected answer: {other:?}")),
            Err(e) => self.error = Some(format!("{e:#}")),
        }
    }

    /// A key: whether to quit.
    pub fn key(&mut self, code: KeyCode, modifiers: KeyModifiers) -> bool {
        match code {
            KeyCode::Char('q') | KeyCode::Esc => return true,
            KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => return true,
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('r') => self.reverse = !self.reverse,
            _ => {}
        }
        false
    }

    fn rate_of_service(&self, s: &ServiceView) -> Option<StatsView> {
        let rates = self.rates.as_ref()?;
        rates
            .services
            .iter()
            .find(|r| r.protocol == s.protocol && r.address == s.address)
            .and_then(|r| r.stats)
    }

    fn rate_of_real(&self, s: &ServiceView, real: &RealView) -> Option<StatsView> {
        let rates = self.rates.as_ref()?;
        rates
            .services
            .iter()
            .find(|r| r.protocol == s.protocol && r.address == s.address)?
            .reals
            .iter()
            .find(|r| r.address == real.address)
            .and_then(|r| r.stats)
    }
}

/// Runs the full-screen view until `q`, refreshing every `interval`.
pub fn run(socket: &Path, interval: Duration) -> Result<()> {
    let mut view = View::default();
    view.fetch(socket);
    if let Some(e) = view.error.take() {
        bail!("{e}");
    }
    let mut terminal = ratatui::init();
    let result = (|| -> Result<()> {
        let mut next = Instant::now() + interval;
        loop {
            terminal.draw(|f| draw(f, &view))?;
            let wait = next.saturating_duration_since(Instant::now());
            if event::poll(wait)? {
                if let Event::Key(k) = event::read()? {
                    if k.kind == KeyEventKind::Press && view.key(k.code, k.modifiers) {
                        return Ok(());
                    }
                }
                continue;
            }
            view.fetch(socket);
            next = Instant::now() + interval;
        }
    })();
    ratatui::restore();
    result
}

/// The screen of `view` on a `width` x `height` terminal, as lines of text.
pub fn screen(view: &View, width: u16, height: u16) -> Vec<String> {
    let mut terminal = ratatui::Terminal::new(ratatui::backend::TestBackend::new(width, height))
        .expect("a test backend never fails");
    terminal
        .draw(|f| draw(f, view))
        .expect("a test backend never fails");
    let buffer = terminal.backend().buffer();
    (0..height)
        .map(|y| {
            let line: String = (0..width).map(|x| buffer[(x, y)].symbol()).collect();
            line.trim_end().to_owned()
        })
        .collect()
}

fn number(n: Option<u64>) -> String {
    n.map_or_else(|| "-".to_owned(), |n| n.to_string())
}

fn bytes(n: Option<u64>) -> String {
    let Some(n) = n else {
        return "-".to_owned();
    };
    let mut v = n as f64;
    for unit in ["B", "KB", "MB", "GB"] {
        if v < 1000.0 {
            return match unit {
                "B" => format!("{n} B"),
                _ => format!("{v:.1} {unit}"),
            };
        }
        v /= 1000.0;
    }
    format!("{v:.1} TB")
}

fn method(f: Forward) -> &'static str {
    match f {
        Forward::Route => "DR",
        Forward::Tunnel => "TUN",
        Forward::Masq => "NAT",
    }
}

/// Draws the whole screen: a header, the table of services and real servers, the reasons.
pub fn draw(frame: &mut Frame, view: &View) {
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(header(view)), head);
    frame.render_widget(table(view), body);
    frame.render_widget(Paragraph::new(reasons(view)), foot);
}

fn header(view: &View) -> Vec<Line<'static>> {
    let Some(l) = &view.listing else {
        return vec![Line::from("xdplb top: waiting for the agent")];
    };
    let mut first = format!(
        "xdplb top - {} ({})",
        l.interface,
        format!("{:?}", l.mode).to_lowercase()
    );
    if let Some(a) = &l.agent {
        if let Some(id) = a.program_id {
            first.push_str(&format!(", program {id}"));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let up = (now - a.started).max(0.0) as u64;
        first.push_str(&format!(
            ", up {}:{:02}:{:02}, reloads {}",
            up / 3600,
            up / 60 % 60,
            up % 60,
            a.reloads
        ));
    }
    let reals: usize = l.services.iter().map(|s| s.reals.len()).sum();
    first.push_str(&format!(
        " - {} services, {reals} real servers{}",
        l.services.len(),
        if l.drained { ", DRAINED" } else { "" }
    ));
    let total = view
        .rates
        .as_ref()
        .map(|r| StatsView::sum(r.services.iter().filter_map(|s| s.stats)));
    let second = format!(
        "total: {} conn/s, {} pkt/s, {}/s",
        number(total.map(|t| t.conns)),
        number(total.map(|t| t.packets)),
        bytes(total.map(|t| t.bytes))
    );
    let third = match &view.error {
        Some(e) => Line::from(Span::styled(
            format!("agent: {e}"),
            Style::default().fg(Color::Red),
        )),
        None => Line::from(format!(
            "sort: {} {} (s: sort, r: reverse, q: quit)",
            view.sort.name(),
            if view.reverse {
                "ascending"
            } else {
                "descending"
            }
        )),
    };
    vec![
        Line::from(Span::styled(
            first,
            Style::default().add_modifier(Modifier::BOLD),
        )),
        Line::from(second),
        third,
    ]
}

/// The key a row sorts by: numbers (descending unless reversed), or the address.
fn key(
    sort: Sort,
    address: &str,
    weight: u64,
    active: u64,
    rate: Option<StatsView>,
) -> (u64, String) {
    let r = rate.unwrap_or_default();
    let n = match sort {
        Sort::Address => 0,
        Sort::Conns => r.conns,
        Sort::Packets => r.packets,
        Sort::Bytes => r.bytes,
        Sort::Active => active,
        Sort::Weight => weight,
    };
    (n, address.to_owned())
}

fn ordered<T>(view: &View, mut items: Vec<(T, (u64, String))>) -> Vec<T> {
    let descending = view.sort != Sort::Address;
    items.sort_by(|a, b| {
        let by_number = if descending {
            b.1 .0.cmp(&a.1 .0)
        } else {
            a.1 .0.cmp(&b.1 .0)
        };
        let order = by_number.then_with(|| a.1 .1.cmp(&b.1 .1));
        if view.reverse {
            order.reverse()
        } else {
            order
        }
    });
    items.into_iter().map(|(t, _)| t).collect()
}

fn table(view: &View) -> Table<'static> {
    let head = Row::new(
        [
            "SERVICE / REAL SERVER",
            "SCHED",
            "WEIGHT",
            "HEALTH",
            "ACTIVE",
            "INACT",
            "CONN/S",
            "PKT/S",
            "BYTES/S",
        ]
        .map(Cell::from),
    )
    .style(Style::default().add_modifier(Modifier::REVERSED));
    let mut rows = Vec::new();
    let services = view.listing.as_ref().map_or(&[][..], |l| &l.services[..]);
    let services = ordered(
        view,
        services
            .iter()
            .map(|s| {
                let active = s.reals.iter().map(|r| r.active_conns).sum();
                let weight = s.reals.iter().map(|r| u64::from(r.weight)).sum();
                (
                    s,
                    key(
                        view.sort,
                        &s.address,
                        weight,
                        active,
                        view.rate_of_service(s),
                    ),
                )
            })
            .collect(),
    );
    for s in services {
        let rate = view.rate_of_service(s);
        let up = s
            .reals
            .iter()
            .filter(|r| r.weight > 0 && r.health.as_ref().is_none_or(|h| h.state == Health::Up))
            .count();
        rows.push(
            Row::new(vec![
                Cell::from(format!("{} {}", s.protocol, s.address)),
                Cell::from(s.scheduler.to_string()),
                Cell::from(""),
                Cell::from(format!("{up}/{} up", s.reals.len())),
                Cell::from(
                    s.reals
                        .iter()
                        .map(|r| r.active_conns)
                        .sum::<u64>()
                        .to_string(),
                ),
                Cell::from(
                    s.reals
                        .iter()
                        .map(|r| r.inactive_conns)
                        .sum::<u64>()
                        .to_string(),
                ),
                Cell::from(number(rate.map(|r| r.conns))),
                Cell::from(number(rate.map(|r| r.packets))),
                Cell::from(bytes(rate.map(|r| r.bytes))),
            ])
            .style(Style::default().add_modifier(Modifier::BOLD)),
        );
        let reals = ordered(
            view,
            s.reals
                .iter()
                .map(|r| {
                    let k = key(
                        view.sort,
                        &r.address,
                        u64::from(r.weight),
                        r.active_conns,
                        view.rate_of_real(s, r),
                    );
                    (r, k)
                })
                .collect(),
        );
        for r in reals {
            let rate = view.rate_of_real(s, r);
            let (health, color) = match &r.health {
                None => ("-".to_owned(), Color::Reset),
                Some(h) if h.state == Health::Up => ("up".to_owned(), Color::Green),
                Some(h) => (
                    match &h.last_error {
                        Some(e) => format!("down: {e}"),
                        None => "down".to_owned(),
                    },
                    Color::Red,
                ),
            };
            rows.push(Row::new(vec![
                Cell::from(format!("  {}", r.address)),
                Cell::from(method(r.forward)),
                Cell::from(r.weight.to_string()),
                Cell::from(health).style(Style::default().fg(color)),
                Cell::from(r.active_conns.to_string()),
                Cell::from(r.inactive_conns.to_string()),
                Cell::from(number(rate.map(|r| r.conns))),
                Cell::from(number(rate.map(|r| r.packets))),
                Cell::from(bytes(rate.map(|r| r.bytes))),
            ]));
        }
    }
    Table::new(
        rows,
        [
            Constraint::Length(28),
            Constraint::Length(6),
            Constraint::Length(7),
            // Health takes what is left: a failing check's error is worth the room.
            Constraint::Fill(1),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Length(10),
        ],
    )
    .header(head)
}

/// The pass/drop reasons moving now, busiest first.
fn reasons(view: &View) -> Line<'static> {
    let Some(rates) = &view.rates else {
        return Line::from("");
    };
    let mut moving: Vec<(&String, &u64)> = rates.reasons.iter().filter(|(_, n)| **n > 0).collect();
    moving.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let text: Vec<String> = moving.iter().map(|(r, n)| format!("{r} {n}/s")).collect();
    Line::from(if text.is_empty() {
        "no packets passed or dropped".to_owned()
    } else {
        text.join("  ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::HealthView;

    fn listing(conns: [u64; 2], packets: u64) -> Listing {
        let mut l: Listing = serde_json::from_value(serde_json::json!({
            "interface": "eth0", "mode": "native", "services": [],
            "agent": { "version": "0.1.0", "started": 0.0, "reloads": 2,
                       "reload_failures": 0, "program_id": 42 }
        }))
        .unwrap();
        let real = |n: u8, c: u64, health| RealView {
            address: format!("10.0.0.{n}:80"),
            weight: u32::from(n) - 10,
            active_conns: c / 2,
            health,
            stats: Some(StatsView {
                conns: c,
                packets: c * 4,
                bytes: c * 400,
                ..Default::default()
            }),
            ..RealView::default()
        };
        let down = Some(HealthView {
            state: Health::Down,
            last_error: Some("connect 10.0.0.13:80: connection refused".into()),
        });
        l.services.push(ServiceView {
            protocol: crate::state::Protocol::Tcp,
            address: "10.0.0.100:80".into(),
            scheduler: crate::state::Scheduler::Mh,
            mh_size: None,
            hash: None,
            persistent: None,
            netmask: None,
            stats: Some(StatsView {
                conns: conns[0] + conns[1],
                packets,
                bytes: packets * 100,
                ..Default::default()
            }),
            rates: None,
            reals: vec![real(11, conns[0], None), real(13, conns[1], down)],
        });
        l.reasons.insert("pass_no_service".into(), packets);
        l
    }

    #[test]
    fn the_screen_shows_services_reals_health_and_rates_in_order() {
        let mut view = View::default();
        let t0 = Instant::now();
        view.update(listing([0, 0], 0), t0);
        let first = screen(&view, 160, 12).join("\n");
        assert!(
            first.contains("xdplb top - eth0 (native), program 42"),
            "{first}"
        );
        assert!(first.contains("TCP 10.0.0.100:80"), "{first}");
        assert!(
            first.contains("down: connect 10.0.0.13:80: connection refused"),
            "{first}"
        );

        view.update(listing([20, 2], 400), t0 + Duration::from_secs(2));
        let lines = screen(&view, 160, 12);
        let text = lines.join("\n");
        assert!(
            text.contains("total: 11 conn/s, 200 pkt/s, 20.0 KB/s"),
            "{text}"
        );
        assert!(text.contains("1/2 up"), "{text}");
        let row = |addr: &str| {
            lines
                .iter()
                .position(|l| l.contains(addr))
                .unwrap_or_else(|| panic!("{addr} in\n{text}"))
        };
        // Busiest first: .11 (10 conn/s) above .13 (1 conn/s).
        assert!(row("10.0.0.11:80") < row("10.0.0.13:80"), "{text}");
        let r11 = &lines[row("10.0.0.11:80")];
        assert!(
            r11.contains("DR") && r11.contains(" 10 ") && r11.contains("4.0 KB"),
            "{r11}"
        );
        assert!(text.contains("pass_no_service 200/s"), "{text}");

        // r reverses, s moves on to the next column; q quits.
        assert!(!view.key(KeyCode::Char('r'), KeyModifiers::NONE));
        let lines = screen(&view, 160, 12);
        assert!(row_of(&lines, "10.0.0.13:80") < row_of(&lines, "10.0.0.11:80"));
        assert!(!view.key(KeyCode::Char('s'), KeyModifiers::NONE));
        assert_eq!(view.sort, Sort::Packets);
        assert!(view.key(KeyCode::Char('q'), KeyModifiers::NONE));
        assert!(view.key(KeyCode::Char('c'), KeyModifiers::CONTROL));

        view.error = Some("no xdplb agent is listening".into());
        let text = screen(&view, 160, 12).join("\n");
        assert!(
            text.contains("agent: no xdplb agent is listening"),
            "{text}"
        );
    }

    fn row_of(lines: &[String], addr: &str) -> usize {
        lines.iter().position(|l| l.contains(addr)).unwrap()
    }
}

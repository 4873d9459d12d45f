//! Config files without root: parsing, one-line errors with file and line, applying a file to a
//! running state by difference, and `save` round trips.

use std::{collections::HashMap, path::PathBuf};

use super::*;
use crate::{health::Check, state::Mac};

fn source(text: &str) -> Source {
    Source {
        path: PathBuf::from("test.toml"),
        text: text.to_owned(),
    }
}

fn error(text: &str) -> String {
    format!("{:#}", source(text).parse().unwrap_err())
}

/// Every MAC the file needs, made up: these tests do not ask the kernel.
fn learned(cfg: &Config, state: &State) -> HashMap<(ServiceAddr, std::net::IpAddr), Mac> {
    cfg.macs_needed(state)
        .into_iter()
        .map(|m| ((m.service, m.addr), Mac([2, 0, 0, 0, 0, last_byte(m.addr)])))
        .collect()
}

/// The last byte of an address, for made-up MACs.
fn last_byte(addr: std::net::IpAddr) -> u8 {
    crate::state::addr_of(addr)[15]
}

fn apply(text: &str, state: &State) -> Result<State> {
    let src = source(text);
    let cfg = src.parse()?;
    cfg.apply_to(state, &learned(&cfg, state), &src)
}

const BASE: &str = r#"
interface = "eth0"

[[service]]
protocol = "tcp"
vip = "10.0.0.100"
port = 80
scheduler = "mh"

  [[service.real]]
  address = "10.0.0.11"
  check = { type = "tcp" }

  [[service.real]]
  address = "10.0.0.12"
  weight = 3

[[service]]
protocol = "udp"
vip = "10.0.0.100"
port = 53

  [[service.real]]
  address = "10.0.0.13"
  mac = "02:00:00:00:00:99"
"#;

#[test]
fn the_example_file_parses() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/xdplb.toml"
    ))
    .unwrap();
    let cfg = source(&text).parse().unwrap();
    assert_eq!(cfg.interface, "eth0");
    assert_eq!(cfg.services.len(), 3);
    let cart = cfg.services[2].get_ref();
    assert_eq!(
        (cart.port, cart.scheduler, cart.persistent, cart.netmask),
        (
            0,
            Scheduler::Wlc,
            Some(360),
            Some(crate::state::Netmask::Dotted(std::net::Ipv4Addr::new(
                255, 255, 255, 0
            )))
        )
    );
    assert_eq!(cart.reals[0].get_ref().u_threshold, 1000);
    let web = cfg.services[0].get_ref();
    assert_eq!(
        (web.scheduler, web.mh_size, web.reals.len()),
        (Scheduler::Mh, Some(65537), 4)
    );
    let masq = web.reals[3].get_ref();
    assert_eq!((masq.forward, masq.port), (Forward::Masq, Some(8080)));
    assert!(matches!(
        web.reals[0].get_ref().check.as_ref().unwrap().check,
        Check::Http { .. }
    ));
    // And it builds a state (MACs made up).
    apply(&text, &State::default()).unwrap();
}

#[test]
fn errors_name_the_file_the_line_and_the_reason() {
    let cases = [
        ("interface = \"eth0\"\nmode = \n", "test.toml:2:", "expected"),
        ("interface = \"eth0\"\nbogus = 1\n", "test.toml:2:", "bogus"),
        (
            "interface = \"eth0\"\n[[service]]\nprotocol = \"tcp\"\nvip = \"10.0.0.300\"\nport = 80\n",
            "test.toml:4:",
            "invalid IP address",
        ),
        (
            "interface = \"eth0\"\n[[service]]\nprotocol = \"tcp\"\nvip = \"10.0.0.1\"\nport = 80\n[[service]]\nprotocol = \"tcp\"\nvip = \"10.0.0.1\"\nport = 80\n",
            "test.toml:6:",
            "duplicate service TCP 10.0.0.1:80",
        ),
        (
            "interface = \"eth0\"\n[[service]]\nprotocol = \"sctp\"\nvip = \"10.0.0.1\"\nport = 80\n",
            "test.toml:3:",
            "sctp",
        ),
        (
            "interface = \"eth0\"\n[[service]]\nprotocol = \"tcp\"\nvip = \"10.0.0.1\"\nport = 80\n[[service.real]]\naddress = \"10.0.0.2\"\ncheck = { type = \"http\", path = \"x\" }\n",
            "test.toml:6:",
            "path",
        ),
    ];
    for (text, at, reason) in cases {
        let e = error(text);
        assert!(
            e.starts_with(at) && e.contains(reason) && !e.contains('\n'),
            "{e:?} for {text:?}"
        );
    }
}

#[test]
fn errors_found_while_applying_name_the_line_too() {
    let text = "interface = \"eth0\"\n[[service]]\nprotocol = \"tcp\"\nvip = \"10.0.0.1\"\nport = 80\n\n[[service.real]]\naddress = \"10.0.0.2\"\nweight = 70000\n";
    let e = format!("{:#}", apply(text, &State::default()).unwrap_err());
    assert!(
        e.starts_with("test.toml:7:") && e.contains("weight 70000 is out of range"),
        "{e}"
    );
    let text =
        "interface = \"eth0\"\n[[service]]\nprotocol = \"tcp\"\nvip = \"10.0.0.1\"\nport = 0\n";
    let e = format!("{:#}", apply(text, &State::default()).unwrap_err());
    assert!(e.starts_with("test.toml:2:") && e.contains("port 0"), "{e}");
}

#[test]
fn applying_a_changed_file_keeps_what_did_not_change() {
    let first = apply(BASE, &State::default()).unwrap();
    // Change only the UDP service's real server weight.
    let changed = BASE.replace(
        "mac = \"02:00:00:00:00:99\"",
        "mac = \"02:00:00:00:00:99\"\n  weight = 5",
    );
    let second = apply(&changed, &first).unwrap();
    let tcp = ServiceAddr {
        protocol: Protocol::Tcp,
        vip: [10, 0, 0, 100].into(),
        port: 80,
    };
    assert_eq!(
        first.services[&tcp], second.services[&tcp],
        "the TCP service is untouched"
    );
    let udp = ServiceAddr {
        protocol: Protocol::Udp,
        port: 53,
        ..tcp
    };
    assert_eq!(second.services[&udp].reals[0].weight, 5);
    assert_eq!(second.services[&udp].id, first.services[&udp].id);
    // The same file again changes nothing at all.
    assert_eq!(apply(BASE, &first).unwrap(), first);
    // A service removed from the file goes.
    let only_tcp = BASE
        .split("[[service]]\nprotocol = \"udp\"")
        .next()
        .unwrap();
    assert_eq!(apply(only_tcp, &first).unwrap().services.len(), 1);
}

#[test]
fn save_then_load_gives_the_same_state() {
    let state = apply(BASE, &State::default()).unwrap();
    let cfg = source(BASE).parse().unwrap();
    let saved = Config::from_state(cfg.director(), cfg.timeouts, &state)
        .to_toml()
        .unwrap();
    let src = source(&saved);
    let again = src.parse().unwrap();
    // Loading needs the same learned MACs (the kernel would give the same).
    let macs: HashMap<_, _> = state
        .services
        .values()
        .flat_map(|s| s.reals.iter().map(move |r| ((s.addr, r.addr), r.mac)))
        .collect();
    let loaded = again.apply_to(&State::default(), &macs, &src).unwrap();
    assert_eq!(loaded, state, "saved:\n{saved}");
    assert_eq!(again.director(), cfg.director());
}

/// A key file for the sync tests: mode 0600 unless `mode` says otherwise.
fn key_file(name: &str, content: &str, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("xdplb-config-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn with_sync(key: &std::path::Path, rest: &str) -> String {
    format!(
        "interface = \"eth0\"\n[sync]\nlisten = \"10.0.0.1:8742\"\npeers = [\"10.0.0.3:8742\"]\nkey_file = \"{}\"\n{rest}",
        key.display()
    )
}

#[test]
fn sync_and_announce_parse_and_save_back() {
    let key = key_file("good.key", "0123456789abcdef0123\n", 0o600);
    let text = with_sync(&key, "group = \"239.1.2.3\"\n[announce]\ntable = 100\n");
    let cfg = source(&text).parse().unwrap();
    let director = cfg.director();
    let sync = director.sync.clone().unwrap();
    assert_eq!(sync.peers, vec!["10.0.0.3:8742".parse().unwrap()]);
    assert_eq!(sync.group, Some("239.1.2.3".parse().unwrap()));
    assert_eq!(
        director.announce.clone().unwrap().grace,
        3,
        "the default grace"
    );
    assert_saves_back(&director, cfg.timeouts);
}

#[test]
fn nat_max_defaults_to_conn_max_and_saves_back() {
    let cfg = source("interface = \"eth0\"\nconn_max = 5000\n")
        .parse()
        .unwrap();
    assert_eq!(
        (cfg.director().nat_max, cfg.director().nat_max()),
        (None, 5000)
    );
    assert!(!cfg.to_toml().unwrap().contains("nat_max"));
    let cfg = source("interface = \"eth0\"\nnat_max = 0\n")
        .parse()
        .unwrap();
    assert_eq!(cfg.director().nat_max(), 0);
    assert_saves_back(&cfg.director(), cfg.timeouts);
}

/// The director's settings, saved as a file and read back, are the same.
fn assert_saves_back(director: &crate::config::Director, timeouts: crate::config::Timeouts) {
    let saved = Config::from_state(director.clone(), timeouts, &State::default())
        .to_toml()
        .unwrap();
    assert_eq!(
        &source(&saved).parse().unwrap().director(),
        director,
        "{saved}"
    );
}

/// Each config is refused with one line starting with FILE:LINE: and saying the reason.
fn assert_errors(cases: &[(String, &str, &str)]) {
    for (text, at, reason) in cases {
        let e = error(text);
        assert!(
            e.starts_with(at) && e.contains(reason) && !e.contains('\n'),
            "{e:?} for {text:?}"
        );
    }
}

#[test]
fn bad_sync_or_announce_tables_name_their_line() {
    let good = key_file("good2.key", "0123456789abcdef0123\n", 0o600);
    let open = key_file("open.key", "0123456789abcdef0123\n", 0o644);
    let short = key_file("short.key", "short\n", 0o600);
    let missing = good.with_file_name("missing.key");
    let cases = [
        (
            with_sync(&open, ""),
            "test.toml:2:",
            "readable by group or others",
        ),
        (with_sync(&short, ""), "test.toml:2:", "too short"),
        (
            with_sync(&missing, ""),
            "test.toml:2:",
            "cannot read sync key file",
        ),
        (
            with_sync(&good, "[announce]\ntable = 254\n"),
            "test.toml:6:",
            "the kernel's own",
        ),
        (
            with_sync(&good, "").replace("[\"10.0.0.3:8742\"]", "[]"),
            "test.toml:2:",
            "at least one peer",
        ),
        (
            with_sync(&good, "").replace("listen =", "bogus = 1\nlisten ="),
            "test.toml:3:",
            "bogus",
        ),
    ];
    assert_errors(&cases);
}

#[test]
fn the_web_section_parses_saves_back_and_names_its_line() {
    let token = key_file("web.token", "0123456789abcdef0123\n", 0o600);
    let text = format!(
        "interface = \"eth0\"\n[web]\nlisten = \"127.0.0.1:9728\"\ntoken_file = \"{}\"\n",
        token.display()
    );
    let cfg = source(&text).parse().unwrap();
    let director = cfg.director();
    let web = director.web.clone().unwrap();
    assert_eq!(web.listen, "127.0.0.1:9728".parse().unwrap());
    assert_eq!(web.token_file.as_deref(), Some(token.as_path()));
    assert_saves_back(&director, cfg.timeouts);

    let open = key_file("open.token", "0123456789abcdef0123\n", 0o644);
    let cases = [
        (
            text.replace(&token.display().to_string(), &open.display().to_string()),
            "test.toml:2:",
            "web token file",
        ),
        (
            text.replace("listen =", "lisen = \"x\"\nlisten ="),
            "test.toml:3:",
            "lisen",
        ),
        (
            "interface = \"eth0\"\n[web]\nlisten = \"localhost\"\n".to_owned(),
            "test.toml:3:",
            "invalid socket address",
        ),
        (
            text.replace("token_file", "tls_cert"),
            "test.toml:2:",
            "web: tls_cert and tls_key go together",
        ),
    ];
    assert_errors(&cases);
}

mod mutated {
    use proptest::prelude::*;

    use super::*;

    const EXAMPLE: &str = include_str!("../../../examples/xdplb.toml");

    /// One edit of a config file's bytes: truncate, overwrite a byte with a printable one,
    /// delete a line or repeat it, at a point chosen by `at`.
    fn edit(text: &mut Vec<u8>, at: prop::sample::Index, kind: u8, byte: u8) {
        let i = at.index(text.len() + 1).min(text.len());
        let line_start = text[..i]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        let line_end = text[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(text.len(), |p| i + p + 1);
        match kind {
            0 => text.truncate(i),
            1 if i < text.len() => text[i] = byte % 95 + 32,
            2 => {
                text.drain(line_start..line_end);
            }
            _ => {
                let line = text[line_start..line_end].to_vec();
                text.splice(line_end..line_end, line);
            }
        }
    }

    proptest! {
        // Each case builds the example's Maglev tables (65537 slots): a few hundred are enough
        // for CI; PROPTEST_CASES=N runs more.
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256),
            ..ProptestConfig::default()
        })]

        #[test]
        fn are_applied_or_refused_in_one_line_and_change_nothing(
            edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<u8>()), 1..6)
        ) {
            let mut bytes = EXAMPLE.as_bytes().to_vec();
            for (at, kind, byte) in edits {
                edit(&mut bytes, at, kind, byte);
            }
            let text = String::from_utf8_lossy(&bytes);
            let state = apply(BASE, &State::default()).unwrap();
            let before = state.clone();
            if let Err(e) = apply(&text, &state) {
                let message = format!("{e:#}");
                prop_assert!(!message.contains('\n'), "{}", message);
                prop_assert!(message.starts_with("test.toml:"), "{}", message);
            }
            prop_assert_eq!(&state, &before);
        }
    }
}

/// A file with `n` services of three real servers each, and room for them.
fn many_services(n: u32, weight_of_first: u32) -> String {
    let mut text = format!(
        "interface = \"eth0\"\nservices_max = {n}\nreals_max = {}\n",
        3 * n
    );
    for i in 0..n {
        let vip = format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256);
        text.push_str(&format!(
            "[[service]]\nprotocol = \"tcp\"\nvip = \"{vip}\"\nport = 80\nscheduler = \"rr\"\n"
        ));
        for r in 1..=3 {
            let weight = if i == 0 && r == 1 { weight_of_first } else { 1 };
            text.push_str(&format!(
                "  [[service.real]]\n  address = \"10.200.0.{r}\"\n  weight = {weight}\n  mac = \"02:00:00:00:00:0{r}\"\n"
            ));
        }
    }
    text
}

#[test]
fn room_beyond_the_defaults_is_set_in_the_file_and_checked() {
    let text = many_services(300, 1);
    let cfg = source(&text).parse().unwrap();
    let director = cfg.director();
    assert_eq!(
        (director.limits.services, director.limits.reals),
        (300, 900)
    );
    let state = apply(&text, &State::with_limits(director.limits)).unwrap();
    assert_eq!(state.services.len(), 300);
    // Without the room, the 257th service is refused, on its line.
    let without = text.replace("services_max = 300\n", "");
    let e = format!(
        "{:#}",
        apply(&without, &State::with_limits(Limits::default())).unwrap_err()
    );
    assert!(e.contains("too many services: at most 256"), "{e}");
    assert!(e.starts_with("test.toml:"), "{e}");
    let e = error(&text.replace("services_max = 300", "services_max = 0"));
    assert!(
        e.contains("services_max 0 is out of range: 1 to 65536"),
        "{e}"
    );
    let e = error(&text.replace("reals_max = 900", "reals_max = 2000000"));
    assert!(
        e.contains("reals_max 2000000 is out of range: 1 to 1048576"),
        "{e}"
    );
}

#[test]
fn reloading_a_file_that_changes_one_service_changes_only_that_service() {
    let first = many_services(300, 1);
    let limits = source(&first).parse().unwrap().director().limits;
    let state = apply(&first, &State::with_limits(limits)).unwrap();
    // The same file again: every service is still the same shared one.
    let again = apply(&first, &state).unwrap();
    for (addr, svc) in &again.services {
        assert!(std::sync::Arc::ptr_eq(svc, &state.services[addr]), "{addr}");
    }
    let changed = apply(&many_services(300, 7), &state).unwrap();
    let first_addr = *state
        .services
        .keys()
        .find(|a| a.vip.to_string() == "10.1.0.0")
        .unwrap();
    for (addr, svc) in &changed.services {
        let shared = std::sync::Arc::ptr_eq(svc, &state.services[addr]);
        assert_eq!(shared, *addr != first_addr, "{addr}");
    }
    let weight = changed.services[&first_addr].reals[0].weight;
    assert_eq!(weight, 7);
}

/// Every service's span and its real servers' spans: what errors of later steps name.
fn spans(c: &Config) -> Vec<std::ops::Range<usize>> {
    c.services
        .iter()
        .flat_map(|s| std::iter::once(s.span()).chain(s.get_ref().reals.iter().map(|r| r.span())))
        .collect()
}

/// Reloads `text` as the agent does (read with the cache, apply skipping what is untouched,
/// keep); checks that the result is what a whole parse and a whole apply give. Returns the new
/// state and how many services were parsed anew.
fn reload(cache: &mut ParseCache, state: &State, text: &str) -> Result<(State, usize)> {
    thread_local! {
        /// The state the cache was last kept with, as the agent counts its commits.
        static KEPT: std::cell::RefCell<Option<State>> = const { std::cell::RefCell::new(None) };
    }
    let kept = KEPT.with_borrow(|k| {
        k.as_ref().is_some_and(|k| {
            k.services.len() == state.services.len()
                && (k.services.iter().zip(&state.services))
                    .all(|((a, x), (b, y))| a == b && std::sync::Arc::ptr_eq(x, y))
        })
    });
    let src = source(text);
    let whole = src.parse();
    let read = match src.parse_cached(cache) {
        Ok(read) => read,
        Err(e) => {
            // The same error, naming the same line.
            assert_eq!(format!("{e:#}"), format!("{:#}", whole.unwrap_err()));
            return Err(e);
        }
    };
    let whole = whole.unwrap();
    assert_eq!(read.config, whole);
    assert_eq!(spans(&read.config), spans(&whole));
    let learned = learned(&whole, state);
    let untouched = read.untouched(state, false);
    if kept {
        // Nothing changed the state since the cache was kept: the shortcut agrees.
        assert_eq!(read.untouched(state, true), untouched);
    }
    let skipped_macs = read.config.macs_needed_skipping(state, &untouched);
    let all_macs = whole.macs_needed(state);
    assert!(skipped_macs.iter().all(|m| all_macs.contains(m)));
    let next = match read
        .config
        .apply_skipping(state, &learned, &src, &untouched)
    {
        Ok(next) => next,
        Err(e) => {
            // The same error as a whole apply's; the agent keeps the file unapplied.
            assert_eq!(
                format!("{e:#}"),
                format!("{:#}", whole.apply_to(state, &learned, &src).unwrap_err())
            );
            cache.keep_unapplied(src.text, read);
            return Err(e);
        }
    };
    assert_eq!(next, whole.apply_to(state, &learned, &src).unwrap());
    assert!(next.ids_consistent());
    let parsed = read.parsed();
    cache.keep(src.text, read, &untouched, &next);
    KEPT.set(Some(next.clone()));
    Ok((next, parsed))
}

/// Where `[[service]]` section `i` of a [`many_services`] file starts (its end if there is none).
fn section_start(text: &str, i: u32) -> usize {
    let vip = format!("vip = \"10.1.0.{i}\"");
    text.find(&vip).map_or(text.len(), |at| {
        at - "[[service]]\nprotocol = \"tcp\"\n".len()
    })
}

/// `text` with `[[service]]` section `i` (of [`many_services`]) changed by `edit`.
fn with_section(text: &str, i: u32, edit: impl FnOnce(&str) -> String) -> String {
    let (start, end) = (section_start(text, i), section_start(text, i + 1));
    format!(
        "{}{}{}",
        &text[..start],
        edit(&text[start..end]),
        &text[end..]
    )
}

#[test]
fn a_reload_parses_and_applies_only_the_sections_that_changed() {
    let mut cache = ParseCache::default();
    // Room for the real servers the edits add.
    let base = many_services(50, 1)
        .replacen("reals_max = 150", "reals_max = 200", 1)
        .replacen("services_max = 50", "services_max = 60", 1);
    let limits = source(&base).parse().unwrap().director().limits;
    let empty = State::with_limits(limits);
    let (state, parsed) = reload(&mut cache, &empty, &base).unwrap();
    assert_eq!((state.services.len(), parsed), (50, 50));

    // The same file: nothing parsed, the very same services.
    let (again, parsed) = reload(&mut cache, &state, &base).unwrap();
    assert_eq!(parsed, 0);
    for (addr, svc) in &again.services {
        assert!(std::sync::Arc::ptr_eq(svc, &state.services[addr]), "{addr}");
    }

    let next_header = "[[service]]\nprotocol = \"tcp\"\nvip = \"10.1.0.21\"";
    let udp = "[[service]]\nprotocol = \"udp\"\nvip = \"10.9.9.9\"\nport = 53\n  [[service.real]]\n  address = \"10.200.0.1\"\n  mac = \"02:00:00:00:00:01\"\n\n";
    let weight = |s: &str| s.replacen("weight = 1", "weight = 9", 1);
    // Each edit is of `base`: from the one before, it also undoes that one's change.
    let edits: Vec<(&str, String, usize)> = vec![
        ("a weight", with_section(&base, 23, weight), 1),
        (
            "a real server appended to a section, before the next header",
            base.replacen(
                next_header,
                &format!("  [[service.real]]\n  address = \"10.200.0.9\"\n  mac = \"02:00:00:00:00:09\"\n{next_header}"),
                1,
            ),
            2,
        ),
        ("the last section's last line", format!("{base}  u_threshold = 4\n"), 2),
        ("a section deleted", with_section(&base, 30, |_| String::new()), 1),
        ("a section added", base.replacen(next_header, &format!("{udp}{next_header}"), 1), 2),
        (
            "two separate sections",
            with_section(&with_section(&base, 5, weight), 45, weight),
            2,
        ),
        (
            "the top part",
            base.replacen("reals_max = 200\n", "reals_max = 200\n[timeouts]\ntcp = 60\ntcp_fin = 10\nudp = 30\n", 1),
            2,
        ),
        ("the same file again", base.clone(), 0),
    ];
    let mut state = state;
    for (what, text, parsed_anew) in edits {
        let (next, parsed) = reload(&mut cache, &state, &text).unwrap();
        assert_eq!(parsed, parsed_anew, "{what}: services parsed anew");
        state = next;
    }

    // A change made by the CLI since is undone by the file, though its section is unchanged.
    let (state, _) = reload(&mut cache, &state, &base).unwrap();
    let addr = *state.services.keys().nth(10).unwrap();
    let real = state.services[&addr].reals[0].addr;
    let spec = RealSpec {
        addr: Some(real),
        weight: Some(77),
        ..Default::default()
    };
    let edited = state.edit_real(addr, &spec).unwrap();
    let (undone, parsed) = reload(&mut cache, &edited, &base).unwrap();
    assert_eq!(parsed, 0);
    assert_eq!(undone.services[&addr].reals[0].weight, 1);
    assert_eq!(undone, state);
}

#[test]
fn a_reload_that_cannot_split_or_fails_reads_the_file_whole() {
    let mut cache = ParseCache::default();
    let base = many_services(20, 1);
    let limits = source(&base).parse().unwrap().director().limits;
    let (state, _) = reload(&mut cache, &State::with_limits(limits), &base).unwrap();

    // An error in a changed section names its line in the whole file, and changes nothing,
    // not even the cache: the file put right again parses nothing.
    let broken = base.replacen("weight = 1", "weight = \"x\"", 40);
    let e = format!("{:#}", reload(&mut cache, &state, &broken).unwrap_err());
    assert!(e.starts_with("test.toml:"), "{e}");
    let (state, parsed) = reload(&mut cache, &state, &base).unwrap();
    assert_eq!(parsed, 0);
    // A duplicate service in a changed section: the line of the second one. Failing the checks
    // after the parse, the file is kept: put right, only the section changed again is parsed,
    // and the same failing file again parses nothing (its section is checked again).
    let dup = base.replacen("vip = \"10.1.0.7\"", "vip = \"10.1.0.3\"", 1);
    let e = format!("{:#}", reload(&mut cache, &state, &dup).unwrap_err());
    assert!(e.contains("duplicate service TCP 10.1.0.3:80"), "{e}");
    let e = format!("{:#}", reload(&mut cache, &state, &dup).unwrap_err());
    assert!(e.contains("duplicate service TCP 10.1.0.3:80"), "{e}");
    let (state, parsed) = reload(&mut cache, &state, &base).unwrap();
    assert_eq!(parsed, 1);
    let (state, parsed) = reload(&mut cache, &state, &base).unwrap();
    assert_eq!(parsed, 0);
    // A duplicate real server in a changed section.
    let dup = with_section(&base, 12, |s| s.replacen("10.200.0.2", "10.200.0.1", 1));
    let e = format!("{:#}", reload(&mut cache, &state, &dup).unwrap_err());
    assert!(e.contains("duplicate real server 10.200.0.1"), "{e}");
    let (state, parsed) = reload(&mut cache, &state, &base).unwrap();
    assert_eq!(parsed, 1);
    let (state, parsed) = reload(&mut cache, &state, &base).unwrap();
    assert_eq!(parsed, 0);
    // A section the apply rejects (a fourth real server where the file has room for three
    // per service): the same, the services of the other sections still the state's own.
    let full = with_section(&base, 12, |s| {
        format!(
            "{s}  [[service.real]]\n  address = \"10.200.0.4\"\n  mac = \"02:00:00:00:00:04\"\n"
        )
    });
    let e = format!("{:#}", reload(&mut cache, &state, &full).unwrap_err());
    assert!(e.contains("too many real servers"), "{e}");
    let (again, parsed) = reload(&mut cache, &state, &base).unwrap();
    assert_eq!(parsed, 1);
    assert_eq!(again, state);
    for (addr, svc) in &again.services {
        assert!(std::sync::Arc::ptr_eq(svc, &state.services[addr]), "{addr}");
    }
    let state = again;

    // A multi-line string's quotes in a changed section (here in a comment, which splitting
    // does not tell apart): the file is parsed whole.
    let quoted = base.replacen("port = 80\n", "port = 80 # '''\n", 3);
    let (state, parsed) = reload(&mut cache, &state, &quoted).unwrap();
    assert_eq!(parsed, 20);
    // So is a file with a table after the services that is not a service's own, every time.
    let late = format!("{base}\n[metrics]\nlisten = \"127.0.0.1:9100\"\n");
    let (state, parsed) = reload(&mut cache, &state, &late).unwrap();
    assert_eq!(parsed, 20);
    let (_, parsed) = reload(&mut cache, &state, &late).unwrap();
    assert_eq!(parsed, 20);

    // The example file, and a file without services.
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/xdplb.toml"
    ))
    .unwrap();
    for text in [BASE, &example] {
        let src = source(text);
        let read = src.parse_cached(&mut ParseCache::default()).unwrap();
        let whole = src.parse().unwrap();
        assert_eq!(read.config, whole);
        assert_eq!(spans(&read.config), spans(&whole));
    }
}

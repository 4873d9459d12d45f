//! End to end, the HTTP API and the status page: curl on the control socket does what the CLI
//! does (services, real servers, weights: which server answers follows), with the CLI's errors
//! and status codes; `--web` serves the API read-only, changes only with the token, /metrics
//! and the page, and all of it over HTTPS with a certificate; headless Chromium shows services,
//! real servers, health and live rates, and its buttons drain, restore, take out and put back
//! in through the API.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lb_tests::metrics::Scrape;
use lb_tests::tls::Certificates;
use lb_tests::web::{Api, Browser};
use lb_tests::{
    require_program, require_root, Agent, DrTopology, FreshFlows, Listing, Netns, Serve,
};

const SVC: &str = "10.0.0.100:80";
const SVC_PATH: &str = "/api/v1/services/tcp/10.0.0.100/80";
const WEB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 9728);
const TOKEN: &str = "a-web-token-of-32-characters-xyz";

fn needs() -> bool {
    require_root() && require_program("curl", "curl")
}

/// The HTTPS tests make their certificates with openssl, for [`TLS_NAME`].
fn needs_tls() -> bool {
    needs() && require_program("openssl", "openssl")
}

const TLS_NAME: &str = "director.example";

/// `--web` at [`WEB`] over HTTPS, in `director`'s namespace, trusting the CA of `certs`.
fn https<'a>(director: &'a Netns, certs: &'a Certificates) -> Api<'a> {
    Api::Https {
        ns: director,
        addr: SocketAddr::V4(WEB),
        ca: &certs.ca,
        name: TLS_NAME,
    }
}

/// A test's scratch directory (removed when dropped) with a token file for `--web-token`
/// (mode 0600) in it.
struct Scratch {
    dir: PathBuf,
    token: String,
    _removed: lb_tests::scratch::Scratch,
}

impl Scratch {
    fn new(name: &str) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let scratch = lb_tests::scratch::Scratch::new(name);
        let token = scratch.file("web-token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        Self {
            dir: scratch.0.clone(),
            token,
            _removed: scratch,
        }
    }
}

/// Asserts that the CLI fails `args` with the API's one-line message (the CLI may say more
/// around it: the option it came with).
fn cli_says(agent: &Agent, args: &[&str], message: &str) {
    let out = agent.cli(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert!(!err.contains('\n'), "{err}");
    assert!(err.ends_with(message), "CLI: {err:?}, API: {message:?}");
}

fn weight(listing: &Listing, real: &str) -> u64 {
    listing.real(SVC, real)["weight"].as_u64().unwrap()
}

#[test]
fn the_api_on_the_control_socket_does_what_the_cli_does() {
    if !needs() {
        return;
    }
    let topo = DrTopology::new(2).expect("topology");
    let mut agent = Agent::start(topo.director().ns(), "eth0", &[]).expect("agent");
    let api = Api::Socket(agent.socket());
    let (rs1, rs2) = (topo.reals()[0].name(), topo.reals()[1].name());

    // The service and its real servers, through the API only.
    let r = api.call(
        "POST",
        "/api/v1/services",
        Some(r#"{"protocol":"tcp","vip":"10.0.0.100","port":80,"scheduler":"mh"}"#),
        None,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["scheduler"], "mh");
    for rip in ["10.0.0.11", "10.0.0.12"] {
        let body = format!(r#"{{"addr":"{rip}","weight":2,"forward":"route"}}"#);
        let r = api.call("POST", &format!("{SVC_PATH}/reals"), Some(&body), None);
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.json()["address"], format!("{rip}:80"));
    }
    // The CLI sees it, and the datapath forwards by it.
    let listing = agent.list();
    assert_eq!(listing.reals(SVC), ["10.0.0.11:80", "10.0.0.12:80"]);
    assert_eq!(listing.service(SVC).unwrap()["scheduler"], "mh");
    let mut fresh = FreshFlows::new(20000);
    let names = topo.answered(&mut fresh, 40);
    assert!(
        names.iter().any(|n| n == rs1) && names.iter().any(|n| n == rs2),
        "{names:?}"
    );

    // The API's view: counters as the CLI's, health, weights.
    let services = api.get_json("/api/v1/services");
    assert_eq!(services[0]["address"], SVC);
    assert_eq!(services[0]["stats"]["conns"], 40);
    assert_eq!(
        services[0]["stats"]["conns"],
        agent.list().service(SVC).unwrap()["stats"]["conns"]
    );

    // Drain: weight 0 gives no new connections, and remembers the weight for a restore.
    let r = api.call(
        "PUT",
        &format!("{SVC_PATH}/reals/10.0.0.11"),
        Some(r#"{"weight":0}"#),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["weight"], 0);
    assert_eq!(r.json()["previous_weight"], 2);
    let names = topo.answered(&mut fresh, 20);
    assert!(
        names.iter().all(|n| n == rs2),
        "drained {rs1} still answers: {names:?}"
    );
    // The weight to restore outlives the agent (its saved state).
    agent.kill();
    agent.restart().expect("the agent adopts its datapath");
    let api = Api::Socket(agent.socket());
    let previous = api.get_json(&format!("{SVC_PATH}/reals/10.0.0.11"))["previous_weight"].clone();
    let r = api.call(
        "PUT",
        &format!("{SVC_PATH}/reals/10.0.0.11"),
        Some(&format!(r#"{{"weight":{previous}}}"#)),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(weight(&agent.list(), "10.0.0.11:80"), 2);
    assert!(r.json().get("previous_weight").is_none());

    // Errors: the CLI's one-line messages, the right status codes, and nothing changes.
    let before = agent.list_config();
    let add_again = r#"{"protocol":"tcp","vip":"10.0.0.100","port":80}"#;
    let r = api.call("POST", "/api/v1/services", Some(add_again), None);
    assert_eq!(r.status, 409);
    cli_says(&agent, &["service", "add", "-t", SVC], &r.error());
    let r = api.call(
        "POST",
        &format!("{SVC_PATH}/reals"),
        Some(r#"{"addr":"10.0.0.12"}"#),
        None,
    );
    assert_eq!(r.status, 409);
    cli_says(
        &agent,
        &["real", "add", "-t", SVC, "-r", "10.0.0.12"],
        &r.error(),
    );
    let r = api.call("DELETE", "/api/v1/services/tcp/10.0.0.100/81", None, None);
    assert_eq!(r.status, 404);
    cli_says(
        &agent,
        &["service", "del", "-t", "10.0.0.100:81"],
        &r.error(),
    );
    let r = api.call("DELETE", &format!("{SVC_PATH}/reals/10.0.0.13"), None, None);
    assert_eq!(r.status, 404);
    cli_says(
        &agent,
        &["real", "del", "-t", SVC, "-r", "10.0.0.13"],
        &r.error(),
    );
    let r = api.call(
        "PUT",
        &format!("{SVC_PATH}/reals/10.0.0.11"),
        Some(r#"{"weight":100000}"#),
        None,
    );
    assert_eq!(r.status, 400);
    cli_says(
        &agent,
        &["real", "edit", "-t", SVC, "-r", "10.0.0.11", "-w", "100000"],
        &r.error(),
    );
    for (method, path, body) in [
        ("POST", "/api/v1/services", "not json"),
        (
            "POST",
            "/api/v1/services",
            r#"{"protocol":"tcp","vip":"10.0.0.100","port":80,"sched":"rr"}"#,
        ),
        (
            "PUT",
            &format!("{SVC_PATH}/reals/10.0.0.11"),
            r#"{"weight":-1}"#,
        ),
    ] {
        let r = api.call(method, path, Some(body), None);
        assert_eq!(r.status, 400, "{method} {path} {body}: {}", r.body);
        assert!(!r.error().is_empty());
    }
    assert_eq!(
        agent.list_config().0,
        before.0,
        "a refused call changed something"
    );

    // Everything else the CLI does: the director's check, drain, save, timeouts.
    assert_eq!(api.get("/api/v1/check").status, 200);
    assert_eq!(api.call("POST", "/api/v1/drain", None, None).status, 204);
    let r = api.get("/api/v1/check");
    assert_eq!(r.status, 503);
    assert_eq!(r.error(), "drained for maintenance (xdplb undrain ends it)");
    assert_eq!(api.call("POST", "/api/v1/undrain", None, None).status, 204);
    let saved = api.get("/api/v1/config");
    assert_eq!(saved.status, 200);
    assert_eq!(saved.body, agent.save());
    let r = api.call("PUT", "/api/v1/timeouts", Some(r#"{"tcp":600}"#), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["tcp"], 600);
    let agent_view = api.get_json("/api/v1/agent");
    assert_eq!(agent_view["interface"], "eth0");
    assert_eq!(agent_view["mode"], "native");
    assert!(agent_view["agent"]["program_id"].as_u64().unwrap() > 0);
    assert_eq!(agent_view["writable"], "yes");
    // The table sizes in effect: the defaults, the reply index as large as the connection table.
    assert_eq!(agent_view["conn_max"], lb_common::DEFAULT_CONN_MAX);
    assert_eq!(agent_view["nat_max"], lb_common::DEFAULT_CONN_MAX);

    // Deleting through the API takes the real server out of the datapath.
    let r = api.call(
        "DELETE",
        &format!("{SVC_PATH}/reals/10.0.0.12:80"),
        None,
        None,
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let names = topo.answered(&mut fresh, 10);
    assert!(names.iter().all(|n| n == rs1), "{names:?}");
    assert_eq!(api.call("DELETE", SVC_PATH, None, None).status, 204);
    assert!(agent.list().services().is_empty());
}

#[test]
fn an_ipv6_service_through_the_api() {
    if !needs() {
        return;
    }
    let topo = DrTopology::new(1).expect("topology");
    let agent = Agent::start(topo.director().ns(), "eth0", &[]).expect("agent");
    let api = Api::Socket(agent.socket());
    let r = api.call(
        "POST",
        "/api/v1/services",
        Some(r#"{"protocol":"udp","vip":"2001:db8::100","port":53,"scheduler":"sh"}"#),
        None,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let path = "/api/v1/services/udp/[2001:db8::100]/53";
    let r = api.call(
        "POST",
        &format!("{path}/reals"),
        Some(r#"{"addr":"2001:db8::11","forward":"tunnel","mac":"02:00:00:00:00:11"}"#),
        None,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["address"], "[2001:db8::11]:53");
    let listing = agent.list();
    let service = listing
        .service_of("udp", "[2001:db8::100]:53")
        .expect("listed");
    assert_eq!(service["reals"][0]["forward"], "tunnel");
    let r = api.get(&format!("{path}/reals/[2001:db8::11]"));
    assert_eq!(r.status, 200, "{}", r.body);
    let r = api.call(
        "DELETE",
        &format!("{path}/reals/[2001:db8::11]:53"),
        None,
        None,
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(api.call("DELETE", path, None, None).status, 204);
    assert!(agent.list().services().is_empty());
}

#[test]
fn the_web_door_reads_and_changes_only_with_the_token() {
    if !needs() {
        return;
    }
    let topo = DrTopology::new(2).expect("topology");
    let director = topo.director().ns();
    let scratch = Scratch::new("web");
    let token = &scratch.token;
    let web = WEB.to_string();
    let agent =
        Agent::start(director, "eth0", &["--web", &web, "--web-token", token]).expect("agent");
    topo.configure(&agent);
    let api = Api::Web(director, SocketAddr::V4(WEB));

    let services = api.get_json("/api/v1/services");
    assert_eq!(services[0]["reals"].as_array().unwrap().len(), 2);
    assert_eq!(api.get_json("/api/v1/agent")["writable"], "token");
    let drain = format!("{SVC_PATH}/reals/10.0.0.11");
    for given in [None, Some("not-the-token-not-the-token-xx")] {
        let r = api.call("PUT", &drain, Some(r#"{"weight":0}"#), given);
        assert_eq!(r.status, 401, "{given:?}: {}", r.body);
        assert!(r.error().contains("Bearer"), "{}", r.body);
    }
    assert_eq!(
        weight(&agent.list(), "10.0.0.11:80"),
        1,
        "a refused change was applied"
    );
    let r = api.call("PUT", &drain, Some(r#"{"weight":0}"#), Some(TOKEN));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(weight(&agent.list(), "10.0.0.11:80"), 0);

    // The same door serves /metrics (OpenMetrics, from prometheus-client) and the page.
    let scrape = Scrape::get(director, WEB).expect("metrics on --web");
    let real = [("real", "10.0.0.11:80")];
    assert_eq!(scrape.value("xdplb_real_weight", &real), 0.0);
    assert!(scrape.value("xdplb_program_id", &[]) > 0.0);
    let page = api.get("/");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>xdplb</title>"));
    drop(agent);

    // Without a token (here from the config file), the API is read-only over TCP.
    let config = format!(
        "interface = \"eth0\"\n[web]\nlisten = \"{WEB}\"\n\n[[service]]\nprotocol = \"tcp\"\n\
         vip = \"10.0.0.100\"\nport = 80\n[[service.real]]\naddress = \"10.0.0.11\"\n"
    );
    let agent = Agent::start_with_config(director, &config).expect("agent from config");
    assert_eq!(api.get_json("/api/v1/agent")["writable"], "no");
    let r = api.call("PUT", &drain, Some(r#"{"weight":0}"#), Some(TOKEN));
    assert_eq!(r.status, 403);
    assert!(r.error().contains("read-only"), "{}", r.body);
    assert_eq!(api.call("POST", "/api/v1/drain", None, None).status, 403);
    assert_eq!(weight(&agent.list(), "10.0.0.11:80"), 1);
    assert!(!agent.list().0["drained"].as_bool().unwrap_or(false));
}

/// A bad token file stops the agent before it starts, with one line naming the file.
#[test]
fn a_token_file_others_can_read_is_refused() {
    if !needs() {
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let topo = DrTopology::new(1).expect("topology");
    let scratch = Scratch::new("web-bad");
    let token = &scratch.token;
    std::fs::set_permissions(token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let web = WEB.to_string();
    let err = Agent::start(
        topo.director().ns(),
        "eth0",
        &["--web", &web, "--web-token", token],
    )
    .err()
    .expect("the agent refuses the token file");
    let err = format!("{err:#}");
    assert!(
        err.contains(&format!(
            "web token file {token} is readable by group or others"
        )),
        "{err}"
    );
}

/// `--web` over HTTPS with `--web-tls-cert` and `--web-tls-key`: curl, trusting the test CA,
/// reads the API and changes a weight with the token through it; a client speaking plain HTTP to
/// that port gets no answer (nothing is served in clear).
#[test]
fn the_web_door_serves_https_with_its_certificate() {
    if !needs_tls() {
        return;
    }
    let topo = DrTopology::new(2).expect("topology");
    let director = topo.director().ns();
    let scratch = Scratch::new("web-tls");
    let certs = Certificates::new(&scratch.dir, TLS_NAME).expect("openssl");
    let web = WEB.to_string();
    let agent = Agent::start(
        director,
        "eth0",
        &[
            "--web",
            &web,
            "--web-token",
            &scratch.token,
            "--web-tls-cert",
            &certs.cert,
            "--web-tls-key",
            &certs.key,
        ],
    )
    .expect("agent");
    topo.configure(&agent);
    let api = https(director, &certs);
    assert_eq!(api.get_json("/api/v1/agent")["writable"], "token");
    let drain = format!("{SVC_PATH}/reals/10.0.0.11");
    assert_eq!(
        api.call("PUT", &drain, Some(r#"{"weight":0}"#), None)
            .status,
        401
    );
    let r = api.call("PUT", &drain, Some(r#"{"weight":0}"#), Some(TOKEN));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(weight(&agent.list(), "10.0.0.11:80"), 0);
    assert!(api.get("/").body.contains("<title>xdplb</title>"));

    // curl's status 000: no HTTP answer at all.
    let plain = Api::Web(director, SocketAddr::V4(WEB));
    assert_eq!(plain.get("/api/v1/agent").status, 0);
    // And the door still serves after it.
    assert_eq!(api.get_json("/api/v1/agent")["writable"], "token");
}

/// A renewed certificate (another CA's here) is served after `xdplb reload`; files that cannot
/// serve fail the reload with one line, and the door keeps serving the certificate it had.
#[test]
fn a_reload_serves_a_renewed_certificate() {
    if !needs_tls() {
        return;
    }
    let topo = DrTopology::new(1).expect("topology");
    let director = topo.director().ns();
    let scratch = Scratch::new("web-tls-renew");
    let made = |name: &str| {
        let dir = scratch.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Certificates::new(&dir, TLS_NAME).expect("openssl")
    };
    let (old, new) = (made("old"), made("new"));
    let (cert, key) = (scratch.dir.join("web.pem"), scratch.dir.join("web.key"));
    let use_files = |c: &Certificates| {
        std::fs::copy(&c.cert, &cert).unwrap();
        std::fs::copy(&c.key, &key).unwrap();
    };
    use_files(&old);
    let config = format!(
        "interface = \"eth0\"\n[web]\nlisten = \"{WEB}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let agent = Agent::start_with_config(director, &config).expect("agent");
    let trusting = |c: &Certificates| https(director, c).get("/api/v1/agent").status;
    assert_eq!((trusting(&old), trusting(&new)), (200, 0));

    use_files(&new);
    let out = agent.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!((trusting(&old), trusting(&new)), (0, 200));

    // A certificate file that holds none: the reload fails and changes nothing (the service
    // the file adds with it is not added); the renewed certificate is still served.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    agent
        .write_config(&format!(
            "{config}\n[[service]]\nprotocol = \"tcp\"\nvip = \"10.0.0.100\"\nport = 80\n"
        ))
        .unwrap();
    let out = agent.cli(&["reload"]);
    assert!(
        !out.status.success(),
        "a reload took a file without a certificate"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "web TLS certificate file {} holds no certificate",
            cert.display()
        )),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(agent.list().0["services"], serde_json::json!([]));
    assert_eq!(trusting(&new), 200);
}

/// TLS files that cannot serve stop the agent before it starts, with one line naming what is
/// wrong: a key that is not the certificate's, a certificate file without a certificate, a key
/// others can read; a certificate without its key is refused by the command line.
#[test]
fn bad_tls_files_are_refused() {
    if !needs_tls() {
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let topo = DrTopology::new(1).expect("topology");
    let scratch = Scratch::new("web-tls-bad");
    let certs = Certificates::new(&scratch.dir, TLS_NAME).expect("openssl");
    let web = WEB.to_string();
    // The agent refuses to start with `tls` (its certificate and key files), saying `says`.
    let refused = |tls: &[&str], says: &str| {
        let args = [&["--web", &web, "--web-tls-cert"][..], tls].concat();
        let err = Agent::start(topo.director().ns(), "eth0", &args)
            .err()
            .unwrap_or_else(|| panic!("the agent took {tls:?}"));
        let err = format!("{err:#}");
        assert!(err.contains(says), "{tls:?}: {err}");
    };
    let (cert, key) = (certs.cert.as_str(), certs.key.as_str());
    refused(
        &[cert, "--web-tls-key", &certs.ca_key],
        &format!(
            "web TLS: the certificate in {cert} with the key in {}",
            certs.ca_key
        ),
    );
    refused(
        &[&scratch.token, "--web-tls-key", key],
        &format!(
            "web TLS certificate file {} holds no certificate",
            scratch.token
        ),
    );
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused(
        &[cert, "--web-tls-key", key],
        &format!("web TLS key file {key} is readable by group or others"),
    );
    // Without its key: the command line says which option is missing.
    refused(&[cert], "--web-tls-key");
}

#[test]
fn the_status_page_shows_live_rates_in_a_real_browser() {
    if !needs() || !require_program("chromium", "chromium") {
        return;
    }
    let topo = DrTopology::with_servers(3, Serve::Once).expect("topology");
    let director = topo.director().ns();
    let scratch = Scratch::new("page");
    let (dir, token) = (&scratch.dir, &scratch.token);
    let web = WEB.to_string();
    let agent =
        Agent::start(director, "eth0", &["--web", &web, "--web-token", token]).expect("agent");
    topo.configure(&agent);
    // Health checks: the third real server's server is gone, so it is down with an error.
    topo.kill_server(3);
    for rip in ["10.0.0.11", "10.0.0.12", "10.0.0.13"] {
        agent.set_check(SVC, rip, "tcp");
    }

    let mut browser = Browser::open(
        director,
        &format!("http://{WEB}/"),
        &dir.join("chromium.log"),
    )
    .unwrap_or_else(|e| {
        let log = std::fs::read_to_string(dir.join("chromium.log")).unwrap_or_default();
        panic!("{e:#}\n{log}")
    });
    let wait = |b: &mut Browser, what: &str| {
        b.wait_for(what, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e:#}"))
    };
    // Asked before the page is parsed, there is no body yet: a throw is not a failure to retry.
    wait(&mut browser, "Number(document.body?.dataset.updates) >= 1");
    // A mark that a reload would wipe.
    browser.eval("window.xdplbMark = 1").unwrap();
    let text = |b: &mut Browser, js: &str| b.eval(js).unwrap().as_str().unwrap_or("").to_owned();
    let row = |r: &str, cell: &str| {
        format!(
            "((document.querySelector('[data-real=\"{r}\"] .{cell}') || {{}}).textContent || '')"
        )
    };
    wait(
        &mut browser,
        &format!("{}.startsWith('down')", row("10.0.0.13:80", "health")),
    );
    assert!(text(&mut browser, &row("10.0.0.11:80", "health")).starts_with("up"));
    let last_error = text(&mut browser, &row("10.0.0.13:80", "last-error"));
    assert!(last_error.contains("refused"), "{last_error}");
    assert_eq!(
        text(
            &mut browser,
            "document.querySelector('[data-service] h2').textContent"
        ),
        "TCP 10.0.0.100:80"
    );
    assert_eq!(text(&mut browser, &row("10.0.0.12:80", "forward")), "DR");
    assert_eq!(
        text(
            &mut browser,
            "document.getElementById('interface').textContent"
        ),
        "eth0"
    );
    let program = text(
        &mut browser,
        "document.getElementById('program').textContent",
    );
    assert!(program.starts_with("id "), "{program}");

    // First reading: no traffic.
    let rate = "document.querySelector('[data-service] .service-head .conns-rate').textContent";
    wait(&mut browser, &format!("{rate} === '0'"));
    let quiet = text(&mut browser, rate);

    // Traffic for a few seconds: the page's rates follow without a reload.
    let client = topo.client().ns();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = client.thread({
        let stop = stop.clone();
        move || {
            let mut fresh = FreshFlows::new(30000);
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let flows = fresh.take(5);
                n += lb_tests::client::fetch_each(&flows, DrTopology::service())
                    .iter()
                    .filter(|r| r.is_ok())
                    .count();
                std::thread::sleep(Duration::from_millis(50));
            }
            n
        }
    });
    wait(&mut browser, &format!("Number({rate}) > 0"));
    let busy = text(&mut browser, rate);
    assert_ne!(busy, quiet, "the rates did not change between two readings");
    wait(
        &mut browser,
        &format!("Number({}) > 0", row("10.0.0.11:80", "conns-rate")),
    );
    assert_eq!(
        browser.eval("window.xdplbMark").unwrap(),
        1,
        "the page was reloaded"
    );
    // The chart has points, the shares add up to the traffic each server took.
    wait(
        &mut browser,
        "document.querySelectorAll('[data-service] .chart polyline').length === 2",
    );
    let share = text(&mut browser, &row("10.0.0.13:80", "share-value"));
    assert_eq!(share, "0%", "the down server got new connections");
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/xdplb-web.png");
    browser.screenshot(&shot).unwrap();
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served = traffic.join().unwrap();
    assert!(served > 0);

    // The buttons, with the token: drain, restore, take out, put back in.
    assert_eq!(
        browser
            .eval("document.querySelectorAll('button').length")
            .unwrap(),
        0,
        "buttons without a token"
    );
    browser
        .eval(&format!(
            "(() => {{ const t = document.getElementById('token'); t.value = '{TOKEN}'; \
             t.dispatchEvent(new Event('change')); return true; }})()"
        ))
        .unwrap();
    let click = |b: &mut Browser, real: &str, action: &str| {
        let js = format!(
            "document.querySelector('[data-real=\"{real}\"] button[data-action=\"{action}\"]')"
        );
        b.wait_for(&format!("!!{js}"), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e:#}"));
        b.eval(&format!("{js}.click(), true")).unwrap();
    };
    let until = |what: &str, f: &dyn Fn(&Listing) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f(&agent.list()) {
            assert!(Instant::now() < deadline, "{what}: {}", agent.list().0);
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    click(&mut browser, "10.0.0.11:80", "drain");
    until("drained", &|l| weight(l, "10.0.0.11:80") == 0);
    click(&mut browser, "10.0.0.11:80", "restore");
    until("restored", &|l| weight(l, "10.0.0.11:80") == 1);
    click(&mut browser, "10.0.0.12:80", "out");
    until("taken out", &|l| {
        !l.reals(SVC).contains(&"10.0.0.12:80".to_owned())
    });
    click(&mut browser, "10.0.0.12", "in");
    until("put back in", &|l| {
        l.reals(SVC).contains(&"10.0.0.12:80".to_owned())
    });
    let back = agent.list();
    let back = back.real(SVC, "10.0.0.12:80");
    assert_eq!(back["weight"], 1);
    assert!(
        back["check"].is_object(),
        "its health check came back with it: {back}"
    );
}

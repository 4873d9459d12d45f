//! The doors and the API against a scripted agent: what each call asks of the agent, and what
//! the client gets back (status, JSON, headers), over real HTTP connections.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::*;
use crate::{
    control::{Failure, Listing},
    state::{Protocol, ServiceAddr},
};

/// An agent that records each request and answers from a script.
#[derive(Clone, Default)]
struct Scripted {
    seen: Arc<Mutex<Vec<Request>>>,
}

fn listing() -> Listing {
    serde_json::from_value(json!({
        "interface": "eth0",
        "mode": "native",
        "services": [
            {
                "protocol": "tcp", "address": "10.0.0.100:80", "scheduler": "mh",
                "stats": { "conns": 7, "packets": 100, "bytes": 6400 },
                "reals": [
                    { "address": "10.0.0.11:80", "forward": "route", "weight": 1,
                      "mac": "02:00:00:00:00:11", "stats": { "conns": 7, "packets": 100, "bytes": 6400 } },
                ]
            },
            {
                "protocol": "udp", "address": "[2001:db8::100]:53", "scheduler": "sh",
                "reals": [
                    { "address": "[2001:db8::11]:53", "forward": "route", "weight": 2,
                      "mac": "02:00:00:00:00:12",
                      "health": { "state": "down", "last_error": "timed out" } },
                ]
            }
        ],
        "reasons": { "pass_no_service": 12 },
        "agent": { "version": "0.1.0", "started": 1700000000.5, "reloads": 3,
                   "reload_failures": 1, "program_id": 42 }
    }))
    .unwrap()
}

impl Scripted {
    fn control(&self) -> Control {
        let seen = self.seen.clone();
        Arc::new(move |req: Request| {
            seen.lock().unwrap().push(req.clone());
            let answer = match req {
                Request::List => Response::Listing(Box::new(listing())),
                Request::Check => Response::Checked {
                    problem: Some("drained for maintenance (xdplb undrain ends it)".into()),
                },
                Request::DelService { service } if service.port == 81 => Response::Error {
                    message: format!("no such service: {service}"),
                    kind: Some(Failure::NotFound),
                },
                Request::AddService { service, .. } if service.port == 80 => Response::Error {
                    message: format!("service {service} already exists"),
                    kind: Some(Failure::Exists),
                },
                Request::EditReal { real, .. } if real.weight == Some(1000) => Response::Error {
                    message: "weight 1000 is out of range 0..=256".into(),
                    kind: None,
                },
                _ => Response::Ok,
            };
            Box::pin(async move { answer })
        })
    }

    fn seen(&self) -> Vec<Request> {
        std::mem::take(&mut self.seen.lock().unwrap())
    }
}

/// A door on a local port, with its scripted agent.
async fn door(which: Door, access: Access) -> (std::net::SocketAddr, Scripted) {
    let agent = Scripted::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(which, agent.control(), Arc::new(Rates::default()), access);
    tokio::spawn(serve_listener(listener, None, app, "test"));
    (addr, agent)
}

/// Sends `request` as it is; returns the status code, the head (header names in lower case, as
/// hyper writes them) and the body.
async fn raw(addr: std::net::SocketAddr, request: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, head.to_owned(), body.to_owned())
}

/// One call: method, path, optional JSON body and bearer token.
async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, String, String) {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    if let Some(t) = token {
        request.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    request.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    raw(addr, &request).await
}

fn error_of(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["error"].as_str().expect("an error message").to_owned()
}

const WEB: &str = "/api/v1/services/tcp/10.0.0.100/80";

#[tokio::test]
async fn the_socket_door_reads_and_writes() {
    let (addr, agent) = door(Door::Socket, Access::Full).await;

    let (status, head, body) = call(addr, "GET", "/api/v1/services", None, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("cache-control: no-store"), "{head}");
    let services: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(services[0]["address"], "10.0.0.100:80");
    assert_eq!(services[1]["reals"][0]["health"]["last_error"], "timed out");
    assert_eq!(agent.seen(), [Request::List]);

    // An IPv6 VIP with and without brackets, percent-encoded or not.
    for path in [
        "/api/v1/services/udp/[2001:db8::100]/53",
        "/api/v1/services/udp/%5B2001:db8::100%5D/53",
        "/api/v1/services/udp/2001:db8::100/53/reals/[2001:db8::11]:53",
    ] {
        let (status, _, body) = call(addr, "GET", path, None, None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, _, body) = call(
        addr,
        "GET",
        "/api/v1/services/udp/[2001:db8::100]/53/reals/[2001:db8::11]:54",
        None,
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        error_of(&body),
        "no such real server 2001:db8::11 in service UDP [2001:db8::100]:53"
    );
    agent.seen();

    // Add: the body is the service and its scheduler.
    let (status, head, body) = call(
        addr,
        "POST",
        "/api/v1/services",
        Some(r#"{"protocol":"udp","vip":"2001:db8::100","port":53,"scheduler":"sh"}"#),
        None,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(
        head.contains("location: /api/v1/services/udp/[2001:db8::100]/53"),
        "{head}"
    );
    let udp = ServiceAddr {
        protocol: Protocol::Udp,
        vip: "2001:db8::100".parse().unwrap(),
        port: 53,
    };
    match &agent.seen()[0] {
        Request::AddService { service, scheduler } => {
            assert_eq!(*service, udp);
            assert_eq!(scheduler.scheduler, Some(crate::state::Scheduler::Sh));
        }
        other => panic!("{other:?}"),
    }

    // The agent's errors, with their status codes; nothing else is asked of it.
    let (status, _, body) = call(
        addr,
        "POST",
        "/api/v1/services",
        Some(r#"{"protocol":"tcp","vip":"10.0.0.100","port":80}"#),
        None,
    )
    .await;
    assert_eq!(
        (status, error_of(&body)),
        (409, "service TCP 10.0.0.100:80 already exists".into())
    );
    assert_eq!(agent.seen().len(), 1, "no listing after a failed add");
    let (status, _, body) = call(
        addr,
        "DELETE",
        "/api/v1/services/tcp/10.0.0.100/81",
        None,
        None,
    )
    .await;
    assert_eq!(
        (status, error_of(&body)),
        (404, "no such service: TCP 10.0.0.100:81".into())
    );
    let (status, _, body) = call(
        addr,
        "PUT",
        &format!("{WEB}/reals/10.0.0.11"),
        Some(r#"{"weight":1000}"#),
        None,
    )
    .await;
    assert_eq!(
        (status, error_of(&body)),
        (400, "weight 1000 is out of range 0..=256".into())
    );
    agent.seen();

    // Bad input never reaches the agent.
    for (method, path, body, want) in [
        ("POST", "/api/v1/services", "{", "malformed request body"),
        (
            "POST",
            "/api/v1/services",
            r#"{"protocol":"tcp","vip":"10.0.0.1","port":80,"schedular":"mh"}"#,
            "unknown field `schedular`",
        ),
        (
            "POST",
            "/api/v1/services",
            r#"{"protocol":"sctp","vip":"10.0.0.1","port":80}"#,
            "unknown variant `sctp`",
        ),
        (
            "POST",
            "/api/v1/services",
            r#"{"vip":"10.0.0.1","port":80}"#,
            "missing field `protocol`",
        ),
        (
            "PUT",
            "/api/v1/services/icmp/10.0.0.100/80",
            "{}",
            "unknown protocol \"icmp\": tcp or udp",
        ),
        (
            "PUT",
            "/api/v1/services/tcp/10.0.0.300/80",
            "{}",
            "not an IP address: 10.0.0.300",
        ),
        (
            "PUT",
            "/api/v1/services/tcp/10.0.0.100/65536",
            "{}",
            "not a port: 65536",
        ),
        (
            "POST",
            &format!("{WEB}/reals"),
            r#"{"addr":"10.0.0.12","weigth":2}"#,
            "unknown field `weigth`",
        ),
        (
            "PUT",
            &format!("{WEB}/reals/10.0.0.11"),
            r#"{"addr":"10.0.0.12"}"#,
            "the body's addr 10.0.0.12 is not the path's real server 10.0.0.11",
        ),
        (
            "PUT",
            "/api/v1/timeouts",
            r#"{"tcp":"long"}"#,
            "malformed request body",
        ),
    ] {
        let (status, head, got) = call(addr, method, path, Some(body), None).await;
        assert_eq!(status, 400, "{method} {path} {body}: {got}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let message = error_of(&got);
        assert!(message.contains(want), "{method} {path} {body}: {message}");
        assert!(!message.contains('\n'));
        assert!(
            agent.seen().iter().all(|r| *r == Request::List),
            "{method} {path} {body} reached the agent"
        );
    }

    // Real servers: the address in the path, a port given must be the real server's.
    let (status, _, body) = call(
        addr,
        "DELETE",
        &format!("{WEB}/reals/10.0.0.11:80"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    assert!(body.is_empty());
    match &agent.seen()[..] {
        [Request::DelReal { addr, port, .. }] => {
            assert_eq!((addr.to_string(), *port), ("10.0.0.11".into(), Some(80)));
        }
        other => panic!("{other:?}"),
    }
    let (status, _, body) = call(
        addr,
        "PUT",
        &format!("{WEB}/reals/10.0.0.11"),
        Some(r#"{"weight":0}"#),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = agent.seen();
    match &seen[1] {
        Request::EditReal { real, .. } => {
            assert_eq!(real.addr, Some("10.0.0.11".parse().unwrap()));
            assert_eq!(real.weight, Some(0));
        }
        other => panic!("{other:?}"),
    }

    // The director's own calls.
    let (status, _, body) = call(addr, "GET", "/api/v1/check", None, None).await;
    assert_eq!(status, 503);
    assert_eq!(
        error_of(&body),
        "drained for maintenance (xdplb undrain ends it)"
    );
    let (status, _, body) = call(addr, "GET", "/api/v1/agent", None, None).await;
    assert_eq!(status, 200);
    let agent_view: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(agent_view["agent"]["program_id"], 42);
    assert_eq!(agent_view["writable"], "yes");
    let (status, _, body) = call(addr, "GET", "/api/v1/sync", None, None).await;
    assert_eq!(
        (status, error_of(&body)),
        (
            404,
            "connection sync is not configured on this director".into()
        )
    );
    agent.seen();
    for (path, want) in [
        ("/api/v1/drain", Request::Drain),
        ("/api/v1/undrain", Request::Undrain),
        ("/api/v1/reload", Request::Reload),
        ("/api/v1/zero", Request::Zero { service: None }),
    ] {
        let (status, _, _) = call(addr, "POST", path, None, None).await;
        assert_eq!(status, 204, "{path}");
        assert_eq!(agent.seen(), [want]);
    }

    // The socket door has neither the page nor /metrics.
    for path in ["/", "/metrics", "/api/v2/services"] {
        let (status, _, body) = call(addr, "GET", path, None, None).await;
        assert_eq!(status, 404, "{path}");
        assert!(error_of(&body).starts_with("not found"), "{body}");
    }
}

#[tokio::test]
async fn the_web_door_is_read_only_without_a_token() {
    let (addr, agent) = door(Door::Web, Access::ReadOnly).await;
    let (status, _, body) = call(addr, "GET", WEB, None, None).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = call(addr, "GET", "/api/v1/agent", None, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""writable":"no""#), "{body}");
    agent.seen();
    for (method, path) in [
        ("DELETE", WEB),
        ("POST", "/api/v1/drain"),
        ("PUT", "/api/v1/timeouts"),
    ] {
        let (status, _, body) = call(addr, method, path, Some("{}"), Some("anything")).await;
        assert_eq!(status, 403, "{method} {path}");
        assert!(error_of(&body).contains("--web-token"), "{body}");
    }
    assert!(
        agent.seen().is_empty(),
        "a refused change reached the agent"
    );

    // The page and its assets, self-contained.
    let (status, head, body) = call(addr, "GET", "/", None, None).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'self'"),
        "{head}"
    );
    assert!(body.contains(r#"<script src="/app.js""#));
    assert!(
        !body.contains("http://") && !body.contains("https://"),
        "nothing external"
    );
    for (path, kind) in [("/app.js", "text/javascript"), ("/style.css", "text/css")] {
        let (status, head, body) = call(addr, "GET", path, None, None).await;
        assert_eq!(status, 200);
        assert!(head.contains(kind), "{head}");
        assert!(!body.contains("https://"), "{path} loads nothing external");
    }
}

#[tokio::test]
async fn the_web_door_changes_with_the_right_token_only() {
    let token = Access::Token(Arc::new(b"0123456789abcdef-token".to_vec()));
    let (addr, agent) = door(Door::Web, token).await;
    let body = r#"{"weight":0}"#;
    let path = format!("{WEB}/reals/10.0.0.11");
    for given in [
        None,
        Some("wrong-token-wrong-token"),
        Some("0123456789abcdef-toke"),
    ] {
        let (status, head, got) = call(addr, "PUT", &path, Some(body), given).await;
        assert_eq!(status, 401, "{given:?}");
        assert!(head.contains("www-authenticate: Bearer"), "{head}");
        assert!(error_of(&got).contains("Authorization: Bearer"), "{got}");
    }
    assert!(
        agent.seen().is_empty(),
        "a refused change reached the agent"
    );
    let (status, _, got) = call(
        addr,
        "PUT",
        &path,
        Some(body),
        Some("0123456789abcdef-token"),
    )
    .await;
    assert_eq!(status, 200, "{got}");
    assert!(matches!(agent.seen()[1], Request::EditReal { .. }));
    let (_, _, got) = call(addr, "GET", "/api/v1/agent", None, None).await;
    assert!(got.contains(r#""writable":"token""#), "{got}");
}

#[tokio::test]
async fn metrics_are_served_by_prometheus_client() {
    let (addr, agent) = door(Door::Metrics, Access::ReadOnly).await;
    let get = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain\r\n\r\n";
    let (status, head, body) = raw(addr, get).await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(head.contains("connection: close"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}", body.len())),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("xdplb_config_reloads_total 3\n"), "{body}");
    assert!(
        body.contains("# TYPE xdplb_config_reloads counter\n"),
        "{body}"
    );

    let (status, head, body) = raw(addr, "HEAD /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, 200);
    assert!(body.is_empty());
    assert!(!head.contains("content-length: 0"), "{head}");

    for path in ["/", "/metricsx", "/api/v1/services"] {
        let (status, _, _) = raw(addr, &format!("GET {path} HTTP/1.1\r\n\r\n")).await;
        assert_eq!(status, 404, "{path}");
    }
    let (status, head, _) = raw(addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
    assert_eq!(status, 405);
    assert!(head.contains("allow: GET,HEAD"), "{head}");
    let (status, _, _) = raw(addr, "garbage\r\n\r\n").await;
    assert_eq!(status, 400);
    // Beyond hyper's limit for a request head (about 400 KB).
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let (status, _, _) = raw(addr, &huge).await;
    assert_eq!(status, 431);

    // The head may arrive in pieces.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    for piece in ["GET /met", "rics HTTP/1.1\r", "\n\r", "\n"] {
        stream.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");

    // Every scrape that reached /metrics with GET or HEAD took one listing.
    assert_eq!(agent.seen(), vec![Request::List; 3]);
}

#[tokio::test]
async fn metrics_answer_500_when_the_agent_cannot_list() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let control: Control = Arc::new(|_| {
        Box::pin(async {
            Response::Error {
                message: "datapath counters unreadable".into(),
                kind: None,
            }
        })
    });
    let app = router(
        Door::Metrics,
        control,
        Arc::new(Rates::default()),
        Access::ReadOnly,
    );
    tokio::spawn(serve_listener(listener, None, app, "test"));
    let (status, _, body) = raw(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, 500);
    assert!(body.contains("datapath counters unreadable"));
}

//! The JSON API, version 1: REST over the control protocol. Each call becomes one control
//! [`Request`], so the API does what the CLI does, with the same checks and the same one-line
//! errors, as `{"error": "..."}` with 400 (bad input), 404 (no such service or real server), 409
//! (it exists already), 401/403 (see [`super::access`]) or 500 (the agent cannot read its
//! datapath).
//!
//! | route | methods |
//! |---|---|
//! | `/api/v1/services` | GET (every service with its real servers), POST (add), DELETE (clear all) |
//! | `/api/v1/services/{tcp\|udp}/{vip}/{port}` | GET, PUT (scheduler), DELETE |
//! | `.../reals` | GET, POST (add) |
//! | `.../reals/{rip}` | GET, PUT (weight, method, ...), DELETE |
//! | `.../simulate`, `.../zero` | POST |
//! | `/api/v1/stats` | GET: pass/drop reasons, totals, rates, each service's chart |
//! | `/api/v1/agent` | GET: version, interfaces, mode, program, uptime, reloads, drain, check |
//! | `/api/v1/sync` | GET (404 when sync is not configured) |
//! | `/api/v1/connections`, `/api/v1/config`, `/api/v1/check` | GET |
//! | `/api/v1/reload`, `/api/v1/zero`, `/api/v1/drain`, `/api/v1/undrain` | POST |
//! | `/api/v1/timeouts` | GET, PUT |
//!
//! An IPv6 VIP or real server address in a path is written in brackets (`[2001:db8::100]`,
//! `[2001:db8::11]:80`), bare also works.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{header, StatusCode},
    middleware,
    response::{IntoResponse, Response as HttpResponse},
    routing::{get, post},
    Json, Router,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::{json, Value};

use super::{access, rates, Access, Control, Rates};
use crate::{
    control::{Failure, Listing, RealView, Request, Response, ServiceView},
    state::{Protocol, RealSpec, SchedulerSpec, ServiceAddr},
};

/// An error answer: a status and the one-line message, as `{"error": "..."}`.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> HttpResponse {
        let mut response = (self.0, Json(json!({ "error": self.1 }))).into_response();
        no_store(&mut response);
        response
    }
}

pub fn error(status: StatusCode, message: String) -> ApiError {
    ApiError(status, message)
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

type Result<T> = std::result::Result<T, ApiError>;

/// Answers change with every call: no cache keeps one.
fn no_store(response: &mut HttpResponse) {
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
}

fn ok(value: impl Serialize) -> HttpResponse {
    let mut response = Json(value).into_response();
    no_store(&mut response);
    response
}

#[derive(Clone)]
struct Api {
    control: Control,
    rates: Arc<Rates>,
    access: Access,
}

impl Api {
    /// Sends `req`; an error answer becomes 404/409 by its kind, else `status`.
    async fn call(&self, req: Request, status: StatusCode) -> Result<Response> {
        match (self.control)(req).await {
            Response::Error { message, kind } => Err(ApiError(
                match kind {
                    Some(Failure::NotFound) => StatusCode::NOT_FOUND,
                    Some(Failure::Exists) => StatusCode::CONFLICT,
                    None => status,
                },
                message,
            )),
            r => Ok(r),
        }
    }

    /// A change: 204 when done.
    async fn change(&self, req: Request) -> Result<HttpResponse> {
        self.call(req, StatusCode::BAD_REQUEST).await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    /// The listing with stats and the last rates.
    async fn listing(&self) -> Result<Listing> {
        match self
            .call(Request::List, StatusCode::INTERNAL_SERVER_ERROR)
            .await?
        {
            Response::Listing(mut l) => {
                self.rates.annotate(&mut l);
                Ok(*l)
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn service(&self, addr: ServiceAddr) -> Result<ServiceView> {
        let listing = self.listing().await?;
        find_service(listing, addr)
    }
}

fn unexpected(r: &Response) -> ApiError {
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("unexpected answer from the agent: {r:?}"),
    )
}

pub fn routes(control: Control, rates: Arc<Rates>, access: Access) -> Router {
    let api = Api {
        control,
        rates,
        access: access.clone(),
    };
    let service = "/api/v1/services/{protocol}/{vip}/{port}";
    Router::new()
        .route(
            "/api/v1/services",
            get(services).post(add_service).delete(clear),
        )
        .route(
            service,
            get(get_service).put(edit_service).delete(del_service),
        )
        .route(&format!("{service}/reals"), get(reals).post(add_real))
        .route(
            &format!("{service}/reals/{{rip}}"),
            get(get_real).put(edit_real).delete(del_real),
        )
        .route(&format!("{service}/simulate"), post(simulate))
        .route(&format!("{service}/zero"), post(zero_service))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/agent", get(agent))
        .route("/api/v1/sync", get(sync))
        .route("/api/v1/connections", get(connections))
        .route("/api/v1/config", get(config))
        .route("/api/v1/check", get(check))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/zero", post(zero))
        .route("/api/v1/drain", post(drain))
        .route("/api/v1/undrain", post(undrain))
        .route("/api/v1/timeouts", get(timeouts).put(set_timeouts))
        .route_layer(middleware::from_fn_with_state(access, access::guard))
        .with_state(api)
}

/// The path of one service: `{tcp|udp}/{vip}/{port}`.
#[derive(Deserialize)]
struct ServicePath {
    protocol: String,
    vip: String,
    port: String,
}

#[derive(Deserialize)]
struct RealPath {
    #[serde(flatten)]
    service: ServicePath,
    rip: String,
}

impl ServicePath {
    fn addr(&self) -> Result<ServiceAddr> {
        let protocol = match self.protocol.as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            p => return Err(bad(format!("unknown protocol {p:?}: tcp or udp"))),
        };
        let vip = ip(&self.vip).ok_or_else(|| bad(format!("not an IP address: {}", self.vip)))?;
        let port = self
            .port
            .parse()
            .map_err(|_| bad(format!("not a port: {}", self.port)))?;
        Ok(ServiceAddr {
            protocol,
            vip,
            port,
        })
    }
}

/// An address, IPv6 with or without its brackets.
fn ip(text: &str) -> Option<IpAddr> {
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse().ok()
}

/// A real server in a path: its address, and its port if one is given.
fn real_addr(text: &str) -> Result<(IpAddr, Option<u16>)> {
    if let Some(a) = ip(text) {
        return Ok((a, None));
    }
    text.parse::<SocketAddr>()
        .map(|s| (s.ip(), Some(s.port())))
        .map_err(|_| bad(format!("not a real server address: {text}")))
}

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(malformed)
}

/// A part of a body already parsed.
fn part<T: DeserializeOwned>(fields: serde_json::Map<String, Value>) -> Result<T> {
    serde_json::from_value(Value::Object(fields)).map_err(malformed)
}

fn malformed(e: serde_json::Error) -> ApiError {
    bad(format!("malformed request body: {e}"))
}

/// A body that may be empty (none given means all defaults).
fn body_or_default<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    body(bytes)
}

fn find_service(listing: Listing, addr: ServiceAddr) -> Result<ServiceView> {
    let address = SocketAddr::new(addr.vip, addr.port).to_string();
    listing
        .services
        .into_iter()
        .find(|s| s.protocol == addr.protocol && s.address == address)
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                crate::state::no_such_service(&addr).to_string(),
            )
        })
}

fn find_real(
    service: ServiceView,
    addr: ServiceAddr,
    (rip, port): (IpAddr, Option<u16>),
) -> Result<RealView> {
    service
        .reals
        .into_iter()
        .find(|r| {
            r.address
                .parse::<SocketAddr>()
                .is_ok_and(|a| a.ip() == rip && port.is_none_or(|p| p == a.port()))
        })
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                crate::state::no_such_real(rip, &addr).to_string(),
            )
        })
}

/// Where a service or real server is found: its path.
fn location(addr: ServiceAddr, real: Option<&str>) -> String {
    let vip = match addr.vip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let mut path = format!(
        "/api/v1/services/{}/{vip}/{}",
        addr.protocol.name(),
        addr.port
    );
    if let Some(r) = real {
        path.push_str("/reals/");
        path.push_str(r);
    }
    path
}

fn created(path: String, value: impl Serialize) -> HttpResponse {
    let mut response = ok(value);
    *response.status_mut() = StatusCode::CREATED;
    if let Ok(v) = header::HeaderValue::from_str(&path) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

async fn services(State(api): State<Api>) -> Result<HttpResponse> {
    Ok(ok(api.listing().await?.services))
}

/// `{"protocol": "tcp", "vip": "10.0.0.100", "port": 80}` and the scheduler's settings
/// (`scheduler`, `mh_size`, `hash`, `persistent`, `netmask`), as `xdplb service add` takes them.
async fn add_service(State(api): State<Api>, bytes: Bytes) -> Result<HttpResponse> {
    let mut fields: serde_json::Map<String, Value> = body(&bytes)?;
    let mut addr = serde_json::Map::new();
    for k in ["protocol", "vip", "port"] {
        if let Some(v) = fields.remove(k) {
            addr.insert(k.to_owned(), v);
        }
    }
    let service: ServiceAddr = part(addr)?;
    let scheduler: SchedulerSpec = part(fields)?;
    api.call(
        Request::AddService { service, scheduler },
        StatusCode::BAD_REQUEST,
    )
    .await?;
    let view = api.service(service).await?;
    Ok(created(location(service, None), view))
}

async fn clear(State(api): State<Api>) -> Result<HttpResponse> {
    api.change(Request::Clear).await
}

async fn get_service(State(api): State<Api>, Path(p): Path<ServicePath>) -> Result<HttpResponse> {
    Ok(ok(api.service(p.addr()?).await?))
}

/// The scheduler's settings to change; what is not given stays.
async fn edit_service(
    State(api): State<Api>,
    Path(p): Path<ServicePath>,
    bytes: Bytes,
) -> Result<HttpResponse> {
    let service = p.addr()?;
    let scheduler: SchedulerSpec = body_or_default(&bytes)?;
    api.call(
        Request::EditService { service, scheduler },
        StatusCode::BAD_REQUEST,
    )
    .await?;
    Ok(ok(api.service(service).await?))
}

async fn del_service(State(api): State<Api>, Path(p): Path<ServicePath>) -> Result<HttpResponse> {
    api.change(Request::DelService { service: p.addr()? }).await
}

async fn reals(State(api): State<Api>, Path(p): Path<ServicePath>) -> Result<HttpResponse> {
    Ok(ok(api.service(p.addr()?).await?.reals))
}

/// A real server as `xdplb real add` takes it: `addr` (required), `port`, `weight`, `forward`
/// (`route`, `tunnel`, `masq`), `mac`, `check` (`{"set": {...}}`), `upper`, `lower`.
async fn add_real(
    State(api): State<Api>,
    Path(p): Path<ServicePath>,
    bytes: Bytes,
) -> Result<HttpResponse> {
    let service = p.addr()?;
    let real: RealSpec = body(&bytes)?;
    let rip = real.addr;
    api.call(Request::AddReal { service, real }, StatusCode::BAD_REQUEST)
        .await?;
    let view = match rip {
        Some(rip) => find_real(api.service(service).await?, service, (rip, None))?,
        None => return Err(bad("a real server address (addr) is required")),
    };
    let path = location(service, Some(&view.address));
    Ok(created(path, view))
}

async fn get_real(State(api): State<Api>, Path(p): Path<RealPath>) -> Result<HttpResponse> {
    let service = p.service.addr()?;
    let rip = real_addr(&p.rip)?;
    Ok(ok(find_real(api.service(service).await?, service, rip)?))
}

/// What to change of a real server (as `xdplb real edit`); what is not given stays. A `port`
/// is the real server's new port (LVS/NAT).
async fn edit_real(
    State(api): State<Api>,
    Path(p): Path<RealPath>,
    bytes: Bytes,
) -> Result<HttpResponse> {
    let service = p.service.addr()?;
    let rip = real_addr(&p.rip)?;
    // The path names the real server: it must be there, with the port given.
    find_real(api.service(service).await?, service, rip)?;
    let mut real: RealSpec = body_or_default(&bytes)?;
    match real.addr {
        Some(a) if a != rip.0 => {
            return Err(bad(format!(
                "the body's addr {a} is not the path's real server {}",
                rip.0
            )))
        }
        _ => real.addr = Some(rip.0),
    }
    api.call(Request::EditReal { service, real }, StatusCode::BAD_REQUEST)
        .await?;
    Ok(ok(find_real(
        api.service(service).await?,
        service,
        (rip.0, None),
    )?))
}

async fn del_real(State(api): State<Api>, Path(p): Path<RealPath>) -> Result<HttpResponse> {
    let service = p.service.addr()?;
    let (addr, port) = real_addr(&p.rip)?;
    api.change(Request::DelReal {
        service,
        addr,
        port,
    })
    .await
}

/// `{"flows": [["10.1.0.1", 40000], ...]}`: which real server each new flow would get.
async fn simulate(
    State(api): State<Api>,
    Path(p): Path<ServicePath>,
    bytes: Bytes,
) -> Result<HttpResponse> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Flows {
        flows: Vec<(IpAddr, u16)>,
    }
    let Flows { flows } = body(&bytes)?;
    let service = p.addr()?;
    match api
        .call(
            Request::Simulate { service, flows },
            StatusCode::BAD_REQUEST,
        )
        .await?
    {
        Response::Simulated { reals } => Ok(ok(json!({ "reals": reals }))),
        other => Err(unexpected(&other)),
    }
}

async fn zero_service(State(api): State<Api>, Path(p): Path<ServicePath>) -> Result<HttpResponse> {
    api.change(Request::Zero {
        service: Some(p.addr()?),
    })
    .await
}

async fn zero(State(api): State<Api>) -> Result<HttpResponse> {
    api.change(Request::Zero { service: None }).await
}

/// Pass/drop reasons (counters and rates), the totals over every service, and every service's
/// chart of the last minutes.
async fn stats(State(api): State<Api>) -> Result<HttpResponse> {
    let listing = api.listing().await?;
    let totals = crate::control::StatsView::sum(listing.services.iter().filter_map(|s| s.stats));
    Ok(ok(json!({
        "reasons": listing.reasons,
        "reason_rates": listing.reason_rates,
        "totals": totals,
        "rates": rates::total(&listing),
        "history": api.rates.history(),
    })))
}

/// The agent: version, interfaces, attach mode, program id, uptime, reloads, drain, whether
/// it is fit to take traffic (`xdplb check`), what the API allows on this door.
async fn agent(State(api): State<Api>) -> Result<HttpResponse> {
    let listing = api.listing().await?;
    let problem = match api
        .call(Request::Check, StatusCode::INTERNAL_SERVER_ERROR)
        .await?
    {
        Response::Checked { problem } => problem,
        other => return Err(unexpected(&other)),
    };
    Ok(ok(json!({
        "interface": listing.interface,
        "mode": listing.mode,
        "agent": listing.agent,
        "drained": listing.drained,
        "problem": problem,
        "timeouts": listing.timeouts,
        "conn_max": listing.conn_max,
        "nat_max": listing.nat_max,
        "announce": listing.announce,
        "sync": listing.sync.is_some(),
        "writable": api.access.writable(),
    })))
}

async fn sync(State(api): State<Api>) -> Result<HttpResponse> {
    match api.listing().await?.sync {
        Some(view) => Ok(ok(view)),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            "connection sync is not configured on this director".into(),
        )),
    }
}

async fn connections(State(api): State<Api>) -> Result<HttpResponse> {
    match api
        .call(Request::Connections, StatusCode::INTERNAL_SERVER_ERROR)
        .await?
    {
        Response::Connections { conns } => Ok(ok(conns)),
        other => Err(unexpected(&other)),
    }
}

/// The running configuration as a config file (`xdplb save`).
async fn config(State(api): State<Api>) -> Result<HttpResponse> {
    match api
        .call(Request::Save, StatusCode::INTERNAL_SERVER_ERROR)
        .await?
    {
        Response::Saved { config } => {
            let mut response =
                ([(header::CONTENT_TYPE, "application/toml")], config).into_response();
            no_store(&mut response);
            Ok(response)
        }
        other => Err(unexpected(&other)),
    }
}

/// 200 when fit to take traffic, 503 with the reason when not: a health check for the
/// director itself (keepalived's HTTP_GET, a load balancer in front).
async fn check(State(api): State<Api>) -> Result<HttpResponse> {
    match api
        .call(Request::Check, StatusCode::INTERNAL_SERVER_ERROR)
        .await?
    {
        Response::Checked { problem: None } => Ok(ok(json!({ "fit": true }))),
        Response::Checked {
            problem: Some(problem),
        } => {
            let mut response = ok(json!({ "fit": false, "error": problem }));
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            Ok(response)
        }
        other => Err(unexpected(&other)),
    }
}

async fn reload(State(api): State<Api>) -> Result<HttpResponse> {
    api.change(Request::Reload).await
}

async fn drain(State(api): State<Api>) -> Result<HttpResponse> {
    api.change(Request::Drain).await
}

async fn undrain(State(api): State<Api>) -> Result<HttpResponse> {
    api.change(Request::Undrain).await
}

async fn timeouts(State(api): State<Api>) -> Result<HttpResponse> {
    Ok(ok(api.listing().await?.timeouts))
}

/// `{"tcp": SECS, "tcp_fin": SECS, "udp": SECS}`; what is not given stays (ipvsadm --set).
async fn set_timeouts(State(api): State<Api>, bytes: Bytes) -> Result<HttpResponse> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Timeouts {
        tcp: Option<u32>,
        tcp_fin: Option<u32>,
        udp: Option<u32>,
    }
    let t: Timeouts = body(&bytes)?;
    api.change(Request::SetTimeouts {
        tcp: t.tcp,
        tcp_fin: t.tcp_fin,
        udp: t.udp,
    })
    .await?;
    Ok(ok(api.listing().await?.timeouts))
}

/// `GET /metrics`: the Prometheus exposition of one fresh listing.
pub async fn metrics(State(control): State<Control>) -> HttpResponse {
    let mut response = match control(Request::List).await {
        Response::Listing(listing) => (
            [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
            crate::metrics::render(&listing),
        )
            .into_response(),
        Response::Error { message, .. } => {
            tracing::warn!("xdplb: metrics: {message}");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{message}\n")).into_response()
        }
        other => unexpected(&other).into_response(),
    };
    no_store(&mut response);
    response
}

//! The agent's HTTP side, on axum and hyper: the JSON API (`/api/v1/...`, see [`api`]), the
//! status page (`/`) and the Prometheus metrics (`/metrics`), through two doors:
//!
//! - the control socket (root-only), where everything the CLI can do is allowed: the agent tells
//!   an HTTP request from the CLI's one-line JSON requests by its first byte;
//! - `--web ADDR` on TCP: read-only, plus `/metrics` and the page; changes only with a bearer
//!   token (`--web-token FILE`); HTTPS with `--web-tls-cert FILE --web-tls-key FILE` ([`tls`]).
//!
//! `--metrics ADDR` serves `/metrics` alone. The HTTP side knows the agent only as the control
//! protocol: it turns each call into [`Request`]s and their [`Response`]s into JSON.

mod access;
mod api;
mod page;
mod rates;
mod serve;
pub mod tls;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use access::{read_token, Access};
pub use rates::Rates;
pub use serve::{serve_connection, serve_listener};

use crate::control::{Request, Response};

/// How the HTTP side reaches the agent: one control request, one response.
pub type Control = Arc<dyn Fn(Request) -> BoxFuture<'static, Response> + Send + Sync>;

/// `[web]` in the config file, `--web ADDR` and `--web-token FILE` on the command line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where the page, the read-only API and `/metrics` are served: keep it on localhost or a
    /// management network.
    pub listen: SocketAddr,
    /// The file holding the bearer token that allows changes over TCP (at least 16 bytes, not
    /// readable by group or others); without it the API is read-only there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// HTTPS: the server's certificate chain (PEM), with `tls_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// HTTPS: the certificate's private key (PEM, mode 0600), with `tls_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

impl Settings {
    /// The TLS side of the door, if it serves HTTPS; an error names the file that is wrong.
    pub fn tls(&self) -> anyhow::Result<Option<tls::Tls>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => tls::Tls::load(cert, key).map(Some),
            (None, None) => Ok(None),
            _ => anyhow::bail!("web: tls_cert and tls_key go together (HTTPS needs both)"),
        }
    }

    /// Checks what the door reads at start: the token file and the TLS files.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(token) = &self.token_file {
            read_token(token)?;
        }
        self.tls().map(|_| ())
    }
}

/// What a door serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Door {
    /// The control socket: the API, read and write.
    Socket,
    /// `--web`: the API (read-only unless a token allows changes), the page and `/metrics`.
    Web,
    /// `--metrics`: `/metrics` alone.
    Metrics,
}

/// The router of one door. `rates` is shared by the doors (one sampler feeds it).
pub fn router(door: Door, control: Control, rates: Arc<Rates>, access: Access) -> axum::Router {
    use axum::{http::StatusCode, routing::get, Router};
    let metrics = Router::new().route("/metrics", get(api::metrics).with_state(control.clone()));
    let not_found = |what: &'static str| {
        move || async move { api::error(StatusCode::NOT_FOUND, format!("not found; {what}")) }
    };
    match door {
        Door::Metrics => metrics.fallback(not_found("metrics are at /metrics")),
        Door::Socket => {
            api::routes(control, rates, access).fallback(not_found("the API is under /api/v1"))
        }
        Door::Web => api::routes(control, rates, access)
            .merge(metrics)
            .merge(page::routes())
            .fallback(not_found("the page is at /, the API under /api/v1")),
    }
}

/// Samples the agent's counters for the rates and the page's charts until aborted.
pub async fn sample(control: Control, rates: Arc<Rates>) {
    let mut tick = tokio::time::interval(rates::SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !rates.watched(std::time::Instant::now()) {
            continue;
        }
        if let Response::Listing(listing) = control(Request::List).await {
            rates.record(&listing, std::time::Instant::now());
        }
    }
}

#[cfg(test)]
mod tests;

//! HTTP/1.1 connections on hyper, answered by an axum router: one request per connection
//! (`Connection: close`), each connection for at most [`CONNECTION_TIMEOUT`] (a TLS handshake
//! included), at most [`MAX_CONNECTIONS`] at once on a TCP listener. (axum::serve has neither
//! bound, hence hyper's own connection loop.) hyper parses the requests: malformed ones get 400,
//! heads beyond its limit 431.

use std::time::Duration;

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    task::JoinSet,
};

use super::tls::Tls;

/// The longest one connection may last, from accept to the last byte written.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once on a TCP listener; further ones wait to be accepted.
pub const MAX_CONNECTIONS: usize = 16;

/// Serves one connection with `app`; `what` names the door in debug logs.
pub async fn serve_connection<S>(stream: S, app: axum::Router, what: &'static str)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
        Ok(Ok(())) | Err(_) => {}
        Ok(Err(e)) => tracing::debug!("xdplb: {what} connection: {e}"),
    }
}

/// Serves `app` on `listener`, over TLS with `tls`, until the task is aborted (which aborts the
/// connections in progress too).
pub async fn serve_listener(
    listener: TcpListener,
    tls: Option<Tls>,
    app: axum::Router,
    what: &'static str,
) {
    // Dropping the set (when this task is aborted) aborts the connections it holds.
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_CONNECTIONS {
            connections.join_next().await;
            continue;
        }
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, a connection reset before it was accepted, ...: the
                // listener itself is fine, so keep serving.
                tracing::warn!("xdplb: {what}: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = app.clone();
        match tls.clone() {
            None => connections.spawn(serve_connection(stream, app, what)),
            Some(tls) => connections.spawn(async move {
                let tls = tls.acceptor();
                // The handshake within the connection's time too: a client that stalls in it
                // holds one of the few connections.
                let started = tokio::time::Instant::now();
                match tokio::time::timeout(CONNECTION_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let left = CONNECTION_TIMEOUT.saturating_sub(started.elapsed());
                        let _ =
                            tokio::time::timeout(left, serve_connection(stream, app, what)).await;
                    }
                    Ok(Err(e)) => tracing::debug!("xdplb: {what} TLS handshake: {e}"),
                    Err(_) => {}
                }
            }),
        };
    }
}

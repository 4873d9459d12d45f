//! HTTP and HTTPS checks (keepalived's HTTP_GET and SSL_GET) on hyper's HTTP/1.1 client and
//! rustls: `GET path`, then the status and, if asked, a substring of the body.

use std::{net::SocketAddr, path::Path, sync::Arc};

use http_body_util::{BodyExt as _, Empty};
use hyper::{body::Bytes, header, Request};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use super::{io_message, MAX_RESPONSE};

/// How an HTTPS check talks TLS: its client settings and the name it asks for (SNI) and checks
/// the certificate against.
#[derive(Clone)]
pub struct Tls {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl Tls {
    /// `verify`: check the certificate against `ca_file` (PEM), else the system's roots; `sni`:
    /// the server name to send and verify, else the real server's address (no SNI then).
    pub fn new(
        verify: bool,
        sni: Option<&str>,
        ca_file: Option<&Path>,
        addr: SocketAddr,
    ) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let config = if verify {
            builder
                .with_root_certificates(roots(ca_file)?)
                .with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
                .with_no_client_auth()
        };
        let name = match sni {
            Some(s) => ServerName::try_from(s.to_owned())
                .map_err(|_| format!("https check sni {s:?} is not a server name"))?,
            None => ServerName::IpAddress(addr.ip().into()),
        };
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            name,
        })
    }
}

/// The certificates to trust: those of `ca_file`, or the system's.
fn roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject as _;
    let mut store = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("https check ca_file {}: {e}", path.display()))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| format!("https check ca_file {}: {e}", path.display()))?;
                store
                    .add(cert)
                    .map_err(|e| format!("https check ca_file {}: {e}", path.display()))?;
            }
            if store.is_empty() {
                return Err(format!(
                    "https check ca_file {} holds no certificate",
                    path.display()
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = store.add(cert);
            }
        }
    }
    Ok(store)
}

/// What the check wants of the answer.
pub struct Expect<'a> {
    pub path: &'a str,
    pub status: u16,
    pub body: Option<&'a str>,
}

/// One GET to `addr` (over TLS when `tls` is given).
pub async fn get(addr: SocketAddr, tls: Option<&Tls>, want: &Expect<'_>) -> Result<(), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {}", io_message(&e)))?;
    match tls {
        None => exchange(stream, &addr.to_string(), want).await,
        Some(tls) => {
            let stream = tls
                .connector
                .connect(tls.name.clone(), stream)
                .await
                .map_err(|e| format!("TLS with {addr}: {}", io_message(&e)))?;
            let host = match &tls.name {
                ServerName::DnsName(n) => n.as_ref().to_owned(),
                _ => addr.to_string(),
            };
            exchange(stream, &host, want).await
        }
    }
}

async fn exchange<S>(stream: S, host: &str, want: &Expect<'_>) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    // The connection is driven beside the exchange and dropped with it.
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let result = async {
        let request = Request::get(want.path)
            .header(header::HOST, host)
            .header(header::USER_AGENT, "xdplb-health")
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("HTTP request: {e}"))?;
        let mut response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {}", one_line(&e)))?;
        let got = response.status().as_u16();
        if got != want.status {
            return Err(format!("HTTP status {got}, expected {}", want.status));
        }
        let Some(wanted) = want.body else {
            return Ok(());
        };
        let mut body = Vec::new();
        while body.len() < MAX_RESPONSE {
            match response.body_mut().frame().await {
                None => break,
                Some(Err(e)) => return Err(format!("HTTP body: {}", one_line(&e))),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        body.extend_from_slice(data);
                    }
                }
            }
            if contains(&body, wanted.as_bytes()) {
                return Ok(());
            }
        }
        match contains(&body, wanted.as_bytes()) {
            true => Ok(()),
            false => Err(format!("body does not contain {wanted:?}")),
        }
    }
    .await;
    driver.abort();
    result
}

/// An error and its causes on one line.
fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text.replace('\n', " ")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// `verify = false`: any certificate is accepted (the handshake's signatures are still checked),
/// as keepalived's SSL_GET does without a CA.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

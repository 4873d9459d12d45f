//! HTTPS for `--web` (`--web-tls-cert FILE --web-tls-key FILE`): rustls on ring, as the https
//! health checks use, so the bearer token and the API's answers do not cross the management
//! network in clear. The files are read at start: a bad one stops the agent before it attaches.
//! `xdplb reload` reads them again (a renewed certificate); files that cannot serve fail the
//! reload, and the door keeps the certificate it had.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use anyhow::{bail, Context as _, Result};
use rustls::pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// A door's TLS side: its files, and the configuration last read from them, which a reload
/// replaces whole while connections in progress keep the one they started with.
#[derive(Clone)]
pub struct Tls {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: Arc<RwLock<TlsAcceptor>>,
}

impl Tls {
    /// Reads the files; an error names the one that cannot serve.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self> {
        Ok(Self {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current: Arc::new(RwLock::new(acceptor(cert_file, key_file)?)),
        })
    }

    /// Reads the files again, for [`Tls::install`] once the rest of a reload succeeded; the
    /// door goes on with what it has meanwhile, and after an error.
    pub fn read_again(&self) -> Result<TlsAcceptor> {
        acceptor(&self.cert_file, &self.key_file)
    }

    /// New connections from now on are served with `renewed`.
    pub fn install(&self, renewed: TlsAcceptor) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = renewed;
    }

    /// What a new connection is served with.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The server side of TLS from a PEM certificate chain (the server's first) and its PEM private
/// key; the key file, a secret, must not be readable by group or others.
fn acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("web TLS certificate file {}", cert_file.display()))?;
    if certs.is_empty() {
        bail!(
            "web TLS certificate file {} holds no certificate",
            cert_file.display()
        );
    }
    let pem = crate::secret::read(key_file, "web TLS key file")?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .with_context(|| format!("web TLS key file {}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("web TLS")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "web TLS: the certificate in {} with the key in {}",
                cert_file.display(),
                key_file.display()
            )
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

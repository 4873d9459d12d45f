//! Test certificates, made by openssl (Debian's package): a CA of its own and a server
//! certificate it signed, for the HTTPS the tests serve (openssl s_server for the https checks,
//! the agent's `--web` over TLS) and check against that CA.

use std::path::Path;

use anyhow::Result;

use crate::netns::run;

/// A test CA's certificate, and a certificate it signed with its key, as PEM files.
pub struct Certificates {
    pub ca: String,
    pub cert: String,
    /// Mode 0600, as the agent wants a key.
    pub key: String,
    /// The CA's own key: a key that does not go with `cert`.
    pub ca_key: String,
}

impl Certificates {
    /// Made in `dir` for the DNS name `name`, valid two days.
    pub fn new(dir: &Path, name: &str) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        let file = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let (ca_key, ca, key, csr, cert, ext) = (
            file("ca.key"),
            file("ca.pem"),
            file("server.key"),
            file("server.csr"),
            file("server.pem"),
            file("server.ext"),
        );
        let openssl = |args: &[&str]| run(std::process::Command::new("openssl").args(args));
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ca_args = [
            "-keyout",
            &ca_key,
            "-out",
            &ca,
            "-subj",
            "/CN=xdplb test CA",
        ];
        openssl(&[&["req", "-x509"][..], &ec, &ca_args, &["-days", "2"]].concat())?;
        let csr_args = [
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ];
        openssl(&[&["req"][..], &ec, &csr_args].concat())?;
        std::fs::write(&ext, format!("subjectAltName=DNS:{name}\n"))?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &ext,
        ])?;
        for k in [&key, &ca_key] {
            std::fs::set_permissions(k, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(Self {
            ca,
            cert,
            key,
            ca_key,
        })
    }
}

//! Who may change what over HTTP: everyone on the root-only control socket; on TCP, reading is
//! open and changing needs the bearer token of `--web-token FILE` (403 when there is none, 401
//! when it is missing or wrong).

use std::{path::Path, sync::Arc};

use anyhow::Result;
use axum::{
    extract::{Request, State},
    http::{header, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse as _, Response},
};

/// The access rule of a door.
#[derive(Clone)]
pub enum Access {
    /// The control socket: read and write.
    Full,
    /// TCP without a token: read only.
    ReadOnly,
    /// TCP with a token: writes carry `Authorization: Bearer TOKEN`.
    Token(Arc<Vec<u8>>),
}

impl Access {
    /// Whether the page may offer buttons that change things (it still needs the token).
    pub fn writable(&self) -> &'static str {
        match self {
            Access::Full => "yes",
            Access::ReadOnly => "no",
            Access::Token(_) => "token",
        }
    }
}

/// Reads the token file: refused if missing, shorter than 16 bytes or readable by others
/// (surrounding whitespace, a newline from `echo`, is not part of the token).
pub fn read_token(path: &Path) -> Result<Vec<u8>> {
    crate::secret::read(path, "web token file")
}

/// Reads pass; a change passes only where `access` allows it.
pub async fn guard(State(access): State<Access>, request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    let token =
        match &access {
            Access::Full => return next.run(request).await,
            Access::ReadOnly => return super::api::error(
                StatusCode::FORBIDDEN,
                "the API is read-only over TCP: start the agent with --web-token FILE to allow \
                 changes, or use the control socket"
                    .into(),
            )
            .into_response(),
            Access::Token(token) => token,
        };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    match given {
        Some(given) if same(given, token) => next.run(request).await,
        _ => {
            let mut response = super::api::error(
                StatusCode::UNAUTHORIZED,
                "a change needs the web token: Authorization: Bearer TOKEN".into(),
            )
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
}

/// Compares in time that does not depend on where the two differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same(b"0123456789abcdef", b"0123456789abcdeF"));
        assert!(!same(b"0123456789abcdef", b"0123456789abcde"));
        assert!(!same(b"", b"x"));
    }

    #[test]
    fn a_token_file_must_be_private_and_long_enough() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("xdplb-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "s3cret-s3cret-s3cret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token(&file).unwrap(), b"s3cret-s3cret-s3cret");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_token(&file).unwrap_err().to_string();
        assert!(e.contains("readable by group or others"), "{e}");
        std::fs::write(&file, "short").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = format!("{:#}", read_token(&file).unwrap_err());
        assert!(e.contains("is too short (5 bytes)"), "{e}");
        let e = format!("{:#}", read_token(&dir.join("none")).unwrap_err());
        assert!(e.contains("cannot read web token file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

use std::{
    io::{BufRead as _, BufReader, ErrorKind, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};

use super::{Request, Response};

/// Sends one request to the agent behind `socket`; an error response becomes an `Err` carrying
/// the agent's one-line message.
pub fn request(socket: &Path, req: &Request) -> Result<Response> {
    // MAC resolution may take the agent a few seconds; anything longer is a hung agent.
    request_within(socket, req, Duration::from_secs(30))
}

/// [`request`], giving up when the agent has not answered within `timeout`.
pub fn request_within(socket: &Path, req: &Request, timeout: Duration) -> Result<Response> {
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => anyhow!(
            "no xdplb agent is listening on {}: start one with `xdplb run --iface IF` (or point --socket at a running one)",
            socket.display()
        ),
        ErrorKind::PermissionDenied => {
            anyhow!("permission denied on {}: the control socket is root-only", socket.display())
        }
        _ => anyhow!("cannot connect to the agent on {}: {e}", socket.display()),
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .context("sending the request to the agent")?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                anyhow!("the agent did not answer within {timeout:?}")
            }
            _ => anyhow!("reading the agent's answer: {e}"),
        })?;
    if answer.is_empty() {
        bail!("the agent closed the connection without answering");
    }
    match serde_json::from_str(&answer).context("the agent's answer is not valid")? {
        Response::Error { message, .. } => Err(anyhow!(message)),
        r => Ok(r),
    }
}

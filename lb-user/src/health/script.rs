//! Script checks (keepalived's MISC_CHECK): a command the agent runs for the real server; exit
//! status 0 means up. The command is a program and its arguments separated by spaces (no shell),
//! run with XDPLB_REAL_ADDR and XDPLB_REAL_PORT set; it is killed when the check times out.

use std::{net::SocketAddr, path::Path, process::Stdio};

use tokio::io::AsyncReadExt as _;

use super::io_message;

/// Refuses a command that cannot run: empty, or a program that is not an absolute path to an
/// executable file.
pub fn validate(command: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let Some(program) = command.split_whitespace().next() else {
        return Err("script check command is empty".into());
    };
    if !program.starts_with('/') {
        return Err(format!(
            "script check program {program:?} must be an absolute path"
        ));
    }
    match Path::new(program).metadata() {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(_) => Err(format!(
            "script check program {program} is not an executable file"
        )),
        Err(e) => Err(format!(
            "script check program {program}: {}",
            io_message(&e)
        )),
    }
}

/// Runs `command` for the real server at `addr`; the caller bounds how long (dropping the
/// future kills the command).
pub async fn run(command: &str, addr: SocketAddr) -> Result<(), String> {
    let mut words = command.split_whitespace();
    let program = words.next().ok_or("script check command is empty")?;
    let mut child = tokio::process::Command::new(program)
        .args(words)
        .env("XDPLB_REAL_ADDR", addr.ip().to_string())
        .env("XDPLB_REAL_PORT", addr.port().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {}", io_message(&e)))?;
    // What it said on stderr, for the error: its first line, at most 200 bytes.
    let mut said = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        let _ = stderr.take(4096).read_to_end(&mut said).await;
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("{program}: {}", io_message(&e)))?;
    if status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&said);
    let said = said.lines().next().unwrap_or_default();
    let said: String = said.chars().take(200).collect();
    let how = match status.code() {
        Some(code) => format!("exited with {code}"),
        None => "was killed".to_owned(),
    };
    Err(match said.is_empty() {
        true => format!("{program} {how}"),
        false => format!("{program} {how}: {said}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exit_status_decides_and_the_real_server_is_named() {
        let addr: SocketAddr = "10.0.0.11:8080".parse().unwrap();
        assert_eq!(run("/bin/true", addr).await, Ok(()));
        assert_eq!(
            run("/bin/false", addr).await,
            Err("/bin/false exited with 1".into())
        );
        // The real server's address and port come in the environment, arguments after the
        // program's path.
        let dir = std::env::temp_dir().join(format!("xdplb-script-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("check");
        std::fs::write(
            &script,
            "#!/bin/sh\n[ \"$XDPLB_REAL_ADDR:$XDPLB_REAL_PORT $1\" = \"10.0.0.11:8080 arg\" ] || { echo \"got $XDPLB_REAL_ADDR:$XDPLB_REAL_PORT $1\" >&2; exit 3; }\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let command = format!("{} arg", script.display());
        assert_eq!(validate(&command), Ok(()));
        assert_eq!(run(&command, addr).await, Ok(()));
        let other: SocketAddr = "10.0.0.12:80".parse().unwrap();
        assert_eq!(
            run(&command, other).await,
            Err(format!(
                "{} exited with 3: got 10.0.0.12:80 arg",
                script.display()
            ))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_slow_script_is_killed_at_the_timeout() {
        let start = std::time::Instant::now();
        let r = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            run("/bin/sleep 5", "10.0.0.11:80".parse().unwrap()),
        )
        .await;
        assert!(r.is_err(), "timed out");
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn validation() {
        assert!(validate("").unwrap_err().contains("empty"));
        assert!(validate("check.sh").unwrap_err().contains("absolute path"));
        assert!(validate("/nonexistent/x")
            .unwrap_err()
            .contains("no such file"));
        let plain = std::env::temp_dir().join(format!("xdplb-plain-{}", std::process::id()));
        std::fs::write(&plain, "").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(validate(plain.to_str().unwrap())
            .unwrap_err()
            .contains("not an executable"));
        std::fs::remove_file(&plain).unwrap();
        assert_eq!(validate("/bin/true --flag"), Ok(()));
    }
}

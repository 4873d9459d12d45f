use std::{ffi::OsString, path::Path, process::ExitCode};

use clap::Parser as _;
use lb_user::cli::{execute, one_line, Cli, Command};

/// Run through a link named ipvsadm (or ipvsadm-save, ipvsadm-restore): the ipvsadm front end,
/// with the arguments it was given (after -S or -R for the other two).
fn ipvsadm_args(args: &[OsString]) -> Option<Vec<OsString>> {
    let name = Path::new(args.first()?).file_name()?.to_str()?;
    let first: &[&str] = match name {
        "ipvsadm" => &[],
        "ipvsadm-save" => &["-S"],
        "ipvsadm-restore" => &["-R"],
        _ => return None,
    };
    Some(
        first
            .iter()
            .map(OsString::from)
            .chain(args[1..].iter().cloned())
            .collect(),
    )
}

fn report(program: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if let Some(ipvsadm) = ipvsadm_args(&args) {
        let socket = std::env::var_os("XDPLB_SOCKET")
            .unwrap_or_else(|| lb_user::control::DEFAULT_SOCKET.into());
        return report(
            "ipvsadm",
            lb_user::ipvsadm::main(&ipvsadm, Path::new(&socket)),
        );
    }
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            eprintln!("{}", one_line(&e));
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    // The long-running commands log through tracing (XDPLB_LOG=debug etc.; info by default).
    if matches!(cli.command, Command::Run(_) | Command::Decap { .. }) {
        let filter = tracing_subscriber::EnvFilter::try_from_env("XDPLB_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    report("xdplb", execute(cli))
}

use std::process::ExitCode;

use clap::Parser as _;
use lb_user::cli::{execute, Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // One line naming the problem; clap's usage hint would bury it.
            let rendered = e.render().to_string();
            eprintln!(
                "{}",
                rendered
                    .lines()
                    .next()
                    .unwrap_or("error: invalid arguments")
            );
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
    match execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xdplb: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

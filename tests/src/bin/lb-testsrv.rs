//! The real servers' service in the tests: `lb-testsrv --name NAME --listen ADDR:PORT` answers
//! every TCP connection with `NAME\n` and closes it, so a client sees which server it reached.
//! It prints one line on stdout once it listens (the harness waits for it) and nothing after.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};

fn main() {
    let (name, listen) = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("lb-testsrv: {e}\nusage: lb-testsrv --name NAME --listen ADDR:PORT");
            std::process::exit(2);
        }
    };
    let listener = TcpListener::bind(listen).unwrap_or_else(|e| {
        eprintln!("lb-testsrv: cannot listen on {listen}: {e}");
        std::process::exit(1);
    });
    println!("{name} listening on {listen}");
    let _ = std::io::stdout().flush();

    let reply = format!("{name}\n");
    // Serving inline is enough for many concurrent clients: the reply fits any fresh socket's
    // send buffer, so neither the write nor the close can block; waiting clients sit in the
    // accept queue for microseconds.
    for conn in listener.incoming() {
        match conn {
            Ok(mut stream) => {
                let _ = stream.write_all(reply.as_bytes());
            }
            Err(e) => eprintln!("lb-testsrv {name}: accept: {e}"),
        }
    }
}

fn parse_args() -> Result<(String, SocketAddr), String> {
    let (mut name, mut listen) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--name" => name = Some(value()?),
            "--listen" => listen = Some(value()?.parse().map_err(|e| format!("--listen: {e}"))?),
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    Ok((
        name.ok_or("--name is required")?,
        listen.ok_or("--listen is required")?,
    ))
}

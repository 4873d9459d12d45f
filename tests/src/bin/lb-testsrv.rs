//! The real servers' service in the tests: `lb-testsrv --name NAME --listen ADDR:PORT [--echo]`.
//!
//! - By default it answers every TCP connection with `NAME\n` and closes it, so a client sees
//!   which server it reached.
//! - With `--echo`, for long-lived connections: it greets every connection with `NAME\n`, then
//!   answers every line `LINE` the client sends with `NAME LINE\n`, and closes when the client
//!   does. A client that half-closes right away (as `client::fetch` does) sees the same as in
//!   the default mode.
//!
//! It prints one line on stdout once it listens (the harness waits for it) and nothing after.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};

struct Args {
    name: String,
    listen: SocketAddr,
    echo: bool,
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("lb-testsrv: {e}\nusage: lb-testsrv --name NAME --listen ADDR:PORT [--echo]");
        std::process::exit(2);
    });
    let Args { name, listen, echo } = args;
    let listener = TcpListener::bind(listen).unwrap_or_else(|e| {
        eprintln!("lb-testsrv: cannot listen on {listen}: {e}");
        std::process::exit(1);
    });
    println!("{name} listening on {listen}");
    let _ = std::io::stdout().flush();

    let reply = format!("{name}\n");
    for conn in listener.incoming() {
        match conn {
            // One thread per connection: echo connections live as long as their client.
            Ok(stream) if echo => {
                let name = name.clone();
                std::thread::spawn(move || serve_echo(&name, stream));
            }
            // Serving inline is enough for many concurrent clients: the reply fits any fresh
            // socket's send buffer, so neither the write nor the close can block; waiting
            // clients sit in the accept queue for microseconds.
            Ok(mut stream) => {
                let _ = stream.write_all(reply.as_bytes());
            }
            Err(e) => eprintln!("lb-testsrv {name}: accept: {e}"),
        }
    }
}

/// Greets, then answers each line until the client closes or the connection fails (a reset is
/// the client's business: it is what the tests look for).
fn serve_echo(name: &str, mut stream: TcpStream) {
    if stream.write_all(format!("{name}\n").as_bytes()).is_err() {
        return;
    }
    let Ok(reader) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(reader).lines() {
        let Ok(line) = line else {
            return;
        };
        if stream
            .write_all(format!("{name} {line}\n").as_bytes())
            .is_err()
        {
            return;
        }
    }
}

fn parse_args() -> Result<Args, String> {
    let (mut name, mut listen, mut echo) = (None, None, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--name" => name = Some(value()?),
            "--listen" => listen = Some(value()?.parse().map_err(|e| format!("--listen: {e}"))?),
            "--echo" => echo = true,
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    Ok(Args {
        name: name.ok_or("--name is required")?,
        listen: listen.ok_or("--listen is required")?,
        echo,
    })
}

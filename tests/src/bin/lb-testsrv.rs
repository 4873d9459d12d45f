//! The real servers' service in the tests:
//! `lb-testsrv --name NAME --listen ADDR:PORT [--echo | --sink] [--udp ADDR:PORT]`.
//!
//! - By default it answers every TCP connection with `NAME\n` and closes it, so a client sees
//!   which server it reached.
//! - With `--echo`, for long-lived connections: it greets every connection with `NAME\n`, then
//!   answers every line `LINE` the client sends with `NAME LINE\n`, and closes when the client
//!   does. A client that half-closes right away (as `client::fetch` does) sees the same as in
//!   the default mode.
//! - With `--udp ADDR:PORT`, it also answers every UDP datagram `LINE` sent to ADDR:PORT with
//!   `NAME LINE`. The reply leaves from ADDR: bind the address clients send to (with direct
//!   routing, the VIP), not 0.0.0.0, or the client's connected socket ignores it.
//!
//! It prints one line on stdout once it listens (the harness waits for it) and nothing after.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};

const USAGE: &str =
    "usage: lb-testsrv --name NAME --listen ADDR:PORT [--echo | --sink] [--udp ADDR:PORT]";

struct Args {
    name: String,
    listen: SocketAddr,
    mode: Mode,
    udp: Option<SocketAddr>,
}

/// What the server does with a TCP connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Once,
    Echo,
    Sink,
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("lb-testsrv: {e}\n{USAGE}");
        std::process::exit(2);
    });
    let Args {
        name,
        listen,
        mode,
        udp,
    } = args;
    let listener = TcpListener::bind(listen).unwrap_or_else(|e| {
        eprintln!("lb-testsrv: cannot listen on {listen}: {e}");
        std::process::exit(1);
    });
    if let Some(udp) = udp {
        let socket = UdpSocket::bind(udp).unwrap_or_else(|e| {
            eprintln!("lb-testsrv: cannot bind UDP {udp}: {e}");
            std::process::exit(1);
        });
        let name = name.clone();
        std::thread::spawn(move || serve_udp(&name, &socket));
    }
    println!("{name} listening on {listen}");
    let _ = std::io::stdout().flush();

    let reply = format!("{name}\n");
    for conn in listener.incoming() {
        match conn {
            // One thread per connection: echo and sink connections live as long as their client.
            Ok(stream) if mode != Mode::Once => {
                let name = name.clone();
                let serve = match mode {
                    Mode::Echo => serve_echo,
                    _ => serve_sink,
                };
                std::thread::spawn(move || serve(&name, stream));
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

/// Reads until the client closes its sending side, then answers `NAME BYTES`.
fn serve_sink(name: &str, mut stream: TcpStream) {
    let Ok(bytes) = std::io::copy(&mut stream, &mut std::io::sink()) else {
        return;
    };
    let _ = stream.write_all(format!("{name} {bytes}\n").as_bytes());
}

/// Answers every datagram `LINE` with `NAME LINE`, to its sender.
fn serve_udp(name: &str, socket: &UdpSocket) {
    let mut buf = [0u8; 1500];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) => {
                let line = String::from_utf8_lossy(&buf[..n]);
                let _ = socket.send_to(format!("{name} {line}").as_bytes(), peer);
            }
            Err(e) => eprintln!("lb-testsrv {name}: UDP receive: {e}"),
        }
    }
}

fn parse_args() -> Result<Args, String> {
    let (mut name, mut listen, mut mode, mut udp) = (None, None, Mode::Once, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--name" => name = Some(value()?),
            "--listen" => listen = Some(value()?.parse().map_err(|e| format!("--listen: {e}"))?),
            "--echo" if mode == Mode::Once => mode = Mode::Echo,
            "--sink" if mode == Mode::Once => mode = Mode::Sink,
            "--echo" | "--sink" => return Err("--echo and --sink exclude each other".into()),
            "--udp" => udp = Some(value()?.parse().map_err(|e| format!("--udp: {e}"))?),
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    Ok(Args {
        name: name.ok_or("--name is required")?,
        listen: listen.ok_or("--listen is required")?,
        mode,
        udp,
    })
}

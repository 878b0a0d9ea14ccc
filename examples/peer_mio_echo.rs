//! A reference echo server on plain mio, single-threaded, written the way
//! mio's own examples are (edge-triggered: read and write until
//! `WouldBlock`). A peer for the benchmarks in `benches/run.sh`, not part
//! of muxloop.
//!
//! ```text
//! cargo run --release --example peer_mio_echo -- --addr 127.0.0.1:1234
//! ```

#[path = "common/cli.rs"]
mod cli;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use clap::Parser;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

/// Plain-mio echo server (benchmark peer).
#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:1234")]
    addr: std::net::SocketAddr,
    /// Stop after this many seconds (0 = never).
    #[arg(long, default_value_t = 0)]
    max_seconds: u64,
}

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    stream: TcpStream,
    out: Vec<u8>,
    writable: bool,
}

/// Reads and echoes until `WouldBlock`. Returns false when the connection
/// is finished.
fn serve(conn: &mut Conn, buf: &mut [u8]) -> bool {
    loop {
        if !conn.out.is_empty() {
            match conn.stream.write(&conn.out) {
                Ok(n) => {
                    conn.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.writable = false;
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
            continue;
        }
        match conn.stream.read(buf) {
            Ok(0) => return false,
            Ok(n) => conn.out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

fn main() -> io::Result<()> {
    cli::guard_stdio();
    let args = Args::parse();
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut listener = TcpListener::bind(args.addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    cli::say!("listening on {} (backend mio-peer)", listener.local_addr()?);
    let mut conns: HashMap<Token, Conn> = HashMap::new();
    let mut next = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline =
        (args.max_seconds > 0).then(|| Instant::now() + Duration::from_secs(args.max_seconds));
    loop {
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if timeout == Some(Duration::ZERO) {
            return Ok(());
        }
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let token = Token(next);
                            next += 1;
                            let _ = stream.set_nodelay(true);
                            poll.registry().register(
                                &mut stream,
                                token,
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            conns.insert(
                                token,
                                Conn {
                                    stream,
                                    out: Vec::new(),
                                    writable: true,
                                },
                            );
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    }
                }
                continue;
            }
            let token = event.token();
            let Some(conn) = conns.get_mut(&token) else {
                continue;
            };
            if event.is_writable() {
                conn.writable = true;
            }
            if !serve(conn, &mut buf) {
                if let Some(mut conn) = conns.remove(&token) {
                    let _ = poll.registry().deregister(&mut conn.stream);
                }
            }
        }
    }
}

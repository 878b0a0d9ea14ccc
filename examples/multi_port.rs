//! The classic `select` server that listens on two ports at once and
//! answers every message with `ok`, on muxloop's `EventLoop`.
//!
//! The original keeps `inputs` (sockets to read) and `w_inputs` (sockets
//! owed an answer) and calls `select(inputs, w_inputs, inputs, 0.05)` in a
//! loop. Here each connection's interest plays the part of those lists: a
//! message switches it to WRITABLE (into `w_inputs`), the `ok` switches it
//! back to READABLE. No polling interval is needed: the loop sleeps until
//! something happens.
//!
//! ```text
//! cargo run --example multi_port -- --ports 8001,8002 --backend select
//! ```

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};

use clap::Parser;
use muxloop::{BackendKind, EventLoop, Interest, PostAction, SourceEvent};

/// A two-port server that answers every message with `ok`.
#[derive(Parser)]
struct Args {
    /// Backend: select, poll, epoll, kqueue or mio.
    #[arg(long, env = "MUXLOOP_BACKEND", default_value_t = BackendKind::platform_default())]
    backend: BackendKind,
    /// Ports to listen on, on 127.0.0.1 (0 picks a free one).
    #[arg(long, value_delimiter = ',', default_value = "8001,8002")]
    ports: Vec<u16>,
    /// Stop after this many seconds (0 = run until a signal).
    #[arg(long, default_value_t = 0)]
    max_seconds: u64,
}

#[derive(Default)]
struct Counts {
    connections: u64,
    messages: u64,
}

fn on_listener(
    lp: &mut EventLoop<Counts>,
    sk: &mut TcpListener,
    _: SourceEvent<TcpListener>,
    counts: &mut Counts,
) -> PostAction {
    match sk.accept() {
        Ok((conn, addr)) => {
            println!(
                "new connection on {}: {addr}",
                sk.local_addr().map(|a| a.port()).unwrap_or(0)
            );
            counts.connections += 1;
            if let Err(e) = conn
                .set_nonblocking(true)
                .and_then(|()| lp.add(conn, Interest::READABLE, on_conn).map(drop))
            {
                log::warn!("dropping {addr}: {e}");
            }
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => log::warn!("accept: {e}"),
    }
    PostAction::Continue
}

fn on_conn(
    lp: &mut EventLoop<Counts>,
    conn: &mut TcpStream,
    ev: SourceEvent<TcpStream>,
    counts: &mut Counts,
) -> PostAction {
    if ev.is_writable() {
        // `for obj in w: obj.sendall(b'ok'); w_inputs.remove(obj)`
        if conn.write_all(b"ok").is_err() {
            return PostAction::Remove;
        }
        return match lp.modify(ev.id(), Interest::READABLE) {
            Ok(()) => PostAction::Continue,
            Err(_) => PostAction::Remove,
        };
    }
    let mut data = [0u8; 1024];
    match conn.read(&mut data) {
        Ok(n) if n > 0 => {
            println!("message: {:?}", String::from_utf8_lossy(&data[..n]));
            counts.messages += 1;
            // `w_inputs.append(obj)`
            match lp.modify(ev.id(), Interest::WRITABLE) {
                Ok(()) => PostAction::Continue,
                Err(_) => PostAction::Remove,
            }
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            PostAction::Continue
        }
        // `except Exception: data = ""` / no data: the peer is gone,
        // `obj.close(); inputs.remove(obj)`.
        _ => PostAction::Remove,
    }
}

fn main() -> io::Result<()> {
    env_logger::init();
    let args = Args::parse();
    let kind = args.backend;
    let mut lp = EventLoop::<Counts>::with_backend(kind)?;
    let mut addrs = Vec::new();
    for port in &args.ports {
        let sk = TcpListener::bind(("127.0.0.1", *port))?;
        sk.set_nonblocking(true)?;
        addrs.push(sk.local_addr()?.to_string());
        lp.add(sk, Interest::READABLE, on_listener)?;
    }
    for signum in [libc::SIGINT, libc::SIGTERM] {
        lp.add_signal(signum, |lp, _| lp.stop())?;
    }
    if args.max_seconds > 0 {
        lp.call_later(std::time::Duration::from_secs(args.max_seconds), |lp, _| {
            lp.stop()
        });
    }
    println!(
        "listening on {} (backend {})",
        addrs.join(","),
        lp.backend_name()
    );
    let mut counts = Counts::default();
    lp.run(&mut counts)?;
    eprintln!(
        "stopped: {} connections, {} messages answered",
        counts.connections, counts.messages
    );
    Ok(())
}

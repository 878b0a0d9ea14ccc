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
//! Out of fds (`EMFILE`), a pending connection is shed through a reserve
//! fd, or the listener is paused for 100 ms, so the loop never spins on it;
//! a closed stdout (`| head -1`) does not stop the server.
//!
//! ```text
//! cargo run --example multi_port -- --ports 8001,8002 --backend select
//! ```

#[path = "common/cli.rs"]
mod cli;

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use clap::Parser;
use muxloop::{BackendKind, EventLoop, Interest, PostAction, SourceEvent};

/// A two-port server that answers every message with `ok`.
#[derive(Parser)]
struct Args {
    /// Backend (those this machine lacks are refused, naming the cause).
    #[arg(long, env = "MUXLOOP_BACKEND", default_value_t = BackendKind::platform_default(), value_parser = cli::backend_parser())]
    backend: BackendKind,
    /// Ports to listen on, on 127.0.0.1 (0 picks a free one).
    #[arg(long, value_delimiter = ',', default_value = "8001,8002")]
    ports: Vec<u16>,
    /// Stop after this many seconds (0 = run until a signal).
    #[arg(long, default_value_t = 0)]
    max_seconds: u64,
}

struct Counts {
    connections: u64,
    messages: u64,
    /// An fd held in reserve, given up to shed a connection when out of fds.
    spare: Option<File>,
}

fn on_listener(
    lp: &mut EventLoop<Counts>,
    sk: &mut TcpListener,
    ev: SourceEvent<TcpListener>,
    counts: &mut Counts,
) -> PostAction {
    match sk.accept() {
        Ok((conn, addr)) => {
            cli::say!(
                "new connection on {}: {addr}",
                sk.local_addr().map(|a| a.port()).unwrap_or(0)
            );
            let _ = conn.set_nodelay(true);
            counts.connections += 1;
            if let Err(e) = conn
                .set_nonblocking(true)
                .and_then(|()| lp.add(conn, Interest::READABLE, on_conn).map(drop))
            {
                log::warn!("dropping {addr}: {e}");
            }
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
            return shed(lp, sk, ev, counts, e);
        }
        Err(e) => log::warn!("accept: {e}"),
    }
    PostAction::Continue
}

/// Out of fds, the pending connection keeps the listener readable: a
/// level-triggered loop would spin on it. Give up the reserve fd, accept
/// and close the connection, take the reserve back; if that is impossible,
/// stop watching the listener for 100 ms.
fn shed(
    lp: &mut EventLoop<Counts>,
    sk: &mut TcpListener,
    ev: SourceEvent<TcpListener>,
    counts: &mut Counts,
    e: io::Error,
) -> PostAction {
    if counts.spare.take().is_some() {
        if let Ok((conn, addr)) = sk.accept() {
            log::warn!("out of fds ({e}): shedding connection from {addr}");
            drop(conn);
        }
        counts.spare = File::open("/dev/null").ok();
        if counts.spare.is_some() {
            return PostAction::Continue;
        }
    }
    log::warn!("out of fds ({e}) and no reserve: pausing accept for 100 ms");
    let id = ev.id();
    // After this callback returns: a running source cannot be paused.
    lp.call_soon(move |lp, _| {
        let Ok(paused) = lp.pause(id) else { return };
        lp.call_later(Duration::from_millis(100), move |lp, counts| {
            counts.spare = counts.spare.take().or_else(|| File::open("/dev/null").ok());
            if let Err(e) = lp.resume(paused, Interest::READABLE) {
                log::warn!("listener lost: {e}");
            }
        });
    });
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
            cli::say!("message: {:?}", String::from_utf8_lossy(&data[..n]));
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
    cli::guard_stdio();
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
    cli::say!(
        "listening on {} (backend {})",
        addrs.join(","),
        lp.backend_name()
    );
    let mut counts = Counts {
        connections: 0,
        messages: 0,
        spare: File::open("/dev/null").ok(),
    };
    lp.run(&mut counts)?;
    cli::tell!(
        "stopped: {} connections, {} messages answered",
        counts.connections,
        counts.messages
    );
    Ok(())
}

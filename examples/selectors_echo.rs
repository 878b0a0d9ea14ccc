//! The echo server from Python's `selectors` documentation, on muxloop's
//! `Selector` layer alone, nearly line for line:
//!
//! ```python
//! sel = selectors.DefaultSelector()
//!
//! def accept(sock, mask):
//!     conn, addr = sock.accept()  # Should be ready
//!     print('accepted', conn, 'from', addr)
//!     conn.setblocking(False)
//!     sel.register(conn, selectors.EVENT_READ, read)
//!
//! def read(conn, mask):
//!     data = conn.recv(1000)  # Should be ready
//!     if data:
//!         print('echoing', repr(data), 'to', conn)
//!         conn.send(data)  # Hope it won't block
//!     else:
//!         print('closing', conn)
//!         sel.unregister(conn)
//!         conn.close()
//! ...
//! while True:
//!     events = sel.select()
//!     for key, mask in events:
//!         callback = key.data
//!         callback(key.fileobj, mask)
//! ```
//!
//! Where the Python would crash or lose data, this one does not: a
//! connection the backend refuses (select(2) and an fd at or above
//! `FD_SETSIZE`) is closed with a warning; resets drop only that connection;
//! `EINTR`/`EAGAIN` are retried; a send that does not fit is kept and
//! finished when the socket turns writable, and a client that half-closes
//! gets all of it before the connection is closed; a client that does not
//! read is not read from either once 256 KiB wait for it (memory stays
//! bounded). Out of fds (`EMFILE`), the pending connection is shed with a
//! reserve fd, or accepting pauses for 100 ms: the server never spins. A
//! closed stdout (`| head -1`) does not stop it. Connections get
//! `TCP_NODELAY`: without it, a 1024-byte message echoed as a 1000-byte and
//! a 24-byte send waits ~40 ms for the peer's delayed ACK (Nagle).
//!
//! ```text
//! cargo run --example selectors_echo -- --backend poll --addr 127.0.0.1:1234
//! ```

#[path = "common/cli.rs"]
mod cli;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use clap::Parser;
use muxloop::{BackendKind, Events, Interest, Ready, Selector};

/// The Python `selectors` echo server on muxloop's Selector.
#[derive(Parser)]
struct Args {
    /// Backend (those this machine lacks are refused, naming the cause).
    #[arg(long, env = "MUXLOOP_BACKEND", default_value_t = BackendKind::platform_default(), value_parser = cli::backend_parser())]
    backend: BackendKind,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:1234")]
    addr: String,
}

/// What `key.data` holds: the callback, as in the Python.
type Callback = fn(&mut Server, RawFd, Ready);

/// Stop reading a connection while this much waits to be echoed to it.
const MAX_PENDING: usize = 256 * 1024;

struct Conn {
    stream: TcpStream,
    /// Echoed bytes the socket could not take yet.
    pending: Vec<u8>,
    /// The client sent EOF: echo what is pending, then close.
    eof: bool,
}

struct Server {
    sel: Selector<Callback>,
    sock: TcpListener,
    conns: HashMap<RawFd, Conn>,
    /// An fd held in reserve, given up to shed a connection when out of fds.
    spare: Option<File>,
    /// Accepting is paused (the listener unregistered) until then.
    accept_paused_until: Option<Instant>,
}

fn accept(srv: &mut Server, _fd: RawFd, _mask: Ready) {
    let (conn, addr) = match srv.sock.accept() {
        Ok(pair) => pair, // Should be ready
        Err(e) if is_transient(&e) => return,
        Err(e) if is_out_of_fds(&e) => return shed(srv, e),
        Err(e) => {
            log::warn!("accept failed: {e}");
            return;
        }
    };
    cli::say!("accepted fd {} from {addr}", conn.as_raw_fd());
    if let Err(e) = conn.set_nonblocking(true) {
        log::warn!("dropping {addr}: {e}");
        return;
    }
    let _ = conn.set_nodelay(true);
    let fd = conn.as_raw_fd();
    match srv.sel.register(fd, Interest::READABLE, read) {
        Ok(_) => {
            srv.conns.insert(
                fd,
                Conn {
                    stream: conn,
                    pending: Vec::new(),
                    eof: false,
                },
            );
        }
        // e.g. select(2) and fd >= FD_SETSIZE: close it, keep serving.
        Err(e) => log::warn!("closing connection from {addr}: {e}"),
    }
}

fn is_out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Out of fds, the pending connection keeps the listener readable: a
/// level-triggered loop would spin on it. Give up the reserve fd, accept
/// the connection and close it at once, take the reserve back; if that is
/// impossible, stop watching the listener for 100 ms.
fn shed(srv: &mut Server, e: io::Error) {
    if srv.spare.take().is_some() {
        if let Ok((conn, addr)) = srv.sock.accept() {
            log::warn!("out of fds ({e}): shedding connection from {addr}");
            drop(conn);
        }
        srv.spare = File::open("/dev/null").ok();
        if srv.spare.is_some() {
            return;
        }
    }
    log::warn!("out of fds ({e}) and no reserve: pausing accept for 100 ms");
    match srv.sel.unregister(srv.sock.as_raw_fd()) {
        Ok(_) => srv.accept_paused_until = Some(Instant::now() + Duration::from_millis(100)),
        Err(e) => log::warn!("unregister listener: {e}"),
    }
}

/// Watches the listener again once its pause is over; returns how long the
/// next select may wait.
fn resume_accepting(srv: &mut Server) -> io::Result<Option<Duration>> {
    let Some(until) = srv.accept_paused_until else {
        return Ok(None);
    };
    let now = Instant::now();
    if now < until {
        return Ok(Some(until - now));
    }
    srv.accept_paused_until = None;
    srv.spare = srv.spare.take().or_else(|| File::open("/dev/null").ok());
    srv.sel
        .register(srv.sock.as_raw_fd(), Interest::READABLE, accept)?;
    Ok(None)
}

fn read(srv: &mut Server, fd: RawFd, mask: Ready) {
    if mask.is_writable() && !flush(srv, fd) {
        return;
    }
    let Some(conn) = srv.conns.get_mut(&fd).filter(|_| mask.is_readable()) else {
        return;
    };
    let mut data = [0u8; 1000];
    match conn.stream.read(&mut data) {
        // Should be ready
        Ok(n) if n > 0 => {
            cli::say!(
                "echoing {:?} to fd {fd}",
                String::from_utf8_lossy(&data[..n])
            );
            conn.pending.extend_from_slice(&data[..n]);
            flush(srv, fd);
        }
        Ok(_) => {
            // EOF: what is still pending is owed to the client.
            conn.eof = true;
            flush(srv, fd);
        }
        Err(e) if is_transient(&e) => {}
        Err(e) => {
            log::warn!("fd {fd}: {e}; closing");
            close(srv, fd);
        }
    }
}

/// Sends what is pending; watches for writability while something is left.
/// Returns false if the connection was closed.
fn flush(srv: &mut Server, fd: RawFd) -> bool {
    let Some(conn) = srv.conns.get_mut(&fd) else {
        return false;
    };
    while !conn.pending.is_empty() {
        match conn.stream.write(&conn.pending) {
            Ok(n) => {
                conn.pending.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => {
                log::warn!("fd {fd}: {e}; closing");
                close(srv, fd);
                return false;
            }
        }
    }
    let want = match (conn.pending.len(), conn.eof) {
        (0, true) => {
            cli::say!("closing fd {fd}");
            close(srv, fd);
            return false;
        }
        (0, false) => Interest::READABLE,
        (_, true) => Interest::WRITABLE,
        // The client is not reading: stop reading it too.
        (n, false) if n >= MAX_PENDING => Interest::WRITABLE,
        _ => Interest::BOTH,
    };
    if let Err(e) = srv.sel.set_interest(fd, want) {
        log::warn!("fd {fd}: {e}; closing");
        close(srv, fd);
        return false;
    }
    true
}

fn close(srv: &mut Server, fd: RawFd) {
    if let Err(e) = srv.sel.unregister(fd) {
        log::warn!("unregister fd {fd}: {e}");
    }
    srv.conns.remove(&fd); // drops, and so closes, the socket
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
    )
}

fn main() -> io::Result<()> {
    cli::guard_stdio();
    env_logger::init();
    let args = Args::parse();
    let kind = args.backend;
    let sel = Selector::with_backend(kind)?;
    let sock = TcpListener::bind(&args.addr)?;
    sock.set_nonblocking(true)?;
    let mut srv = Server {
        sel,
        sock,
        conns: HashMap::new(),
        spare: File::open("/dev/null").ok(),
        accept_paused_until: None,
    };
    srv.sel
        .register(srv.sock.as_raw_fd(), Interest::READABLE, accept)?;
    cli::say!(
        "listening on {} (backend {})",
        srv.sock.local_addr()?,
        srv.sel.backend_name()
    );

    let mut events = Events::new();
    loop {
        let timeout = resume_accepting(&mut srv)?;
        srv.sel.select(&mut events, timeout)?;
        for ev in &events {
            // A handler may have unregistered this fd meanwhile.
            let Some(key) = srv.sel.key_by_token(ev.token()) else {
                continue;
            };
            let callback = *key.data();
            callback(&mut srv, ev.fd(), ev.ready());
        }
    }
}

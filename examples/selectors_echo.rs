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
//! finished when the socket turns writable.
//!
//! ```text
//! cargo run --example selectors_echo -- --backend poll --addr 127.0.0.1:1234
//! ```

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

use clap::Parser;
use muxloop::{BackendKind, Events, Interest, Ready, Selector};

/// The Python `selectors` echo server on muxloop's Selector.
#[derive(Parser)]
struct Args {
    /// Backend: select, poll, epoll, kqueue or mio.
    #[arg(long, env = "MUXLOOP_BACKEND", default_value_t = BackendKind::platform_default())]
    backend: BackendKind,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:1234")]
    addr: String,
}

/// What `key.data` holds: the callback, as in the Python.
type Callback = fn(&mut Server, RawFd, Ready);

struct Conn {
    stream: TcpStream,
    /// Echoed bytes the socket could not take yet.
    pending: Vec<u8>,
}

struct Server {
    sel: Selector<Callback>,
    sock: TcpListener,
    conns: HashMap<RawFd, Conn>,
}

fn accept(srv: &mut Server, _fd: RawFd, _mask: Ready) {
    let (conn, addr) = match srv.sock.accept() {
        Ok(pair) => pair, // Should be ready
        Err(e) if is_transient(&e) => return,
        Err(e) => {
            log::warn!("accept failed: {e}");
            return;
        }
    };
    println!("accepted fd {} from {addr}", conn.as_raw_fd());
    if let Err(e) = conn.set_nonblocking(true) {
        log::warn!("dropping {addr}: {e}");
        return;
    }
    let fd = conn.as_raw_fd();
    match srv.sel.register(fd, Interest::READABLE, read) {
        Ok(_) => {
            srv.conns.insert(
                fd,
                Conn {
                    stream: conn,
                    pending: Vec::new(),
                },
            );
        }
        // e.g. select(2) and fd >= FD_SETSIZE: close it, keep serving.
        Err(e) => log::warn!("closing connection from {addr}: {e}"),
    }
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
            println!(
                "echoing {:?} to fd {fd}",
                String::from_utf8_lossy(&data[..n])
            );
            conn.pending.extend_from_slice(&data[..n]);
            flush(srv, fd);
        }
        Ok(_) => {
            println!("closing fd {fd}");
            close(srv, fd);
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
    let want = if conn.pending.is_empty() {
        Interest::READABLE
    } else {
        Interest::BOTH
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
    };
    srv.sel
        .register(srv.sock.as_raw_fd(), Interest::READABLE, accept)?;
    println!(
        "listening on {} (backend {})",
        srv.sock.local_addr()?,
        srv.sel.backend_name()
    );

    let mut events = Events::new();
    loop {
        srv.sel.select(&mut events, None)?;
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

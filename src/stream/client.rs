//! The client side: a non-blocking connect with a timeout.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use super::Protocol;
use super::connection::{self, ConnId};
use super::socket::{Sock, StdSocket};
use crate::EventLoop;
use crate::sys::{self, SockAddr};

/// Where to connect: a TCP address (IPv4 or IPv6) or a Unix socket path.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// A TCP address.
    Inet(std::net::SocketAddr),
    /// A Unix-domain socket path.
    Unix(PathBuf),
}

impl From<std::net::SocketAddr> for Endpoint {
    fn from(a: std::net::SocketAddr) -> Endpoint {
        Endpoint::Inet(a)
    }
}

impl From<PathBuf> for Endpoint {
    fn from(p: PathBuf) -> Endpoint {
        Endpoint::Unix(p)
    }
}

impl From<&std::path::Path> for Endpoint {
    fn from(p: &std::path::Path) -> Endpoint {
        Endpoint::Unix(p.to_path_buf())
    }
}

/// Connects to `to` without blocking, and runs the connection with
/// `protocol` once it is established (`connection_made`, as for a server's
/// connections). A connect that fails — refused, unreachable, no such
/// socket, or not done within `timeout` (`TimedOut`) — reaches the protocol
/// as [`Protocol::connection_failed`], and nothing else is called. Writes
/// made before the connection is established are buffered and sent once it
/// is.
///
/// # Errors
///
/// Only what prevents trying at all: no socket could be created (`EMFILE`),
/// a Unix path too long; the loop refusing the socket.
///
/// # Examples
///
/// ```
/// use muxloop::stream::{self, Protocol, Transport};
/// use muxloop::EventLoop;
/// use std::time::Duration;
///
/// struct Probe;
/// impl Protocol<Option<std::io::ErrorKind>> for Probe {
///     fn data_received(&mut self, _: &mut Transport<'_, Option<std::io::ErrorKind>>, _: &[u8], _: &mut Option<std::io::ErrorKind>) {}
///     fn connection_failed(&mut self, e: std::io::Error, failed: &mut Option<std::io::ErrorKind>) {
///         *failed = Some(e.kind());
///     }
/// }
///
/// // Nothing listens there (the port was just freed).
/// let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
/// let mut lp = EventLoop::new()?;
/// stream::connect(&mut lp, addr, Some(Duration::from_secs(5)), Probe)?;
/// let mut failed = None;
/// while failed.is_none() {
///     lp.run_once(Some(Duration::from_secs(1)), &mut failed)?;
/// }
/// assert_eq!(failed, Some(std::io::ErrorKind::ConnectionRefused));
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn connect<S: 'static>(
    lp: &mut EventLoop<S>,
    to: impl Into<Endpoint>,
    timeout: Option<Duration>,
    protocol: impl Protocol<S>,
) -> io::Result<ConnId<S>> {
    let id = start_with(lp, &to.into(), Box::new(protocol), StdSocket::into_sock)?;
    if let Some(timeout) = timeout {
        connection::connect_timeout(lp, id, timeout);
    }
    Ok(id)
}

/// Starts a non-blocking connect to `to` and registers the connection,
/// its socket what `wrap` makes of the std one.
pub(super) fn start_with<S: 'static>(
    lp: &mut EventLoop<S>,
    to: &Endpoint,
    protocol: Box<dyn Protocol<S>>,
    wrap: impl FnOnce(StdSocket) -> Sock,
) -> io::Result<ConnId<S>> {
    let (sock, connecting) = start(to)?;
    connection::register(
        lp,
        wrap(sock),
        protocol,
        connecting,
        None,
        Default::default(),
    )
}

/// Starts a non-blocking connect to `to`: the socket, and whether the
/// connect is in progress (`Some`), with the error if it failed at once.
fn start(to: &Endpoint) -> io::Result<(StdSocket, Option<Option<io::Error>>)> {
    let addr = match to {
        Endpoint::Inet(a) => SockAddr::inet(a),
        Endpoint::Unix(p) => SockAddr::unix(p)?,
    };
    let fd = sys::stream_socket(addr.family())?;
    // An error now (refused, unreachable) is reported like a later one.
    let started = sys::start_connect(fd.as_raw_fd(), &addr);
    let sock = match to {
        Endpoint::Inet(_) => StdSocket::Tcp(TcpStream::from(fd)),
        Endpoint::Unix(_) => StdSocket::Unix(UnixStream::from(fd)),
    };
    let connecting = match started {
        Ok(true) => None,
        Ok(false) => Some(None),
        Err(e) => Some(Some(e)),
    };
    log::trace!(
        "stream=connect to={to:?} in_progress={}",
        connecting.is_some()
    );
    Ok((sock, connecting))
}

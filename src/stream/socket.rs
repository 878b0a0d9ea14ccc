//! What a transport reads and writes: a connected stream socket.

use std::any::{Any, TypeId};
use std::fmt;
use std::io::{self, IoSlice};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use crate::sys;

/// A socket address: IPv4/IPv6 or Unix-domain.
#[derive(Clone, Debug)]
pub enum Addr {
    /// A TCP peer or local address.
    Inet(std::net::SocketAddr),
    /// A Unix-domain address (often unnamed for a client).
    Unix(std::os::unix::net::SocketAddr),
}

impl Addr {
    /// The IP address and port, for TCP.
    pub fn as_inet(&self) -> Option<std::net::SocketAddr> {
        match self {
            Addr::Inet(a) => Some(*a),
            Addr::Unix(_) => None,
        }
    }
}

impl From<std::net::SocketAddr> for Addr {
    fn from(a: std::net::SocketAddr) -> Addr {
        Addr::Inet(a)
    }
}

impl From<std::os::unix::net::SocketAddr> for Addr {
    fn from(a: std::os::unix::net::SocketAddr) -> Addr {
        Addr::Unix(a)
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Inet(a) => write!(f, "{a}"),
            Addr::Unix(a) => match a.as_pathname() {
                Some(p) => write!(f, "{}", p.display()),
                None => f.write_str("(unnamed)"),
            },
        }
    }
}

/// A connected, non-blocking stream socket a [`Transport`] drives:
/// implemented for [`TcpStream`] and [`UnixStream`]. Implement it to wrap
/// one (to count or inject faults, say) and give it to
/// [`attach`](super::attach).
///
/// Writes must not raise `SIGPIPE` (the implementations here send with
/// `MSG_NOSIGNAL`, or set `SO_NOSIGPIPE` where that flag does not exist).
///
/// A transport over a `TcpStream` or `UnixStream` itself calls recv(2)
/// and send(2) on its fd directly (the same calls these implementations
/// make, without the dynamic call); any other type, wrappers included, is
/// always driven through its methods.
///
/// [`Transport`]: super::Transport
pub trait StreamSocket: AsFd + 'static {
    /// Reads what is there, as `read(2)`. (Named apart from
    /// [`Read::read`](std::io::Read::read), which the socket types also have.)
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes what fits, as `writev(2)`.
    fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Writes what fits of one buffer, as `write(2)`: by default
    /// [`send_vectored`](StreamSocket::send_vectored) of that one buffer.
    fn send(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send_vectored(&[IoSlice::new(buf)])
    }
    /// Shuts the writing side down (the peer reads EOF).
    fn shutdown_write(&mut self) -> io::Result<()>;
    /// The peer's address.
    fn peer_addr(&self) -> io::Result<Addr>;
    /// The local address.
    fn local_addr(&self) -> io::Result<Addr>;
    /// The socket itself, to downcast (see [`Transport::socket`]).
    ///
    /// [`Transport::socket`]: super::Transport::socket
    fn as_any(&self) -> &dyn Any;

    /// For a session over a socket (TLS): whether it holds output of its
    /// own that it has yet to send (records, a `close_notify`). The
    /// transport keeps watching for writability while it does, calls
    /// [`flush_output`](StreamSocket::flush_output) when the socket is
    /// writable, and closes only once it is false. Default: false.
    fn holds_output(&self) -> bool {
        false
    }

    /// For a session over a socket (TLS): whether it holds input already
    /// read from the socket (decrypted data, an EOF not yet reported), for
    /// which the socket will not be readable again. The transport reads
    /// again while it does and reading is wanted. Default: false.
    fn holds_input(&self) -> bool {
        false
    }

    /// Sends what [`holds_output`](StreamSocket::holds_output) says is
    /// held, as far as the socket takes it. Default: nothing to do.
    fn flush_output(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// For a session over a socket (TLS): the connection is about to
    /// close without a half-close first, so send the session's own end
    /// (`close_notify`) but no FIN; the close waits while
    /// [`holds_output`](StreamSocket::holds_output) says it is not sent.
    /// Default: nothing to send.
    fn end_session(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// For a session with a handshake (TLS): makes what progress the
    /// socket allows, and says whether the handshake is done. The
    /// transport calls the protocol's `connection_made` only then, and
    /// until then calls this instead of reading. An error ends the
    /// connection (a client's `connection_failed`). Default: done.
    fn handshake(&mut self) -> io::Result<bool> {
        Ok(true)
    }
}

/// The same for both std socket types, but for the address type.
macro_rules! std_stream_socket {
    ($ty:ty, $addr:path) => {
        impl StreamSocket for $ty {
            fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                sys::recv(self.as_raw_fd(), buf)
            }

            fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
                sys::send_vectored(self.as_raw_fd(), bufs)
            }

            fn send(&mut self, buf: &[u8]) -> io::Result<usize> {
                sys::send(self.as_raw_fd(), buf)
            }

            fn shutdown_write(&mut self) -> io::Result<()> {
                self.shutdown(Shutdown::Write)
            }

            fn peer_addr(&self) -> io::Result<Addr> {
                <$ty>::peer_addr(self).map($addr)
            }

            fn local_addr(&self) -> io::Result<Addr> {
                <$ty>::local_addr(self).map($addr)
            }

            fn as_any(&self) -> &dyn Any {
                self
            }
        }
    };
}

std_stream_socket!(TcpStream, Addr::Inet);
std_stream_socket!(UnixStream, Addr::Unix);

/// A std socket a connection is made of (accepted, or connecting), before
/// it is the transport's: as it is, or with a TLS session over it.
pub(super) enum StdSocket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsFd for StdSocket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            StdSocket::Tcp(s) => s.as_fd(),
            StdSocket::Unix(s) => s.as_fd(),
        }
    }
}

impl StdSocket {
    /// The transport's socket, driven directly.
    pub(super) fn into_sock(self) -> Sock {
        match self {
            StdSocket::Tcp(s) => Sock::of(s),
            StdSocket::Unix(s) => Sock::of(s),
        }
    }

    /// The transport's socket, with the TLS session `session` over it.
    #[cfg(feature = "tls")]
    pub(super) fn into_tls(self, session: impl Into<rustls::Connection>) -> Sock {
        use super::tls::TlsStream;
        match self {
            StdSocket::Tcp(s) => Sock::of(TlsStream::new(s, session)),
            StdSocket::Unix(s) => Sock::of(TlsStream::new(s, session)),
        }
    }
}

/// A connection's socket. For the std socket types, whose reads and writes
/// are plain `recv(2)` and `send(2)`, the fd is kept too, and the hot path
/// calls those directly instead of going through the trait object. Which
/// type it is is known where it is boxed (`Sock::of`): a wrapper is never
/// bypassed, whatever its `as_any` says.
pub(super) struct Sock {
    inner: Box<dyn StreamSocket>,
    /// The fd of a std socket, or -1.
    direct: RawFd,
}

impl Sock {
    pub(super) fn of<T: StreamSocket>(sock: T) -> Sock {
        let ty = TypeId::of::<T>();
        let direct = if ty == TypeId::of::<TcpStream>() || ty == TypeId::of::<UnixStream>() {
            sock.as_fd().as_raw_fd()
        } else {
            -1
        };
        Sock {
            inner: Box::new(sock),
            direct,
        }
    }

    /// A std socket, driven by its fd directly (never a session over one).
    pub(super) fn is_direct(&self) -> bool {
        self.direct >= 0
    }

    /// Puts a session over the socket (`start_tls`): `wrap` gets the
    /// socket and returns what drives it from now on.
    ///
    /// # Errors
    ///
    /// No fd to stand in for the socket while it moves (`EMFILE`): the
    /// socket is as it was.
    #[cfg(feature = "tls")]
    pub(super) fn wrap(
        &mut self,
        wrap: impl FnOnce(Box<dyn StreamSocket>) -> Box<dyn StreamSocket>,
    ) -> io::Result<()> {
        let stand_in: Box<dyn StreamSocket> =
            Box::new(Vacant(self.inner.as_fd().try_clone_to_owned()?));
        let inner = std::mem::replace(&mut self.inner, stand_in);
        self.inner = wrap(inner);
        self.direct = -1;
        Ok(())
    }

    pub(super) fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv_data(buf).map_or_else(|res| res, Ok)
    }

    /// Reads into `buf`: `Ok(n)` for `n > 0` bytes, otherwise what the
    /// socket said (EOF as `Err(Ok(0))`): the hot path tests for data
    /// before it builds a result.
    #[inline(always)]
    pub(super) fn recv_data(&mut self, buf: &mut [u8]) -> Result<usize, io::Result<usize>> {
        if self.direct >= 0 {
            let n = crate::sys::recv_raw(self.direct, buf);
            if n > 0 {
                return Ok(n as usize);
            }
            return Err(crate::sys::raw_result(n));
        }
        match self.inner.recv(buf) {
            Ok(n) if n > 0 => Ok(n),
            res => Err(res),
        }
    }

    pub(super) fn send(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send_all(buf)
            .map_or_else(|res| res, |()| Ok(buf.len()))
    }

    /// Sends all of `buf` or says what happened instead, as `recv_data`.
    #[inline(always)]
    pub(super) fn send_all(&mut self, buf: &[u8]) -> Result<(), io::Result<usize>> {
        if self.direct >= 0 {
            let n = crate::sys::send_raw(self.direct, buf);
            if n as usize == buf.len() {
                return Ok(());
            }
            return Err(crate::sys::raw_result(n));
        }
        match self.inner.send(buf) {
            Ok(n) if n == buf.len() => Ok(()),
            res => Err(res),
        }
    }
}

impl std::ops::Deref for Sock {
    type Target = dyn StreamSocket;

    fn deref(&self) -> &Self::Target {
        &*self.inner
    }
}

impl std::ops::DerefMut for Sock {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut *self.inner
    }
}

/// What holds a connection's place for the moment its socket moves into
/// a session (a duplicate of its fd: it is never read or written).
#[cfg(feature = "tls")]
struct Vacant(std::os::fd::OwnedFd);

#[cfg(feature = "tls")]
impl AsFd for Vacant {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

#[cfg(feature = "tls")]
impl StreamSocket for Vacant {
    fn recv(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::NotConnected.into())
    }

    fn send_vectored(&mut self, _: &[IoSlice<'_>]) -> io::Result<usize> {
        Err(io::ErrorKind::NotConnected.into())
    }

    fn shutdown_write(&mut self) -> io::Result<()> {
        Err(io::ErrorKind::NotConnected.into())
    }

    fn peer_addr(&self) -> io::Result<Addr> {
        Err(io::ErrorKind::NotConnected.into())
    }

    fn local_addr(&self) -> io::Result<Addr> {
        Err(io::ErrorKind::NotConnected.into())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

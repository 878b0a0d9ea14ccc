//! Datagrams (UDP) on the loop: an endpoint bound to an address, maybe
//! connected to a peer, driving a [`DatagramProtocol`] (asyncio's
//! `create_datagram_endpoint`).
//!
//! * reads are batched: one recvmmsg(2) takes up to
//!   [`DatagramOptions::batch`] datagrams on Linux (recvfrom(2) calls
//!   elsewhere), then the loop goes on to its other sources; what the
//!   protocol sends while it handles a batch of more than one datagram
//!   goes out together right after it (one sendmmsg(2) on Linux), so an
//!   echo costs well under one system call per datagram;
//! * [`DatagramTransport::send_to`] never blocks: a datagram the kernel
//!   has no room for is queued (and the queue flushed with sendmmsg(2) on
//!   Linux) up to [`DatagramOptions::queue_limit`] bytes, with
//!   `pause_writing` above the high-water mark and `resume_writing` at
//!   the low one, as for streams; a datagram goes whole or not at all;
//! * zero-length datagrams are delivered; one longer than
//!   [`DatagramOptions::max_datagram`] is reported to `error_received` as
//!   truncated (`InvalidData`), never handed over cut;
//! * on a connected endpoint an ICMP port unreachable arrives as
//!   `ConnectionRefused` in `error_received` (or from `send`).
//!
//! # Examples
//!
//! ```
//! use muxloop::stream::datagram::{self, DatagramOptions, DatagramProtocol, DatagramTransport};
//! use muxloop::stream::Addr;
//! use muxloop::EventLoop;
//! use std::time::Duration;
//!
//! struct Echo;
//! impl DatagramProtocol<u32> for Echo {
//!     fn datagram_received(&mut self, t: &mut DatagramTransport<'_, u32>, data: &[u8], from: Addr, n: &mut u32) {
//!         *n += 1;
//!         let _ = t.send_to(data, from);
//!     }
//! }
//!
//! let mut lp = EventLoop::new()?;
//! let id = datagram::open(&mut lp, "127.0.0.1:0".parse().unwrap(), DatagramOptions::default(), Echo)?;
//! let addr = datagram::local_addr(&lp, id).unwrap().as_inet().unwrap();
//! let client = std::net::UdpSocket::bind("127.0.0.1:0")?;
//! client.send_to(b"ping", addr)?;
//! let mut n = 0;
//! while n == 0 {
//!     lp.run_once(Some(Duration::from_secs(1)), &mut n)?;
//! }
//! let mut buf = [0; 16];
//! let (len, _) = client.recv_from(&mut buf)?;
//! assert_eq!(&buf[..len], b"ping");
//! # Ok::<(), std::io::Error>(())
//! ```

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use super::Addr;
use crate::sys::{RecvBatch, SockAddr};
use crate::{EventLoop, Interest, PostAction, SourceId, TimerId};

/// The largest UDP payload over IPv4 (65,535 less the IP and UDP headers).
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// What an endpoint does with its datagrams: asyncio's
/// `DatagramProtocol`. Only `datagram_received` must be written.
pub trait DatagramProtocol<S>: 'static {
    /// The endpoint is open (the first callback).
    fn connection_made(&mut self, t: &mut DatagramTransport<'_, S>, state: &mut S) {
        let _ = (t, state);
    }

    /// One datagram (maybe empty) from `from`.
    fn datagram_received(
        &mut self,
        t: &mut DatagramTransport<'_, S>,
        data: &[u8],
        from: Addr,
        state: &mut S,
    );

    /// An error the socket reported — an ICMP error on a connected
    /// endpoint (`ConnectionRefused`), a datagram cut to `max_datagram`
    /// (`InvalidData`), one the kernel refused to send. The endpoint goes
    /// on. Logged at debug level unless written.
    fn error_received(
        &mut self,
        t: &mut DatagramTransport<'_, S>,
        error: io::Error,
        state: &mut S,
    ) {
        let _ = (t, state);
        log::debug!("datagram=error error={error}");
    }

    /// An endpoint opened by name ([`connect_host`]) could not be: the
    /// name did not resolve, no address could be bound and connected to,
    /// or the timeout passed. The only callback then. Logged at warn level
    /// unless written.
    fn connection_failed(&mut self, error: io::Error, state: &mut S) {
        let _ = state;
        log::warn!("datagram=connect error={error}");
    }

    /// The endpoint is closed (after `close` once its queue is sent, or
    /// `abort`, or a fatal socket error, `Some`). The last callback.
    fn connection_lost(&mut self, error: Option<io::Error>, state: &mut S) {
        let _ = (error, state);
    }

    /// More than the high-water mark of datagrams waits in the queue.
    fn pause_writing(&mut self, t: &mut DatagramTransport<'_, S>, state: &mut S) {
        let _ = (t, state);
    }

    /// The queue is back at the low-water mark.
    fn resume_writing(&mut self, t: &mut DatagramTransport<'_, S>, state: &mut S) {
        let _ = (t, state);
    }
}

/// How an endpoint is opened. `DatagramOptions::default()`, then change
/// fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DatagramOptions {
    /// Connect to this peer: `send` goes there, only its datagrams are
    /// received, and ICMP errors are reported. Default: `None`.
    pub connect: Option<SocketAddr>,
    /// For a Unix-domain endpoint ([`open_unix`]): connect to the socket
    /// bound at this path. Default: `None`.
    pub connect_path: Option<PathBuf>,
    /// At most this many datagrams per read (one recvmmsg(2) on Linux).
    /// Default: 32.
    pub batch: usize,
    /// The largest datagram received whole; a longer one is reported as
    /// truncated. Default: 65,536 (any UDP datagram).
    pub max_datagram: usize,
    /// `SO_BROADCAST`. Default: false.
    pub broadcast: bool,
    /// `SO_REUSEADDR` and `SO_REUSEPORT` before the bind (several
    /// endpoints on one multicast port). Default: false.
    pub reuse_address: bool,
    /// IPv4 multicast groups to join: (group, local interface address;
    /// `0.0.0.0` lets the kernel pick). Default: none.
    pub join_multicast_v4: Vec<(std::net::Ipv4Addr, std::net::Ipv4Addr)>,
    /// Queued bytes above which `pause_writing` is called, and at or
    /// below which `resume_writing`. Default: 64 KiB and 16 KiB.
    pub high_water: usize,
    /// See [`high_water`](DatagramOptions::high_water).
    pub low_water: usize,
    /// The most bytes queued; `send_to` refuses a datagram beyond it
    /// (`WouldBlock`; the datagram is dropped). Default: 1 MiB.
    pub queue_limit: usize,
}

impl Default for DatagramOptions {
    fn default() -> DatagramOptions {
        DatagramOptions {
            connect: None,
            connect_path: None,
            batch: 32,
            max_datagram: 65_536,
            broadcast: false,
            reuse_address: false,
            join_multicast_v4: Vec::new(),
            high_water: 64 * 1024,
            low_water: 16 * 1024,
            queue_limit: 1024 * 1024,
        }
    }
}

/// Identifies an endpoint of a loop: send on it, close it from outside
/// its callbacks.
pub struct DatagramId<S>(SourceId<Endpoint<S>>);

impl<S> Clone for DatagramId<S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for DatagramId<S> {}

impl<S> PartialEq for DatagramId<S> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl<S> Eq for DatagramId<S> {}

impl<S> fmt::Debug for DatagramId<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatagramId").field(&self.0).finish()
    }
}

/// A datagram socket an endpoint drives that is not one of the kernel's
/// (those are UDP and Unix-domain sockets, which [`open`] and
/// [`open_unix`] make): a simulated one ([`crate::sim`]), a wrapper that
/// injects faults. Give it to [`attach`]. It is non-blocking: `WouldBlock`
/// when no datagram waits, or when there is no room for one.
pub trait DatagramSocket: AsFd + 'static {
    /// Receives one datagram into `buf`: how many bytes, its sender, and
    /// whether it was longer than `buf` (and so cut).
    fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, Addr, bool)>;
    /// Sends one datagram, whole, to `to` (`None`: the connected peer).
    fn send_to(&mut self, data: &[u8], to: Option<&Addr>) -> io::Result<usize>;
    /// The socket's address.
    fn local_addr(&self) -> io::Result<Addr>;
    /// The peer of a connected socket.
    fn peer_addr(&self) -> Option<Addr>;
}

/// An endpoint's socket.
enum Socket {
    Udp(UdpSocket),
    Unix(UnixDatagram),
    Other(Box<dyn DatagramSocket>),
}

/// Where a queued datagram goes: a kernel address, or an address for a
/// socket of another type.
enum Dest {
    Kernel(SockAddr),
    Other(Addr),
}

impl Socket {
    fn local_addr(&self) -> io::Result<Addr> {
        match self {
            Socket::Udp(s) => s.local_addr().map(Addr::Inet),
            Socket::Unix(s) => s.local_addr().map(Addr::Unix),
            Socket::Other(s) => s.local_addr(),
        }
    }

    /// `to` as this socket sends to it: in the kernel's form, if it is of
    /// this socket's family.
    fn dest(&self, to: &Addr) -> io::Result<Dest> {
        match (self, to) {
            (Socket::Udp(_), Addr::Inet(a)) => Ok(Dest::Kernel(SockAddr::inet(a))),
            (Socket::Unix(_), Addr::Unix(a)) => SockAddr::unix_addr(a).map(Dest::Kernel),
            (Socket::Other(_), a) => Ok(Dest::Other(a.clone())),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot send to {to} from a socket of the other family"),
            )),
        }
    }

    /// Sends one datagram now.
    fn send_one(&mut self, data: &[u8], to: Option<&Dest>) -> io::Result<usize> {
        match (self, to) {
            (Socket::Other(s), Some(Dest::Other(a))) => s.send_to(data, Some(a)),
            (Socket::Other(s), _) => s.send_to(data, None),
            (s, Some(Dest::Kernel(a))) => {
                crate::sys::send_one(s.as_fd().as_raw_fd(), data, Some(a))
            }
            (s, _) => crate::sys::send_one(s.as_fd().as_raw_fd(), data, None),
        }
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Socket::Udp(s) => s.as_fd(),
            Socket::Unix(s) => s.as_fd(),
            Socket::Other(s) => s.as_fd(),
        }
    }
}

/// An endpoint's reads: one kernel batch (recvmmsg on Linux), or a loop
/// over a socket of another type into slots of the same size.
enum Reads {
    Kernel(RecvBatch),
    Other {
        buf: Vec<u8>,
        slot: usize,
        got: Vec<(usize, Addr, bool)>,
    },
}

impl Reads {
    /// Reads up to a batch: how many datagrams.
    fn read(&mut self, sock: &mut Socket) -> io::Result<usize> {
        match (self, sock) {
            (Reads::Other { buf, slot, got }, Socket::Other(s)) => {
                got.clear();
                let n = buf.len() / *slot;
                for i in 0..n {
                    match s.recv_from(&mut buf[i * *slot..][..*slot]) {
                        Ok(r) => got.push(r),
                        Err(e) if i > 0 && e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                Ok(got.len())
            }
            (Reads::Kernel(batch), sock) => batch.read(sock.as_fd().as_raw_fd()),
            (Reads::Other { .. }, _) => Err(io::Error::other("datagram reads of the wrong kind")),
        }
    }

    /// Datagram `i` of the last read: its bytes, its sender, whether cut.
    fn get(
        &self,
        i: usize,
        unnamed: &Option<std::os::unix::net::SocketAddr>,
    ) -> (&[u8], Addr, bool) {
        match self {
            Reads::Kernel(batch) => {
                let (data, r) = batch.datagram(i);
                let from = match (&r.from, unnamed) {
                    (crate::sys::Sender::Inet(a), _) => Addr::Inet(*a),
                    (crate::sys::Sender::Unix(a), _) => Addr::Unix(a.clone()),
                    (crate::sys::Sender::Unnamed, Some(u)) => Addr::Unix(u.clone()),
                    (crate::sys::Sender::Unnamed, None) => {
                        Addr::Inet(SocketAddr::from(([0, 0, 0, 0], 0)))
                    }
                };
                (data, from, r.truncated)
            }
            Reads::Other { buf, slot, got } => {
                let (len, from, cut) = &got[i];
                (&buf[i * slot..][..*len], from.clone(), *cut)
            }
        }
    }
}

/// An endpoint's state apart from its protocol and its read batch.
struct Core {
    sock: Socket,
    connected: Option<Addr>,
    /// Datagrams and their destinations (`None`: the connected peer).
    queue: VecDeque<(Vec<u8>, Option<Dest>)>,
    queued: usize,
    high: usize,
    low: usize,
    limit: usize,
    batch: usize,
    /// Above the high mark; and whether the protocol was told.
    paused: bool,
    told_paused: bool,
    closing: bool,
    aborted: bool,
    /// Errors from sends outside a callback, for `error_received`.
    errors: Vec<io::Error>,
    /// Within a read batch: sends are queued, and go together after it
    /// (one sendmmsg(2) on Linux).
    corked: bool,
    interest: Interest,
}

/// A loop source: the socket, the protocol (out while it runs), the
/// reads' memory.
pub struct Endpoint<S> {
    core: Core,
    protocol: Option<Box<dyn DatagramProtocol<S>>>,
    batch: Reads,
    made: bool,
    /// What an unbound Unix-domain sender is reported as.
    unnamed: Option<std::os::unix::net::SocketAddr>,
}

impl<S> AsFd for Endpoint<S> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.core.sock.as_fd()
    }
}

/// What a [`DatagramProtocol`] callback acts on its endpoint with.
pub struct DatagramTransport<'a, S> {
    core: &'a mut Core,
    lp: &'a mut EventLoop<S>,
    id: DatagramId<S>,
}

impl<S> fmt::Debug for DatagramTransport<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatagramTransport")
            .field("id", &self.id)
            .field("queued", &self.core.queued)
            .finish()
    }
}

impl Core {
    fn send(&mut self, data: &[u8], to: Option<&Addr>) -> io::Result<()> {
        if self.closing || self.aborted {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "datagram endpoint is closing",
            ));
        }
        if data.len() > MAX_UDP_PAYLOAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "datagram of {} bytes: at most {MAX_UDP_PAYLOAD} fit in one",
                    data.len()
                ),
            ));
        }
        let to = to.map(|a| self.sock.dest(a)).transpose()?;
        if self.queue.is_empty() && !self.corked {
            match self.sock.send_one(data, to.as_ref()) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if self.queued + data.len() > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "datagram queue full ({} bytes queued, limit {}): dropped",
                    self.queued, self.limit
                ),
            ));
        }
        self.queue.push_back((data.to_vec(), to));
        self.queued += data.len();
        if self.queued > self.high {
            self.paused = true;
        }
        Ok(())
    }

    /// Sends what is queued, as far as the kernel takes it.
    fn flush(&mut self) {
        while !self.queue.is_empty() {
            match self.send_front() {
                Ok(0) => break,
                Ok(n) => {
                    for _ in 0..n {
                        if let Some((d, _)) = self.queue.pop_front() {
                            self.queued -= d.len();
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // That datagram cannot go: drop it, tell the protocol.
                    if let Some((d, _)) = self.queue.pop_front() {
                        self.queued -= d.len();
                    }
                    self.errors.push(e);
                }
            }
        }
        if self.paused && self.queued <= self.low {
            self.paused = false;
        }
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn send_front(&mut self) -> io::Result<usize> {
        if matches!(self.sock, Socket::Other(_)) {
            return self.send_front_one_by_one();
        }
        let msgs: Vec<(&[u8], Option<&SockAddr>)> = self
            .queue
            .iter()
            .take(self.batch.max(1))
            .map(|(d, to)| match to {
                Some(Dest::Kernel(a)) => (&d[..], Some(a)),
                _ => (&d[..], None),
            })
            .collect();
        crate::sys::send_batch(self.sock.as_fd().as_raw_fd(), &msgs)
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn send_front(&mut self) -> io::Result<usize> {
        self.send_front_one_by_one()
    }

    /// Sends from the front of the queue, one call per datagram.
    fn send_front_one_by_one(&mut self) -> io::Result<usize> {
        let mut sent = 0;
        for (d, to) in self.queue.iter().take(self.batch.max(1)) {
            match self.sock.send_one(d, to.as_ref()) {
                Ok(_) => sent += 1,
                Err(e) if sent == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(sent)
    }

    fn wanted(&self) -> Interest {
        if !self.queue.is_empty() || self.closing || self.aborted {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        }
    }
}

impl<S: 'static> DatagramTransport<'_, S> {
    /// Sends `data` to `to` as one datagram, now or (the kernel's buffer
    /// full) from the queue.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for more than [`MAX_UDP_PAYLOAD`] bytes;
    /// `WouldBlock` when the queue is at its limit (the datagram is
    /// dropped); `NotConnected` once closing; the kernel's error for this
    /// datagram (`ConnectionRefused` after an ICMP error, say).
    ///
    /// `to` is an IP address and port on a UDP endpoint, a bound Unix
    /// socket's address on a Unix-domain one (`InvalidInput` otherwise).
    pub fn send_to(&mut self, data: &[u8], to: impl Into<Addr>) -> io::Result<()> {
        self.core.send(data, Some(&to.into()))
    }

    /// Sends `data` to the peer of a connected endpoint.
    ///
    /// # Errors
    ///
    /// As [`send_to`](DatagramTransport::send_to); `NotConnected` if the
    /// endpoint has no peer.
    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        if self.core.connected.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "send on an endpoint without a peer: use send_to",
            ));
        }
        self.core.send(data, None)
    }

    /// Bytes of datagrams waiting in the queue.
    pub fn queued_bytes(&self) -> usize {
        self.core.queued
    }

    /// Whether the queue is above its high-water mark.
    pub fn is_writing_paused(&self) -> bool {
        self.core.paused
    }

    /// Closes once the queue is sent; nothing more is read.
    pub fn close(&mut self) {
        self.core.closing = true;
    }

    /// Closes at once, dropping the queue.
    pub fn abort(&mut self) {
        self.core.aborted = true;
    }

    /// The socket's address.
    pub fn local_addr(&self) -> io::Result<Addr> {
        self.core.sock.local_addr()
    }

    /// The peer of a connected endpoint.
    pub fn peer_addr(&self) -> Option<Addr> {
        self.core.connected.clone()
    }

    /// A UDP endpoint's socket, for its options: TTL, multicast
    /// membership and loop, broadcast (`std::net::UdpSocket`'s methods).
    pub fn udp_socket(&self) -> Option<&UdpSocket> {
        match &self.core.sock {
            Socket::Udp(s) => Some(s),
            _ => None,
        }
    }

    /// A Unix-domain endpoint's socket.
    pub fn unix_socket(&self) -> Option<&UnixDatagram> {
        match &self.core.sock {
            Socket::Unix(s) => Some(s),
            _ => None,
        }
    }

    /// The endpoint's id.
    pub fn id(&self) -> DatagramId<S> {
        self.id
    }

    /// The loop the endpoint runs on.
    pub fn event_loop(&mut self) -> &mut EventLoop<S> {
        self.lp
    }
}

/// Opens a UDP endpoint bound to `bind` (port 0 picks one) on the loop,
/// driven by `protocol` (`connection_made` comes on the loop's next
/// turn).
///
/// # Errors
///
/// The bind (naming the address), the connect, an option or a multicast
/// join failing; the loop refusing the socket.
pub fn open<S: 'static>(
    lp: &mut EventLoop<S>,
    bind: SocketAddr,
    options: DatagramOptions,
    protocol: impl DatagramProtocol<S>,
) -> io::Result<DatagramId<S>> {
    if options.connect_path.is_some() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "connect_path is for Unix-domain endpoints (open_unix): use connect",
        ));
    }
    let sock = udp_socket(&bind, &options)?;
    let connected = options.connect.map(Addr::Inet);
    let id = start(
        lp,
        Socket::Udp(sock),
        connected,
        None,
        &options,
        Box::new(protocol),
    )?;
    log::debug!("datagram=open addr={bind}");
    Ok(id)
}

/// Opens a UDP endpoint connected to `to` — `"host:port"` or
/// `(host, port)`, a name or an IP address — resolving the name on the
/// loop's [blocking pool](crate::BlockingPool) as
/// [`stream::connect_host`](super::connect_host) does. It is bound to the
/// wildcard address of the peer's family (port 0), and connected to the
/// first address that takes it (the families alternating as RFC 8305
/// orders them). `connection_made` gives the endpoint's id
/// ([`DatagramTransport::id`]); a name that does not resolve, addresses
/// that all fail, a full pool or `timeout` passing before the endpoint is
/// open reach [`DatagramProtocol::connection_failed`] with an error
/// naming `host:port` instead.
///
/// # Errors
///
/// `InvalidInput` if `to` is not a host and port, or `options` already
/// connects ([`connect`](DatagramOptions::connect),
/// [`connect_path`](DatagramOptions::connect_path)).
///
/// # Examples
///
/// ```
/// use muxloop::stream::datagram::{self, DatagramOptions, DatagramProtocol, DatagramTransport};
/// use muxloop::stream::Addr;
/// use muxloop::EventLoop;
/// use std::time::Duration;
///
/// #[derive(Default)]
/// struct Got(Option<Vec<u8>>);
/// struct Ask;
/// impl DatagramProtocol<Got> for Ask {
///     fn connection_made(&mut self, t: &mut DatagramTransport<'_, Got>, _: &mut Got) {
///         t.send(b"time?").unwrap();
///     }
///     fn datagram_received(&mut self, t: &mut DatagramTransport<'_, Got>, data: &[u8], _: Addr, got: &mut Got) {
///         got.0 = Some(data.to_vec());
///         t.close();
///     }
/// }
///
/// let server = std::net::UdpSocket::bind("127.0.0.1:0")?;
/// let port = server.local_addr()?.port();
/// let mut lp = EventLoop::new()?;
/// datagram::connect_host(&mut lp, ("localhost", port), Some(Duration::from_secs(5)), DatagramOptions::default(), Ask)?;
/// let mut got = Got::default();
/// let mut buf = [0; 16];
/// while got.0.is_none() {
///     lp.run_once(Some(Duration::from_millis(10)), &mut got)?;
///     server.set_nonblocking(true)?;
///     if let Ok((n, from)) = server.recv_from(&mut buf) {
///         assert_eq!(&buf[..n], b"time?");
///         server.send_to(b"noon", from)?;
///     }
/// }
/// assert_eq!(got.0.as_deref(), Some(&b"noon"[..]));
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn connect_host<S: 'static>(
    lp: &mut EventLoop<S>,
    to: impl super::HostPort,
    timeout: Option<Duration>,
    options: DatagramOptions,
    protocol: impl DatagramProtocol<S>,
) -> io::Result<()> {
    if options.connect.is_some() || options.connect_path.is_some() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "connect_host connects the endpoint itself: leave connect and connect_path unset",
        ));
    }
    let (host, port) = to.host_port()?;
    let label = super::resolve::label(host, port);
    type Pending<S> = Option<(
        Box<dyn DatagramProtocol<S>>,
        DatagramOptions,
        Option<TimerId>,
    )>;
    let pending: Rc<RefCell<Pending<S>>> =
        Rc::new(RefCell::new(Some((Box::new(protocol), options, None))));
    if let Some(timeout) = timeout {
        let p = pending.clone();
        let l = label.clone();
        let timer = lp.call_later(timeout, move |_, state| {
            if let Some((mut protocol, ..)) = p.borrow_mut().take() {
                protocol.connection_failed(
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("opening a UDP endpoint to {l}: timed out after {timeout:?}"),
                    ),
                    state,
                );
            }
        });
        if let Some(p) = pending.borrow_mut().as_mut() {
            p.2 = Some(timer);
        }
    }
    super::resolve::resolve(lp, host, port, move |lp, state, resolved| {
        let Some((mut protocol, options, timer)) = pending.borrow_mut().take() else {
            return;
        };
        if let Some(timer) = timer {
            lp.cancel(timer);
        }
        let addrs = match resolved {
            Ok(addrs) => addrs,
            Err(e) => return protocol.connection_failed(e, state),
        };
        let mut errors = Vec::new();
        for addr in addrs {
            let any = match addr {
                SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
                SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
            };
            let mut o = options.clone();
            o.connect = Some(addr);
            match udp_socket(&any, &o) {
                Ok(sock) => {
                    let connected = Some(Addr::Inet(addr));
                    let started = start(lp, Socket::Udp(sock), connected, None, &o, protocol);
                    if let Err(e) = started {
                        // The protocol went with the refused socket.
                        log::warn!("datagram=connect to={label} not registered: {e}");
                    }
                    return;
                }
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
        let e = io::Error::other(format!(
            "opening a UDP endpoint to {label}: {}",
            errors.join("; ")
        ));
        protocol.connection_failed(e, state);
    });
    Ok(())
}

/// A UDP socket bound to `bind` with `options` set, connected if they say.
fn udp_socket(bind: &SocketAddr, options: &DatagramOptions) -> io::Result<UdpSocket> {
    let sock = crate::sys::udp_socket(bind, options.reuse_address)
        .map_err(|e| io::Error::new(e.kind(), format!("binding UDP {bind}: {e}")))?;
    crate::sys::no_sigpipe(sock.as_raw_fd())?;
    if options.broadcast {
        sock.set_broadcast(true)?;
    }
    for (group, iface) in &options.join_multicast_v4 {
        sock.join_multicast_v4(group, iface).map_err(|e| {
            io::Error::new(e.kind(), format!("joining multicast group {group}: {e}"))
        })?;
    }
    if let Some(peer) = options.connect {
        sock.connect(peer)
            .map_err(|e| io::Error::new(e.kind(), format!("connecting UDP to {peer}: {e}")))?;
    }
    Ok(sock)
}

/// Opens a Unix-domain datagram endpoint bound to `bind` (`None`: unbound,
/// which can send but not be answered), driven by `protocol` as
/// [`open`]'s; [`DatagramOptions::connect_path`] connects it. The
/// options for IP (broadcast, multicast, `connect`) do not apply. Bound
/// paths stay behind in the file system, as with bind(2): remove one
/// before binding it again.
///
/// # Errors
///
/// The bind or the connect failing (naming the path); IP options given;
/// the loop refusing the socket.
///
/// # Examples
///
/// ```
/// use muxloop::stream::datagram::{self, DatagramOptions, DatagramProtocol, DatagramTransport};
/// use muxloop::stream::Addr;
/// use muxloop::EventLoop;
/// use std::time::Duration;
///
/// struct Upper;
/// impl DatagramProtocol<u32> for Upper {
///     fn datagram_received(&mut self, t: &mut DatagramTransport<'_, u32>, data: &[u8], from: Addr, n: &mut u32) {
///         *n += 1;
///         let _ = t.send_to(&data.to_ascii_uppercase(), from);
///     }
/// }
///
/// let dir = std::env::temp_dir().join(format!("muxloop-doc-dgram-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let (server, client) = (dir.join("server"), dir.join("client"));
/// let mut lp = EventLoop::new()?;
/// datagram::open_unix(&mut lp, Some(&server), DatagramOptions::default(), Upper)?;
/// let c = std::os::unix::net::UnixDatagram::bind(&client)?;
/// c.send_to(b"hello", &server)?;
/// let mut n = 0;
/// while n == 0 {
///     lp.run_once(Some(Duration::from_secs(1)), &mut n)?;
/// }
/// let mut buf = [0; 16];
/// let len = c.recv(&mut buf)?;
/// assert_eq!(&buf[..len], b"HELLO");
/// std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn open_unix<S: 'static>(
    lp: &mut EventLoop<S>,
    bind: Option<&Path>,
    options: DatagramOptions,
    protocol: impl DatagramProtocol<S>,
) -> io::Result<DatagramId<S>> {
    if options.connect.is_some()
        || options.broadcast
        || options.reuse_address
        || !options.join_multicast_v4.is_empty()
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "connect, broadcast, reuse_address and multicast are for UDP endpoints: \
             a Unix-domain one connects with connect_path",
        ));
    }
    let sock = match bind {
        Some(path) => UnixDatagram::bind(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("binding Unix datagram socket {}: {e}", path.display()),
            )
        })?,
        None => UnixDatagram::unbound()?,
    };
    sock.set_nonblocking(true)?;
    crate::sys::no_sigpipe(sock.as_raw_fd())?;
    let mut connected = None;
    if let Some(path) = &options.connect_path {
        sock.connect(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("connecting Unix datagram socket to {}: {e}", path.display()),
            )
        })?;
        connected = Some(Addr::Unix(sock.peer_addr()?));
    }
    // Unbound senders are reported as this (std builds it from a socket).
    let unnamed = UnixDatagram::unbound()?.local_addr()?;
    let id = start(
        lp,
        Socket::Unix(sock),
        connected,
        Some(unnamed),
        &options,
        Box::new(protocol),
    )?;
    log::debug!("datagram=open path={bind:?}");
    Ok(id)
}

/// Adds an endpoint over a datagram socket of your own type (a simulated
/// one, a wrapper) to the loop, driven by `protocol` as [`open`]'s. Reads
/// are a loop of [`DatagramSocket::recv_from`] calls, up to
/// [`DatagramOptions::batch`] a turn, each into `max_datagram` bytes; the
/// options that make the socket (`connect`, `connect_path`, `broadcast`,
/// `reuse_address`, multicast) do not apply: the socket is driven as it
/// is.
///
/// # Errors
///
/// As [`EventLoop::add`]; the socket is dropped.
pub fn attach<S: 'static>(
    lp: &mut EventLoop<S>,
    socket: impl DatagramSocket,
    options: DatagramOptions,
    protocol: impl DatagramProtocol<S>,
) -> io::Result<DatagramId<S>> {
    let connected = socket.peer_addr();
    start(
        lp,
        Socket::Other(Box::new(socket)),
        connected,
        None,
        &options,
        Box::new(protocol),
    )
}

/// Adds an endpoint over a bound (maybe connected) socket to the loop.
fn start<S: 'static>(
    lp: &mut EventLoop<S>,
    sock: Socket,
    connected: Option<Addr>,
    unnamed: Option<std::os::unix::net::SocketAddr>,
    options: &DatagramOptions,
    protocol: Box<dyn DatagramProtocol<S>>,
) -> io::Result<DatagramId<S>> {
    let sock_is_other = matches!(sock, Socket::Other(_));
    let endpoint = Endpoint {
        core: Core {
            sock,
            connected,
            queue: VecDeque::new(),
            queued: 0,
            high: options.high_water,
            low: options.low_water.min(options.high_water),
            limit: options.queue_limit,
            batch: options.batch.max(1),
            paused: false,
            told_paused: false,
            closing: false,
            aborted: false,
            errors: Vec::new(),
            corked: false,
            interest: Interest::READABLE | Interest::WRITABLE,
        },
        protocol: Some(protocol),
        batch: match sock_is_other {
            false => Reads::Kernel(RecvBatch::new(options.batch, options.max_datagram)),
            true => Reads::Other {
                buf: vec![0; options.batch.max(1) * options.max_datagram.max(1)],
                slot: options.max_datagram.max(1),
                got: Vec::new(),
            },
        },
        made: false,
        unnamed,
    };
    // Watched for writing at first: the first callback says
    // connection_made, then only reading is watched while nothing waits.
    let id = lp.add(
        endpoint,
        Interest::READABLE | Interest::WRITABLE,
        |lp, ep, ev, state| {
            let id = DatagramId(ev.id());
            ep.run(lp, id, ev.is_readable(), ev.is_writable(), state)
        },
    )?;
    Ok(DatagramId(id))
}

impl<S: 'static> Endpoint<S> {
    fn run(
        &mut self,
        lp: &mut EventLoop<S>,
        id: DatagramId<S>,
        readable: bool,
        writable: bool,
        state: &mut S,
    ) -> PostAction {
        let Some(mut protocol) = self.protocol.take() else {
            return PostAction::Remove;
        };
        if !self.made {
            self.made = true;
            let mut t = DatagramTransport {
                core: &mut self.core,
                lp,
                id,
            };
            protocol.connection_made(&mut t, state);
        }
        if writable && !self.core.queue.is_empty() {
            self.core.flush();
        }
        let mut fatal = None;
        if readable && !self.core.closing && !self.core.aborted {
            match self.batch.read(&mut self.core.sock) {
                Ok(n) => {
                    // Answers to this batch go out together after it.
                    self.core.corked = n > 1;
                    for i in 0..n {
                        let (data, from, truncated) = self.batch.get(i, &self.unnamed);
                        let mut t = DatagramTransport {
                            core: &mut self.core,
                            lp,
                            id,
                        };
                        if truncated {
                            let e = io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!(
                                    "datagram from {from} longer than max_datagram ({} bytes): dropped",
                                    data.len()
                                ),
                            );
                            protocol.error_received(&mut t, e, state);
                        } else {
                            protocol.datagram_received(&mut t, data, from, state);
                        }
                        if t.core.closing || t.core.aborted {
                            break;
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::HostUnreachable
                            | io::ErrorKind::NetworkUnreachable
                    ) || e.raw_os_error() == Some(libc::EMSGSIZE) =>
                {
                    self.core.errors.push(e)
                }
                Err(e) => fatal = Some(e),
            }
        }
        if self.core.corked {
            self.core.corked = false;
            self.core.flush();
        }
        self.notify(&mut *protocol, lp, id, state);
        if fatal.is_some() || self.core.aborted || (self.core.closing && self.core.queue.is_empty())
        {
            log::debug!("datagram=closed error={fatal:?}");
            protocol.connection_lost(fatal, state);
            return PostAction::Remove;
        }
        let want = self.core.wanted();
        if want != self.core.interest && lp.modify(id.0, want).is_ok() {
            self.core.interest = want;
        }
        self.protocol = Some(protocol);
        PostAction::Continue
    }

    /// Tells the protocol of errors and of pauses and resumes since.
    fn notify(
        &mut self,
        protocol: &mut dyn DatagramProtocol<S>,
        lp: &mut EventLoop<S>,
        id: DatagramId<S>,
        state: &mut S,
    ) {
        for e in std::mem::take(&mut self.core.errors) {
            let mut t = DatagramTransport {
                core: &mut self.core,
                lp,
                id,
            };
            protocol.error_received(&mut t, e, state);
        }
        if self.core.paused != self.core.told_paused {
            self.core.told_paused = self.core.paused;
            let mut t = DatagramTransport {
                core: &mut self.core,
                lp,
                id,
            };
            if t.core.paused {
                protocol.pause_writing(&mut t, state);
            } else {
                protocol.resume_writing(&mut t, state);
            }
        }
    }
}

/// Makes sure the endpoint's callback runs soon (to flush, to tell its
/// protocol, or to close), by watching it for writing: a UDP socket is
/// writable almost always.
fn poke<S: 'static>(lp: &mut EventLoop<S>, id: DatagramId<S>) {
    let want = Interest::READABLE | Interest::WRITABLE;
    let changed = lp.with_source(id.0, |_, ep| {
        let changed = ep.core.interest != want;
        ep.core.interest = want;
        changed
    });
    if changed == Some(true) {
        let _ = lp.modify(id.0, want);
    }
}

/// Sends a datagram on an endpoint from outside its callbacks (a timer,
/// another connection's callback), as [`DatagramTransport::send_to`]
/// (`to` `None`: to the connected peer).
///
/// # Errors
///
/// As [`DatagramTransport::send_to`]; `NotFound` if the endpoint is gone
/// or its own callback is running.
pub fn send_to<S: 'static>(
    lp: &mut EventLoop<S>,
    id: DatagramId<S>,
    data: &[u8],
    to: Option<Addr>,
) -> io::Result<()> {
    let sent = lp
        .with_source(id.0, |_, ep| ep.core.send(data, to.as_ref()))
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{id:?} is gone or busy"))
        })?;
    if lp
        .with_source(id.0, |_, ep| !ep.core.queue.is_empty() || ep.core.paused)
        .unwrap_or(false)
    {
        poke(lp, id);
    }
    sent
}

/// Closes an endpoint from outside its callbacks, as
/// [`DatagramTransport::close`].
pub fn close<S: 'static>(lp: &mut EventLoop<S>, id: DatagramId<S>) {
    if lp
        .with_source(id.0, |_, ep| ep.core.closing = true)
        .is_some()
    {
        poke(lp, id);
    }
}

/// The address an endpoint is bound to.
pub fn local_addr<S: 'static>(lp: &EventLoop<S>, id: DatagramId<S>) -> Option<Addr> {
    lp.source(id.0)
        .and_then(|ep| ep.core.sock.local_addr().ok())
}

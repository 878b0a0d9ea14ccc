//! A server: a listener whose connections each get a protocol.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixListener;
use std::rc::Rc;
#[cfg(feature = "tls")]
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::connection::{self, ConnId};
use super::socket::{Sock, StdSocket};
use super::{Addr, Protocol, StreamSocket};
use crate::{EventLoop, Interest, PostAction, SourceId, TimerId};

/// A listening socket: TCP (IPv4 or IPv6) or Unix-domain.
#[derive(Debug)]
pub enum Listener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A Unix-domain listener.
    Unix(UnixListener),
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Listener {
        Listener::Tcp(l)
    }
}

impl From<UnixListener> for Listener {
    fn from(l: UnixListener) -> Listener {
        Listener::Unix(l)
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l) => l.as_fd(),
        }
    }
}

impl Listener {
    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Unix(l) => l.set_nonblocking(true),
        }
    }

    fn local_addr(&self) -> io::Result<Addr> {
        match self {
            Listener::Tcp(l) => l.local_addr().map(Addr::Inet),
            Listener::Unix(l) => l.local_addr().map(Addr::Unix),
        }
    }

    /// Accepts one connection, non-blocking, with the socket options set.
    fn accept(&self, nodelay: bool) -> io::Result<(StdSocket, Addr)> {
        let (sock, peer) = match self {
            Listener::Tcp(l) => {
                let (s, peer) = accept_tcp(l)?;
                if nodelay {
                    s.set_nodelay(true)?;
                }
                (StdSocket::Tcp(s), Addr::Inet(peer))
            }
            Listener::Unix(l) => {
                let (s, peer) = l.accept()?;
                s.set_nonblocking(true)?;
                (StdSocket::Unix(s), Addr::Unix(peer))
            }
        };
        crate::sys::no_sigpipe(sock.as_fd().as_raw_fd())?;
        Ok((sock, peer))
    }
}

/// The socket of an accepted connection: as accepted, or with a TLS
/// session over it.
fn accepted_sock(sock: StdSocket, options: &ServeOptions) -> io::Result<Sock> {
    #[cfg(feature = "tls")]
    if let Some(config) = &options.tls {
        let session = rustls::ServerConnection::new(Arc::clone(config))
            .map_err(|e| io::Error::other(format!("TLS session: {e}")))?;
        return Ok(sock.into_tls(session));
    }
    let _ = options;
    Ok(sock.into_sock())
}

/// A TCP connection, non-blocking from the start where the system has
/// accept4(2) (one system call instead of two).
#[cfg(muxloop_sock_flags)]
fn accept_tcp(l: &TcpListener) -> io::Result<(TcpStream, std::net::SocketAddr)> {
    let (fd, peer) = crate::sys::accept_inet(l.as_raw_fd())?;
    Ok((TcpStream::from(fd), peer))
}

#[cfg(not(muxloop_sock_flags))]
fn accept_tcp(l: &TcpListener) -> io::Result<(TcpStream, std::net::SocketAddr)> {
    let (s, peer) = l.accept()?;
    s.set_nonblocking(true)?;
    Ok((s, peer))
}

/// How a server accepts. `ServeOptions::default()`, then change fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServeOptions {
    /// At most this many connections at once; at the cap the listener is
    /// not watched (new connections wait in the kernel's backlog) until
    /// one closes. Default: no cap.
    pub max_connections: Option<usize>,
    /// At most this many accepts per readiness event, so that a connect
    /// storm does not hold the loop. Default: 64.
    pub accept_batch: usize,
    /// `TCP_NODELAY` on accepted TCP connections (no Nagle delay for small
    /// writes). Default: true.
    pub nodelay: bool,
    /// How long a connection's [`close`](super::Transport::close) waits,
    /// once everything is sent, for the peer's EOF (reading and
    /// discarding what it still sends) before closing the socket; zero
    /// closes at once. Default: 2 s. Per connection:
    /// [`Transport::set_close_linger`](super::Transport::set_close_linger).
    pub close_linger: Duration,
    /// At most this long for a close to send what is buffered, then the
    /// connection is aborted (`connection_lost` reports `TimedOut`), so a
    /// peer that never reads cannot hold a closed connection's fd and
    /// buffer. Default: `None` (as long as the peer takes). Per
    /// connection:
    /// [`Transport::set_close_timeout`](super::Transport::set_close_timeout).
    pub close_timeout: Option<Duration>,
    /// Serve TLS with this configuration (feature `tls`): every accepted
    /// connection runs its handshake first, and its protocol starts
    /// (`connection_made`) once that is done. A handshake that fails
    /// closes the connection (logged at debug level). Default: `None`,
    /// plaintext. See [`tls::server_config`](super::tls::server_config).
    #[cfg(feature = "tls")]
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// With [`tls`](ServeOptions::tls): at most this long for a
    /// connection's handshake, then it is closed, so that peers that
    /// connect and stall cannot hold fds. Default: 60 s (asyncio's).
    #[cfg(feature = "tls")]
    pub handshake_timeout: Option<Duration>,
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            max_connections: None,
            accept_batch: 64,
            nodelay: true,
            close_linger: super::buffer::LINGER,
            close_timeout: None,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "tls")]
            handshake_timeout: Some(Duration::from_secs(60)),
        }
    }
}

type OnClosed<S> = Box<dyn FnOnce(&mut EventLoop<S>, &mut S)>;

/// What a server and its connections share.
pub(crate) struct Shared<S> {
    listener: Option<SourceId<Listener>>,
    local_addr: Option<Addr>,
    conns: HashSet<ConnId<S>>,
    max: Option<usize>,
    /// Why the listener is not watched: paused by the user, at the cap,
    /// backing off after running out of fds.
    paused: bool,
    full: bool,
    backoff: Option<TimerId>,
    /// Whether the listener is watched now.
    watching: bool,
    closing: bool,
    /// Closing, and the listener's queue not yet drained.
    draining: bool,
    closed: bool,
    grace: Option<TimerId>,
    on_closed: Option<OnClosed<S>>,
    served: u64,
    refused: u64,
    shed: u64,
    /// An fd held in reserve, given up to shed a connection when out of fds.
    spare: Option<File>,
    last_warning: Option<Instant>,
}

impl<S> Shared<S> {
    /// Warns at most once a second (out of fds, every accept fails).
    fn warn(&mut self, msg: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        if self
            .last_warning
            .is_none_or(|t| now - t >= Duration::from_secs(1))
        {
            self.last_warning = Some(now);
            log::warn!("{msg}");
        } else {
            log::debug!("{msg}");
        }
    }
}

/// The protocol factory of a server.
type Factory<S> = dyn FnMut(&Addr, &mut S) -> Option<Box<dyn Protocol<S>>>;

/// How a server admits a connection, accepted by its listener or handed
/// to [`Server::adopt`]: its options and its factory.
struct Admit<S> {
    options: ServeOptions,
    factory: RefCell<Box<Factory<S>>>,
}

/// A running server: pause, resume or close it, count its connections.
/// Clones share the server.
pub struct Server<S> {
    shared: Rc<RefCell<Shared<S>>>,
    admit: Rc<Admit<S>>,
}

impl<S> Clone for Server<S> {
    fn clone(&self) -> Self {
        Server {
            shared: self.shared.clone(),
            admit: self.admit.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Server<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sh = self.shared.borrow();
        f.debug_struct("Server")
            .field("local_addr", &sh.local_addr)
            .field("connections", &sh.conns.len())
            .field("closed", &sh.closed)
            .finish()
    }
}

/// Serves `listener` on the loop: every accepted connection is offered to
/// `factory` with its peer's address and the loop's state, which returns
/// the connection's protocol, or `None` to refuse it (it is closed at
/// once).
///
/// Accepting is bounded (`options.accept_batch` per event) and survives
/// running out of fds: on `EMFILE`/`ENFILE` the server closes a reserve fd,
/// accepts the pending connection and closes it at once (it is shed, and
/// the peer sees a close instead of a hang), takes the reserve back, and if
/// even that fails stops watching the listener for 100 ms. It never spins,
/// and accepting resumes by itself when fds free up.
///
/// # Errors
///
/// The listener cannot be made non-blocking or registered.
pub fn serve<S: 'static, F>(
    lp: &mut EventLoop<S>,
    listener: impl Into<Listener>,
    options: ServeOptions,
    factory: F,
) -> io::Result<Server<S>>
where
    F: FnMut(&Addr, &mut S) -> Option<Box<dyn Protocol<S>>> + 'static,
{
    let listener = listener.into();
    listener.set_nonblocking()?;
    let server = new_server(listener.local_addr().ok(), options, Box::new(factory));
    let (sh, admit) = (server.shared.clone(), server.admit.clone());
    let id = lp.add(
        listener,
        Interest::READABLE,
        move |lp, listener, _, state| {
            accept_batch(lp, &sh, &admit, listener, state);
            PostAction::Continue
        },
    )?;
    server.shared.borrow_mut().listener = Some(id);
    log::debug!("stream=serve addr={:?}", server.shared.borrow().local_addr);
    Ok(server)
}

/// A server without a listener of its own: its connections are sockets
/// accepted elsewhere and handed to [`Server::adopt`] — by an acceptor
/// thread that spreads one listener's connections over several loops
/// ([`workers`](crate::workers)), or by a program that receives sockets
/// over a Unix socket. Everything else is as [`serve`]: the factory, the
/// options, the counts, [`close`](Server::close).
///
/// # Examples
///
/// ```
/// use muxloop::EventLoop;
/// use muxloop::stream::{self, Protocol, ServeOptions, Transport};
/// use std::io::{Read, Write};
///
/// struct Hello;
/// impl Protocol<()> for Hello {
///     fn connection_made(&mut self, t: &mut Transport<'_, ()>, _: &mut ()) {
///         t.write(b"hello\n");
///         t.close();
///     }
///     fn data_received(&mut self, _: &mut Transport<'_, ()>, _: &[u8], _: &mut ()) {}
/// }
///
/// let mut lp = EventLoop::<()>::new()?;
/// let server = stream::serve_adopted(ServeOptions::default(), |_, _| {
///     Some(Box::new(Hello))
/// });
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let mut client = std::net::TcpStream::connect(listener.local_addr()?)?;
/// let (accepted, _) = listener.accept()?;
/// server.adopt(&mut lp, accepted, &mut ())?;
/// client.shutdown(std::net::Shutdown::Write)?;
/// while server.connection_count() > 0 {
///     lp.run_once(Some(std::time::Duration::from_millis(100)), &mut ())?;
/// }
/// let mut got = String::new();
/// client.read_to_string(&mut got)?;
/// assert_eq!(got, "hello\n");
/// assert_eq!(server.connections_served(), 1);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn serve_adopted<S: 'static, F>(options: ServeOptions, factory: F) -> Server<S>
where
    F: FnMut(&Addr, &mut S) -> Option<Box<dyn Protocol<S>>> + 'static,
{
    new_server(None, options, Box::new(factory))
}

/// [`serve_adopted`] for a server that answers at `local` (the
/// simulation's listeners, which are no sockets).
pub(crate) fn serve_adopted_at<S: 'static, F>(
    local: Addr,
    options: ServeOptions,
    factory: F,
) -> Server<S>
where
    F: FnMut(&Addr, &mut S) -> Option<Box<dyn Protocol<S>>> + 'static,
{
    new_server(Some(local), options, Box::new(factory))
}

fn new_server<S: 'static>(
    local_addr: Option<Addr>,
    options: ServeOptions,
    factory: Box<Factory<S>>,
) -> Server<S> {
    let shared = Rc::new(RefCell::new(Shared {
        listener: None,
        local_addr,
        conns: HashSet::new(),
        max: options.max_connections,
        paused: false,
        full: false,
        backoff: None,
        watching: true,
        closing: false,
        draining: false,
        closed: false,
        grace: None,
        on_closed: None,
        served: 0,
        refused: 0,
        shed: 0,
        spare: File::open("/dev/null").ok(),
        last_warning: None,
    }));
    let admit = Rc::new(Admit {
        options,
        factory: RefCell::new(factory),
    });
    Server { shared, admit }
}

fn is_out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

fn accept_batch<S: 'static>(
    lp: &mut EventLoop<S>,
    shared: &Rc<RefCell<Shared<S>>>,
    admit: &Admit<S>,
    listener: &mut Listener,
    state: &mut S,
) {
    for _ in 0..admit.options.accept_batch.max(1) {
        {
            let mut sh = shared.borrow_mut();
            if sh.closing {
                break;
            }
            if sh.max.is_some_and(|max| sh.conns.len() >= max) {
                sh.full = true;
                break;
            }
        }
        match listener.accept(admit.options.nodelay) {
            Ok((sock, peer)) => admit_one(lp, shared, admit, sock, peer, state),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) => {}
            Err(e) if is_out_of_fds(&e) => {
                shed(lp, shared, listener, e);
                break;
            }
            Err(e) => {
                shared
                    .borrow_mut()
                    .warn(format_args!("stream=accept error={e}"));
                break;
            }
        }
    }
    update_listener(shared, lp);
}

/// Gives an accepted connection its protocol and registers it. On a
/// closing server (the connections its listener still held when it
/// closed, or one handed over late) it is then closed as the others were.
fn admit_one<S: 'static>(
    lp: &mut EventLoop<S>,
    shared: &Rc<RefCell<Shared<S>>>,
    admit: &Admit<S>,
    sock: StdSocket,
    peer: Addr,
    state: &mut S,
) {
    admit_sock(lp, shared, admit, |o| accepted_sock(sock, o), peer, state)
}

/// Admits one connection whose socket `make` makes (after the factory
/// said yes), as [`admit_one`].
fn admit_sock<S: 'static>(
    lp: &mut EventLoop<S>,
    shared: &Rc<RefCell<Shared<S>>>,
    admit: &Admit<S>,
    make: impl FnOnce(&ServeOptions) -> io::Result<Sock>,
    peer: Addr,
    state: &mut S,
) {
    let protocol = {
        let Ok(mut factory) = admit.factory.try_borrow_mut() else {
            shared.borrow_mut().warn(format_args!(
                "stream=accept peer={peer} refused: the server's factory is running (it adopted a connection)"
            ));
            return;
        };
        factory(&peer, state)
    };
    let Some(protocol) = protocol else {
        shared.borrow_mut().refused += 1;
        log::debug!("stream=refused peer={peer}");
        return;
    };
    let options = &admit.options;
    let closing = connection::CloseSettings {
        linger: options.close_linger,
        timeout: options.close_timeout,
    };
    let registered = make(options).and_then(|sock| {
        connection::register(lp, sock, protocol, None, Some(shared.clone()), closing)
    });
    match registered {
        Ok(id) => {
            #[cfg(feature = "tls")]
            if let (Some(_), Some(timeout)) = (&options.tls, options.handshake_timeout) {
                connection::handshake_deadline(lp, id, timeout);
            }
            let closing = {
                let mut sh = shared.borrow_mut();
                sh.conns.insert(id);
                sh.served += 1;
                sh.closing
            };
            if closing {
                super::close(lp, id);
            }
        }
        Err(e) => shared.borrow_mut().warn(format_args!(
            "stream=accept peer={peer} not registered: {e}"
        )),
    }
}

/// How long a closing listener that refuses new handshakes stays open
/// (at most: never past the grace period) for those under way to complete
/// into its queue — a SYN-ACK's round trip — before the last accepts.
pub(crate) const DRAIN_SETTLE: Duration = Duration::from_millis(250);

/// The most connections a closing server takes from its listener's queue.
const DRAIN_MAX: usize = 65_536;

/// A closing server's last accepts (the listener refuses new handshakes
/// already, where it can): takes every connection its queue holds
/// (closing the listener would reset them), then closes it.
fn drain_and_close<S: 'static>(
    lp: &mut EventLoop<S>,
    shared: &Rc<RefCell<Shared<S>>>,
    admit: &Admit<S>,
    id: SourceId<Listener>,
    state: &mut S,
) {
    let listener = match lp.remove(id) {
        Ok(listener) => listener,
        Err(e) => {
            log::debug!("stream=server listener not drained: {e}");
            let _ = lp.discard(id);
            return;
        }
    };
    let mut drained = 0;
    while drained < DRAIN_MAX {
        match listener.accept(admit.options.nodelay) {
            Ok((sock, peer)) => {
                drained += 1;
                admit_one(lp, shared, admit, sock, peer, state);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(_) => break,
        }
    }
    log::debug!("stream=server listener closed, drained={drained}");
}

/// Out of fds: a pending connection keeps the listener readable, and a
/// level-triggered loop would spin on it. Shed it through the reserve fd,
/// or stop watching the listener for a while.
fn shed<S: 'static>(
    lp: &mut EventLoop<S>,
    shared: &Rc<RefCell<Shared<S>>>,
    listener: &Listener,
    e: io::Error,
) {
    let mut sh = shared.borrow_mut();
    if sh.spare.take().is_some() {
        if let Ok((sock, peer)) = listener.accept(false) {
            drop(sock);
            sh.shed += 1;
            let shed = sh.shed;
            sh.warn(format_args!(
                "stream=accept out of fds ({e}): shedding connections (peer={peer}, {shed} so far)"
            ));
        }
        sh.spare = File::open("/dev/null").ok();
        if sh.spare.is_some() {
            return;
        }
    }
    sh.warn(format_args!(
        "stream=accept out of fds ({e}) and no reserve fd: accepting pauses for 100 ms"
    ));
    let weak = Rc::downgrade(shared);
    let timer = lp.call_later(Duration::from_millis(100), move |lp, _| {
        let Some(shared) = weak.upgrade() else { return };
        {
            let mut sh = shared.borrow_mut();
            sh.backoff = None;
            if sh.spare.is_none() {
                sh.spare = File::open("/dev/null").ok();
            }
        }
        update_listener(&shared, lp);
    });
    sh.backoff = Some(timer);
}

/// Watches the listener exactly when nothing holds accepting back.
fn update_listener<S: 'static>(shared: &Rc<RefCell<Shared<S>>>, lp: &mut EventLoop<S>) {
    let mut sh = shared.borrow_mut();
    let Some(id) = sh.listener else { return };
    if sh.full && sh.max.is_none_or(|max| sh.conns.len() < max) {
        sh.full = false;
    }
    let want = !sh.paused && !sh.full && sh.backoff.is_none() && !sh.closing;
    if want == sh.watching {
        return;
    }
    let res = if want {
        lp.enable(id, Interest::READABLE)
    } else {
        lp.disable(id)
    };
    match res {
        Ok(()) => sh.watching = want,
        Err(e) => sh.warn(format_args!("stream=listener watch={want} error={e}")),
    }
}

impl<S: 'static> connection::Owner<S> for RefCell<Shared<S>> {
    fn connection_gone(self: Rc<Self>, lp: &mut EventLoop<S>, id: ConnId<S>, state: &mut S) {
        connection_gone(&self, lp, id, state);
    }
}

/// A connection of the server ended.
fn connection_gone<S: 'static>(
    shared: &Rc<RefCell<Shared<S>>>,
    lp: &mut EventLoop<S>,
    id: ConnId<S>,
    state: &mut S,
) {
    let done = {
        let mut sh = shared.borrow_mut();
        sh.conns.remove(&id);
        sh.closing && !sh.draining && sh.conns.is_empty() && !sh.closed
    };
    update_listener(shared, lp);
    if done {
        closed(shared, lp, state);
    }
}

/// The last connection of a closing server is gone.
fn closed<S: 'static>(shared: &Rc<RefCell<Shared<S>>>, lp: &mut EventLoop<S>, state: &mut S) {
    let on_closed = {
        let mut sh = shared.borrow_mut();
        sh.closed = true;
        if let Some(timer) = sh.grace.take() {
            lp.cancel(timer);
        }
        sh.on_closed.take()
    };
    log::debug!("stream=server closed");
    if let Some(f) = on_closed {
        f(lp, state);
    }
}

impl<S: 'static> Server<S> {
    /// The address it listens on.
    pub fn local_addr(&self) -> Option<Addr> {
        self.shared.borrow().local_addr.clone()
    }

    /// How many connections are open.
    pub fn connection_count(&self) -> usize {
        self.shared.borrow().conns.len()
    }

    /// The open connections, in no particular order.
    pub fn connections(&self) -> Vec<ConnId<S>> {
        self.shared.borrow().conns.iter().copied().collect()
    }

    /// How many connections were accepted and given a protocol, in all.
    pub fn connections_served(&self) -> u64 {
        self.shared.borrow().served
    }

    /// How many accepted connections the factory refused, in all.
    pub fn connections_refused(&self) -> u64 {
        self.shared.borrow().refused
    }

    /// How many connections were shed for lack of fds, in all.
    pub fn connections_shed(&self) -> u64 {
        self.shared.borrow().shed
    }

    /// Whether [`close`](Server::close) has finished: the listener is
    /// closed and every connection is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.borrow().closed
    }

    /// Stops accepting (connections wait in the kernel's backlog); open
    /// connections go on.
    pub fn pause(&self, lp: &mut EventLoop<S>) {
        self.shared.borrow_mut().paused = true;
        update_listener(&self.shared, lp);
    }

    /// Accepts again after [`pause`](Server::pause).
    pub fn resume(&self, lp: &mut EventLoop<S>) {
        self.shared.borrow_mut().paused = false;
        update_listener(&self.shared, lp);
    }

    /// Shuts the server down gracefully: stops accepting at once, then
    /// closes every connection the way [`Transport::close`] does (reading
    /// stops, what was written is sent, then the socket is closed). A
    /// connection still not done after `grace` is aborted, dropping what
    /// it could not send (logged). `on_closed` runs once the last
    /// connection is gone — e.g. to stop the loop. A second call does
    /// nothing.
    ///
    /// Connections the kernel completed but the server had not accepted
    /// yet are not lost: closing a listener resets what its queue holds.
    /// So the listener refuses new handshakes at once (Linux: a socket
    /// filter that drops bare SYNs; those clients retry and find the port
    /// closed); handshakes already under way get 250 ms (or the grace, if
    /// shorter) to complete; then the server accepts everything queued,
    /// closes those connections as the others, and only then closes the
    /// listener. Where there are no socket filters that happens on the
    /// loop's next turn, and a connection that completes between the last
    /// accept and the close is still reset.
    ///
    /// [`Transport::close`]: super::Transport::close
    pub fn close<F>(&self, lp: &mut EventLoop<S>, grace: Duration, on_closed: F)
    where
        F: FnOnce(&mut EventLoop<S>, &mut S) + 'static,
    {
        let (listener, conns) = {
            let mut sh = self.shared.borrow_mut();
            if sh.closing {
                return;
            }
            sh.closing = true;
            sh.on_closed = Some(Box::new(on_closed));
            if let Some(timer) = sh.backoff.take() {
                lp.cancel(timer);
            }
            let conns: Vec<ConnId<S>> = sh.conns.iter().copied().collect();
            (sh.listener.take(), conns)
        };
        let mut settle = Duration::ZERO;
        if let Some(id) = listener {
            // No new handshakes from now on; not watched any more; drained
            // below, outside any callback, once the handshakes under way
            // have had time to complete.
            if let Some(Listener::Tcp(l)) = lp.source(id) {
                match crate::sys::refuse_new_connections(l.as_raw_fd()) {
                    Ok(true) => settle = grace.min(DRAIN_SETTLE),
                    Ok(false) => {}
                    Err(e) => {
                        log::debug!("stream=server listener takes connections until it closes: {e}")
                    }
                }
            }
            let _ = lp.disable(id);
            self.shared.borrow_mut().draining = true;
        }
        log::debug!("stream=server closing connections={}", conns.len());
        for &id in &conns {
            super::close(lp, id);
        }
        let weak = Rc::downgrade(&self.shared);
        let timer = lp.call_later(grace, move |lp, _| {
            let Some(shared) = weak.upgrade() else { return };
            let left: Vec<ConnId<S>> = {
                let mut sh = shared.borrow_mut();
                sh.grace = None;
                sh.conns.iter().copied().collect()
            };
            if !left.is_empty() {
                log::warn!(
                    "stream=server grace period over: aborting {} connection(s) that did not finish",
                    left.len()
                );
            }
            for id in left {
                super::abort(lp, id);
            }
        });
        self.shared.borrow_mut().grace = Some(timer);
        let (shared, admit) = (self.shared.clone(), self.admit.clone());
        lp.call_later(settle, move |lp, state| {
            if let Some(id) = listener {
                drain_and_close(lp, &shared, &admit, id, state);
                shared.borrow_mut().draining = false;
            }
            let done = {
                let sh = shared.borrow();
                sh.conns.is_empty() && !sh.closed
            };
            if done {
                closed(&shared, lp, state);
            }
        });
    }

    /// Serves `sock`, a TCP connection accepted elsewhere (by another
    /// thread's listener, say), as if this server had accepted it: the
    /// factory gives it a protocol, the options apply (`TCP_NODELAY`,
    /// TLS, the close settings), it counts among the connections. On a
    /// closing server it is closed at once, as the others were. Call it
    /// on the loop's thread, with the loop's state (from a
    /// [`LoopHandle::call_soon`](crate::LoopHandle::call_soon) callback,
    /// e.g.).
    ///
    /// # Errors
    ///
    /// The socket cannot be made non-blocking, or has no peer address (it
    /// is not connected): it is dropped.
    pub fn adopt(&self, lp: &mut EventLoop<S>, sock: TcpStream, state: &mut S) -> io::Result<()> {
        let peer = sock.peer_addr()?;
        sock.set_nonblocking(true)?;
        if self.admit.options.nodelay {
            sock.set_nodelay(true)?;
        }
        crate::sys::no_sigpipe(sock.as_raw_fd())?;
        let sock = StdSocket::Tcp(sock);
        admit_one(lp, &self.shared, &self.admit, sock, Addr::Inet(peer), state);
        update_listener(&self.shared, lp);
        Ok(())
    }

    /// Hands the server a connected socket of any [`StreamSocket`] type
    /// (a wrapper, a simulated socket from [`crate::sim`]), as
    /// [`adopt`](Server::adopt) does for a `TcpStream`. The socket must
    /// be non-blocking. [`ServeOptions::nodelay`] and the TLS options do
    /// not apply: the socket is driven as it is.
    ///
    /// # Errors
    ///
    /// The socket's `peer_addr` failing.
    pub fn adopt_socket(
        &self,
        lp: &mut EventLoop<S>,
        sock: impl StreamSocket,
        state: &mut S,
    ) -> io::Result<()> {
        let peer = sock.peer_addr()?;
        let make = |_: &ServeOptions| Ok(Sock::of(sock));
        admit_sock(lp, &self.shared, &self.admit, make, peer, state);
        update_listener(&self.shared, lp);
        Ok(())
    }

    /// Whether [`close`](Server::close) was called: a closing server
    /// takes no new connections.
    pub fn is_closing(&self) -> bool {
        self.shared.borrow().closing
    }
}

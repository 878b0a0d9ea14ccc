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
use super::{Addr, Protocol};
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

/// A running server: pause, resume or close it, count its connections.
/// Clones share the server.
pub struct Server<S> {
    shared: Rc<RefCell<Shared<S>>>,
}

impl<S> Clone for Server<S> {
    fn clone(&self) -> Self {
        Server {
            shared: self.shared.clone(),
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
    mut factory: F,
) -> io::Result<Server<S>>
where
    F: FnMut(&Addr, &mut S) -> Option<Box<dyn Protocol<S>>> + 'static,
{
    let listener = listener.into();
    listener.set_nonblocking()?;
    let shared = Rc::new(RefCell::new(Shared {
        listener: None,
        local_addr: listener.local_addr().ok(),
        conns: HashSet::new(),
        max: options.max_connections,
        paused: false,
        full: false,
        backoff: None,
        watching: true,
        closing: false,
        closed: false,
        grace: None,
        on_closed: None,
        served: 0,
        refused: 0,
        shed: 0,
        spare: File::open("/dev/null").ok(),
        last_warning: None,
    }));
    let sh = shared.clone();
    let id = lp.add(
        listener,
        Interest::READABLE,
        move |lp, listener, _, state| {
            accept_batch(lp, &sh, listener, &options, &mut factory, state);
            PostAction::Continue
        },
    )?;
    shared.borrow_mut().listener = Some(id);
    log::debug!("stream=serve addr={:?}", shared.borrow().local_addr);
    Ok(Server { shared })
}

fn is_out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

fn accept_batch<S: 'static, F>(
    lp: &mut EventLoop<S>,
    shared: &Rc<RefCell<Shared<S>>>,
    listener: &mut Listener,
    options: &ServeOptions,
    factory: &mut F,
    state: &mut S,
) where
    F: FnMut(&Addr, &mut S) -> Option<Box<dyn Protocol<S>>>,
{
    for _ in 0..options.accept_batch.max(1) {
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
        match listener.accept(options.nodelay) {
            Ok((sock, peer)) => {
                let Some(protocol) = factory(&peer, state) else {
                    shared.borrow_mut().refused += 1;
                    log::debug!("stream=refused peer={peer}");
                    continue;
                };
                let closing = connection::CloseSettings {
                    linger: options.close_linger,
                    timeout: options.close_timeout,
                };
                let registered = accepted_sock(sock, options).and_then(|sock| {
                    connection::register(lp, sock, protocol, None, Some(shared.clone()), closing)
                });
                match registered {
                    Ok(id) => {
                        #[cfg(feature = "tls")]
                        if let (Some(_), Some(timeout)) = (&options.tls, options.handshake_timeout)
                        {
                            connection::handshake_deadline(lp, id, timeout);
                        }
                        let mut sh = shared.borrow_mut();
                        sh.conns.insert(id);
                        sh.served += 1;
                    }
                    Err(e) => shared.borrow_mut().warn(format_args!(
                        "stream=accept peer={peer} not registered: {e}"
                    )),
                }
            }
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
        sh.closing && sh.conns.is_empty() && !sh.closed
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

    /// Shuts the server down gracefully: closes the listener at once, then
    /// closes every connection the way [`Transport::close`] does (reading
    /// stops, what was written is sent, then the socket is closed). A
    /// connection still not done after `grace` is aborted, dropping what
    /// it could not send (logged). `on_closed` runs once the last
    /// connection is gone — e.g. to stop the loop. A second call does
    /// nothing.
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
        if let Some(id) = listener {
            let _ = lp.discard(id);
        }
        log::debug!("stream=server closing connections={}", conns.len());
        if conns.is_empty() {
            let shared = self.shared.clone();
            lp.call_soon(move |lp, state| closed(&shared, lp, state));
            return;
        }
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
    }
}

//! Connecting by name: `getaddrinfo` on the loop's blocking pool, then
//! the addresses raced as RFC 8305 (Happy Eyeballs) says: the next
//! attempt starts when the one before has not connected within a delay,
//! or at once when it fails; the first to connect wins and the others are
//! dropped.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use super::Protocol;
use super::connection::{self, CloseSettings};
use super::socket::StdSocket;
use crate::sys::{self, SockAddr};
use crate::{EventLoop, Interest, PostAction, SourceId, TimerId};

/// How long an attempt gets before the next address is tried too: 250 ms,
/// as RFC 8305 recommends and asyncio's `happy_eyeballs_delay` uses.
pub const HAPPY_EYEBALLS_DELAY: Duration = Duration::from_millis(250);

/// One connect by name or by several addresses, until it is decided.
struct Race<S> {
    /// What is being connected to, for errors: the name, or the addresses.
    label: String,
    protocol: Option<Box<dyn Protocol<S>>>,
    addrs: Vec<SocketAddr>,
    /// The next address to try.
    next: usize,
    attempts: Vec<SourceId<TcpStream>>,
    errors: Vec<(SocketAddr, io::Error)>,
    delay: Duration,
    stagger: Option<TimerId>,
    deadline: Option<TimerId>,
    /// Won, failed or timed out: nothing more happens.
    decided: bool,
}

type Shared<S> = Rc<RefCell<Race<S>>>;

/// A host and port to connect to by name: `"host:port"` (`"[v6]:port"`
/// for an IPv6 address), as a `&str` or `String`, or a `(host, port)`
/// pair.
pub trait HostPort {
    /// The host (a name or an IP address, without brackets) and port.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if this is not a host and a port.
    fn host_port(&self) -> io::Result<(&str, u16)>;
}

impl HostPort for str {
    fn host_port(&self) -> io::Result<(&str, u16)> {
        split_host_port(self)
    }
}

impl HostPort for String {
    fn host_port(&self) -> io::Result<(&str, u16)> {
        split_host_port(self)
    }
}

impl<H: AsRef<str>> HostPort for (H, u16) {
    fn host_port(&self) -> io::Result<(&str, u16)> {
        let host = self.0.as_ref();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "connecting by name: the host is empty",
            ));
        }
        Ok((host, self.1))
    }
}

impl<T: HostPort + ?Sized> HostPort for &T {
    fn host_port(&self) -> io::Result<(&str, u16)> {
        (**self).host_port()
    }
}

/// How `host` and `port` are named in errors: `host:port`, `[v6]:port`.
pub(super) fn label(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Resolves `host` with `getaddrinfo` on the loop's blocking pool and
/// hands `done` the addresses (never none) on the loop, or an error
/// naming `host:port`: no address, the resolver's error, a full pool (on
/// the loop's next turn). An IP address needs no resolver and is handed
/// over on the loop's next turn.
pub(super) fn resolve<S: 'static>(
    lp: &mut EventLoop<S>,
    host: &str,
    port: u16,
    done: impl FnOnce(&mut EventLoop<S>, &mut S, io::Result<Vec<SocketAddr>>) + 'static,
) {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        lp.call_soon(move |lp, state| done(lp, state, Ok(vec![SocketAddr::new(ip, port)])));
        return;
    }
    let label = label(host, port);
    let host = host.to_string();
    let done = Rc::new(RefCell::new(Some(done)));
    let d = done.clone();
    let l = label.clone();
    let spawned = lp.spawn_blocking(
        move || {
            (host.as_str(), port)
                .to_socket_addrs()
                .map(Iterator::collect::<Vec<_>>)
        },
        move |lp, state, resolved| {
            let resolved = match resolved.and_then(|r| r) {
                Ok(addrs) if !addrs.is_empty() => Ok(interleave(addrs)),
                Ok(_) => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("resolving {l}: no address"),
                )),
                Err(e) => Err(io::Error::new(e.kind(), format!("resolving {l}: {e}"))),
            };
            if let Some(done) = d.borrow_mut().take() {
                done(lp, state, resolved);
            }
        },
    );
    if let Err(e) = spawned {
        // The pool is full: said on the loop, as every other outcome.
        let e = io::Error::new(e.kind(), format!("resolving {label}: {e}"));
        lp.call_soon(move |lp, state| {
            if let Some(done) = done.borrow_mut().take() {
                done(lp, state, Err(e));
            }
        });
    }
}

/// Connects to `host:port` (a name, or an IP address; `[v6]:port` for an
/// IPv6 one; or a `(host, port)` pair) as [`connect`](super::connect) does, resolving the name with
/// `getaddrinfo` on the loop's [blocking pool](crate::BlockingPool) and
/// racing the addresses it gives ([`connect_any`]). `timeout` covers the
/// resolution and every attempt. A name that does not resolve, a full
/// pool, addresses that all fail or a timeout reach
/// [`Protocol::connection_failed`] with an error naming `host:port` (and
/// each address's error); nothing else is called.
///
/// Unlike [`connect`](super::connect) there is no connection id before
/// the connection exists: the protocol gets it in `connection_made`
/// ([`Transport::id`](super::Transport::id)).
///
/// # Errors
///
/// `InvalidInput` if `to` is not `host:port`.
///
/// [`connect`](super::connect) itself takes addresses only: it hands back
/// the [`ConnId`](super::ConnId) at once, which needs the socket, which
/// needs the address's family.
///
/// # Examples
///
/// ```
/// use muxloop::stream::{self, Protocol, Transport};
/// use muxloop::EventLoop;
/// use std::time::Duration;
///
/// struct Hello;
/// impl Protocol<bool> for Hello {
///     fn connection_made(&mut self, t: &mut Transport<'_, bool>, made: &mut bool) {
///         *made = true;
///         t.close();
///     }
///     fn data_received(&mut self, _: &mut Transport<'_, bool>, _: &[u8], _: &mut bool) {}
/// }
///
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let port = listener.local_addr()?.port();
/// let mut lp = EventLoop::new()?;
/// stream::connect_host(&mut lp, &format!("localhost:{port}"), Some(Duration::from_secs(5)), Hello)?;
/// let mut made = false;
/// while !made {
///     lp.run_once(Some(Duration::from_secs(1)), &mut made)?;
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn connect_host<S: 'static>(
    lp: &mut EventLoop<S>,
    to: impl HostPort,
    timeout: Option<Duration>,
    protocol: impl Protocol<S>,
) -> io::Result<()> {
    let (host, port) = to.host_port()?;
    let label = label(host, port);
    // An address needs no resolver.
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        let race = new_race(label, Box::new(protocol), vec![SocketAddr::new(ip, port)]);
        arm(lp, &race, timeout);
        start_next(lp, &race);
        lp.call_soon(move |lp, state| settle(lp, &race, state));
        return Ok(());
    }
    let race = new_race(label, Box::new(protocol), Vec::new());
    arm(lp, &race, timeout);
    let r = race.clone();
    resolve(lp, host, port, move |lp, state, resolved| {
        if r.borrow().decided {
            return;
        }
        match resolved {
            Ok(addrs) => {
                r.borrow_mut().addrs = addrs;
                start_next(lp, &r);
                settle(lp, &r, state);
            }
            Err(e) => fail(lp, &r, e, state),
        }
    });
    Ok(())
}

/// Connects to the first of `addrs` that accepts, racing them as RFC 8305
/// says: an attempt that has not connected within
/// [`HAPPY_EYEBALLS_DELAY`] has the next address tried beside it (one
/// that fails has it tried at once), the first to connect runs with
/// `protocol` and the others are closed. If every one fails,
/// [`Protocol::connection_failed`] gets one error listing each address's;
/// `timeout` (all of it) ends the race with `TimedOut`.
///
/// # Errors
///
/// `InvalidInput` for an empty `addrs`.
pub fn connect_any<S: 'static>(
    lp: &mut EventLoop<S>,
    addrs: &[SocketAddr],
    timeout: Option<Duration>,
    protocol: impl Protocol<S>,
) -> io::Result<()> {
    connect_any_with(lp, addrs, timeout, HAPPY_EYEBALLS_DELAY, protocol)
}

/// [`connect_any`] with the delay between attempts given.
///
/// # Errors
///
/// As [`connect_any`].
pub fn connect_any_with<S: 'static>(
    lp: &mut EventLoop<S>,
    addrs: &[SocketAddr],
    timeout: Option<Duration>,
    delay: Duration,
    protocol: impl Protocol<S>,
) -> io::Result<()> {
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "connect_any: no address to connect to",
        ));
    }
    let label = addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let race = new_race(label, Box::new(protocol), addrs.to_vec());
    race.borrow_mut().delay = delay;
    arm(lp, &race, timeout);
    start_next(lp, &race);
    // An attempt that failed at once is decided on the loop's next turn.
    let r = race.clone();
    lp.call_soon(move |lp, state| settle(lp, &r, state));
    Ok(())
}

fn split_host_port(to: &str) -> io::Result<(&str, u16)> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{to:?} is not host:port (or [v6 address]:port)"),
        )
    };
    let (host, port) = to.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host, port.parse().map_err(|_| bad())?))
}

/// The addresses in the order RFC 8305 races them: alternating between
/// the families, starting with the family of the resolver's first choice.
fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let first_v6 = addrs[0].is_ipv6();
    let (mut a, mut b): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|x| x.is_ipv6() == first_v6);
    a.reverse();
    b.reverse();
    let mut out = Vec::with_capacity(a.len() + b.len());
    while let Some(x) = a.pop() {
        out.push(x);
        if let Some(y) = b.pop() {
            out.push(y);
        }
    }
    out.extend(b.into_iter().rev());
    out
}

fn new_race<S>(label: String, protocol: Box<dyn Protocol<S>>, addrs: Vec<SocketAddr>) -> Shared<S> {
    Rc::new(RefCell::new(Race {
        label,
        protocol: Some(protocol),
        addrs,
        next: 0,
        attempts: Vec::new(),
        errors: Vec::new(),
        delay: HAPPY_EYEBALLS_DELAY,
        stagger: None,
        deadline: None,
        decided: false,
    }))
}

/// Sets the deadline of the whole connect.
fn arm<S: 'static>(lp: &mut EventLoop<S>, race: &Shared<S>, timeout: Option<Duration>) {
    let Some(timeout) = timeout else { return };
    let r = race.clone();
    let timer = lp.call_later(timeout, move |lp, state| {
        if r.borrow().decided {
            return;
        }
        r.borrow_mut().deadline = None;
        let label = r.borrow().label.clone();
        let e = io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connecting to {label}: timed out after {timeout:?}"),
        );
        fail(lp, &r, e, state);
    });
    race.borrow_mut().deadline = Some(timer);
}

/// Starts the next address's attempt (and the timer for the one after).
fn start_next<S: 'static>(lp: &mut EventLoop<S>, race: &Shared<S>) {
    loop {
        let addr = {
            let mut r = race.borrow_mut();
            if r.decided || r.next >= r.addrs.len() {
                return;
            }
            r.next += 1;
            r.addrs[r.next - 1]
        };
        match attempt(lp, race, addr) {
            Ok(()) => break,
            Err(e) => race.borrow_mut().errors.push((addr, e)),
        }
    }
    let more = {
        let r = race.borrow();
        r.next < r.addrs.len()
    };
    if more {
        let delay = race.borrow().delay;
        let r = race.clone();
        let timer = lp.call_later(delay, move |lp, _| {
            r.borrow_mut().stagger = None;
            start_next(lp, &r);
        });
        if let Some(old) = race.borrow_mut().stagger.replace(timer) {
            lp.cancel(old);
        }
    }
}

/// One address's non-blocking connect, watched for its end.
fn attempt<S: 'static>(
    lp: &mut EventLoop<S>,
    race: &Shared<S>,
    addr: SocketAddr,
) -> io::Result<()> {
    let sa = SockAddr::inet(&addr);
    let fd = sys::stream_socket(sa.family())?;
    sys::start_connect(fd.as_raw_fd(), &sa)?;
    log::trace!("stream=connect attempt={addr}");
    let r = race.clone();
    let id = lp.add(
        TcpStream::from(fd),
        Interest::WRITABLE,
        move |lp, sock, ev, state| {
            let result = match sys::take_socket_error(sock.as_raw_fd()) {
                Ok(None) => sock.try_clone(),
                Ok(Some(e)) | Err(e) => Err(e),
            };
            r.borrow_mut().attempts.retain(|&a| a != ev.id());
            match result {
                Ok(winner) => won(lp, &r, winner, addr),
                Err(e) => {
                    log::debug!("stream=connect attempt={addr} error={e}");
                    r.borrow_mut().errors.push((addr, e));
                    // A failure starts the next attempt at once.
                    start_next(lp, &r);
                    settle(lp, &r, state);
                }
            }
            PostAction::Remove
        },
    )?;
    race.borrow_mut().attempts.push(id);
    Ok(())
}

/// Ends the race for good: no more attempts, no timers.
fn decide<S: 'static>(lp: &mut EventLoop<S>, race: &Shared<S>) -> Option<Box<dyn Protocol<S>>> {
    let (attempts, stagger, deadline, protocol) = {
        let mut r = race.borrow_mut();
        if r.decided {
            return None;
        }
        r.decided = true;
        (
            std::mem::take(&mut r.attempts),
            r.stagger.take(),
            r.deadline.take(),
            r.protocol.take(),
        )
    };
    for id in attempts {
        let _ = lp.discard(id);
    }
    for timer in [stagger, deadline].into_iter().flatten() {
        lp.cancel(timer);
    }
    protocol
}

fn won<S: 'static>(lp: &mut EventLoop<S>, race: &Shared<S>, sock: TcpStream, addr: SocketAddr) {
    let Some(protocol) = decide(lp, race) else {
        return;
    };
    log::debug!("stream=connect to={addr} connected");
    let registered = sock.set_nonblocking(true).and_then(|()| {
        connection::register(
            lp,
            StdSocket::Tcp(sock).into_sock(),
            protocol,
            None,
            None,
            CloseSettings::default(),
        )
    });
    if let Err(e) = registered {
        // The protocol went with the failed registration; nothing to tell.
        log::warn!("stream=connect to={addr} not registered: {e}");
    }
}

/// Fails the race if nothing is left to try.
fn settle<S: 'static>(lp: &mut EventLoop<S>, race: &Shared<S>, state: &mut S) {
    let over = {
        let r = race.borrow();
        !r.decided && r.attempts.is_empty() && r.next >= r.addrs.len() && !r.addrs.is_empty()
    };
    if !over {
        return;
    }
    let e = {
        let r = race.borrow();
        let mut msg = format!("connecting to {}: ", r.label);
        if r.errors.len() == 1 {
            let (a, e) = &r.errors[0];
            let _ = write!(msg, "{a}: {e}");
        } else {
            let _ = write!(msg, "{} addresses failed: ", r.errors.len());
            for (i, (a, e)) in r.errors.iter().enumerate() {
                let _ = write!(msg, "{}{a}: {e}", if i > 0 { "; " } else { "" });
            }
        }
        let kind = r
            .errors
            .last()
            .map_or(io::ErrorKind::Other, |(_, e)| e.kind());
        io::Error::new(kind, msg)
    };
    fail(lp, race, e, state);
}

fn fail<S: 'static>(lp: &mut EventLoop<S>, race: &Shared<S>, e: io::Error, state: &mut S) {
    if let Some(mut protocol) = decide(lp, race) {
        log::debug!("stream=connect failed error={e}");
        protocol.connection_failed(e, state);
    }
}

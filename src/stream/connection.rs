//! A connection as a loop source: its id, the readiness callback and read
//! path, and the contexts protocol callbacks run in.
//!
//! Every protocol callback runs in one of the connection's own contexts —
//! its readiness callback, one of its timers, or a deferred "settle" queued
//! with `call_soon` — and each of those ends in [`Connection::settle`],
//! which delivers flow-control callbacks, half-closes, finishes the
//! connection (calling `connection_lost` once) or sets the loop interest
//! to exactly what is left to do. What other connections do to this one
//! ([`send`](super::send), [`close`](super::close),
//! [`abort`](super::abort)) changes its buffers and flags, then queues a
//! settle: its callbacks never run inside someone else's.

use std::cell::RefCell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::rc::Rc;
use std::time::Duration;

use super::buffer::*;
use super::socket::Sock;
use super::transport::Transport;
use super::{Protocol, StreamSocket};
use crate::{EventLoop, Interest, PostAction, SourceEvent, SourceId, TimerId};

/// At most this much is read per readiness event.
const READ_SIZE: usize = 64 * 1024;

/// The read buffer every connection of a thread shares: reads land here
/// and are handed to `data_received`, so 10,000 idle connections hold no
/// read buffer each. Each connection keeps a reference, which costs less
/// to reach per read than the thread-local.
type ReadBuf = Rc<RefCell<Vec<u8>>>;

thread_local! {
    static READ_BUF: ReadBuf = Rc::default();
}

/// Identifies a connection of a loop: to write to it, close or abort it
/// from elsewhere (another connection's callback, a timer, a signal
/// handler), or to keep it in a list.
pub struct ConnId<S>(pub(super) SourceId<Connection<S>>);

impl<S> Clone for ConnId<S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for ConnId<S> {}

impl<S> PartialEq for ConnId<S> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl<S> Eq for ConnId<S> {}

/// Ordered as their loop's [`SourceId`]s: a `BTreeSet` of connections
/// iterates in one order, run after run.
impl<S> PartialOrd for ConnId<S> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<S> Ord for ConnId<S> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl<S> Hash for ConnId<S> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state)
    }
}

impl<S> fmt::Debug for ConnId<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({:?})", self.0.token())
    }
}

/// Whoever made a connection and wants to know when it ends: a server
/// (which counts its connections). The connection knows it only by this
/// hook, so that the stream layer's parts depend one way: the server on
/// the connection, never back.
pub(super) trait Owner<S> {
    /// The connection `id` ended: `connection_lost` has run.
    fn connection_gone(self: Rc<Self>, lp: &mut EventLoop<S>, id: ConnId<S>, state: &mut S);
}

/// The loop source of one connection.
pub(crate) struct Connection<S> {
    pub(super) io: Io<S>,
    protocol: Box<dyn Protocol<S>>,
    /// The thread's read buffer (beside `io`, so that a read borrows it
    /// while the transport borrows `io`).
    read_buf: ReadBuf,
}

impl<S> AsFd for Connection<S> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.sock.as_fd()
    }
}

impl<S: 'static> Connection<S> {
    fn new(sock: Sock, protocol: Box<dyn Protocol<S>>) -> Connection<S> {
        Connection {
            io: Io::new(sock),
            protocol,
            read_buf: READ_BUF.with(Rc::clone),
        }
    }

    /// Runs `f` with the protocol and a transport.
    pub(super) fn call<R>(
        &mut self,
        lp: &mut EventLoop<S>,
        id: ConnId<S>,
        f: impl FnOnce(&mut dyn Protocol<S>, &mut Transport<'_, S>) -> R,
    ) -> R {
        let Connection { io, protocol, .. } = self;
        let mut t = Transport { lp, io, id };
        f(&mut **protocol, &mut t)
    }

    /// One context of the connection: `connection_made` if it has not run,
    /// then `f` unless the connection is already ending, then
    /// [`settle`](Connection::settle). Returns whether it lives on.
    fn drive(
        &mut self,
        lp: &mut EventLoop<S>,
        id: ConnId<S>,
        state: &mut S,
        f: impl FnOnce(&mut dyn Protocol<S>, &mut Transport<'_, S>, &mut S),
    ) -> bool {
        if self.io.is(LOST) {
            return false;
        }
        if !self.io.is(MADE) {
            if self.io.is(SESSION) && !self.io.handshake() {
                return self.settle(lp, id, state);
            }
            self.io.set(MADE);
            if self.io.is(UPGRADING) {
                self.io.unset(UPGRADING);
                self.call(lp, id, |p, t| p.tls_started(t, state));
            } else {
                self.call(lp, id, |p, t| p.connection_made(t, state));
            }
            if self.io.is(SESSION) && !self.io.finishing() && self.io.sock.holds_input() {
                // The handshake's last flight brought data that the
                // session holds decrypted: the socket may not be
                // readable again for it.
                let read_buf = Rc::clone(&self.read_buf);
                self.call(lp, id, |p, t| {
                    serve_event(p, t, &read_buf, true, false, state)
                });
            }
        }
        if !self.io.finishing() {
            self.call(lp, id, |p, t| f(p, t, state));
        }
        self.settle(lp, id, state)
    }

    /// Delivers what the callbacks left pending and decides what is next:
    /// pause/resume-writing (strictly alternating), the half-close once the
    /// buffer is empty, the end of the connection, or the interest the loop
    /// should watch. Returns whether the connection lives on.
    #[inline]
    fn settle(&mut self, lp: &mut EventLoop<S>, id: ConnId<S>, state: &mut S) -> bool {
        // The context is over: its next write goes straight out again.
        self.io.flags &= !WROTE;
        self.io.is_steady() || self.settle_changed(lp, id, state)
    }

    /// `settle` when the connection is not simply reading.
    #[inline(never)]
    fn settle_changed(&mut self, lp: &mut EventLoop<S>, id: ConnId<S>, state: &mut S) -> bool {
        // What the context's writes held back goes out together now.
        self.io.send_held();
        while !self.io.finishing() && self.io.is(WRITING_PAUSED) != self.io.is(TOLD_PAUSED) {
            let pause = self.io.is(WRITING_PAUSED);
            self.io.put(TOLD_PAUSED, pause);
            self.call(lp, id, |p, t| {
                if pause {
                    p.pause_writing(t, state)
                } else {
                    p.resume_writing(t, state)
                }
            });
            self.io.flags &= !WROTE;
            self.io.send_held();
        }
        let io = &mut self.io;
        let flushed = !io.unsent() && !io.finishing();
        if io.is(CLOSING) && !flushed && !io.close_timed && !io.finishing() {
            if let Some(timeout) = io.close_timeout {
                io.close_timed = true;
                io.timers.push(close_deadline(lp, id, timeout));
            }
        }
        if (io.is(EOF_WANTED) || io.is(CLOSING)) && !io.is(EOF_SENT) && flushed {
            io.set(EOF_SENT);
            if io.is(CLOSING) && (io.is(EOF_RECEIVED) || io.linger.is_zero()) {
                // Closed right below: the close itself sends the FIN, and
                // there is no EOF to wait for (it came, or no wait).
                io.set(LINGER_OVER);
                if io.is(SESSION) {
                    // A session still says goodbye (TLS: close_notify),
                    // and the close waits until that is sent.
                    if let Err(e) = io.sock.end_session() {
                        io.shutdown_failed(e);
                    }
                }
            } else if let Err(e) = io.sock.shutdown_write() {
                io.shutdown_failed(e);
            }
            if io.is(CLOSING) && !io.is(EOF_RECEIVED | LINGER_OVER) && !io.finishing() {
                let linger = io.linger;
                io.timers.push(linger_timer(lp, id, linger));
            }
        }
        if io.flags & (SESSION | MADE | READING | EOF_RECEIVED | CLOSING | READ_QUEUED)
            == SESSION | MADE | READING
            && io.sock.holds_input()
        {
            io.set(READ_QUEUED);
            queue_read(lp, id);
        }
        let done = io.finishing()
            || (io.is(CLOSING) && !io.unsent() && (io.is(EOF_RECEIVED) || io.is(LINGER_OVER)))
            || (io.is(EOF_RECEIVED) && io.is(EOF_SENT) && !io.unsent());
        if !done {
            let want = io.wanted();
            let watching = io.watching();
            if want == watching {
                return true;
            }
            let res = match want {
                None => lp.disable(id.0),
                Some(i) if watching.is_none() => lp.enable(id.0, i),
                Some(i) => lp.modify(id.0, i),
            };
            match res {
                Ok(()) => {
                    io.set_watching(want);
                    return true;
                }
                Err(e) => io.fail(e),
            }
        }
        self.finish(lp, id, state);
        false
    }

    /// The end: timers cancelled, `connection_lost` once, the owner told.
    /// The caller removes the source.
    fn finish(&mut self, lp: &mut EventLoop<S>, id: ConnId<S>, state: &mut S) {
        let io = &mut self.io;
        io.set(LOST);
        for timer in io.timers.drain(..) {
            lp.cancel(timer);
        }
        if let Some((timer, _)) = io.idle.take() {
            lp.cancel(timer);
        }
        if io.pending() > 0 {
            log::debug!("stream=lost dropped_bytes={}", io.pending());
        }
        io.out = Vec::new();
        io.sent = 0;
        let error = io.error.take();
        let owner = io.owner.take();
        if io.is(MADE | UPGRADING) {
            self.call(lp, id, |p, t| p.connection_lost(t, error, state));
        } else {
            // Ended in the socket's handshake (TLS): a client's connect
            // failed; a server's peer never became a connection.
            let e = error.unwrap_or_else(|| {
                io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "closed during the handshake",
                )
            });
            if io.is(CLIENT) {
                self.protocol.connection_failed(e, state);
            } else {
                log::debug!("stream=handshake failed error={e}");
            }
        }
        if let Some(owner) = owner {
            owner.connection_gone(lp, id, state);
        }
    }

    /// A client connect ended (`error` is `None` on success).
    fn connected(
        &mut self,
        lp: &mut EventLoop<S>,
        id: ConnId<S>,
        error: Option<io::Error>,
        state: &mut S,
    ) -> bool {
        self.io.unset(CONNECTING);
        if !self.io.is(SESSION) || error.is_some() {
            // (A session's deadline covers its handshake too.)
            for timer in self.io.timers.drain(..) {
                lp.cancel(timer);
            }
        }
        if let Some(e) = error {
            self.io.set(LOST);
            self.protocol.connection_failed(e, state);
            return false;
        }
        log::trace!("stream=connected");
        self.drive(lp, id, state, |_, t, _| t.io.flush())
    }

    /// The loop callback: readiness of the socket.
    #[inline(always)]
    fn on_ready(
        &mut self,
        lp: &mut EventLoop<S>,
        ev: SourceEvent<Connection<S>>,
        state: &mut S,
    ) -> PostAction {
        let id = ConnId(ev.id());
        let (readable, writable) = (ev.is_readable(), ev.is_writable());
        let alive = if self.io.flags & HOT_MASK == HOT {
            // The usual event, of a connection that is up and reading:
            // `drive` and `serve_event` without their checks.
            let Connection {
                io,
                protocol,
                read_buf,
            } = self;
            // A failed flush ends the connection: nothing more to read.
            let failed = writable && {
                io.flush();
                io.is(FAILED)
            };
            if readable && !failed {
                let mut t = Transport { lp, io, id };
                read_once(&mut **protocol, &mut t, read_buf, state);
            }
            self.settle(lp, id, state)
        } else if self.io.flags & (CONNECTING | MADE | LOST) == MADE {
            if !self.io.finishing() {
                let Connection {
                    io,
                    protocol,
                    read_buf,
                } = self;
                let mut t = Transport { lp, io, id };
                serve_event(&mut **protocol, &mut t, read_buf, readable, writable, state);
            }
            self.settle(lp, id, state)
        } else {
            self.on_ready_rare(lp, id, readable, writable, state)
        };
        if alive {
            PostAction::Continue
        } else {
            PostAction::Remove
        }
    }

    /// `on_ready` for a connecting client, before `connection_made`, or
    /// after the end.
    #[cold]
    #[inline(never)]
    fn on_ready_rare(
        &mut self,
        lp: &mut EventLoop<S>,
        id: ConnId<S>,
        readable: bool,
        writable: bool,
        state: &mut S,
    ) -> bool {
        if self.io.is(CONNECTING) {
            let error = match self.io.connect_failed.take() {
                Some(e) => Some(e),
                None => crate::sys::take_socket_error(self.io.sock.as_fd().as_raw_fd())
                    .unwrap_or_else(Some),
            };
            self.connected(lp, id, error, state)
        } else {
            let read_buf = Rc::clone(&self.read_buf);
            self.drive(lp, id, state, |p, t, state| {
                serve_event(p, t, &read_buf, readable, writable, state)
            })
        }
    }

    /// Queues a settle (and `connection_made`) for the end of this loop
    /// iteration, after something outside the connection's own callbacks
    /// changed it.
    pub(super) fn queue_settle(&mut self, lp: &mut EventLoop<S>, id: ConnId<S>) {
        if self.io.is(SETTLE_QUEUED) || self.io.is(LOST) {
            return;
        }
        self.io.set(SETTLE_QUEUED);
        lp.call_soon(move |lp, state| {
            run_conn(lp, id, |lp, conn| {
                conn.io.unset(SETTLE_QUEUED);
                if conn.io.is(CONNECTING) {
                    match conn.io.connect_failed.take() {
                        Some(e) => conn.connected(lp, id, Some(e), state),
                        None => true,
                    }
                } else {
                    conn.drive(lp, id, state, |_, _, _| {})
                }
            });
        });
    }
}

/// What readiness asks of a connection that is up: send what is pending,
/// then read once, or discard input while lingering after a close.
#[inline(never)]
fn serve_event<S: 'static>(
    p: &mut dyn Protocol<S>,
    t: &mut Transport<'_, S>,
    read_buf: &RefCell<Vec<u8>>,
    readable: bool,
    writable: bool,
    state: &mut S,
) {
    if writable {
        t.io.flush();
    }
    if !readable {
        return;
    }
    if t.io.flags & (CLOSING | EOF_SENT) == CLOSING | EOF_SENT {
        t.io.discard_input(read_buf);
    } else if t.io.flags & (READING | EOF_RECEIVED | CLOSING | LOST | ABORTED | FAILED) == READING {
        read_once(p, t, read_buf, state);
    }
}

/// Reads once (fairness under level-triggering) into the shared buffer.
#[inline(always)]
fn read_once<S: 'static>(
    p: &mut dyn Protocol<S>,
    t: &mut Transport<'_, S>,
    read_buf: &RefCell<Vec<u8>>,
    state: &mut S,
) {
    let Ok(mut shared) = read_buf.try_borrow_mut() else {
        // Only if a read could nest in another, which none does.
        return read_into(p, t, read_buffer(&mut Vec::new()), state);
    };
    let buf = if shared.len() == READ_SIZE {
        &mut shared[..]
    } else {
        read_buffer(&mut shared)
    };
    read_into(p, t, buf, state);
}

/// `buf`, grown to the read size.
#[cold]
pub(super) fn read_buffer(buf: &mut Vec<u8>) -> &mut [u8] {
    buf.resize(READ_SIZE, 0);
    buf
}

#[inline(always)]
fn read_into<S: 'static>(
    p: &mut dyn Protocol<S>,
    t: &mut Transport<'_, S>,
    buf: &mut [u8],
    state: &mut S,
) {
    match t.io.sock.recv_data(buf) {
        Ok(n) => {
            if let Some((timer, d)) = t.io.idle {
                t.lp.reset_timer(timer, d);
            }
            p.data_received(t, &buf[..n], state);
        }
        Err(res) => read_ended(p, t, res, state),
    }
}

/// `read_once` on EOF or an error.
#[cold]
#[inline(never)]
fn read_ended<S: 'static>(
    p: &mut dyn Protocol<S>,
    t: &mut Transport<'_, S>,
    res: io::Result<usize>,
    state: &mut S,
) {
    match res {
        Ok(_) => {
            t.io.set(EOF_RECEIVED);
            log::trace!("stream=eof");
            if !p.eof_received(t, state) {
                t.close();
            }
        }
        Err(e) if is_retry(&e) => {}
        Err(e) => t.io.fail(e),
    }
}

/// Reads, at the end of this loop iteration, what the session holds
/// decrypted (the socket may not be readable again for it).
#[cold]
fn queue_read<S: 'static>(lp: &mut EventLoop<S>, id: ConnId<S>) {
    lp.call_soon(move |lp, state| {
        run_conn(lp, id, |lp, conn| {
            conn.io.unset(READ_QUEUED);
            let read_buf = Rc::clone(&conn.read_buf);
            conn.drive(lp, id, state, |p, t, state| {
                serve_event(p, t, &read_buf, true, false, state)
            })
        });
    });
}

/// Runs `f` in the connection's own context from a timer: nothing if the
/// connection is gone.
pub(super) fn in_own_context<S: 'static>(
    lp: &mut EventLoop<S>,
    id: ConnId<S>,
    state: &mut S,
    f: impl FnOnce(&mut dyn Protocol<S>, &mut Transport<'_, S>, &mut S),
) {
    run_conn(lp, id, |lp, conn| {
        conn.io.is(CONNECTING) || conn.drive(lp, id, state, f)
    });
}

/// Runs `f` on a connection in one of its own contexts (a timer, a
/// deferred settle), and removes it from the loop if `f` says it ended.
/// Nothing if the connection is gone.
fn run_conn<S: 'static>(
    lp: &mut EventLoop<S>,
    id: ConnId<S>,
    f: impl FnOnce(&mut EventLoop<S>, &mut Connection<S>) -> bool,
) {
    lp.with_source(id.0, |lp, conn| {
        if !f(lp, conn) {
            let _ = lp.discard(id.0);
        }
    });
}

/// How a connection's close ends (see [`Transport::set_close_linger`] and
/// [`Transport::set_close_timeout`]).
#[derive(Clone, Copy)]
pub(super) struct CloseSettings {
    pub(super) linger: Duration,
    pub(super) timeout: Option<Duration>,
}

impl Default for CloseSettings {
    fn default() -> CloseSettings {
        CloseSettings {
            linger: LINGER,
            timeout: None,
        }
    }
}

/// Registers a connection with the loop and queues its `connection_made`.
pub(super) fn register<S: 'static>(
    lp: &mut EventLoop<S>,
    sock: Sock,
    protocol: Box<dyn Protocol<S>>,
    connecting: Option<Option<io::Error>>,
    owner: Option<Rc<dyn Owner<S>>>,
    closing: CloseSettings,
) -> io::Result<ConnId<S>> {
    let mut conn = Connection::new(sock, protocol);
    conn.io.linger = closing.linger;
    conn.io.close_timeout = closing.timeout;
    if owner.is_none() {
        // No server to count it: the protocol hears of a failed handshake.
        conn.io.set(CLIENT);
    }
    conn.io.owner = owner;
    let interest = match connecting {
        Some(failed) => {
            conn.io.set(CONNECTING);
            conn.io.connect_failed = failed;
            Interest::WRITABLE
        }
        None => Interest::READABLE,
    };
    conn.io.set_watching(Some(interest));
    let id = lp.add(conn, interest, |lp, conn, ev, state| {
        conn.on_ready(lp, ev, state)
    })?;
    let id = ConnId(id);
    lp.with_source(id.0, |lp, conn| conn.queue_settle(lp, id));
    log::trace!("stream=attach conn={id:?}");
    Ok(id)
}

/// Adds a connected socket to the loop as a connection run by `protocol`
/// (a socket pair, a socket accepted elsewhere, a wrapper that injects
/// faults). `connection_made` runs before any other callback, at the
/// latest at the end of the current loop iteration. The socket must be
/// non-blocking.
///
/// # Errors
///
/// As [`EventLoop::add`]; the socket is dropped.
///
/// # Examples
///
/// ```
/// use muxloop::stream::{self, Protocol, Transport};
/// use muxloop::EventLoop;
/// use std::io::Read;
/// use std::os::unix::net::UnixStream;
/// use std::time::Duration;
///
/// struct Hello;
/// impl Protocol<()> for Hello {
///     fn connection_made(&mut self, t: &mut Transport<'_, ()>, _: &mut ()) {
///         t.write(b"hello");
///         t.close(); // sent first, then closed
///     }
///     fn data_received(&mut self, _: &mut Transport<'_, ()>, _: &[u8], _: &mut ()) {}
/// }
///
/// let (a, mut b) = UnixStream::pair()?;
/// a.set_nonblocking(true)?;
/// let mut lp = EventLoop::<()>::new()?;
/// stream::attach(&mut lp, a, Hello)?;
/// lp.run_once(Some(Duration::ZERO), &mut ())?;
/// let mut got = String::new();
/// b.read_to_string(&mut got)?;
/// assert_eq!(got, "hello");
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn attach<S: 'static>(
    lp: &mut EventLoop<S>,
    socket: impl StreamSocket,
    protocol: impl Protocol<S>,
) -> io::Result<ConnId<S>> {
    register(
        lp,
        Sock::of(socket),
        Box::new(protocol),
        None,
        None,
        CloseSettings::default(),
    )
}

/// [`attach`] with the protocol already boxed (for the crate's own
/// connectors: the simulation's).
pub(crate) fn attach_boxed<S: 'static>(
    lp: &mut EventLoop<S>,
    socket: impl StreamSocket,
    protocol: Box<dyn Protocol<S>>,
) -> io::Result<ConnId<S>> {
    register(
        lp,
        Sock::of(socket),
        protocol,
        None,
        None,
        CloseSettings::default(),
    )
}

/// Runs `f` on a connection from outside its own callbacks, then queues
/// its settle. `None` if it is gone, or is lent to its own running
/// callback (which has its transport).
pub(super) fn outside<S: 'static, R>(
    lp: &mut EventLoop<S>,
    id: ConnId<S>,
    f: impl FnOnce(&mut Io<S>) -> R,
) -> Option<R> {
    lp.with_source(id.0, |lp, conn| {
        let res = f(&mut conn.io);
        conn.queue_settle(lp, id);
        res
    })
}

/// Runs `f` on a connection from outside; if it is busy in its own
/// callback, once that callback has returned.
pub(super) fn outside_or_later<S: 'static>(
    lp: &mut EventLoop<S>,
    id: ConnId<S>,
    f: impl FnOnce(&mut Io<S>) + 'static,
) {
    // Registered, but not lendable: its own callback has it.
    let busy = lp.source(id.0).is_none() && lp.interest(id.0).is_some();
    if busy {
        lp.call_soon(move |lp, _| {
            outside(lp, id, f);
        });
    } else {
        outside(lp, id, f);
    }
}

/// Ends the wait for the peer's EOF after a close, `linger` from now.
pub(super) fn linger_timer<S: 'static>(
    lp: &mut EventLoop<S>,
    id: ConnId<S>,
    linger: Duration,
) -> TimerId {
    lp.call_later(linger, move |lp, state| {
        run_conn(lp, id, |lp, conn| {
            conn.io.set(LINGER_OVER);
            conn.settle(lp, id, state)
        });
    })
}

/// Aborts a close that has not sent everything `timeout` from now.
pub(super) fn close_deadline<S: 'static>(
    lp: &mut EventLoop<S>,
    id: ConnId<S>,
    timeout: Duration,
) -> TimerId {
    lp.call_later(timeout, move |lp, state| {
        run_conn(lp, id, |lp, conn| {
            let left = conn.io.pending();
            if left > 0 && !conn.io.is(LOST) {
                conn.io.fail(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("close timed out after {timeout:?} with {left} bytes unsent (the peer does not read)"),
                ));
            }
            conn.settle(lp, id, state)
        });
    })
}

/// Fails a client connect still in progress after `timeout`.
pub(super) fn connect_timeout<S: 'static>(lp: &mut EventLoop<S>, id: ConnId<S>, timeout: Duration) {
    let timer = lp.call_later(timeout, move |lp, state| {
        run_conn(lp, id, |lp, conn| {
            if !conn.io.is(CONNECTING) {
                return true;
            }
            let e = io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect timed out after {timeout:?}"),
            );
            conn.connected(lp, id, Some(e), state)
        });
    });
    lp.with_source(id.0, |_, conn| conn.io.timers.push(timer));
}

/// Ends a connection whose connect and session handshake (TLS) are not
/// both done `timeout` from now.
#[cfg(feature = "tls")]
pub(super) fn handshake_deadline<S: 'static>(
    lp: &mut EventLoop<S>,
    id: ConnId<S>,
    timeout: Duration,
) {
    let timer = lp.call_later(timeout, move |lp, state| {
        run_conn(lp, id, |lp, conn| {
            if conn.io.is(MADE | LOST) {
                return true;
            }
            if conn.io.is(CONNECTING) {
                let e = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect timed out after {timeout:?}"),
                );
                return conn.connected(lp, id, Some(e), state);
            }
            conn.io.fail(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("TLS handshake not done after {timeout:?}"),
            ));
            conn.settle(lp, id, state)
        });
    });
    lp.with_source(id.0, |_, conn| conn.io.timers.push(timer));
}

//! The public face of a connection: the [`Transport`] every protocol
//! callback gets, and the functions that reach a connection from outside
//! its callbacks ([`with_transport`], [`send`], [`close`], [`abort`]).

use std::io;
use std::time::Duration;

use super::buffer::*;
use super::connection::{ConnId, in_own_context, outside, outside_or_later};
use super::{Addr, StreamSocket};
use crate::{EventLoop, TimerId};

/// What every protocol callback gets: the connection's transport, and the
/// loop through it.
///
/// Writes never block and are never dropped or reordered: [`write`]
/// sends at once what the socket takes when nothing is pending and buffers
/// the rest, which is sent as the socket drains. Flow control is by
/// watermarks ([`set_write_buffer_limits`]): the protocol is told to
/// [`pause_writing`] when the buffer goes above the high mark and to
/// [`resume_writing`] when it is back at the low mark.
///
/// [`write`]: Transport::write
/// [`set_write_buffer_limits`]: Transport::set_write_buffer_limits
/// [`pause_writing`]: super::Protocol::pause_writing
/// [`resume_writing`]: super::Protocol::resume_writing
pub struct Transport<'a, S> {
    pub(super) lp: &'a mut EventLoop<S>,
    pub(super) io: &'a mut Io<S>,
    pub(super) id: ConnId<S>,
}

impl<S> Transport<'_, S> {
    /// This connection's id (for other connections to write to it, or to
    /// keep it in a list).
    pub fn id(&self) -> ConnId<S> {
        self.id
    }

    /// The loop, to schedule timers, stop, reach other sources.
    pub fn event_loop(&mut self) -> &mut EventLoop<S> {
        self.lp
    }

    /// Writes `data`. A callback's first write goes to the socket at once
    /// if nothing is pending (no copy); later writes of the same callback
    /// are buffered and sent together, in one system call, when the
    /// callback returns — a protocol answering sixteen pipelined requests
    /// with sixteen writes makes two sends, not sixteen. Order, flow
    /// control and [`write_buffer_size`](Transport::write_buffer_size) are
    /// as if each write were sent at once; [`flush`](Transport::flush)
    /// sends earlier. What the socket does not take waits in the write
    /// buffer. Ignored (and logged at debug level) once the transport is
    /// closing, aborted, lost or after [`write_eof`](Transport::write_eof);
    /// see [`is_closing`](Transport::is_closing).
    pub fn write(&mut self, data: &[u8]) {
        self.io.write_one(data);
    }

    /// Writes several buffers as one (one `writev` when nothing is
    /// pending), as [`write`](Transport::write).
    pub fn write_vectored(&mut self, bufs: &[&[u8]]) {
        self.io.write(bufs);
    }

    /// Bytes written but not yet sent: what the socket has not taken.
    /// (Writes after a callback's first are held and sent together when
    /// it returns; asking offers them to the socket first, so the answer
    /// is the one sending each write at once would give.)
    pub fn write_buffer_size(&mut self) -> usize {
        self.io.send_held();
        self.io.pending()
    }

    /// Sends what this callback has written so far now, instead of when
    /// it returns (see [`write`](Transport::write)): for a write that must
    /// reach the peer before something slow that the callback does next.
    /// What the socket does not take stays buffered, as always.
    pub fn flush(&mut self) {
        self.io.send_held();
    }

    /// The watermarks: `pause_writing` when the buffer goes above `high`,
    /// `resume_writing` when it is back at or below `low`. Any pair with
    /// `low <= high` is valid, `0` included (pause whenever anything is
    /// buffered). Defaults: 64 KiB and 16 KiB, as asyncio.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `low > high`.
    pub fn set_write_buffer_limits(&mut self, high: usize, low: usize) -> io::Result<()> {
        if low > high {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("write buffer limits: low ({low}) is above high ({high})"),
            ));
        }
        let io = &mut *self.io;
        io.high = high;
        io.low = low;
        if !io.is(WRITING_PAUSED) && io.pending() > high {
            io.set(WRITING_PAUSED);
        } else if io.is(WRITING_PAUSED) && io.pending() <= low {
            io.unset(WRITING_PAUSED);
        }
        Ok(())
    }

    /// The watermarks, `(high, low)`.
    pub fn write_buffer_limits(&self) -> (usize, usize) {
        (self.io.high, self.io.low)
    }

    /// Whether the write buffer went above the high-water mark and has not
    /// yet drained to the low one: `pause_writing` is due (it is called
    /// when the current callback returns) or in effect. A protocol that
    /// answers buffered requests in a loop (pipelining) checks it after
    /// each answer, since `pause_writing` cannot interrupt the loop; see
    /// the streams guide.
    ///
    /// # Examples
    ///
    /// ```
    /// use muxloop::stream::{Protocol, Transport};
    ///
    /// /// Answers each line; stops at the high mark, leaving the rest of
    /// /// the buffer for `resume_writing`.
    /// struct Lines {
    ///     buf: Vec<u8>,
    /// }
    ///
    /// impl Lines {
    ///     fn answer(&mut self, t: &mut Transport<'_, ()>) {
    ///         while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
    ///             let line: Vec<u8> = self.buf.drain(..=end).collect();
    ///             t.write(&line);
    ///             if t.is_writing_paused() {
    ///                 t.pause_reading();
    ///                 return;
    ///             }
    ///         }
    ///     }
    /// }
    ///
    /// impl Protocol<()> for Lines {
    ///     fn data_received(&mut self, t: &mut Transport<'_, ()>, data: &[u8], _: &mut ()) {
    ///         self.buf.extend_from_slice(data);
    ///         self.answer(t);
    ///     }
    ///
    ///     fn resume_writing(&mut self, t: &mut Transport<'_, ()>, _: &mut ()) {
    ///         self.answer(t); // the backlog first: no new data may come
    ///         if !t.is_writing_paused() {
    ///             t.resume_reading();
    ///         }
    ///     }
    /// }
    /// ```
    pub fn is_writing_paused(&self) -> bool {
        self.io.is(WRITING_PAUSED)
    }

    /// Stops reading until [`resume_reading`](Transport::resume_reading).
    /// Idempotent; data the peer sends meanwhile waits in the kernel (and
    /// the peer is slowed down by TCP's own flow control).
    pub fn pause_reading(&mut self) {
        self.io.unset(READING);
    }

    /// Reads again after [`pause_reading`](Transport::pause_reading);
    /// idempotent. Nothing that arrived meanwhile is lost: the loop is
    /// level-triggered, so waiting data is reported at once.
    pub fn resume_reading(&mut self) {
        self.io.set(READING);
    }

    /// Whether the transport reads (not paused, peer not at EOF, not
    /// closing).
    pub fn is_reading(&self) -> bool {
        self.io.is(READING)
            && !self.io.is(EOF_RECEIVED)
            && !self.io.is(CLOSING)
            && !self.io.is(LOST)
    }

    /// Half-closes: once everything written is sent, the writing side is
    /// shut down and the peer reads EOF. Reading goes on. Later writes are
    /// ignored. If the peer already sent EOF, the connection then ends.
    pub fn write_eof(&mut self) {
        self.io.set(EOF_WANTED);
    }

    /// Closes: stops reading, sends everything written, half-closes, then
    /// closes the socket and calls `connection_lost(None)`. Idempotent.
    ///
    /// Between the half-close and the close it waits for the peer's EOF,
    /// at most the [close linger](Transport::set_close_linger) (2 s unless
    /// set), reading and discarding what the peer still sends: closing a
    /// socket with unread input makes the kernel send a reset, which can
    /// destroy data the peer has not read yet — exactly the bytes `close`
    /// promises to deliver. If the peer's EOF came already, the socket is
    /// closed as soon as everything is sent (its FIN is the half-close).
    /// A peer that never reads holds the close until the
    /// [close timeout](Transport::set_close_timeout), if one is set.
    pub fn close(&mut self) {
        self.io.set(CLOSING);
    }

    /// How long a [`close`](Transport::close) waits, once everything is
    /// sent, for the peer's EOF before it closes the socket: 2 s unless
    /// set (or the server's [`ServeOptions::close_linger`]). Zero closes
    /// at once, as asyncio and tokio do — at the risk that a peer which
    /// is still sending gets a reset that destroys the last bytes before
    /// it reads them.
    ///
    /// [`ServeOptions::close_linger`]: super::ServeOptions::close_linger
    pub fn set_close_linger(&mut self, linger: Duration) {
        self.io.linger = linger;
    }

    /// The [close linger](Transport::set_close_linger).
    pub fn close_linger(&self) -> Duration {
        self.io.linger
    }

    /// Bounds how long a [`close`](Transport::close) may take to send what
    /// is buffered: past it, the connection is aborted and
    /// `connection_lost` reports `TimedOut` (a peer that never reads
    /// cannot hold its fd and buffer for ever). `None`, the default (or
    /// the server's [`ServeOptions::close_timeout`]), waits as long as the
    /// peer takes. Counted from the first settle after the close.
    ///
    /// [`ServeOptions::close_timeout`]: super::ServeOptions::close_timeout
    pub fn set_close_timeout(&mut self, timeout: Option<Duration>) {
        self.io.close_timeout = timeout;
    }

    /// Closes now, dropping whatever is not sent yet; `connection_lost`
    /// follows as soon as the callback returns.
    pub fn abort(&mut self) {
        if !self.io.is(LOST) {
            self.io.set(ABORTED);
        }
    }

    /// Whether the transport is closing, aborted, failed or lost: writes
    /// are ignored.
    pub fn is_closing(&self) -> bool {
        self.io.is(CLOSING) || self.io.finishing() || self.io.is(LOST)
    }

    /// The peer's address.
    ///
    /// # Errors
    ///
    /// The kernel's (e.g. `NotConnected` once the peer is gone).
    pub fn peer_addr(&self) -> io::Result<Addr> {
        self.io.sock.peer_addr()
    }

    /// The local address.
    ///
    /// # Errors
    ///
    /// The kernel's.
    pub fn local_addr(&self) -> io::Result<Addr> {
        self.io.sock.local_addr()
    }

    /// The socket, e.g. `t.socket().as_any().downcast_ref::<TcpStream>()`
    /// to set socket options. Read from or write to it only through the
    /// transport.
    pub fn socket(&self) -> &dyn StreamSocket {
        &*self.io.sock
    }

    /// The TLS session, on a connection over TLS (feature `tls`): the
    /// server name the client asked for, the ALPN protocol, the peer's
    /// certificates, the version and cipher suite.
    #[cfg(feature = "tls")]
    pub fn tls(&self) -> Option<&super::tls::TlsStream> {
        self.io.sock.as_any().downcast_ref()
    }

    /// Upgrades the connection to TLS (STARTTLS; asyncio's
    /// `loop.start_tls`), with `session` a fresh `rustls::ServerConnection`
    /// or `ClientConnection` (feature `tls`). What the transport still
    /// buffers is sent first, as plaintext; `received` is what the
    /// protocol was given but has not used, past the plaintext (a peer
    /// that starts its handshake right after its STARTTLS command).
    /// Until the handshake is done no callback is called and writes are
    /// buffered; then [`Protocol::tls_started`](super::Protocol::tls_started)
    /// is, and everything after is encrypted. A handshake that fails
    /// ends the connection (`connection_lost` with the reason).
    ///
    /// # Errors
    ///
    /// `InvalidInput` if the connection already runs TLS, `NotConnected`
    /// if it is closing or ended, `InvalidData` if `received` is not the
    /// start of a handshake; `EMFILE`. After an error the connection is
    /// as it was.
    #[cfg(feature = "tls")]
    pub fn start_tls(
        &mut self,
        session: impl Into<rustls::Connection>,
        received: &[u8],
    ) -> io::Result<()> {
        use super::tls::TlsStream;
        if self.tls().is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "start_tls: the connection already runs TLS",
            ));
        }
        if self.io.refuses_writes().is_some() || !self.io.is(MADE) {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "start_tls: the connection is closing or ended",
            ));
        }
        let mut session = session.into();
        let held = TlsStream::feed(&mut session, received)?;
        self.io.send_held();
        let plain = self.io.out.split_off(self.io.sent);
        self.io.sock.wrap(|inner| {
            let mut tls = TlsStream::over(inner, session);
            tls.upgrading(plain, held);
            Box::new(tls)
        })?;
        self.io.out.clear();
        self.io.sent = 0;
        if self.io.is(WRITING_PAUSED) {
            // The buffer is the session's now: the protocol may write.
            self.io.unset(WRITING_PAUSED);
        }
        self.io.set(SESSION | UPGRADING);
        self.io.unset(MADE);
        log::debug!("stream=start_tls");
        Ok(())
    }
}

impl<S: 'static> Transport<'_, S> {
    /// Writes `data` to another connection of the loop, with that
    /// connection's buffering and flow control (its `pause_writing`, if the
    /// write takes it over its high mark, is called later in this loop
    /// iteration, in that connection's own context). To this connection itself, the same as
    /// [`write`](Transport::write). Returns the other connection's write
    /// buffer size afterwards, so a broadcaster can cut off a consumer
    /// that does not keep up. (Writes to one connection from the same
    /// loop iteration after the first are held and sent together at its
    /// end; the size counts them, at most the high-water mark of them:
    /// above it everything has been offered to the socket.)
    ///
    /// # Errors
    ///
    /// `NotFound` if the connection is gone.
    pub fn write_to(&mut self, other: ConnId<S>, data: &[u8]) -> io::Result<usize> {
        if other == self.id {
            self.write(data);
            return Ok(self.io.pending());
        }
        send(self.lp, other, data)
    }

    /// Schedules `Protocol::timer_fired(key)` for `delay` from now, on this
    /// connection: the timer is cancelled when the connection goes, so
    /// nothing outlives it. Cancel or push it back earlier with the loop's
    /// [`cancel`](EventLoop::cancel) and
    /// [`reset_timer`](EventLoop::reset_timer) on the returned id.
    pub fn call_later(&mut self, delay: Duration, key: u64) -> TimerId {
        let id = self.id;
        let timer = self.lp.call_later(delay, move |lp, state| {
            in_own_context(lp, id, state, |p, t, state| p.timer_fired(t, key, state));
        });
        let lp = &*self.lp;
        if self.io.timers.len() >= 16 {
            self.io.timers.retain(|&t| lp.is_pending(t));
        }
        self.io.timers.push(timer);
        timer
    }

    /// Calls `Protocol::idle_timeout` (by default: close) once nothing has
    /// been received for `timeout`; every read pushes it back (in O(1): the
    /// timer is moved only when its old deadline comes). `None` turns it
    /// off.
    pub fn set_idle_timeout(&mut self, timeout: Option<Duration>) {
        let old = self.io.idle.take();
        match (old, timeout) {
            (Some((timer, _)), None) => {
                self.lp.cancel(timer);
            }
            (Some((timer, _)), Some(d)) if self.lp.reset_timer(timer, d) => {
                self.io.idle = Some((timer, d));
            }
            (_, Some(d)) => {
                let id = self.id;
                let timer = self.lp.call_later(d, move |lp, state| {
                    in_own_context(lp, id, state, |p, t, state| {
                        t.io.idle = None;
                        p.idle_timeout(t, state)
                    });
                });
                self.io.idle = Some((timer, d));
            }
            (None, None) => {}
        }
    }
}

/// Runs `f` with a connection's transport from outside its callbacks (a
/// timer of the loop, a signal handler, a call from another thread through
/// [`LoopHandle::call_soon`](crate::LoopHandle::call_soon)): anything a
/// callback could do with it. The connection's own callbacks that `f`
/// causes (`pause_writing`, `connection_lost`, …) run later in the same
/// loop iteration, in its own context. Returns `f`'s result, or `None` if
/// the connection is gone (or lost), or is the one whose callback is
/// running.
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
/// struct Quiet;
/// impl Protocol<()> for Quiet {
///     fn data_received(&mut self, _: &mut Transport<'_, ()>, _: &[u8], _: &mut ()) {}
/// }
///
/// let (a, mut b) = UnixStream::pair()?;
/// a.set_nonblocking(true)?;
/// let mut lp = EventLoop::<()>::new()?;
/// let id = stream::attach(&mut lp, a, Quiet)?;
/// // Later, from a timer: say goodbye and half-close.
/// lp.call_later(Duration::from_millis(1), move |lp, _| {
///     stream::with_transport(lp, id, |t| {
///         t.write(b"bye");
///         t.write_eof();
///     });
/// });
/// lp.run_once(Some(Duration::from_secs(1)), &mut ())?; // connection_made
/// lp.run_once(Some(Duration::from_secs(1)), &mut ())?; // the timer
/// let mut got = String::new();
/// b.read_to_string(&mut got)?;
/// assert_eq!(got, "bye");
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn with_transport<S: 'static, R>(
    lp: &mut EventLoop<S>,
    id: ConnId<S>,
    f: impl FnOnce(&mut Transport<'_, S>) -> R,
) -> Option<R> {
    lp.with_source(id.0, |lp, conn| {
        if conn.io.is(LOST) {
            return None;
        }
        let res = conn.call(lp, id, |_, t| f(t));
        conn.queue_settle(lp, id);
        Some(res)
    })
    .flatten()
}

/// Writes `data` to a connection from outside its callbacks (a timer,
/// another source, a call from another thread through
/// [`LoopHandle::call_soon`](crate::LoopHandle::call_soon)), with its
/// buffering and flow control. Returns its write buffer size afterwards.
/// Inside a protocol callback use [`Transport::write_to`].
///
/// # Errors
///
/// `NotFound` if the connection is gone or is the one whose callback is
/// running (write through its transport).
pub fn send<S: 'static>(lp: &mut EventLoop<S>, id: ConnId<S>, data: &[u8]) -> io::Result<usize> {
    outside(lp, id, |io| {
        io.write(&[data]);
        io.pending()
    })
    .ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{id:?} is gone, or is running its own callback (write through its transport)"),
        )
    })
}

/// Closes a connection from outside its callbacks: flush, then close, as
/// [`Transport::close`]. Nothing if it is gone; from within its own
/// callback, applied as soon as that returns.
pub fn close<S: 'static>(lp: &mut EventLoop<S>, id: ConnId<S>) {
    outside_or_later(lp, id, |io| io.set(CLOSING));
}

/// Aborts a connection from outside its callbacks, as
/// [`Transport::abort`]. Nothing if it is gone; from within its own
/// callback, applied as soon as that returns.
pub fn abort<S: 'static>(lp: &mut EventLoop<S>, id: ConnId<S>) {
    outside_or_later(lp, id, |io| {
        if !io.is(LOST) {
            io.set(ABORTED);
        }
    });
}

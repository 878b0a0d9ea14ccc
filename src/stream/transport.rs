//! A connection: its socket, write buffer and state, the [`Transport`]
//! its protocol drives it through, and the loop source that runs it.
//!
//! Every protocol callback runs in one of the connection's own contexts —
//! its readiness callback, one of its timers, or a deferred "settle" queued
//! with `call_soon` — and each of those ends in [`Connection::settle`],
//! which delivers flow-control callbacks, half-closes, finishes the
//! connection (calling `connection_lost` once) or sets the loop interest
//! to exactly what is left to do. What other connections do to this one
//! ([`send`], [`close`], [`abort`]) changes its buffers and flags, then
//! queues a settle: its callbacks never run inside someone else's.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::rc::Rc;
use std::time::Duration;

use super::server::Shared;
use super::{DEFAULT_HIGH_WATER, DEFAULT_LOW_WATER, Addr, Protocol, StreamSocket};
use crate::{EventLoop, Interest, PostAction, SourceEvent, SourceId, TimerId};

/// At most this much is read per readiness event.
const READ_SIZE: usize = 64 * 1024;

/// How long a closed connection waits for the peer's EOF (reading and
/// discarding meanwhile) before the socket is closed; see
/// [`Transport::close`].
const LINGER: Duration = Duration::from_secs(2);

thread_local! {
    /// The read buffer every connection of the thread shares: reads land
    /// here and are handed to `data_received`, so 10,000 idle connections
    /// hold no read buffer each.
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
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

/// The loop source of one connection.
pub(crate) struct Connection<S> {
    io: Io<S>,
    protocol: Box<dyn Protocol<S>>,
}

impl<S> AsFd for Connection<S> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.sock.as_fd()
    }
}

/// A connection's socket, buffer and state: what a [`Transport`] changes.
pub(crate) struct Io<S> {
    sock: Box<dyn StreamSocket>,
    /// Bytes written but not yet sent start at `out[sent]`.
    out: Vec<u8>,
    sent: usize,
    high: usize,
    low: usize,
    /// The protocol wants to read (pause/resume reading).
    reading: bool,
    /// A client socket whose connect has not completed.
    connecting: bool,
    /// A client connect that failed at once, to be reported.
    connect_failed: Option<io::Error>,
    /// `connection_made` was called.
    made: bool,
    eof_received: bool,
    /// `write_eof` was called; `eof_sent` once the socket is shut down.
    eof_wanted: bool,
    eof_sent: bool,
    /// `close` was called: flush, half-close, wait for the peer's EOF
    /// (discarding what it sends), then finish.
    closing: bool,
    /// The wait for the peer's EOF after a close is over.
    linger_over: bool,
    /// `abort` was called: finish now, dropping the buffer.
    aborted: bool,
    /// The socket failed: finish now, reporting this.
    error: Option<io::Error>,
    /// `connection_lost` was called (or `connection_failed`).
    lost: bool,
    /// Above the high-water mark, and what the protocol was last told.
    writing_paused: bool,
    told_paused: bool,
    /// The interest the loop watches, or `None` while disabled.
    interest: Option<Interest>,
    /// Timers of this connection, cancelled when it goes.
    timers: Vec<TimerId>,
    idle: Option<(TimerId, Duration)>,
    /// A deferred settle is queued.
    settle_queued: bool,
    /// The server that accepted it.
    pub(super) server: Option<Rc<RefCell<Shared<S>>>>,
}

fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

impl<S> Io<S> {
    fn new(sock: Box<dyn StreamSocket>) -> Io<S> {
        Io {
            sock,
            out: Vec::new(),
            sent: 0,
            high: DEFAULT_HIGH_WATER,
            low: DEFAULT_LOW_WATER,
            reading: true,
            connecting: false,
            connect_failed: None,
            made: false,
            eof_received: false,
            eof_wanted: false,
            eof_sent: false,
            closing: false,
            linger_over: false,
            aborted: false,
            error: None,
            lost: false,
            writing_paused: false,
            told_paused: false,
            interest: None,
            timers: Vec::new(),
            idle: None,
            settle_queued: false,
            server: None,
        }
    }

    fn pending(&self) -> usize {
        self.out.len() - self.sent
    }

    /// Aborted or failed: finish at the next settle.
    fn finishing(&self) -> bool {
        self.aborted || self.error.is_some()
    }

    /// Whether writes are accepted (and why not, for the log).
    fn refuses_writes(&self) -> Option<&'static str> {
        if self.lost {
            Some("the connection is lost")
        } else if self.finishing() {
            Some("the connection is aborted")
        } else if self.closing {
            Some("the connection is closing")
        } else if self.eof_wanted {
            Some("write_eof was called")
        } else {
            None
        }
    }

    fn fail(&mut self, e: io::Error) {
        if self.error.is_none() && !self.lost {
            log::debug!("stream=error error={e}");
            self.error = Some(e);
        }
    }

    /// Writes `bufs` at once if nothing is pending, buffering the rest.
    /// One buffer, the common case: straight to the socket when nothing
    /// is pending, no slices to build.
    #[inline]
    fn write_one(&mut self, data: &[u8]) {
        if self.pending() != 0 || self.connecting || self.refuses_writes().is_some() {
            return self.write(&[data]);
        }
        let rest = loop {
            match self.sock.send_vectored(&[IoSlice::new(data)]) {
                Ok(n) if n == data.len() => return,
                Ok(n) => break &data[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break data,
                Err(e) => return self.fail(e),
            }
        };
        self.out.extend_from_slice(rest);
        self.note_high();
    }

    /// Pauses writing (for `settle` to tell) once the buffer is above the
    /// high mark.
    #[inline]
    fn note_high(&mut self) {
        if !self.writing_paused && self.pending() > self.high {
            self.writing_paused = true;
        }
    }

    fn write(&mut self, bufs: &[&[u8]]) {
        if let Some(why) = self.refuses_writes() {
            let n: usize = bufs.iter().map(|b| b.len()).sum();
            log::debug!("stream=write ignored bytes={n}: {why}");
            return;
        }
        let mut skip = 0;
        if self.pending() == 0 && !self.connecting {
            // On the stack for the usual few buffers: no allocation per write.
            let mut few = [IoSlice::new(&[]); 8];
            let many: Vec<IoSlice<'_>>;
            let slices: &[IoSlice<'_>] = if bufs.len() <= few.len() {
                for (slot, b) in few.iter_mut().zip(bufs) {
                    *slot = IoSlice::new(b);
                }
                &few[..bufs.len()]
            } else {
                many = bufs.iter().map(|b| IoSlice::new(b)).collect();
                &many
            };
            loop {
                match self.sock.send_vectored(slices) {
                    Ok(n) => skip = n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return self.fail(e),
                }
                break;
            }
        }
        for b in bufs {
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            self.out.extend_from_slice(&b[skip..]);
            skip = 0;
        }
        self.note_high();
    }

    /// Sends what is pending, as far as the socket takes it.
    fn flush(&mut self) {
        while self.pending() > 0 && self.error.is_none() {
            match self.sock.send_vectored(&[IoSlice::new(&self.out[self.sent..])]) {
                Ok(0) => self.fail(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => self.fail(e),
            }
        }
        if self.pending() == 0 {
            // An idle connection holds no buffer.
            if self.out.capacity() > 64 * 1024 {
                self.out = Vec::new();
            }
            self.out.clear();
            self.sent = 0;
        } else if self.sent > self.out.len() / 2 {
            self.out.drain(..self.sent);
            self.sent = 0;
        }
        if self.writing_paused && self.pending() <= self.low {
            self.writing_paused = false;
        }
    }

    /// Reading, nothing pending, nothing asked for: what `settle` would
    /// conclude for the usual connection, in a few comparisons.
    #[inline]
    fn is_steady(&self) -> bool {
        self.out.is_empty()
            && self.reading
            && !(self.closing
                || self.eof_wanted
                || self.eof_received
                || self.aborted
                || self.connecting
                || self.writing_paused
                || self.told_paused)
            && self.error.is_none()
            && self.interest == Some(Interest::READABLE)
    }

    /// After a close, reads and drops what the peer still sends, until its
    /// EOF: closing a socket with unread input makes the kernel send a
    /// reset, which can destroy data the peer has not read yet.
    fn discard_input(&mut self) {
        let mut buf = SCRATCH.take();
        if buf.len() < READ_SIZE {
            buf.resize(READ_SIZE, 0);
        }
        for _ in 0..4 {
            match self.sock.recv(&mut buf) {
                Ok(0) => {
                    self.eof_received = true;
                    break;
                }
                Ok(n) => log::trace!("stream=linger discarded={n}"),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // The peer is gone: nothing of ours is left to lose.
                    log::debug!("stream=linger error={e}");
                    self.linger_over = true;
                    break;
                }
            }
        }
        SCRATCH.set(buf);
    }

    /// What the loop should watch: reading while the protocol reads and
    /// the peer may still send, writing while something is pending.
    fn wanted(&self) -> Option<Interest> {
        if self.connecting {
            return Some(Interest::WRITABLE);
        }
        let read = if self.closing {
            // Lingering: discard until the peer's EOF.
            self.pending() == 0 && !self.eof_received
        } else {
            self.reading && !self.eof_received
        };
        match (read, self.pending() > 0) {
            (true, true) => Some(Interest::BOTH),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (false, false) => None,
        }
    }
}

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
/// [`pause_writing`]: Protocol::pause_writing
/// [`resume_writing`]: Protocol::resume_writing
pub struct Transport<'a, S> {
    lp: &'a mut EventLoop<S>,
    io: &'a mut Io<S>,
    id: ConnId<S>,
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

    /// Writes `data`: at once what the socket takes if nothing is pending,
    /// the rest into the write buffer. Ignored (and logged at debug level)
    /// once the transport is closing, aborted, lost or after
    /// [`write_eof`](Transport::write_eof); see
    /// [`is_closing`](Transport::is_closing).
    pub fn write(&mut self, data: &[u8]) {
        self.io.write_one(data);
    }

    /// Writes several buffers as one (one `writev` when nothing is
    /// pending), as [`write`](Transport::write).
    pub fn write_vectored(&mut self, bufs: &[&[u8]]) {
        self.io.write(bufs);
    }

    /// Bytes written but not yet sent.
    pub fn write_buffer_size(&self) -> usize {
        self.io.pending()
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
        if !io.writing_paused && io.pending() > high {
            io.writing_paused = true;
        } else if io.writing_paused && io.pending() <= low {
            io.writing_paused = false;
        }
        Ok(())
    }

    /// The watermarks, `(high, low)`.
    pub fn write_buffer_limits(&self) -> (usize, usize) {
        (self.io.high, self.io.low)
    }

    /// Stops reading until [`resume_reading`](Transport::resume_reading).
    /// Idempotent; data the peer sends meanwhile waits in the kernel (and
    /// the peer is slowed down by TCP's own flow control).
    pub fn pause_reading(&mut self) {
        self.io.reading = false;
    }

    /// Reads again after [`pause_reading`](Transport::pause_reading);
    /// idempotent. Nothing that arrived meanwhile is lost: the loop is
    /// level-triggered, so waiting data is reported at once.
    pub fn resume_reading(&mut self) {
        self.io.reading = true;
    }

    /// Whether the transport reads (not paused, peer not at EOF, not
    /// closing).
    pub fn is_reading(&self) -> bool {
        self.io.reading && !self.io.eof_received && !self.io.closing && !self.io.lost
    }

    /// Half-closes: once everything written is sent, the writing side is
    /// shut down and the peer reads EOF. Reading goes on. Later writes are
    /// ignored. If the peer already sent EOF, the connection then ends.
    pub fn write_eof(&mut self) {
        self.io.eof_wanted = true;
    }

    /// Closes: stops reading, sends everything written, half-closes, then
    /// closes the socket and calls `connection_lost(None)`. Idempotent.
    ///
    /// Between the half-close and the close it waits for the peer's EOF,
    /// at most 2 s, reading and discarding what the peer still sends:
    /// closing a socket with unread input makes the kernel send a reset,
    /// which can destroy data the peer has not read yet — exactly the
    /// bytes `close` promises to deliver.
    pub fn close(&mut self) {
        self.io.closing = true;
    }

    /// Closes now, dropping whatever is not sent yet; `connection_lost`
    /// follows as soon as the callback returns.
    pub fn abort(&mut self) {
        if !self.io.lost {
            self.io.aborted = true;
        }
    }

    /// Whether the transport is closing, aborted, failed or lost: writes
    /// are ignored.
    pub fn is_closing(&self) -> bool {
        self.io.closing || self.io.finishing() || self.io.lost
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
}

impl<S: 'static> Transport<'_, S> {
    /// Writes `data` to another connection of the loop, with that
    /// connection's buffering and flow control (its `pause_writing`, if the
    /// write takes it over its high mark, is called later in this loop
    /// iteration, in that connection's own context). To this connection itself, the same as
    /// [`write`](Transport::write). Returns the other connection's write
    /// buffer size afterwards, so a broadcaster can cut off a consumer
    /// that does not keep up.
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

impl<S: 'static> Connection<S> {
    fn new(sock: Box<dyn StreamSocket>, protocol: Box<dyn Protocol<S>>) -> Connection<S> {
        Connection {
            io: Io::new(sock),
            protocol,
        }
    }

    /// Runs `f` with the protocol and a transport.
    fn call<R>(
        &mut self,
        lp: &mut EventLoop<S>,
        id: ConnId<S>,
        f: impl FnOnce(&mut dyn Protocol<S>, &mut Transport<'_, S>) -> R,
    ) -> R {
        let Connection { io, protocol } = self;
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
        if self.io.lost {
            return false;
        }
        if !self.io.made {
            self.io.made = true;
            self.call(lp, id, |p, t| p.connection_made(t, state));
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
    fn settle(&mut self, lp: &mut EventLoop<S>, id: ConnId<S>, state: &mut S) -> bool {
        if self.io.is_steady() {
            return true;
        }
        while !self.io.finishing() && self.io.writing_paused != self.io.told_paused {
            let pause = self.io.writing_paused;
            self.io.told_paused = pause;
            self.call(lp, id, |p, t| {
                if pause {
                    p.pause_writing(t, state)
                } else {
                    p.resume_writing(t, state)
                }
            });
        }
        let io = &mut self.io;
        let flushed = io.pending() == 0 && !io.finishing();
        if (io.eof_wanted || io.closing) && !io.eof_sent && flushed {
            io.eof_sent = true;
            if let Err(e) = io.sock.shutdown_write() {
                io.fail(e);
            }
            if io.closing && !io.eof_received && !io.finishing() {
                io.timers.push(linger(lp, id));
            }
        }
        let done = io.finishing()
            || (io.closing && io.pending() == 0 && (io.eof_received || io.linger_over))
            || (io.eof_received && io.eof_sent);
        if !done {
            let want = io.wanted();
            if want == io.interest {
                return true;
            }
            let res = match want {
                None => lp.disable(id.0),
                Some(i) if io.interest.is_none() => lp.enable(id.0, i),
                Some(i) => lp.modify(id.0, i),
            };
            match res {
                Ok(()) => {
                    io.interest = want;
                    return true;
                }
                Err(e) => io.fail(e),
            }
        }
        self.finish(lp, id, state);
        false
    }

    /// The end: timers cancelled, `connection_lost` once, the server told.
    /// The caller removes the source.
    fn finish(&mut self, lp: &mut EventLoop<S>, id: ConnId<S>, state: &mut S) {
        let io = &mut self.io;
        io.lost = true;
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
        let server = io.server.take();
        self.call(lp, id, |p, t| p.connection_lost(t, error, state));
        if let Some(server) = server {
            super::server::connection_gone(&server, lp, id, state);
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
        self.io.connecting = false;
        for timer in self.io.timers.drain(..) {
            lp.cancel(timer);
        }
        if let Some(e) = error {
            self.io.lost = true;
            self.protocol.connection_failed(e, state);
            return false;
        }
        log::trace!("stream=connected");
        self.drive(lp, id, state, |_, t, _| t.io.flush())
    }

    /// The loop callback: readiness of the socket.
    fn on_ready(
        &mut self,
        lp: &mut EventLoop<S>,
        ev: SourceEvent<Connection<S>>,
        state: &mut S,
    ) -> PostAction {
        let id = ConnId(ev.id());
        let (readable, writable) = (ev.is_readable(), ev.is_writable());
        let alive = if self.io.connecting {
            let error = match self.io.connect_failed.take() {
                Some(e) => Some(e),
                None => crate::sys::take_socket_error(self.io.sock.as_fd().as_raw_fd())
                    .unwrap_or_else(Some),
            };
            self.connected(lp, id, error, state)
        } else {
            self.drive(lp, id, state, |p, t, state| {
                if writable {
                    t.io.flush();
                }
                if readable && t.io.closing && t.io.eof_sent {
                    t.io.discard_input();
                } else if readable && t.is_reading() && !t.io.finishing() {
                    read_once(p, t, state);
                }
            })
        };
        if alive {
            PostAction::Continue
        } else {
            PostAction::Remove
        }
    }

    /// Queues a settle (and `connection_made`) for the end of this loop
    /// iteration, after something outside the connection's own callbacks
    /// changed it.
    fn queue_settle(&mut self, lp: &mut EventLoop<S>, id: ConnId<S>) {
        if self.io.settle_queued || self.io.lost {
            return;
        }
        self.io.settle_queued = true;
        lp.call_soon(move |lp, state| {
            run_conn(lp, id, |lp, conn| {
                conn.io.settle_queued = false;
                if conn.io.connecting {
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


/// Reads once (fairness under level-triggering) into the shared buffer.
fn read_once<S: 'static>(p: &mut dyn Protocol<S>, t: &mut Transport<'_, S>, state: &mut S) {
    let mut buf = SCRATCH.take();
    if buf.len() < READ_SIZE {
        buf.resize(READ_SIZE, 0);
    }
    match t.io.sock.recv(&mut buf) {
        Ok(0) => {
            t.io.eof_received = true;
            log::trace!("stream=eof");
            if !p.eof_received(t, state) {
                t.close();
            }
        }
        Ok(n) => {
            if let Some((timer, d)) = t.io.idle {
                t.lp.reset_timer(timer, d);
            }
            p.data_received(t, &buf[..n], state);
        }
        Err(e) if is_retry(&e) => {}
        Err(e) => t.io.fail(e),
    }
    SCRATCH.set(buf);
}

/// Runs `f` in the connection's own context from a timer: nothing if the
/// connection is gone.
fn in_own_context<S: 'static>(
    lp: &mut EventLoop<S>,
    id: ConnId<S>,
    state: &mut S,
    f: impl FnOnce(&mut dyn Protocol<S>, &mut Transport<'_, S>, &mut S),
) {
    run_conn(lp, id, |lp, conn| {
        conn.io.connecting || conn.drive(lp, id, state, f)
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

/// Registers a connection with the loop and queues its `connection_made`.
pub(super) fn register<S: 'static>(
    lp: &mut EventLoop<S>,
    sock: Box<dyn StreamSocket>,
    protocol: Box<dyn Protocol<S>>,
    connecting: Option<Option<io::Error>>,
    server: Option<Rc<RefCell<Shared<S>>>>,
) -> io::Result<ConnId<S>> {
    let mut conn = Connection::new(sock, protocol);
    conn.io.server = server;
    let interest = match connecting {
        Some(failed) => {
            conn.io.connecting = true;
            conn.io.connect_failed = failed;
            Interest::WRITABLE
        }
        None => Interest::READABLE,
    };
    conn.io.interest = Some(interest);
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
    register(lp, Box::new(socket), Box::new(protocol), None, None)
}

/// Runs `f` on a connection from outside its own callbacks, then queues
/// its settle. `None` if it is gone, or is lent to its own running
/// callback (which has its transport).
fn outside<S: 'static, R>(
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
fn outside_or_later<S: 'static>(
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
        if conn.io.lost {
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
    outside_or_later(lp, id, |io| io.closing = true);
}

/// Aborts a connection from outside its callbacks, as
/// [`Transport::abort`]. Nothing if it is gone; from within its own
/// callback, applied as soon as that returns.
pub fn abort<S: 'static>(lp: &mut EventLoop<S>, id: ConnId<S>) {
    outside_or_later(lp, id, |io| {
        if !io.lost {
            io.aborted = true;
        }
    });
}

/// Ends the wait for the peer's EOF after a close, `LINGER` from now.
fn linger<S: 'static>(lp: &mut EventLoop<S>, id: ConnId<S>) -> TimerId {
    lp.call_later(LINGER, move |lp, state| {
        run_conn(lp, id, |lp, conn| {
            conn.io.linger_over = true;
            conn.settle(lp, id, state)
        });
    })
}

/// Fails a client connect still in progress after `timeout`.
pub(super) fn connect_timeout<S: 'static>(lp: &mut EventLoop<S>, id: ConnId<S>, timeout: Duration) {
    let timer = lp.call_later(timeout, move |lp, state| {
        run_conn(lp, id, |lp, conn| {
            if !conn.io.connecting {
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

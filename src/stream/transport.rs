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

use std::any::TypeId;
use std::cell::RefCell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::{self, IoSlice};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::Duration;

use super::server::Shared;
use super::{Addr, DEFAULT_HIGH_WATER, DEFAULT_LOW_WATER, Protocol, StreamSocket};
use crate::{EventLoop, Interest, PostAction, SourceEvent, SourceId, TimerId};

/// At most this much is read per readiness event.
const READ_SIZE: usize = 64 * 1024;

/// How long a closed connection waits for the peer's EOF (reading and
/// discarding meanwhile) before the socket is closed, unless set
/// otherwise; see [`Transport::close`].
pub(super) const LINGER: Duration = Duration::from_secs(2);

/// The read buffer every connection of a thread shares: reads land here
/// and are handed to `data_received`, so 10,000 idle connections hold no
/// read buffer each. Each connection keeps a reference, which costs less
/// to reach per read than the thread-local.
type ReadBuf = Rc<RefCell<Vec<u8>>>;

thread_local! {
    static READ_BUF: ReadBuf = Rc::default();
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

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv_data(buf).map_or_else(|res| res, Ok)
    }

    /// Reads into `buf`: `Ok(n)` for `n > 0` bytes, otherwise what the
    /// socket said (EOF as `Err(Ok(0))`): the hot path tests for data
    /// before it builds a result.
    #[inline(always)]
    fn recv_data(&mut self, buf: &mut [u8]) -> Result<usize, io::Result<usize>> {
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

    fn send(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send_all(buf)
            .map_or_else(|res| res, |()| Ok(buf.len()))
    }

    /// Sends all of `buf` or says what happened instead, as `recv_data`.
    #[inline(always)]
    fn send_all(&mut self, buf: &[u8]) -> Result<(), io::Result<usize>> {
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
    /// The thread's read buffer (beside `io`, so that a read borrows it
    /// while the transport borrows `io`).
    read_buf: ReadBuf,
}

impl<S> AsFd for Connection<S> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.sock.as_fd()
    }
}

/// A connection's socket, buffer and state: what a [`Transport`] changes.
pub(crate) struct Io<S> {
    sock: Sock,
    /// Bytes written but not yet sent start at `out[sent]`.
    out: Vec<u8>,
    sent: usize,
    high: usize,
    low: usize,
    /// What the connection is doing and has done: the bits below, one
    /// word so that the hot path tests them together.
    flags: u32,
    /// A client connect that failed at once, to be reported.
    connect_failed: Option<io::Error>,
    /// The socket failed: finish now, reporting this.
    error: Option<io::Error>,
    /// Timers of this connection, cancelled when it goes.
    timers: Vec<TimerId>,
    idle: Option<(TimerId, Duration)>,
    /// After a close: how long to wait for the peer's EOF once everything
    /// is sent, and how long the sending may take at most.
    linger: Duration,
    close_timeout: Option<Duration>,
    /// The close timeout's timer runs.
    close_timed: bool,
    /// The server that accepted it.
    pub(super) server: Option<Rc<RefCell<Shared<S>>>>,
}

// The bits of `Io::flags`.
/// The protocol wants to read (pause/resume reading).
const READING: u32 = 1 << 0;
/// A client socket whose connect has not completed.
const CONNECTING: u32 = 1 << 1;
/// `connection_made` was called.
const MADE: u32 = 1 << 2;
/// The peer's EOF was read.
const EOF_RECEIVED: u32 = 1 << 3;
/// `write_eof` was called; `EOF_SENT` once the socket is shut down.
const EOF_WANTED: u32 = 1 << 4;
const EOF_SENT: u32 = 1 << 5;
/// `close` was called: flush, half-close, wait for the peer's EOF
/// (discarding what it sends), then finish.
const CLOSING: u32 = 1 << 6;
/// The wait for the peer's EOF after a close is over.
const LINGER_OVER: u32 = 1 << 7;
/// `abort` was called: finish now, dropping the buffer.
const ABORTED: u32 = 1 << 8;
/// `connection_lost` was called (or `connection_failed`).
const LOST: u32 = 1 << 9;
/// Above the high-water mark, and what the protocol was last told.
const WRITING_PAUSED: u32 = 1 << 10;
const TOLD_PAUSED: u32 = 1 << 11;
/// A deferred settle is queued.
const SETTLE_QUEUED: u32 = 1 << 12;
/// The socket failed (`Io::error` says how): finish now.
const FAILED: u32 = 1 << 13;
/// The interest the loop watches (neither: disabled).
const WATCH_READ: u32 = 1 << 14;
const WATCH_WRITE: u32 = 1 << 15;
/// A write of the current context went to the socket: the next ones are
/// held in the buffer and sent together when the context ends (one send
/// per connection per callback, however many writes).
const WROTE: u32 = 1 << 16;
/// The buffer holds bytes not yet offered to the socket (held by
/// `WROTE`, not refused by a full socket).
const HELD: u32 = 1 << 17;
/// A write cannot go straight to the socket: not connected yet, or
/// refused (see `Io::refuses_writes`).
const NO_DIRECT_WRITE: u32 = CONNECTING | LOST | ABORTED | FAILED | CLOSING | EOF_WANTED;
/// What a connection that only reads and has nothing to do shows (of
/// `STEADY_MASK`'s bits): see `Io::is_steady`.
const STEADY: u32 = READING | WATCH_READ;
const STEADY_MASK: u32 = READING
    | WATCH_READ
    | WATCH_WRITE
    | CLOSING
    | EOF_WANTED
    | EOF_RECEIVED
    | ABORTED
    | FAILED
    | CONNECTING
    | WRITING_PAUSED
    | TOLD_PAUSED;
/// What an event of a connection that is up and reading shows (of
/// `HOT_MASK`'s bits): `on_ready` then sends and reads at once.
const HOT: u32 = MADE | READING;
const HOT_MASK: u32 =
    MADE | READING | CONNECTING | LOST | ABORTED | FAILED | CLOSING | EOF_RECEIVED;

fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

impl<S> Io<S> {
    #[inline]
    fn is(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }

    #[inline]
    fn set(&mut self, flag: u32) {
        self.flags |= flag;
    }

    #[inline]
    fn unset(&mut self, flag: u32) {
        self.flags &= !flag;
    }

    #[inline]
    fn put(&mut self, flag: u32, on: bool) {
        if on {
            self.set(flag);
        } else {
            self.unset(flag);
        }
    }

    fn new(sock: Sock) -> Io<S> {
        Io {
            sock,
            out: Vec::new(),
            sent: 0,
            high: DEFAULT_HIGH_WATER,
            low: DEFAULT_LOW_WATER,
            flags: READING,
            connect_failed: None,
            error: None,
            timers: Vec::new(),
            idle: None,
            linger: LINGER,
            close_timeout: None,
            close_timed: false,
            server: None,
        }
    }

    /// The interest the loop watches, or `None` while disabled.
    fn watching(&self) -> Option<Interest> {
        match (self.is(WATCH_READ), self.is(WATCH_WRITE)) {
            (true, true) => Some(Interest::BOTH),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (false, false) => None,
        }
    }

    fn set_watching(&mut self, interest: Option<Interest>) {
        self.put(WATCH_READ, interest.is_some_and(|i| i.is_readable()));
        self.put(WATCH_WRITE, interest.is_some_and(|i| i.is_writable()));
    }

    fn pending(&self) -> usize {
        self.out.len() - self.sent
    }

    /// Aborted or failed: finish at the next settle.
    fn finishing(&self) -> bool {
        self.is(ABORTED | FAILED)
    }

    /// Whether writes are accepted (and why not, for the log).
    fn refuses_writes(&self) -> Option<&'static str> {
        if self.is(LOST) {
            Some("the connection is lost")
        } else if self.finishing() {
            Some("the connection is aborted")
        } else if self.is(CLOSING) {
            Some("the connection is closing")
        } else if self.is(EOF_WANTED) {
            Some("write_eof was called")
        } else {
            None
        }
    }

    fn fail(&mut self, e: io::Error) {
        if !self.is(FAILED | LOST) {
            log::debug!("stream=error error={e}");
            self.error = Some(e);
            self.set(FAILED);
        }
    }

    /// shutdown(2) failed. On a socket the peer reset (`ENOTCONN`) the
    /// reason is the reset, while the socket still holds it; after a close
    /// with nothing pending there is then nothing to report: the peer is
    /// gone, and nothing it could read is left to lose.
    #[inline(never)]
    fn shutdown_failed(&mut self, e: io::Error) {
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            match crate::sys::take_socket_error(self.sock.as_fd().as_raw_fd()) {
                Ok(Some(reset)) => return self.fail(reset),
                _ if self.is(CLOSING) => {
                    log::debug!("stream=closed peer already gone");
                    return self.set(LINGER_OVER);
                }
                _ => {}
            }
        }
        self.fail(e)
    }

    /// Writes `bufs` at once if nothing is pending, buffering the rest.
    /// One buffer, the common case: straight to the socket when nothing
    /// is pending and it is the context's first write, no slices to build.
    #[inline]
    fn write_one(&mut self, data: &[u8]) {
        if self.flags & (NO_DIRECT_WRITE | WROTE) != 0 || self.pending() != 0 {
            return self.write(&[data]);
        }
        self.flags |= WROTE;
        if let Err(res) = self.sock.send_all(data) {
            self.after_short_send(data, res);
        }
    }

    /// Offers the held bytes to the socket (see `WROTE`).
    #[inline]
    fn send_held(&mut self) {
        if self.is(HELD) {
            self.flush();
        }
    }

    /// `write_one` when the socket did not take everything: retries on
    /// `EINTR`, buffers the rest, or fails the connection.
    #[cold]
    #[inline(never)]
    fn after_short_send(&mut self, data: &[u8], mut res: io::Result<usize>) {
        let rest = loop {
            match res {
                Ok(n) => break &data[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => res = self.sock.send(data),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break data,
                Err(e) => return self.fail(e),
            }
        };
        self.out.extend_from_slice(rest);
        self.note_high();
    }

    /// Pauses writing (for `settle` to tell) once the buffer is above the
    /// high mark. Held bytes are offered to the socket first: holding
    /// writes back never makes the protocol pause where sending each at
    /// once would not have, and never holds more than the high mark.
    #[inline]
    fn note_high(&mut self) {
        if !self.is(WRITING_PAUSED) && self.pending() > self.high {
            self.send_held();
            if self.pending() > self.high {
                self.set(WRITING_PAUSED);
            }
        }
    }

    #[inline(never)]
    fn write(&mut self, bufs: &[&[u8]]) {
        if let Some(why) = self.refuses_writes() {
            let n: usize = bufs.iter().map(|b| b.len()).sum();
            log::debug!("stream=write ignored bytes={n}: {why}");
            return;
        }
        let mut skip = 0;
        let first = self.pending() == 0 && !self.is(CONNECTING);
        if first && self.is(WROTE) {
            // The context wrote already: held, to go out with its other
            // writes when it ends.
            self.set(HELD);
        } else if first {
            self.set(WROTE);
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
        self.unset(HELD);
        while self.pending() > 0 && !self.is(FAILED) {
            match self.sock.send(&self.out[self.sent..]) {
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
        if self.is(WRITING_PAUSED) && self.pending() <= self.low {
            self.unset(WRITING_PAUSED);
        }
    }

    /// Reading, nothing pending, nothing asked for: what `settle` would
    /// conclude for the usual connection, in a few comparisons.
    #[inline]
    fn is_steady(&self) -> bool {
        self.flags & STEADY_MASK == STEADY && self.out.is_empty()
    }

    /// After a close, reads and drops what the peer still sends, until its
    /// EOF: closing a socket with unread input makes the kernel send a
    /// reset, which can destroy data the peer has not read yet.
    fn discard_input(&mut self, read_buf: &RefCell<Vec<u8>>) {
        let mut shared = read_buf.try_borrow_mut();
        let mut own = Vec::new();
        let buf = read_buffer(shared.as_deref_mut().unwrap_or(&mut own));
        for _ in 0..4 {
            match self.sock.recv(buf) {
                Ok(0) => {
                    self.set(EOF_RECEIVED);
                    break;
                }
                Ok(n) => log::trace!("stream=linger discarded={n}"),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // The peer is gone: nothing of ours is left to lose.
                    log::debug!("stream=linger error={e}");
                    self.set(LINGER_OVER);
                    break;
                }
            }
        }
    }

    /// What the loop should watch: reading while the protocol reads and
    /// the peer may still send, writing while something is pending.
    fn wanted(&self) -> Option<Interest> {
        if self.is(CONNECTING) {
            return Some(Interest::WRITABLE);
        }
        let read = if self.is(CLOSING) {
            // Lingering: discard until the peer's EOF.
            self.pending() == 0 && !self.is(EOF_RECEIVED)
        } else {
            self.is(READING) && !self.is(EOF_RECEIVED)
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

impl<S: 'static> Connection<S> {
    fn new(sock: Sock, protocol: Box<dyn Protocol<S>>) -> Connection<S> {
        Connection {
            io: Io::new(sock),
            protocol,
            read_buf: READ_BUF.with(Rc::clone),
        }
    }

    /// Runs `f` with the protocol and a transport.
    fn call<R>(
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
            self.io.set(MADE);
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
        let flushed = io.pending() == 0 && !io.finishing();
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
            } else if let Err(e) = io.sock.shutdown_write() {
                io.shutdown_failed(e);
            }
            if io.is(CLOSING) && !io.is(EOF_RECEIVED | LINGER_OVER) && !io.finishing() {
                let linger = io.linger;
                io.timers.push(linger_timer(lp, id, linger));
            }
        }
        let done = io.finishing()
            || (io.is(CLOSING) && io.pending() == 0 && (io.is(EOF_RECEIVED) || io.is(LINGER_OVER)))
            || (io.is(EOF_RECEIVED) && io.is(EOF_SENT));
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

    /// The end: timers cancelled, `connection_lost` once, the server told.
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
        self.io.unset(CONNECTING);
        for timer in self.io.timers.drain(..) {
            lp.cancel(timer);
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
    fn queue_settle(&mut self, lp: &mut EventLoop<S>, id: ConnId<S>) {
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
fn read_buffer(buf: &mut Vec<u8>) -> &mut [u8] {
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

/// Runs `f` in the connection's own context from a timer: nothing if the
/// connection is gone.
fn in_own_context<S: 'static>(
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

/// Registers a connection with the loop and queues its `connection_made`.
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

pub(super) fn register<S: 'static>(
    lp: &mut EventLoop<S>,
    sock: Sock,
    protocol: Box<dyn Protocol<S>>,
    connecting: Option<Option<io::Error>>,
    server: Option<Rc<RefCell<Shared<S>>>>,
    closing: CloseSettings,
) -> io::Result<ConnId<S>> {
    let mut conn = Connection::new(sock, protocol);
    conn.io.server = server;
    conn.io.linger = closing.linger;
    conn.io.close_timeout = closing.timeout;
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

/// Ends the wait for the peer's EOF after a close, `linger` from now.
fn linger_timer<S: 'static>(lp: &mut EventLoop<S>, id: ConnId<S>, linger: Duration) -> TimerId {
    lp.call_later(linger, move |lp, state| {
        run_conn(lp, id, |lp, conn| {
            conn.io.set(LINGER_OVER);
            conn.settle(lp, id, state)
        });
    })
}

/// Aborts a close that has not sent everything `timeout` from now.
fn close_deadline<S: 'static>(lp: &mut EventLoop<S>, id: ConnId<S>, timeout: Duration) -> TimerId {
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

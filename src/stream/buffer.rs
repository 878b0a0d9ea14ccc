//! A connection's socket, write buffer and state ([`Io`]): what a
//! [`Transport`](super::Transport) changes. The state is one word of
//! flags, so that the hot path tests several at once; the buffer holds
//! what the socket has not taken, and its watermarks decide when the
//! protocol is told to pause and resume writing.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use super::connection::{Owner, read_buffer};
use super::socket::Sock;
use super::{DEFAULT_HIGH_WATER, DEFAULT_LOW_WATER};
use crate::{Interest, TimerId};

/// How long a closed connection waits for the peer's EOF (reading and
/// discarding meanwhile) before the socket is closed, unless set
/// otherwise; see [`Transport::close`](super::Transport::close).
pub(super) const LINGER: Duration = Duration::from_secs(2);

/// A connection's socket, buffer and state: what a [`Transport`](super::Transport) changes.
pub(crate) struct Io<S> {
    pub(super) sock: Sock,
    /// Bytes written but not yet sent start at `out[sent]`.
    pub(super) out: Vec<u8>,
    pub(super) sent: usize,
    pub(super) high: usize,
    pub(super) low: usize,
    /// What the connection is doing and has done: the bits below, one
    /// word so that the hot path tests them together.
    pub(super) flags: u32,
    /// A client connect that failed at once, to be reported.
    pub(super) connect_failed: Option<io::Error>,
    /// The socket failed: finish now, reporting this.
    pub(super) error: Option<io::Error>,
    /// Timers of this connection, cancelled when it goes.
    pub(super) timers: Vec<TimerId>,
    pub(super) idle: Option<(TimerId, Duration)>,
    /// After a close: how long to wait for the peer's EOF once everything
    /// is sent, and how long the sending may take at most.
    pub(super) linger: Duration,
    pub(super) close_timeout: Option<Duration>,
    /// The close timeout's timer runs.
    pub(super) close_timed: bool,
    /// Who is told when it ends (the server that accepted it).
    pub(super) owner: Option<Rc<dyn Owner<S>>>,
}

// The bits of `Io::flags`.
/// The protocol wants to read (pause/resume reading).
pub(super) const READING: u32 = 1 << 0;
/// A client socket whose connect has not completed.
pub(super) const CONNECTING: u32 = 1 << 1;
/// `connection_made` was called.
pub(super) const MADE: u32 = 1 << 2;
/// The peer's EOF was read.
pub(super) const EOF_RECEIVED: u32 = 1 << 3;
/// `write_eof` was called; `EOF_SENT` once the socket is shut down.
pub(super) const EOF_WANTED: u32 = 1 << 4;
pub(super) const EOF_SENT: u32 = 1 << 5;
/// `close` was called: flush, half-close, wait for the peer's EOF
/// (discarding what it sends), then finish.
pub(super) const CLOSING: u32 = 1 << 6;
/// The wait for the peer's EOF after a close is over.
pub(super) const LINGER_OVER: u32 = 1 << 7;
/// `abort` was called: finish now, dropping the buffer.
pub(super) const ABORTED: u32 = 1 << 8;
/// `connection_lost` was called (or `connection_failed`).
pub(super) const LOST: u32 = 1 << 9;
/// Above the high-water mark, and what the protocol was last told.
pub(super) const WRITING_PAUSED: u32 = 1 << 10;
pub(super) const TOLD_PAUSED: u32 = 1 << 11;
/// A deferred settle is queued.
pub(super) const SETTLE_QUEUED: u32 = 1 << 12;
/// The socket failed (`Io::error` says how): finish now.
pub(super) const FAILED: u32 = 1 << 13;
/// The interest the loop watches (neither: disabled).
pub(super) const WATCH_READ: u32 = 1 << 14;
pub(super) const WATCH_WRITE: u32 = 1 << 15;
/// A write of the current context went to the socket: the next ones are
/// held in the buffer and sent together when the context ends (one send
/// per connection per callback, however many writes).
pub(super) const WROTE: u32 = 1 << 16;
/// The buffer holds bytes not yet offered to the socket (held by
/// `WROTE`, not refused by a full socket).
pub(super) const HELD: u32 = 1 << 17;
/// A write cannot go straight to the socket: not connected yet, or
/// refused (see `Io::refuses_writes`).
pub(super) const NO_DIRECT_WRITE: u32 = CONNECTING | LOST | ABORTED | FAILED | CLOSING | EOF_WANTED;
/// What a connection that only reads and has nothing to do shows (of
/// `STEADY_MASK`'s bits): see `Io::is_steady`.
pub(super) const STEADY: u32 = READING | WATCH_READ;
pub(super) const STEADY_MASK: u32 = READING
    | WATCH_READ
    | WATCH_WRITE
    | CLOSING
    | EOF_WANTED
    | EOF_RECEIVED
    | ABORTED
    | FAILED
    | CONNECTING
    | WRITING_PAUSED
    | TOLD_PAUSED
    | SESSION;
/// The socket is not a std socket: it may be a session (TLS) that holds
/// output of its own or has a handshake to make (see `Io::unsent`), so
/// the connection never takes the steady shortcut.
pub(super) const SESSION: u32 = 1 << 18;
/// A connection no server owns (a client's, or attached): an end before
/// `connection_made` (a failed TLS handshake) is its `connection_failed`.
pub(super) const CLIENT: u32 = 1 << 19;
/// `start_tls` began: the session's handshake runs, and its end is
/// `tls_started` (the connection is up, `MADE` is off meanwhile).
pub(super) const UPGRADING: u32 = 1 << 20;
/// A read is queued for input the session holds (see
/// `StreamSocket::holds_input`).
pub(super) const READ_QUEUED: u32 = 1 << 21;
/// What an event of a connection that is up and reading shows (of
/// `HOT_MASK`'s bits): `on_ready` then sends and reads at once.
pub(super) const HOT: u32 = MADE | READING;
pub(super) const HOT_MASK: u32 =
    MADE | READING | CONNECTING | LOST | ABORTED | FAILED | CLOSING | EOF_RECEIVED;

pub(super) fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

impl<S> Io<S> {
    #[inline]
    pub(super) fn is(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }

    #[inline]
    pub(super) fn set(&mut self, flag: u32) {
        self.flags |= flag;
    }

    #[inline]
    pub(super) fn unset(&mut self, flag: u32) {
        self.flags &= !flag;
    }

    #[inline]
    pub(super) fn put(&mut self, flag: u32, on: bool) {
        if on {
            self.set(flag);
        } else {
            self.unset(flag);
        }
    }

    pub(super) fn new(sock: Sock) -> Io<S> {
        let session = if sock.is_direct() { 0 } else { SESSION };
        Io {
            sock,
            out: Vec::new(),
            sent: 0,
            high: DEFAULT_HIGH_WATER,
            low: DEFAULT_LOW_WATER,
            flags: READING | session,
            connect_failed: None,
            error: None,
            timers: Vec::new(),
            idle: None,
            linger: LINGER,
            close_timeout: None,
            close_timed: false,
            owner: None,
        }
    }

    /// The interest the loop watches, or `None` while disabled.
    pub(super) fn watching(&self) -> Option<Interest> {
        match (self.is(WATCH_READ), self.is(WATCH_WRITE)) {
            (true, true) => Some(Interest::BOTH),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (false, false) => None,
        }
    }

    pub(super) fn set_watching(&mut self, interest: Option<Interest>) {
        self.put(WATCH_READ, interest.is_some_and(|i| i.is_readable()));
        self.put(WATCH_WRITE, interest.is_some_and(|i| i.is_writable()));
    }

    pub(super) fn pending(&self) -> usize {
        self.out.len() - self.sent
    }

    /// Something written is not yet with the kernel: bytes in the buffer,
    /// or output the socket's session holds (TLS records).
    pub(super) fn unsent(&self) -> bool {
        self.pending() > 0 || (self.is(SESSION) && self.sock.holds_output())
    }

    /// The socket's handshake, before `connection_made`: whether it is done.
    #[cold]
    pub(super) fn handshake(&mut self) -> bool {
        match self.sock.handshake() {
            Ok(done) => done,
            Err(e) if is_retry(&e) => false,
            Err(e) => {
                self.fail(e);
                false
            }
        }
    }

    /// Aborted or failed: finish at the next settle.
    pub(super) fn finishing(&self) -> bool {
        self.is(ABORTED | FAILED)
    }

    /// Whether writes are accepted (and why not, for the log).
    pub(super) fn refuses_writes(&self) -> Option<&'static str> {
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

    pub(super) fn fail(&mut self, e: io::Error) {
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
    pub(super) fn shutdown_failed(&mut self, e: io::Error) {
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
    pub(super) fn write_one(&mut self, data: &[u8]) {
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
    pub(super) fn send_held(&mut self) {
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
    pub(super) fn write(&mut self, bufs: &[&[u8]]) {
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
    pub(super) fn flush(&mut self) {
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
        if self.pending() == 0 && self.is(SESSION) && !self.is(FAILED) && self.sock.holds_output() {
            match self.sock.flush_output() {
                Ok(()) => {}
                Err(e) if is_retry(&e) => {}
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
    pub(super) fn is_steady(&self) -> bool {
        self.flags & STEADY_MASK == STEADY && self.out.is_empty()
    }

    /// After a close, reads and drops what the peer still sends, until its
    /// EOF: closing a socket with unread input makes the kernel send a
    /// reset, which can destroy data the peer has not read yet.
    pub(super) fn discard_input(&mut self, read_buf: &RefCell<Vec<u8>>) {
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
    pub(super) fn wanted(&self) -> Option<Interest> {
        if self.is(CONNECTING) {
            return Some(Interest::WRITABLE);
        }
        let unsent = if self.is(MADE) {
            self.unsent()
        } else {
            // In a handshake: what the protocol wrote waits for its end;
            // only the session's own records go out.
            self.is(SESSION) && self.sock.holds_output()
        };
        let read = if self.is(CLOSING) {
            // Lingering: discard until the peer's EOF.
            !unsent && !self.is(EOF_RECEIVED)
        } else {
            // (Before `connection_made`, a handshake reads.)
            (self.is(READING) || !self.is(MADE)) && !self.is(EOF_RECEIVED)
        };
        match (read, unsent) {
            (true, true) => Some(Interest::BOTH),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (false, false) => None,
        }
    }
}

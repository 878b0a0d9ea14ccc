//! The selectors-style front: keys, validation, rollback, EINTR, timeouts,
//! masking, merging and stale-token protection, once for every backend —
//! and the registration states the event loop builds on (suspended,
//! parked, renewed), so that it gets resolved records and keeps no
//! registration state of its own.

use std::fmt;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use slab::Slab;

use crate::backend::{Backend, BackendKind};
use crate::fd_table::FdTable;
use crate::sys;
use crate::{Event, Events, Interest, Ready, Token};

/// One registration: Python's `SelectorKey(fileobj, fd, events, data)`.
///
/// # Examples
///
/// ```
/// use muxloop::{Interest, Selector};
/// use std::os::fd::AsRawFd;
/// use std::os::unix::net::UnixStream;
///
/// let (a, _b) = UnixStream::pair()?;
/// let mut sel = Selector::new()?;
/// let key = sel.register(a.as_raw_fd(), Interest::READABLE, "client")?;
/// assert_eq!(key.fd(), a.as_raw_fd());
/// assert_eq!(key.interest(), Interest::READABLE);
/// assert_eq!(*key.data(), "client");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct SelectorKey<T> {
    fd: RawFd,
    interest: Interest,
    token: Token,
    data: T,
    /// Kept with its token and interest, but not given to the backend
    /// (the event loop's disabled sources).
    suspended: bool,
}

impl<T> SelectorKey<T> {
    /// The registered file descriptor.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// What the registration waits for (Python's `events`).
    pub fn interest(&self) -> Interest {
        self.interest
    }

    /// The token events for this registration carry.
    pub fn token(&self) -> Token {
        self.token
    }

    /// The user data.
    pub fn data(&self) -> &T {
        &self.data
    }

    /// The user data, mutably.
    pub fn data_mut(&mut self) -> &mut T {
        &mut self.data
    }

    /// Whether the registration is suspended: kept, but not watched.
    pub(crate) fn is_suspended(&self) -> bool {
        self.suspended
    }

    /// Consumes the key, returning the user data.
    pub fn into_data(self) -> T {
        self.data
    }
}

impl<T: fmt::Debug> fmt::Debug for SelectorKey<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelectorKey")
            .field("fd", &self.fd)
            .field("interest", &self.interest)
            .field("token", &self.token)
            .field("data", &self.data)
            .finish()
    }
}

/// A key and what the selector keeps about its registration.
struct Registration<T> {
    key: SelectorKey<T>,
    /// The token the backend knows the registration by: the key's token at
    /// `register`, kept when [`renew_parked`](Selector::renew_parked) gives
    /// the key a new one, so that a renewal needs no backend call. The
    /// backend's records carry it ([`ready_at`](Selector::ready_at)).
    ktoken: Token,
    /// Records of passes up to this round are dropped: the round of the
    /// key's latest renewal (that round's records were collected under its
    /// old token), or `QUIET` while the key is suspended or parked. One
    /// comparison per record instead of three.
    quiet_until: u64,
    /// Handed out by the event loop's `pause`: no record reaches the key,
    /// and the registration is dropped before the next wait unless
    /// [`renew_parked`](Selector::renew_parked) takes it back first.
    parked: bool,
}

/// What a slab index needs besides its registration, kept beside the slab
/// so that the entry `ready_at` reads for every record stays small: where
/// the index's record is in its latest round (to merge a second record
/// into it), and the round its registration last ended or began (a record
/// naming a registration gone in the current round was collected before
/// that, and is no sign of an orphan).
#[derive(Clone, Copy, Default)]
struct Merge {
    round: u64,
    pos: usize,
    changed: u64,
}

const NO_SLOT: usize = usize::MAX;

/// [`Registration::quiet_until`] of a key no record may reach.
const QUIET: u64 = u64::MAX;

/// Waits for readiness on many file descriptors: Python's
/// `selectors.BaseSelector`, on any [`BackendKind`].
///
/// Register non-blocking fds with an [`Interest`] and user data `T`; call
/// [`select`](Selector::select) to learn which are ready. Readiness is
/// level-triggered on every backend: an fd is reported for as long as it is
/// ready. The selector does not own the fds: unregister one before closing
/// it.
///
/// | Python `selectors`           | muxloop                                   |
/// |------------------------------|-------------------------------------------|
/// | `DefaultSelector()`          | [`Selector::new`] (honours `MUXLOOP_BACKEND`) |
/// | `EpollSelector()`, …         | [`Selector::with_backend`]                |
/// | `register(fileobj, events, data)` | [`register`](Selector::register)     |
/// | `unregister(fileobj)`        | [`unregister`](Selector::unregister)      |
/// | `modify(fileobj, events, data)` | [`modify`](Selector::modify), [`set_interest`](Selector::set_interest) |
/// | `select(timeout)`            | [`select`](Selector::select) into [`Events`] |
/// | `get_key(fileobj)`           | [`key`](Selector::key), [`key_by_token`](Selector::key_by_token) |
/// | `get_map()`                  | [`keys`](Selector::keys), [`len`](Selector::len) |
/// | `close()`                    | [`close`](Selector::close), `Drop`        |
///
/// # Examples
///
/// ```
/// use muxloop::{Events, Interest, Selector};
/// use std::io::Write;
/// use std::os::fd::AsRawFd;
/// use std::os::unix::net::UnixStream;
/// use std::time::Duration;
///
/// let (a, mut b) = UnixStream::pair()?;
/// a.set_nonblocking(true)?;
/// let mut sel = Selector::new()?;
/// sel.register(a.as_raw_fd(), Interest::READABLE, "a")?;
///
/// b.write_all(b"ping")?;
/// let mut events = Events::new();
/// sel.select(&mut events, Some(Duration::from_secs(1)))?;
/// for ev in &events {
///     let key = sel.key_by_token(ev.token()).expect("still registered");
///     assert_eq!(*key.data(), "a");
///     assert!(ev.ready().is_readable());
/// }
/// assert_eq!(events.len(), 1);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Selector<T> {
    backend: Option<Box<dyn Backend>>,
    name: &'static str,
    slots: Slab<Registration<T>>,
    /// Generation of each slab index; bumped when the index is freed.
    generations: Vec<u32>,
    /// `Merge` of each slab index (as long as `generations`).
    merges: Vec<Merge>,
    /// Slab index of each registered fd.
    by_fd: FdTable<usize>,
    /// The records of the latest pass: the backend's output, merged to
    /// one per registration (see [`ready_at`](Selector::ready_at)).
    raw: Vec<(Token, Ready)>,
    /// Whether the backend reports each fd at most once per wait, so that
    /// its records need no merging.
    each_once: bool,
    /// Counts passes: a wait, or a host's observation.
    round: u64,
    /// Records of the latest pass that came from registrations the kernel
    /// kept after their fd was closed: the backend is purged before it
    /// waits again.
    orphans: usize,
    /// Tokens of parked keys (some perhaps renewed or gone since).
    parked: Vec<Token>,
    /// How many keys are parked, or more (a parked key unregistered other
    /// than by `unpark_all` stays counted until then).
    parked_live: usize,
    /// The backend's clock, if it keeps one; else the system's.
    clock: Option<crate::VirtualClock>,
}

fn closed_error() -> io::Error {
    io::Error::other("selector is closed")
}

/// `renew` failed: the fd is unregistered, and the error returned.
#[cold]
fn renew_failed<T, R>(sel: &mut Selector<T>, fd: RawFd, e: io::Error) -> io::Result<R> {
    log::debug!("selector=renew backend={} fd={fd} error={e}", sel.name);
    let _ = sel.unregister(fd);
    Err(e)
}

fn not_found(fd: RawFd) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("fd {fd} is not registered"),
    )
}

fn not_found_token(token: Token) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{token:?} is not registered"),
    )
}

impl<T> Selector<T> {
    /// A selector on the default backend: the one named by the
    /// `MUXLOOP_BACKEND` environment variable, else the platform's best
    /// (see [`BackendKind::platform_default`]).
    ///
    /// # Errors
    ///
    /// An unknown or unavailable `MUXLOOP_BACKEND` (see
    /// [`BackendKind::from_env`]); the kernel refusing to create the
    /// instance.
    pub fn new() -> io::Result<Selector<T>> {
        Self::with_backend(BackendKind::from_env()?)
    }

    /// A selector on the given backend.
    ///
    /// # Errors
    ///
    /// `Unsupported` if this platform lacks the backend; the kernel refusing
    /// to create the instance (e.g. `EMFILE`).
    ///
    /// # Examples
    ///
    /// ```
    /// use muxloop::{BackendKind, Selector};
    ///
    /// for &kind in BackendKind::available() {
    ///     let sel = Selector::<()>::with_backend(kind)?;
    ///     assert_eq!(sel.backend_name(), kind.name());
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn with_backend(kind: BackendKind) -> io::Result<Selector<T>> {
        Ok(Self::from_backend(kind.create()?))
    }

    /// A selector on a backend of your own (or a wrapper around a built-in
    /// one, e.g. to count or inject calls). See
    /// [`Backend`] for the contract.
    pub fn from_backend(backend: Box<dyn Backend>) -> Selector<T> {
        let name = backend.name();
        let each_once = backend.reports_each_fd_once();
        let clock = backend.virtual_clock();
        log::debug!("selector=open backend={name}");
        Selector {
            clock,
            each_once,
            orphans: 0,
            parked: Vec::new(),
            parked_live: 0,
            backend: Some(backend),
            name,
            slots: Slab::new(),
            generations: Vec::new(),
            merges: Vec::new(),
            by_fd: FdTable::new(NO_SLOT),
            raw: Vec::new(),
            round: 0,
        }
    }

    /// The backend's name (`"epoll"`, …).
    pub fn backend_name(&self) -> &'static str {
        self.name
    }

    /// The time timeouts are measured in: the system's monotonic clock,
    /// or the backend's [`VirtualClock`](crate::VirtualClock) if it keeps
    /// one (a simulation).
    #[inline]
    pub fn now(&self) -> Instant {
        match &self.clock {
            None => Instant::now(),
            Some(c) => c.now(),
        }
    }

    fn backend(&mut self) -> io::Result<&mut Box<dyn Backend>> {
        self.backend.as_mut().ok_or_else(closed_error)
    }

    fn slot_of(&self, fd: RawFd) -> Option<usize> {
        if fd < 0 {
            return None;
        }
        self.by_fd.get(fd).copied()
    }

    /// Starts watching `fd` for `interest`, attaching `data`.
    ///
    /// The fd should be in non-blocking mode: readiness is a hint, and a
    /// blocking read after a spurious wake-up would stall the whole loop.
    ///
    /// # Errors
    ///
    /// * `InvalidInput`: `fd` is negative, or the backend cannot watch it
    ///   (select(2) and `fd >= FD_SETSIZE`);
    /// * `AlreadyExists`: `fd` is already registered (through any handle
    ///   with that number — perhaps it was closed and reused without
    ///   `unregister`);
    /// * the kernel's error (`EBADF` for a closed fd, `EPERM` from epoll for
    ///   a regular file, …).
    ///
    /// On error nothing is registered, in the selector or in the kernel.
    ///
    /// # Examples
    ///
    /// ```
    /// use muxloop::{Interest, Selector};
    /// use std::io::ErrorKind;
    /// use std::os::fd::AsRawFd;
    /// use std::os::unix::net::UnixStream;
    ///
    /// let (a, _b) = UnixStream::pair()?;
    /// let mut sel = Selector::new()?;
    /// let token = sel.register(a.as_raw_fd(), Interest::READABLE, 1)?.token();
    /// let err = sel.register(a.as_raw_fd(), Interest::WRITABLE, 2).unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    /// assert_eq!(sel.key_by_token(token).map(|k| *k.data()), Some(1));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn register(
        &mut self,
        fd: RawFd,
        interest: Interest,
        data: T,
    ) -> io::Result<&SelectorKey<T>> {
        if self.backend.is_none() {
            return Err(closed_error());
        }
        // A parked key's fd may have been closed since, and `fd` be its
        // number reused.
        self.unpark_all();
        if fd < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid fd {fd}: file descriptors are non-negative"),
            ));
        }
        if self.slot_of(fd).is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("fd {fd} is already registered (closed and reused without unregister?)"),
            ));
        }
        let index = self.slots.vacant_key();
        if index > Token::MAX_INDEX {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "too many registrations for the token space",
            ));
        }
        if self.generations.len() <= index {
            self.generations.resize(index + 1, 0);
            self.merges.resize(index + 1, Merge::default());
        }
        let token = Token::new(index, self.generations[index]);
        let name = self.name;
        self.backend()?.add(fd, token, interest).map_err(|e| {
            log::debug!("selector=register backend={name} fd={fd} error={e}");
            e
        })?;
        log::trace!(
            "selector=register backend={name} fd={fd} interest={interest:?} token={token:?}"
        );
        if log::log_enabled!(log::Level::Debug) && sys::is_blocking(fd) {
            log::debug!(
                "selector=register backend={name} fd={fd} is in blocking mode: a read or \
                 write on it after a spurious wake-up stalls the whole loop (set_nonblocking)"
            );
        }
        self.by_fd.insert(fd, index);
        let slot = Registration {
            key: SelectorKey {
                fd,
                interest,
                token,
                data,
                suspended: false,
            },
            ktoken: token,
            quiet_until: self.round,
            parked: false,
        };
        self.merges[index].changed = self.round;
        let i = self.slots.insert(slot);
        Ok(&self.slots[i].key)
    }

    /// Stops watching `fd` and hands back its key (with the data).
    ///
    /// Succeeds even if the fd was already closed, or closed and its number
    /// reused, before this call: the kernel's `EBADF`/`ENOENT` is ignored.
    ///
    /// # Errors
    ///
    /// `NotFound` if `fd` is not registered; an error if the selector is
    /// closed.
    ///
    /// # Examples
    ///
    /// ```
    /// use muxloop::{Interest, Selector};
    /// use std::os::fd::AsRawFd;
    /// use std::os::unix::net::UnixStream;
    ///
    /// let (a, _b) = UnixStream::pair()?;
    /// let fd = a.as_raw_fd();
    /// let mut sel = Selector::new()?;
    /// sel.register(fd, Interest::READABLE, String::from("conn 1"))?;
    /// drop(a); // closed before unregister: still fine
    /// let key = sel.unregister(fd)?;
    /// assert_eq!(key.into_data(), "conn 1");
    /// assert!(sel.is_empty());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn unregister(&mut self, fd: RawFd) -> io::Result<SelectorKey<T>> {
        self.unregister_as(fd, false)
    }

    /// [`unregister`](Selector::unregister) for an fd the caller closes
    /// right after (Python's rule: unregister, then close). A backend that
    /// batches deletes (epoll) applies this one at once, while the number
    /// still names the file, instead of failing after the close or, where
    /// a duplicate keeps the file open, leaving a registration no call can
    /// reach. Costs the one system call the deferred delete would have
    /// (on uring, the submission of the cancel of the fd's poll request,
    /// which keeps the file open: the peer sees the close at once).
    ///
    /// # Errors
    ///
    /// As [`unregister`](Selector::unregister).
    ///
    /// # Examples
    ///
    /// ```
    /// use muxloop::{Interest, Selector};
    /// use std::os::fd::AsRawFd;
    /// use std::os::unix::net::UnixStream;
    ///
    /// let (a, _b) = UnixStream::pair()?;
    /// let mut sel = Selector::new()?;
    /// sel.register(a.as_raw_fd(), Interest::READABLE, ())?;
    /// sel.unregister_closing(a.as_raw_fd())?;
    /// drop(a);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn unregister_closing(&mut self, fd: RawFd) -> io::Result<SelectorKey<T>> {
        self.unregister_as(fd, true)
    }

    fn unregister_as(&mut self, fd: RawFd, closing: bool) -> io::Result<SelectorKey<T>> {
        if self.backend.is_none() {
            return Err(closed_error());
        }
        let index = self.slot_of(fd).ok_or_else(|| not_found(fd))?;
        let (token, interest) = {
            let slot = &self.slots[index];
            (slot.ktoken, slot.key.interest)
        };
        if self.slots[index].key.suspended {
            log::trace!(
                "selector=unregister backend={} fd={fd} suspended",
                self.name
            );
        } else {
            self.backend_delete("unregister", fd, token, interest, closing)?;
        }
        Ok(self.forget(index))
    }

    /// Takes `fd` out of the backend. A kernel that already dropped it
    /// (closed, or closed and reused) is fine; any other error is logged
    /// and ignored: the selector forgets the fd either way.
    fn backend_delete(
        &mut self,
        what: &str,
        fd: RawFd,
        token: Token,
        interest: Interest,
        closing: bool,
    ) -> io::Result<()> {
        let name = self.name;
        let backend = self.backend()?;
        let res = if closing {
            backend.delete_closing(fd, token, interest)
        } else {
            backend.delete(fd, token, interest)
        };
        match res {
            Ok(()) => log::trace!("selector={what} backend={name} fd={fd}"),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBADF | libc::ENOENT)) => {
                log::debug!("selector={what} backend={name} fd={fd} already gone in kernel: {e}");
            }
            Err(e) => {
                log::warn!("selector={what} backend={name} fd={fd} kernel error ignored: {e}")
            }
        }
        Ok(())
    }

    /// The slot index of a live token.
    fn index_of(&self, token: Token) -> io::Result<usize> {
        match self.slots.get(token.index()) {
            Some(slot) if slot.key.token == token => Ok(token.index()),
            _ => Err(not_found_token(token)),
        }
    }

    /// Parks a registration (the event loop's `pause`): from now on no
    /// record reaches its key, and before the backend next waits (or an fd
    /// is registered, or [`flush`](Selector::flush)) it is unregistered —
    /// unless [`renew_parked`](Selector::renew_parked) takes it back first,
    /// which then costs no backend call. Only for an fd whose open file
    /// does not change while parked (the loop's paused sources own theirs).
    ///
    /// Returns the key, for the caller to take its data; `None` if `token`
    /// is not a registered, unparked key. [`unpark`](Selector::unpark)
    /// undoes it.
    #[inline]
    pub(crate) fn park(&mut self, token: Token) -> Option<&mut SelectorKey<T>> {
        let slot = self
            .slots
            .get_mut(token.index())
            .filter(|s| s.key.token == token && !s.parked)?;
        slot.parked = true;
        slot.quiet_until = QUIET;
        // Tokens of keys renewed or unregistered since stay in the list
        // until the next wait; keep it from growing without bound when the
        // selector does not wait.
        if self.parked.len() >= 64 && self.parked.len() >= 2 * self.slots.len() {
            let slots = &self.slots;
            self.parked.retain(|t| {
                slots
                    .get(t.index())
                    .is_some_and(|s| s.key.token == *t && s.parked)
            });
        }
        self.parked.push(token);
        self.parked_live += 1;
        Some(&mut self.slots[token.index()].key)
    }

    /// Undoes [`park`](Selector::park) of a key whose data the caller
    /// found it could not take after all.
    #[cold]
    pub(crate) fn unpark(&mut self, token: Token) {
        let round = self.round;
        if let Some(slot) = self.slots.get_mut(token.index()) {
            if slot.key.token == token && slot.parked {
                slot.parked = false;
                slot.quiet_until = if slot.key.suspended { QUIET } else { round };
                self.parked_live = self.parked_live.saturating_sub(1);
            }
        }
    }

    /// Unregisters every key still parked.
    #[inline]
    fn unpark_all(&mut self) {
        if self.parked_live > 0 {
            self.unpark_each();
        } else {
            // Every parked key was renewed or unregistered since.
            self.parked.clear();
        }
    }

    #[cold]
    #[inline(never)]
    fn unpark_each(&mut self) {
        let mut parked = std::mem::take(&mut self.parked);
        for &token in &parked {
            let _ = self.unregister_parked(token);
        }
        parked.clear();
        self.parked = parked;
        // No key is parked any more (each was in the list).
        self.parked_live = 0;
    }

    /// Unregisters the key of `token` if it is parked, handing it back.
    pub(crate) fn unregister_parked(&mut self, token: Token) -> Option<SelectorKey<T>> {
        let slot = self.slots.get(token.index())?;
        if slot.key.token != token || !slot.parked {
            return None;
        }
        let fd = slot.key.fd;
        log::trace!("selector=unpark backend={} fd={fd}", self.name);
        self.parked_live = self.parked_live.saturating_sub(1);
        self.unregister(fd).ok()
    }

    /// Watches a parked registration again, for `interest`, under a new
    /// token, with `data` (the old data is dropped): as an `unregister` and
    /// a `register` of the same fd would, but without telling the backend.
    /// It keeps knowing the registration by its first token (`ktoken`),
    /// and the records it collected before the renewal, in this round, are
    /// dropped. So no backend call at all when the interest is unchanged.
    ///
    /// Only if `token` is a parked key of `fd`; otherwise `data` comes
    /// back, nothing changed. On success the new token is returned; on
    /// error the fd is unregistered and `data` dropped. One look-up.
    #[inline]
    pub(crate) fn renew_parked(
        &mut self,
        token: Token,
        fd: RawFd,
        interest: Interest,
        data: T,
    ) -> Result<io::Result<Token>, T> {
        let index = token.index();
        let (Some(backend), Some(slot)) = (self.backend.as_mut(), self.slots.get_mut(index)) else {
            // Closed (where registering fails too), or not registered.
            return Err(data);
        };
        if slot.key.token != token || slot.key.fd != fd || !slot.parked {
            return Err(data);
        }
        slot.parked = false;
        self.parked_live = self.parked_live.saturating_sub(1);
        let generation = &mut self.generations[index];
        *generation = generation.wrapping_add(1);
        let new = Token::new(index, *generation);
        let (fd, old) = (slot.key.fd, slot.key.interest);
        let res = if slot.key.suspended {
            // Not in the backend: watched anew, under the new token (a
            // record of this round under the old one is then no sign of
            // an orphan: the registration changed in this round).
            self.merges[index].changed = self.round;
            backend.add(fd, new, interest).map(|()| {
                slot.key.suspended = false;
                slot.ktoken = new;
                slot.quiet_until = self.round;
            })
        } else {
            // Records collected under the old token in this round must
            // not reach the renewed key (the backend still reports it by
            // `ktoken`, in later rounds too).
            slot.quiet_until = self.round;
            if interest == old {
                Ok(())
            } else {
                backend.modify(fd, slot.ktoken, old, interest)
            }
        };
        let key = &mut slot.key;
        key.token = new;
        match res {
            Ok(()) => {
                key.interest = interest;
                key.data = data;
                Ok(Ok(new))
            }
            Err(e) => {
                drop(data);
                Ok(renew_failed(self, fd, e))
            }
        }
    }

    /// Stops giving a registration to the backend while keeping its key,
    /// token and interest: the fd is no longer watched, and nothing about
    /// it changes for the selector's users. For an fd whose open file is
    /// known not to change meanwhile (the event loop's sources own theirs).
    pub(crate) fn suspend(&mut self, token: Token) -> io::Result<()> {
        let index = self.index_of(token)?;
        let key = &self.slots[index].key;
        if key.suspended {
            return Ok(());
        }
        let (fd, interest) = (key.fd, key.interest);
        let ktoken = self.slots[index].ktoken;
        self.backend_delete("suspend", fd, ktoken, interest, false)?;
        let slot = &mut self.slots[index];
        slot.key.suspended = true;
        slot.quiet_until = QUIET;
        Ok(())
    }

    /// Watches a registration again, for `interest` (modifies it if it was
    /// not suspended). On error it stays suspended, with its old interest.
    pub(crate) fn unsuspend(&mut self, token: Token, interest: Interest) -> io::Result<()> {
        let index = self.index_of(token)?;
        let fd = self.slots[index].key.fd;
        if !self.slots[index].key.suspended {
            self.modify_interest(fd, interest)?;
            return Ok(());
        }
        let name = self.name;
        let ktoken = self.slots[index].ktoken;
        self.backend()?.add(fd, ktoken, interest)?;
        log::trace!("selector=unsuspend backend={name} fd={fd} interest={interest:?}");
        let slot = &mut self.slots[index];
        slot.key.suspended = false;
        slot.key.interest = interest;
        // A record collected before the suspension is dropped too.
        slot.quiet_until = if slot.parked { QUIET } else { self.round };
        Ok(())
    }

    /// Removes slot `index` from the maps and retires its token.
    fn forget(&mut self, index: usize) -> SelectorKey<T> {
        let slot = self.slots.remove(index);
        self.by_fd.remove(slot.key.fd);
        self.generations[index] = self.generations[index].wrapping_add(1);
        self.merges[index].changed = self.round;
        slot.key
    }

    /// Changes the interest and the data of a registered fd.
    ///
    /// When `interest` is unchanged only the data is swapped: no system
    /// call is made.
    ///
    /// # Errors
    ///
    /// `NotFound` if `fd` is not registered; the kernel's error. On error the
    /// key keeps its old interest and data (`data` is dropped) and the
    /// backend is left watching the old interest, so the selector and the
    /// kernel agree.
    ///
    /// # Examples
    ///
    /// ```
    /// use muxloop::{Interest, Selector};
    /// use std::os::fd::AsRawFd;
    /// use std::os::unix::net::UnixStream;
    ///
    /// let (a, _b) = UnixStream::pair()?;
    /// let mut sel = Selector::new()?;
    /// sel.register(a.as_raw_fd(), Interest::READABLE, "reading")?;
    /// let key = sel.modify(a.as_raw_fd(), Interest::BOTH, "reading and writing")?;
    /// assert_eq!(key.interest(), Interest::BOTH);
    /// assert_eq!(*key.data(), "reading and writing");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn modify(
        &mut self,
        fd: RawFd,
        interest: Interest,
        data: T,
    ) -> io::Result<&SelectorKey<T>> {
        let index = self.modify_interest(fd, interest)?;
        let key = &mut self.slots[index].key;
        key.data = data;
        Ok(key)
    }

    /// Changes only the interest of a registered fd, keeping its data.
    ///
    /// # Errors
    ///
    /// As [`modify`](Selector::modify).
    ///
    /// # Examples
    ///
    /// ```
    /// use muxloop::{Events, Interest, Selector};
    /// use std::os::fd::AsRawFd;
    /// use std::os::unix::net::UnixStream;
    /// use std::time::Duration;
    ///
    /// let (a, _b) = UnixStream::pair()?;
    /// let mut sel = Selector::new()?;
    /// sel.register(a.as_raw_fd(), Interest::READABLE, ())?;
    /// let mut events = Events::new();
    /// assert_eq!(sel.select(&mut events, Some(Duration::ZERO))?, 0);
    /// sel.set_interest(a.as_raw_fd(), Interest::WRITABLE)?;
    /// assert_eq!(sel.select(&mut events, Some(Duration::ZERO))?, 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_interest(&mut self, fd: RawFd, interest: Interest) -> io::Result<&SelectorKey<T>> {
        let index = self.modify_interest(fd, interest)?;
        Ok(&self.slots[index].key)
    }

    fn modify_interest(&mut self, fd: RawFd, interest: Interest) -> io::Result<usize> {
        if self.backend.is_none() {
            return Err(closed_error());
        }
        let index = self.slot_of(fd).ok_or_else(|| not_found(fd))?;
        let (token, old) = {
            let slot = &self.slots[index];
            (slot.ktoken, slot.key.interest)
        };
        if old != interest && self.slots[index].key.suspended {
            self.slots[index].key.interest = interest;
        } else if old != interest {
            let name = self.name;
            self.backend()?.modify(fd, token, old, interest)?;
            log::trace!("selector=modify backend={name} fd={fd} interest={interest:?}");
            self.slots[index].key.interest = interest;
        }
        Ok(index)
    }

    /// The key of a registered fd.
    pub fn key(&self, fd: RawFd) -> Option<&SelectorKey<T>> {
        self.slot_of(fd).map(|i| &self.slots[i].key)
    }

    /// The key of a registered fd, to change its data.
    pub fn key_mut(&mut self, fd: RawFd) -> Option<&mut SelectorKey<T>> {
        self.slot_of(fd).map(|i| &mut self.slots[i].key)
    }

    /// The key an event belongs to, if that registration still exists.
    ///
    /// Returns `None` once the registration is gone, even if the fd number
    /// (or the slot) has since been registered again: that is how a
    /// handler that unregisters fds while iterating over [`Events`] avoids
    /// acting on a stale event.
    pub fn key_by_token(&self, token: Token) -> Option<&SelectorKey<T>> {
        self.slots
            .get(token.index())
            .map(|s| &s.key)
            .filter(|k| k.token == token)
    }

    /// [`key_by_token`](Selector::key_by_token), mutably.
    pub fn key_by_token_mut(&mut self, token: Token) -> Option<&mut SelectorKey<T>> {
        self.slots
            .get_mut(token.index())
            .map(|s| &mut s.key)
            .filter(|k| k.token == token)
    }

    /// Every registered key, in no particular order (Python's `get_map()`).
    pub fn keys(&self) -> impl Iterator<Item = &SelectorKey<T>> {
        self.slots.iter().map(|(_, s)| &s.key)
    }

    /// How many fds are registered.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no fd is registered.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether [`close`](Selector::close) was called.
    pub fn is_closed(&self) -> bool {
        self.backend.is_none()
    }

    /// Releases the kernel object and forgets every key (dropping the data).
    /// Every later operation fails; closing again does nothing. `Drop` does
    /// the same.
    pub fn close(&mut self) {
        if let Some(backend) = self.backend.take() {
            log::debug!(
                "selector=close backend={} keys={}",
                backend.name(),
                self.slots.len()
            );
            drop(backend);
            self.slots.clear();
            self.by_fd.clear();
            self.generations.clear();
            self.merges.clear();
        }
    }

    /// The fd a program that drives this selector from its own loop polls
    /// for readability: readable whenever [`select`](Selector::select)
    /// would report something (after [`flush`](Selector::flush)). The same
    /// number, and the same open file, for the selector's whole life, also
    /// when the backend replaces its kernel object and after
    /// [`after_fork`](Selector::after_fork). `Some` on epoll, uring, kqueue and
    /// mio; `None` on select and poll, which have no kernel object (watch
    /// the registered fds themselves), on a closed selector, and if the
    /// kernel refused the fd (out of fds; logged).
    ///
    /// # Examples
    ///
    /// ```
    /// use muxloop::{BackendKind, Selector};
    ///
    /// let sel = Selector::<()>::with_backend(BackendKind::Poll)?;
    /// assert!(sel.backend_fd().is_none());
    /// # #[cfg(target_os = "linux")] {
    /// let sel = Selector::<()>::with_backend(BackendKind::Epoll)?;
    /// assert!(sel.backend_fd().is_some());
    /// # }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn backend_fd(&self) -> Option<BorrowedFd<'_>> {
        let fd = self.backend.as_ref()?.fd()?;
        sys::borrow_fd(fd, self)
    }

    /// Applies the changes the backend deferred: deletes batched until the
    /// next wait (epoll) and the re-arming of what the last wait reported
    /// (mio). After it, the [backend fd](Selector::backend_fd) is readable
    /// exactly when a registered fd is ready for its interest. `select`
    /// does it by itself; call it before a host loop polls the backend fd.
    ///
    /// # Errors
    ///
    /// The backend's error; an error if the selector is closed.
    pub fn flush(&mut self) -> io::Result<()> {
        self.backend()?;
        self.unpark_all();
        self.backend()?.flush()
    }

    /// Whether [`flush`](Selector::flush) has something to apply.
    pub(crate) fn needs_flush(&self) -> bool {
        self.parked_live > 0 || self.backend.as_ref().is_some_and(|b| b.has_deferred())
    }

    /// In a child process after `fork`, before the selector is used there:
    /// gives the child a kernel object of its own (under the same
    /// [backend fd](Selector::backend_fd) number) holding every
    /// registration. Until then the child shares the parent's epoll set
    /// (kqueues are not inherited at all): a registration change, or a
    /// `select` that consumes readiness, would reach the parent. Nothing
    /// this does reaches the parent's selector.
    ///
    /// # Errors
    ///
    /// The kernel refusing the new object; an error if the selector is
    /// closed.
    pub fn after_fork(&mut self) -> io::Result<()> {
        let backend = self.backend.as_mut().ok_or_else(closed_error)?;
        let mut live = self
            .slots
            .iter()
            .filter(|(_, s)| !s.key.suspended)
            .map(|(_, s)| (s.key.fd, s.ktoken, s.key.interest));
        backend.after_fork(&mut live)?;
        // Only now: until the kernel object is the child's own, a change
        // would reach the parent's.
        self.unpark_all();
        log::debug!("selector=after-fork backend={}", self.name);
        Ok(())
    }

    /// Every watched registration's fd and interest (suspended and
    /// parked ones not).
    pub(crate) fn watched(&self) -> impl Iterator<Item = (RawFd, Interest)> + '_ {
        self.slots
            .iter()
            .filter(|(_, s)| !s.key.suspended && !s.parked)
            .map(|(_, s)| (s.key.fd, s.key.interest))
    }

    /// A pass on readiness a host program observed itself (e.g. with its
    /// own poll(2)) instead of a wait, as [`wait_ready`] makes of a
    /// wait: records of fds that are not watched are ignored. Returns
    /// how many records [`ready_at`] has.
    ///
    /// [`wait_ready`]: Selector::wait_ready
    /// [`ready_at`]: Selector::ready_at
    pub(crate) fn observe(&mut self, observed: &[(RawFd, Ready)]) -> usize {
        self.settle();
        self.raw.clear();
        for &(fd, ready) in observed {
            if let Some(index) = self.slot_of(fd) {
                let slot = &self.slots[index];
                if !slot.key.suspended {
                    self.raw.push((slot.ktoken, ready));
                }
            }
        }
        // A host may list an fd twice.
        self.begin_pass(true);
        self.raw.len()
    }

    /// Waits until at least one registered fd is ready or `timeout`
    /// passes, and fills `events` with one entry per ready fd.
    ///
    /// * `None` waits as long as it takes;
    /// * `Some(Duration::ZERO)` polls without blocking;
    /// * any other timeout waits at least that long if nothing happens
    ///   (rounded up to the backend's resolution, never down to a busy
    ///   loop); huge values are clamped, never overflow.
    ///
    /// Readiness is level-triggered and masked by each key's interest; read
    /// and write readiness of one fd come as one event. A signal arriving
    /// during the wait (`EINTR`) does not end it: the wait resumes with the
    /// time that is left. Returns the number of events.
    ///
    /// `events` is cleared first and keeps its capacity, so reusing one
    /// buffer does not allocate in steady state. Since the events live
    /// outside the selector, a handler may register, modify and unregister
    /// while iterating over them; check each event with
    /// [`key_by_token`](Selector::key_by_token).
    ///
    /// # Errors
    ///
    /// The kernel's error (other than `EINTR`); an error if the selector is
    /// closed.
    pub fn select(&mut self, events: &mut Events, timeout: Option<Duration>) -> io::Result<usize> {
        events.clear();
        if self.backend.is_none() {
            return Err(closed_error());
        }
        self.settle();
        self.wait_until(timeout, |sel| {
            sel.begin_pass(!sel.each_once);
            sel.collect(events);
            !events.is_empty()
        })?;
        log::trace!(
            "selector=select backend={} events={}",
            self.name,
            events.len()
        );
        Ok(events.len())
    }

    /// The wait loop behind `select`: waits on the backend, retrying EINTR
    /// and waiting out the rest of the timeout, until `done` (given the
    /// selector with `raw` filled) says there is something to report.
    fn wait_until(
        &mut self,
        timeout: Option<Duration>,
        mut done: impl FnMut(&mut Self) -> bool,
    ) -> io::Result<()> {
        if self.backend.is_none() {
            return Err(closed_error());
        }
        // No clock read for the common "forever" and "don't block" cases;
        // an unrepresentable deadline is as good as none.
        let deadline = match timeout {
            Some(t) if !t.is_zero() => self.now().checked_add(t),
            _ => None,
        };
        let mut remaining = timeout;
        loop {
            self.raw.clear();
            let backend = self.backend.as_mut().ok_or_else(closed_error)?;
            match backend.wait(&mut self.raw, remaining) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    log::trace!("selector=select backend={} eintr, retrying", self.name);
                }
                Err(e) => return Err(e),
            }
            if done(self) || remaining == Some(Duration::ZERO) {
                return Ok(());
            }
            // Nothing to report: a timeout the kernel rounded down, a
            // signal, or only events for stale registrations. Wait out the
            // rest so the caller never wakes early.
            if let Some(deadline) = deadline {
                let now = self.now();
                if now >= deadline {
                    return Ok(());
                }
                remaining = Some(deadline - now);
            }
        }
    }

    /// Waits like [`select`](Selector::select), and keeps what the
    /// backend reported as this pass's records, one per registration,
    /// for the caller to take with [`ready_at`](Selector::ready_at) —
    /// which resolves and masks each at the moment it is taken, so that
    /// what the caller changed since the wait counts. The event loop
    /// dispatches this way, with no [`Events`] in between. Returns how
    /// many records there are (some may resolve to nothing).
    pub(crate) fn wait_ready(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        if self.backend.is_none() {
            return Err(closed_error());
        }
        self.settle();
        self.wait_until(timeout, |sel| {
            sel.begin_pass(!sel.each_once);
            !sel.raw.is_empty()
        })?;
        Ok(self.raw.len())
    }

    /// Before a wait: drops the parked registrations, and purges the
    /// backend if the last pass found orphans.
    #[inline]
    fn settle(&mut self) {
        self.unpark_all();
        if self.orphans > 0 {
            self.purge_backend();
        }
    }

    /// A new pass over `raw`: renewals and removals from now on count
    /// against its records. With `merge`, a second record of one
    /// registration (kqueue reports reading and writing apart) is ORed
    /// into the first and emptied.
    fn begin_pass(&mut self, merge: bool) {
        self.round += 1;
        self.orphans = 0;
        if !merge {
            return;
        }
        let round = self.round;
        for i in 0..self.raw.len() {
            let (token, ready) = self.raw[i];
            let index = token.index();
            // A stale record is left for `ready_at` to judge.
            if self.slots.get(index).is_none_or(|s| s.ktoken != token) {
                continue;
            }
            // Rounds only grow, so an entry left by an earlier
            // registration of this index never matches.
            let merge = &mut self.merges[index];
            if merge.round == round {
                self.raw[merge.pos].1 |= ready;
                self.raw[i].1 = Ready::EMPTY;
            } else {
                merge.round = round;
                merge.pos = i;
            }
        }
    }

    /// Record `i` of the latest pass, resolved: its key and its readiness
    /// masked by the key's interest. `None` if nothing is left of it: its
    /// registration was unregistered, renewed, suspended or parked since
    /// the pass began (a record collected before that), or none of its
    /// readiness is of interest. A record of a registration the kernel
    /// kept after its fd was closed (a duplicate keeps the file open) is
    /// counted, and the backend purged before it next waits.
    #[inline]
    pub(crate) fn ready_at(&mut self, i: usize) -> Option<(&mut SelectorKey<T>, Ready)> {
        let (token, ready) = *self.raw.get(i)?;
        let index = token.index();
        match self.slots.get_mut(index) {
            Some(slot) if slot.ktoken == token => {
                if slot.quiet_until >= self.round {
                    return None;
                }
                let ready = ready.masked(slot.key.interest);
                if ready.is_empty() {
                    None
                } else {
                    Some((&mut slot.key, ready))
                }
            }
            _ => {
                // Benign if the index's registration began or ended in
                // this pass: an earlier callback removed it.
                if self
                    .merges
                    .get(index)
                    .is_none_or(|m| m.changed != self.round)
                {
                    self.orphans += 1;
                }
                None
            }
        }
    }

    /// Turns the latest pass into events.
    fn collect(&mut self, events: &mut Events) {
        for i in 0..self.raw.len() {
            if let Some((key, ready)) = self.ready_at(i) {
                events.list.push(Event {
                    token: key.token,
                    fd: key.fd,
                    ready,
                });
            }
        }
        // `select` may wait again at once.
        if self.orphans > 0 {
            self.purge_backend();
        }
    }

    /// Records of registrations the kernel kept: the backend starts again
    /// from the live registrations.
    #[cold]
    #[inline(never)]
    fn purge_backend(&mut self) {
        let stale = std::mem::take(&mut self.orphans);
        log::warn!(
            "selector=select backend={} dropped {stale} event(s) of registrations the kernel kept \
             (an fd closed while a dup keeps its file open); rebuilding the kernel set",
            self.name
        );
        if let Some(backend) = self.backend.as_mut() {
            let mut live = self
                .slots
                .iter()
                .filter(|(_, s)| !s.key.suspended)
                .map(|(_, s)| (s.key.fd, s.ktoken, s.key.interest));
            if let Err(e) = backend.purge(&mut live) {
                log::warn!("selector=select backend={} purge failed: {e}", self.name);
            }
        }
    }
}

impl<T> Drop for Selector<T> {
    fn drop(&mut self) {
        self.close();
    }
}

impl<T> fmt::Debug for Selector<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Selector")
            .field("backend", &self.name)
            .field("len", &self.slots.len())
            .field("closed", &self.backend.is_none())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn parked_tokens_do_not_pile_up_without_a_wait() {
        let mut sel = Selector::with_backend(BackendKind::platform_default()).unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        let mut token = sel.register(fd, Interest::READABLE, 0).unwrap().token();
        for i in 0..10_000 {
            sel.park(token).unwrap();
            token = sel
                .renew_parked(token, fd, Interest::READABLE, i)
                .unwrap_or_else(|_| panic!("renewed"))
                .unwrap();
        }
        assert!(sel.parked.len() <= 64, "{} parked tokens", sel.parked.len());
        assert_eq!(sel.parked_live, 0);
    }

    #[test]
    fn a_parked_key_gets_no_record_and_is_unregistered_before_the_next_wait() {
        let mut sel = Selector::with_backend(BackendKind::platform_default()).unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        let token = sel.register(fd, Interest::WRITABLE, ()).unwrap().token();
        assert_eq!(sel.wait_ready(Some(Duration::ZERO)).unwrap(), 1);
        sel.park(token).unwrap();
        assert!(
            sel.ready_at(0).is_none(),
            "a record collected before the park"
        );
        assert_eq!(sel.len(), 1, "kept until the next wait");
        assert!(sel.needs_flush());
        assert_eq!(sel.wait_ready(Some(Duration::ZERO)).unwrap(), 0);
        assert!(sel.is_empty());
        assert!(!sel.needs_flush());
        assert!(sel.renew_parked(token, fd, Interest::WRITABLE, ()).is_err());
    }
}

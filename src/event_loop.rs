//! The reactor: owns sources, dispatches readiness to callbacks, runs
//! timers, deferred calls, cross-thread work and signals.

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::signal::Signals;
use crate::timer::{Timer, TimerId, Timers};
use crate::waker::Waker;
use crate::{BackendKind, Events, Interest, Ready, Selector, Token};

/// What a callback wants done with its registration after it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostAction {
    /// Keep it.
    Continue,
    /// Remove it: a source is unregistered and dropped (closing its fd); a
    /// repeating timer is cancelled.
    Remove,
}

/// Identifies a source registered with [`EventLoop::add`]. The type
/// parameter is the source's type, so [`EventLoop::remove`] hands back
/// exactly what was added.
///
/// An id belongs to the loop that made it: another loop answers
/// `NotFound` (or `None`) for it, whatever it holds.
pub struct SourceId<Src> {
    token: Token,
    loop_id: u64,
    _source: PhantomData<fn() -> Src>,
}

impl<Src> SourceId<Src> {
    fn new(token: Token, loop_id: u64) -> SourceId<Src> {
        SourceId {
            token,
            loop_id,
            _source: PhantomData,
        }
    }

    /// The selector token of the registration (unique while it lives).
    pub fn token(&self) -> Token {
        self.token
    }
}

impl<Src> Clone for SourceId<Src> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Src> Copy for SourceId<Src> {}

impl<Src> PartialEq for SourceId<Src> {
    fn eq(&self, other: &Self) -> bool {
        self.token == other.token && self.loop_id == other.loop_id
    }
}

impl<Src> Eq for SourceId<Src> {}

impl<Src> std::hash::Hash for SourceId<Src> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.token.hash(state);
        self.loop_id.hash(state);
    }
}

impl<Src> fmt::Debug for SourceId<Src> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceId({:?})", self.token)
    }
}

/// What a source callback is told: which source fired and how.
pub struct SourceEvent<Src> {
    id: SourceId<Src>,
    ready: Ready,
}

impl<Src> SourceEvent<Src> {
    /// The source that fired (to modify or remove it).
    pub fn id(&self) -> SourceId<Src> {
        self.id
    }

    /// What is ready, masked by the source's interest.
    pub fn ready(&self) -> Ready {
        self.ready
    }

    /// Shorthand for `ready().is_readable()`.
    pub fn is_readable(&self) -> bool {
        self.ready.is_readable()
    }

    /// Shorthand for `ready().is_writable()`.
    pub fn is_writable(&self) -> bool {
        self.ready.is_writable()
    }
}

/// A source taken out of its loop by [`EventLoop::pause`], with its
/// callback: give it to [`EventLoop::resume`] to watch it again, or take
/// the source back with [`into_source`](Paused::into_source). Dropping it
/// drops (closes) the source.
#[must_use = "dropping a Paused drops (closes) its source: resume it, or take it back with into_source"]
pub struct Paused<S, Src> {
    fd: RawFd,
    /// The registration it was paused from, and that registration's loop.
    token: Token,
    loop_id: u64,
    entry: Box<dyn Dispatch<S>>,
    _source: PhantomData<fn() -> Src>,
}

impl<S, Src: 'static> Paused<S, Src> {
    /// The source, without its callback.
    pub fn into_source(self) -> Src {
        let mut out: Option<Src> = None;
        self.entry.take_source(&mut out);
        out.expect("a Paused<S, Src> holds a source of type Src")
    }
}

impl<S, Src> fmt::Debug for Paused<S, Src> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Paused").field("fd", &self.fd).finish()
    }
}

/// Counters, readable with [`EventLoop::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoopStats {
    /// Loop iterations (one `select` each).
    pub iterations: u64,
    /// Source callbacks run.
    pub events_dispatched: u64,
    /// Timer callbacks run.
    pub timers_fired: u64,
    /// Deferred calls run ([`EventLoop::call_soon`] and
    /// [`LoopHandle::call_soon`]).
    pub calls_run: u64,
    /// Signal callbacks run.
    pub signals_dispatched: u64,
    /// Time spent waiting in `select`.
    pub wait_time: Duration,
    /// Time spent running callbacks of every kind.
    pub callback_time: Duration,
}

type Call<S> = Box<dyn FnOnce(&mut EventLoop<S>, &mut S)>;
type RemoteCall<S> = Box<dyn FnOnce(&mut EventLoop<S>, &mut S) + Send>;
type Repeat<S> = Box<dyn FnMut(&mut EventLoop<S>, &mut S) -> PostAction>;
type SignalCallback<S> = Box<dyn FnMut(&mut EventLoop<S>, &mut S)>;
type Hook<S> = Box<dyn FnMut(&mut S)>;

enum TimerCallback<S> {
    Once(Call<S>),
    Every(Repeat<S>),
}

/// A registered source with its callback, type-erased.
trait Dispatch<S> {
    fn dispatch(
        &mut self,
        lp: &mut EventLoop<S>,
        token: Token,
        ready: Ready,
        state: &mut S,
    ) -> PostAction;
    fn source(&self) -> &dyn Any;
    fn source_mut(&mut self) -> &mut dyn Any;
    /// Moves the source into `out`, an `Option<Src>` (left alone if the
    /// type differs): no allocation, unlike boxing it as `dyn Any`.
    fn take_source(self: Box<Self>, out: &mut dyn Any);
}

struct Entry<Src, F> {
    source: Src,
    callback: F,
}

impl<S, Src, F> Dispatch<S> for Entry<Src, F>
where
    Src: 'static,
    F: FnMut(&mut EventLoop<S>, &mut Src, SourceEvent<Src>, &mut S) -> PostAction,
{
    fn dispatch(
        &mut self,
        lp: &mut EventLoop<S>,
        token: Token,
        ready: Ready,
        state: &mut S,
    ) -> PostAction {
        let ev = SourceEvent {
            id: SourceId::new(token, lp.id),
            ready,
        };
        (self.callback)(lp, &mut self.source, ev, state)
    }

    fn source(&self) -> &dyn Any {
        &self.source
    }

    fn source_mut(&mut self) -> &mut dyn Any {
        &mut self.source
    }

    fn take_source(self: Box<Self>, out: &mut dyn Any) {
        if let Some(slot) = out.downcast_mut::<Option<Src>>() {
            *slot = Some(self.source);
        }
    }
}

/// What the loop's selector keys hold.
enum Slot<S> {
    /// A user source.
    Source(Box<dyn Dispatch<S>>),
    /// A user source whose callback is running: the callback has it.
    Running,
    /// A source handed out by `pause`, whose registration is kept until the
    /// next wait (or `add`) in case it is resumed before then.
    Parked,
    Waker,
    Signals,
}

/// The part of the loop other threads can reach.
struct Remote<S> {
    queue: Mutex<Vec<RemoteCall<S>>>,
    stop: AtomicBool,
    alive: AtomicBool,
    waker: Waker,
}

/// A single-threaded reactor: the `for key, mask in sel.select():
/// key.data(key.fileobj, mask)` loop of Python's `selectors` example, as a
/// type, plus timers, deferred calls, a thread-safe handle and signals.
///
/// `S` is the state every callback gets `&mut` access to, so callbacks need
/// no `Rc<RefCell<…>>`: pass it to [`run`](EventLoop::run).
///
/// # Examples
///
/// ```
/// use muxloop::{EventLoop, Interest, PostAction};
/// use std::io::{Read, Write};
/// use std::os::unix::net::UnixStream;
/// use std::time::Duration;
///
/// let (a, mut b) = UnixStream::pair()?;
/// a.set_nonblocking(true)?;
/// let mut lp = EventLoop::<Vec<u8>>::new()?;
/// lp.add(a, Interest::READABLE, |lp, sock, _ev, got| {
///     let mut buf = [0; 64];
///     let n = sock.read(&mut buf).unwrap_or(0);
///     got.extend_from_slice(&buf[..n]);
///     lp.stop();
///     PostAction::Continue
/// })?;
/// lp.call_later(Duration::from_secs(5), |lp, _| lp.stop()); // a safety net
/// b.write_all(b"hi")?;
/// let mut received = Vec::new();
/// lp.run(&mut received)?;
/// assert_eq!(received, b"hi");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct EventLoop<S = ()> {
    /// Tells this loop's `Paused` values from other loops'.
    id: u64,
    selector: Selector<Slot<S>>,
    /// Tokens of `Slot::Parked` keys (some perhaps resumed or gone since).
    parked: Vec<Token>,
    events: Events,
    timers: Timers<TimerCallback<S>>,
    /// The repeating timer whose callback runs, and whether it was
    /// cancelled meanwhile.
    running_timer: Option<(TimerId, bool)>,
    soon: VecDeque<Call<S>>,
    remote: Arc<Remote<S>>,
    signals: Option<Signals<SignalCallback<S>>>,
    stopped: bool,
    /// An iteration is under way (its callbacks may not start another).
    iterating: bool,
    /// A callback panicked: the iteration it was in never finished, and
    /// the source or timer it ran is gone. The loop refuses to run again.
    poisoned: bool,
    before_sleep: Option<Hook<S>>,
    after_wake: Option<Hook<S>>,
    stats: LoopStats,
}

/// `pause` or `remove` of the source whose callback is running.
fn busy(verb: &str) -> io::Error {
    let advice = if verb == "pause" {
        "to stop watching it, pause it once the callback has returned \
         (EventLoop::call_soon), or change its interest with EventLoop::modify"
    } else {
        "return PostAction::Remove, or use EventLoop::discard"
    };
    io::Error::new(
        io::ErrorKind::ResourceBusy,
        format!(
            "cannot {verb} the source whose callback is running (the callback holds it): {advice}"
        ),
    )
}

fn unknown_source(token: Token) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("source {token:?} is not registered (already removed?)"),
    )
}

fn foreign_source(token: Token) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("source {token:?} belongs to another event loop"),
    )
}

impl<S> EventLoop<S> {
    /// A loop on the default backend (`MUXLOOP_BACKEND`, else the
    /// platform's best).
    ///
    /// # Errors
    ///
    /// As [`Selector::new`]; the kernel refusing the wake-up fd.
    pub fn new() -> io::Result<EventLoop<S>> {
        Self::with_backend(BackendKind::from_env()?)
    }

    /// A loop on the given backend.
    ///
    /// # Errors
    ///
    /// As [`Selector::with_backend`]; the kernel refusing the wake-up fd.
    pub fn with_backend(kind: BackendKind) -> io::Result<EventLoop<S>> {
        Self::with_selector(Selector::with_backend(kind)?)
    }

    /// A loop on a backend of your own, or a wrapper around a built-in one
    /// (to count or inject calls), as [`Selector::from_backend`] allows.
    ///
    /// # Errors
    ///
    /// The kernel refusing the wake-up fd; the backend refusing to watch it.
    ///
    /// # Examples
    ///
    /// ```
    /// use muxloop::{BackendKind, EventLoop};
    ///
    /// let backend = BackendKind::Poll.create()?;
    /// let lp = EventLoop::<()>::from_backend(backend)?;
    /// assert_eq!(lp.backend_name(), "poll");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn from_backend(backend: Box<dyn crate::Backend>) -> io::Result<EventLoop<S>> {
        Self::with_selector(Selector::from_backend(backend))
    }

    fn with_selector(mut selector: Selector<Slot<S>>) -> io::Result<EventLoop<S>> {
        let waker = Waker::new()?;
        selector.register(waker.fd(), Interest::READABLE, Slot::Waker)?;
        log::debug!("loop=new backend={}", selector.backend_name());
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Ok(EventLoop {
            id,
            selector,
            parked: Vec::new(),
            events: Events::with_capacity(256),
            timers: Timers::new(id),
            running_timer: None,
            soon: VecDeque::new(),
            remote: Arc::new(Remote {
                queue: Mutex::new(Vec::new()),
                stop: AtomicBool::new(false),
                alive: AtomicBool::new(true),
                waker,
            }),
            signals: None,
            stopped: false,
            iterating: false,
            poisoned: false,
            before_sleep: None,
            after_wake: None,
            stats: LoopStats::default(),
        })
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.selector.backend_name()
    }

    // --- sources -------------------------------------------------------------

    /// Registers a non-blocking source (a socket, pipe, mio or std type,
    /// `OwnedFd` — anything [`AsFd`], which owns its fd) and the callback to
    /// run when it is ready. The loop owns the source from now on, so it
    /// cannot be closed while registered; [`remove`](EventLoop::remove)
    /// hands it back.
    ///
    /// The loop relies on the source keeping the same open file while it
    /// or a [`Paused`] holds it, as every std and mio type does (a raw fd
    /// number is not a source: wrap it in an `OwnedFd`).
    ///
    /// The callback gets the loop (to add, modify or remove sources,
    /// schedule timers, stop), the source, the [`SourceEvent`] and the
    /// state, and says with its return value whether to keep the source.
    ///
    /// # Errors
    ///
    /// As [`Selector::register`] (e.g. `InvalidInput` for an fd the select
    /// backend cannot watch). On error the source is dropped, which closes
    /// it.
    pub fn add<Src, F>(
        &mut self,
        source: Src,
        interest: Interest,
        callback: F,
    ) -> io::Result<SourceId<Src>>
    where
        Src: AsFd + 'static,
        F: FnMut(&mut EventLoop<S>, &mut Src, SourceEvent<Src>, &mut S) -> PostAction + 'static,
    {
        let fd = source.as_fd().as_raw_fd();
        let entry: Box<dyn Dispatch<S>> = Box::new(Entry { source, callback });
        let token = self.register(fd, interest, Slot::Source(entry))?;
        log::trace!("loop=add fd={fd} interest={interest:?}");
        Ok(SourceId::new(token, self.id))
    }

    /// The token of one of this loop's ids.
    fn own<Src>(&self, id: SourceId<Src>) -> io::Result<Token> {
        if id.loop_id == self.id {
            Ok(id.token)
        } else {
            Err(foreign_source(id.token))
        }
    }

    /// Registers with the selector, after dropping the registrations of
    /// paused sources: one of them may have been closed since, and `fd`
    /// be its number reused.
    fn register(&mut self, fd: RawFd, interest: Interest, slot: Slot<S>) -> io::Result<Token> {
        self.unpark_all();
        Ok(self.selector.register(fd, interest, slot)?.token())
    }

    /// Unregisters the keys of sources paused and not resumed since.
    fn unpark_all(&mut self) {
        for i in 0..self.parked.len() {
            self.unpark(self.parked[i]);
        }
        self.parked.clear();
    }

    /// Unregisters the key of a paused source, if it is still parked.
    fn unpark(&mut self, token: Token) {
        if let Some(key) = self.selector.key_by_token(token) {
            if matches!(key.data(), Slot::Parked) {
                let fd = key.fd();
                log::trace!("loop=unpark fd={fd}");
                let _ = self.selector.unregister(fd);
            }
        }
    }

    fn source_fd(&self, token: Token) -> io::Result<RawFd> {
        match self.selector.key_by_token(token) {
            Some(key) if matches!(key.data(), Slot::Source(_) | Slot::Running) => Ok(key.fd()),
            _ => Err(unknown_source(token)),
        }
    }

    /// Changes what a source waits for. Allowed inside any callback,
    /// including the source's own.
    ///
    /// # Errors
    ///
    /// `NotFound` if the source was removed; as [`Selector::modify`].
    pub fn modify<Src>(&mut self, id: SourceId<Src>, interest: Interest) -> io::Result<()> {
        let fd = self.source_fd(self.own(id)?)?;
        self.selector.set_interest(fd, interest)?;
        Ok(())
    }

    /// The interest a source is registered with.
    pub fn interest<Src>(&self, id: SourceId<Src>) -> Option<Interest> {
        let token = self.own(id).ok()?;
        self.source_fd(token).ok()?;
        self.selector.key_by_token(token).map(|k| k.interest())
    }

    /// Unregisters a source and hands it back. Takes effect at once: no
    /// event collected earlier in this iteration reaches it, nor a new
    /// source that reuses its fd number.
    ///
    /// # Errors
    ///
    /// `NotFound` if already removed; `ResourceBusy` for the source whose
    /// callback is running (it holds the source: return
    /// [`PostAction::Remove`] or call [`discard`](EventLoop::discard)).
    pub fn remove<Src: 'static>(&mut self, id: SourceId<Src>) -> io::Result<Src> {
        let paused = self.take(id, "remove")?;
        self.unpark(paused.token);
        Ok(paused.into_source())
    }

    /// Unregisters a source and drops it (closing its fd). Works for any
    /// source, including the one whose callback is running: it is
    /// unregistered at once and dropped when its callback returns.
    ///
    /// # Errors
    ///
    /// `NotFound` if already removed.
    pub fn discard<Src>(&mut self, id: SourceId<Src>) -> io::Result<()> {
        let fd = self.source_fd(self.own(id)?)?;
        drop(self.selector.unregister(fd)?);
        log::trace!("loop=discard fd={fd}");
        Ok(())
    }

    /// Stops watching a source but keeps it and its callback, ready to
    /// [`resume`](EventLoop::resume): libev's stopped watcher. Use it to
    /// stop reading a connection for a while (backpressure) or to re-arm a
    /// watcher without dropping and re-creating its callback. Takes effect
    /// at once, like [`remove`](EventLoop::remove): no event collected
    /// earlier reaches it, and the old id is dead.
    ///
    /// The kernel registration itself is dropped only before the loop next
    /// waits (or adds a source). A source resumed before then needs no
    /// system call: it owns its fd, so the fd cannot have been closed or
    /// reused in between, and the registration is simply handed a new token.
    /// A stop-and-start of a watcher within one iteration is therefore
    /// free, where libev's `ev_io_stop` + `ev_io_start` costs one
    /// `epoll_ctl`.
    ///
    /// # Errors
    ///
    /// As [`remove`](EventLoop::remove).
    ///
    /// # Examples
    ///
    /// ```
    /// use muxloop::{EventLoop, Interest, PostAction};
    /// use std::os::unix::net::UnixStream;
    ///
    /// let (a, _b) = UnixStream::pair()?;
    /// let mut lp = EventLoop::<u32>::new()?;
    /// let id = lp.add(a, Interest::READABLE, |_, _, _, n| {
    ///     *n += 1;
    ///     PostAction::Continue
    /// })?;
    /// let paused = lp.pause(id)?;
    /// assert_eq!(lp.source_count(), 0);
    /// let id = lp.resume(paused, Interest::WRITABLE)?; // same callback
    /// let mut n = 0;
    /// lp.run_once(Some(std::time::Duration::from_secs(1)), &mut n)?;
    /// assert_eq!(n, 1);
    /// assert!(lp.remove(id).is_ok());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn pause<Src: 'static>(&mut self, id: SourceId<Src>) -> io::Result<Paused<S, Src>> {
        self.take(id, "pause")
    }

    /// Parks a source's key and hands out the source: `pause`, and the
    /// first half of `remove` (`verb` names which, for the error).
    fn take<Src: 'static>(&mut self, id: SourceId<Src>, verb: &str) -> io::Result<Paused<S, Src>> {
        let token = self.own(id)?;
        let Some(key) = self.selector.key_by_token_mut(token) else {
            return Err(unknown_source(token));
        };
        let fd = key.fd();
        let entry = match key.data_mut() {
            Slot::Source(_) => match std::mem::replace(key.data_mut(), Slot::Parked) {
                Slot::Source(entry) => entry,
                _ => unreachable!("matched above"),
            },
            Slot::Running => return Err(busy(verb)),
            _ => return Err(unknown_source(token)),
        };
        // Tokens of keys resumed or unregistered since stay in the list
        // until the next wait; keep it from growing without bound when the
        // loop is not run.
        if self.parked.len() >= 64 && self.parked.len() >= 2 * self.selector.len() {
            let selector = &self.selector;
            self.parked.retain(|&t| {
                selector
                    .key_by_token(t)
                    .is_some_and(|k| matches!(k.data(), Slot::Parked))
            });
        }
        self.parked.push(token);
        log::trace!("loop={verb} fd={fd}");
        Ok(Paused {
            fd,
            token,
            loop_id: self.id,
            entry,
            _source: PhantomData,
        })
    }

    /// Watches a paused source again, with its callback, for `interest`.
    /// Returns its new id. It may be resumed in another loop with the same
    /// state type.
    ///
    /// # Errors
    ///
    /// As [`add`](EventLoop::add); on error the source is dropped.
    pub fn resume<Src>(
        &mut self,
        paused: Paused<S, Src>,
        interest: Interest,
    ) -> io::Result<SourceId<Src>> {
        let Paused {
            fd,
            token,
            loop_id,
            entry,
            ..
        } = paused;
        let parked = loop_id == self.id
            && self
                .selector
                .key_by_token(token)
                .is_some_and(|k| k.fd() == fd && matches!(k.data(), Slot::Parked));
        if !parked {
            let token = self.register(fd, interest, Slot::Source(entry))?;
            log::trace!("loop=resume fd={fd} interest={interest:?}");
            return Ok(SourceId::new(token, self.id));
        }
        // Still registered: retire the old token (events collected under it
        // must not reach the resumed source), keep the kernel registration.
        let key = self.selector.renew(token, interest)?;
        let token = key.token();
        *key.data_mut() = Slot::Source(entry);
        log::trace!("loop=resume fd={fd} interest={interest:?} kept");
        Ok(SourceId::new(token, self.id))
    }

    /// The source, unless removed or running its callback (which has it).
    pub fn source<Src: 'static>(&self, id: SourceId<Src>) -> Option<&Src> {
        match self.selector.key_by_token(self.own(id).ok()?)?.data() {
            Slot::Source(entry) => entry.source().downcast_ref(),
            _ => None,
        }
    }

    /// The source, mutably; as [`source`](EventLoop::source).
    pub fn source_mut<Src: 'static>(&mut self, id: SourceId<Src>) -> Option<&mut Src> {
        let token = self.own(id).ok()?;
        match self.selector.key_by_token_mut(token)?.data_mut() {
            Slot::Source(entry) => entry.source_mut().downcast_mut(),
            _ => None,
        }
    }

    /// How many sources are registered (the loop's own wake-up and signal
    /// fds not counted).
    pub fn source_count(&self) -> usize {
        self.selector
            .keys()
            .filter(|k| matches!(k.data(), Slot::Source(_) | Slot::Running))
            .count()
    }

    // --- timers and deferred calls -------------------------------------------

    /// Runs `callback` once, `delay` from now (never earlier).
    pub fn call_later<F>(&mut self, delay: Duration, callback: F) -> TimerId
    where
        F: FnOnce(&mut EventLoop<S>, &mut S) + 'static,
    {
        let now = Instant::now();
        let at = now.checked_add(delay).unwrap_or_else(|| far_future(now));
        self.call_at(at, callback)
    }

    /// Runs `callback` once at `deadline` (never earlier). Timers due at the
    /// same instant run in the order they were scheduled.
    pub fn call_at<F>(&mut self, deadline: Instant, callback: F) -> TimerId
    where
        F: FnOnce(&mut EventLoop<S>, &mut S) + 'static,
    {
        self.timers
            .insert(deadline, None, TimerCallback::Once(Box::new(callback)))
    }

    /// Runs `callback` every `interval`, first `interval` from now, until it
    /// returns [`PostAction::Remove`] or is cancelled. A late loop does not
    /// fire a burst of missed runs: the next run is one interval after the
    /// late one. A zero interval runs once per loop iteration.
    pub fn call_every<F>(&mut self, interval: Duration, callback: F) -> TimerId
    where
        F: FnMut(&mut EventLoop<S>, &mut S) -> PostAction + 'static,
    {
        let now = Instant::now();
        let at = now.checked_add(interval).unwrap_or_else(|| far_future(now));
        self.timers
            .insert(at, Some(interval), TimerCallback::Every(Box::new(callback)))
    }

    /// Cancels a timer; returns whether it was pending. Cancelling a
    /// repeating timer from its own callback stops it too.
    pub fn cancel(&mut self, id: TimerId) -> bool {
        if let Some((running, cancelled)) = &mut self.running_timer {
            if *running == id {
                let was = !*cancelled;
                *cancelled = true;
                return was;
            }
        }
        self.timers.cancel(id)
    }

    /// Moves a pending timer's deadline to `delay` from now, in place (a
    /// cheap "idle timeout" re-arm, like libev's `ev_timer_again`); a
    /// repeating timer keeps its interval afterwards. Returns whether the
    /// timer was pending (not fired, cancelled or running).
    ///
    /// # Examples
    ///
    /// ```
    /// use muxloop::EventLoop;
    /// use std::time::Duration;
    ///
    /// let mut lp = EventLoop::<()>::new()?;
    /// let idle = lp.call_later(Duration::from_secs(10), |_, _| println!("idle"));
    /// // Activity: push the idle timeout back.
    /// assert!(lp.reset_timer(idle, Duration::from_secs(10)));
    /// assert!(lp.cancel(idle));
    /// assert!(!lp.reset_timer(idle, Duration::from_secs(10)));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn reset_timer(&mut self, id: TimerId, delay: Duration) -> bool {
        let now = Instant::now();
        let at = now.checked_add(delay).unwrap_or_else(|| far_future(now));
        self.timers.reset(id, at)
    }

    /// How many timers are pending.
    pub fn timer_count(&self) -> usize {
        self.timers.len()
    }

    /// Runs `callback` on the next iteration, before the loop sleeps again.
    pub fn call_soon<F>(&mut self, callback: F)
    where
        F: FnOnce(&mut EventLoop<S>, &mut S) + 'static,
    {
        self.soon.push_back(Box::new(callback));
    }

    /// A handle other threads can use to queue work and stop the loop.
    pub fn handle(&self) -> LoopHandle<S> {
        LoopHandle {
            remote: self.remote.clone(),
        }
    }

    // --- signals -------------------------------------------------------------

    /// Runs `callback` in loop context whenever the process receives
    /// `signum` (e.g. `libc::SIGINT`). Replaces an earlier callback for the
    /// same signal. Signals arriving together are coalesced, as the kernel
    /// does.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for SIGKILL, SIGSTOP and numbers that are not
    /// signals; `AlreadyExists` if another loop in this process handles the
    /// signal.
    pub fn add_signal<F>(&mut self, signum: i32, callback: F) -> io::Result<()>
    where
        F: FnMut(&mut EventLoop<S>, &mut S) + 'static,
    {
        crate::signal::validate(signum)?;
        if self.signals.is_none() {
            let signals = Signals::new()?;
            self.register(signals.fd(), Interest::READABLE, Slot::Signals)?;
            self.signals = Some(signals);
        }
        let signals = self.signals.as_mut().expect("created above");
        signals.add(signum, Box::new(callback))
    }

    /// Stops handling `signum` and restores the disposition it had before
    /// [`add_signal`](EventLoop::add_signal). Returns whether it was
    /// handled.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a number that is not a signal; the kernel's
    /// error restoring the old disposition.
    pub fn remove_signal(&mut self, signum: i32) -> io::Result<bool> {
        crate::signal::validate(signum)?;
        let Some(signals) = self.signals.as_mut() else {
            return Ok(false);
        };
        signals.remove(signum)
    }

    // --- running -------------------------------------------------------------

    /// Sets a hook run just before the loop waits in `select`.
    pub fn set_before_sleep<F: FnMut(&mut S) + 'static>(&mut self, hook: F) {
        self.before_sleep = Some(Box::new(hook));
    }

    /// Sets a hook run just after `select` returns.
    pub fn set_after_wake<F: FnMut(&mut S) + 'static>(&mut self, hook: F) {
        self.after_wake = Some(Box::new(hook));
    }

    /// Counters since the loop was created.
    pub fn stats(&self) -> LoopStats {
        self.stats
    }

    /// Makes [`run`](EventLoop::run) return after the current iteration.
    /// Called before `run`, it makes the next `run` poll once without
    /// waiting, run what is ready and due, and return (asyncio's rule).
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// Whether [`stop`](EventLoop::stop) was called and `run` has not yet
    /// returned for it.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Runs iterations until [`stop`](EventLoop::stop) (or
    /// [`LoopHandle::stop`]). A stop requested before the call makes it run
    /// one iteration, without waiting, and return.
    ///
    /// # Errors
    ///
    /// The selector's error; the loop can be run again afterwards.
    /// `ResourceBusy` if called from one of this loop's callbacks, or after
    /// a callback panicked, as [`run_once`](EventLoop::run_once).
    ///
    /// # Examples
    ///
    /// ```
    /// use muxloop::EventLoop;
    ///
    /// let mut lp = EventLoop::<u32>::new()?;
    /// lp.call_soon(|_, n| *n += 1);
    /// lp.stop(); // before run: one iteration, then return
    /// let mut n = 0;
    /// lp.run(&mut n)?;
    /// assert_eq!(n, 1);
    /// assert!(!lp.is_stopped());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn run(&mut self, state: &mut S) -> io::Result<()> {
        self.check_runnable()?;
        log::debug!("loop=run backend={}", self.backend_name());
        let res = loop {
            if let Err(e) = self.iterate(None, state) {
                break Err(e);
            }
            if self.stopped {
                break Ok(());
            }
        };
        self.stopped = false;
        log::debug!("loop=stopped");
        res
    }

    /// Runs one iteration: waits at most `timeout` (less if a timer is due
    /// or a call is queued; `None` = as long as it takes), then runs what
    /// became ready, due timers and queued calls.
    ///
    /// # Errors
    ///
    /// The selector's error; `ResourceBusy` if called from one of this
    /// loop's callbacks (a nested iteration would dispatch readiness the
    /// outer one has already collected), or after a callback panicked.
    ///
    /// # Panics
    ///
    /// A panic in a callback propagates out of the iteration. The loop
    /// stays memory-safe but not usable: the iteration was left half-done
    /// and the source or timer whose callback panicked is gone, so later
    /// calls to `run` and `run_once` return `ResourceBusy` saying so. Drop
    /// the loop (its sources are closed).
    pub fn run_once(&mut self, timeout: Option<Duration>, state: &mut S) -> io::Result<()> {
        self.iterate(timeout, state)
    }

    fn check_runnable(&self) -> io::Result<()> {
        if self.poisoned {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                "the event loop is unusable: a callback panicked during an earlier iteration, \
                 which was left half-done; drop the loop",
            ));
        }
        if self.iterating {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                "run/run_once called from a callback of the same loop: the loop is already running",
            ));
        }
        Ok(())
    }

    fn iterate(&mut self, cap: Option<Duration>, state: &mut S) -> io::Result<()> {
        self.check_runnable()?;
        self.iterating = true;
        // The closure only borrows what the loop is poisoned for if it
        // unwinds: nothing half-updated is used afterwards.
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.iterate_once(cap, state)
        }));
        self.iterating = false;
        match res {
            Ok(res) => res,
            Err(panic) => {
                self.poisoned = true;
                self.timers.end_pass();
                std::panic::resume_unwind(panic)
            }
        }
    }

    fn iterate_once(&mut self, cap: Option<Duration>, state: &mut S) -> io::Result<()> {
        if let Some(hook) = self.before_sleep.as_mut() {
            hook(state);
        }
        // After the hook, which may pause sources too.
        self.unpark_all();
        let now = Instant::now();
        let timeout = if !self.soon.is_empty() || self.stopped {
            Some(Duration::ZERO)
        } else {
            match self.timers.next_deadline() {
                Some(deadline) => {
                    let until = deadline.saturating_duration_since(now);
                    Some(cap.map_or(until, |c| c.min(until)))
                }
                None => cap,
            }
        };
        if self.selector.reports_each_fd_once() {
            // One pass: the records go straight to dispatch, which resolves
            // and masks them (no merging needed, no `Events` to build).
            let res = self.selector.select_raw(timeout);
            let woke = self.woke(now, state);
            let raw = res?;
            log::trace!("loop=iterate events={} timeout={timeout:?}", raw.len());
            for &(token, ready) in &raw {
                self.dispatch(token, ready, state);
            }
            self.selector.restore_raw(raw);
            self.finish_iteration(woke, state);
            return Ok(());
        }
        let mut events = std::mem::take(&mut self.events);
        let res = self.selector.select(&mut events, timeout);
        let woke = self.woke(now, state);
        if let Err(e) = res {
            self.events = events;
            return Err(e);
        }
        log::trace!("loop=iterate events={} timeout={timeout:?}", events.len());
        for ev in events.iter() {
            self.dispatch(ev.token(), ev.ready(), state);
        }
        self.events = events;
        self.finish_iteration(woke, state);
        Ok(())
    }

    /// Accounts the wait that began at `slept` and runs the wake hook.
    fn woke(&mut self, slept: Instant, state: &mut S) -> Instant {
        let woke = Instant::now();
        self.stats.wait_time += woke - slept;
        if let Some(hook) = self.after_wake.as_mut() {
            hook(state);
        }
        woke
    }

    /// Timers and queued calls, then the counters.
    fn finish_iteration(&mut self, woke: Instant, state: &mut S) {
        self.run_timers(state);
        self.run_soon(state);
        self.stats.iterations += 1;
        self.stats.callback_time += woke.elapsed();
    }

    // Inlined into both dispatch loops: called once per event, it is the
    // hottest path of the loop.
    #[inline(always)]
    fn dispatch(&mut self, token: Token, ready: Ready, state: &mut S) {
        // Gone already: removed by an earlier callback of this iteration.
        let Some(key) = self.selector.key_by_token_mut(token) else {
            return;
        };
        // Raw records are not masked yet (masking twice is harmless).
        let ready = ready.masked(key.interest());
        if ready.is_empty() {
            return;
        }
        let slot = key.data_mut();
        if !matches!(slot, Slot::Source(_)) {
            // The loop's own fds, or a source paused earlier in this pass.
            // (`Running` cannot occur: a pass has one record per source,
            // and passes do not nest.)
            return self.dispatch_own(token, state);
        }
        let Slot::Source(mut entry) = std::mem::replace(slot, Slot::Running) else {
            unreachable!("matched above");
        };
        self.stats.events_dispatched += 1;
        let action = entry.dispatch(self, token, ready, state);
        if let Some(key) = self.selector.key_by_token_mut(token) {
            if action == PostAction::Continue {
                if let slot @ Slot::Running = key.data_mut() {
                    *slot = Slot::Source(entry);
                }
                return;
            }
            let fd = key.fd();
            log::trace!("loop=remove fd={fd} by=callback");
            let _ = self.selector.unregister(fd);
        }
        // Otherwise discarded by its own callback: dropped here.
    }

    /// The loop's own keys: the wake-up fd and the signal pipe.
    #[cold]
    fn dispatch_own(&mut self, token: Token, state: &mut S) {
        match self.selector.key_by_token(token).map(|k| k.data()) {
            Some(Slot::Waker) => self.run_remote(state),
            Some(Slot::Signals) => self.run_signals(state),
            _ => {}
        }
    }

    fn run_timers(&mut self, state: &mut S) {
        if self.timers.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut rearm = Vec::new();
        // Timers scheduled by the callbacks below at a deadline already
        // past wait for the next iteration: the loop polls I/O in between.
        self.timers.begin_pass(now);
        while let Some((id, timer)) = self.timers.pop_expired(now) {
            self.stats.timers_fired += 1;
            let Timer {
                deadline,
                interval,
                callback,
                ..
            } = timer;
            match callback {
                TimerCallback::Once(cb) => {
                    self.timers.release(id);
                    cb(self, state);
                }
                TimerCallback::Every(mut cb) => {
                    self.running_timer = Some((id, false));
                    let action = cb(self, state);
                    let (_, cancelled) = self.running_timer.take().expect("set above");
                    if action != PostAction::Continue || cancelled {
                        self.timers.release(id);
                    } else {
                        let interval = interval.unwrap_or_default();
                        let mut next = deadline + interval;
                        if next <= now {
                            next = now + interval;
                        }
                        rearm.push((id, next, interval, cb));
                    }
                }
            }
        }
        self.timers.end_pass();
        // Re-armed after the pass, so a short interval cannot starve the
        // loop by firing again within the same pass.
        for (id, next, interval, cb) in rearm {
            self.timers.schedule(
                id,
                Timer::new(next, Some(interval), TimerCallback::Every(cb)),
            );
        }
    }

    fn run_soon(&mut self, state: &mut S) {
        // Only what was queued before this pass: calls queued now run on the
        // next iteration.
        for _ in 0..self.soon.len() {
            let Some(call) = self.soon.pop_front() else {
                break;
            };
            self.stats.calls_run += 1;
            call(self, state);
        }
    }

    fn run_remote(&mut self, state: &mut S) {
        self.remote.waker.reset();
        if self.remote.stop.swap(false, Ordering::AcqRel) {
            self.stopped = true;
        }
        let calls =
            std::mem::take(&mut *self.remote.queue.lock().unwrap_or_else(|e| e.into_inner()));
        for call in calls {
            self.stats.calls_run += 1;
            call(self, state);
        }
    }

    fn run_signals(&mut self, state: &mut S) {
        let mut pending = Vec::new();
        if let Some(signals) = self.signals.as_ref() {
            signals.drain(&mut pending);
        }
        for signum in pending {
            let Some(mut cb) = self.signals.as_mut().and_then(|s| s.take(signum)) else {
                continue;
            };
            log::debug!("loop=signal signum={signum}");
            self.stats.signals_dispatched += 1;
            cb(self, state);
            if let Some(signals) = self.signals.as_mut() {
                signals.put_back(signum, cb);
            }
        }
    }
}

fn far_future(now: Instant) -> Instant {
    // About 30 years: as good as never, and safe to add to.
    now + Duration::from_secs(30 * 365 * 86_400)
}

impl<S> Drop for EventLoop<S> {
    fn drop(&mut self) {
        self.remote.alive.store(false, Ordering::Release);
        log::debug!("loop=drop");
    }
}

impl<S> fmt::Debug for EventLoop<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLoop")
            .field("backend", &self.backend_name())
            .field("sources", &self.source_count())
            .field("timers", &self.timers.len())
            .field("stats", &self.stats)
            .finish()
    }
}

/// A thread-safe handle to an [`EventLoop`]: queue work for it and stop it
/// from any thread. `Send + Sync + Clone`, whatever the loop's state type.
///
/// Wake-ups are coalesced: however many calls are queued before the loop
/// gets to them, it is woken once (an eventfd on Linux, a self-pipe
/// elsewhere), and works on every backend.
///
/// # Examples
///
/// ```
/// use muxloop::EventLoop;
///
/// let mut lp = EventLoop::<u32>::new()?;
/// let handle = lp.handle();
/// let worker = std::thread::spawn(move || {
///     handle.call_soon(|lp, n| {
///         *n += 1;
///         lp.stop();
///     }).unwrap();
/// });
/// let mut n = 0;
/// lp.run(&mut n)?; // blocks with no timeout until the worker's call
/// worker.join().unwrap();
/// assert_eq!(n, 1);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct LoopHandle<S> {
    remote: Arc<Remote<S>>,
}

impl<S> LoopHandle<S> {
    fn check_alive(&self) -> io::Result<()> {
        if self.remote.alive.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the event loop was dropped",
            ))
        }
    }

    /// Queues `callback` to run on the loop's thread, in loop context, and
    /// wakes the loop (Python's `call_soon_threadsafe`).
    ///
    /// # Errors
    ///
    /// `NotConnected` if the loop was dropped; the kernel's error waking it.
    pub fn call_soon<F>(&self, callback: F) -> io::Result<()>
    where
        F: FnOnce(&mut EventLoop<S>, &mut S) + Send + 'static,
    {
        self.check_alive()?;
        self.remote
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(callback));
        self.remote.waker.wake()
    }

    /// Makes the loop's `run` return after its current iteration.
    ///
    /// # Errors
    ///
    /// As [`call_soon`](LoopHandle::call_soon).
    pub fn stop(&self) -> io::Result<()> {
        self.check_alive()?;
        self.remote.stop.store(true, Ordering::Release);
        self.remote.waker.wake()
    }

    /// Wakes the loop without queuing anything (its iteration ends early,
    /// e.g. to re-evaluate timers).
    ///
    /// # Errors
    ///
    /// As [`call_soon`](LoopHandle::call_soon).
    pub fn wake(&self) -> io::Result<()> {
        self.check_alive()?;
        self.remote.waker.wake()
    }
}

impl<S> Clone for LoopHandle<S> {
    fn clone(&self) -> Self {
        LoopHandle {
            remote: self.remote.clone(),
        }
    }
}

impl<S> fmt::Debug for LoopHandle<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopHandle")
            .field("alive", &self.remote.alive.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn parked_tokens_do_not_pile_up_without_a_wait() {
        let mut lp = EventLoop::<u32>::with_backend(BackendKind::platform_default()).unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        let mut id = lp
            .add(a, Interest::READABLE, |_, _, _, _| PostAction::Continue)
            .unwrap();
        for _ in 0..10_000 {
            let paused = lp.pause(id).unwrap();
            id = lp.resume(paused, Interest::READABLE).unwrap();
        }
        assert!(lp.parked.len() <= 64, "{} parked tokens", lp.parked.len());
    }
}

//! The reactor: owns sources, dispatches readiness to callbacks, runs
//! timers, deferred calls, cross-thread work and signals.
//!
//! One file per concept: this one holds the loop's state and how it is
//! made; [`source`] registering sources and dispatching their readiness;
//! [`run`] one iteration and running until stopped; [`timers`] timers and
//! deferred calls; [`handle`] the cross-thread handle; [`signals`] signals.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::waker::Waker;
use crate::{BackendKind, Interest, Selector};

mod blocking;
mod children;
mod embed;
mod handle;
mod run;
mod signal_pipe;
mod signals;
mod source;
mod timer_heap;
mod timers;

pub use blocking::BlockingPool;
pub(crate) use blocking::panic_message;
pub use handle::LoopHandle;
use handle::Remote;
use signal_pipe::SignalPipe;
pub use source::{Paused, SourceEvent, SourceId};
use timer_heap::TimerHeap;
pub use timer_heap::TimerId;
use timers::TimerCallback;

/// What a callback wants done with its registration after it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PostAction {
    /// Keep it.
    Continue,
    /// Remove it: a source is unregistered and dropped (closing its fd); a
    /// repeating timer is cancelled.
    Remove,
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

/// What the loop's selector keys hold.
enum Registrant<S> {
    /// A user source (whose callback may be running: see [`RunBox`]).
    ///
    /// [`RunBox`]: crate::sys::RunBox
    Source(source::SourceBox<S>),
    /// A source handed out by `pause`: the selector keeps its
    /// registration, parked, until the next wait (or `add`) in case it is
    /// resumed before then.
    Parked,
    Waker,
    Signals,
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
    id: u32,
    /// `sys::forks()` when the loop was made (or taken over by
    /// `after_fork`): a different value means this is an inherited copy.
    forks: u64,
    selector: Selector<Registrant<S>>,
    timers: TimerHeap<TimerCallback<S>>,
    /// The repeating timer whose callback runs, and whether it was
    /// cancelled meanwhile.
    running_timer: Option<(TimerId, bool)>,
    soon: VecDeque<Call<S>>,
    remote: Arc<Remote<S>>,
    signals: Option<SignalPipe<SignalCallback<S>>>,
    /// Children waiting for SIGCHLD.
    children: Vec<children::Waiting<S>>,
    /// Children not in `children` and not yet reported: watched by a pidfd
    /// source, or reaped already and waiting for their callback.
    unlisted_children: usize,
    /// Whether a stop was requested, and whether an iteration has run
    /// since (see [`Stop`]).
    stop: Stop,
    /// An iteration is under way (its callbacks may not start another).
    iterating: bool,
    /// A callback panicked: the iteration it was in never finished, and
    /// the source or timer it ran is gone. The loop refuses to run again.
    poisoned: std::rc::Rc<std::cell::Cell<bool>>,
    before_sleep: Option<Hook<S>>,
    after_wake: Option<Hook<S>>,
    stats: LoopStats,
    /// `stats.wait_time` and `stats.callback_time` as they are counted: in
    /// nanoseconds of the monotonic clock (`sys::monotonic_ns`).
    wait_ns: u64,
    callback_ns: u64,
    /// A host asked for the backend fd, and so polls the kernel object.
    host_polls: std::cell::Cell<bool>,
    /// Blocking work on a pool, and the callbacks waiting for it.
    blocking: blocking::Pending<S>,
}

/// A requested stop: `Pending` until an iteration has run with it, then
/// `Seen` (it no longer shortens waits; the next `run_once` or `run`
/// clears it).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stop {
    No,
    Pending,
    Seen,
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

    fn with_selector(mut selector: Selector<Registrant<S>>) -> io::Result<EventLoop<S>> {
        let waker = Waker::new()?;
        selector.register(waker.fd(), Interest::READABLE, Registrant::Waker)?;
        log::debug!("loop=new backend={}", selector.backend_name());
        static NEXT_ID: AtomicU32 = AtomicU32::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Ok(EventLoop {
            id,
            selector,
            timers: TimerHeap::new(u64::from(id)),
            running_timer: None,
            soon: VecDeque::new(),
            forks: crate::sys::forks(),
            remote: Arc::new(Remote::new(waker)),
            signals: None,
            children: Vec::new(),
            unlisted_children: 0,
            stop: Stop::No,
            iterating: false,
            poisoned: Default::default(),
            before_sleep: None,
            after_wake: None,
            stats: LoopStats::default(),
            wait_ns: 0,
            callback_ns: 0,
            host_polls: std::cell::Cell::new(false),
            blocking: blocking::Pending::new(),
        })
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.selector.backend_name()
    }
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

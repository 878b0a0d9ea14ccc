//! Sources: registering, pausing, resuming and removing them, and
//! dispatching their readiness to their callbacks.

use std::any::Any;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use super::{EventLoop, PostAction, Registrant};
use crate::sys::{RunBox, RunCell};
use crate::{Interest, Ready, Token};

/// Identifies a source registered with [`EventLoop::add`]. The type
/// parameter is the source's type, so [`EventLoop::remove`] hands back
/// exactly what was added.
///
/// An id belongs to the loop that made it: another loop answers
/// `NotFound` (or `None`) for it, whatever it holds.
pub struct SourceId<Src> {
    token: Token,
    loop_id: u32,
    _source: PhantomData<fn() -> Src>,
}

impl<Src> SourceId<Src> {
    fn new(token: Token, loop_id: u32) -> SourceId<Src> {
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

/// Ids of one loop are ordered by their tokens: the order sources were
/// added in, as far as freed slots are not reused (and the same for the
/// same program, run after run — a simulation relies on that).
impl<Src> PartialOrd for SourceId<Src> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<Src> Ord for SourceId<Src> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.token, self.loop_id).cmp(&(other.token, other.loop_id))
    }
}

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
    // The id's parts, flat: 16 bytes, passed to every callback in
    // registers.
    token: Token,
    loop_id: u32,
    ready: Ready,
    _source: PhantomData<fn() -> Src>,
}

impl<Src> SourceEvent<Src> {
    /// The source that fired (to modify or remove it).
    pub fn id(&self) -> SourceId<Src> {
        SourceId::new(self.token, self.loop_id)
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
    loop_id: u32,
    entry: RunBox<dyn Dispatch<S>>,
    _source: PhantomData<fn() -> Src>,
}

impl<S, Src: 'static> Paused<S, Src> {
    /// The source, without its callback.
    pub fn into_source(mut self) -> Src {
        let mut out: Option<Src> = None;
        // A paused source's callback is not running (`pause` refuses then).
        if let Some(entry) = self.entry.get_mut() {
            entry.take_source(&mut out);
        }
        out.expect("a Paused<S, Src> holds a source of type Src")
    }
}

impl<S, Src> fmt::Debug for Paused<S, Src> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Paused").field("fd", &self.fd).finish()
    }
}

/// A registered source with its callback, type-erased.
pub(super) trait Dispatch<S> {
    fn dispatch(
        &mut self,
        lp: &mut EventLoop<S>,
        token: Token,
        ready: Ready,
        state: &mut S,
    ) -> PostAction;
    /// The source (`None` once taken: never for a registered source).
    fn source(&self) -> Option<&dyn Any>;
    fn source_mut(&mut self) -> Option<&mut dyn Any>;
    /// Moves the source into `out`, an `Option<Src>` (left alone if the
    /// type differs): no allocation, unlike boxing it as `dyn Any`.
    fn take_source(&mut self, out: &mut dyn Any);
}

/// The cell a source lives in while it is registered: its callback runs
/// from it in place (see [`RunBox`]).
pub(super) type SourceBox<S> = RunBox<dyn Dispatch<S>>;

struct Entry<Src, F> {
    /// Always there, except in a `Paused` whose source was taken back.
    source: Option<Src>,
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
        let Some(source) = &mut self.source else {
            return PostAction::Continue;
        };
        let ev = SourceEvent {
            token,
            loop_id: lp.id,
            ready,
            _source: PhantomData,
        };
        (self.callback)(lp, source, ev, state)
    }

    fn source(&self) -> Option<&dyn Any> {
        self.source.as_ref().map(|s| s as &dyn Any)
    }

    fn source_mut(&mut self) -> Option<&mut dyn Any> {
        self.source.as_mut().map(|s| s as &mut dyn Any)
    }

    fn take_source(&mut self, out: &mut dyn Any) {
        if let Some(slot) = out.downcast_mut::<Option<Src>>() {
            *slot = self.source.take();
        }
    }
}

/// `pause` or `remove` of the source whose callback is running.
#[cold]
#[inline(never)]
fn busy(verb: &str) -> io::Error {
    let advice = if verb == "pause" {
        "to stop watching it from its own callback use EventLoop::disable (it keeps \
         the source and its id), or pause it once the callback has returned \
         (EventLoop::call_soon)"
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

#[cold]
#[inline(never)]
fn unknown_source(token: Token) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("source {token:?} is not registered (already removed?)"),
    )
}

#[cold]
#[inline(never)]
fn foreign_source(token: Token) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("source {token:?} belongs to another event loop"),
    )
}

impl<S> EventLoop<S> {
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
    /// As [`Selector::register`](crate::Selector::register) (e.g. `InvalidInput` for an fd the select
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
        let cell: Box<RunCell<dyn Dispatch<S>>> = RunCell::boxed(Entry {
            source: Some(source),
            callback,
        });
        let token = self.register(fd, interest, Registrant::Source(RunBox::new(cell)))?;
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

    /// Registers with the selector (which drops the registrations of
    /// paused sources first: one of them may have been closed since, and
    /// `fd` be its number reused).
    pub(super) fn register(
        &mut self,
        fd: RawFd,
        interest: Interest,
        slot: Registrant<S>,
    ) -> io::Result<Token> {
        self.check_process()?;
        Ok(self.selector.register(fd, interest, slot)?.token())
    }

    fn source_fd(&self, token: Token) -> io::Result<RawFd> {
        match self.selector.key_by_token(token) {
            Some(key) if matches!(key.data(), Registrant::Source(_)) => Ok(key.fd()),
            _ => Err(unknown_source(token)),
        }
    }

    /// Changes what a source waits for. Allowed inside any callback,
    /// including the source's own.
    ///
    /// # Errors
    ///
    /// `NotFound` if the source was removed; as [`Selector::modify`](crate::Selector::modify).
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
        drop(self.selector.unregister_parked(paused.token));
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
        drop(self.selector.unregister_closing(fd)?);
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
        let Some(key) = self.selector.park(token) else {
            return Err(unknown_source(token));
        };
        let fd = key.fd();
        let entry = match key.data_mut() {
            Registrant::Source(entry) if !entry.is_running() => {
                match std::mem::replace(key.data_mut(), Registrant::Parked) {
                    Registrant::Source(entry) => entry,
                    _ => unreachable!("matched above"),
                }
            }
            Registrant::Source(_) => {
                self.selector.unpark(token);
                return Err(busy(verb));
            }
            _ => {
                self.selector.unpark(token);
                return Err(unknown_source(token));
            }
        };
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
        // Still registered: retire the old token (events collected under it
        // must not reach the resumed source), keep the kernel registration.
        let slot = Registrant::Source(entry);
        let renewed = if loop_id == self.id {
            self.selector.renew_parked(token, fd, interest, slot)
        } else {
            Err(slot)
        };
        let token = match renewed {
            Ok(res) => res?,
            Err(slot) => {
                let token = self.register(fd, interest, slot)?;
                log::trace!("loop=resume fd={fd} interest={interest:?}");
                return Ok(SourceId::new(token, self.id));
            }
        };
        log::trace!("loop=resume fd={fd} interest={interest:?} kept");
        Ok(SourceId::new(token, self.id))
    }

    /// The source, unless removed or running its callback (which has it).
    pub fn source<Src: 'static>(&self, id: SourceId<Src>) -> Option<&Src> {
        match self.selector.key_by_token(self.own(id).ok()?)?.data() {
            Registrant::Source(entry) => entry.get()?.source()?.downcast_ref(),
            _ => None,
        }
    }

    /// The source, mutably; as [`source`](EventLoop::source).
    pub fn source_mut<Src: 'static>(&mut self, id: SourceId<Src>) -> Option<&mut Src> {
        let token = self.own(id).ok()?;
        match self.selector.key_by_token_mut(token)?.data_mut() {
            Registrant::Source(entry) => entry.get_mut()?.source_mut()?.downcast_mut(),
            _ => None,
        }
    }

    /// Stops watching a source but keeps it registered, with its callback
    /// and its id: the source is not polled, no event reaches it (not even
    /// one collected earlier in this iteration), and every method taking
    /// its id keeps working. [`enable`](EventLoop::enable) watches it
    /// again. Unlike [`pause`](EventLoop::pause) it works from the
    /// source's own callback and the id stays valid, which is what a
    /// connection needs that has nothing to read or write for a while
    /// (reading paused, output flushed), since an [`Interest`] is never
    /// empty. Disabling a disabled source does nothing; [`modify`]
    /// records the interest for `enable` without watching it.
    ///
    /// [`modify`]: EventLoop::modify
    ///
    /// # Errors
    ///
    /// `NotFound` if the source was removed or belongs to another loop.
    ///
    /// # Examples
    ///
    /// ```
    /// use muxloop::{EventLoop, Interest, PostAction};
    /// use std::os::unix::net::UnixStream;
    /// use std::time::Duration;
    ///
    /// let (a, _b) = UnixStream::pair()?;
    /// let mut lp = EventLoop::<u32>::new()?;
    /// // Always writable: disabled by its own first callback.
    /// let id = lp.add(a, Interest::WRITABLE, |lp, _, ev, n| {
    ///     *n += 1;
    ///     lp.disable(ev.id()).unwrap();
    ///     PostAction::Continue
    /// })?;
    /// let mut n = 0;
    /// for _ in 0..3 {
    ///     lp.run_once(Some(Duration::from_millis(10)), &mut n)?;
    /// }
    /// assert_eq!(n, 1);
    /// assert!(lp.is_disabled(id));
    /// lp.enable(id, Interest::WRITABLE)?; // the same id
    /// lp.run_once(Some(Duration::from_secs(1)), &mut n)?;
    /// assert_eq!(n, 2);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn disable<Src>(&mut self, id: SourceId<Src>) -> io::Result<()> {
        let token = self.own(id)?;
        self.source_fd(token)?;
        self.selector.suspend(token)
    }

    /// Watches a source again after [`disable`](EventLoop::disable), for
    /// `interest`; on a source that is not disabled, the same as
    /// [`modify`](EventLoop::modify).
    ///
    /// # Errors
    ///
    /// `NotFound` if the source was removed or belongs to another loop; the
    /// kernel's error (the source then stays disabled).
    pub fn enable<Src>(&mut self, id: SourceId<Src>, interest: Interest) -> io::Result<()> {
        let token = self.own(id)?;
        self.source_fd(token)?;
        self.selector.unsuspend(token, interest)
    }

    /// Whether a source is disabled (false if it is not registered).
    pub fn is_disabled<Src>(&self, id: SourceId<Src>) -> bool {
        let Ok(token) = self.own(id) else {
            return false;
        };
        self.source_fd(token).is_ok()
            && self
                .selector
                .key_by_token(token)
                .is_some_and(|k| k.is_suspended())
    }

    /// Lends a source to `f` together with the loop, so that `f` can act
    /// on both: write to another connection and change what it waits for,
    /// schedule timers for it, look at a third. (`source_mut` lends the
    /// source alone, borrowing the loop.) Returns `f`'s result, or `None`
    /// if the source is not registered here, or is already lent: to its
    /// own running callback, or by an enclosing `with_source`.
    ///
    /// While lent the source is registered as usual; `f` may
    /// [`discard`](EventLoop::discard) it (it is dropped when `f` returns),
    /// but not `remove` or `pause` it (`ResourceBusy`).
    ///
    /// # Examples
    ///
    /// ```
    /// use muxloop::{EventLoop, Interest, PostAction};
    /// use std::io::{Read, Write};
    /// use std::os::unix::net::UnixStream;
    ///
    /// let (a, mut peer) = UnixStream::pair()?;
    /// let mut lp = EventLoop::<()>::new()?;
    /// let id = lp.add(a, Interest::READABLE, |_, _, _, _| PostAction::Continue)?;
    /// let wrote = lp.with_source(id, |lp, sock| {
    ///     sock.write_all(b"hello")?;
    ///     lp.modify(id, Interest::BOTH) // the loop, too
    /// });
    /// assert!(matches!(wrote, Some(Ok(()))));
    /// let mut got = [0; 5];
    /// peer.read_exact(&mut got)?;
    /// assert_eq!(&got, b"hello");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn with_source<Src: 'static, R>(
        &mut self,
        id: SourceId<Src>,
        f: impl FnOnce(&mut EventLoop<S>, &mut Src) -> R,
    ) -> Option<R> {
        let token = self.own(id).ok()?;
        let Registrant::Source(entry) = self.selector.key_by_token_mut(token)?.data_mut() else {
            return None;
        };
        // Refused while the source's callback (or another `with_source`)
        // has it. If `f` drops the source, the run frees it when it ends.
        let mut run = entry.run()?;
        let src = run.get_mut().source_mut()?.downcast_mut::<Src>()?;
        Some(f(self, src))
    }

    /// How many sources are registered (the loop's own wake-up and signal
    /// fds not counted).
    pub fn source_count(&self) -> usize {
        self.selector
            .keys()
            .filter(|k| matches!(k.data(), Registrant::Source(_)))
            .count()
    }

    /// Runs the callback of record `i` of the iteration's pass. Called
    /// once per event, it is the hottest path of the loop.
    #[inline(always)]
    pub(super) fn dispatch(&mut self, i: usize, state: &mut S) {
        // Resolved and masked by the selector: nothing if an earlier
        // callback of this pass removed, renewed, disabled or paused it.
        let Some((key, ready)) = self.selector.ready_at(i) else {
            return;
        };
        let token = key.token();
        let Registrant::Source(entry) = key.data_mut() else {
            // The loop's own fds.
            return self.dispatch_own(token, state);
        };
        // The callback runs in place: the loop keeps the source's cell,
        // which refuses the source to anyone else meanwhile and, if the
        // callback drops it, lives until the run ends. (A run under way
        // cannot occur: a pass has one record per source, and passes do
        // not nest.)
        let Some(mut run) = entry.run() else {
            return;
        };
        self.stats.events_dispatched += 1;
        let action = run.get_mut().dispatch(self, token, ready, state);
        drop(run);
        if action != PostAction::Continue {
            self.remove_after_callback(token);
        }
    }

    /// `PostAction::Remove`: unregisters the source, unless its callback
    /// discarded it already.
    #[cold]
    #[inline(never)]
    fn remove_after_callback(&mut self, token: Token) {
        if let Some(fd) = self.selector.key_by_token(token).map(|k| k.fd()) {
            log::trace!("loop=remove fd={fd} by=callback");
            let _ = self.selector.unregister_closing(fd);
        }
    }

    /// The loop's own keys: the wake-up fd and the signal pipe.
    #[cold]
    fn dispatch_own(&mut self, token: Token, state: &mut S) {
        match self.selector.key_by_token(token).map(|k| k.data()) {
            Some(Registrant::Waker) => self.run_remote(state),
            Some(Registrant::Signals) => self.run_signals(state),
            _ => {}
        }
    }
}

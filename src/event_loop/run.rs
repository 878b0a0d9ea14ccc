//! Running the loop: one iteration step by step, `run` until stopped.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use std::cell::Cell;
use std::rc::Rc;

use super::{EventLoop, LoopStats, Stop};
use crate::Ready;

/// Where an iteration's readiness comes from.
#[derive(Clone, Copy)]
enum Wait<'a> {
    /// A wait in the backend, at most this long (`None`: no cap).
    Kernel(Option<Duration>),
    /// A host program's own observation, for the watched fds.
    Observed(&'a [(RawFd, Ready)]),
}

/// Marks the loop poisoned if it is dropped while unwinding: the loop's
/// iteration was left half-done.
struct PanicGuard(Rc<Cell<bool>>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.set(true);
        }
    }
}

impl<S> EventLoop<S> {
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
        LoopStats {
            wait_time: Duration::from_nanos(self.wait_ns),
            callback_time: Duration::from_nanos(self.callback_ns),
            ..self.stats
        }
    }

    /// Makes [`run`](EventLoop::run) return after the current iteration.
    /// Called before `run`, it makes the next `run` poll once without
    /// waiting, run what is ready and due, and return (asyncio's rule).
    ///
    /// For a loop driven by [`run_once`](EventLoop::run_once) (embedded in
    /// a host's loop) a stop is a message to the host: the iteration that
    /// sees it does not wait, and when that `run_once` returns
    /// [`is_stopped`](EventLoop::is_stopped) is true. The host then drops
    /// the loop, or goes on: the stop no longer shortens anything
    /// ([`next_timeout`](EventLoop::next_timeout) is as without it), and
    /// the next `run_once` clears it and waits as asked. A host that never
    /// looks does not spin.
    pub fn stop(&mut self) {
        self.stop = Stop::Pending;
    }

    /// Whether [`stop`](EventLoop::stop) (or
    /// [`LoopHandle::stop`](crate::LoopHandle::stop)) was called and not
    /// yet answered: `run` returning for it clears it, and for a loop
    /// driven by [`run_once`](EventLoop::run_once), the `run_once` after
    /// the one that saw it.
    ///
    /// # Examples
    ///
    /// ```
    /// use muxloop::EventLoop;
    /// use std::time::Duration;
    ///
    /// let mut lp = EventLoop::<()>::new()?;
    /// lp.call_soon(|lp, _| lp.stop());
    /// lp.run_once(Some(Duration::ZERO), &mut ())?;
    /// assert!(lp.is_stopped()); // the host sees it
    /// assert_eq!(lp.next_timeout(), None); // and is not made to spin
    /// lp.run_once(Some(Duration::ZERO), &mut ())?; // going on clears it
    /// assert!(!lp.is_stopped());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_stopped(&self) -> bool {
        self.stop != Stop::No
    }

    /// A requested stop no iteration has run with yet: the next wait is
    /// zero.
    pub(super) fn stop_pending(&self) -> bool {
        self.stop == Stop::Pending
    }

    /// After a host-driven iteration: a stop requested is now seen (not
    /// after a nested call a callback made, which ran no iteration).
    #[inline]
    fn see_stop(&mut self) {
        if self.stop != Stop::No && !self.iterating {
            self.stop = Stop::Seen;
        }
    }

    /// Clears a stop an earlier `run_once` already reported.
    #[inline]
    fn clear_seen_stop(&mut self) {
        if self.stop == Stop::Seen {
            self.stop = Stop::No;
        }
    }

    /// Runs iterations until [`stop`](EventLoop::stop) (or
    /// [`LoopHandle::stop`](crate::LoopHandle::stop)). A stop requested before the call makes it run
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
            if let Err(e) = self.iterate(Wait::Kernel(None), state) {
                break Err(e);
            }
            if self.stop != Stop::No {
                break Ok(());
            }
        };
        self.stop = Stop::No;
        log::debug!("loop=stopped");
        res
    }

    /// Runs one iteration: waits at most `timeout` (less if a timer is due
    /// or a call is queued; `None` = as long as it takes), then runs what
    /// became ready, due timers and queued calls. Returns how many
    /// callbacks it ran — sources, timers, queued calls (from this thread
    /// or a [`LoopHandle`](crate::LoopHandle)) and signals —, so that a
    /// program driving the loop from its own can run it until it returns 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use muxloop::EventLoop;
    /// use std::time::Duration;
    ///
    /// let mut lp = EventLoop::<()>::new()?;
    /// lp.call_soon(|_, _| {});
    /// lp.call_soon(|lp, _| lp.call_soon(|_, _| {})); // queues one more
    /// assert_eq!(lp.run_once(Some(Duration::ZERO), &mut ())?, 2);
    /// assert_eq!(lp.run_once(Some(Duration::ZERO), &mut ())?, 1);
    /// assert_eq!(lp.run_once(Some(Duration::ZERO), &mut ())?, 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
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
    /// (a timer whose callback panicked is gone; a source is kept, in
    /// whatever state its callback left it), so later calls to `run` and
    /// `run_once` return `ResourceBusy` saying so. Drop the loop (its
    /// sources are closed).
    pub fn run_once(&mut self, timeout: Option<Duration>, state: &mut S) -> io::Result<usize> {
        let before = self.callbacks_run();
        let res = self.iterate(Wait::Kernel(timeout), state);
        self.see_stop();
        res?;
        self.flush_for_host()?;
        Ok((self.callbacks_run() - before) as usize)
    }

    /// One iteration without a wait, on readiness that a program driving
    /// the loop from its own observed itself, for the fds
    /// [`watched_fds`](EventLoop::watched_fds) listed: GLib's way, for
    /// backends without a [backend fd](EventLoop::backend_fd) (select,
    /// poll) or for a host that prefers to watch each fd. Records of fds
    /// the loop does not watch are ignored; readiness is masked by each
    /// source's interest. Runs due timers and queued calls too, and
    /// returns how many callbacks ran, as
    /// [`run_once`](EventLoop::run_once).
    ///
    /// # Errors
    ///
    /// As [`run_once`](EventLoop::run_once).
    ///
    /// # Examples
    ///
    /// ```
    /// use muxloop::{BackendKind, EventLoop, Interest, PostAction, Ready};
    /// use std::io::{Read, Write};
    /// use std::os::fd::AsRawFd;
    /// use std::os::unix::net::UnixStream;
    ///
    /// let (a, mut b) = UnixStream::pair()?;
    /// a.set_nonblocking(true)?;
    /// let fd = a.as_raw_fd();
    /// let mut lp = EventLoop::<Vec<u8>>::with_backend(BackendKind::Poll)?;
    /// lp.add(a, Interest::READABLE, |_, sock, _, got| {
    ///     let mut buf = [0; 16];
    ///     let n = sock.read(&mut buf).unwrap_or(0);
    ///     got.extend_from_slice(&buf[..n]);
    ///     PostAction::Continue
    /// })?;
    /// let mut fds = Vec::new();
    /// lp.watched_fds(&mut fds)?; // the host polls these (and its own)
    /// assert!(fds.iter().any(|&(f, interest)| f == fd && interest.is_readable()));
    ///
    /// b.write_all(b"hi")?; // the host's poll(2) would see `fd` readable:
    /// let mut got = Vec::new();
    /// assert_eq!(lp.run_ready(&[(fd, Ready::READABLE)], &mut got)?, 1);
    /// assert_eq!(got, b"hi");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn run_ready(&mut self, observed: &[(RawFd, Ready)], state: &mut S) -> io::Result<usize> {
        let before = self.callbacks_run();
        let res = self.iterate(Wait::Observed(observed), state);
        self.see_stop();
        res?;
        self.flush_changes()?;
        Ok((self.callbacks_run() - before) as usize)
    }

    /// Callbacks of every kind run so far.
    fn callbacks_run(&self) -> u64 {
        let s = &self.stats;
        s.events_dispatched + s.timers_fired + s.calls_run + s.signals_dispatched
    }

    fn check_runnable(&self) -> io::Result<()> {
        self.check_process()?;
        if self.poisoned.get() {
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

    fn iterate(&mut self, wait: Wait<'_>, state: &mut S) -> io::Result<()> {
        self.check_runnable()?;
        // A stop an earlier `run_once` reported is answered by this
        // iteration (not by a nested call: `check_runnable` refuses those).
        self.clear_seen_stop();
        self.iterating = true;
        // Marks the loop poisoned if a callback unwinds through here (a
        // drop guard, not `catch_unwind`: that would move the whole
        // iteration into a closure and cost the hot path). Dropped, not
        // forgotten, after a normal return, so that its reference to the
        // flag goes too.
        let guard = PanicGuard(self.poisoned.clone());
        let res = self.iterate_once(wait, state);
        drop(guard);
        self.iterating = false;
        res
    }

    fn iterate_once(&mut self, wait: Wait<'_>, state: &mut S) -> io::Result<()> {
        if let Some(hook) = self.before_sleep.as_mut() {
            hook(state);
        }
        let slept = crate::sys::monotonic_ns();
        let res = match wait {
            Wait::Kernel(cap) => {
                let timeout = self.wait_timeout(cap);
                self.selector.wait_ready(timeout)
            }
            Wait::Observed(observed) => Ok(self.selector.observe(observed)),
        };
        let woke = self.woke(slept, state);
        let records = res?;
        log::trace!("loop=iterate records={records}");
        for i in 0..records {
            self.dispatch(i, state);
        }
        self.finish_iteration(woke, state);
        Ok(())
    }

    /// How long the iteration may wait, at most `cap`: not at all if calls
    /// are queued or a stop is pending, not past the next timer.
    fn wait_timeout(&self, cap: Option<Duration>) -> Option<Duration> {
        if !self.soon.is_empty() || self.stop_pending() {
            return Some(Duration::ZERO);
        }
        match self.timers.next_deadline() {
            Some(deadline) => {
                let until = deadline.saturating_duration_since(self.selector.now());
                Some(cap.map_or(until, |c| c.min(until)))
            }
            None => cap,
        }
    }

    /// Accounts the wait that began at `slept` (`sys::monotonic_ns`) and
    /// runs the wake hook.
    fn woke(&mut self, slept: u64, state: &mut S) -> u64 {
        let woke = crate::sys::monotonic_ns();
        self.wait_ns += woke.saturating_sub(slept);
        if let Some(hook) = self.after_wake.as_mut() {
            hook(state);
        }
        woke
    }

    /// Timers and queued calls, then the counters.
    fn finish_iteration(&mut self, woke: u64, state: &mut S) {
        self.run_timers(state);
        self.run_soon(state);
        self.stats.iterations += 1;
        self.callback_ns += crate::sys::monotonic_ns().saturating_sub(woke);
    }
}

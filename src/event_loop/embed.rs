//! Living inside another program: the fd a host loop polls, how long it
//! may sleep, GLib-style fd lists for backends without a kernel object,
//! and taking the loop over in a forked child.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::handle::Remote;
use super::{EventLoop, Registrant};
use crate::waker::Waker;
use crate::{Interest, sys};

impl<S> EventLoop<S> {
    /// The fd a program that drives this loop from its own polls for
    /// readability: it becomes readable whenever the loop has I/O to
    /// dispatch or work from a [`LoopHandle`](crate::LoopHandle) or a
    /// signal. Same number, same open file, for the loop's whole life
    /// (rebuilds of the kernel set and [`after_fork`](EventLoop::after_fork)
    /// keep both), so it can be registered once with a host's epoll,
    /// tokio's `AsyncFd`, GLib, … `Some` on epoll, uring, kqueue and mio; `None` on
    /// select and poll: use [`watched_fds`](EventLoop::watched_fds) and
    /// [`run_ready`](EventLoop::run_ready) there.
    ///
    /// Take it once, before the host's first turn: from the first call on,
    /// `run_once` leaves the kernel object exact for a host that polls it
    /// (on io_uring that is a system call, so the loop does it only once
    /// asked). The host's step: wait until this fd is readable or
    /// [`next_timeout`](EventLoop::next_timeout) passes, then call
    /// [`run_once`](EventLoop::run_once)`(Some(Duration::ZERO), …)`. When
    /// `run_once` returns, the fd reflects exactly the live registrations
    /// (nothing removed or paused still wakes it). An edge-triggered host
    /// (tokio) must call `run_once` until it returns 0 before waiting
    /// again. See the embedding guide.
    ///
    /// # Examples
    ///
    /// ```
    /// use muxloop::{BackendKind, EventLoop};
    ///
    /// let lp = EventLoop::<()>::with_backend(BackendKind::platform_default())?;
    /// match lp.backend_fd() {
    ///     Some(fd) => { /* register `fd` with the host's poller, once */ let _ = fd; }
    ///     None => { /* select or poll: use watched_fds and run_ready */ }
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn backend_fd(&self) -> Option<BorrowedFd<'_>> {
        let fd = self.selector.backend_fd();
        // From now on `run_once` leaves the kernel object exact for the
        // host (an extra system call on some backends, so only then).
        self.host_polls.set(fd.is_some());
        fd
    }

    /// How long a host may sleep before it must call
    /// [`run_once`](EventLoop::run_once) even if the
    /// [backend fd](EventLoop::backend_fd) stays quiet: the time to the
    /// next timer; `Some(ZERO)` when calls are queued, a stop is pending
    /// (one no iteration has seen yet: see [`stop`](EventLoop::stop)),
    /// or (once the [backend fd](EventLoop::backend_fd) was taken) changes
    /// made outside an iteration still have to reach the kernel;
    /// `None` when only I/O, a [`LoopHandle`](crate::LoopHandle) or a signal
    /// can wake it. Exact: round it *up* to the host's resolution (a poll(2)
    /// host: whole milliseconds), or the timer is not yet due when the host
    /// wakes.
    ///
    /// # Examples
    ///
    /// ```
    /// use muxloop::EventLoop;
    /// use std::time::Duration;
    ///
    /// let mut lp = EventLoop::<()>::new()?;
    /// assert_eq!(lp.next_timeout(), None);
    /// lp.call_later(Duration::from_secs(5), |_, _| {});
    /// let t = lp.next_timeout().unwrap();
    /// assert!(t > Duration::from_secs(4) && t <= Duration::from_secs(5));
    /// lp.call_soon(|_, _| {});
    /// assert_eq!(lp.next_timeout(), Some(Duration::ZERO));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn next_timeout(&self) -> Option<Duration> {
        if !self.soon.is_empty()
            || self.stop_pending()
            || self.remote.stop.load(Ordering::Acquire)
            || (self.host_polls.get() && self.selector.needs_flush())
        {
            return Some(Duration::ZERO);
        }
        let deadline = self.timers.next_deadline()?;
        Some(deadline.saturating_duration_since(self.selector.now()))
    }

    /// For a host that polls fds itself (GLib's way; the only way on the
    /// select and poll backends, which have no
    /// [backend fd](EventLoop::backend_fd)): fills `out` with every fd the
    /// loop watches and for what — its sources, and its wake-up and signal
    /// fds. Poll them (with [`next_timeout`](EventLoop::next_timeout)) and
    /// hand what you saw to [`run_ready`](EventLoop::run_ready). Call it
    /// before every poll: callbacks add, pause and remove sources.
    ///
    /// Cost: O(registered sources) per call, on top of the host's own
    /// O(fds) poll(2) — what the poll backend pays per wait anyway.
    ///
    /// # Errors
    ///
    /// The backend's error applying deferred changes; the fork error of
    /// [`run_once`](EventLoop::run_once).
    pub fn watched_fds(&mut self, out: &mut Vec<(RawFd, Interest)>) -> io::Result<()> {
        self.check_process()?;
        self.flush_changes()?;
        out.clear();
        out.extend(self.selector.watched());
        Ok(())
    }

    /// [`flush_changes`](EventLoop::flush_changes) after `run_once`, only
    /// for a host polling the backend fd: without one, the next wait
    /// applies the changes anyway, in its own system call.
    pub(super) fn flush_for_host(&mut self) -> io::Result<()> {
        if self.host_polls.get() {
            self.flush_changes()?;
        }
        Ok(())
    }

    /// Sends the changes deferred during an iteration to the kernel: the
    /// registrations of paused sources, and what the backend batches.
    pub(super) fn flush_changes(&mut self) -> io::Result<()> {
        self.selector.flush()
    }

    /// Fails if this loop was inherited across `fork` and not taken over.
    pub(super) fn check_process(&self) -> io::Result<()> {
        if sys::forks() == self.forks {
            return Ok(());
        }
        Err(io::Error::other(
            "this event loop was inherited from the parent process across fork: \
             call after_fork before using it in the child",
        ))
    }

    /// In a child process after `fork`, before the loop is used there:
    /// gives the child's copy of the loop its own kernel object (under the
    /// same [backend fd](EventLoop::backend_fd) number), wake-up fd and
    /// signal pipe, with every source registered again. The parent's loop
    /// and its handles are unaffected. Handles cloned before the fork fail
    /// in the child (their loop is the parent's): take new ones with
    /// [`handle`](EventLoop::handle). Sources, timers, queued calls and
    /// signal callbacks are kept; watched children are the parent's, so
    /// their watchers report an error (`ECHILD`): those watched through
    /// SIGCHLD on the first iteration, those watched by a pidfd (Linux)
    /// when the process exits.
    ///
    /// Until it is called, the copy refuses to run (and to add sources)
    /// with an error naming the fork, since it would share the kernel
    /// objects with the parent. A child that never touches the loop needs
    /// nothing: signals the loop handles get back, in the child, the
    /// disposition they had before the loop took them (SIGTERM kills it),
    /// and nothing the child does reaches the parent.
    ///
    /// # Errors
    ///
    /// The kernel refusing a new fd (the loop should then be dropped);
    /// `ResourceBusy` from a callback of this loop.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use muxloop::EventLoop;
    ///
    /// let mut lp = EventLoop::<()>::new()?;
    /// // SAFETY: the child only uses async-signal-safe calls and its loop.
    /// match unsafe { libc::fork() } {
    ///     0 => {
    ///         lp.after_fork()?; // now the child's own loop
    ///         lp.call_soon(|lp, _| lp.stop());
    ///         lp.run(&mut ())?;
    ///         std::process::exit(0);
    ///     }
    ///     _pid => { /* the parent's loop carries on as before */ }
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn after_fork(&mut self) -> io::Result<()> {
        if self.iterating {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                "after_fork called from a callback of the same loop",
            ));
        }
        // Everything fallible that involves no kernel object first.
        let waker = Waker::new()?;
        // Then the kernel object: until it is replaced, nothing may touch
        // it (it is the parent's too).
        self.selector.after_fork()?;
        let old_waker = self.remote.waker.fd();
        let _ = self.selector.unregister(old_waker);
        self.selector
            .register(waker.fd(), Interest::READABLE, Registrant::Waker)?;
        let old = std::mem::replace(&mut self.remote, Arc::new(Remote::new(waker)));
        // Handles cloned before the fork answer "loop gone" in the child.
        old.alive.store(false, Ordering::Release);
        if let Some(signals) = self.signals.as_mut() {
            let old_fd = signals.fd();
            signals.after_fork()?;
            let new_fd = signals.fd();
            let _ = self.selector.unregister(old_fd);
            self.selector
                .register(new_fd, Interest::READABLE, Registrant::Signals)?;
        }
        self.forks = sys::forks();
        if !self.children.is_empty() {
            // Children waiting for SIGCHLD are the parent's: no SIGCHLD
            // comes for them here. Polled at the next iteration, each is
            // reported with ECHILD.
            self.soon
                .push_back(Box::new(|lp, state| lp.reap_children(state)));
        }
        log::debug!("loop=after-fork backend={}", self.backend_name());
        Ok(())
    }
}

//! The cross-thread handle: queue work for the loop and stop it from any
//! thread.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::{EventLoop, RemoteCall};
use crate::waker::Waker;

/// The part of the loop other threads can reach.
pub(super) struct Remote<S> {
    pub(super) queue: Mutex<Vec<RemoteCall<S>>>,
    pub(super) stop: AtomicBool,
    pub(super) alive: AtomicBool,
    pub(super) waker: Waker,
}

impl<S> Remote<S> {
    pub(super) fn new(waker: Waker) -> Remote<S> {
        Remote {
            queue: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            alive: AtomicBool::new(true),
            waker,
        }
    }
}

impl<S> EventLoop<S> {
    /// A handle other threads can use to queue work and stop the loop.
    pub fn handle(&self) -> LoopHandle<S> {
        LoopHandle {
            remote: self.remote.clone(),
        }
    }

    pub(super) fn run_remote(&mut self, state: &mut S) {
        self.remote.waker.reset();
        if self.remote.stop.swap(false, Ordering::AcqRel) {
            self.stop = super::Stop::Pending;
        }
        let calls =
            std::mem::take(&mut *self.remote.queue.lock().unwrap_or_else(|e| e.into_inner()));
        for call in calls {
            self.stats.calls_run += 1;
            call(self, state);
        }
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

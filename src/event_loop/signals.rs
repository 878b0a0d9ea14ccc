//! Signals, delivered as ordinary callbacks in loop context.

use std::io;

use super::signal_pipe::SignalPipe;
use super::{EventLoop, Registrant};
use crate::Interest;

impl<S> EventLoop<S> {
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
        super::signal_pipe::validate(signum)?;
        self.ensure_signals()?;
        let signals = self.signals.as_mut().expect("created above");
        signals.add(signum, Box::new(callback))
    }

    /// Makes the signal pipe and watches it, if not done yet.
    pub(super) fn ensure_signals(&mut self) -> io::Result<()> {
        if self.signals.is_none() {
            let signals = SignalPipe::new()?;
            self.register(signals.fd(), Interest::READABLE, Registrant::Signals)?;
            self.signals = Some(signals);
        }
        Ok(())
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
        super::signal_pipe::validate(signum)?;
        let Some(signals) = self.signals.as_mut() else {
            return Ok(false);
        };
        signals.remove(signum)
    }

    pub(super) fn run_signals(&mut self, state: &mut S) {
        let mut pending = Vec::new();
        if let Some(signals) = self.signals.as_ref() {
            signals.drain(&mut pending);
        }
        for signum in pending {
            if signum == libc::SIGCHLD
                && self.signals.as_ref().is_some_and(|s| s.is_internal(signum))
            {
                self.reap_children(state);
            }
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

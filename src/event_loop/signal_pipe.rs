//! Unix signals delivered as ordinary loop callbacks: a process-wide handler
//! marks the signal pending and writes a byte into the loop's pipe to wake
//! it; the loop empties the pipe, takes the pending marks and runs the
//! callbacks in loop context, where anything is allowed.
//!
//! The marks, one per signal, say what arrived; the pipe only wakes. So a
//! burst of one signal that fills the pipe cannot hide another.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::sys::{self, SignalRoute};

pub(crate) struct SignalPipe<C> {
    read: OwnedFd,
    write: OwnedFd,
    handlers: HashMap<i32, Handler<C>>,
}

/// One signal routed to this loop: for a user callback, for the loop's
/// own use (SIGCHLD for child watchers), or both.
struct Handler<C> {
    route: SignalRoute,
    /// The user's callback; `None` while it runs, or if there is none.
    callback: Option<C>,
    user: bool,
    internal: bool,
}

/// Checks that muxloop can route `signum`.
pub(crate) fn validate(signum: i32) -> io::Result<()> {
    if signum == libc::SIGKILL || signum == libc::SIGSTOP {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("signal {signum} (SIGKILL/SIGSTOP) cannot be caught"),
        ));
    }
    if [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL].contains(&signum) {
        // The handler would return to the faulting instruction, which
        // faults again: a crash turned into a silent 100 % CPU spin.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "signal {signum} (SIGSEGV/SIGBUS/SIGFPE/SIGILL) reports a fault of the running \
                 code and cannot be handled in loop context"
            ),
        ));
    }
    if signum <= 0 || signum as usize >= sys::NSIG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid signal number {signum}"),
        ));
    }
    Ok(())
}

impl<C> SignalPipe<C> {
    pub(crate) fn new() -> io::Result<SignalPipe<C>> {
        let (read, write) = sys::pipe()?;
        Ok(SignalPipe {
            read,
            write,
            handlers: HashMap::new(),
        })
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Routes `signum` here, replacing the callback if it already was.
    pub(crate) fn add(&mut self, signum: i32, callback: C) -> io::Result<()> {
        validate(signum)?;
        let entry = self.route(signum)?;
        entry.callback = Some(callback);
        entry.user = true;
        Ok(())
    }

    /// Routes `signum` here for the loop's own use, keeping any user
    /// callback.
    pub(crate) fn add_internal(&mut self, signum: i32) -> io::Result<()> {
        self.route(signum)?.internal = true;
        Ok(())
    }

    /// The loop no longer needs `signum`: its previous disposition comes
    /// back unless a user callback still wants it.
    pub(crate) fn remove_internal(&mut self, signum: i32) -> io::Result<()> {
        let Some(entry) = self.handlers.get_mut(&signum) else {
            return Ok(());
        };
        entry.internal = false;
        if entry.user {
            return Ok(());
        }
        let entry = self.handlers.remove(&signum).expect("looked up above");
        log::debug!("signal=remove signum={signum}");
        sys::restore_signal(entry.route)
    }

    /// Whether the loop itself needs `signum`.
    pub(crate) fn is_internal(&self, signum: i32) -> bool {
        self.handlers.get(&signum).is_some_and(|h| h.internal)
    }

    /// The entry of `signum`, installing the route if it has none.
    fn route(&mut self, signum: i32) -> io::Result<&mut Handler<C>> {
        if !self.handlers.contains_key(&signum) {
            let route = sys::install_signal(signum, self.write.as_raw_fd()).map_err(|e| {
                if e.raw_os_error() == Some(libc::EINVAL) {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("signal {signum} cannot be handled: {e}"),
                    )
                } else {
                    e
                }
            })?;
            log::debug!("signal=add signum={signum}");
            self.handlers.insert(
                signum,
                Handler {
                    route,
                    callback: None,
                    user: false,
                    internal: false,
                },
            );
        }
        Ok(self.handlers.get_mut(&signum).expect("inserted above"))
    }

    /// Drops the user's callback of `signum`, and restores its previous
    /// disposition unless the loop needs it. Returns whether there was one.
    pub(crate) fn remove(&mut self, signum: i32) -> io::Result<bool> {
        let Some(entry) = self.handlers.get_mut(&signum) else {
            return Ok(false);
        };
        let was = std::mem::replace(&mut entry.user, false);
        entry.callback = None;
        if entry.internal {
            return Ok(was);
        }
        let entry = self.handlers.remove(&signum).expect("looked up above");
        log::debug!("signal=remove signum={signum}");
        sys::restore_signal(entry.route)?;
        Ok(was)
    }

    /// Empties the pipe, then puts the signals that arrived since the last
    /// call, each once, in increasing order, into `out`. In that order: a
    /// signal arriving after the pipe is emptied is either seen here or
    /// leaves a byte that wakes the loop again.
    pub(crate) fn drain(&self, out: &mut Vec<i32>) {
        let mut buf = [0u8; 64];
        loop {
            match sys::read(self.read.as_raw_fd(), &mut buf) {
                Ok(n) if n == buf.len() => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => break,
            }
        }
        for (&signum, entry) in &self.handlers {
            if sys::take_pending_signal(&entry.route) {
                out.push(signum);
            }
        }
        out.sort_unstable();
    }

    /// In a forked child: a pipe of its own (the inherited one is shared
    /// with the parent), and every handled signal routed to it.
    pub(crate) fn after_fork(&mut self) -> io::Result<()> {
        let (read, write) = sys::pipe()?;
        for entry in self.handlers.values() {
            sys::reroute_signal(&entry.route, write.as_raw_fd());
        }
        self.read = read;
        self.write = write;
        Ok(())
    }

    /// Takes the callback of `signum` out to run it.
    pub(crate) fn take(&mut self, signum: i32) -> Option<C> {
        self.handlers
            .get_mut(&signum)
            .filter(|e| e.user)
            .and_then(|e| e.callback.take())
    }

    /// Puts a callback back after it ran, unless the signal was removed or
    /// given a new callback meanwhile.
    pub(crate) fn put_back(&mut self, signum: i32, callback: C) {
        if let Some(entry) = self.handlers.get_mut(&signum) {
            if entry.user && entry.callback.is_none() {
                entry.callback = Some(callback);
            }
        }
    }
}

impl<C> Drop for SignalPipe<C> {
    fn drop(&mut self) {
        for (signum, entry) in self.handlers.drain() {
            if let Err(e) = sys::restore_signal(entry.route) {
                log::warn!("signal=restore signum={signum} error={e}");
            }
        }
    }
}

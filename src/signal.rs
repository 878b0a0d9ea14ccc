//! Unix signals delivered as ordinary loop callbacks: a process-wide handler
//! writes the signal number into the loop's pipe; the loop reads it and runs
//! the callback in loop context, where anything is allowed.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::sys::{self, SavedAction};

pub(crate) struct Signals<C> {
    read: OwnedFd,
    write: OwnedFd,
    handlers: HashMap<i32, (SavedAction, Option<C>)>,
}

/// Checks that muxloop can route `signum`.
pub(crate) fn validate(signum: i32) -> io::Result<()> {
    if signum == libc::SIGKILL || signum == libc::SIGSTOP {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("signal {signum} (SIGKILL/SIGSTOP) cannot be caught"),
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

impl<C> Signals<C> {
    pub(crate) fn new() -> io::Result<Signals<C>> {
        let (read, write) = sys::pipe()?;
        Ok(Signals {
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
        if let Some(entry) = self.handlers.get_mut(&signum) {
            entry.1 = Some(callback);
            return Ok(());
        }
        let saved = sys::install_signal(signum, self.write.as_raw_fd()).map_err(|e| {
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
        self.handlers.insert(signum, (saved, Some(callback)));
        Ok(())
    }

    /// Restores the previous disposition of `signum`.
    pub(crate) fn remove(&mut self, signum: i32) -> io::Result<bool> {
        let Some((saved, _)) = self.handlers.remove(&signum) else {
            return Ok(false);
        };
        log::debug!("signal=remove signum={signum}");
        sys::restore_signal(signum, &saved)?;
        Ok(true)
    }

    /// Reads the pending signal numbers, each at most once, in arrival
    /// order, into `out`.
    pub(crate) fn drain(&self, out: &mut Vec<i32>) {
        let mut buf = [0u8; 64];
        loop {
            match sys::read(self.read.as_raw_fd(), &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    for &b in &buf[..n] {
                        let signum = i32::from(b);
                        if !out.contains(&signum) {
                            out.push(signum);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    /// Takes the callback of `signum` out to run it.
    pub(crate) fn take(&mut self, signum: i32) -> Option<C> {
        self.handlers.get_mut(&signum).and_then(|e| e.1.take())
    }

    /// Puts a callback back after it ran, unless the signal was removed or
    /// given a new callback meanwhile.
    pub(crate) fn put_back(&mut self, signum: i32, callback: C) {
        if let Some(entry) = self.handlers.get_mut(&signum) {
            if entry.1.is_none() {
                entry.1 = Some(callback);
            }
        }
    }
}

impl<C> Drop for Signals<C> {
    fn drop(&mut self) {
        let signums: Vec<i32> = self.handlers.keys().copied().collect();
        for signum in signums {
            if let Err(e) = self.remove(signum) {
                log::warn!("signal=restore signum={signum} error={e}");
            }
        }
    }
}

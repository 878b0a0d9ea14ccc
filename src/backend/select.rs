//! select(2): two bit sets, scanned up to the highest registered fd.
//!
//! Cost: O(highest fd) per wait, in the kernel and here, whatever is ready.
//! Limit: `FD_SETSIZE` (1024). Setting a bit beyond it writes past the end of
//! `fd_set`, so such fds are refused at `add` with `InvalidInput` instead.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use super::Backend;
use crate::sys::{self, FD_SETSIZE, FdSet};
use crate::{Interest, Ready, Token};

pub(crate) struct SelectBackend {
    read: FdSet,
    write: FdSet,
    /// Token of each added fd, indexed by fd.
    tokens: Vec<Option<Token>>,
    /// Highest added fd, or -1.
    max_fd: RawFd,
}

impl SelectBackend {
    pub(crate) fn new() -> SelectBackend {
        SelectBackend {
            read: FdSet::new(),
            write: FdSet::new(),
            tokens: Vec::new(),
            max_fd: -1,
        }
    }

    fn set_bits(&mut self, fd: RawFd, interest: Interest) {
        self.read.remove(fd);
        self.write.remove(fd);
        if interest.is_readable() {
            self.read.insert(fd);
        }
        if interest.is_writable() {
            self.write.insert(fd);
        }
    }

    /// select(2) failed with EBADF: some added fd was closed behind our
    /// back. Report each closed one as an error (as poll's POLLNVAL would) so
    /// the owner notices and unregisters it, and take it out of `read` and
    /// `write` so the others can still be polled. Returns false if no
    /// closed fd was found.
    fn report_closed(
        &self,
        events: &mut Vec<(Token, Ready)>,
        read: &mut FdSet,
        write: &mut FdSet,
    ) -> bool {
        let mut found = false;
        for (fd, token) in self.tokens.iter().enumerate() {
            let fd = fd as RawFd;
            if let Some(token) = *token {
                if !sys::fd_is_open(fd) {
                    log::warn!(
                        "backend=select fd={fd} closed while registered (unregister before close)"
                    );
                    events.push((token, Ready::ERROR));
                    read.remove(fd);
                    write.remove(fd);
                    found = true;
                }
            }
        }
        found
    }
}

impl Backend for SelectBackend {
    fn name(&self) -> &'static str {
        "select"
    }

    fn add(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        if fd >= FD_SETSIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "fd {fd} is out of range for select(2) (FD_SETSIZE is {FD_SETSIZE}); \
                     use the poll or epoll backend"
                ),
            ));
        }
        // select(2) would only fail later, for every fd at once.
        sys::check_open(fd)?;
        let idx = fd as usize;
        if self.tokens.len() <= idx {
            self.tokens.resize(idx + 1, None);
        }
        self.tokens[idx] = Some(token);
        self.set_bits(fd, interest);
        self.max_fd = self.max_fd.max(fd);
        Ok(())
    }

    fn modify(&mut self, fd: RawFd, _: Token, _: Interest, new: Interest) -> io::Result<()> {
        self.set_bits(fd, new);
        Ok(())
    }

    fn delete(&mut self, fd: RawFd, _: Token, _: Interest) -> io::Result<()> {
        self.read.remove(fd);
        self.write.remove(fd);
        if let Some(slot) = self.tokens.get_mut(fd as usize) {
            *slot = None;
        }
        while self.max_fd >= 0 && self.tokens[self.max_fd as usize].is_none() {
            self.max_fd -= 1;
        }
        self.tokens.truncate((self.max_fd + 1) as usize);
        Ok(())
    }

    fn wait(
        &mut self,
        events: &mut Vec<(Token, Ready)>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        let mut read = self.read.clone();
        let mut write = self.write.clone();
        let nfds = self.max_fd + 1;
        match sys::select(nfds, &mut read, &mut write, timeout) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => {
                read = self.read.clone();
                write = self.write.clone();
                if !self.report_closed(events, &mut read, &mut write) {
                    return Err(e);
                }
                // Poll the live ones without blocking: the closed fds are
                // already something to report.
                sys::select(nfds, &mut read, &mut write, Some(Duration::ZERO))?;
            }
            Err(e) => return Err(e),
        }
        for (fd, token) in self.tokens.iter().enumerate() {
            let Some(token) = *token else { continue };
            let fd = fd as RawFd;
            let mut ready = Ready::EMPTY;
            if read.contains(fd) {
                ready |= Ready::READABLE;
            }
            if write.contains(fd) {
                ready |= Ready::WRITABLE;
            }
            if !ready.is_empty() {
                events.push((token, ready));
            }
        }
        Ok(())
    }
}

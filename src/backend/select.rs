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
    /// the owner notices and unregisters it.
    fn report_closed(&self, events: &mut Vec<(Token, Ready)>) -> bool {
        for (fd, token) in self.tokens.iter().enumerate() {
            if let Some(token) = token {
                if !sys::fd_is_open(fd as RawFd) {
                    log::warn!(
                        "backend=select fd={fd} closed while registered (unregister before close)"
                    );
                    events.push((*token, Ready::ERROR));
                }
            }
        }
        !events.is_empty()
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
        let n = match sys::select(self.max_fd + 1, &mut read, &mut write, timeout) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EBADF) && self.report_closed(events) => {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(());
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

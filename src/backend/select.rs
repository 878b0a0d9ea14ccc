//! select(2): two bit sets, scanned up to the highest registered fd.
//!
//! Cost: O(highest fd) per wait, in the kernel and here, whatever is ready.
//! Limit: none on Linux, where the set grows with the fds (see
//! `sys::SELECT_FD_LIMIT`); `FD_SETSIZE` (1024) elsewhere, where setting a
//! bit beyond it would write past the end of `fd_set`, so such fds are
//! refused at `add` with `InvalidInput` instead.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use super::Backend;
use crate::fd_table::FdTable;
use crate::sys::{self, FdSet};
use crate::{Interest, Ready, Token};

pub(crate) struct SelectBackend {
    read: FdSet,
    write: FdSet,
    /// Copies handed to the kernel, which overwrites them.
    ready_read: FdSet,
    ready_write: FdSet,
    /// One more than the highest fd this backend accepts, if limited.
    limit: Option<RawFd>,
    /// Token of each added fd.
    tokens: FdTable<Option<Token>>,
    /// Highest added fd, or -1.
    max_fd: RawFd,
}

impl SelectBackend {
    pub(crate) fn new() -> SelectBackend {
        Self::with_limit(sys::SELECT_FD_LIMIT)
    }

    fn with_limit(limit: Option<RawFd>) -> SelectBackend {
        SelectBackend {
            read: FdSet::new(),
            write: FdSet::new(),
            ready_read: FdSet::new(),
            ready_write: FdSet::new(),
            limit,
            tokens: FdTable::new(None),
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
}

/// select(2) failed with EBADF: some added fd was closed behind our
/// back. Report each closed one as an error (as poll's POLLNVAL would) so
/// the owner notices and unregisters it, and take it out of `read` and
/// `write` so the others can still be polled. Returns false if no
/// closed fd was found.
fn report_closed(
    tokens: &FdTable<Option<Token>>,
    events: &mut Vec<(Token, Ready)>,
    read: &mut FdSet,
    write: &mut FdSet,
) -> bool {
    let mut found = false;
    for (fd, token) in tokens.iter() {
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

impl Backend for SelectBackend {
    fn name(&self) -> &'static str {
        "select"
    }

    fn reports_each_fd_once(&self) -> bool {
        true
    }

    fn add(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        if let Some(limit) = self.limit.filter(|&limit| fd >= limit) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "fd {fd} is out of range for select(2) (FD_SETSIZE is {limit}); \
                     use the poll or epoll backend"
                ),
            ));
        }
        // select(2) would only fail later, for every fd at once.
        sys::check_open(fd)?;
        self.tokens.insert(fd, Some(token));
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
        self.tokens.remove(fd);
        if fd == self.max_fd {
            self.max_fd = self.tokens.max_fd().unwrap_or(-1);
        }
        Ok(())
    }

    fn wait(
        &mut self,
        events: &mut Vec<(Token, Ready)>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        let nfds = self.max_fd + 1;
        self.ready_read.copy_from(&self.read);
        self.ready_write.copy_from(&self.write);
        let (read, write) = (&mut self.ready_read, &mut self.ready_write);
        match sys::select(nfds, read, write, timeout) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => {
                read.copy_from(&self.read);
                write.copy_from(&self.write);
                if !report_closed(&self.tokens, events, read, write) {
                    return Err(e);
                }
                // Poll the live ones without blocking: the closed fds are
                // already something to report.
                sys::select(nfds, read, write, Some(Duration::ZERO))?;
            }
            Err(e) => return Err(e),
        }
        let tokens = &self.tokens;
        let (read, write) = (&self.ready_read, &self.ready_write);
        read.for_each_union(write, |fd| {
            let Some(Some(token)) = tokens.get(fd) else {
                return;
            };
            let mut ready = Ready::EMPTY;
            if read.contains(fd) {
                ready |= Ready::READABLE;
            }
            if write.contains(fd) {
                ready |= Ready::WRITABLE;
            }
            events.push((*token, ready));
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A duplicate of `fd` numbered at least `min`, if the fd limit allows.
    fn dup_at_least(fd: RawFd, min: RawFd) -> Option<std::os::fd::OwnedFd> {
        // SAFETY: F_DUPFD_CLOEXEC creates a descriptor and touches no memory.
        let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
        // SAFETY: `new`, if valid, was just created and is ours alone.
        (new >= 0).then(|| unsafe { std::os::fd::FromRawFd::from_raw_fd(new) })
    }

    #[test]
    fn limited_set_refuses_fds_beyond_its_size_with_invalid_input() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut backend = SelectBackend::with_limit(Some(sys::FD_SETSIZE));
        let Some(high) = dup_at_least(a.as_raw_fd(), sys::FD_SETSIZE) else {
            return; // RLIMIT_NOFILE too low to reach FD_SETSIZE here
        };
        let err = backend
            .add(high.as_raw_fd(), Token(1), Interest::READABLE)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("FD_SETSIZE"), "{err}");
        assert_eq!(backend.max_fd, -1, "nothing recorded");
        backend
            .add(a.as_raw_fd(), Token(2), Interest::WRITABLE)
            .unwrap();
        let mut events = Vec::new();
        backend.wait(&mut events, Some(Duration::ZERO)).unwrap();
        assert_eq!(events, vec![(Token(2), Ready::WRITABLE)]);
    }
}

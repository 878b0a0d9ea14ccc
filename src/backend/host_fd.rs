//! The fd a host program polls to learn that a backend has work: a
//! readiness object of its own (epoll or kqueue) that watches the
//! backend's kernel object.
//!
//! Why not hand out the backend's own fd: the epoll and mio backends
//! replace their kernel object when it holds registrations no call can
//! reach (see `purge`). A new number would lose a host that polls the old
//! one, and even the old number made to refer to the new object (dup3)
//! would lose a host that watches it with epoll, whose registrations
//! belong to the open file, not the number. One level of nesting keeps
//! both the number and the file: only the inner object is replaced, and
//! the outer one is told. It is made on first request, so a loop that is
//! never embedded pays nothing.

use std::cell::OnceCell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::sys;

pub(crate) struct HostFd {
    outer: OnceCell<Option<OwnedFd>>,
    inner: RawFd,
}

impl HostFd {
    /// For a backend whose kernel object is `inner`.
    pub(crate) fn new(inner: RawFd) -> HostFd {
        HostFd {
            outer: OnceCell::new(),
            inner,
        }
    }

    /// The outer fd, made on first call; `None` if the kernel refused it
    /// (e.g. out of fds), which is logged and not retried.
    pub(crate) fn fd(&self) -> Option<RawFd> {
        self.outer
            .get_or_init(|| match sys::watcher_of(self.inner) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    log::warn!("backend=host-fd inner={} not created: {e}", self.inner);
                    None
                }
            })
            .as_ref()
            .map(AsRawFd::as_raw_fd)
    }

    /// The backend replaced its kernel object with `inner` (the old one is
    /// about to close, which removes it from the outer one).
    pub(crate) fn replaced(&mut self, inner: RawFd) -> io::Result<()> {
        self.inner = inner;
        match self.outer.get() {
            Some(Some(outer)) => sys::watch_also(outer, inner),
            _ => Ok(()),
        }
    }

    /// In a forked child, after the backend made its own kernel object
    /// `inner`: an outer object of the child's own, under the same number
    /// where the system allows (see `sys::take_over_after_fork`).
    pub(crate) fn after_fork(&mut self, inner: RawFd) -> io::Result<()> {
        self.inner = inner;
        if let Some(Some(mut outer)) = self.outer.take() {
            sys::take_over_after_fork(&mut outer, sys::watcher_of(inner)?)?;
            self.outer = OnceCell::from(Some(outer));
        }
        Ok(())
    }
}

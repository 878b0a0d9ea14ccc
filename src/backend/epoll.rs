//! epoll(7), level-triggered: the kernel keeps the interest set and returns
//! only ready fds.
//!
//! Cost: O(1) syscall per add/modify/delete, O(ready fds) per wait. Quirks
//! handled:
//!
//! * the event buffer always has room for every registered fd, so one wait
//!   never truncates (`maxevents` is a hard cap in epoll_wait(2));
//! * a delete is deferred to the next wait, and an add of the same fd
//!   before then becomes one `EPOLL_CTL_MOD` instead of `DEL` + `ADD` (as
//!   libev does), which halves the syscalls of the common "stop watching,
//!   start again" pattern. If the fd now names another file, the MOD fails
//!   with `ENOENT` and a plain `ADD` follows, so a reused fd is never left
//!   unwatched; a MOD can only succeed on the very file the registration
//!   belongs to, since epoll keys registrations by file and fd;
//! * `EPOLLRDHUP` is requested with read interest so a peer's half-close is
//!   reported as a hang-up (epoll(7), since Linux 2.6.17);
//! * regular files and directories are refused by the kernel with `EPERM`
//!   (epoll_ctl(2)); the error reaches the selector, which rolls back;
//! * an fd closed without `delete` leaves the registration alive if another
//!   descriptor still refers to the same open file (epoll(7), Q6); its events
//!   carry a token the selector no longer knows, and since no `EPOLL_CTL_DEL`
//!   can name it any more, `purge` replaces the epoll instance with a fresh
//!   one holding only the live registrations.

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::time::Duration;

use super::Backend;
use crate::sys;
use crate::{Interest, Ready, Token};

const MIN_EVENTS: usize = 64;

pub(crate) struct EpollBackend {
    ep: OwnedFd,
    events: Vec<libc::epoll_event>,
    added: usize,
    /// fds deleted since the last wait, still registered in the kernel.
    deferred: Vec<RawFd>,
    /// Per fd: whether it is in `deferred` and not re-added since.
    is_deferred: Vec<bool>,
}

fn events_for(interest: Interest) -> u32 {
    let mut events = 0;
    if interest.is_readable() {
        events |= (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
    }
    if interest.is_writable() {
        events |= libc::EPOLLOUT as u32;
    }
    events
}

impl EpollBackend {
    pub(crate) fn new() -> io::Result<EpollBackend> {
        Ok(EpollBackend {
            ep: sys::epoll_create()?,
            events: Vec::with_capacity(MIN_EVENTS),
            added: 0,
            deferred: Vec::new(),
            is_deferred: Vec::new(),
        })
    }

    /// Takes `fd` off the deferred list; returns whether it was on it.
    fn undefer(&mut self, fd: RawFd) -> bool {
        match self.is_deferred.get_mut(fd as usize) {
            Some(flag) if *flag => {
                *flag = false;
                true
            }
            _ => false,
        }
    }

    /// Applies the deferred deletes. Errors are expected and ignored: a
    /// closed fd (EBADF) or a reused one (ENOENT) has nothing left to
    /// delete.
    fn flush_deletes(&mut self) {
        for i in 0..self.deferred.len() {
            let fd = self.deferred[i];
            if self.undefer(fd) {
                if let Err(e) = sys::epoll_ctl(&self.ep, libc::EPOLL_CTL_DEL, fd, 0, 0) {
                    log::trace!("backend=epoll fd={fd} deferred delete: {e}");
                }
            }
        }
        self.deferred.clear();
    }
}

impl Backend for EpollBackend {
    fn name(&self) -> &'static str {
        "epoll"
    }

    fn add(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        if self.undefer(fd) {
            // Still registered since a delete this round: reuse it.
            let res = sys::epoll_ctl(
                &self.ep,
                libc::EPOLL_CTL_MOD,
                fd,
                events_for(interest),
                token.0 as u64,
            );
            match res {
                Ok(()) => {
                    self.added += 1;
                    return Ok(());
                }
                // The fd now names another file (or was closed): fall
                // through to a plain ADD, which reports the real problem.
                Err(e) => log::trace!("backend=epoll fd={fd} coalesced MOD failed: {e}"),
            }
        }
        sys::epoll_ctl(
            &self.ep,
            libc::EPOLL_CTL_ADD,
            fd,
            events_for(interest),
            token.0 as u64,
        )?;
        self.added += 1;
        Ok(())
    }

    fn modify(&mut self, fd: RawFd, token: Token, _: Interest, new: Interest) -> io::Result<()> {
        sys::epoll_ctl(
            &self.ep,
            libc::EPOLL_CTL_MOD,
            fd,
            events_for(new),
            token.0 as u64,
        )
    }

    fn delete(&mut self, fd: RawFd, _: Token, _: Interest) -> io::Result<()> {
        // Deferred to the next wait (see the module docs); no event can
        // arrive for the fd before then.
        self.added -= 1;
        let idx = fd as usize;
        if self.is_deferred.len() <= idx {
            self.is_deferred.resize(idx + 1, false);
        }
        self.is_deferred[idx] = true;
        self.deferred.push(fd);
        Ok(())
    }

    fn purge(
        &mut self,
        live: &mut dyn Iterator<Item = (RawFd, Token, Interest)>,
    ) -> io::Result<()> {
        let ep = sys::epoll_create()?;
        let mut added = 0;
        for (fd, token, interest) in live {
            match sys::epoll_ctl(
                &ep,
                libc::EPOLL_CTL_ADD,
                fd,
                events_for(interest),
                token.0 as u64,
            ) {
                Ok(()) => added += 1,
                // Closed as well: nothing to watch.
                Err(e) => log::warn!("backend=epoll fd={fd} not re-added on purge: {e}"),
            }
        }
        log::debug!("backend=epoll purge re-added={added}");
        self.ep = ep;
        self.added = added;
        self.deferred.clear();
        self.is_deferred.clear();
        Ok(())
    }

    fn wait(
        &mut self,
        events: &mut Vec<(Token, Ready)>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        self.flush_deletes();
        self.events.clear();
        let want = self.added.max(MIN_EVENTS);
        if self.events.capacity() < want {
            self.events.reserve(want);
        }
        sys::epoll_wait(&self.ep, &mut self.events, timeout)?;
        for ev in &self.events {
            let bits = ev.events as libc::c_int;
            let mut ready = Ready::EMPTY;
            if bits & (libc::EPOLLIN | libc::EPOLLPRI) != 0 {
                ready |= Ready::READABLE;
            }
            if bits & libc::EPOLLOUT != 0 {
                ready |= Ready::WRITABLE;
            }
            if bits & (libc::EPOLLHUP | libc::EPOLLRDHUP) != 0 {
                ready |= Ready::HUP;
            }
            if bits & libc::EPOLLERR != 0 {
                ready |= Ready::ERROR;
            }
            events.push((Token(ev.u64 as usize), ready));
        }
        Ok(())
    }
}

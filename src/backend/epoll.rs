//! epoll(7), level-triggered: the kernel keeps the interest set and returns
//! only ready fds.
//!
//! Cost: O(1) syscall per add/modify/delete, O(ready fds) per wait. Quirks
//! handled:
//!
//! * the event buffer always has room for every registered fd, so one wait
//!   never truncates (`maxevents` is a hard cap in epoll_wait(2));
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
        })
    }
}

impl Backend for EpollBackend {
    fn name(&self) -> &'static str {
        "epoll"
    }

    fn add(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
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
        // The selector forgets the fd whatever the kernel says (a closed fd
        // fails with EBADF, a reused one with ENOENT), so count it gone.
        self.added -= 1;
        sys::epoll_ctl(&self.ep, libc::EPOLL_CTL_DEL, fd, 0, 0)
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
        Ok(())
    }

    fn wait(
        &mut self,
        events: &mut Vec<(Token, Ready)>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
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

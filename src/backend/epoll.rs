//! epoll(7), level-triggered: the kernel keeps the interest set and returns
//! only ready fds.
//!
//! Cost: at most one syscall per add/modify/delete, O(ready fds) per wait.
//! Quirks handled:
//!
//! * **No truncation.** The event buffer always has room for every
//!   registered fd (`maxevents` is a hard cap in epoll_wait(2)).
//! * **Kernel data is the selector's token**, which a registration keeps
//!   for as long as it is added: a wait hands the kernel's records on as
//!   they are, with no per-fd look-up. Tokens are never reused (their
//!   generation half grows), so a record of a registration that is gone
//!   names no live key, and the selector drops it (see the last point).
//! * **Coalesced re-registration.** A delete only marks the fd; the
//!   `EPOLL_CTL_DEL` is issued at the start of the next wait. An add of the
//!   same fd before then first tries `EPOLL_CTL_MOD` with the new token and
//!   interest: it succeeds only if the very same open file is still
//!   registered (epoll keys registrations by file *and* fd), which is then
//!   reused. If the number now names another file (`ENOENT`), an
//!   `EPOLL_CTL_ADD` registers it, so a reused fd is never left unwatched.
//!   This is libev's scheme (which tries the add first); it turns the "stop
//!   watching, start again" pattern from two syscalls into one.
//! * `EPOLLRDHUP` is requested with read interest so a peer's half-close is
//!   reported as a hang-up (epoll(7), since Linux 2.6.17).
//! * Regular files and directories are refused by the kernel with `EPERM`
//!   (epoll_ctl(2)); the error reaches the selector, which rolls back.
//! * **Sparse fds.** The per-fd table is an [`FdTable`]: a registration of
//!   a very high fd number costs one hash-map entry, not a table up to it,
//!   and a refused one (`EBADF` for `i32::MAX - 1`) costs nothing.
//! * **Orphans.** Closing an fd removes its registration only when no other
//!   descriptor refers to the same open file (epoll(7), Q6). Otherwise the
//!   registration lives on, no `EPOLL_CTL_DEL` can name it any more, and,
//!   level-triggered, it would wake every wait. Its records carry a token
//!   no key has; when the selector sees one that no change in the current
//!   round explains, it [purges](Backend::purge) the backend, which replaces
//!   the epoll instance with a fresh one holding only the live
//!   registrations.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::host_fd::HostFd;
use super::{Backend, not_pollable};
use crate::fd_table::FdTable;
use crate::sys;
use crate::{Interest, Ready, Token};

const MIN_EVENTS: usize = 64;

/// What the kernel holds for one fd number. (The token and interest are
/// the selector's to give on every call; the kernel data is the token.)
#[derive(Clone, Copy, PartialEq)]
struct FdState {
    /// Registered with the selector.
    active: bool,
    /// Deleted since the last wait; the kernel registration may remain.
    deferred: bool,
}

impl FdState {
    /// The table's vacant value: neither registered nor awaiting a delete.
    const EMPTY: FdState = FdState {
        active: false,
        deferred: false,
    };
    const ACTIVE: FdState = FdState {
        active: true,
        deferred: false,
    };
}

pub(crate) struct EpollBackend {
    ep: OwnedFd,
    events: Vec<libc::epoll_event>,
    /// Fds registered or with a deferred delete; an entry goes when both
    /// are over.
    fds: FdTable<FdState>,
    /// Fds whose delete is deferred to the next wait.
    deferred: Vec<RawFd>,
    active: usize,
    /// What a host program polls (see `HostFd`).
    host: HostFd,
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

/// The readiness of an event's flags. The five low flags and `EPOLLRDHUP`
/// index a table computed at compile time: a shift, two masks and a load
/// per event instead of four tests.
#[inline]
fn ready_of(flags: u32) -> Ready {
    let index = (flags & 0x1f) | ((flags >> 8) & 0x20);
    READY_OF[index as usize]
}

/// `ready_of` for every index: bits 0–4 are `EPOLLIN`, `EPOLLPRI`,
/// `EPOLLOUT`, `EPOLLERR`, `EPOLLHUP`, bit 5 `EPOLLRDHUP` (0x2000 >> 8).
const READY_OF: [Ready; 64] = {
    let mut table = [Ready::EMPTY; 64];
    let mut i = 0;
    while i < 64 {
        let bits = (i as u32 & 0x1f) | ((i as u32 & 0x20) << 8);
        table[i] = Ready::from_flags(
            bits & (libc::EPOLLIN | libc::EPOLLPRI) as u32 != 0,
            bits & libc::EPOLLOUT as u32 != 0,
            bits & libc::EPOLLERR as u32 != 0,
            bits & (libc::EPOLLHUP | libc::EPOLLRDHUP) as u32 != 0,
            bits & libc::EPOLLHUP as u32 != 0,
        );
        i += 1;
    }
    table
};

/// The kernel data of a registration: its token.
fn data(token: Token) -> u64 {
    token.0 as u64
}

impl EpollBackend {
    pub(crate) fn new() -> io::Result<EpollBackend> {
        let ep = sys::epoll_create()?;
        Ok(EpollBackend {
            host: HostFd::new(ep.as_raw_fd()),
            ep,
            events: Vec::with_capacity(MIN_EVENTS),
            fds: FdTable::new(FdState::EMPTY),
            deferred: Vec::new(),
            active: 0,
        })
    }

    fn state(&mut self, fd: RawFd) -> &mut FdState {
        self.fds
            .get_mut(fd)
            .expect("the backend keeps an entry for every fd it was given")
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, interest: Interest, token: Token) -> io::Result<()> {
        sys::epoll_ctl(&self.ep, op, fd, events_for(interest), data(token))
    }

    /// Re-adds an fd deleted since the last wait, reusing its kernel
    /// registration if the same open file still holds it.
    fn revive(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        match self.ctl(libc::EPOLL_CTL_MOD, fd, interest, token) {
            // The same open file was still registered: now with the new
            // token and interest.
            Ok(()) => Ok(()),
            // Another file (or none) is at this number now: registered anew.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                self.ctl(libc::EPOLL_CTL_ADD, fd, interest, token)
            }
            Err(e) => Err(e),
        }
    }

    /// Applies the deferred deletes, if any (checked inline: every wait
    /// calls it).
    #[inline]
    fn flush_deletes(&mut self) {
        if !self.deferred.is_empty() {
            self.apply_deletes();
        }
    }

    /// Applies the deferred deletes. Errors are expected and ignored: a
    /// closed fd (EBADF) or a reused one (ENOENT) has nothing to delete.
    fn apply_deletes(&mut self) {
        for i in 0..self.deferred.len() {
            let fd = self.deferred[i];
            let Some(st) = self.fds.get_mut(fd) else {
                continue;
            };
            if st.deferred {
                st.deferred = false;
                if !st.active {
                    self.fds.remove(fd);
                }
                if let Err(e) = sys::epoll_ctl(&self.ep, libc::EPOLL_CTL_DEL, fd, 0, 0) {
                    log::trace!("backend=epoll fd={fd} deferred delete: {e}");
                }
            }
        }
        self.deferred.clear();
    }

    /// Makes `ep` the instance (the old one closes) and tells the host fd.
    fn switch_to(&mut self, ep: OwnedFd) -> io::Result<()> {
        let _old = std::mem::replace(&mut self.ep, ep);
        self.host.replaced(self.ep.as_raw_fd())
    }

    /// A new instance holding `live` (those the kernel still accepts); the
    /// table describes every one of them.
    /// Deferred deletes are dropped unapplied: after `fork` they would
    /// reach the instance the child shares with its parent.
    fn fresh_set(
        &mut self,
        live: &mut dyn Iterator<Item = (RawFd, Token, Interest)>,
    ) -> io::Result<OwnedFd> {
        let ep = sys::epoll_create()?;
        self.fds.clear();
        self.deferred.clear();
        self.active = 0;
        for (fd, token, interest) in live {
            let res = sys::epoll_ctl(
                &ep,
                libc::EPOLL_CTL_ADD,
                fd,
                events_for(interest),
                data(token),
            );
            // A closed fd stays registered with the selector: keep its
            // entry (nothing to watch until it is unregistered).
            if let Err(e) = res {
                log::warn!("backend=epoll fd={fd} not re-added: {e}");
            }
            self.fds.insert(fd, FdState::ACTIVE);
            self.active += 1;
        }
        Ok(ep)
    }
}

impl Backend for EpollBackend {
    fn name(&self) -> &'static str {
        "epoll"
    }

    fn reports_each_fd_once(&self) -> bool {
        true
    }

    fn add(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        // Only a deferred delete can have left an entry: the selector never
        // adds an fd twice.
        if self.fds.get(fd).is_some_and(|st| st.deferred) {
            // On failure nothing is registered any more, and the deferred
            // delete (still queued) drops whatever the kernel kept.
            self.revive(fd, token, interest)
                .map_err(|e| not_pollable("epoll", fd, e))?;
        } else {
            // Nothing is recorded before the kernel accepts the fd.
            self.ctl(libc::EPOLL_CTL_ADD, fd, interest, token)
                .map_err(|e| not_pollable("epoll", fd, e))?;
        }
        self.fds.insert(fd, FdState::ACTIVE);
        self.active += 1;
        Ok(())
    }

    fn modify(&mut self, fd: RawFd, token: Token, _: Interest, new: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, new, token)
    }

    fn delete(&mut self, fd: RawFd, _: Token, _: Interest) -> io::Result<()> {
        // Deferred to the next wait (see the module docs); no event can be
        // collected for the fd before then.
        let st = self.state(fd);
        st.active = false;
        st.deferred = true;
        self.deferred.push(fd);
        self.active -= 1;
        Ok(())
    }

    /// The fd is closed next: deleted now, while its number still names
    /// the registration (a delete deferred past the close would fail, or
    /// leave an orphan where a duplicate lives).
    fn delete_closing(&mut self, fd: RawFd, _: Token, _: Interest) -> io::Result<()> {
        let st = self.state(fd);
        st.active = false;
        if !st.deferred {
            self.fds.remove(fd);
        }
        self.active -= 1;
        sys::epoll_ctl(&self.ep, libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Re-synchronises with the selector's registrations: a fresh epoll
    /// instance holding exactly `live`. Needed if the kernel and the
    /// backend's table disagree, e.g. after a wrapper dropped a delete.
    fn purge(
        &mut self,
        live: &mut dyn Iterator<Item = (RawFd, Token, Interest)>,
    ) -> io::Result<()> {
        let ep = self.fresh_set(live)?;
        self.switch_to(ep)
    }

    /// The inherited instance is the parent's too: the child makes its
    /// own, and only the child's reference to the old one closes.
    fn after_fork(
        &mut self,
        live: &mut dyn Iterator<Item = (RawFd, Token, Interest)>,
    ) -> io::Result<()> {
        self.ep = self.fresh_set(live)?;
        self.host.after_fork(self.ep.as_raw_fd())
    }

    fn fd(&self) -> Option<RawFd> {
        self.host.fd()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_deletes();
        Ok(())
    }

    fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    fn wait(
        &mut self,
        events: &mut Vec<(Token, Ready)>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        self.flush_deletes();
        self.events.clear();
        let want = self.active.max(MIN_EVENTS);
        if self.events.capacity() < want {
            self.events.reserve(want);
        }
        sys::epoll_wait(&self.ep, &mut self.events, timeout)?;
        // The kernel data is the token: the records go on as they are
        // (each is written in place: no capacity check per event).
        let start = events.len();
        let n = self.events.len();
        events.resize(start + n, (Token(0), Ready::EMPTY));
        for (ev, out) in self.events.iter().zip(&mut events[start..]) {
            *out = (Token(ev.u64 as usize), ready_of(ev.events));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_map_to_readiness() {
        let cases = [
            (libc::EPOLLIN, Ready::READABLE),
            (libc::EPOLLPRI, Ready::READABLE),
            (libc::EPOLLOUT, Ready::WRITABLE),
            (
                libc::EPOLLIN | libc::EPOLLOUT,
                Ready::READABLE | Ready::WRITABLE,
            ),
            (libc::EPOLLERR, Ready::ERROR),
            (libc::EPOLLHUP, Ready::HUP | Ready::WRITE_CLOSED),
            (
                libc::EPOLLRDHUP | libc::EPOLLIN,
                Ready::HUP | Ready::READABLE,
            ),
            (
                libc::EPOLLERR | libc::EPOLLHUP | libc::EPOLLOUT,
                Ready::ERROR | Ready::HUP | Ready::WRITE_CLOSED | Ready::WRITABLE,
            ),
            // Flags muxloop never asks for do not leak into the result.
            (
                libc::EPOLLRDNORM | libc::EPOLLWRNORM | libc::EPOLLMSG,
                Ready::EMPTY,
            ),
        ];
        for (flags, want) in cases {
            assert_eq!(ready_of(flags as u32), want, "flags {flags:#x}");
        }
    }
}

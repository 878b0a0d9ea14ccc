//! poll(2): an array of `pollfd`, handed to the kernel whole on every wait.
//!
//! Cost: O(registered fds) per wait, in the kernel and here. No fd limit
//! beyond `RLIMIT_NOFILE`. Removal swaps the last entry into the hole, so
//! add, modify and delete are O(1).

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use super::Backend;
use crate::fd_table::FdTable;
use crate::sys;
use crate::{Interest, Ready, Token};

/// Linux also reports a peer's shutdown of its writing side.
#[cfg(any(target_os = "linux", target_os = "android"))]
const READ_EVENTS: libc::c_short = libc::POLLIN | libc::POLLRDHUP;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const READ_EVENTS: libc::c_short = libc::POLLIN;

#[cfg(any(target_os = "linux", target_os = "android"))]
const HUP_EVENTS: libc::c_short = libc::POLLHUP | libc::POLLRDHUP;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const HUP_EVENTS: libc::c_short = libc::POLLHUP;

pub(crate) struct PollBackend {
    fds: Vec<libc::pollfd>,
    /// Token of `fds[i]`.
    tokens: Vec<Token>,
    /// Position in `fds` of each added fd.
    index: FdTable<usize>,
}

fn events_for(interest: Interest) -> libc::c_short {
    let mut events = 0;
    if interest.is_readable() {
        events |= READ_EVENTS;
    }
    if interest.is_writable() {
        events |= libc::POLLOUT;
    }
    events
}

impl PollBackend {
    pub(crate) fn new() -> PollBackend {
        PollBackend {
            fds: Vec::new(),
            tokens: Vec::new(),
            index: FdTable::new(usize::MAX),
        }
    }

    fn position(&self, fd: RawFd) -> io::Result<usize> {
        match self.index.get(fd) {
            Some(&pos) => Ok(pos),
            None => Err(io::Error::from_raw_os_error(libc::ENOENT)),
        }
    }
}

impl Backend for PollBackend {
    fn name(&self) -> &'static str {
        "poll"
    }

    fn reports_each_fd_once(&self) -> bool {
        true
    }

    fn add(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        // poll(2) would only flag it later, with POLLNVAL.
        sys::check_open(fd)?;
        self.index.insert(fd, self.fds.len());
        self.fds.push(libc::pollfd {
            fd,
            events: events_for(interest),
            revents: 0,
        });
        self.tokens.push(token);
        Ok(())
    }

    fn modify(&mut self, fd: RawFd, token: Token, _: Interest, new: Interest) -> io::Result<()> {
        let pos = self.position(fd)?;
        self.fds[pos].events = events_for(new);
        self.tokens[pos] = token;
        Ok(())
    }

    fn delete(&mut self, fd: RawFd, _: Token, _: Interest) -> io::Result<()> {
        let pos = self.position(fd)?;
        self.fds.swap_remove(pos);
        self.tokens.swap_remove(pos);
        self.index.remove(fd);
        if let Some(moved) = self.fds.get(pos) {
            self.index.insert(moved.fd, pos);
        }
        Ok(())
    }

    fn wait(
        &mut self,
        events: &mut Vec<(Token, Ready)>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        let mut left = sys::poll(&mut self.fds, timeout)?;
        for (pfd, &token) in self.fds.iter().zip(&self.tokens) {
            if left == 0 {
                break;
            }
            let re = pfd.revents;
            if re == 0 {
                continue;
            }
            left -= 1;
            let mut ready = Ready::from_flags(
                re & (libc::POLLIN | libc::POLLPRI) != 0,
                re & libc::POLLOUT != 0,
                re & libc::POLLERR != 0,
                re & HUP_EVENTS != 0,
            );
            if re & libc::POLLNVAL != 0 {
                log::warn!(
                    "backend=poll fd={} closed while registered (unregister before close)",
                    pfd.fd
                );
                ready |= Ready::ERROR;
            }
            events.push((token, ready));
        }
        Ok(())
    }
}

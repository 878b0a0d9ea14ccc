//! On `mio::Poll`: epoll or kqueue driven through the mio crate.
//!
//! mio is edge-triggered: it reports an fd once per readiness change. To
//! keep muxloop's level-triggered contract, every fd reported by one wait
//! is re-armed (`Registry::reregister`, an `EPOLL_CTL_MOD` or `EV_ADD`) just
//! before the next wait; the kernel re-evaluates it on re-arm and reports it
//! again if it is still ready. Cost: one extra syscall per reported fd per
//! wait, compared with the epoll and kqueue backends.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use mio::unix::SourceFd;

#[cfg(any(muxloop_epoll, muxloop_kqueue))]
use super::host_fd::HostFd;
use super::{Backend, not_pollable};
use crate::{Interest, Ready, Token};

const MIN_EVENTS: usize = 64;

pub(crate) struct MioBackend {
    poll: mio::Poll,
    events: mio::Events,
    /// fd and interest of each added token, for re-arming.
    added: HashMap<Token, (RawFd, Interest)>,
    /// Tokens reported by the last wait, re-armed before the next one.
    rearm: Vec<Token>,
    /// What a host program polls (see `HostFd`).
    #[cfg(any(muxloop_epoll, muxloop_kqueue))]
    host: HostFd,
}

fn mio_interest(interest: Interest) -> mio::Interest {
    match (interest.is_readable(), interest.is_writable()) {
        (true, true) => mio::Interest::READABLE | mio::Interest::WRITABLE,
        (true, false) => mio::Interest::READABLE,
        _ => mio::Interest::WRITABLE,
    }
}

impl MioBackend {
    pub(crate) fn new() -> io::Result<MioBackend> {
        let poll = mio::Poll::new()?;
        Ok(MioBackend {
            #[cfg(any(muxloop_epoll, muxloop_kqueue))]
            host: HostFd::new(poll.as_raw_fd()),
            poll,
            events: mio::Events::with_capacity(MIN_EVENTS),
            added: HashMap::new(),
            rearm: Vec::new(),
        })
    }

    /// A new Poll holding exactly `live`; `added` describes it.
    fn fresh_poll(
        &mut self,
        live: &mut dyn Iterator<Item = (RawFd, Token, Interest)>,
    ) -> io::Result<mio::Poll> {
        let poll = mio::Poll::new()?;
        self.added.clear();
        self.rearm.clear();
        for (fd, token, interest) in live {
            let res = poll.registry().register(
                &mut SourceFd(&fd),
                mio::Token(token.0),
                mio_interest(interest),
            );
            match res {
                Ok(()) => {
                    self.added.insert(token, (fd, interest));
                }
                Err(e) => log::warn!("backend=mio fd={fd} not re-added: {e}"),
            }
        }
        Ok(poll)
    }

    fn rearm_reported(&mut self) {
        for token in self.rearm.drain(..) {
            let Some(&(fd, interest)) = self.added.get(&token) else {
                continue;
            };
            let res = self.poll.registry().reregister(
                &mut SourceFd(&fd),
                mio::Token(token.0),
                mio_interest(interest),
            );
            if let Err(e) = res {
                // A closed fd: nothing left to report for it.
                log::debug!("backend=mio fd={fd} rearm failed: {e}");
            }
        }
    }
}

impl Backend for MioBackend {
    fn name(&self) -> &'static str {
        "mio"
    }

    fn add(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        self.poll
            .registry()
            .register(
                &mut SourceFd(&fd),
                mio::Token(token.0),
                mio_interest(interest),
            )
            .map_err(|e| not_pollable("mio", fd, e))?;
        self.added.insert(token, (fd, interest));
        Ok(())
    }

    fn modify(&mut self, fd: RawFd, token: Token, _: Interest, new: Interest) -> io::Result<()> {
        self.poll.registry().reregister(
            &mut SourceFd(&fd),
            mio::Token(token.0),
            mio_interest(new),
        )?;
        self.added.insert(token, (fd, new));
        Ok(())
    }

    fn delete(&mut self, fd: RawFd, token: Token, _: Interest) -> io::Result<()> {
        self.added.remove(&token);
        self.poll.registry().deregister(&mut SourceFd(&fd))
    }

    fn purge(
        &mut self,
        live: &mut dyn Iterator<Item = (RawFd, Token, Interest)>,
    ) -> io::Result<()> {
        // Same reason as the epoll backend: mio cannot deregister a
        // registration whose fd number is gone, so start a new Poll.
        let poll = self.fresh_poll(live)?;
        let _old = std::mem::replace(&mut self.poll, poll);
        #[cfg(any(muxloop_epoll, muxloop_kqueue))]
        self.host.replaced(self.poll.as_raw_fd())?;
        Ok(())
    }

    #[cfg(any(muxloop_epoll, muxloop_kqueue))]
    fn fd(&self) -> Option<RawFd> {
        self.host.fd()
    }

    /// Re-arms what the last wait reported, so that a host polling the
    /// kernel object sees a still-ready fd again (mio is edge-triggered).
    fn flush(&mut self) -> io::Result<()> {
        self.rearm_reported();
        Ok(())
    }

    fn has_deferred(&self) -> bool {
        !self.rearm.is_empty()
    }

    fn after_fork(
        &mut self,
        live: &mut dyn Iterator<Item = (RawFd, Token, Interest)>,
    ) -> io::Result<()> {
        let poll = self.fresh_poll(live)?;
        let inherited = std::mem::replace(&mut self.poll, poll);
        if crate::sys::KERNEL_OBJECTS_INHERITED {
            // Closes only the child's reference to the parent's instance.
            drop(inherited);
        } else {
            // Not inherited: the number is not this process's to close.
            std::mem::forget(inherited);
        }
        #[cfg(any(muxloop_epoll, muxloop_kqueue))]
        self.host.after_fork(self.poll.as_raw_fd())?;
        Ok(())
    }

    fn wait(
        &mut self,
        events: &mut Vec<(Token, Ready)>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        self.rearm_reported();
        let want = self.added.len().max(MIN_EVENTS);
        if self.events.capacity() < want {
            // mio's buffer has a fixed size: replace it when registrations
            // outgrow it, so one wait reports every ready fd.
            self.events = mio::Events::with_capacity(want.next_power_of_two());
        }
        self.poll.poll(&mut self.events, timeout)?;
        for ev in self.events.iter() {
            let token = Token(ev.token().0);
            let mut ready = Ready::EMPTY;
            if ev.is_readable() {
                ready |= Ready::READABLE;
            }
            if ev.is_writable() {
                ready |= Ready::WRITABLE;
            }
            if ev.is_read_closed() {
                ready |= Ready::HUP;
            }
            if ev.is_write_closed() {
                ready |= Ready::HUP | Ready::WRITE_CLOSED;
            }
            if ev.is_error() {
                ready |= Ready::ERROR;
            }
            events.push((token, ready));
            self.rearm.push(token);
        }
        Ok(())
    }
}

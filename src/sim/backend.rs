//! The simulation's backend: readiness of simulated sockets from the
//! network's state, in an order the seed decides, and virtual time that
//! jumps to the next thing that can happen when nothing is ready. Real
//! fds the loop watches too (its wake-up fd, signals) go to a poll(2)
//! backend that is never waited on for long.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::lock;
use super::net::Net;
use crate::{Backend, BackendKind, Interest, Ready, Token, VirtualClock};

/// How long a simulation with nothing left to happen waits for a real fd
/// (a thread's wake-up, a blocking job's result) before it reports that
/// it is stuck.
const STALL_WAIT: Duration = Duration::from_secs(1);

pub(super) struct SimBackend {
    net: Arc<Mutex<Net>>,
    clock: VirtualClock,
    /// Simulated sockets watched: by their end's id, so that every pass
    /// visits them in one order whatever numbers their placeholders got.
    sims: BTreeMap<usize, (Token, Interest)>,
    ids: HashMap<RawFd, usize>,
    real: Box<dyn Backend>,
    batch: Vec<(usize, Token, Ready)>,
}

impl SimBackend {
    pub(super) fn new(net: Arc<Mutex<Net>>) -> io::Result<SimBackend> {
        let clock = lock(&net).clock.clone();
        Ok(SimBackend {
            net,
            clock,
            sims: BTreeMap::new(),
            ids: HashMap::new(),
            real: BackendKind::Poll.create()?,
            batch: Vec::new(),
        })
    }

    /// The ready simulated sockets, each reported only for what its
    /// interest covers (so the selector never gets a record it masks
    /// away and waits again at the same virtual instant).
    fn collect(&mut self, net: &Net) {
        self.batch.clear();
        for (&id, &(token, interest)) in &self.sims {
            let r = net.readiness(id);
            let mut out = Ready::EMPTY;
            if r.is_error() {
                out |= Ready::ERROR;
            }
            if interest.is_readable() {
                for bit in [Ready::READABLE, Ready::HUP] {
                    if r.contains(bit) {
                        out |= bit;
                    }
                }
            }
            if interest.is_writable() {
                for bit in [Ready::WRITABLE, Ready::WRITE_CLOSED] {
                    if r.contains(bit) {
                        out |= bit;
                    }
                }
            }
            if !out.is_empty() {
                self.batch.push((id, token, out));
            }
        }
    }
}

impl Backend for SimBackend {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn add(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        match lock(&self.net).id_of(fd) {
            Some(id) => {
                self.ids.insert(fd, id);
                self.sims.insert(id, (token, interest));
                Ok(())
            }
            None => self.real.add(fd, token, interest),
        }
    }

    fn modify(&mut self, fd: RawFd, token: Token, old: Interest, new: Interest) -> io::Result<()> {
        match self.ids.get(&fd) {
            Some(id) => {
                self.sims.insert(*id, (token, new));
                Ok(())
            }
            None => self.real.modify(fd, token, old, new),
        }
    }

    fn delete(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        match self.ids.remove(&fd) {
            Some(id) => {
                self.sims.remove(&id);
                Ok(())
            }
            None => self.real.delete(fd, token, interest),
        }
    }

    fn wait(
        &mut self,
        events: &mut Vec<(Token, Ready)>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        let net = self.net.clone();
        let mut net = lock(&net);
        net.deliver_due();
        self.collect(&net);
        self.real.wait(events, Some(Duration::ZERO))?;
        if self.batch.is_empty() && events.is_empty() && timeout != Some(Duration::ZERO) {
            // Nothing can run now: time jumps to whatever comes first, the
            // caller's deadline (its next timer) or the next arrival.
            let now = net.now();
            let target = match (timeout, net.next_arrival()) {
                (Some(t), Some(a)) => Some(a.min(now.saturating_add(t))),
                (Some(t), None) => Some(now.saturating_add(t)),
                (None, Some(a)) => Some(a),
                (None, None) => None,
            };
            match target {
                Some(t) => {
                    self.clock.advance(t.saturating_sub(now));
                    net.deliver_due();
                    self.collect(&net);
                }
                None => {
                    // No timer and nothing in flight: only a real fd can
                    // change anything now.
                    drop(net);
                    self.real.wait(events, Some(STALL_WAIT))?;
                    if events.is_empty() {
                        let net = lock(&self.net);
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "simulation stuck at {:?}: no timer, nothing in flight, nothing \
                                 ready, and no real fd woke within {STALL_WAIT:?}",
                                net.now()
                            ),
                        ));
                    }
                    return Ok(());
                }
            }
        }
        // The seed decides which ready socket runs first.
        for i in (1..self.batch.len()).rev() {
            let j = net.below(i as u64 + 1) as usize;
            self.batch.swap(i, j);
        }
        if !self.batch.is_empty() {
            let mut order = String::new();
            for (id, _, r) in &self.batch {
                use std::fmt::Write as _;
                let _ = write!(
                    order,
                    " c{id}{}{}{}",
                    if r.is_readable() { "r" } else { "" },
                    if r.is_writable() { "w" } else { "" },
                    if r.is_error() { "e" } else { "" }
                );
            }
            net.note(format_args!("ready{order}"));
        }
        events.extend(self.batch.iter().map(|&(_, t, r)| (t, r)));
        Ok(())
    }

    fn virtual_clock(&self) -> Option<VirtualClock> {
        Some(self.clock.clone())
    }
}

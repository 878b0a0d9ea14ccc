//! The simulated network: its sockets, the bytes in flight between them,
//! and the faults that strike them. Every choice is drawn from the
//! world's seeded generator, in an order fixed by the program's own
//! actions, so one seed makes one run.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt::{self, Write as _};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

use super::{Rng, SimConfig};
use crate::{Ready, VirtualClock};

/// The trace of a run: a hash over every line, and the lines if kept.
pub(super) struct Trace {
    hash: u64,
    lines: Option<Vec<String>>,
    line: String,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a of `bytes`, continuing from `hash`.
pub(super) fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

impl Trace {
    pub(super) fn new(keep: bool) -> Trace {
        Trace {
            hash: FNV_OFFSET,
            lines: keep.then(Vec::new),
            line: String::new(),
        }
    }

    pub(super) fn hash(&self) -> u64 {
        self.hash
    }

    pub(super) fn lines(&self) -> Option<&[String]> {
        self.lines.as_deref()
    }

    /// Adds the line `at what`.
    pub(super) fn add(&mut self, at: Duration, what: fmt::Arguments<'_>) {
        self.line.clear();
        let _ = write!(
            self.line,
            "{}.{:06} {what}",
            at.as_secs(),
            at.subsec_micros()
        );
        self.hash = fnv(self.hash, self.line.as_bytes());
        self.hash = fnv(self.hash, b"\n");
        log::trace!("sim {}", self.line);
        if let Some(lines) = &mut self.lines {
            lines.push(self.line.clone());
        }
    }
}

/// What travels to a socket.
enum Packet {
    Data(Vec<u8>),
    /// The sender shut its writing side down (or closed): EOF after the
    /// data before it.
    Fin,
    /// The connection is reset.
    Rst,
    /// A datagram, and who sent it.
    Datagram(Vec<u8>, SocketAddr),
    /// A datagram found nobody: the connected sender hears of it (ICMP
    /// port unreachable).
    Unreachable,
}

/// A packet on its way: it arrives at `at` (virtual time since the
/// world began); `seq` keeps packets due at one instant in send order.
struct Flight {
    at: Duration,
    seq: u64,
    to: usize,
    from: usize,
    packet: Packet,
}

impl PartialEq for Flight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Flight {}

impl PartialOrd for Flight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Flight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// One end of a simulated connection.
struct End {
    local: SocketAddr,
    peer: SocketAddr,
    /// The other end (`None` while the connect is on its way).
    other: Option<usize>,
    /// Arrived, not read yet.
    recv: VecDeque<u8>,
    /// The peer's FIN arrived (after all its data).
    eof: bool,
    /// Reset: every later read and write fails with `ConnectionReset`.
    reset: bool,
    /// This end shut its writing side down.
    write_shut: bool,
    /// This end is closed (its socket dropped).
    closed: bool,
    /// Bytes sent that have not arrived yet (they count against the
    /// window).
    in_flight: usize,
    /// When this end's latest packet arrives: later ones arrive after it.
    last_at: Duration,
    /// When this end's link is free again (bandwidth).
    link_free: Duration,
}

/// A datagram endpoint.
struct DEnd {
    local: SocketAddr,
    peer: Option<SocketAddr>,
    /// Arrived, not read yet, with their senders.
    recv: VecDeque<(Vec<u8>, SocketAddr)>,
    recv_bytes: usize,
    /// An ICMP error for a connected endpoint, for its next read.
    refused: bool,
    closed: bool,
}

/// A simulated socket: an end of a connection, or a datagram endpoint.
enum Slot {
    Stream(End),
    Dgram(DEnd),
}

/// The network's state, shared by the world, its backend and its sockets.
pub(super) struct Net {
    pub(super) clock: VirtualClock,
    pub(super) rng: Rng,
    pub(super) config: SimConfig,
    pub(super) trace: Trace,
    ends: Vec<Option<Slot>>,
    by_fd: HashMap<RawFd, usize>,
    /// The datagram endpoints' addresses.
    bound: std::collections::BTreeMap<SocketAddr, usize>,
    flights: BinaryHeap<Reverse<Flight>>,
    seq: u64,
    next_port: u16,
    live: usize,
}

fn reset_error(id: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        format!("simulated connection c{id} was reset"),
    )
}

impl Net {
    pub(super) fn new(seed: u64, config: SimConfig) -> Net {
        Net {
            clock: VirtualClock::new(),
            rng: Rng::new(seed),
            trace: Trace::new(config.keep_trace),
            config,
            ends: Vec::new(),
            by_fd: HashMap::new(),
            bound: std::collections::BTreeMap::new(),
            flights: BinaryHeap::new(),
            seq: 0,
            next_port: 40_000,
            live: 0,
        }
    }

    /// Virtual time since the world began.
    pub(super) fn now(&self) -> Duration {
        self.clock.elapsed()
    }

    pub(super) fn note(&mut self, what: fmt::Arguments<'_>) {
        let now = self.now();
        self.trace.add(now, what);
    }

    /// A draw in `[0, n)`.
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.rng.below(n)
    }

    /// Whether a fault with a chance of `per_million` strikes now.
    pub(super) fn strikes(&mut self, per_million: u32) -> bool {
        per_million > 0 && self.rng.below(1_000_000) < u64::from(per_million)
    }

    /// One trip's latency, drawn from the configured range.
    pub(super) fn latency(&mut self) -> Duration {
        let (lo, hi) = self.config.latency;
        if hi <= lo {
            return lo;
        }
        let span = u64::try_from((hi - lo).as_nanos()).unwrap_or(u64::MAX);
        lo + Duration::from_nanos(self.rng.below(span.saturating_add(1)))
    }

    /// A port for a client's address.
    pub(super) fn ephemeral_port(&mut self) -> u16 {
        let p = self.next_port;
        self.next_port = if p == u16::MAX { 40_000 } else { p + 1 };
        p
    }

    /// A new end from `local` to `peer`, not linked yet.
    pub(super) fn open(&mut self, local: SocketAddr, peer: SocketAddr) -> io::Result<usize> {
        if let Some(max) = self.config.max_sockets {
            if self.live >= max {
                self.note(format_args!("emfile {local} -> {peer}"));
                // EMFILE, as the kernel says it: code that sheds load when
                // out of fds sees what it would see.
                return Err(io::Error::from_raw_os_error(libc::EMFILE));
            }
        }
        let now = self.now();
        self.ends.push(Some(Slot::Stream(End {
            local,
            peer,
            other: None,
            recv: VecDeque::new(),
            eof: false,
            reset: false,
            write_shut: false,
            closed: false,
            in_flight: 0,
            last_at: now,
            link_free: now,
        })));
        self.live += 1;
        Ok(self.ends.len() - 1)
    }

    /// Links two ends into one connection.
    pub(super) fn link(&mut self, a: usize, b: usize) {
        if let Some(e) = self.end_mut(a) {
            e.other = Some(b);
        }
        if let Some(e) = self.end_mut(b) {
            e.other = Some(a);
        }
    }

    /// Gives the end `id` the placeholder fd `fd` the loop watches.
    pub(super) fn bind_fd(&mut self, fd: RawFd, id: usize) {
        self.by_fd.insert(fd, id);
    }

    /// The end whose placeholder `fd` is.
    pub(super) fn id_of(&self, fd: RawFd) -> Option<usize> {
        self.by_fd.get(&fd).copied()
    }

    fn end(&self, id: usize) -> Option<&End> {
        match self.ends.get(id) {
            Some(Some(Slot::Stream(e))) => Some(e),
            _ => None,
        }
    }

    fn end_mut(&mut self, id: usize) -> Option<&mut End> {
        match self.ends.get_mut(id) {
            Some(Some(Slot::Stream(e))) => Some(e),
            _ => None,
        }
    }

    fn dgram(&self, id: usize) -> Option<&DEnd> {
        match self.ends.get(id) {
            Some(Some(Slot::Dgram(d))) => Some(d),
            _ => None,
        }
    }

    fn dgram_mut(&mut self, id: usize) -> Option<&mut DEnd> {
        match self.ends.get_mut(id) {
            Some(Some(Slot::Dgram(d))) => Some(d),
            _ => None,
        }
    }

    pub(super) fn addrs(&self, id: usize) -> (SocketAddr, SocketAddr) {
        self.end(id).map_or(
            (
                SocketAddr::from(([0, 0, 0, 0], 0)),
                SocketAddr::from(([0, 0, 0, 0], 0)),
            ),
            |e| (e.local, e.peer),
        )
    }

    /// What the end is ready for, as a backend reports it.
    pub(super) fn readiness(&self, id: usize) -> Ready {
        if let Some(d) = self.dgram(id) {
            if d.closed {
                return Ready::EMPTY;
            }
            let mut r = Ready::WRITABLE;
            if !d.recv.is_empty() || d.refused {
                r |= Ready::READABLE;
            }
            return r;
        }
        let Some(e) = self.end(id) else {
            return Ready::EMPTY;
        };
        if e.reset {
            return Ready::ERROR | Ready::HUP | Ready::WRITE_CLOSED;
        }
        let mut r = Ready::EMPTY;
        if !e.recv.is_empty() || e.eof {
            r |= Ready::READABLE;
        }
        if e.eof {
            r |= Ready::HUP;
        }
        if !e.write_shut && self.room(id) > 0 {
            r |= Ready::WRITABLE;
        }
        r
    }

    /// How many bytes the end may send before the window is full.
    fn room(&self, id: usize) -> usize {
        let Some(e) = self.end(id) else { return 0 };
        let queued = e
            .other
            .and_then(|o| self.end(o))
            .map_or(0, |o| if o.closed { 0 } else { o.recv.len() });
        self.config.buffer.saturating_sub(e.in_flight + queued)
    }

    /// A cut of at most `n` bytes: all of it, or (cuts on) a draw.
    fn cut(&mut self, n: usize) -> usize {
        match self.config.max_chunk {
            Some(max) if n > 1 => {
                let top = n.min(max.max(1));
                1 + self.rng.below(top as u64) as usize
            }
            _ => n,
        }
    }

    /// Sends `packet` from the end `from` to its peer, arriving after the
    /// link's latency (and bandwidth), never before the end's earlier ones.
    fn post(&mut self, from: usize, packet: Packet) {
        let Some(to) = self.end(from).and_then(|e| e.other) else {
            return;
        };
        let latency = self.latency();
        let now = self.now();
        let len = match &packet {
            Packet::Data(d) => d.len(),
            _ => 0,
        };
        let bandwidth = self.config.bandwidth;
        let Some(e) = self.end_mut(from) else { return };
        let mut leaves = now.max(e.link_free);
        if let Some(bps) = bandwidth {
            let ns = (len as u128 * 1_000_000_000).div_ceil(u128::from(bps.max(1)));
            leaves += Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX));
        }
        e.link_free = leaves;
        let at = (leaves + latency).max(e.last_at);
        e.last_at = at;
        e.in_flight += len;
        self.seq += 1;
        self.flights.push(Reverse(Flight {
            at,
            seq: self.seq,
            to,
            from,
            packet,
        }));
    }

    /// When the next packet arrives.
    pub(super) fn next_arrival(&self) -> Option<Duration> {
        self.flights.peek().map(|Reverse(f)| f.at)
    }

    /// Hands over every packet due by now.
    pub(super) fn deliver_due(&mut self) {
        let now = self.now();
        while self.flights.peek().is_some_and(|Reverse(f)| f.at <= now) {
            let Some(Reverse(f)) = self.flights.pop() else {
                break;
            };
            self.deliver(f);
        }
    }

    fn deliver(&mut self, f: Flight) {
        if let Packet::Datagram(data, from) = f.packet {
            return self.deliver_datagram(f.at, f.from, f.to, data, from);
        }
        if let Packet::Unreachable = f.packet {
            if let Some(d) = self.dgram_mut(f.to) {
                d.refused = true;
            }
            self.trace
                .add(f.at, format_args!("d{} arrive unreachable", f.to));
            return;
        }
        let len = match &f.packet {
            Packet::Data(d) => d.len(),
            _ => 0,
        };
        if let Some(e) = self.end_mut(f.from) {
            e.in_flight = e.in_flight.saturating_sub(len);
        }
        let (closed, reset) = match self.end(f.to) {
            Some(e) => (e.closed, e.reset),
            None => (true, false),
        };
        let at = f.at;
        match f.packet {
            Packet::Data(d) if closed => {
                // Data for a closed socket: the peer is reset, as TCP does.
                self.trace.add(
                    at,
                    format_args!("c{} data {} to closed c{}: reset", f.from, d.len(), f.to),
                );
                self.reset_end(f.from);
            }
            Packet::Data(_) if reset => {}
            Packet::Data(d) => {
                self.trace
                    .add(at, format_args!("c{} arrive {}", f.to, d.len()));
                if let Some(e) = self.end_mut(f.to) {
                    e.recv.extend(d);
                }
            }
            Packet::Fin => {
                self.trace.add(at, format_args!("c{} arrive fin", f.to));
                if let Some(e) = self.end_mut(f.to) {
                    e.eof = true;
                }
            }
            Packet::Rst => {
                self.trace.add(at, format_args!("c{} arrive rst", f.to));
                self.reset_end(f.to);
            }
            Packet::Datagram(..) | Packet::Unreachable => {}
        }
    }

    /// A datagram arrives at whoever is bound at its destination now:
    /// queued, dropped (nobody there, not from the connected peer, the
    /// receive buffer full), or (nobody there, the sender connected) an
    /// ICMP error back.
    fn deliver_datagram(
        &mut self,
        at: Duration,
        sender: usize,
        dest: usize,
        data: Vec<u8>,
        from: SocketAddr,
    ) {
        let buffer = self.config.buffer;
        let open = self.dgram(dest).is_some_and(|d| !d.closed);
        if !open {
            self.trace.add(
                at,
                format_args!("d{sender} datagram {} unreachable", data.len()),
            );
            let connected = self.dgram(sender).is_some_and(|d| d.peer.is_some());
            if connected {
                let latency = self.latency();
                self.seq += 1;
                self.flights.push(Reverse(Flight {
                    at: at + latency,
                    seq: self.seq,
                    to: sender,
                    from: dest,
                    packet: Packet::Unreachable,
                }));
            }
            return;
        }
        let Some(d) = self.dgram_mut(dest) else {
            return;
        };
        let len = data.len();
        let verdict = if d.peer.is_some_and(|p| p != from) {
            "not from the peer: dropped"
        } else if d.recv_bytes + len > buffer {
            "buffer full: dropped"
        } else {
            d.recv_bytes += len;
            d.recv.push_back((data, from));
            "queued"
        };
        self.trace.add(
            at,
            format_args!("d{dest} arrive {len} from {from}: {verdict}"),
        );
    }

    /// A new datagram endpoint bound to `local` (port 0: one is picked),
    /// maybe connected to `peer`.
    pub(super) fn open_dgram(
        &mut self,
        mut local: SocketAddr,
        peer: Option<SocketAddr>,
    ) -> io::Result<usize> {
        if let Some(max) = self.config.max_sockets {
            if self.live >= max {
                self.note(format_args!("emfile datagram {local}"));
                return Err(io::Error::from_raw_os_error(libc::EMFILE));
            }
        }
        if local.port() == 0 {
            loop {
                let p = self.ephemeral_port();
                local.set_port(p);
                if !self.bound.contains_key(&local) {
                    break;
                }
            }
        }
        if self.bound.contains_key(&local) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("simulated address {local} is already bound"),
            ));
        }
        self.ends.push(Some(Slot::Dgram(DEnd {
            local,
            peer,
            recv: VecDeque::new(),
            recv_bytes: 0,
            refused: false,
            closed: false,
        })));
        let id = self.ends.len() - 1;
        self.bound.insert(local, id);
        self.live += 1;
        self.note(format_args!("d{id} bind {local} peer {peer:?}"));
        Ok(id)
    }

    /// The endpoint's address and peer.
    pub(super) fn dgram_addrs(&self, id: usize) -> (SocketAddr, Option<SocketAddr>) {
        self.dgram(id)
            .map_or((SocketAddr::from(([0, 0, 0, 0], 0)), None), |d| {
                (d.local, d.peer)
            })
    }

    /// Sends one datagram from `id` to `to` (`None`: its peer); it
    /// arrives after a latency of its own (datagrams may overtake each
    /// other), or is lost (`SimConfig::drop_per_million`).
    pub(super) fn send_dgram(
        &mut self,
        id: usize,
        data: &[u8],
        to: Option<SocketAddr>,
    ) -> io::Result<usize> {
        let Some(d) = self.dgram(id) else {
            return Err(io::Error::from(io::ErrorKind::NotConnected));
        };
        let (local, peer, refused) = (d.local, d.peer, d.refused);
        if refused {
            if let Some(d) = self.dgram_mut(id) {
                d.refused = false;
            }
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("simulated: nobody at {peer:?} (port unreachable)"),
            ));
        }
        let Some(to) = to.or(peer) else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "simulated datagram endpoint without a peer: give an address",
            ));
        };
        let chance = self.config.drop_per_million;
        if self.strikes(chance) {
            self.note(format_args!("d{id} send {} to {to}: lost", data.len()));
            return Ok(data.len());
        }
        let dest = self.bound.get(&to).copied().unwrap_or(usize::MAX);
        let at = self.now() + self.latency();
        self.seq += 1;
        self.flights.push(Reverse(Flight {
            at,
            seq: self.seq,
            to: dest,
            from: id,
            packet: Packet::Datagram(data.to_vec(), local),
        }));
        self.note(format_args!("d{id} send {} to {to}", data.len()));
        Ok(data.len())
    }

    /// Takes the first datagram waiting: its length (at most `buf`'s),
    /// sender, and whether it was cut.
    pub(super) fn recv_dgram(
        &mut self,
        id: usize,
        buf: &mut [u8],
    ) -> io::Result<(usize, SocketAddr, bool)> {
        let Some(d) = self.dgram_mut(id) else {
            return Err(io::Error::from(io::ErrorKind::NotConnected));
        };
        if d.refused {
            d.refused = false;
            let peer = d.peer;
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("simulated: nobody at {peer:?} (port unreachable)"),
            ));
        }
        let Some((data, from)) = d.recv.pop_front() else {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        };
        d.recv_bytes -= data.len();
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        let cut = data.len() > buf.len();
        self.note(format_args!("d{id} read {n} from {from}"));
        Ok((n, from, cut))
    }

    /// The endpoint's socket is dropped: its address is free again, and
    /// what waited for it is gone.
    pub(super) fn close_dgram(&mut self, id: usize, fd: RawFd) {
        self.by_fd.remove(&fd);
        let Some(d) = self.dgram_mut(id) else { return };
        if d.closed {
            return;
        }
        d.closed = true;
        d.recv = VecDeque::new();
        let local = d.local;
        self.bound.remove(&local);
        self.live = self.live.saturating_sub(1);
        self.note(format_args!("d{id} close"));
    }

    fn reset_end(&mut self, id: usize) {
        if let Some(e) = self.end_mut(id) {
            e.reset = true;
            e.recv.clear();
        }
    }

    /// A read of at most `buf.len()` bytes, cut as the seed says.
    pub(super) fn recv(&mut self, id: usize, buf: &mut [u8]) -> io::Result<usize> {
        let (reset, avail, eof) = match self.end(id) {
            Some(e) => (e.reset, e.recv.len(), e.eof),
            None => return Err(io::Error::from(io::ErrorKind::NotConnected)),
        };
        if reset {
            return Err(reset_error(id));
        }
        if avail == 0 {
            if eof {
                self.note(format_args!("c{id} read eof"));
                return Ok(0);
            }
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        let n = self.cut(avail.min(buf.len()));
        let Some(e) = self.end_mut(id) else {
            return Ok(0);
        };
        for (dst, src) in buf.iter_mut().zip(e.recv.drain(..n)) {
            *dst = src;
        }
        self.note(format_args!("c{id} read {n}"));
        Ok(n)
    }

    /// A write of what the window takes, cut as the seed says.
    pub(super) fn send(&mut self, id: usize, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let (reset, shut) = match self.end(id) {
            Some(e) => (e.reset, e.write_shut),
            None => return Err(io::Error::from(io::ErrorKind::NotConnected)),
        };
        if reset {
            return Err(reset_error(id));
        }
        if shut {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("simulated connection c{id}: writing side shut down"),
            ));
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Ok(0);
        }
        let room = self.room(id);
        if room == 0 {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        let chance = self.config.reset_per_million;
        if self.strikes(chance) {
            self.note(format_args!("c{id} fault reset"));
            self.post(id, Packet::Rst);
            self.reset_end(id);
            return Err(reset_error(id));
        }
        let n = self.cut(total.min(room));
        let mut data = Vec::with_capacity(n);
        for b in bufs {
            let take = (n - data.len()).min(b.len());
            data.extend_from_slice(&b[..take]);
            if data.len() == n {
                break;
            }
        }
        self.note(format_args!("c{id} write {n}/{total}"));
        self.post(id, Packet::Data(data));
        Ok(n)
    }

    /// Shuts the end's writing side down: the peer reads EOF after the
    /// data sent before.
    pub(super) fn shutdown(&mut self, id: usize) -> io::Result<()> {
        let Some(e) = self.end_mut(id) else {
            return Err(io::Error::from(io::ErrorKind::NotConnected));
        };
        if e.write_shut || e.reset {
            return Ok(());
        }
        e.write_shut = true;
        self.note(format_args!("c{id} shutdown"));
        self.post(id, Packet::Fin);
        Ok(())
    }

    /// The end's socket is dropped: a FIN (or, with data left unread, a
    /// reset, as TCP sends) goes to the peer.
    pub(super) fn close(&mut self, id: usize, fd: RawFd) {
        self.by_fd.remove(&fd);
        let Some(e) = self.end_mut(id) else { return };
        if e.closed {
            return;
        }
        e.closed = true;
        let (unread, shut, reset) = (e.recv.len(), e.write_shut, e.reset);
        self.live = self.live.saturating_sub(1);
        if reset {
            self.note(format_args!("c{id} close (reset)"));
        } else if unread > 0 {
            self.note(format_args!("c{id} close with {unread} unread: reset"));
            self.post(id, Packet::Rst);
        } else {
            self.note(format_args!("c{id} close"));
            if !shut {
                self.post(id, Packet::Fin);
            }
        }
        if let Some(e) = self.end_mut(id) {
            e.recv = VecDeque::new();
        }
    }

    /// How many sockets are open.
    pub(super) fn live(&self) -> usize {
        self.live
    }
}

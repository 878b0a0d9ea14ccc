//! Deterministic simulation: run a server and its clients in virtual
//! time over a simulated network, the same run for the same seed.
//!
//! A [`World`] is a seed, a [`VirtualClock`] and a simulated network of
//! stream connections between simulated addresses. Its
//! [`event_loop`](World::event_loop) is an ordinary [`EventLoop`] on the
//! world's backend, so the same [`Protocol`]s, timers and callbacks run
//! unchanged; [`World::serve`] and [`World::connect`] are
//! [`stream::serve`] and [`stream::connect`] on the simulated network,
//! and [`World::open_datagram`] is
//! [`datagram::open`] on it.
//!
//! * **Virtual time.** When nothing is ready, the clock jumps to the next
//!   timer or the next packet's arrival: a five-minute idle timeout takes
//!   microseconds. Timers never fire early in virtual time either.
//! * **One seed decides everything**: the order in which ready sockets
//!   run, how reads and writes are cut (partial reads, short writes),
//!   each packet's latency, and when faults strike. Every decision is
//!   written to a trace; the same seed gives the same trace, byte for
//!   byte, and [`World::trace_hash`] sums it up.
//! * **Knobs and faults** ([`SimConfig`]): latency, bandwidth, the socket
//!   buffer (a full one makes writes block and the transport pause its
//!   protocol), the largest cut, resets at random, refused connects, and
//!   a limit on open sockets (out of fds). Half-close, a close with data
//!   unread (a reset, as TCP sends), and connecting where nothing listens
//!   (refused) behave as on TCP.
//! * **Exploration**: [`explore`] runs a scenario over many seeds and
//!   reports the failing ones; re-running one seed replays its failure.
//!
//! What is not simulated: the kernel's exact buffer sizes and segment
//! boundaries, real backends' quirks, TLS, Unix sockets, and
//! work on the [blocking pool](crate::BlockingPool) (real threads, real
//! time: a simulation that waits on them is not deterministic).
//!
//! # Examples
//!
//! A five-minute idle timeout, tested in microseconds:
//!
//! ```
//! use muxloop::sim::{SimConfig, World};
//! use muxloop::stream::{Protocol, ServeOptions, Transport};
//! use std::time::Duration;
//!
//! #[derive(Default)]
//! struct Seen { greeted: bool, lost: bool }
//!
//! struct Server;
//! impl Protocol<Seen> for Server {
//!     fn connection_made(&mut self, t: &mut Transport<'_, Seen>, _: &mut Seen) {
//!         t.write(b"hello\n");
//!         t.set_idle_timeout(Some(Duration::from_secs(300)));
//!     }
//!     fn data_received(&mut self, _: &mut Transport<'_, Seen>, _: &[u8], _: &mut Seen) {}
//! }
//! struct Client;
//! impl Protocol<Seen> for Client {
//!     fn data_received(&mut self, _: &mut Transport<'_, Seen>, data: &[u8], s: &mut Seen) {
//!         s.greeted |= data.starts_with(b"h");
//!     }
//!     fn connection_lost(&mut self, _: &mut Transport<'_, Seen>, _: Option<std::io::Error>, s: &mut Seen) {
//!         s.lost = true;
//!     }
//! }
//!
//! let world = World::new(7, SimConfig::default());
//! let mut lp = world.event_loop()?;
//! let addr = "10.0.0.1:80".parse().unwrap();
//! world.serve(&mut lp, addr, ServeOptions::default(), |_, _| Some(Box::new(Server)))?;
//! world.connect(&mut lp, addr, None, Client)?;
//! let mut seen = Seen::default();
//! let started = std::time::Instant::now();
//! assert!(world.run_until(&mut lp, &mut seen, Duration::from_secs(600), |s| s.lost)?);
//! assert!(seen.greeted);
//! assert!(world.elapsed() >= Duration::from_secs(300));
//! assert!(started.elapsed() < Duration::from_secs(5)); // virtual time
//! # Ok::<(), std::io::Error>(())
//! ```

mod backend;
mod net;

use std::any::Any;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::stream::datagram::{
    self, DatagramId, DatagramOptions, DatagramProtocol, DatagramSocket,
};
use crate::stream::{self, Addr, Protocol, ServeOptions, Server, StreamSocket};
use crate::{EventLoop, VirtualClock};
use net::Net;

/// The simulated network's knobs. `SimConfig::default()`, then change
/// fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SimConfig {
    /// One-way latency of every packet: drawn from this range (inclusive).
    /// Default: 50 µs to 2 ms.
    pub latency: (Duration, Duration),
    /// Bytes per second of each direction of each connection; `None`
    /// (the default) is unlimited.
    pub bandwidth: Option<u64>,
    /// Bytes a connection holds in each direction, in flight and unread
    /// together: a writer facing a full one gets `WouldBlock`. Default:
    /// 64 KiB.
    pub buffer: usize,
    /// Reads and writes are cut at random to at most this many bytes
    /// (1 to this); `None` cuts nothing. Default: `Some(1500)`.
    pub max_chunk: Option<usize>,
    /// The chance, per million writes, that the connection is reset
    /// there. Default: 0.
    pub reset_per_million: u32,
    /// The chance, per million connects, that one is refused though a
    /// server listens. Default: 0.
    pub refuse_per_million: u32,
    /// The chance, per million datagrams, that one is lost on the way.
    /// Default: 0.
    pub drop_per_million: u32,
    /// At most this many simulated sockets open at once (more is out of
    /// fds: `connect` fails, a server's accept refuses). Default: none.
    pub max_sockets: Option<usize>,
    /// Keep the trace's lines ([`World::trace`]), not only its hash.
    /// Default: false.
    pub keep_trace: bool,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            latency: (Duration::from_micros(50), Duration::from_millis(2)),
            bandwidth: None,
            buffer: 64 * 1024,
            max_chunk: Some(1500),
            reset_per_million: 0,
            refuse_per_million: 0,
            drop_per_million: 0,
            max_sockets: None,
            keep_trace: false,
        }
    }
}

/// The seeded generator (SplitMix64): small, fast, and the same on every
/// platform.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x6a09_e667_f3bc_c909)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A draw in `[0, n)` (0 for `n` 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// Locks the network. A panic while it was held (a failing assertion in
/// a scenario) leaves it consistent: every change is made whole.
fn lock(net: &Mutex<Net>) -> MutexGuard<'_, Net> {
    net.lock().unwrap_or_else(|e| e.into_inner())
}

/// A simulated world: a seed, virtual time and a simulated network. See
/// the [module](self) documentation. Clones share the world (to use it
/// in a loop's callbacks).
#[derive(Clone)]
pub struct World {
    seed: u64,
    net: Arc<Mutex<Net>>,
    clock: VirtualClock,
    /// The servers listening on simulated addresses (`Server<S>`, typed
    /// by the loop they run on).
    servers: Rc<RefCell<BTreeMap<SocketAddr, Box<dyn Any>>>>,
}

impl fmt::Debug for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("World")
            .field("seed", &self.seed)
            .field("elapsed", &self.elapsed())
            .finish()
    }
}

impl World {
    /// A world whose every choice follows from `seed`.
    pub fn new(seed: u64, config: SimConfig) -> World {
        let net = Net::new(seed, config);
        let clock = net.clock.clone();
        World {
            seed,
            net: Arc::new(Mutex::new(net)),
            clock,
            servers: Rc::default(),
        }
    }

    /// Changes the network's knobs from now on: a fault injected in the
    /// middle of a run (latency rising, resets starting), or a seed's own
    /// choice of setting. `change` runs with the network locked: it must
    /// not call back into the world.
    pub fn configure(&self, change: impl FnOnce(&mut SimConfig)) {
        let mut net = lock(&self.net);
        change(&mut net.config);
        let c = net.config.clone();
        net.note(format_args!("configure {c:?}"));
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The world's clock.
    pub fn clock(&self) -> VirtualClock {
        self.clock.clone()
    }

    /// Virtual time since the world began.
    pub fn elapsed(&self) -> Duration {
        self.clock.elapsed()
    }

    /// An event loop in this world: on the simulation's backend (named
    /// `"sim"`), reading time from the world's clock. Real fds it watches
    /// (its [`LoopHandle`](crate::LoopHandle)'s wake-ups, signals) still
    /// work, outside the seed's control.
    ///
    /// # Errors
    ///
    /// Creating the poll(2) backend for real fds failing.
    pub fn event_loop<S>(&self) -> io::Result<EventLoop<S>> {
        EventLoop::from_backend(Box::new(backend::SimBackend::new(self.net.clone())?))
    }

    /// Serves `addr` on the simulated network, as
    /// [`stream::serve`] serves a listener: each
    /// connection that reaches it gets a protocol from `factory` (or is
    /// refused). The returned [`Server`] is the usual one: count its
    /// connections, pause it, close it (a closed server refuses new
    /// connects).
    ///
    /// # Errors
    ///
    /// `AddrInUse` if a server already listens there.
    pub fn serve<S: 'static, F>(
        &self,
        lp: &mut EventLoop<S>,
        addr: SocketAddr,
        options: ServeOptions,
        factory: F,
    ) -> io::Result<Server<S>>
    where
        F: FnMut(&Addr, &mut S) -> Option<Box<dyn Protocol<S>>> + 'static,
    {
        let _ = lp;
        let mut servers = self.servers.borrow_mut();
        if servers.contains_key(&addr) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("simulated address {addr} is already served"),
            ));
        }
        let server = stream::serve_adopted_at(Addr::Inet(addr), options, factory);
        servers.insert(addr, Box::new(server.clone()));
        lock(&self.net).note(format_args!("listen {addr}"));
        Ok(server)
    }

    /// Connects to `to` on the simulated network, as
    /// [`stream::connect`] does: after a round
    /// trip the protocol's `connection_made` runs (its id is in the
    /// transport), or `connection_failed` — refused where nothing listens
    /// or the server is closing, out of sockets on the server's side, or
    /// `timeout` passing first.
    ///
    /// # Errors
    ///
    /// Out of simulated sockets ([`SimConfig::max_sockets`]) on this side.
    pub fn connect<S: 'static>(
        &self,
        lp: &mut EventLoop<S>,
        to: SocketAddr,
        timeout: Option<Duration>,
        protocol: impl Protocol<S>,
    ) -> io::Result<()> {
        let (client, local) = {
            let mut net = lock(&self.net);
            let local = SocketAddr::new(client_ip(to), net.ephemeral_port());
            let id = net.open(local, to)?;
            net.note(format_args!("c{id} connect {local} -> {to}"));
            (id, local)
        };
        let socket = SimSocket::new(self.net.clone(), client)?;
        type Pending<S> = Rc<RefCell<Option<(Box<dyn Protocol<S>>, SimSocket)>>>;
        let pending: Pending<S> = Rc::new(RefCell::new(Some((Box::new(protocol), socket))));
        let deadline = timeout.map(|t| {
            let p = pending.clone();
            let net = self.net.clone();
            lp.call_later(t, move |_, state| {
                if let Some((mut protocol, _)) = p.borrow_mut().take() {
                    lock(&net).note(format_args!("c{client} connect timed out"));
                    protocol.connection_failed(
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("connecting to {to} (simulated): timed out after {t:?}"),
                        ),
                        state,
                    );
                }
            })
        });
        let there = lock(&self.net).latency();
        let net = self.net.clone();
        let servers = self.servers.clone();
        lp.call_later(there, move |lp, state| {
            if pending.borrow().is_none() {
                return;
            }
            let server = servers
                .borrow()
                .get(&to)
                .and_then(|s| s.downcast_ref::<Server<S>>())
                .filter(|s| !s.is_closing())
                .cloned();
            let back = lock(&net).latency();
            let accepted = server
                .ok_or_else(|| "nothing listens".to_string())
                .and_then(|server| {
                    let mut n = lock(&net);
                    let chance = n.config.refuse_per_million;
                    if n.strikes(chance) {
                        return Err("refused (fault)".to_string());
                    }
                    let id = n.open(to, local).map_err(|e| e.to_string())?;
                    n.link(client, id);
                    n.note(format_args!("c{id} accept {local} -> {to} (c{client})"));
                    drop(n);
                    let sock = SimSocket::new(net.clone(), id).map_err(|e| e.to_string())?;
                    Ok((server, sock))
                });
            match accepted {
                Ok((server, sock)) => {
                    if let Err(e) = server.adopt_socket(lp, sock, state) {
                        log::warn!("sim=accept to={to} error={e}");
                    }
                    let net = net.clone();
                    lp.call_later(back, move |lp, _| {
                        let Some((protocol, sock)) = pending.borrow_mut().take() else {
                            return;
                        };
                        if let Some(timer) = deadline {
                            lp.cancel(timer);
                        }
                        lock(&net).note(format_args!("c{client} connected"));
                        if let Err(e) = stream::attach_boxed(lp, sock, protocol) {
                            log::warn!("sim=connect to={to} not registered: {e}");
                        }
                    });
                }
                Err(why) => {
                    lock(&net).note(format_args!("c{client} refused: {why}"));
                    lp.call_later(back, move |lp, state| {
                        let Some((mut protocol, _)) = pending.borrow_mut().take() else {
                            return;
                        };
                        if let Some(timer) = deadline {
                            lp.cancel(timer);
                        }
                        protocol.connection_failed(
                            io::Error::new(
                                io::ErrorKind::ConnectionRefused,
                                format!("connecting to {to} (simulated): {why}"),
                            ),
                            state,
                        );
                    });
                }
            }
        });
        Ok(())
    }

    /// Opens a datagram endpoint bound to `bind` on the simulated network
    /// (port 0 picks one), connected to `options.connect` if set, driven
    /// by `protocol` as [`datagram::open`]
    /// drives a UDP one. Datagrams arrive whole after a latency of their
    /// own — so they may overtake each other — or not at all: lost
    /// ([`SimConfig::drop_per_million`]), or dropped when the receiver's
    /// `buffer` is full. One sent where nobody is bound is reported to a
    /// connected sender as `ConnectionRefused` (ICMP port unreachable).
    ///
    /// # Errors
    ///
    /// `AddrInUse` if the address is bound; out of simulated sockets.
    pub fn open_datagram<S: 'static>(
        &self,
        lp: &mut EventLoop<S>,
        bind: SocketAddr,
        options: DatagramOptions,
        protocol: impl DatagramProtocol<S>,
    ) -> io::Result<DatagramId<S>> {
        let id = lock(&self.net).open_dgram(bind, options.connect)?;
        let placeholder = File::open("/dev/null")?;
        lock(&self.net).bind_fd(placeholder.as_raw_fd(), id);
        let socket = SimDatagram {
            net: self.net.clone(),
            id,
            placeholder,
        };
        datagram::attach(lp, socket, options, protocol)
    }

    /// Runs `lp` until `done` says so or `limit` of virtual time has
    /// passed: whether `done` did.
    ///
    /// # Errors
    ///
    /// The loop's (a simulation with nothing left to happen reports
    /// `TimedOut`, see [`event_loop`](World::event_loop)).
    pub fn run_until<S>(
        &self,
        lp: &mut EventLoop<S>,
        state: &mut S,
        limit: Duration,
        mut done: impl FnMut(&mut S) -> bool,
    ) -> io::Result<bool> {
        let end = self.elapsed().saturating_add(limit);
        loop {
            if done(state) {
                return Ok(true);
            }
            let now = self.elapsed();
            if now >= end {
                return Ok(false);
            }
            lp.run_once(Some(end - now), state)?;
        }
    }

    /// Adds a line of the scenario's own to the trace.
    pub fn note(&self, what: &str) {
        lock(&self.net).note(format_args!("note {what}"));
    }

    /// A draw in `[0, n)` from the world's generator, for the scenario's
    /// own choices (which client is slow, when a fault strikes), so that
    /// they follow from the seed too.
    pub fn below(&self, n: u64) -> u64 {
        lock(&self.net).below(n)
    }

    /// A hash of the trace so far: equal for equal runs.
    pub fn trace_hash(&self) -> u64 {
        lock(&self.net).trace.hash()
    }

    /// The trace's lines, if [`SimConfig::keep_trace`] is set.
    pub fn trace(&self) -> Option<Vec<String>> {
        lock(&self.net).trace.lines().map(<[String]>::to_vec)
    }

    /// How many simulated sockets are open.
    pub fn open_sockets(&self) -> usize {
        lock(&self.net).live()
    }
}

/// A client's address: one simulated host per server address family.
fn client_ip(to: SocketAddr) -> std::net::IpAddr {
    match to {
        SocketAddr::V4(_) => std::net::IpAddr::from([10, 0, 0, 100]),
        SocketAddr::V6(_) => std::net::IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, 0x100]),
    }
}

/// One end of a simulated connection, as a transport drives it. The loop
/// watches a placeholder fd (`/dev/null`) that stands for it; its
/// readiness comes from the network.
pub struct SimSocket {
    net: Arc<Mutex<Net>>,
    id: usize,
    placeholder: File,
}

impl fmt::Debug for SimSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimSocket(c{})", self.id)
    }
}

impl SimSocket {
    fn new(net: Arc<Mutex<Net>>, id: usize) -> io::Result<SimSocket> {
        let placeholder = File::open("/dev/null")?;
        lock(&net).bind_fd(placeholder.as_raw_fd(), id);
        Ok(SimSocket {
            net,
            id,
            placeholder,
        })
    }

    /// The connection end's number in the trace (`c3`).
    pub fn id(&self) -> usize {
        self.id
    }
}

impl AsFd for SimSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.placeholder.as_fd()
    }
}

impl StreamSocket for SimSocket {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        lock(&self.net).recv(self.id, buf)
    }

    fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        lock(&self.net).send(self.id, bufs)
    }

    fn shutdown_write(&mut self) -> io::Result<()> {
        lock(&self.net).shutdown(self.id)
    }

    fn peer_addr(&self) -> io::Result<Addr> {
        Ok(Addr::Inet(lock(&self.net).addrs(self.id).1))
    }

    fn local_addr(&self) -> io::Result<Addr> {
        Ok(Addr::Inet(lock(&self.net).addrs(self.id).0))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for SimSocket {
    fn drop(&mut self) {
        lock(&self.net).close(self.id, self.placeholder.as_raw_fd());
    }
}

/// A simulated datagram endpoint, as an endpoint drives it
/// ([`World::open_datagram`]).
pub struct SimDatagram {
    net: Arc<Mutex<Net>>,
    id: usize,
    placeholder: File,
}

impl fmt::Debug for SimDatagram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimDatagram(d{})", self.id)
    }
}

impl AsFd for SimDatagram {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.placeholder.as_fd()
    }
}

impl DatagramSocket for SimDatagram {
    fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, Addr, bool)> {
        let (n, from, cut) = lock(&self.net).recv_dgram(self.id, buf)?;
        Ok((n, Addr::Inet(from), cut))
    }

    fn send_to(&mut self, data: &[u8], to: Option<&Addr>) -> io::Result<usize> {
        let to = match to {
            None => None,
            Some(Addr::Inet(a)) => Some(*a),
            Some(other) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("a simulated datagram endpoint cannot send to {other}"),
                ));
            }
        };
        lock(&self.net).send_dgram(self.id, data, to)
    }

    fn local_addr(&self) -> io::Result<Addr> {
        Ok(Addr::Inet(lock(&self.net).dgram_addrs(self.id).0))
    }

    fn peer_addr(&self) -> Option<Addr> {
        lock(&self.net).dgram_addrs(self.id).1.map(Addr::Inet)
    }
}

impl Drop for SimDatagram {
    fn drop(&mut self) {
        lock(&self.net).close_dgram(self.id, self.placeholder.as_raw_fd());
    }
}

/// What [`explore`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// How many seeds ran.
    pub seeds: u64,
    /// The seeds that failed, each with its failure.
    pub failed: Vec<(u64, String)>,
    /// A hash over every seed's trace, in order: equal for equal runs.
    pub hash: u64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} seeds, {} failed, trace {:016x}",
            self.seeds,
            self.failed.len(),
            self.hash
        )
    }
}

/// Runs `scenario` in a fresh [`World`] for each of `seeds` (with
/// `config`), and reports which failed — by returning `Err` or by
/// panicking (the panic's message is the failure). Each world's trace hash
/// goes into the report's. Re-run a failing seed alone with
/// `explore(seed..seed + 1, …)` (or [`World::new`] with it) to replay it.
///
/// # Examples
///
/// ```
/// use muxloop::sim::{self, SimConfig};
///
/// let report = sim::explore(0..20, &SimConfig::default(), |world| {
///     // A "bug" that one seed in four finds.
///     if world.below(4) == 0 { Err("unlucky".into()) } else { Ok(()) }
/// });
/// assert_eq!(report.seeds, 20);
/// assert!(!report.failed.is_empty());
/// let (seed, _) = &report.failed[0];
/// let again = sim::explore(*seed..*seed + 1, &SimConfig::default(), |world| {
///     if world.below(4) == 0 { Err("unlucky".into()) } else { Ok(()) }
/// });
/// assert_eq!(again.failed.len(), 1);
/// ```
pub fn explore(
    seeds: std::ops::Range<u64>,
    config: &SimConfig,
    mut scenario: impl FnMut(&World) -> Result<(), String>,
) -> Report {
    let mut report = Report {
        seeds: 0,
        failed: Vec::new(),
        hash: net::fnv(0xcbf2_9ce4_8422_2325, b""),
    };
    for seed in seeds {
        let world = World::new(seed, config.clone());
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(&world)));
        let outcome = match outcome {
            Ok(r) => r,
            Err(panic) => Err(crate::event_loop::panic_message(&*panic)),
        };
        if let Err(why) = outcome {
            report.failed.push((seed, why));
        }
        report.seeds += 1;
        report.hash = net::fnv(report.hash, &seed.to_le_bytes());
        report.hash = net::fnv(report.hash, &world.trace_hash().to_le_bytes());
    }
    report
}

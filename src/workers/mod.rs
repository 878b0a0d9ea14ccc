//! One loop per core: N threads, each with its own [`EventLoop`] and its
//! own state, and one server spread across them.
//!
//! Every loop stays single-threaded and every callback gets `&mut S`
//! without a lock: nothing is shared between workers but what the program
//! shares itself (an `Arc` of read-mostly data built before the start) and
//! the messages it sends through [`Peers`]. This is nginx's and libuv's
//! model (a process or a loop per core), not a thread pool behind one loop.
//!
//! * [`Workers::start`] starts the threads: each builds its state with the
//!   factory (`Fn(worker index) -> S`), then runs the setup (serve, add
//!   timers, keep a [`Peers`] in its state) on its own loop.
//! * [`SharedListener`] serves one address on every worker: one listener
//!   per worker with `SO_REUSEPORT` where the kernel balances connections
//!   across them (Linux; FreeBSD's `SO_REUSEPORT_LB`), or one acceptor
//!   thread handing accepted sockets to the workers (round robin or the
//!   fewest open connections) where it does not (macOS and the other
//!   BSDs). [`Balance::Auto`] picks.
//! * [`Peers`] sends a closure to one worker or to all of them.
//! * [`Workers::stop`] stops every worker gracefully (its servers close
//!   with a grace period, and no connection the kernel accepted is lost),
//!   joins them and hands back each worker's final state; a worker that
//!   panicked is reported and the others stop cleanly.
//!
//! The guide is `docs/workers.md`.
//!
//! # Examples
//!
//! An echo server on two workers, one port:
//!
//! ```
//! use muxloop::stream::{Protocol, ServeOptions, Transport};
//! use muxloop::workers::{Balance, SharedListener, WorkerOptions, Workers};
//! use std::io::{Read, Write};
//! use std::time::Duration;
//!
//! struct Echo;
//! impl Protocol<u64> for Echo {
//!     fn data_received(&mut self, t: &mut Transport<'_, u64>, data: &[u8], bytes: &mut u64) {
//!         *bytes += data.len() as u64;
//!         t.write(data);
//!     }
//! }
//!
//! let listener = SharedListener::bind("127.0.0.1:0".parse().unwrap(), Balance::Auto)?;
//! let addr = listener.local_addr();
//! let mut options = WorkerOptions::default();
//! options.count = 2;
//! let workers = Workers::start(options, |_index| 0u64, move |w| {
//!     w.serve(&listener, ServeOptions::default(), |_, _| Some(Box::new(Echo)))?;
//!     Ok(())
//! })?;
//! for _ in 0..4 {
//!     let mut c = std::net::TcpStream::connect(addr)?;
//!     c.write_all(b"ping")?;
//!     let mut back = [0; 4];
//!     c.read_exact(&mut back)?;
//!     assert_eq!(&back, b"ping");
//! }
//! let done = workers.stop(Duration::from_secs(1));
//! let echoed: u64 = done.into_iter().map(|w| w.unwrap().state).sum();
//! assert_eq!(echoed, 16);
//! # Ok::<(), std::io::Error>(())
//! ```

mod listen;

use std::fmt;
use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

pub use listen::{Balance, Pick, SharedListener};

use crate::stream::{Addr, Protocol, ServeOptions, Server};
use crate::{BackendKind, EventLoop, LoopHandle, LoopStats};

/// How to start the workers. `WorkerOptions::default()`, then change
/// fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerOptions {
    /// How many workers (threads, loops). Default: the cores this process
    /// may run on (`std::thread::available_parallelism`).
    pub count: usize,
    /// Every worker's backend. Default: `None`, the platform's default (or
    /// `MUXLOOP_BACKEND`), as [`EventLoop::new`].
    pub backend: Option<BackendKind>,
    /// The threads' names: `NAME-K` for worker K. Default: `muxloop-worker`.
    pub name: String,
    /// The grace period the other workers get when one panics. Default:
    /// 5 s.
    pub panic_grace: Duration,
}

impl Default for WorkerOptions {
    fn default() -> WorkerOptions {
        WorkerOptions {
            count: std::thread::available_parallelism().map_or(1, |n| n.get()),
            backend: None,
            name: "muxloop-worker".to_string(),
            panic_grace: Duration::from_secs(5),
        }
    }
}

/// A worker's counters, kept up to date as it runs (after each loop
/// iteration) and final once it has stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// The worker's index.
    pub index: usize,
    /// Connections its servers accepted or were handed, in all.
    pub connections: u64,
    /// Connections open now.
    pub open: usize,
    /// Loop iterations.
    pub iterations: u64,
    /// Callbacks run: sources, timers, deferred calls, signals.
    pub callbacks: u64,
    /// Time spent waiting for events.
    pub wait_time: Duration,
    /// Time spent in callbacks.
    pub callback_time: Duration,
}

/// The counters a worker publishes for the other threads.
#[derive(Default)]
struct LiveStats {
    connections: AtomicU64,
    open: AtomicUsize,
    iterations: AtomicU64,
    callbacks: AtomicU64,
    wait_ns: AtomicU64,
    callback_ns: AtomicU64,
}

impl LiveStats {
    fn publish(&self, lp: &LoopStats, connections: u64, open: usize) {
        self.connections.store(connections, Ordering::Relaxed);
        self.open.store(open, Ordering::Relaxed);
        self.iterations.store(lp.iterations, Ordering::Relaxed);
        let callbacks =
            lp.events_dispatched + lp.timers_fired + lp.calls_run + lp.signals_dispatched;
        self.callbacks.store(callbacks, Ordering::Relaxed);
        self.wait_ns
            .store(lp.wait_time.as_nanos() as u64, Ordering::Relaxed);
        self.callback_ns
            .store(lp.callback_time.as_nanos() as u64, Ordering::Relaxed);
    }

    fn read(&self, index: usize) -> WorkerStats {
        WorkerStats {
            index,
            connections: self.connections.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
            iterations: self.iterations.load(Ordering::Relaxed),
            callbacks: self.callbacks.load(Ordering::Relaxed),
            wait_time: Duration::from_nanos(self.wait_ns.load(Ordering::Relaxed)),
            callback_time: Duration::from_nanos(self.callback_ns.load(Ordering::Relaxed)),
        }
    }
}

/// What runs on a worker's thread as it ends.
type OnExit = Arc<dyn Fn(usize) + Send + Sync>;

/// Sockets an acceptor handed to one worker: (listener group, socket).
type Inbox = Mutex<Vec<(u64, TcpStream)>>;

/// What the workers, their acceptors and the `Workers` value share.
struct Control {
    stopping: AtomicBool,
    grace: Mutex<Duration>,
    /// Acceptor threads still handing out connections.
    acceptors: AtomicUsize,
    stats: Vec<LiveStats>,
    inboxes: Vec<Inbox>,
    /// Wake the acceptor threads (to see a stop).
    acceptor_wakers: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
    on_exit: Mutex<Option<OnExit>>,
}

/// The handles of every worker's loop: send work to one worker, or to all.
/// `Clone + Send + Sync`; keep one in a worker's state to reach the
/// others from its callbacks.
pub struct Peers<S> {
    handles: Arc<[LoopHandle<S>]>,
    control: Arc<Control>,
}

impl<S> Clone for Peers<S> {
    fn clone(&self) -> Self {
        Peers {
            handles: self.handles.clone(),
            control: self.control.clone(),
        }
    }
}

impl<S> fmt::Debug for Peers<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peers")
            .field("count", &self.handles.len())
            .finish()
    }
}

impl<S: 'static> Peers<S> {
    /// How many workers there are.
    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// Runs `f` on worker `index`'s loop, with its state, as soon as it
    /// gets to it ([`LoopHandle::call_soon`]).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an index past the last worker; `NotConnected`
    /// if that worker has ended.
    pub fn send<F>(&self, index: usize, f: F) -> io::Result<()>
    where
        F: FnOnce(&mut EventLoop<S>, &mut S) + Send + 'static,
    {
        let Some(handle) = self.handles.get(index) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "worker {index} does not exist ({} workers)",
                    self.handles.len()
                ),
            ));
        };
        handle.call_soon(f)
    }

    /// Runs a clone of `f` on every worker but `except` (the sender,
    /// usually; `None` for all). Workers that have ended are skipped.
    pub fn broadcast<F>(&self, except: Option<usize>, f: F)
    where
        F: FnOnce(&mut EventLoop<S>, &mut S) + Clone + Send + 'static,
    {
        for (i, handle) in self.handles.iter().enumerate() {
            if Some(i) != except {
                let _ = handle.call_soon(f.clone());
            }
        }
    }

    /// Asks every worker to stop gracefully: each closes its servers,
    /// giving their connections `grace` to finish, and ends when they are
    /// closed. Returns at once; [`Workers::join`] waits. A second call
    /// changes nothing.
    pub fn stop(&self, grace: Duration) {
        request_stop(&self.control, &self.handles, grace);
    }

    /// Worker `index`'s counters now.
    ///
    /// # Panics
    ///
    /// For an index past the last worker.
    pub fn stats(&self, index: usize) -> WorkerStats {
        self.control.stats[index].read(index)
    }
}

fn request_stop<S>(control: &Control, handles: &[LoopHandle<S>], grace: Duration) {
    if control.stopping.swap(true, Ordering::AcqRel) {
        return;
    }
    *control.grace.lock().unwrap_or_else(|e| e.into_inner()) = grace;
    log::debug!("workers=stop grace={grace:?}");
    for wake in control
        .acceptor_wakers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        wake();
    }
    for handle in handles {
        let _ = handle.wake();
    }
}

/// One worker, during its setup: its index, its loop and state, the
/// other workers, and [`serve`](Worker::serve).
pub struct Worker<'a, S> {
    index: usize,
    lp: &'a mut EventLoop<S>,
    state: &'a mut S,
    peers: &'a Peers<S>,
    servers: &'a mut Vec<(Option<u64>, Server<S>)>,
    groups: &'a mut Vec<Arc<listen::Group>>,
}

impl<S> fmt::Debug for Worker<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("index", &self.index)
            .field("count", &self.peers.handles.len())
            .finish()
    }
}

impl<'a, S: 'static> Worker<'a, S> {
    /// This worker's index, `0..count`.
    pub fn index(&self) -> usize {
        self.index
    }

    /// How many workers there are.
    pub fn count(&self) -> usize {
        self.peers.count()
    }

    /// This worker's loop.
    pub fn event_loop(&mut self) -> &mut EventLoop<S> {
        self.lp
    }

    /// This worker's state.
    pub fn state(&mut self) -> &mut S {
        self.state
    }

    /// The loop and the state at once.
    pub fn parts(&mut self) -> (&mut EventLoop<S>, &mut S) {
        (self.lp, self.state)
    }

    /// The handles of every worker (this one included).
    pub fn peers(&self) -> Peers<S> {
        self.peers.clone()
    }

    /// Serves `listener` on this worker, as [`stream::serve`] does: on
    /// its own reuse-port listener, or fed by the listener's acceptor
    /// thread. Each worker that calls it takes a share of the
    /// connections. The server is closed by [`Workers::stop`].
    ///
    /// # Errors
    ///
    /// The worker's listener cannot be bound (reuse-port) or registered.
    ///
    /// [`stream::serve`]: crate::stream::serve
    pub fn serve<F>(
        &mut self,
        listener: &SharedListener,
        options: ServeOptions,
        factory: F,
    ) -> io::Result<Server<S>>
    where
        F: FnMut(&Addr, &mut S) -> Option<Box<dyn Protocol<S>>> + 'static,
    {
        let (group, server) = listener.serve_on(self.lp, self.index, options, factory)?;
        self.servers
            .push((group.as_ref().map(|g| g.id), server.clone()));
        if let Some(g) = group {
            if !self.groups.iter().any(|h| Arc::ptr_eq(h, &g)) {
                self.groups.push(g);
            }
        }
        Ok(server)
    }

    /// Serves a server of this worker's own (one made with
    /// [`stream::serve`](crate::stream::serve) on this loop): it is then
    /// closed by [`Workers::stop`] like those of [`serve`](Worker::serve).
    pub fn manage(&mut self, server: Server<S>) {
        self.servers.push((None, server));
    }
}

/// A worker that did not end cleanly.
#[derive(Debug)]
pub enum WorkerError {
    /// Its setup (or its loop) returned an error.
    Failed(usize, io::Error),
    /// It panicked; the message, when the panic carried one.
    Panicked(usize, String),
}

impl fmt::Display for WorkerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerError::Failed(i, e) => write!(f, "worker {i} failed: {e}"),
            WorkerError::Panicked(i, msg) => write!(f, "worker {i} panicked: {msg}"),
        }
    }
}

impl std::error::Error for WorkerError {}

/// A worker that ended: its final state and counters.
#[derive(Debug)]
#[non_exhaustive]
pub struct WorkerExit<S> {
    /// The worker's index.
    pub index: usize,
    /// Its state when its loop ended.
    pub state: S,
    /// Its final counters.
    pub stats: WorkerStats,
}

type Setup<S> = dyn Fn(&mut Worker<'_, S>) -> io::Result<()> + Send + Sync;
type Outcome<S> = Result<WorkerExit<S>, WorkerError>;

/// The running workers. Stop them with [`stop`](Workers::stop) (or
/// [`Peers::stop`] and [`join`](Workers::join)); dropping the value stops
/// them too, with a grace period of one second, and waits for them.
pub struct Workers<S> {
    peers: Peers<S>,
    threads: Vec<JoinHandle<Outcome<S>>>,
    acceptors: Vec<JoinHandle<()>>,
}

impl<S> fmt::Debug for Workers<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workers")
            .field("count", &self.peers.handles.len())
            .finish()
    }
}

impl<S: Send + 'static> Workers<S> {
    /// Starts `options.count` workers. Worker K builds its state with
    /// `state(K)` and its loop (on `options.backend`), then runs `setup`
    /// on them, and its loop runs until the workers are stopped. Returns
    /// once every worker has done its setup (so every listener is
    /// listening), with the acceptor threads of acceptor-mode listeners
    /// started.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for zero workers; the first error a worker's loop
    /// or setup met (the other workers are then stopped and joined); the
    /// error spawning a thread.
    pub fn start<F, G>(options: WorkerOptions, state: F, setup: G) -> io::Result<Workers<S>>
    where
        F: Fn(usize) -> S + Send + Sync + 'static,
        G: Fn(&mut Worker<'_, S>) -> io::Result<()> + Send + Sync + 'static,
    {
        let count = options.count;
        if count == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "workers: count is 0 (at least one worker is needed)",
            ));
        }
        let control = Arc::new(Control {
            stopping: AtomicBool::new(false),
            grace: Mutex::new(Duration::from_secs(1)),
            acceptors: AtomicUsize::new(0),
            stats: (0..count).map(|_| LiveStats::default()).collect(),
            inboxes: (0..count).map(|_| Mutex::new(Vec::new())).collect(),
            acceptor_wakers: Mutex::new(Vec::new()),
            on_exit: Mutex::new(None),
        });
        let state: Arc<dyn Fn(usize) -> S + Send + Sync> = Arc::new(state);
        let setup: Arc<Setup<S>> = Arc::new(setup);
        // Each worker makes its loop and sends its handle; once all are
        // in, each gets the peers and does its setup, and says how it went.
        let (handle_tx, handle_rx) = mpsc::channel::<(usize, io::Result<LoopHandle<S>>)>();
        let (ready_tx, ready_rx) = mpsc::channel::<(usize, io::Result<Vec<Arc<listen::Group>>>)>();
        let mut peer_txs = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let (peers_tx, peers_rx) = mpsc::channel::<Option<Peers<S>>>();
            peer_txs.push(peers_tx);
            let start = Start {
                index,
                backend: options.backend,
                panic_grace: options.panic_grace,
                state: state.clone(),
                setup: setup.clone(),
                control: control.clone(),
                handle_tx: handle_tx.clone(),
                peers_rx,
                ready_tx: ready_tx.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("{}-{index}", options.name))
                .spawn(move || start.run());
            match thread {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // The workers started so far wait for their peers:
                    // tell them there are none, and collect them.
                    drop(peer_txs);
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(io::Error::new(
                        e.kind(),
                        format!("workers: cannot start worker {index}: {e}"),
                    ));
                }
            }
        }
        drop((handle_tx, ready_tx));
        let mut handles: Vec<Option<LoopHandle<S>>> = (0..count).map(|_| None).collect();
        let mut first_error = None;
        for _ in 0..count {
            match handle_rx.recv() {
                Ok((i, Ok(h))) => handles[i] = Some(h),
                Ok((i, Err(e))) => {
                    first_error.get_or_insert(io::Error::new(
                        e.kind(),
                        format!("worker {i}: event loop: {e}"),
                    ));
                }
                Err(_) => break,
            }
        }
        if handles.iter().any(Option::is_none) {
            drop(peer_txs);
            for t in threads {
                let _ = t.join();
            }
            return Err(first_error.unwrap_or_else(|| {
                io::Error::other("workers: a worker ended before its loop was made")
            }));
        }
        let handles: Arc<[LoopHandle<S>]> = handles.into_iter().map(Option::unwrap).collect();
        let peers = Peers {
            handles,
            control: control.clone(),
        };
        for tx in &peer_txs {
            let _ = tx.send(Some(peers.clone()));
        }
        let mut groups: Vec<Arc<listen::Group>> = Vec::new();
        let mut failed = None;
        for _ in 0..count {
            match ready_rx.recv() {
                Ok((_, Ok(served))) => {
                    for g in served {
                        if !groups.iter().any(|h| Arc::ptr_eq(h, &g)) {
                            groups.push(g);
                        }
                    }
                }
                Ok((i, Err(e))) => {
                    failed.get_or_insert(io::Error::new(e.kind(), format!("worker {i}: {e}")));
                }
                Err(_) => {
                    failed
                        .get_or_insert(io::Error::other("workers: a worker panicked in its setup"));
                    break;
                }
            }
        }
        let mut workers = Workers {
            peers,
            threads,
            acceptors: Vec::new(),
        };
        if let Some(e) = failed {
            workers.peers.stop(Duration::ZERO);
            let _ = workers.join_all();
            return Err(e);
        }
        for group in groups {
            match listen::start_acceptor(&group, &workers.peers) {
                Ok(Some(t)) => workers.acceptors.push(t),
                Ok(None) => {}
                Err(e) => {
                    workers.peers.stop(Duration::ZERO);
                    let _ = workers.join_all();
                    return Err(e);
                }
            }
        }
        log::debug!("workers=started count={count}");
        Ok(workers)
    }

    /// The handles of every worker.
    pub fn peers(&self) -> Peers<S> {
        self.peers.clone()
    }

    /// Every worker's counters now.
    pub fn stats(&self) -> Vec<WorkerStats> {
        (0..self.peers.count())
            .map(|i| self.peers.stats(i))
            .collect()
    }

    /// Runs `f` (with the worker's index) on the thread of each worker
    /// that ends, as it ends, whatever the reason — e.g. to stop the
    /// main thread's loop through its [`LoopHandle`], so that it can
    /// [`join`](Workers::join) when a worker panicked. A worker that has
    /// ended before the call is not reported.
    pub fn on_exit<F: Fn(usize) + Send + Sync + 'static>(&self, f: F) {
        *self
            .peers
            .control
            .on_exit
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(f));
    }

    /// Whether some worker has ended (stopped, failed or panicked).
    pub fn any_finished(&self) -> bool {
        self.threads.iter().any(JoinHandle::is_finished)
    }

    /// Stops every worker gracefully ([`Peers::stop`]) and waits for
    /// them: one result per worker, in index order.
    pub fn stop(self, grace: Duration) -> Vec<Outcome<S>> {
        self.peers.stop(grace);
        self.join()
    }

    /// Waits for every worker to end (after [`Peers::stop`], or a panic
    /// or failure, which stops the others): one result per worker, in
    /// index order.
    pub fn join(mut self) -> Vec<Outcome<S>> {
        self.join_all()
    }

    fn join_all(&mut self) -> Vec<Outcome<S>> {
        let results = self
            .threads
            .drain(..)
            .enumerate()
            .map(|(i, t)| {
                t.join().unwrap_or_else(|p| {
                    Err(WorkerError::Panicked(
                        i,
                        crate::event_loop::panic_message(&*p),
                    ))
                })
            })
            .collect();
        for t in self.acceptors.drain(..) {
            let _ = t.join();
        }
        results
    }
}

impl<S> Drop for Workers<S> {
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        request_stop(
            &self.peers.control,
            &self.peers.handles,
            Duration::from_secs(1),
        );
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for t in self.acceptors.drain(..) {
            let _ = t.join();
        }
    }
}

/// What a worker thread starts with.
struct Start<S> {
    index: usize,
    backend: Option<BackendKind>,
    panic_grace: Duration,
    state: Arc<dyn Fn(usize) -> S + Send + Sync>,
    setup: Arc<Setup<S>>,
    control: Arc<Control>,
    handle_tx: mpsc::Sender<(usize, io::Result<LoopHandle<S>>)>,
    peers_rx: mpsc::Receiver<Option<Peers<S>>>,
    ready_tx: mpsc::Sender<(usize, io::Result<Vec<Arc<listen::Group>>>)>,
}

impl<S: 'static> Start<S> {
    fn run(self) -> Outcome<S> {
        let index = self.index;
        let control = self.control.clone();
        let panic_grace = self.panic_grace;
        let peers_seen = Arc::new(Mutex::new(None::<Peers<S>>));
        let seen = peers_seen.clone();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.work(&seen)))
            .unwrap_or_else(|p| {
                let msg = crate::event_loop::panic_message(&*p);
                log::warn!("workers=panic worker={index} message={msg:?}: stopping the others");
                Err(WorkerError::Panicked(index, msg))
            });
        if outcome.is_err() {
            let peers = peers_seen.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(peers) = peers {
                peers.stop(panic_grace);
            } else {
                control.stopping.store(true, Ordering::Release);
            }
        }
        let on_exit = control
            .on_exit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(f) = on_exit {
            f(index);
        }
        outcome
    }

    fn work(self, seen: &Mutex<Option<Peers<S>>>) -> Outcome<S> {
        let index = self.index;
        let made = match self.backend {
            Some(kind) => EventLoop::with_backend(kind),
            None => EventLoop::new(),
        };
        let mut lp = match made {
            Ok(lp) => {
                let _ = self.handle_tx.send((index, Ok(lp.handle())));
                lp
            }
            Err(e) => {
                let msg = e.to_string();
                let _ = self.handle_tx.send((index, Err(e)));
                return Err(WorkerError::Failed(index, io::Error::other(msg)));
            }
        };
        drop(self.handle_tx);
        let Ok(Some(peers)) = self.peers_rx.recv() else {
            // The start was called off.
            return Err(WorkerError::Failed(
                index,
                io::Error::other("the workers' start was called off"),
            ));
        };
        *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(peers.clone());
        let mut state = (self.state)(index);
        let mut servers = Vec::new();
        let mut groups = Vec::new();
        let setup = {
            let mut w = Worker {
                index,
                lp: &mut lp,
                state: &mut state,
                peers: &peers,
                servers: &mut servers,
                groups: &mut groups,
            };
            (self.setup)(&mut w)
        };
        match setup {
            Ok(()) => {
                let _ = self.ready_tx.send((index, Ok(groups)));
            }
            Err(e) => {
                let msg = e.to_string();
                let kind = e.kind();
                let _ = self.ready_tx.send((index, Err(e)));
                return Err(WorkerError::Failed(index, io::Error::new(kind, msg)));
            }
        }
        drop(self.ready_tx);
        let control = &self.control;
        if let Err(e) = drive(index, &mut lp, &mut state, &mut servers, control) {
            log::warn!("workers=error worker={index} error={e}");
            return Err(WorkerError::Failed(index, e));
        }
        let (connections, open) = counts(&servers);
        control.stats[index].publish(&lp.stats(), connections, open);
        log::debug!("workers=stopped worker={index} connections={connections}");
        drop(servers);
        drop(lp);
        Ok(WorkerExit {
            index,
            state,
            stats: control.stats[index].read(index),
        })
    }
}

fn counts<S: 'static>(servers: &[(Option<u64>, Server<S>)]) -> (u64, usize) {
    servers.iter().fold((0, 0), |(c, o), (_, s)| {
        (c + s.connections_served(), o + s.connection_count())
    })
}

/// A worker's loop: runs until the workers stop and its servers are
/// closed (or its loop is stopped), taking the sockets its acceptors hand
/// it between iterations.
fn drive<S: 'static>(
    index: usize,
    lp: &mut EventLoop<S>,
    state: &mut S,
    servers: &mut [(Option<u64>, Server<S>)],
    control: &Control,
) -> io::Result<()> {
    let mut closing = false;
    loop {
        lp.run_once(None, state)?;
        let handed = std::mem::take(
            &mut *control.inboxes[index]
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for (group, sock) in handed {
            match servers.iter().find(|(g, _)| *g == Some(group)) {
                Some((_, server)) => {
                    if let Err(e) = server.adopt(lp, sock, state) {
                        log::debug!("workers=adopt worker={index} error={e}");
                    }
                }
                None => {
                    log::warn!("workers=adopt worker={index} has no server for listener {group}")
                }
            }
        }
        let (connections, open) = counts(servers);
        control.stats[index].publish(&lp.stats(), connections, open);
        if lp.is_stopped() && !closing {
            log::debug!("workers=loop-stopped worker={index}");
            return Ok(());
        }
        if !closing && control.stopping.load(Ordering::Acquire) {
            closing = true;
            let grace = *control.grace.lock().unwrap_or_else(|e| e.into_inner());
            for (_, server) in servers.iter() {
                server.close(lp, grace, |_, _| {});
            }
        }
        if closing
            && control.acceptors.load(Ordering::Acquire) == 0
            && open == 0
            && servers.iter().all(|(_, s)| s.is_closed())
            && control.inboxes[index]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
        {
            return Ok(());
        }
    }
}

//! One address served on every worker: a reuse-port listener per worker,
//! or one acceptor thread handing connections out.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{Control, Peers};
use crate::stream::{self, Addr, Protocol, ServeOptions, Server};
use crate::{EventLoop, Interest, LoopHandle, PostAction};

/// How an acceptor chooses the worker for a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// Each worker in turn.
    RoundRobin,
    /// The worker with the fewest open connections (counting those
    /// handed to it and not yet taken).
    LeastConnections,
}

/// How a [`SharedListener`] spreads its connections over the workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    /// [`ReusePort`](Balance::ReusePort) where the kernel balances
    /// reuse-port listeners (Linux, FreeBSD), else
    /// [`Acceptor`](Balance::Acceptor) with round robin.
    Auto,
    /// A listener per worker on the same port (`SO_REUSEPORT`; FreeBSD's
    /// `SO_REUSEPORT_LB`); the kernel spreads new connections over them
    /// by a hash of their addresses. No thread between the kernel and the
    /// workers, and no lock; a busy worker still gets its share.
    ReusePort,
    /// One listener, accepted on a thread of its own, which hands each
    /// connection to a worker as `pick` says. Works everywhere; one more
    /// hop (a queue and a wake-up) per connection.
    Acceptor(Pick),
}

static NEXT_GROUP: AtomicU64 = AtomicU64::new(1);

/// What the workers serving one address share.
pub(super) struct Group {
    pub(super) id: u64,
    addr: SocketAddr,
    balance: Balance,
    /// The listener bound by `bind`: the acceptor's, or the first
    /// worker's under reuse-port.
    first: Mutex<Option<TcpListener>>,
    /// The workers serving it (acceptor mode: those it hands out to).
    members: Mutex<Vec<usize>>,
}

/// One address served by several workers ([`Worker::serve`]). Bound at
/// once (so that port 0 is resolved and the address can be printed before
/// the workers start); `Clone`, `Send` and `Sync`.
///
/// [`Worker::serve`]: super::Worker::serve
#[derive(Clone)]
pub struct SharedListener {
    group: Arc<Group>,
}

impl std::fmt::Debug for SharedListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedListener")
            .field("addr", &self.group.addr)
            .field("balance", &self.group.balance)
            .finish()
    }
}

/// The listen backlog asked for (the kernel caps it, at `somaxconn` on
/// Linux).
const BACKLOG: libc::c_int = 4096;

impl SharedListener {
    /// Binds `addr` (port 0 picks a free port) for serving with
    /// `balance`; [`Balance::Auto`] is resolved here.
    ///
    /// # Errors
    ///
    /// `Unsupported` for [`Balance::ReusePort`] where the kernel does not
    /// balance reuse-port listeners (macOS and most BSDs hand every
    /// connection to one of them); the bind's error, naming the address.
    pub fn bind(addr: SocketAddr, balance: Balance) -> io::Result<SharedListener> {
        let reuse = crate::sys::balanced_reuseport_option();
        let balance = match (balance, reuse) {
            (Balance::Auto, Some(_)) => Balance::ReusePort,
            (Balance::Auto, None) => Balance::Acceptor(Pick::RoundRobin),
            (Balance::ReusePort, None) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "reuse-port balancing: this kernel does not spread connections over \
                     reuse-port listeners; use Balance::Acceptor",
                ));
            }
            (b, _) => b,
        };
        let option = if balance == Balance::ReusePort {
            reuse
        } else {
            None
        };
        let listener = crate::sys::tcp_listener(&addr, option, BACKLOG)
            .map_err(|e| io::Error::new(e.kind(), format!("listening on {addr}: {e}")))?;
        let addr = listener.local_addr()?;
        log::debug!("workers=listen addr={addr} balance={balance:?}");
        Ok(SharedListener {
            group: Arc::new(Group {
                id: NEXT_GROUP.fetch_add(1, Ordering::Relaxed),
                addr,
                balance,
                first: Mutex::new(Some(listener)),
                members: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The address, with the port resolved.
    pub fn local_addr(&self) -> SocketAddr {
        self.group.addr
    }

    /// How it balances ([`Balance::Auto`] resolved).
    pub fn balance(&self) -> Balance {
        self.group.balance
    }

    /// Serves it on worker `index`'s loop: returns the server, and the
    /// group when an acceptor must feed it.
    pub(super) fn serve_on<S: 'static, F>(
        &self,
        lp: &mut EventLoop<S>,
        index: usize,
        options: ServeOptions,
        factory: F,
    ) -> io::Result<(Option<Arc<Group>>, Server<S>)>
    where
        F: FnMut(&Addr, &mut S) -> Option<Box<dyn Protocol<S>>> + 'static,
    {
        let g = &self.group;
        match g.balance {
            Balance::Acceptor(_) => {
                lock(&g.members).push(index);
                let server = stream::serve_adopted(options, factory);
                Ok((Some(g.clone()), server))
            }
            _ => {
                let first = lock(&g.first).take();
                let listener = match first {
                    Some(l) => l,
                    None => crate::sys::tcp_listener(
                        &g.addr,
                        crate::sys::balanced_reuseport_option(),
                        BACKLOG,
                    )
                    .map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("worker {index}: listening on {} (reuse-port): {e}", g.addr),
                        )
                    })?,
                };
                lock(&g.members).push(index);
                Ok((None, stream::serve(lp, listener, options, factory)?))
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An acceptor's state.
struct Acceptor<S> {
    group: u64,
    pick: Pick,
    members: Vec<usize>,
    next: usize,
    handles: Arc<[LoopHandle<S>]>,
    control: Arc<Control>,
}

impl<S: 'static> Acceptor<S> {
    /// The worker for the next connection.
    fn pick(&mut self) -> usize {
        match self.pick {
            Pick::RoundRobin => {
                let k = self.members[self.next % self.members.len()];
                self.next = self.next.wrapping_add(1);
                k
            }
            Pick::LeastConnections => *self
                .members
                .iter()
                .min_by_key(|&&k| {
                    self.control.stats[k].open.load(Ordering::Relaxed)
                        + lock(&self.control.inboxes[k]).len()
                })
                .expect("an acceptor has members"),
        }
    }

    /// Hands `sock` to a worker; drops it (the client sees a close) if
    /// every worker has ended.
    fn hand(&mut self, mut sock: TcpStream) {
        while !self.members.is_empty() {
            let k = self.pick();
            lock(&self.control.inboxes[k]).push((self.group, sock));
            if self.handles[k].wake().is_ok() {
                return;
            }
            // That worker has ended: take the socket back, try another.
            log::debug!("workers=acceptor worker={k} has ended");
            self.members.retain(|&m| m != k);
            match lock(&self.control.inboxes[k]).pop() {
                Some((_, back)) => sock = back,
                None => return,
            }
        }
    }

    /// Accepts what `listener` holds (at most `max`); `false` once it
    /// would block.
    fn accept(&mut self, listener: &TcpListener, max: usize) -> bool {
        for _ in 0..max {
            match listener.accept() {
                Ok((sock, _)) => self.hand(sock),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    log::warn!("workers=acceptor accept error={e}");
                    return false;
                }
            }
        }
        true
    }
}

/// Starts the acceptor thread of an acceptor-mode group (`None` for a
/// reuse-port one).
pub(super) fn start_acceptor<S: 'static>(
    group: &Arc<Group>,
    peers: &Peers<S>,
) -> io::Result<Option<JoinHandle<()>>> {
    let Balance::Acceptor(pick) = group.balance else {
        return Ok(None);
    };
    let Some(listener) = lock(&group.first).take() else {
        return Ok(None);
    };
    listener.set_nonblocking(true)?;
    let mut members = lock(&group.members).clone();
    members.sort_unstable();
    let control = peers.control.clone();
    let mut acc = Acceptor {
        group: group.id,
        pick,
        members,
        next: 0,
        handles: peers.handles.clone(),
        control: control.clone(),
    };
    control.acceptors.fetch_add(1, Ordering::AcqRel);
    let addr = group.addr;
    let (made_tx, made_rx) = std::sync::mpsc::channel::<io::Result<LoopHandle<Acceptor<S>>>>();
    let thread = std::thread::Builder::new()
        .name("muxloop-acceptor".to_string())
        .spawn(move || {
            let mut lp = match EventLoop::<Acceptor<S>>::new() {
                Ok(lp) => {
                    let _ = made_tx.send(Ok(lp.handle()));
                    lp
                }
                Err(e) => {
                    let _ = made_tx.send(Err(e));
                    acc.control.acceptors.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
            };
            if let Err(e) = run_acceptor(&mut lp, listener, &mut acc) {
                log::warn!("workers=acceptor addr={addr} error={e}");
            }
            drop(lp);
            acc.control.acceptors.fetch_sub(1, Ordering::AcqRel);
            for h in acc.handles.iter() {
                let _ = h.wake();
            }
        });
    let thread = match thread {
        Ok(t) => t,
        Err(e) => {
            control.acceptors.fetch_sub(1, Ordering::AcqRel);
            return Err(io::Error::new(
                e.kind(),
                format!("workers: cannot start the acceptor of {addr}: {e}"),
            ));
        }
    };
    let made = made_rx.recv().unwrap_or_else(|_| {
        Err(io::Error::other(
            "the acceptor thread ended before its loop was made",
        ))
    });
    match made {
        Ok(handle) => {
            lock(&control.acceptor_wakers).push(Box::new(move || {
                let _ = handle.wake();
            }));
            // A stop asked for before the waker was in place.
            if control.stopping.load(Ordering::Acquire) {
                for wake in lock(&control.acceptor_wakers).iter() {
                    wake();
                }
            }
            Ok(Some(thread))
        }
        Err(e) => {
            let _ = thread.join();
            Err(io::Error::new(
                e.kind(),
                format!("workers: the acceptor of {addr}: event loop: {e}"),
            ))
        }
    }
}

fn run_acceptor<S: 'static>(
    lp: &mut EventLoop<Acceptor<S>>,
    listener: TcpListener,
    acc: &mut Acceptor<S>,
) -> io::Result<()> {
    if acc.members.is_empty() {
        return Ok(());
    }
    let id = lp.add(listener, Interest::READABLE, |_, l, _, acc| {
        acc.accept(l, 64);
        PostAction::Continue
    })?;
    while !acc.control.stopping.load(Ordering::Acquire) {
        lp.run_once(None, acc)?;
    }
    // Stopping: no new handshakes; those under way complete and are
    // handed out as they come, for as long as a closing server waits for
    // them; then every queued connection is handed out (closing the
    // listener would reset them), then the close.
    let refusing = match lp.source(id) {
        Some(l) => crate::sys::refuse_new_connections(l.as_raw_fd()),
        None => Ok(false),
    };
    if let Ok(true) = refusing {
        let grace = *lock(&acc.control.grace);
        let until = std::time::Instant::now() + grace.min(stream::DRAIN_SETTLE);
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
            lp.run_once(Some(left), acc)?;
        }
    } else if let Err(e) = refusing {
        log::debug!("workers=acceptor listener takes connections until it closes: {e}");
    }
    let listener = lp.remove(id)?;
    while acc.accept(&listener, 65_536) {}
    log::debug!("workers=acceptor closed addr={:?}", listener.local_addr());
    Ok(())
}

//! Blocking work off the loop: a bounded pool of threads runs closures
//! the loop must not wait for (a file read, a password hash, a blocking
//! library, `getaddrinfo`), and each result comes back to a callback on
//! the loop (asyncio's `run_in_executor`, libuv's `uv_queue_work`).

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use slab::Slab;

use super::EventLoop;

/// A job as the pool's threads see it.
type Job = Box<dyn FnOnce() + Send>;

/// What a finished job hands back: the work's value, or its panic message.
type Outcome = Result<Box<dyn Any + Send>, String>;

/// The callback waiting for a job, on the loop.
type Done<S> = Box<dyn FnOnce(&mut EventLoop<S>, &mut S, Outcome)>;

struct Queue {
    jobs: VecDeque<Job>,
    /// Threads alive, and of those waiting for a job.
    threads: usize,
    idle: usize,
    /// Jobs submitted whose result has not been taken (or dropped) yet:
    /// waiting, running, or finished with the result on its way to the
    /// loop. What the bound counts, so that a loop that submits without
    /// running cannot pile up results either.
    outstanding: usize,
}

/// One outstanding job's place in its pool: given back when dropped,
/// after the loop ran (or dropped) the job's `done`.
struct Ticket(Arc<Inner>);

impl Drop for Ticket {
    fn drop(&mut self) {
        lock(&self.0.queue).outstanding -= 1;
    }
}

struct Inner {
    queue: Mutex<Queue>,
    ready: Condvar,
    max_threads: usize,
    max_queued: usize,
    name: String,
}

/// A bounded pool of threads for blocking work, shared by every loop
/// given it (`Clone` shares it). Threads start as work comes, up to
/// `threads`, and end after 10 s without work; at most `threads +
/// queued` jobs are outstanding at once (waiting, running, or done with
/// their result not yet taken by the loop), and a job beyond that is
/// refused at once
/// ([`EventLoop::spawn_blocking`] returns `WouldBlock`), so that a burst
/// cannot grow memory without bound.
///
/// A loop without a pool of its own uses [`BlockingPool::shared`].
#[derive(Clone)]
pub struct BlockingPool {
    inner: Arc<Inner>,
}

impl fmt::Debug for BlockingPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = lock(&self.inner.queue);
        f.debug_struct("BlockingPool")
            .field("max_threads", &self.inner.max_threads)
            .field("max_queued", &self.inner.max_queued)
            .field("threads", &q.threads)
            .field("queued", &q.jobs.len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long a pool thread waits for work before it ends.
const IDLE_EXIT: Duration = Duration::from_secs(10);

impl BlockingPool {
    /// A pool of at most `threads` threads (at least 1) and `queued`
    /// waiting jobs.
    pub fn new(threads: usize, queued: usize) -> BlockingPool {
        BlockingPool {
            inner: Arc::new(Inner {
                queue: Mutex::new(Queue {
                    jobs: VecDeque::new(),
                    threads: 0,
                    idle: 0,
                    outstanding: 0,
                }),
                ready: Condvar::new(),
                max_threads: threads.max(1),
                max_queued: queued,
                name: "muxloop-blocking".to_string(),
            }),
        }
    }

    /// The process's shared pool: `MUXLOOP_BLOCKING_THREADS` threads if
    /// set, else as asyncio's default executor, min(32, cores + 4); 10,000
    /// waiting jobs at most.
    pub fn shared() -> BlockingPool {
        static SHARED: OnceLock<BlockingPool> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                let threads = std::env::var("MUXLOOP_BLOCKING_THREADS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or((cores + 4).min(32));
                BlockingPool::new(threads, 10_000)
            })
            .clone()
    }

    /// The most threads it runs.
    pub fn max_threads(&self) -> usize {
        self.inner.max_threads
    }

    /// Jobs waiting for a thread now.
    pub fn queued(&self) -> usize {
        lock(&self.inner.queue).jobs.len()
    }

    /// Threads alive now.
    pub fn threads(&self) -> usize {
        lock(&self.inner.queue).threads
    }

    /// Queues `job`, starting a thread if none is free and the pool may
    /// grow.
    fn submit(&self, job: impl FnOnce(Ticket) -> Job) -> io::Result<()> {
        let mut q = lock(&self.inner.queue);
        if q.outstanding >= self.inner.max_threads + self.inner.max_queued {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "blocking pool full: {} jobs outstanding (at most {} threads and {} waiting), \
                     {} of them waiting",
                    q.outstanding,
                    self.inner.max_threads,
                    self.inner.max_queued,
                    q.jobs.len()
                ),
            ));
        }
        q.outstanding += 1;
        let job = job(Ticket(self.inner.clone()));
        q.jobs.push_back(job);
        if q.idle > q.jobs.len() - 1 {
            drop(q);
            self.inner.ready.notify_one();
            return Ok(());
        }
        if q.threads < self.inner.max_threads {
            q.threads += 1;
            let inner = self.inner.clone();
            let spawned = std::thread::Builder::new()
                .name(self.inner.name.clone())
                .spawn(move || work(&inner));
            if let Err(e) = spawned {
                q.threads -= 1;
                if q.threads == 0 {
                    let job = q.jobs.pop_back();
                    drop(q);
                    drop(job);
                    return Err(io::Error::new(
                        e.kind(),
                        format!("blocking pool: cannot start a thread: {e}"),
                    ));
                }
                log::warn!("blocking pool: cannot start a thread ({e}); the others will run it");
            }
        }
        Ok(())
    }
}

/// A pool thread: runs jobs until none comes for `IDLE_EXIT`.
fn work(inner: &Inner) {
    let mut q = lock(&inner.queue);
    loop {
        if let Some(job) = q.jobs.pop_front() {
            drop(q);
            job();
            q = lock(&inner.queue);
            continue;
        }
        q.idle += 1;
        let (next, timeout) = inner
            .ready
            .wait_timeout(q, IDLE_EXIT)
            .unwrap_or_else(|e| e.into_inner());
        q = next;
        q.idle -= 1;
        if timeout.timed_out() && q.jobs.is_empty() {
            q.threads -= 1;
            return;
        }
    }
}

/// A loop's blocking work: its pool (if set) and the callbacks waiting.
pub(super) struct Pending<S> {
    pool: Option<BlockingPool>,
    waiting: Slab<Done<S>>,
}

impl<S> Pending<S> {
    pub(super) fn new() -> Pending<S> {
        Pending {
            pool: None,
            waiting: Slab::new(),
        }
    }
}

/// The message a panic carried (its `&str` or `String` payload).
pub(crate) fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

impl<S: 'static> EventLoop<S> {
    /// Runs `work` on a thread of the loop's [`BlockingPool`], then
    /// `done` on the loop with its result: `Ok(value)`, or an error (kind
    /// `Other`, "blocking work panicked: …") if `work` panicked. `done`
    /// runs as a deferred call, in loop context, like
    /// [`call_soon`](EventLoop::call_soon)'s; work that finishes after the
    /// loop was dropped is thrown away, its `done` never runs (it was
    /// dropped with the loop).
    ///
    /// # Errors
    ///
    /// `WouldBlock` if the pool's queue is full (nothing was queued: try
    /// again later, or shed the request); the error starting the pool's
    /// first thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use muxloop::EventLoop;
    ///
    /// let mut lp = EventLoop::<u64>::new()?;
    /// lp.spawn_blocking(
    ///     || (1..=20u64).product::<u64>(), // stands for a slow, blocking call
    ///     |lp, total, result| {
    ///         *total = result.unwrap();
    ///         lp.stop();
    ///     },
    /// )?;
    /// let mut total = 0;
    /// lp.run(&mut total)?;
    /// assert_eq!(total, 2_432_902_008_176_640_000);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn spawn_blocking<T, W, D>(&mut self, work: W, done: D) -> io::Result<()>
    where
        T: Send + 'static,
        W: FnOnce() -> T + Send + 'static,
        D: FnOnce(&mut EventLoop<S>, &mut S, io::Result<T>) + 'static,
    {
        let pool = self
            .blocking
            .pool
            .get_or_insert_with(BlockingPool::shared)
            .clone();
        let key = self
            .blocking
            .waiting
            .insert(Box::new(move |lp, state, outcome| {
                let result = match outcome {
                    Ok(value) => Ok(*value.downcast::<T>().expect("the work's own type")),
                    Err(msg) => Err(io::Error::other(format!("blocking work panicked: {msg}"))),
                };
                done(lp, state, result);
            }));
        let handle = self.handle();
        let job = move |ticket: Ticket| -> Job {
            Box::new(move || {
                let outcome: Outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                    .map(|v| Box::new(v) as Box<dyn Any + Send>)
                    .map_err(|p| panic_message(&*p));
                // A loop dropped meanwhile refuses it: the result (and the
                // ticket) are dropped.
                let _ = handle.call_soon(move |lp, state| {
                    lp.finish_blocking(key, outcome, state);
                    drop(ticket);
                });
            })
        };
        if let Err(e) = pool.submit(job) {
            drop(self.blocking.waiting.remove(key));
            return Err(e);
        }
        Ok(())
    }

    fn finish_blocking(&mut self, key: usize, outcome: Outcome, state: &mut S) {
        if let Some(done) = self.blocking.waiting.try_remove(key) {
            done(self, state, outcome);
        }
    }

    /// Runs this loop's blocking work on `pool` from now on (work already
    /// queued stays where it is). Without a call, the loop uses
    /// [`BlockingPool::shared`].
    pub fn set_blocking_pool(&mut self, pool: BlockingPool) {
        self.blocking.pool = Some(pool);
    }

    /// Blocking work of this loop whose `done` has not run yet.
    pub fn blocking_in_flight(&self) -> usize {
        self.blocking.waiting.len()
    }
}

//! The libevent `test/bench.c` methodology on muxloop's `EventLoop`, shared
//! by `examples/bench.rs` and `examples/compare_backends.rs`.
//!
//! `n` socket pairs. Each iteration: re-register a read watcher on every
//! pair (setup: `pause` + `resume`, the equivalent of libevent's
//! `event_del` + `event_add` and libev's `ev_io_stop` + `ev_io_start`, or
//! with [`Rearm::Remove`] `remove` + `add`, which goes through the kernel and
//! boxes a new callback; with timers, also re-arm a 10 s idle timer per
//! watcher),
//! write one byte into `a` evenly spaced pairs, then run the loop without
//! blocking until every byte is read. Each read callback reads its byte and,
//! while the budget of `w` writes lasts, writes one byte into the next pair,
//! so an iteration runs `a + w` callbacks. With timers, every read re-arms
//! the watcher's idle timer (`reset_timer`), as libevent's persistent
//! events with a timeout do.

#![allow(dead_code)] // each including example uses a different part

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use muxloop::{BackendKind, EventLoop, Interest, PostAction, SourceId, TimerId};

/// How the setup phase re-registers each watcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Rearm {
    /// `pause` + `resume`: the source and its callback stay; before the
    /// next wait this needs no system call.
    #[default]
    Pause,
    /// `remove` + `add`: unregistered at once and registered anew (one
    /// `EPOLL_CTL_MOD` on epoll), with a new boxed callback.
    Remove,
}

/// One bench configuration.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub backend: BackendKind,
    pub pairs: usize,
    pub active: usize,
    pub writes: usize,
    pub iterations: usize,
    pub timers: bool,
    pub rearm: Rearm,
}

/// Per-iteration times, in microseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub setup_us: f64,
    pub run_us: f64,
    pub total_us: f64,
}

/// Medians over the measured iterations (the first one is a warm-up).
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub setup_us: f64,
    pub run_us: f64,
    pub total_us: f64,
    pub run_min_us: f64,
    pub ns_per_cb: f64,
    pub setup_ns_per_fd: f64,
    pub iters: usize,
}

struct State {
    writers: Vec<UnixStream>,
    count: usize,
    fired: usize,
    writes: usize,
    timers: Vec<Option<TimerId>>,
}

const IDLE: Duration = Duration::from_secs(10);

/// Raises the soft fd limit to the hard one and checks `fds` fit.
pub fn ensure_fds(fds: usize) -> io::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: raising the soft limit up to the hard one is always allowed.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let limit = lim.rlim_cur as usize;
    if fds > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("this size needs about {fds} fds, but RLIMIT_NOFILE allows {limit}"),
        ));
    }
    Ok(())
}

/// Fds a run of `pairs` pairs needs: both ends, the loop's own, stdio.
pub fn fds_needed(pairs: usize) -> usize {
    2 * pairs + 16
}

/// Reads one byte with read(2), as the C versions do: the callbacks of
/// every library make the same system calls. (std's `UnixStream` goes
/// through recv(2)/send(2) and its own wrappers: ~40 more user-space
/// instructions per callback, `docs/benchmarks.md`.)
fn read_byte(sock: &UnixStream) -> usize {
    let mut ch = 0u8;
    // SAFETY: `ch` is a valid one-byte buffer and the fd is open: `sock`
    // owns it for the duration of the call.
    let n = unsafe { libc::read(sock.as_raw_fd(), (&raw mut ch).cast(), 1) };
    usize::from(n == 1)
}

/// Writes one byte with write(2); see [`read_byte`].
fn write_byte(sock: &UnixStream) -> io::Result<()> {
    // SAFETY: a one-byte static buffer; the fd is open: `sock` owns it.
    let n = unsafe { libc::write(sock.as_raw_fd(), b"e".as_ptr().cast(), 1) };
    if n == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn read_cb(
    i: usize,
) -> impl FnMut(
    &mut EventLoop<State>,
    &mut UnixStream,
    muxloop::SourceEvent<UnixStream>,
    &mut State,
) -> PostAction {
    move |lp, sock, _ev, st| {
        st.count += read_byte(sock);
        if st.writes > 0 {
            let mut widx = i + 1;
            if widx >= st.writers.len() {
                widx -= st.writers.len();
            }
            // A full socket buffer is fine: the byte is just not sent.
            let _ = write_byte(&st.writers[widx]);
            st.writes -= 1;
            st.fired += 1;
        }
        if let Some(t) = st.timers[i] {
            lp.reset_timer(t, IDLE);
        }
        PostAction::Continue
    }
}

/// Runs the bench. `progress` is called after each iteration.
pub fn run(cfg: Config, mut progress: impl FnMut(usize, Sample)) -> io::Result<Summary> {
    if cfg.pairs == 0 || cfg.active == 0 || cfg.active > cfg.pairs || cfg.iterations < 2 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "need pairs >= active >= 1 and at least 2 iterations (the first is a warm-up)",
        ));
    }
    ensure_fds(fds_needed(cfg.pairs))?;
    let mut lp = EventLoop::<State>::with_backend(cfg.backend)?;
    let mut readers = Vec::with_capacity(cfg.pairs);
    let mut writers = Vec::with_capacity(cfg.pairs);
    for _ in 0..cfg.pairs {
        let (r, w) = UnixStream::pair()?;
        r.set_nonblocking(true)?;
        w.set_nonblocking(true)?;
        readers.push(Some(r));
        writers.push(w);
    }
    let mut st = State {
        writers,
        count: 0,
        fired: 0,
        writes: 0,
        timers: vec![None; cfg.pairs],
    };
    let mut ids: Vec<Option<SourceId<UnixStream>>> = vec![None; cfg.pairs];
    let mut samples = Vec::with_capacity(cfg.iterations);
    for iter in 0..cfg.iterations {
        let ta = Instant::now();
        for i in 0..cfg.pairs {
            // event_del + event_set + event_add (libev: ev_io_stop +
            // ev_io_set + ev_io_start): stop watching, start again.
            ids[i] = Some(match ids[i].take() {
                Some(id) if cfg.rearm == Rearm::Pause => {
                    let paused = lp.pause(id)?;
                    lp.resume(paused, Interest::READABLE)?
                }
                Some(id) => {
                    let sock = lp.remove(id)?;
                    lp.add(sock, Interest::READABLE, read_cb(i))?
                }
                None => {
                    let sock = readers[i].take().expect("reader");
                    lp.add(sock, Interest::READABLE, read_cb(i))?
                }
            });
            if cfg.timers {
                let drift = Duration::from_micros((i as u64 * 7919) % 1000);
                match st.timers[i] {
                    Some(t) => {
                        lp.reset_timer(t, IDLE + drift);
                    }
                    None => st.timers[i] = Some(lp.call_later(IDLE + drift, |_, _| {})),
                }
            }
        }
        lp.run_once(Some(Duration::ZERO), &mut st)?;
        st.fired = 0;
        let space = cfg.pairs / cfg.active;
        for k in 0..cfg.active {
            write_byte(&st.writers[k * space])?;
            st.fired += 1;
        }
        st.count = 0;
        st.writes = cfg.writes;
        let ts = Instant::now();
        while st.count != st.fired {
            lp.run_once(Some(Duration::ZERO), &mut st)?;
        }
        let te = Instant::now();
        let sample = Sample {
            setup_us: (ts - ta).as_secs_f64() * 1e6,
            run_us: (te - ts).as_secs_f64() * 1e6,
            total_us: (te - ta).as_secs_f64() * 1e6,
        };
        progress(iter, sample);
        if iter > 0 {
            samples.push(sample);
        }
    }
    Ok(summarize(&cfg, &samples))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn summarize(cfg: &Config, samples: &[Sample]) -> Summary {
    let setup = median(samples.iter().map(|s| s.setup_us).collect());
    let run = median(samples.iter().map(|s| s.run_us).collect());
    let total = median(samples.iter().map(|s| s.total_us).collect());
    let run_min = samples
        .iter()
        .map(|s| s.run_us)
        .fold(f64::INFINITY, f64::min);
    Summary {
        setup_us: setup,
        run_us: run,
        total_us: total,
        run_min_us: run_min,
        ns_per_cb: run * 1000.0 / (cfg.active + cfg.writes) as f64,
        setup_ns_per_fd: setup * 1000.0 / cfg.pairs as f64,
        iters: samples.len(),
    }
}

/// The machine-readable line `examples/bench.rs` prints.
pub fn result_line(cfg: &Config, s: &Summary) -> String {
    let rearm = match cfg.rearm {
        Rearm::Pause => "",
        Rearm::Remove => " rearm=remove",
    };
    format!(
        "RESULT lib=muxloop backend={} n={} a={} w={} t={} setup_us={:.1} run_us={:.1} total_us={:.1} \
         run_min_us={:.1} ns_per_cb={:.1} setup_ns_per_fd={:.1} iters={}{rearm}",
        cfg.backend.name(),
        cfg.pairs,
        cfg.active,
        cfg.writes,
        u8::from(cfg.timers),
        s.setup_us,
        s.run_us,
        s.total_us,
        s.run_min_us,
        s.ns_per_cb,
        s.setup_ns_per_fd,
        s.iters
    )
}

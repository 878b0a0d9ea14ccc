//! The IO models, measured: one echo server per model, under a growing
//! number of connections, each doing 64-byte ping-pong.
//!
//! | model | how the server waits |
//! |---|---|
//! | `threads` | blocking `std::net`, one thread per connection (socketserver's `ThreadingTCPServer`) |
//! | `nonblocking` | one thread, non-blocking sockets, tries every socket in turn and never waits |
//! | `select`, `poll`, `epoll`, `kqueue`, `mio`, `uring` | muxloop's `EventLoop` on that backend (where available) |
//! | `epoll-workers` | one epoll loop per core (`muxloop::workers`, reuse-port listeners), a stream-layer echo on each; its threads are not pinned |
//!
//! Each step runs the server in a process of its own (pinned to CPU 1 when
//! there are two) and `echo_load` in another (CPU 0): N connections doing
//! ping-pong for `--seconds`, every byte verified, then N connections open
//! and silent for `--idle-seconds`. Per model and N: round trips/s, p50/p99
//! latency, the server's CPU under load and idle, its RSS and threads.
//!
//! ```text
//! cargo build --release --examples
//! target/release/examples/io_models --quick
//! target/release/examples/io_models --csv models.csv --svg models.svg
//! ```
//!
//! `--serve MODEL` runs one server (its first line is
//! `listening on ADDR (model NAME)`), which is what the driver spawns.

#[path = "common/cli.rs"]
mod cli;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use clap::Parser;
use muxloop::{BackendKind, EventLoop, Interest, PostAction, SourceEvent};

/// Echo servers, one per IO model, compared under growing connection counts.
#[derive(Parser)]
struct Args {
    /// Models to compare (default: threads, nonblocking and every muxloop
    /// backend of this platform except mio, plus uring).
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Connection counts to sweep.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000,5000")]
    connections: Vec<usize>,
    /// A shorter run: the first, a middle and the last connection count,
    /// one second of load each.
    #[arg(long)]
    quick: bool,
    /// Seconds of ping-pong per step.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Seconds with every connection open and silent, per step.
    #[arg(long, default_value_t = 1.0)]
    idle_seconds: f64,
    /// Rounds: the whole sweep this many times, models interleaved within
    /// each connection count; each row is the round with the median
    /// throughput.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Write the results as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write throughput and memory against connections (SVG).
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Run one server of this model instead of the comparison.
    #[arg(long)]
    serve: Option<String>,
    /// The server's address (with --serve).
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: String,
}

// --- the models ------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Model {
    Threads,
    Nonblocking,
    /// One epoll loop per core (`muxloop::workers`), one port.
    EpollWorkers,
    /// muxloop's event loop on a backend, by name.
    Loop(String),
}

impl FromStr for Model {
    type Err = String;
    fn from_str(s: &str) -> Result<Model, String> {
        match s {
            "threads" => Ok(Model::Threads),
            "nonblocking" => Ok(Model::Nonblocking),
            "epoll-workers" => Ok(Model::EpollWorkers),
            name => Ok(Model::Loop(name.to_string())),
        }
    }
}

impl std::fmt::Display for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Model::Threads => f.write_str("threads"),
            Model::Nonblocking => f.write_str("nonblocking"),
            Model::EpollWorkers => f.write_str("epoll-workers"),
            Model::Loop(name) => f.write_str(name),
        }
    }
}

impl Model {
    /// Why this model cannot run here, if it cannot.
    fn unavailable(&self) -> Option<String> {
        if *self == Model::EpollWorkers {
            return (!BackendKind::Epoll.is_available())
                .then(|| "epoll-workers needs the epoll backend (Linux)".to_string());
        }
        let Model::Loop(name) = self else { return None };
        match name.parse::<BackendKind>() {
            Ok(kind) if kind.is_available() => None,
            Ok(kind) => Some(format!(
                "the {kind} backend is not available on this platform"
            )),
            Err(_) if name == "uring" => Some("no io_uring backend in this build".to_string()),
            Err(e) => Some(e.to_string()),
        }
    }
}

fn default_models() -> Vec<Model> {
    let mut models = vec![Model::Threads, Model::Nonblocking];
    for &kind in BackendKind::available() {
        if kind != BackendKind::Mio {
            models.push(Model::Loop(kind.name().to_string()));
        }
    }
    if !models.contains(&Model::Loop("uring".into())) {
        models.push(Model::Loop("uring".into()));
    }
    if BackendKind::Epoll.is_available() {
        models.push(Model::EpollWorkers);
    }
    models
}

// --- the servers -----------------------------------------------------------

fn serve(model: &Model, addr: &str) -> io::Result<()> {
    if let Some(why) = model.unavailable() {
        return Err(io::Error::new(io::ErrorKind::Unsupported, why));
    }
    if *model == Model::EpollWorkers {
        return serve_workers(addr);
    }
    let listener = TcpListener::bind(addr)?;
    cli::say!("listening on {} (model {model})", listener.local_addr()?);
    io::stdout().flush()?;
    match model {
        Model::EpollWorkers => unreachable!("served above"),
        Model::Threads => serve_threads(listener),
        Model::Nonblocking => serve_nonblocking(listener),
        Model::Loop(name) => serve_loop(listener, name.parse().map_err(io::Error::other)?),
    }
}

/// Running out of fds, as `stream::serve` handles it: a spare fd is given
/// up to accept the pending connection and close it at once (the client
/// sees a close, not a hang), then taken back; without one, accepting
/// pauses. Warnings at most once a second, however often it happens.
struct Shedder {
    spare: Option<std::fs::File>,
    shed: u64,
    last_warning: Option<Instant>,
}

impl Shedder {
    fn new() -> Shedder {
        Shedder {
            spare: std::fs::File::open("/dev/null").ok(),
            shed: 0,
            last_warning: None,
        }
    }

    /// After an accept failed with `e`: whether that was running out of
    /// fds (then handled: the pending connection shed, or none left to
    /// shed with). At the limit accept(2) fails before it looks at the
    /// queue, so the shedding accept waits up to `wait` for a connection
    /// to be pending (zero: it is, the listener was reported readable),
    /// and never blocks longer.
    fn out_of_fds(&mut self, listener: &TcpListener, e: &io::Error, wait: Duration) -> bool {
        if !matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
            return false;
        }
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(listener),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd, as the count says.
        let pending = unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as libc::c_int) } == 1;
        if let Some(spare) = self.spare.take_if(|_| pending) {
            drop(spare);
            // Non-blocking for this one accept: the connection may be gone.
            let blocking = listener.set_nonblocking(true).is_ok();
            if let Ok((conn, _)) = listener.accept() {
                drop(conn);
                self.shed += 1;
            }
            if blocking && wait > Duration::ZERO {
                let _ = listener.set_nonblocking(false);
            }
            self.spare = std::fs::File::open("/dev/null").ok();
        }
        let shed = self.shed;
        self.warn(format_args!(
            "out of fds ({e}): shedding connections, {shed} so far"
        ));
        true
    }

    /// Whether there is a spare fd to shed with (else accepting pauses).
    fn can_shed(&self) -> bool {
        self.spare.is_some()
    }

    fn warn(&mut self, msg: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        if self
            .last_warning
            .is_none_or(|t| now - t >= Duration::from_secs(1))
        {
            self.last_warning = Some(now);
            cli::tell!("{msg}");
        }
    }
}

/// One thread per connection, blocking reads and writes. A connection
/// whose thread cannot be made (threads or memory run out) is refused;
/// the others go on.
fn serve_threads(listener: TcpListener) -> io::Result<()> {
    let mut shedder = Shedder::new();
    let mut refused = 0u64;
    loop {
        let mut conn = match listener.accept() {
            Ok((conn, _)) => conn,
            Err(e) => {
                if shedder.out_of_fds(&listener, &e, Duration::from_millis(100))
                    && !shedder.can_shed()
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
        };
        let _ = conn.set_nodelay(true);
        let spawned = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut buf = [0; 4096];
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    if conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        if let Err(e) = spawned {
            // The connection went with the closure: closed, refused.
            refused += 1;
            shedder.warn(format_args!(
                "cannot start a thread ({e}): connection refused, {refused} so far"
            ));
        }
    }
}

/// One thread, every socket non-blocking, tried in turn; no wait syscall.
fn serve_nonblocking(listener: TcpListener) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    // Each connection with the bytes it still has to echo.
    let mut conns: Vec<(TcpStream, Vec<u8>)> = Vec::new();
    let mut buf = [0; 4096];
    loop {
        while let Ok((conn, _)) = listener.accept() {
            conn.set_nonblocking(true)?;
            let _ = conn.set_nodelay(true);
            conns.push((conn, Vec::new()));
        }
        conns.retain_mut(|(conn, pending)| {
            if !pending.is_empty() {
                match conn.write(pending) {
                    Ok(n) => drop(pending.drain(..n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(_) => return false,
                }
                if !pending.is_empty() {
                    return true;
                }
            }
            match conn.read(&mut buf) {
                Ok(0) => false,
                Ok(n) => match conn.write(&buf[..n]) {
                    Ok(w) => {
                        pending.extend_from_slice(&buf[w..n]);
                        true
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        pending.extend_from_slice(&buf[..n]);
                        true
                    }
                    Err(_) => false,
                },
                Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            }
        });
    }
}

/// One epoll loop per core, one port (reuse-port listeners, the kernel
/// balancing), each an echo on the stream layer. Runs until killed.
fn serve_workers(addr: &str) -> io::Result<()> {
    use muxloop::stream::{Protocol, ServeOptions, Transport};
    use muxloop::workers::{Balance, SharedListener, WorkerOptions, Workers};

    struct Echo;
    impl Protocol<()> for Echo {
        fn data_received(&mut self, t: &mut Transport<'_, ()>, data: &[u8], _: &mut ()) {
            t.write(data);
        }
    }

    let addr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let listener = SharedListener::bind(addr, Balance::Auto)?;
    let local = listener.local_addr();
    // One worker per core this process may use: counted (and the threads
    // started) before the line that has the driver pin the main thread.
    let mut options = WorkerOptions::default();
    options.backend = Some(BackendKind::Epoll);
    let workers = Workers::start(
        options,
        |_| (),
        move |w| {
            w.serve(&listener, ServeOptions::default(), |_, _| {
                Some(Box::new(Echo))
            })?;
            Ok(())
        },
    )?;
    cli::say!("listening on {local} (model {})", Model::EpollWorkers);
    io::stdout().flush()?;
    for outcome in workers.join() {
        outcome.map_err(|e| io::Error::other(e.to_string()))?;
    }
    Ok(())
}

/// muxloop's event loop: a read per readiness event, the echo written at
/// once, what the socket does not take kept until it is writable.
fn serve_loop(listener: TcpListener, kind: BackendKind) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut shedder = Shedder::new();
    let mut lp = EventLoop::<()>::with_backend(kind)?;
    lp.add(
        listener,
        Interest::READABLE,
        move |lp, listener: &mut TcpListener, ev, _| {
            for _ in 0..64 {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let _ = conn
                            .set_nonblocking(true)
                            .and_then(|()| conn.set_nodelay(true));
                        let mut pending = Vec::new();
                        let _ = lp.add(conn, Interest::READABLE, move |lp, conn, ev, _| {
                            echo(lp, conn, ev, &mut pending)
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if shedder.out_of_fds(listener, &e, Duration::ZERO) => {
                        if !shedder.can_shed() {
                            // Nothing to shed with: stop watching the
                            // listener for a while instead of spinning.
                            let id = ev.id();
                            if lp.disable(id).is_ok() {
                                lp.call_later(Duration::from_millis(100), move |lp, _| {
                                    let _ = lp.enable(id, Interest::READABLE);
                                });
                            }
                        }
                        break;
                    }
                    Err(e) => {
                        shedder.warn(format_args!("accept: {e}"));
                        break;
                    }
                }
            }
            PostAction::Continue
        },
    )?;
    lp.run(&mut ())
}

fn echo(
    lp: &mut EventLoop<()>,
    conn: &mut TcpStream,
    ev: SourceEvent<TcpStream>,
    pending: &mut Vec<u8>,
) -> PostAction {
    if !pending.is_empty() {
        match conn.write(pending) {
            Ok(n) => drop(pending.drain(..n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return PostAction::Remove,
        }
        if pending.is_empty() {
            let _ = lp.modify(ev.id(), Interest::READABLE);
        }
        return PostAction::Continue;
    }
    let mut buf = [0; 4096];
    match conn.read(&mut buf) {
        Ok(0) => PostAction::Remove,
        Ok(n) => {
            let written = match conn.write(&buf[..n]) {
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(_) => return PostAction::Remove,
            };
            if written < n {
                pending.extend_from_slice(&buf[written..n]);
                let _ = lp.modify(ev.id(), Interest::WRITABLE);
            }
            PostAction::Continue
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => PostAction::Continue,
        Err(_) => PostAction::Remove,
    }
}

// --- measuring another process ---------------------------------------------

/// CPU time (user + system) of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) in parens.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

/// `VmRSS` (KiB) and `Threads` of `pid`.
fn rss_and_threads(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("Threads:")?))
}

/// Pins `pid` to `cpu`, where the system allows (Linux).
fn pin(pid: u32, cpu: usize) {
    #[cfg(target_os = "linux")]
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity
    // only read and write that set, which lives on the stack.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(
            pid as libc::pid_t,
            std::mem::size_of::<libc::cpu_set_t>(),
            &set,
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (pid, cpu);
}

// --- one step ----------------------------------------------------------------

#[derive(Default, Clone)]
struct Measured {
    round_trips_per_s: f64,
    p50_us: u64,
    p99_us: u64,
    server_cpu_pct: f64,
    idle_cpu_pct: f64,
    server_rss_kib: u64,
    server_threads: u64,
}

struct Row {
    model: Model,
    connections: usize,
    outcome: Result<Measured, String>,
}

/// The server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sibling(name: &str) -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} not found: build the examples (cargo build --release --examples)",
                path.display()
            ),
        ))
    }
}

fn start_server(model: &Model) -> Result<(Server, SocketAddr), String> {
    let mut child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .args(["--serve", &model.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the server: {e}"))?;
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let _ = out.read_line(&mut line);
    let server = Server(child);
    let addr = line
        .strip_prefix("listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok());
    match addr {
        Some(addr) => Ok((server, addr)),
        None => {
            let mut server = server;
            let mut err = String::new();
            if let Some(mut e) = server.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            Err(format!("server did not start: {}", err.trim()))
        }
    }
}

fn run_step(
    model: &Model,
    n: usize,
    args: &Args,
    fd_limit: u64,
    cpus: usize,
) -> Result<Measured, String> {
    if let Some(why) = model.unavailable() {
        return Err(why);
    }
    if n as u64 + 64 > fd_limit {
        return Err(format!(
            "needs {} fds per process, the limit is {fd_limit}",
            n + 64
        ));
    }
    // Off Linux, select(2) watches fds below FD_SETSIZE only (muxloop's
    // select backend refuses higher ones at register).
    if *model == Model::Loop("select".into()) && !cfg!(target_os = "linux") && n + 16 > 1024 {
        return Err("select(2) here watches fds below FD_SETSIZE (1024) only".into());
    }
    let (mut server, addr) = start_server(model)?;
    let spid = server.0.id();
    if cpus >= 2 {
        pin(spid, 1);
    }
    let tps = ticks_per_second();
    let mut load = Command::new(sibling("echo_load").map_err(|e| e.to_string())?)
        .args([
            "--addr",
            &addr.to_string(),
            "--conns",
            &n.to_string(),
            "--size",
            "64",
        ])
        .args(["--duration", &args.seconds.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start echo_load: {e}"))?;
    if cpus >= 2 {
        pin(load.id(), 0);
    }
    let (t0, c0) = (Instant::now(), cpu_ticks(spid).unwrap_or(0));
    let mut m = Measured::default();
    let limit = Duration::from_secs_f64(args.seconds + 60.0);
    loop {
        if let Some((rss, threads)) = rss_and_threads(spid) {
            m.server_rss_kib = m.server_rss_kib.max(rss);
            m.server_threads = m.server_threads.max(threads);
        }
        if load.try_wait().map_err(|e| e.to_string())?.is_some() {
            break;
        }
        if t0.elapsed() > limit {
            let _ = load.kill();
            return Err("echo_load did not finish".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let c1 = cpu_ticks(spid).unwrap_or(0);
    m.server_cpu_pct = 100.0 * (c1.saturating_sub(c0)) as f64 / tps / elapsed;
    let output = load.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result = stdout
        .lines()
        .find(|l| l.starts_with("RESULT load"))
        .ok_or_else(|| {
            format!(
                "echo_load failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )
        })?;
    let fields: HashMap<&str, &str> = result
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let num = |k: &str| {
        fields
            .get(k)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    if num("errors") > 0.0 || !output.status.success() {
        return Err(format!(
            "ECHO MISMATCH: {} errors ({result})",
            num("errors")
        ));
    }
    m.round_trips_per_s = num("rt_per_s");
    m.p50_us = num("p50_us") as u64;
    m.p99_us = num("p99_us") as u64;

    // Idle: every connection open and silent.
    let mut idle = Vec::with_capacity(n);
    for _ in 0..n {
        idle.push(TcpStream::connect(addr).map_err(|e| format!("idle connect: {e}"))?);
    }
    std::thread::sleep(Duration::from_millis(300));
    let (t0, c0) = (Instant::now(), cpu_ticks(spid).unwrap_or(0));
    std::thread::sleep(Duration::from_secs_f64(args.idle_seconds));
    let c1 = cpu_ticks(spid).unwrap_or(0);
    m.idle_cpu_pct = 100.0 * (c1.saturating_sub(c0)) as f64 / tps / t0.elapsed().as_secs_f64();
    if let Some((rss, threads)) = rss_and_threads(spid) {
        m.server_rss_kib = m.server_rss_kib.max(rss);
        m.server_threads = m.server_threads.max(threads);
    }
    drop(idle);
    let _ = server.0.kill();
    Ok(m)
}

/// The run with the median throughput; an error if any run failed (an echo
/// mismatch first).
fn median_run(runs: Vec<Result<Measured, String>>) -> Result<Measured, String> {
    let mut ok = Vec::new();
    let mut failed = None;
    for run in runs {
        match run {
            Ok(m) => ok.push(m),
            Err(why) if why.starts_with("ECHO MISMATCH") => return Err(why),
            Err(why) => failed = Some(why),
        }
    }
    if let Some(why) = failed {
        return Err(why);
    }
    ok.sort_by(|a, b| a.round_trips_per_s.total_cmp(&b.round_trips_per_s));
    ok.get(ok.len() / 2)
        .cloned()
        .ok_or_else(|| "no run".to_string())
}

/// Raises the soft fd limit to the hard one; returns it.
fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit read and write the struct on the stack.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_max != libc::RLIM_INFINITY && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        if lim.rlim_cur == libc::RLIM_INFINITY {
            1 << 20
        } else {
            lim.rlim_cur as u64
        }
    }
}

// --- output ----------------------------------------------------------------

fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:>6} {:>12} {:>8} {:>8} {:>7} {:>8} {:>9} {:>8}",
        "model",
        "conns",
        "round trips/s",
        "p50 µs",
        "p99 µs",
        "CPU %",
        "idle CPU",
        "RSS KiB",
        "threads"
    );
    for r in rows {
        match &r.outcome {
            Ok(m) => {
                let _ = writeln!(
                    out,
                    "{:<12} {:>6} {:>12.0} {:>8} {:>8} {:>7.0} {:>8.1} {:>9} {:>8}",
                    r.model.to_string(),
                    r.connections,
                    m.round_trips_per_s,
                    m.p50_us,
                    m.p99_us,
                    m.server_cpu_pct,
                    m.idle_cpu_pct,
                    m.server_rss_kib,
                    m.server_threads
                );
            }
            Err(why) => {
                let _ = writeln!(
                    out,
                    "{:<12} {:>6}   — {why}",
                    r.model.to_string(),
                    r.connections
                );
            }
        }
    }
    out
}

fn csv(rows: &[Row]) -> String {
    let mut out = String::from(
        "model,connections,round_trips_per_s,p50_us,p99_us,server_cpu_pct,idle_cpu_pct,server_rss_kib,server_threads\n",
    );
    for r in rows {
        match &r.outcome {
            Ok(m) => {
                let _ = writeln!(
                    out,
                    "{},{},{:.0},{},{},{:.1},{:.1},{},{}",
                    r.model,
                    r.connections,
                    m.round_trips_per_s,
                    m.p50_us,
                    m.p99_us,
                    m.server_cpu_pct,
                    m.idle_cpu_pct,
                    m.server_rss_kib,
                    m.server_threads
                );
            }
            // A step that could not run keeps its row, with no numbers.
            Err(_) => {
                let _ = writeln!(out, "{},{},,,,,,,", r.model, r.connections);
            }
        }
    }
    out
}

/// One chart of the SVG: where, its title, its y label, what it plots.
type Panel<'a, 'b> = (
    &'a plotters::drawing::DrawingArea<plotters::prelude::SVGBackend<'b>, plotters::coord::Shift>,
    &'static str,
    &'static str,
    fn(&Measured) -> f64,
);

fn chart(rows: &[Row], models: &[Model], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let ok: Vec<(&Row, &Measured)> = rows
        .iter()
        .filter_map(|r| r.outcome.as_ref().ok().map(|m| (r, m)))
        .collect();
    if ok.is_empty() {
        return Err("no successful steps to chart".into());
    }
    let max_n = ok.iter().map(|(r, _)| r.connections).max().unwrap_or(1) as f64;
    let min_n = ok.iter().map(|(r, _)| r.connections).min().unwrap_or(1) as f64;
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    let panels: [Panel<'_, '_>; 2] = [
        (
            &left,
            "round trips/s vs connections",
            "round trips per second",
            |m| m.round_trips_per_s.max(1.0),
        ),
        (&right, "server RSS vs connections", "RSS (KiB)", |m| {
            (m.server_rss_kib as f64).max(1.0)
        }),
    ];
    for (area, title, ylabel, value) in panels {
        let (lo, hi) = ok.iter().fold((f64::MAX, 0f64), |(lo, hi), (_, m)| {
            (lo.min(value(m)), hi.max(value(m)))
        });
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (min_n * 0.8..max_n * 1.25).log_scale(),
                (lo * 0.8..hi * 1.25).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc("connections")
            .y_desc(ylabel)
            .draw()?;
        for (i, model) in models.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = ok
                .iter()
                .filter(|(r, _)| &r.model == model)
                .map(|(r, m)| (r.connections as f64, value(m)))
                .collect();
            if pts.is_empty() {
                continue;
            }
            let style = ShapeStyle {
                color,
                filled: true,
                stroke_width: 2,
            };
            chart
                .draw_series(LineSeries::new(pts.clone(), style))?
                .label(model.to_string())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, style)))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn main() -> io::Result<()> {
    cli::guard_stdio();
    env_logger::init();
    let args = Args::parse();
    if let Some(model) = &args.serve {
        let model: Model = model.parse().map_err(io::Error::other)?;
        return serve(&model, &args.addr);
    }
    let mut args = args;
    let models: Vec<Model> = if args.models.is_empty() {
        default_models()
    } else {
        args.models
            .iter()
            .map(|m| m.parse().expect("infallible"))
            .collect()
    };
    if args.quick {
        let c = &args.connections;
        if c.len() > 3 {
            args.connections = vec![c[0], c[c.len() / 2], c[c.len() - 1]];
        }
        args.seconds = args.seconds.min(1.0);
    }
    sibling("echo_load")?;
    let fd_limit = raise_fd_limit();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rounds = args.rounds.max(1);
    let steps = models.len() * args.connections.len() * rounds;
    cli::tell!(
        "{} models × {} connection counts × {rounds} round(s), {:.1} s of load + {:.1} s idle per step; \
         server on CPU 1, load on CPU 0{}",
        models.len(),
        args.connections.len(),
        args.seconds,
        args.idle_seconds,
        if cpus >= 2 {
            ""
        } else {
            " (one CPU: not pinned)"
        }
    );
    // Interleaved: every model at one connection count, then the next
    // count, round after round, so that the machine's drift hits all alike.
    let mut runs: Vec<Vec<Result<Measured, String>>> =
        vec![Vec::new(); models.len() * args.connections.len()];
    let start = Instant::now();
    let mut done = 0;
    for round in 0..rounds {
        for (ni, &n) in args.connections.iter().enumerate() {
            for (mi, model) in models.iter().enumerate() {
                let outcome = run_step(model, n, &args, fd_limit, cpus);
                done += 1;
                let note = match &outcome {
                    Ok(m) => format!(
                        "{:.0} round trips/s, server {:.0} % CPU, idle {:.1} %",
                        m.round_trips_per_s, m.server_cpu_pct, m.idle_cpu_pct
                    ),
                    Err(why) => format!("skipped: {why}"),
                };
                cli::tell!(
                    "[{done:>3}/{steps}] {:>6.1?} round {} {model:<12} n={n:<5} {note}",
                    start.elapsed(),
                    round + 1
                );
                runs[mi * args.connections.len() + ni].push(outcome);
            }
        }
    }
    let mut rows = Vec::new();
    for (mi, model) in models.iter().enumerate() {
        for (ni, &n) in args.connections.iter().enumerate() {
            let outcome = median_run(std::mem::take(&mut runs[mi * args.connections.len() + ni]));
            rows.push(Row {
                model: model.clone(),
                connections: n,
                outcome,
            });
        }
    }
    print!("{}", table(&rows));
    if let Some(path) = &args.csv {
        std::fs::write(path, csv(&rows))?;
        cli::tell!("wrote {}", path.display());
    }
    if let Some(path) = &args.svg {
        chart(&rows, &models, path).map_err(|e| io::Error::other(e.to_string()))?;
        cli::tell!("wrote {}", path.display());
    }
    if rows
        .iter()
        .any(|r| matches!(&r.outcome, Err(why) if why.starts_with("ECHO MISMATCH")))
    {
        cli::tell!("io_models: an echo was wrong");
        std::process::exit(1);
    }
    Ok(())
}

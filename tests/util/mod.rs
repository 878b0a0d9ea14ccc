//! Helpers shared by the integration tests: socket pairs, pipes, fd limits,
//! signals, one hookable backend wrapper (count, record, fail).
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use muxloop::{Backend, BackendKind, Events, Interest, Ready, Selector, Token};

/// Instantiates the listed cases of the calling file's `cases` module (each
/// a `fn(BackendKind)`) once per backend, in a module named after it —
/// `select::`, `poll::`, `epoll::`, `uring::`, `kqueue::`, `mio_backend::` —
/// so that `cargo test epoll::` runs one backend. A new backend is one line
/// here, and every suite runs on it. A backend this process cannot use
/// (io_uring blocked, say) skips its cases, saying so.
#[macro_export]
macro_rules! per_backend {
    ($($case:ident),* $(,)?) => {
        $crate::per_backend!(@backend select, muxloop::BackendKind::Select; $($case),*);
        $crate::per_backend!(@backend poll, muxloop::BackendKind::Poll; $($case),*);
        #[cfg(any(target_os = "linux", target_os = "android"))]
        $crate::per_backend!(@backend epoll, muxloop::BackendKind::Epoll; $($case),*);
        #[cfg(all(target_os = "linux", feature = "uring"))]
        $crate::per_backend!(@backend uring, muxloop::BackendKind::Uring; $($case),*);
        // Elsewhere, with the `kqueue-model` feature: the kqueue backend's
        // code on the model of FreeBSD's kevent(2).
        #[cfg(any(
            target_os = "macos",
            target_os = "freebsd",
            target_os = "openbsd",
            target_os = "netbsd",
            target_os = "dragonfly",
            feature = "kqueue-model"
        ))]
        $crate::per_backend!(@backend kqueue, muxloop::BackendKind::Kqueue; $($case),*);
        #[cfg(feature = "mio")]
        $crate::per_backend!(@backend mio_backend, muxloop::BackendKind::Mio; $($case),*);
    };
    (@backend $module:ident, $kind:expr; $($case:ident),*) => {
        mod $module {
            $(
                #[test]
                fn $case() {
                    if !$kind.is_available() {
                        eprintln!("skipped: the {} backend is not available here", $kind);
                        return;
                    }
                    super::cases::$case($kind)
                }
            )*
        }
    };
}

/// Logs to the test harness once per process (`RUST_LOG=trace` to see).
pub fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = env_logger::builder().is_test(true).try_init();
    });
}

/// A selector of `kind` with logging on.
pub fn selector<T>(kind: BackendKind) -> Selector<T> {
    init_logging();
    Selector::with_backend(kind).expect("create selector")
}

/// A connected, non-blocking Unix socket pair.
pub fn pair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (a, b)
}

/// A connected, non-blocking TCP pair on loopback.
pub fn tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = std::net::TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
    let (b, _) = listener.accept().expect("accept");
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (a, b)
}

/// Shutting a stream socket's write side down, for both socket kinds.
pub trait HalfClose {
    fn shut_write(&self);
}

impl HalfClose for UnixStream {
    fn shut_write(&self) {
        self.shutdown(std::net::Shutdown::Write).expect("shutdown");
    }
}

impl HalfClose for std::net::TcpStream {
    fn shut_write(&self) {
        self.shutdown(std::net::Shutdown::Write).expect("shutdown");
    }
}

/// Writes until a non-blocking stream's buffers are full; the byte count.
pub fn fill_any(s: &mut impl Write) -> usize {
    let buf = [0x5a; 65536];
    let mut total = 0;
    loop {
        match s.write(&buf) {
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return total,
            Err(e) => panic!("fill: {e}"),
        }
    }
}

/// A non-blocking pipe: (read end, write end).
pub fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe writes.
    let rc = unsafe { libc::pipe(fds.as_mut_ptr()) };
    assert_eq!(rc, 0, "pipe: {}", io::Error::last_os_error());
    for fd in fds {
        // SAFETY: fcntl on descriptors we just created; no memory involved.
        unsafe {
            libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK);
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// `sock` under the lowest free number at or above `number` (F_DUPFD):
/// `number` itself when it is free, as after closing what had it (unless
/// a test running in parallel took it meanwhile; callers check).
pub fn renumber(sock: UnixStream, number: RawFd) -> UnixStream {
    // SAFETY: F_DUPFD on an open descriptor we own; no memory involved.
    let fd = unsafe { libc::fcntl(sock.as_raw_fd(), libc::F_DUPFD_CLOEXEC, number) };
    assert!(fd >= 0, "F_DUPFD: {}", io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nobody else.
    UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Writes until the socket's buffer is full.
pub fn fill(s: &mut UnixStream) -> usize {
    fill_any(s)
}

/// Reads until the socket would block; returns the byte count.
pub fn drain(s: &mut UnixStream) -> usize {
    let mut buf = [0; 65536];
    let mut total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return total,
            Err(e) => panic!("drain: {e}"),
        }
    }
}

/// One `select`, as `(fd, ready)` pairs sorted by fd.
pub fn ready<T>(sel: &mut Selector<T>, timeout: Option<Duration>) -> Vec<(RawFd, Ready)> {
    let mut events = Events::new();
    sel.select(&mut events, timeout).expect("select");
    let mut out: Vec<_> = events.iter().map(|e| (e.fd(), e.ready())).collect();
    out.sort_by_key(|e| e.0);
    out
}

/// `select(0)`, as [`ready`].
pub fn poll_now<T>(sel: &mut Selector<T>) -> Vec<(RawFd, Ready)> {
    ready(sel, Some(Duration::ZERO))
}

/// The fds of one `select(0)`.
pub fn ready_fds<T>(sel: &mut Selector<T>) -> Vec<RawFd> {
    poll_now(sel).into_iter().map(|e| e.0).collect()
}

/// Raises the soft `RLIMIT_NOFILE` as far as the system allows and
/// returns the soft limit now in force. Never asks for `RLIM_INFINITY`
/// (macOS refuses it, and caps the soft limit at `kern.maxfilesperproc`):
/// it tries the hard limit, then smaller values, keeping the first the
/// kernel accepts.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    let current = lim.rlim_cur as u64;
    let hard = if lim.rlim_max == libc::RLIM_INFINITY {
        1 << 20
    } else {
        lim.rlim_max as u64
    };
    for want in [hard, 1 << 20, 65_536, 24_576, 10_240, 4_096] {
        if want <= current {
            break;
        }
        if want > hard {
            continue;
        }
        let new = libc::rlimit {
            rlim_cur: want as libc::rlim_t,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `new` is a valid rlimit; a refused value changes nothing.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            return want;
        }
    }
    current
}

/// Raises the fd limit and says whether `need` fds fit under it; if not,
/// prints that `what` is skipped and why, for the caller to return.
pub fn fds_fit(need: u64, what: &str) -> bool {
    let limit = raise_fd_limit();
    if limit >= need {
        return true;
    }
    // Straight to stderr, past the test harness's capture: a skip should
    // be seen.
    let _ = writeln!(
        io::stderr(),
        "skipped: {what} needs {need} fds and RLIMIT_NOFILE allows {limit} \
         (raise the hard limit, e.g. `ulimit -Hn`, to run it)"
    );
    false
}

/// This process's resident set size, in KiB (0 where /proc is missing).
pub fn own_rss_kib() -> u64 {
    rss_kib("/proc/self/status")
}

/// The `VmRSS` line of a /proc status file, in KiB (0 if missing).
fn rss_kib(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Another process's resident set size, in KiB (0 where /proc is missing).
pub fn proc_rss_kib(pid: u32) -> u64 {
    rss_kib(&format!("/proc/{pid}/status"))
}

/// A duplicate of `fd` numbered at least `min`.
pub fn dup_at_least(fd: RawFd, min: RawFd) -> OwnedFd {
    // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor and touches no memory.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    assert!(new >= 0, "F_DUPFD: {}", io::Error::last_os_error());
    // SAFETY: `new` was just created and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(new) }
}

/// Makes `target` refer to what `src` refers to (dup2), atomically closing
/// whatever `target` referred to: "closed and reused" in one step, with no
/// window in which another thread could take the number.
pub fn dup_onto(src: &impl AsRawFd, target: RawFd) {
    // SAFETY: dup2 touches no memory; `target` is owned by the caller, who
    // accepts that its old file is closed.
    let rc = unsafe { libc::dup2(src.as_raw_fd(), target) };
    assert_eq!(rc, target, "dup2: {}", io::Error::last_os_error());
}

/// Installs a no-op SIGUSR1 handler *without* `SA_RESTART`, so a blocking
/// wait in the signalled thread returns `EINTR`.
pub fn install_sigusr1_interrupter() {
    extern "C" fn noop(_: libc::c_int) {}
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; we set a handler that does
        // nothing (async-signal-safe) and no SA_RESTART.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = noop as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = 0;
            assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
        }
    });
}

/// The calling thread, for [`interrupt`].
pub fn this_thread() -> libc::pthread_t {
    // SAFETY: no preconditions.
    unsafe { libc::pthread_self() }
}

/// Sends SIGUSR1 to `thread`.
pub fn interrupt(thread: libc::pthread_t) {
    // SAFETY: `thread` is alive: the test joins the interrupting helper
    // before the target thread can finish.
    let rc = unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
    assert_eq!(rc, 0);
}

/// A call from the selector to its backend, as seen by [`Hooks`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Add,
    Modify,
    Delete,
    Wait,
    Purge,
}

impl Call {
    pub fn name(self) -> &'static str {
        match self {
            Call::Add => "add",
            Call::Modify => "modify",
            Call::Delete => "delete",
            Call::Wait => "wait",
            Call::Purge => "purge",
        }
    }
}

/// What a test does around each backend call: count, record, fail it or
/// change its answer. Both default to passing the call through.
pub trait Hooks: Send {
    /// Before the backend is called; an error fails the call without
    /// reaching the backend (the kernel is unchanged).
    fn before(&mut self, _call: Call) -> io::Result<()> {
        Ok(())
    }

    /// After the backend answered `res` (for `Wait`, with `events` as it
    /// filled them); returns the answer the selector gets.
    fn after(
        &mut self,
        _call: Call,
        res: io::Result<()>,
        _events: &mut Vec<(Token, Ready)>,
    ) -> io::Result<()> {
        res
    }
}

/// A backend wrapped in [`Hooks`]: the one test backend every suite uses
/// to count, record or inject faults, forwarding each method once, here.
pub struct Hooked<H> {
    inner: Box<dyn Backend>,
    hooks: H,
    /// The events buffer `after` sees for calls other than `Wait`.
    none: Vec<(Token, Ready)>,
}

impl<H: Hooks> Hooked<H> {
    pub fn new(kind: BackendKind, hooks: H) -> Hooked<H> {
        init_logging();
        Hooked {
            inner: kind.create().expect("create backend"),
            hooks,
            none: Vec::new(),
        }
    }

    fn around(
        &mut self,
        call: Call,
        f: impl FnOnce(&mut dyn Backend) -> io::Result<()>,
    ) -> io::Result<()> {
        self.hooks.before(call)?;
        let res = f(&mut *self.inner);
        self.hooks.after(call, res, &mut self.none)
    }
}

impl<H: Hooks> Backend for Hooked<H> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn add(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        self.around(Call::Add, |b| b.add(fd, token, interest))
    }

    fn modify(&mut self, fd: RawFd, token: Token, old: Interest, new: Interest) -> io::Result<()> {
        self.around(Call::Modify, |b| b.modify(fd, token, old, new))
    }

    fn delete(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        self.around(Call::Delete, |b| b.delete(fd, token, interest))
    }

    fn delete_closing(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        self.around(Call::Delete, |b| b.delete_closing(fd, token, interest))
    }

    fn reports_each_fd_once(&self) -> bool {
        self.inner.reports_each_fd_once()
    }

    fn purge(
        &mut self,
        live: &mut dyn Iterator<Item = (RawFd, Token, Interest)>,
    ) -> io::Result<()> {
        self.around(Call::Purge, |b| b.purge(live))
    }

    fn wait(
        &mut self,
        events: &mut Vec<(Token, Ready)>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        self.hooks.before(Call::Wait)?;
        let res = self.inner.wait(events, timeout);
        self.hooks.after(Call::Wait, res, events)
    }
}

/// Counts the calls that reach the backend.
#[derive(Default)]
pub struct Calls {
    pub add: AtomicUsize,
    pub modify: AtomicUsize,
    pub delete: AtomicUsize,
    pub wait: AtomicUsize,
}

impl Calls {
    pub fn ctl(&self) -> usize {
        self.add.load(Ordering::SeqCst)
            + self.modify.load(Ordering::SeqCst)
            + self.delete.load(Ordering::SeqCst)
    }

    pub fn waits(&self) -> usize {
        self.wait.load(Ordering::SeqCst)
    }
}

impl Hooks for Arc<Calls> {
    fn before(&mut self, call: Call) -> io::Result<()> {
        let counter = match call {
            Call::Add => &self.add,
            Call::Modify => &self.modify,
            Call::Delete => &self.delete,
            Call::Wait => &self.wait,
            Call::Purge => return Ok(()),
        };
        counter.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A selector of `kind` whose backend calls are counted.
pub fn counting_selector<T>(kind: BackendKind) -> (Selector<T>, Arc<Calls>) {
    let calls = Arc::new(Calls::default());
    let backend = Hooked::new(kind, calls.clone());
    (Selector::from_backend(Box::new(backend)), calls)
}

/// A tiny deterministic PRNG (xorshift64*) for test payloads.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// The path of a built example (`cargo test` builds every example; a
/// single `cargo test --test NAME` does not, so a missing or outdated
/// binary is reported instead of silently tested).
pub fn example_path(name: &str) -> std::path::PathBuf {
    let mut dir = std::env::current_exe().expect("current_exe");
    dir.pop(); // the test binary
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join("examples").join(name);
    let hint = "run `cargo test` (which builds the examples) or `cargo build --examples`";
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is missing: {hint}", path.display()));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = vec![root.join("examples").join(format!("{name}.rs"))];
    let mut dirs = vec![root.join("src")];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                sources.push(p);
            }
        }
    }
    for src in sources {
        if let Ok(changed) = std::fs::metadata(&src).and_then(|m| m.modified()) {
            assert!(
                changed <= built,
                "{} is older than {}: {hint}",
                path.display(),
                src.display()
            );
        }
    }
    path
}

/// User + system CPU time of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The CPU a process uses over `window`, in percent of one core.
pub fn cpu_percent_over(pid: u32, window: Duration) -> u64 {
    let before = cpu_ticks(pid);
    std::thread::sleep(window);
    let used = cpu_ticks(pid) - before;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    used * 100_000 / hz / window.as_millis().max(1) as u64
}

/// Makes `cmd` start with `RLIMIT_NOFILE` at `limit` (soft and hard).
pub fn with_fd_limit(cmd: &mut std::process::Command, limit: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls (setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: limit as libc::rlim_t,
                rlim_max: limit as libc::rlim_t,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            Ok(())
        });
    }
}

/// A running example server; killed when dropped.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    pub first_line: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` (an example server), waits for its
/// `listening on ADDR (backend NAME)` line and returns it running.
pub fn start_server(mut cmd: std::process::Command) -> ServerProcess {
    use std::io::BufRead;
    cmd.stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("spawn example");
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout);
    let mut first_line = String::new();
    lines.read_line(&mut first_line).expect("first line");
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while lines.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    let addr = first_line
        .strip_prefix("listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {first_line:?}"));
    ServerProcess {
        child,
        addr,
        first_line,
    }
}

/// Connects `clients` blocking TCP clients to `addr` at once; each sends
/// `rounds` random payloads (1..=max_len bytes) and checks every byte of the
/// echo. Returns the number of bytes verified.
pub fn echo_clients(
    addr: std::net::SocketAddr,
    clients: usize,
    rounds: usize,
    max_len: usize,
) -> usize {
    use std::net::TcpStream;
    let streams: Vec<TcpStream> = (0..clients)
        .map(|_| {
            let s = TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
            s
        })
        .collect();
    let handles: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            std::thread::spawn(move || {
                let mut rng = Rng::new(i as u64 + 1);
                let mut total = 0;
                for _ in 0..rounds {
                    let len = 1 + rng.below(max_len as u64) as usize;
                    let out = rng.bytes(len);
                    s.write_all(&out).expect("send");
                    let mut back = vec![0; len];
                    s.read_exact(&mut back).expect("echo");
                    assert!(back == out, "client {i}: echo differs");
                    total += len;
                }
                total
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("client")).sum()
}

/// Starts `examples/echo_server` on `kind` on a free loopback port, with
/// `extra` arguments; it stops by itself after an hour at the latest (and
/// is killed when the returned process is dropped).
pub fn echo_server(kind: BackendKind, extra: &[&str]) -> ServerProcess {
    let mut cmd = std::process::Command::new(example_path("echo_server"));
    cmd.args([
        "--addr",
        "127.0.0.1:0",
        "--backend",
        kind.name(),
        "--max-seconds",
        "300",
    ])
    .args(extra)
    .env("RUST_LOG", "error");
    start_server(cmd)
}

/// Makes `close` of `sock` send a reset (SO_LINGER with a zero timeout).
pub fn linger_zero(sock: &impl AsRawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a valid linger struct and its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", io::Error::last_os_error());
}

/// The `key=value` fields of the last `RESULT` line a program printed.
pub fn result_fields(stdout: &str) -> std::collections::HashMap<String, String> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("RESULT"))
        .unwrap_or_else(|| panic!("no RESULT line in {stdout:?}"));
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// How many fds this process has open (for leak checks).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The environment variable that turns on the long runs (what CI runs):
/// full fuzz counts, 10,000 connections on every backend, a long soak, a
/// million timers. Without it `cargo test` takes about three minutes.
pub const LONG_TESTS_ENV: &str = "MUXLOOP_LONG_TESTS";

/// Whether `MUXLOOP_LONG_TESTS` asks for the long runs.
pub fn long_tests() -> bool {
    std::env::var(LONG_TESTS_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `quick` or, with `MUXLOOP_LONG_TESTS`, `long`.
pub fn quick_or_long<T>(quick: T, long: T) -> T {
    if long_tests() { long } else { quick }
}

/// A case count from the environment variable `var`, else `quick` (or
/// `long` with `MUXLOOP_LONG_TESTS`).
pub fn env_cases(var: &str, quick: u32, long: u32) -> u32 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| quick_or_long(quick, long))
}

/// A proptest runner for `cases` sequences (see [`env_cases`]), with no
/// failure files, and the lock that keeps one fuzz suite's backends from
/// running at once: they share the process's fd table, and each checks
/// the fd count after every sequence.
pub fn fuzz_runner(
    var: &str,
    quick: u32,
    long: u32,
) -> (
    std::sync::MutexGuard<'static, ()>,
    proptest::test_runner::TestRunner,
) {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    init_logging();
    let runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: env_cases(var, quick, long),
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    });
    (serial, runner)
}

/// Forks; the child runs `f` and exits with its code (101 if it panics).
pub fn fork_child(f: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: the child runs only `f` and then `_exit`s, never returning
    // into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: ends the child at once, without running the parent's
        // atexit handlers or destructors.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// The child's wait status, killing it after `limit`.
pub fn wait_child(pid: libc::pid_t, limit: Duration) -> libc::c_int {
    let start = std::time::Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: `status` is a live c_int.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return status;
        }
        assert_eq!(r, 0, "waitpid: {}", std::io::Error::last_os_error());
        if start.elapsed() > limit {
            // SAFETY: kills the test's own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The exit code of a wait status, if the process exited (not killed).
pub fn exit_code(status: libc::c_int) -> Option<i32> {
    libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status))
}

/// A listener on `addr` that drops every segment it is sent (a socket
/// filter that keeps nothing): connects to it neither succeed nor fail,
/// as to a host that does not answer.
#[cfg(target_os = "linux")]
pub fn unanswering_listener(addr: &str) -> std::net::TcpListener {
    use std::os::fd::AsRawFd;
    let l = std::net::TcpListener::bind(addr).unwrap();
    let mut drop_all = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let prog = libc::sock_fprog {
        len: 1,
        filter: drop_all.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `drop_all`, both live for the call; the
    // kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    l
}

/// Whether `tool` runs here (`tool arg` starts and exits 0); if not, a
/// panic under CI (which installs it: .ci/run), a notice elsewhere.
pub fn have(tool: &str, arg: &str) -> bool {
    let found = std::process::Command::new(tool)
        .arg(arg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is not installed (.ci/run installs it)"
        );
        eprintln!("skipped: {tool} is not installed");
    }
    found
}

//! What the example programs share on their command line and their
//! standard streams: the `--backend` values, and output that a closed or
//! broken stdout or stderr never turns into a panic.
#![allow(dead_code, unused_macros)]

use clap::builder::{PossibleValuesParser, TypedValueParser};
use muxloop::BackendKind;

/// `--backend`: every backend muxloop knows, listed by `--help` (whether
/// this machine has it is checked when the loop is made, naming the
/// cause).
pub fn backend_parser() -> impl TypedValueParser<Value = BackendKind> {
    PossibleValuesParser::new(BackendKind::all().iter().map(|k| k.name())).map(|name| {
        name.parse::<BackendKind>()
            .expect("one of the listed names")
    })
}

/// Makes sure fds 0, 1 and 2 are open (on `/dev/null` if they were
/// closed), before the program opens anything: otherwise its first sockets
/// would get those numbers, and a line printed to "stdout" would go into a
/// socket.
pub fn guard_stdio() {
    for fd in 0..=2 {
        // SAFETY: F_GETFD on any number only asks whether it is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // SAFETY: a constant, NUL-terminated path; the new fd is the
            // lowest free number, `fd` itself, and is kept open for good.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}

/// Raises the soft fd limit to the hard one: a server or a load wants
/// every fd it may have.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit out-pointer; raising soft to hard is allowed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The CPU time (user + system) this process has used, in seconds: how
/// much of a core a load generator itself took.
pub fn own_cpu_seconds() -> f64 {
    // SAFETY: a zeroed rusage is a valid out-parameter for getrusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a live, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// `println!` that ignores a closed or broken stdout (`| head -1`)
/// instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that ignores a closed or broken stderr.
macro_rules! tell {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

#[allow(unused_imports)]
pub(crate) use {say, tell};

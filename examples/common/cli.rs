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

//! Run a child process from the event loop: stream its stdout line by line
//! through the loop, report progress with a timer, kill it if it runs too
//! long, and get its exit status in a callback (the child is reaped: no
//! zombie).
//!
//! ```text
//! cargo run --example subprocess
//! cargo run --example subprocess -- --timeout 1 -- sh -c 'echo start; sleep 5'
//! ```

#[path = "common/cli.rs"]
mod cli;

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use muxloop::{BackendKind, EventLoop, Interest, PostAction};

/// Runs a command and follows it from the event loop.
#[derive(Parser)]
struct Args {
    /// Backend (those this machine lacks are refused, naming the cause).
    #[arg(long, env = "MUXLOOP_BACKEND", default_value_t = BackendKind::platform_default(), value_parser = cli::backend_parser())]
    backend: BackendKind,
    /// Kill the child (SIGKILL) after this many seconds (more than 0, at
    /// most a year).
    #[arg(long, default_value = "10", value_parser = parse_timeout)]
    timeout: Duration,
    /// The command and its arguments (default: a short shell script).
    #[arg(last = true)]
    command: Vec<String>,
}

/// `--timeout`: checked before anything is started.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number of seconds: {e}"))?;
    if !(secs > 0.0 && secs <= 365.0 * 86_400.0) {
        return Err(format!(
            "{s} is out of range: more than 0 and at most a year (31536000) seconds"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Default)]
struct State {
    /// A partial line of output, waiting for its newline.
    partial: Vec<u8>,
    /// How much of `partial` is known to hold no newline.
    scanned: usize,
    lines: usize,
    output_done: bool,
    status: Option<io::Result<ExitStatus>>,
    /// The timer that kills the child if it runs too long.
    kill: Option<muxloop::TimerId>,
}

fn main() -> io::Result<()> {
    cli::guard_stdio();
    env_logger::init();
    let args = Args::parse();
    let command = if args.command.is_empty() {
        let script =
            "for i in 1 2 3 4; do echo \"line $i\"; sleep 0.2; done; echo -n 'no newline'; exit 3";
        vec!["sh".to_string(), "-c".to_string(), script.to_string()]
    } else {
        args.command.clone()
    };
    let mut lp = EventLoop::<State>::with_backend(args.backend)?;
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    set_nonblocking(&stdout)?;
    let pid = child.id();
    cli::say!(
        "started {command:?} as pid {pid} (backend {})",
        lp.backend_name()
    );
    let start = Instant::now();

    lp.add(
        stdout,
        Interest::READABLE,
        |lp, out: &mut ChildStdout, _, st| {
            let mut buf = [0; 64 * 1024];
            match out.read(&mut buf) {
                Ok(n) if n > 0 => {
                    st.partial.extend_from_slice(&buf[..n]);
                    // Only the new bytes are searched, and the lines found
                    // leave the buffer in one drain: linear in the output,
                    // however long a line is.
                    let mut start = 0;
                    let mut from = st.scanned;
                    while let Some(i) = st.partial[from..].iter().position(|&b| b == b'\n') {
                        let end = from + i;
                        cli::say!(
                            "child: {}",
                            String::from_utf8_lossy(&st.partial[start..end])
                        );
                        st.lines += 1;
                        start = end + 1;
                        from = start;
                    }
                    st.partial.drain(..start);
                    st.scanned = st.partial.len();
                    PostAction::Continue
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    PostAction::Continue
                }
                // End of output (or an error): print what is left.
                _ => {
                    if !st.partial.is_empty() {
                        cli::say!(
                            "child: {} (no newline)",
                            String::from_utf8_lossy(&st.partial)
                        );
                        st.lines += 1;
                    }
                    st.output_done = true;
                    maybe_stop(lp, st);
                    PostAction::Remove
                }
            }
        },
    )?;

    lp.add_child(child, |lp, st, res| {
        st.status = Some(res);
        // Reaped: its pid may name another process from now on.
        if let Some(kill) = st.kill.take() {
            lp.cancel(kill);
        }
        maybe_stop(lp, st);
        // A grandchild may keep the pipe open after the child is gone:
        // give the output a moment, not forever.
        lp.call_later(Duration::from_millis(200), |lp, _| lp.stop());
    })?;

    let progress = lp.call_every(Duration::from_millis(500), move |_, st| {
        cli::say!(
            "  … {:.1?} running, {} lines so far",
            start.elapsed(),
            st.lines
        );
        PostAction::Continue
    });
    let kill = lp.call_later(args.timeout, move |lp, _| {
        cli::say!("timeout: killing pid {pid}");
        // SAFETY: kill(2) on our own child, not reaped yet: the status
        // callback, which runs once it is, cancels this timer.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        lp.cancel(progress);
    });
    let mut st = State {
        kill: Some(kill),
        ..State::default()
    };
    lp.run(&mut st)?;
    match st.status.expect("the loop stops once the status is in") {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => cli::say!(
                "exited with status {code} after {:.1?}, {} lines",
                start.elapsed(),
                st.lines
            ),
            (_, Some(sig)) => cli::say!(
                "killed by signal {sig} after {:.1?}, {} lines",
                start.elapsed(),
                st.lines
            ),
            _ => cli::say!("ended: {status}"),
        },
        Err(e) => cli::say!("could not be waited for: {e}"),
    }
    Ok(())
}

/// Stops once both the output is drained and the status is in, whichever
/// comes last (or shortly after the status, see `add_child` above).
fn maybe_stop(lp: &mut EventLoop<State>, st: &State) {
    if st.output_done && st.status.is_some() {
        lp.stop();
    }
}

fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; no memory involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

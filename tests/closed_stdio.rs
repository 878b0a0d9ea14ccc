//! Every example program with its stdout and stderr closed (`>&- 2>&-`):
//! it does its work and ends as it would with them open — a server serves
//! and stops cleanly on SIGTERM, a tool finishes with success —, never a
//! panic (exit 101) because a closed stream, or a socket that took its
//! number, refused a line. And the servers with a broken stdout
//! (`| head -1`).

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use util::example_path;

/// `name` with `args`, stdin from /dev/null, stdout and stderr closed.
fn closed(name: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(example_path(name));
    cmd.args(args).stdin(Stdio::null());
    // SAFETY: only close(2), async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::close(1);
            libc::close(2);
            Ok(())
        });
    }
    cmd
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Connects to the server once it listens (it cannot say when: its stdout
/// is closed).
fn connect_when_up(addr: SocketAddr, child: &mut Child) -> TcpStream {
    let start = Instant::now();
    loop {
        if let Ok(c) = TcpStream::connect(addr) {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            return c;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("exited before listening: {status:?}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never listened on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the end (at most 30 s, then kills it).
fn wait(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("did not end");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(child: &Child) {
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
}

fn echo_once(c: &mut TcpStream) {
    c.write_all(b"hello\n").unwrap();
    let mut back = [0; 6];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello\n");
}

/// Ended by SIGTERM: a clean exit (the servers that handle it) or the
/// signal itself (those that do not), never a panic.
fn assert_clean(name: &str, status: ExitStatus) {
    assert!(
        status.success() || status.signal() == Some(libc::SIGTERM),
        "{name}: {status:?}"
    );
}

/// An echo server of an example at a fixed port: serves, then SIGTERM.
fn echo_server_case(name: &str, args: &[&str]) {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let addr_arg = addr.to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--addr", &addr_arg]);
    let mut child = closed(name, &all).spawn().unwrap();
    for _ in 0..3 {
        let mut c = connect_when_up(addr, &mut child);
        echo_once(&mut c);
        echo_once(&mut c);
    }
    sigterm(&child);
    assert_clean(name, wait(&mut child));
}

#[test]
fn echo_servers_serve_and_stop_cleanly() {
    echo_server_case("echo_server", &[]);
    echo_server_case("selectors_echo", &[]);
    echo_server_case("io_models", &["--serve", "epoll"]);
    echo_server_case("io_models", &["--serve", "threads"]);
    echo_server_case("peer_mio_echo", &[]);
    echo_server_case("peer_tokio_echo", &[]);
}

#[test]
fn chat_relays_and_stops_cleanly_and_its_client_ends_at_eof() {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = closed("chat", &["--addr", &addr.to_string()])
        .spawn()
        .unwrap();
    let a = connect_when_up(addr, &mut child);
    let mut b = BufReader::new(TcpStream::connect(addr).unwrap());
    b.get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Until b is in the room a line may reach nobody.
    let mut line = String::new();
    for _ in 0..50 {
        (&a).write_all(b"hi\n").unwrap();
        b.get_ref()
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        if b.read_line(&mut line).is_ok() {
            break;
        }
    }
    assert_eq!(line, "hi\n");
    // The client: stdin at EOF at once, so it joins, leaves and exits.
    let status = closed("chat_client", &["--addr", &addr.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "chat_client: {status:?}");
    sigterm(&child);
    assert_clean("chat", wait(&mut child));
}

#[test]
fn multi_port_serves_and_stops_cleanly() {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = closed("multi_port", &["--ports", &port.to_string()])
        .spawn()
        .unwrap();
    let mut c = connect_when_up(addr, &mut child);
    c.write_all(b"hi").unwrap();
    let mut back = [0; 2];
    c.read_exact(&mut back).unwrap();
    sigterm(&child);
    assert_clean("multi_port", wait(&mut child));
}

#[test]
fn embedded_loops_serve_and_finish() {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = closed(
        "embed_poll",
        &["--addr", &addr.to_string(), "--seconds", "2"],
    )
    .spawn()
    .unwrap();
    let mut c = connect_when_up(addr, &mut child);
    echo_once(&mut c);
    assert!(wait(&mut child).success(), "embed_poll");
    let status = closed("embed_tokio", &["--clients", "4", "--messages", "20"])
        .status()
        .unwrap();
    assert!(status.success(), "embed_tokio: {status:?}");
}

#[test]
fn tools_finish_with_success() {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut server = closed("echo_server", &["--addr", &addr.to_string()])
        .spawn()
        .unwrap();
    drop(connect_when_up(addr, &mut server));
    let load = ["--addr", &addr.to_string(), "--conns", "4", "--count", "20"];
    let runs: [(&str, &[&str]); 5] = [
        ("timers", &[]),
        ("subprocess", &[]),
        ("bench", &["-n", "20", "-i", "3"]),
        (
            "compare_backends",
            &["--pairs", "10", "--active", "1", "--iterations", "2"],
        ),
        ("echo_load", &load),
    ];
    for (name, args) in runs {
        let status = closed(name, args).status().unwrap();
        assert!(status.success(), "{name}: {status:?}");
    }
    sigterm(&server);
    assert_clean("echo_server", wait(&mut server));
}

/// The servers with a stdout nobody reads any more (`| head -1`): they
/// go on serving and stop cleanly.
#[test]
fn servers_survive_a_broken_stdout() {
    for (name, args) in [
        ("echo_server", &["--addr", "127.0.0.1:0"][..]),
        ("chat", &["--addr", "127.0.0.1:0"][..]),
        (
            "embed_poll",
            &["--addr", "127.0.0.1:0", "--seconds", "3"][..],
        ),
    ] {
        let mut child = Command::new(example_path(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        drop(out);
        let addr: SocketAddr = line
            .strip_prefix("listening on ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{name}: {line:?}"));
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        if name == "chat" {
            c.write_all(b"nobody hears this\n").unwrap();
        } else if name == "multi_port" {
            c.write_all(b"hi").unwrap();
            let mut back = [0; 2];
            c.read_exact(&mut back).unwrap();
        } else {
            echo_once(&mut c);
        }
        if name == "embed_poll" {
            assert!(wait(&mut child).success(), "{name}");
        } else {
            sigterm(&child);
            assert_clean(name, wait(&mut child));
        }
    }
}

/// `embed_tokio` with more clients than fds (`ulimit -n 256`, 500
/// clients in the same process): the server sheds, the clients back off
/// and try again, and every client is served in the end.
#[test]
fn embed_tokio_goes_on_when_out_of_fds() {
    let mut cmd = Command::new(example_path("embed_tokio"));
    cmd.args(["--clients", "500", "--messages", "5"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    util::with_fd_limit(&mut cmd, 256);
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{:?}: {text}", out.status);
    assert!(
        text.contains("500 tokio clients: 82500 bytes echoed"),
        "{text}"
    );
}

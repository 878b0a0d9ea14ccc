//! The example servers with `--workers`: `echo_server` (1,000 connections,
//! every byte checked, both workers serving, in each balancing mode),
//! `http_hello`, and `chat` relaying lines between clients of different
//! workers; after SIGTERM each prints `worker K: N connections`.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use util::*;

/// An example with `--workers 2`: the child, its address, and its stdout
/// lines as they come.
struct Running {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(name: &str, args: &[&str]) -> Running {
    let mut child = Command::new(example_path(name))
        .args(["--addr", "127.0.0.1:0", "--workers", "2"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let out = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let first = lines.recv_timeout(Duration::from_secs(20)).unwrap();
    let addr = first
        .strip_prefix("listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("first line {first:?}"));
    assert!(
        first.ends_with(')') && first.contains("(backend "),
        "{first:?}"
    );
    let second = lines.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(second.starts_with("2 workers, "), "{second:?}");
    Running { child, addr, lines }
}

/// SIGTERM, then the `worker K: N connections` lines (and the exit).
fn stop(mut r: Running) -> Vec<u64> {
    // SAFETY: kill has no memory preconditions; the pid is our child's.
    unsafe { libc::kill(r.child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut per_worker = Vec::new();
    while per_worker.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = r.lines.recv_timeout(left).expect("worker lines");
        if let Some(rest) = line.strip_prefix("worker ") {
            let (k, n) = rest.split_once(": ").unwrap();
            assert_eq!(k.parse::<usize>().unwrap(), per_worker.len(), "{line}");
            let n = n.strip_suffix(" connections").unwrap();
            per_worker.push(n.parse().unwrap());
        }
    }
    let status = r.child.wait().unwrap();
    assert!(status.success(), "{status}");
    per_worker
}

#[test]
fn echo_server_on_two_workers_serves_a_thousand_connections_in_every_mode() {
    if !fds_fit(2400, "1,000 connections") {
        return;
    }
    for balance in ["auto", "acceptor", "least"] {
        let r = start("echo_server", &["--balance", balance]);
        let bytes = echo_clients(r.addr, 1000, 3, 500);
        assert!(bytes > 3000, "{balance}: {bytes}");
        let served = stop(r);
        assert_eq!(served.iter().sum::<u64>(), 1000, "{balance}: {served:?}");
        assert!(
            served.iter().all(|&n| n >= 250),
            "{balance}: both workers serve: {served:?}"
        );
    }
}

#[test]
fn http_hello_on_two_workers_answers_keep_alive_requests() {
    let r = start("http_hello", &[]);
    let third = r.lines.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(third.starts_with("try: curl http://"), "{third:?}");
    let mut conns: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(r.addr).unwrap())
        .collect();
    for round in 0..3 {
        for c in conns.iter_mut() {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut buf = Vec::new();
            let mut byte = [0u8; 1];
            while !buf.ends_with(b"hello world\n") {
                c.read_exact(&mut byte).unwrap();
                buf.push(byte[0]);
            }
            assert!(buf.starts_with(b"HTTP/1.1 200 OK\r\n"), "round {round}");
        }
    }
    drop(conns);
    let served = stop(r);
    assert_eq!(served.iter().sum::<u64>(), 20, "{served:?}");
}

#[test]
fn chat_on_two_workers_relays_lines_between_them() {
    // Round robin: the clients alternate between the two workers.
    let r = start("chat", &["--balance", "acceptor"]);
    let mut clients: Vec<BufReader<TcpStream>> = (0..4)
        .map(|_| {
            let c = TcpStream::connect(r.addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            BufReader::new(c)
        })
        .collect();
    // Until every client is a member (on its worker), client 0's lines
    // reach only some: it says "sync" until all have heard one, then "go",
    // which all hear.
    let mut heard = [true, false, false, false];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !heard.iter().all(|&h| h) {
        assert!(Instant::now() < deadline, "not all members: {heard:?}");
        clients[0].get_mut().write_all(b"sync\n").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        for (i, c) in clients.iter_mut().enumerate().skip(1) {
            c.get_mut().set_nonblocking(true).unwrap();
            let mut got = String::new();
            if c.read_line(&mut got).is_ok() && got == "sync\n" {
                heard[i] = true;
            }
            c.get_mut().set_nonblocking(false).unwrap();
        }
    }
    clients[0].get_mut().write_all(b"go\n").unwrap();
    for c in clients.iter_mut().skip(1) {
        let mut got = String::new();
        while got != "go\n" {
            got.clear();
            c.read_line(&mut got).unwrap();
            assert!(got == "go\n" || got == "sync\n", "{got:?}");
        }
    }
    for from in 0..4 {
        let line = format!("hello from {from}\n");
        clients[from].get_mut().write_all(line.as_bytes()).unwrap();
        for (i, c) in clients.iter_mut().enumerate() {
            if i == from {
                continue;
            }
            let mut got = String::new();
            c.read_line(&mut got).unwrap();
            assert_eq!(got, line, "client {i}");
        }
    }
    drop(clients);
    let served = stop(r);
    assert_eq!(served, vec![2, 2], "round robin over two workers");
}

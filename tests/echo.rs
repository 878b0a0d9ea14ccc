//! End-to-end tests of `examples/echo_server.rs` with real sockets on
//! loopback: many clients on every backend, backpressure, half-closes,
//! resets, running out of fds.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use muxloop::BackendKind;
use util::*;

fn connect(server: &ServerProcess) -> TcpStream {
    let s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    s.write_all(msg)?;
    let mut back = vec![0; msg.len()];
    s.read_exact(&mut back)?;
    assert_eq!(back, msg);
    Ok(())
}

/// Field `name` (in kB) of /proc/PID/status.
fn proc_status_kb(pid: u32, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn pattern(i: usize) -> u8 {
    (i * 7 % 251) as u8
}

#[test]
fn two_hundred_clients_with_random_payloads_on_every_backend() {
    for &kind in BackendKind::available() {
        let server = echo_server(kind, &[]);
        assert!(
            server
                .first_line
                .contains(&format!("(backend {})", kind.name()))
        );
        let t = Instant::now();
        let bytes = echo_clients(server.addr, 200, 10, 20_000);
        eprintln!("{kind}: {bytes} bytes verified in {:?}", t.elapsed());
        assert!(bytes > 200 * 10);
    }
}

#[test]
fn a_client_that_never_reads_does_not_grow_server_memory() {
    let server = echo_server(BackendKind::platform_default(), &[]);
    let pid = server.child.id();
    let rss_before = proc_status_kb(pid, "VmRSS:");
    const TOTAL: usize = 100 * 1000 * 1000;
    let mut writer = connect(&server);
    let mut reader = writer.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let chunk: Vec<u8> = (0..TOTAL).map(pattern).collect();
        writer.write_all(&chunk).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    // Let the sender fill every buffer on the way.
    std::thread::sleep(Duration::from_millis(1500));
    let rss_stalled = proc_status_kb(pid, "VmRSS:");
    assert!(
        rss_stalled < rss_before + 16 * 1024,
        "server grew from {rss_before} kB to {rss_stalled} kB while the client did not read"
    );
    // Now read it all back, in order.
    let mut got = 0usize;
    let mut buf = vec![0; 256 * 1024];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for (k, b) in buf[..n].iter().enumerate() {
            assert_eq!(*b, pattern(got + k), "byte {} out of order", got + k);
        }
        got += n;
    }
    sender.join().unwrap();
    assert_eq!(got, TOTAL);
}

#[test]
fn half_closed_client_gets_everything_back_then_eof() {
    for kind in [BackendKind::Poll, BackendKind::platform_default()] {
        let server = echo_server(kind, &[]);
        let mut c = connect(&server);
        let data: Vec<u8> = (0..300_000).map(pattern).collect();
        c.write_all(&data).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        assert!(
            back == data,
            "{kind}: {} of {} bytes back",
            back.len(),
            data.len()
        );
    }
}

#[test]
fn resets_and_vanishing_clients_do_not_disturb_the_others() {
    for kind in [BackendKind::Select, BackendKind::platform_default()] {
        let server = echo_server(kind, &[]);
        let mut steady = connect(&server);
        round_trip(&mut steady, b"before").unwrap();
        for _ in 0..20 {
            // Reset: linger 0, then close with data in flight.
            let c = connect(&server);
            linger_zero(&c);
            (&c).write_all(&[1; 5000]).unwrap();
            drop(c);
            // Vanishing mid-write: sends a lot, leaves without reading.
            let mut v = connect(&server);
            v.write_all(&vec![2; 2 * 1024 * 1024]).ok();
            drop(v);
            // A slow client, one byte at a time.
            let mut slow = connect(&server);
            for b in b"slow" {
                round_trip(&mut slow, &[*b]).unwrap();
            }
        }
        round_trip(&mut steady, b"after the storm").unwrap();
        // An accept storm.
        // 1,000 connections, or what the fd limit leaves room for.
        let storm_size = raise_fd_limit().saturating_sub(200).min(1000);
        let storm: Vec<TcpStream> = (0..storm_size).map(|_| connect(&server)).collect();
        round_trip(&mut steady, b"after the accept storm").unwrap();
        for mut c in storm.into_iter().step_by(25) {
            round_trip(&mut c, b"me too").unwrap();
        }
    }
}

#[test]
fn out_of_fds_sheds_connections_without_spinning_and_recovers() {
    let mut cmd = Command::new(example_path("echo_server"));
    cmd.args(["--addr", "127.0.0.1:0", "--max-seconds", "120"])
        .env("RUST_LOG", "error");
    with_fd_limit(&mut cmd, 48);
    let server = start_server(cmd);
    let pid = server.child.id();
    // More clients than the server has fds for.
    let mut clients = Vec::new();
    let mut shed = 0;
    for i in 0..80u32 {
        let mut c = connect(&server);
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        match round_trip(&mut c, &i.to_be_bytes()) {
            Ok(()) => clients.push(c),
            Err(_) => shed += 1,
        }
    }
    assert!(shed > 0, "the fd limit was never reached");
    assert!(clients.len() >= 30, "only {} clients served", clients.len());
    // Keep connecting while out of fds and check the server is not spinning.
    let extra: Vec<TcpStream> = (0..20).map(|_| connect(&server)).collect();
    let cpu = cpu_percent_over(pid, Duration::from_secs(1));
    eprintln!("out of fds: server CPU {cpu} %");
    assert!(cpu < 5, "server burned {cpu} % CPU out of fds");
    drop(extra);
    // Connected clients keep echoing.
    for c in clients.iter_mut().take(10) {
        round_trip(c, b"still served").unwrap();
    }
    // Free some fds: accepting resumes.
    clients.truncate(clients.len() - 10);
    std::thread::sleep(Duration::from_millis(300));
    let mut fresh = connect(&server);
    round_trip(&mut fresh, b"accepting again").unwrap();
}

#[test]
fn zero_watermarks_pause_and_resume_without_closing_healthy_connections() {
    for marks in [["--low-water", "0"], ["--high-water", "0"]] {
        let server = echo_server(BackendKind::platform_default(), &marks);
        let mut writer = connect(&server);
        let mut reader = writer.try_clone().unwrap();
        const TOTAL: usize = 8 * 1024 * 1024;
        // Written before anything is read back: the server's backlog goes
        // past the high-water mark and reading pauses, then resumes.
        let sender = std::thread::spawn(move || {
            let data: Vec<u8> = (0..TOTAL).map(pattern).collect();
            writer.write_all(&data).unwrap();
            writer
        });
        std::thread::sleep(Duration::from_millis(300));
        let mut got = 0;
        let mut buf = vec![0; 64 * 1024];
        while got < TOTAL {
            let n = reader.read(&mut buf).unwrap();
            assert!(n > 0, "{marks:?}: closed after {got} of {TOTAL} bytes");
            for (k, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, pattern(got + k), "{marks:?}: byte {}", got + k);
            }
            got += n;
        }
        let mut writer = sender.join().unwrap();
        round_trip(&mut writer, b"still open").unwrap();
    }
}

#[test]
fn sigterm_stops_the_server_gracefully() {
    let server = echo_server(BackendKind::platform_default(), &[]);
    let mut c = connect(&server);
    round_trip(&mut c, b"hi").unwrap();
    let mut server = server;
    // SAFETY: kill(2) with a pid we spawned.
    assert_eq!(
        unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) },
        0
    );
    let t = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

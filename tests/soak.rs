//! A bounded soak: the echo server under a mix of everything — ping-pong
//! clients, resets, half-closes, clients that send and vanish without
//! reading, accept storms — for `MUXLOOP_SOAK_SECS` seconds (45 by
//! default). Its open fds and resident memory must stay flat, and every
//! echoed byte must be right.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use util::*;

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// One round of abuse; returns the bytes verified.
fn round(addr: std::net::SocketAddr, seed: u64) -> usize {
    let mut verified = echo_clients(addr, 40, 10, 4000);
    for _ in 0..20 {
        // Reset with data in flight.
        let c = connect(addr);
        linger_zero(&c);
        let _ = (&c).write_all(&[7; 3000]);
    }
    for k in 0..10 {
        // Half-close: everything comes back, then EOF.
        let mut c = connect(addr);
        let mut rng = Rng::new(seed * 100 + k);
        let len = 10_000 + rng.below(20_000) as usize;
        let data = rng.bytes(len);
        c.write_all(&data).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        assert!(back == data, "half-close echo differs");
        verified += back.len();
    }
    // Sends 2 MB, never reads, vanishes.
    let mut v = connect(addr);
    v.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let _ = v.write_all(&vec![1; 2_000_000]);
    drop(v);
    // Accept storm.
    let storm: Vec<TcpStream> = (0..300).map(|_| connect(addr)).collect();
    drop(storm);
    verified
}

#[test]
fn soak_keeps_fds_and_memory_flat() {
    let secs = u64::from(env_cases("MUXLOOP_SOAK_SECS", 10, 45));
    let server = echo_server(muxloop::BackendKind::platform_default(), &[]);
    let pid = server.child.id();
    // Warm up, then take the baseline.
    let mut verified = round(server.addr, 0);
    std::thread::sleep(Duration::from_millis(500));
    let (fds0, rss0) = (fd_count(pid), rss_kb(pid));
    let start = Instant::now();
    let mut rounds = 1;
    while start.elapsed() < Duration::from_secs(secs) {
        verified += round(server.addr, rounds);
        rounds += 1;
    }
    // Let the server notice the last closes.
    let settle = Instant::now();
    while fd_count(pid) > fds0 && settle.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (fds1, rss1) = (fd_count(pid), rss_kb(pid));
    eprintln!(
        "soak: {rounds} rounds in {:.0?}, {verified} bytes verified; fds {fds0} -> {fds1}, RSS {rss0} kB -> {rss1} kB",
        start.elapsed()
    );
    assert_eq!(fds1, fds0, "server fds leaked");
    assert!(
        rss1 < rss0 + 16 * 1024,
        "server RSS grew from {rss0} kB to {rss1} kB"
    );
}

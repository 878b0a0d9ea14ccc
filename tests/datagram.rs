//! Datagram endpoints (`stream::datagram`) on every backend: echo of
//! empty, small and 65,507-byte datagrams from many clients, truncation
//! reported, ICMP errors on a connected endpoint, a flood the kernel
//! drops while muxloop stays bounded, closing; Unix-domain datagram
//! endpoints (bound, unbound and abstract senders, connected).

#[macro_use]
mod util;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use muxloop::stream::Addr;
use muxloop::stream::datagram::{
    self, DatagramOptions, DatagramProtocol, DatagramTransport, MAX_UDP_PAYLOAD,
};
use muxloop::{BackendKind, EventLoop};
use util::*;

#[derive(Default)]
struct Log {
    made: bool,
    received: usize,
    bytes: usize,
    errors: Vec<io::ErrorKind>,
    lost: Option<Option<io::ErrorKind>>,
    failures: Vec<String>,
}

struct Echo {
    echo: bool,
}

impl DatagramProtocol<Log> for Echo {
    fn connection_made(&mut self, _: &mut DatagramTransport<'_, Log>, log: &mut Log) {
        log.made = true;
    }
    fn datagram_received(
        &mut self,
        t: &mut DatagramTransport<'_, Log>,
        data: &[u8],
        from: Addr,
        log: &mut Log,
    ) {
        log.received += 1;
        log.bytes += data.len();
        if self.echo {
            t.send_to(data, from).unwrap();
        }
    }
    fn error_received(&mut self, _: &mut DatagramTransport<'_, Log>, e: io::Error, log: &mut Log) {
        log.errors.push(e.kind());
    }
    fn connection_lost(&mut self, e: Option<io::Error>, log: &mut Log) {
        log.lost = Some(e.map(|e| e.kind()));
    }
}

fn open(lp: &mut EventLoop<Log>, options: DatagramOptions, echo: bool) -> SocketAddr {
    let id = datagram::open(lp, "127.0.0.1:0".parse().unwrap(), options, Echo { echo }).unwrap();
    datagram::local_addr(lp, id).unwrap().as_inet().unwrap()
}

fn run_until(lp: &mut EventLoop<Log>, log: &mut Log, mut done: impl FnMut(&Log) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(log) {
        assert!(Instant::now() < deadline, "timed out");
        lp.run_once(Some(Duration::from_millis(20)), log).unwrap();
    }
}

fn client() -> UdpSocket {
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

mod cases {
    pub use super::clients::*;
    use super::*;

    pub fn echoes_empty_small_and_largest_datagrams(kind: BackendKind) {
        init_logging();
        let mut lp = EventLoop::with_backend(kind).unwrap();
        let addr = open(&mut lp, DatagramOptions::default(), true);
        let mut log = Log::default();
        let c = client();
        let sizes = [0usize, 1, 64, 1400, 9000, MAX_UDP_PAYLOAD];
        for (i, &n) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..n).map(|j| (i * 31 + j * 7) as u8).collect();
            c.send_to(&data, addr).unwrap();
            run_until(&mut lp, &mut log, |l| l.received == i + 1);
            let mut buf = vec![0u8; 70_000];
            let (len, from) = c.recv_from(&mut buf).unwrap();
            assert_eq!(from, addr);
            assert_eq!(&buf[..len], &data[..], "{kind}: {n} bytes");
        }
        assert!(log.made && log.errors.is_empty(), "{:?}", log.errors);
    }

    pub fn serves_many_clients_at_once(kind: BackendKind) {
        init_logging();
        let mut lp = EventLoop::with_backend(kind).unwrap();
        let addr = open(&mut lp, DatagramOptions::default(), true);
        let clients: Vec<UdpSocket> = (0..10).map(|_| client()).collect();
        let mut log = Log::default();
        for round in 0..20u8 {
            for (i, c) in clients.iter().enumerate() {
                c.send_to(&[i as u8, round], addr).unwrap();
            }
            run_until(&mut lp, &mut log, |l| {
                l.received == (round as usize + 1) * 10
            });
            for (i, c) in clients.iter().enumerate() {
                let mut buf = [0u8; 8];
                let (len, _) = c.recv_from(&mut buf).unwrap();
                assert_eq!(&buf[..len], &[i as u8, round], "{kind}");
            }
        }
    }

    pub fn a_datagram_longer_than_the_buffer_is_reported_not_cut(kind: BackendKind) {
        init_logging();
        let mut lp = EventLoop::with_backend(kind).unwrap();
        let mut options = DatagramOptions::default();
        options.max_datagram = 100;
        let addr = open(&mut lp, options, false);
        let c = client();
        c.send_to(&[7u8; 200], addr).unwrap();
        c.send_to(&[8u8; 50], addr).unwrap();
        let mut log = Log::default();
        run_until(&mut lp, &mut log, |l| l.received == 1);
        assert_eq!(log.errors, vec![io::ErrorKind::InvalidData], "{kind}");
        assert_eq!(log.bytes, 50);
    }

    pub fn icmp_errors_reach_a_connected_endpoint(kind: BackendKind) {
        init_logging();
        let mut lp = EventLoop::with_backend(kind).unwrap();
        // Nothing listens there any more.
        let closed = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut options = DatagramOptions::default();
        options.connect = Some(closed);
        let id = datagram::open(
            &mut lp,
            "127.0.0.1:0".parse().unwrap(),
            options,
            Echo { echo: false },
        )
        .unwrap();
        let mut log = Log::default();
        run_until(&mut lp, &mut log, |l| l.made);
        let mut sent = 0;
        while log.errors.is_empty() && sent < 50 {
            match datagram::send_to(&mut lp, id, b"anyone?", None) {
                Ok(()) => {}
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
                    log.errors.push(e.kind());
                }
            }
            sent += 1;
            lp.run_once(Some(Duration::from_millis(20)), &mut log)
                .unwrap();
        }
        assert_eq!(log.errors[0], io::ErrorKind::ConnectionRefused, "{kind}");
        assert!(log.lost.is_none(), "the endpoint goes on");
    }

    pub fn a_flood_is_dropped_by_the_kernel_and_memory_stays_bounded(kind: BackendKind) {
        init_logging();
        let mut lp = EventLoop::with_backend(kind).unwrap();
        let addr = open(&mut lp, DatagramOptions::default(), false);
        let c = client();
        let before = own_rss_kib();
        // Far more than the socket buffer holds, sent while the loop
        // does not run.
        let sent = 50_000;
        for i in 0..sent {
            let _ = c.send_to(&[(i % 251) as u8; 512], addr);
        }
        let mut log = Log::default();
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            lp.run_once(Some(Duration::from_millis(20)), &mut log)
                .unwrap();
        }
        assert!(
            log.received > 0 && log.received < sent,
            "{kind}: {}",
            log.received
        );
        // The process's RSS (other tests run beside this one): a loose
        // check that the flood left nothing per datagram behind (25 MB
        // were sent; the endpoint reads into one fixed batch buffer).
        let grown = own_rss_kib().saturating_sub(before);
        assert!(grown < 256 * 1024, "{kind}: RSS grew {grown} KiB");
        // And the endpoint still answers.
        let n = log.received;
        c.send_to(b"after", addr).unwrap();
        run_until(&mut lp, &mut log, |l| l.received > n);
    }

    pub fn close_sends_what_is_queued_then_ends(kind: BackendKind) {
        init_logging();
        let mut lp = EventLoop::with_backend(kind).unwrap();
        let c = client();
        let to = c.local_addr().unwrap();
        let id = datagram::open(
            &mut lp,
            "127.0.0.1:0".parse().unwrap(),
            DatagramOptions::default(),
            Echo { echo: false },
        )
        .unwrap();
        let mut log = Log::default();
        run_until(&mut lp, &mut log, |l| l.made);
        datagram::send_to(&mut lp, id, b"last words", Some(to.into())).unwrap();
        datagram::close(&mut lp, id);
        run_until(&mut lp, &mut log, |l| l.lost.is_some());
        assert_eq!(log.lost, Some(None));
        let mut buf = [0u8; 32];
        let (len, _) = c.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"last words");
        assert_eq!(
            datagram::send_to(&mut lp, id, b"x", Some(to.into()))
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(lp.source_count(), 0);
        // Too big for one datagram: refused, not split.
        let id = datagram::open(
            &mut lp,
            "127.0.0.1:0".parse().unwrap(),
            DatagramOptions::default(),
            Echo { echo: false },
        )
        .unwrap();
        let e = datagram::send_to(
            &mut lp,
            id,
            &vec![0u8; MAX_UDP_PAYLOAD + 1],
            Some(to.into()),
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    /// A fresh directory for socket paths, removed when dropped.
    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new(kind: BackendKind, what: &str) -> Dir {
            let d = std::env::temp_dir().join(format!(
                "muxloop-dgram-{}-{}-{what}",
                std::process::id(),
                kind.name()
            ));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub fn unix_datagrams_are_echoed_whole_to_bound_senders(kind: BackendKind) {
        use std::os::unix::net::UnixDatagram;
        init_logging();
        let dir = Dir::new(kind, "echo");
        let server = dir.0.join("server");
        let mut lp = EventLoop::with_backend(kind).unwrap();
        let id = datagram::open_unix(
            &mut lp,
            Some(&server),
            DatagramOptions::default(),
            Echo { echo: true },
        )
        .unwrap();
        let local = datagram::local_addr(&lp, id).unwrap();
        assert_eq!(local.to_string(), server.display().to_string());
        let c = UnixDatagram::bind(dir.0.join("client")).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut log = Log::default();
        let sizes = [0usize, 1, 64, 9000, 60_000];
        for (i, &n) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..n).map(|j| (i * 13 + j * 3) as u8).collect();
            c.send_to(&data, &server).unwrap();
            run_until(&mut lp, &mut log, |l| l.received == i + 1);
            let mut buf = vec![0u8; 70_000];
            let len = c.recv(&mut buf).unwrap();
            assert_eq!(&buf[..len], &data[..], "{kind}: {n} bytes");
        }
        // An abstract name (Linux) is a sender that can be answered too.
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let name = format!("muxloop-test-{}-{}", std::process::id(), kind.name());
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            let a = UnixDatagram::bind_addr(&addr).unwrap();
            a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            a.send_to(b"abstract", &server).unwrap();
            run_until(&mut lp, &mut log, |l| l.received == sizes.len() + 1);
            let mut buf = [0u8; 16];
            let len = a.recv(&mut buf).unwrap();
            assert_eq!(&buf[..len], b"abstract", "{kind}");
        }
        assert!(log.errors.is_empty(), "{kind}: {:?}", log.errors);
    }

    pub fn an_unbound_unix_sender_is_heard_but_cannot_be_answered(kind: BackendKind) {
        use std::os::unix::net::UnixDatagram;
        init_logging();
        let dir = Dir::new(kind, "unbound");
        let server = dir.0.join("server");
        let mut lp = EventLoop::with_backend(kind).unwrap();
        // Echoing to an unnamed sender fails: the echo unwraps, so use a
        // protocol that records the error instead.
        struct Answer;
        impl DatagramProtocol<Log> for Answer {
            fn datagram_received(
                &mut self,
                t: &mut DatagramTransport<'_, Log>,
                data: &[u8],
                from: Addr,
                log: &mut Log,
            ) {
                log.received += 1;
                log.bytes += data.len();
                assert_eq!(from.to_string(), "(unnamed)");
                log.errors.push(t.send_to(data, from).unwrap_err().kind());
                let v4: SocketAddr = "127.0.0.1:9".parse().unwrap();
                log.errors.push(t.send_to(data, v4).unwrap_err().kind());
            }
        }
        datagram::open_unix(&mut lp, Some(&server), DatagramOptions::default(), Answer).unwrap();
        let c = UnixDatagram::unbound().unwrap();
        c.send_to(b"who am i", &server).unwrap();
        let mut log = Log::default();
        run_until(&mut lp, &mut log, |l| l.received == 1);
        assert_eq!(
            log.errors,
            vec![io::ErrorKind::InvalidInput, io::ErrorKind::InvalidInput],
            "{kind}"
        );
        assert_eq!(log.bytes, 8);
    }

    pub fn a_connected_unix_endpoint_sends_to_its_peer(kind: BackendKind) {
        use std::os::unix::net::UnixDatagram;
        init_logging();
        let dir = Dir::new(kind, "connected");
        let peer_path = dir.0.join("peer");
        let peer = UnixDatagram::bind(&peer_path).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut lp = EventLoop::with_backend(kind).unwrap();
        let mut options = DatagramOptions::default();
        options.connect_path = Some(peer_path.clone());
        let own = dir.0.join("own");
        let id = datagram::open_unix(&mut lp, Some(&own), options, Echo { echo: true }).unwrap();
        let mut log = Log::default();
        run_until(&mut lp, &mut log, |l| l.made);
        datagram::send_to(&mut lp, id, b"to the peer", None).unwrap();
        let mut buf = [0u8; 32];
        let (len, from) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"to the peer");
        assert_eq!(from.as_pathname(), Some(own.as_path()));
        // The peer answers; the echo goes back to it.
        peer.send_to(b"back", &own).unwrap();
        run_until(&mut lp, &mut log, |l| l.received == 1);
        let len = peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"back", "{kind}");
        // IP options on a Unix endpoint, and a Unix peer on a UDP one, are
        // refused before anything is created.
        let mut options = DatagramOptions::default();
        options.broadcast = true;
        let e = datagram::open_unix(&mut lp, None, options, Echo { echo: false }).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let mut options = DatagramOptions::default();
        options.connect_path = Some(peer_path);
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let e = datagram::open(&mut lp, any, options, Echo { echo: false }).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        // A path nobody bound: the bind names it.
        let mut options = DatagramOptions::default();
        options.connect_path = Some(dir.0.join("nobody"));
        let e = datagram::open_unix(&mut lp, None, options, Echo { echo: false }).unwrap_err();
        assert!(e.to_string().contains("nobody"), "{e}");
    }

    /// Records what a by-name endpoint hears, and sends `ping` when made.
    struct Named;

    impl DatagramProtocol<Log> for Named {
        fn connection_made(&mut self, t: &mut DatagramTransport<'_, Log>, log: &mut Log) {
            log.made = true;
            t.send(b"ping").unwrap();
        }
        fn datagram_received(
            &mut self,
            _: &mut DatagramTransport<'_, Log>,
            data: &[u8],
            _: Addr,
            log: &mut Log,
        ) {
            log.received += 1;
            log.bytes += data.len();
        }
        fn connection_failed(&mut self, e: io::Error, log: &mut Log) {
            log.lost = Some(Some(e.kind()));
            log.failures.push(e.to_string());
        }
    }

    pub fn an_endpoint_connects_by_name(kind: BackendKind) {
        init_logging();
        let server = client();
        let port = server.local_addr().unwrap().port();
        let mut lp = EventLoop::with_backend(kind).unwrap();
        datagram::connect_host(
            &mut lp,
            format!("localhost:{port}"),
            Some(Duration::from_secs(10)),
            DatagramOptions::default(),
            Named,
        )
        .unwrap();
        let mut log = Log::default();
        run_until(&mut lp, &mut log, |l| l.made || l.lost.is_some());
        assert!(log.made, "{kind}: {:?}", log.failures);
        let mut buf = [0u8; 16];
        let (len, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"ping");
        server.send_to(b"pong!", from).unwrap();
        run_until(&mut lp, &mut log, |l| l.received == 1);
        assert_eq!(log.bytes, 5);
        // An IPv6 literal, in a pair.
        if let Ok(v6) = UdpSocket::bind("[::1]:0") {
            v6.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let port = v6.local_addr().unwrap().port();
            datagram::connect_host(
                &mut lp,
                ("::1", port),
                None,
                DatagramOptions::default(),
                Named,
            )
            .unwrap();
            let mut log = Log::default();
            run_until(&mut lp, &mut log, |l| l.made || l.lost.is_some());
            assert!(log.made, "{kind}: {:?}", log.failures);
            let (len, _) = v6.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..len], b"ping");
        }
    }

    pub fn a_name_that_does_not_resolve_fails_the_endpoint(kind: BackendKind) {
        init_logging();
        let mut lp = EventLoop::with_backend(kind).unwrap();
        let to = "no-such-host.invalid:53";
        datagram::connect_host(
            &mut lp,
            to,
            Some(Duration::from_secs(3)),
            DatagramOptions::default(),
            Named,
        )
        .unwrap();
        let mut log = Log::default();
        run_until(&mut lp, &mut log, |l| l.made || l.lost.is_some());
        assert!(!log.made);
        assert!(log.failures[0].contains(to), "{:?}", log.failures);
        // A resolver stuck behind a busy pool: the timeout ends it.
        lp.set_blocking_pool(muxloop::BlockingPool::new(1, 4));
        lp.spawn_blocking(|| std::thread::sleep(Duration::from_secs(2)), |_, _, _| {})
            .unwrap();
        let started = Instant::now();
        datagram::connect_host(
            &mut lp,
            "localhost:53",
            Some(Duration::from_millis(300)),
            DatagramOptions::default(),
            Named,
        )
        .unwrap();
        let mut log = Log::default();
        run_until(&mut lp, &mut log, |l| l.made || l.lost.is_some());
        assert_eq!(
            log.lost,
            Some(Some(io::ErrorKind::TimedOut)),
            "{:?}",
            log.failures
        );
        assert!(
            log.failures[0].contains("localhost:53"),
            "{:?}",
            log.failures
        );
        assert!(started.elapsed() >= Duration::from_millis(290));
        // Bad input is refused at once.
        let mut options = DatagramOptions::default();
        options.connect = Some("127.0.0.1:9".parse().unwrap());
        let e = datagram::connect_host(&mut lp, "localhost:9", None, options, Named).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = datagram::connect_host(&mut lp, "no-port", None, DatagramOptions::default(), Named)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}

/// `udp_echo` on `kind`, and its address.
fn udp_echo(kind: BackendKind) -> ServerProcess {
    let mut cmd = std::process::Command::new(example_path("udp_echo"));
    cmd.args(["--addr", "127.0.0.1:0", "--backend", kind.name()]);
    start_server(cmd)
}

mod clients {
    use super::*;

    pub fn udp_echo_answers_python_and_socat(kind: BackendKind) {
        let server = udp_echo(kind);
        assert!(
            server
                .first_line
                .ends_with(&format!("(backend {})\n", kind.name())),
            "{:?}",
            server.first_line
        );
        let addr = server.addr;
        if have("python3", "--version") {
            let script = r#"
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
for n in (0, 1, 100, 1400, 65507):
    data = bytes((i * 7 + n) % 256 for i in range(n))
    s.sendto(data, (host, port))
    back, frm = s.recvfrom(70000)
    assert back == data, (n, len(back))
print("ok")
"#;
            let out = std::process::Command::new("python3")
                .args([
                    "-c",
                    script,
                    &addr.ip().to_string(),
                    &addr.port().to_string(),
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.stdout, b"ok\n");
        }
        if have("socat", "-V") {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "printf 'hello over socat' | timeout 10 socat -t 1 - UDP:{addr}"
                ))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.stdout, b"hello over socat", "{kind}");
        }
    }
}

per_backend!(
    echoes_empty_small_and_largest_datagrams,
    serves_many_clients_at_once,
    a_datagram_longer_than_the_buffer_is_reported_not_cut,
    icmp_errors_reach_a_connected_endpoint,
    a_flood_is_dropped_by_the_kernel_and_memory_stays_bounded,
    close_sends_what_is_queued_then_ends,
    unix_datagrams_are_echoed_whole_to_bound_senders,
    an_unbound_unix_sender_is_heard_but_cannot_be_answered,
    a_connected_unix_endpoint_sends_to_its_peer,
    an_endpoint_connects_by_name,
    a_name_that_does_not_resolve_fails_the_endpoint,
    udp_echo_answers_python_and_socat,
);

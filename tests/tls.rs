//! TLS over the stream layer on every backend: echo through a handshake
//! (TLS 1.3 and 1.2), SNI and ALPN seen by the server's protocol, a
//! certificate the client does not trust, and bad input on the TLS port
//! (garbage, plaintext HTTP, a truncated ClientHello, a peer that stalls
//! in the handshake, one that closes without close_notify); muxloop's
//! client against a tokio-rustls server.
#![cfg(all(feature = "tls", target_os = "linux"))]

#[macro_use]
mod util;

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use muxloop::stream::{self, Protocol, ServeOptions, Server, Transport, tls};
use muxloop::{BackendKind, EventLoop};

#[derive(Default)]
struct Log {
    made: Vec<(Option<String>, Option<Vec<u8>>)>,
    echoed: usize,
    server_lost: Vec<Option<io::ErrorKind>>,
    client_got: Vec<u8>,
    client_failed: Option<(io::ErrorKind, String)>,
    client_lost: Option<Option<io::ErrorKind>>,
}

/// A certificate for `localhost`, its key, and the PEM files of both.
struct Cert {
    dir: std::path::PathBuf,
}

impl Cert {
    fn new(tag: &str) -> Cert {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let dir = std::env::temp_dir().join(format!("muxloop-tls-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), key.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.signing_key.serialize_pem()).unwrap();
        Cert { dir }
    }

    fn cert(&self) -> std::path::PathBuf {
        self.dir.join("cert.pem")
    }

    fn key(&self) -> std::path::PathBuf {
        self.dir.join("key.pem")
    }
}

impl Drop for Cert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct EchoServer;

impl Protocol<Log> for EchoServer {
    fn connection_made(&mut self, t: &mut Transport<'_, Log>, log: &mut Log) {
        let tls = t.tls().expect("a TLS transport");
        log.made.push((
            tls.server_name().map(str::to_owned),
            tls.alpn_protocol().map(<[u8]>::to_vec),
        ));
    }
    fn data_received(&mut self, t: &mut Transport<'_, Log>, data: &[u8], log: &mut Log) {
        log.echoed += data.len();
        t.write(data);
    }
    fn connection_lost(&mut self, _: &mut Transport<'_, Log>, e: Option<io::Error>, log: &mut Log) {
        log.server_lost.push(e.map(|e| e.kind()));
    }
}

/// Writes `payload`, reads it back, then closes (close_notify) or
/// aborts (no close_notify: the server sees a truncation).
struct Client {
    payload: Vec<u8>,
    abort: bool,
}

impl Protocol<Log> for Client {
    fn connection_made(&mut self, t: &mut Transport<'_, Log>, _: &mut Log) {
        t.write(&self.payload);
    }
    fn data_received(&mut self, t: &mut Transport<'_, Log>, data: &[u8], log: &mut Log) {
        log.client_got.extend_from_slice(data);
        if log.client_got.len() >= self.payload.len() {
            if self.abort {
                t.abort();
            } else {
                t.close();
            }
        }
    }
    fn connection_lost(&mut self, _: &mut Transport<'_, Log>, e: Option<io::Error>, log: &mut Log) {
        log.client_lost = Some(e.map(|e| e.kind()));
    }
    fn connection_failed(&mut self, e: io::Error, log: &mut Log) {
        log.client_failed = Some((e.kind(), e.to_string()));
    }
}

fn serve(
    lp: &mut EventLoop<Log>,
    cert: &Cert,
    handshake_timeout: Option<Duration>,
) -> (Server<Log>, std::net::SocketAddr) {
    let mut options = ServeOptions::default();
    options.tls = Some(tls::server_config(cert.cert(), cert.key(), &[b"echo/1"]).unwrap());
    options.handshake_timeout = handshake_timeout;
    options.close_linger = Duration::ZERO;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = stream::serve(lp, listener, options, |_, _| Some(Box::new(EchoServer))).unwrap();
    (server, addr)
}

/// Runs the loop until `done`, for at most 10 s.
fn run_until(lp: &mut EventLoop<Log>, log: &mut Log, mut done: impl FnMut(&Log) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(log) {
        assert!(Instant::now() < deadline, "timed out");
        lp.run_once(Some(Duration::from_millis(20)), log).unwrap();
    }
}

/// A TLS client to `addr` that writes `payload`, reads it back, then
/// closes (or aborts).
fn connect(
    lp: &mut EventLoop<Log>,
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    payload: &[u8],
    abort: bool,
    timeout: Option<Duration>,
) {
    let client = Client {
        payload: payload.to_vec(),
        abort,
    };
    tls::connect_tls(lp, addr, "localhost", config, timeout, client).unwrap();
}

fn client_config(cert: &Cert) -> Arc<rustls::ClientConfig> {
    tls::client_config(cert.cert(), &[b"echo/1"]).unwrap()
}

fn echo(kind: BackendKind, config: Arc<rustls::ClientConfig>, cert: &Cert) {
    let mut lp = EventLoop::with_backend(kind).unwrap();
    let (server, addr) = serve(&mut lp, cert, None);
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
    connect(
        &mut lp,
        addr,
        config,
        &payload,
        false,
        Some(Duration::from_secs(5)),
    );
    let mut log = Log::default();
    run_until(&mut lp, &mut log, |l| {
        l.client_lost.is_some() && l.server_lost.len() == 1
    });
    assert_eq!(log.client_got, payload);
    assert_eq!(log.client_lost, Some(None));
    assert_eq!(log.server_lost, vec![None], "a clean close (close_notify)");
    assert_eq!(
        log.made,
        vec![(Some("localhost".into()), Some(b"echo/1".to_vec()))]
    );
    assert_eq!(server.connection_count(), 0);
}

/// Sends `bytes` on a plain TCP connection to the TLS port (then maybe
/// half-closes) and waits for the server to close it.
fn bad_peer(
    addr: std::net::SocketAddr,
    bytes: Vec<u8>,
    half_close: bool,
) -> std::thread::JoinHandle<Duration> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        c.write_all(&bytes).unwrap();
        if half_close {
            c.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let mut sink = Vec::new();
        match c.read_to_end(&mut sink) {
            Ok(_) => {}
            Err(e) => assert_ne!(
                e.kind(),
                io::ErrorKind::WouldBlock,
                "the server never closed"
            ),
        }
        start.elapsed()
    })
}

/// The start of a real ClientHello.
fn client_hello(cert: &Cert) -> Vec<u8> {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut c = rustls::ClientConnection::new(client_config(cert), name).unwrap();
    let mut out = Vec::new();
    c.write_tls(&mut out).unwrap();
    out
}

/// Bad input on the TLS port ends that connection only (no protocol
/// call), and a good client right after is served.
fn rejects(
    kind: BackendKind,
    bytes: Vec<u8>,
    half_close: bool,
    timeout: Option<Duration>,
) -> Duration {
    let cert = Cert::new(&format!("{kind}-bad-{}", bytes.len()));
    let mut lp = EventLoop::with_backend(kind).unwrap();
    let (server, addr) = serve(&mut lp, &cert, timeout);
    let peer = bad_peer(addr, bytes, half_close);
    let mut log = Log::default();
    run_until(&mut lp, &mut log, |_| peer.is_finished());
    let took = peer.join().unwrap();
    run_until(&mut lp, &mut log, |_| server.connection_count() == 0);
    assert!(log.made.is_empty() && log.server_lost.is_empty());
    connect(&mut lp, addr, client_config(&cert), b"after", false, None);
    run_until(&mut lp, &mut log, |l| l.client_lost.is_some());
    assert_eq!(log.client_got, b"after");
    took
}

/// STARTTLS: a line in plaintext, an answer, then TLS on the same
/// connection (the server's answer is still buffered when it upgrades).
struct StartTlsServer(Arc<rustls::ServerConfig>);

impl Protocol<Log> for StartTlsServer {
    fn data_received(&mut self, t: &mut Transport<'_, Log>, data: &[u8], log: &mut Log) {
        if t.tls().is_some() {
            log.echoed += data.len();
            t.write(data);
            return;
        }
        assert!(data.starts_with(b"STARTTLS\n"), "{data:?}");
        t.write(b"OK");
        t.write(b"\n");
        let session = rustls::ServerConnection::new(self.0.clone()).unwrap();
        t.start_tls(session, &data[9..]).unwrap();
        assert!(
            t.start_tls(rustls::ServerConnection::new(self.0.clone()).unwrap(), &[])
                .is_err()
        );
    }
    fn tls_started(&mut self, t: &mut Transport<'_, Log>, log: &mut Log) {
        log.made
            .push((None, t.tls().unwrap().alpn_protocol().map(<[u8]>::to_vec)));
    }
    fn connection_lost(&mut self, _: &mut Transport<'_, Log>, e: Option<io::Error>, log: &mut Log) {
        log.server_lost.push(e.map(|e| e.kind()));
    }
}

struct StartTlsClient(Arc<rustls::ClientConfig>);

impl Protocol<Log> for StartTlsClient {
    fn connection_made(&mut self, t: &mut Transport<'_, Log>, _: &mut Log) {
        t.write(b"STARTTLS\n");
    }
    fn data_received(&mut self, t: &mut Transport<'_, Log>, data: &[u8], log: &mut Log) {
        if t.tls().is_none() {
            assert_eq!(data, b"OK\n");
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let session = rustls::ClientConnection::new(self.0.clone(), name).unwrap();
            t.start_tls(session, &[]).unwrap();
            return;
        }
        log.client_got.extend_from_slice(data);
        if log.client_got.len() >= 6 {
            t.close();
        }
    }
    fn tls_started(&mut self, t: &mut Transport<'_, Log>, _: &mut Log) {
        t.write(b"secret");
    }
    fn connection_lost(&mut self, _: &mut Transport<'_, Log>, e: Option<io::Error>, log: &mut Log) {
        log.client_lost = Some(e.map(|e| e.kind()));
    }
}

/// What the tokio-rustls peer echoed, and the ALPN protocol it agreed.
type Echoed = (u64, Option<Vec<u8>>);

/// A tokio-rustls echo server (on the same rustls and ring) for one
/// connection, on a thread: echoes until the client's close_notify, then
/// sends its own; returns the bytes echoed and the ALPN protocol agreed.
fn tokio_rustls_echo(cert: &Cert) -> (std::net::SocketAddr, std::thread::JoinHandle<Echoed>) {
    let config = tls::server_config(cert.cert(), cert.key(), &[b"echo/1"]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let peer = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use tokio::io::AsyncWriteExt;
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let work = async {
                let (tcp, _) = listener.accept().await.unwrap();
                let stream = acceptor.accept(tcp).await.unwrap();
                let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                let (mut r, mut w) = tokio::io::split(stream);
                let echoed = tokio::io::copy(&mut r, &mut w).await.unwrap();
                w.shutdown().await.unwrap();
                (echoed, alpn)
            };
            tokio::time::timeout(Duration::from_secs(10), work)
                .await
                .expect("the tokio-rustls peer timed out")
        })
    });
    (addr, peer)
}

mod cases {
    use super::*;

    pub fn echo_tls13_sni_alpn_close_notify(kind: BackendKind) {
        util::init_logging();
        let cert = Cert::new(&format!("{kind}-13"));
        echo(kind, client_config(&cert), &cert);
    }

    pub fn echo_tls12(kind: BackendKind) {
        util::init_logging();
        let cert = Cert::new(&format!("{kind}-12"));
        let mut roots = rustls::RootCertStore::empty();
        for c in tls::load_certs(cert.cert()).unwrap() {
            roots.add(c).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"echo/1".to_vec()];
        echo(kind, Arc::new(config), &cert);
    }

    pub fn untrusted_certificate_reaches_connection_failed(kind: BackendKind) {
        util::init_logging();
        let cert = Cert::new(&format!("{kind}-srv"));
        let other = Cert::new(&format!("{kind}-other"));
        let mut lp = EventLoop::with_backend(kind).unwrap();
        let (server, addr) = serve(&mut lp, &cert, None);
        connect(&mut lp, addr, client_config(&other), b"x", false, None);
        let mut log = Log::default();
        run_until(&mut lp, &mut log, |l| {
            l.client_failed.is_some() && server.connection_count() == 0
        });
        let (kind, msg) = log.client_failed.unwrap();
        assert_eq!(kind, io::ErrorKind::InvalidData);
        assert!(msg.contains("invalid peer certificate"), "{msg}");
        assert!(log.made.is_empty() && log.client_lost.is_none());
    }

    pub fn truncation_is_an_error_not_an_eof(kind: BackendKind) {
        util::init_logging();
        let cert = Cert::new(&format!("{kind}-trunc"));
        let mut lp = EventLoop::with_backend(kind).unwrap();
        let (_server, addr) = serve(&mut lp, &cert, None);
        connect(&mut lp, addr, client_config(&cert), b"hello", true, None);
        let mut log = Log::default();
        run_until(&mut lp, &mut log, |l| !l.server_lost.is_empty());
        assert_eq!(log.server_lost, vec![Some(io::ErrorKind::UnexpectedEof)]);
    }

    pub fn garbage_instead_of_a_client_hello(kind: BackendKind) {
        util::init_logging();
        rejects(kind, vec![0x42; 3000], false, None);
    }

    pub fn plaintext_http_to_the_tls_port(kind: BackendKind) {
        util::init_logging();
        rejects(
            kind,
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
            false,
            None,
        );
    }

    pub fn oversized_record(kind: BackendKind) {
        util::init_logging();
        let mut bytes = vec![0x16, 0x03, 0x01, 0xff, 0xff];
        bytes.extend(std::iter::repeat_n(0u8, 20_000));
        rejects(kind, bytes, false, None);
    }

    pub fn truncated_client_hello(kind: BackendKind) {
        util::init_logging();
        let cert = Cert::new(&format!("{kind}-hello"));
        let mut hello = client_hello(&cert);
        hello.truncate(hello.len() / 2);
        rejects(kind, hello, true, None);
    }

    pub fn stalled_handshake_times_out(kind: BackendKind) {
        util::init_logging();
        let cert = Cert::new(&format!("{kind}-stall"));
        let mut hello = client_hello(&cert);
        hello.truncate(20);
        let took = rejects(kind, hello, false, Some(Duration::from_millis(300)));
        assert!(took >= Duration::from_millis(290), "closed early: {took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    pub fn start_tls_upgrades_a_plaintext_connection(kind: BackendKind) {
        util::init_logging();
        let cert = Cert::new(&format!("{kind}-starttls"));
        let mut lp = EventLoop::with_backend(kind).unwrap();
        let config = tls::server_config(cert.cert(), cert.key(), &[b"echo/1"]).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _server = stream::serve(&mut lp, listener, ServeOptions::default(), move |_, _| {
            Some(Box::new(StartTlsServer(config.clone())))
        })
        .unwrap();
        let client = StartTlsClient(client_config(&cert));
        stream::connect(&mut lp, addr, None, client).unwrap();
        let mut log = Log::default();
        run_until(&mut lp, &mut log, |l| {
            l.client_lost.is_some() && !l.server_lost.is_empty()
        });
        assert_eq!(log.client_got, b"secret");
        assert_eq!(log.echoed, 6);
        assert_eq!(log.made, vec![(None, Some(b"echo/1".to_vec()))]);
        assert_eq!(log.client_lost, Some(None));
        assert_eq!(log.server_lost, vec![None]);
    }

    pub fn client_against_a_tokio_rustls_server(kind: BackendKind) {
        util::init_logging();
        let cert = Cert::new(&format!("{kind}-tokio"));
        let (addr, peer) = tokio_rustls_echo(&cert);
        let mut lp = EventLoop::with_backend(kind).unwrap();
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 11) as u8).collect();
        connect(
            &mut lp,
            addr,
            client_config(&cert),
            &payload,
            false,
            Some(Duration::from_secs(5)),
        );
        let mut log = Log::default();
        run_until(&mut lp, &mut log, |l| l.client_lost.is_some());
        assert_eq!(log.client_got, payload);
        assert_eq!(log.client_lost, Some(None), "close_notify both ways");
        let (echoed, alpn) = peer.join().unwrap();
        assert_eq!(echoed, payload.len() as u64);
        assert_eq!(alpn.as_deref(), Some(&b"echo/1"[..]));
    }

    pub fn pem_errors_name_the_file(_: BackendKind) {
        let cert = Cert::new("pem");
        let missing = cert.dir.join("missing.pem");
        let e = tls::load_certs(&missing).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let junk = cert.dir.join("junk.pem");
        std::fs::write(&junk, "not pem at all\n").unwrap();
        let e = tls::load_certs(&junk).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("junk.pem"), "{e}");
        let e = tls::load_key(cert.cert()).unwrap_err();
        assert!(
            e.to_string().contains("cert.pem") && e.to_string().contains("private key"),
            "{e}"
        );
        let other = Cert::new("pem-other");
        let e = tls::server_config(cert.cert(), other.key(), &[]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("does not fit"), "{e}");
    }
}

per_backend!(
    echo_tls13_sni_alpn_close_notify,
    echo_tls12,
    untrusted_certificate_reaches_connection_failed,
    truncation_is_an_error_not_an_eof,
    garbage_instead_of_a_client_hello,
    plaintext_http_to_the_tls_port,
    oversized_record,
    truncated_client_hello,
    stalled_handshake_times_out,
    start_tls_upgrades_a_plaintext_connection,
    client_against_a_tokio_rustls_server,
    pem_errors_name_the_file,
);

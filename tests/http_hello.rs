//! The `http_hello` example as an HTTP client sees it, on every backend:
//! keep-alive, pipelining, `Connection: close`, HTTP/1.0, the error
//! answers, requests split across reads, the idle timeout and a graceful
//! stop.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use muxloop::BackendKind;
use util::*;

fn http_hello(kind: BackendKind, extra: &[&str]) -> ServerProcess {
    let mut cmd = Command::new(example_path("http_hello"));
    cmd.args(["--addr", "127.0.0.1:0", "--backend", kind.name()])
        .args(extra)
        .env("RUST_LOG", "warn");
    start_server(cmd)
}

/// One answer as read off the wire.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A client connection: requests written raw, answers parsed.
struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(server: &ServerProcess) -> Client {
        let s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            writer: s.try_clone().unwrap(),
            reader: BufReader::new(s),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// Reads one answer; `head` when it answers a HEAD (no body follows).
    fn response(&mut self, head: bool) -> Response {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status = line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            let field = line.trim_end_matches("\r\n");
            if field.is_empty() {
                break;
            }
            let (name, value) = field.split_once(':').expect("header field");
            headers.push((name.to_string(), value.trim().to_string()));
        }
        let mut r = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let len: usize = r
            .header("content-length")
            .expect("Content-Length")
            .parse()
            .unwrap();
        if !head {
            r.body = vec![0; len];
            self.reader.read_exact(&mut r.body).unwrap();
        }
        r
    }

    /// True when the server closed the connection (EOF, or a reset for
    /// input it did not read).
    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => rest.is_empty(),
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";

mod cases {
    use super::*;

    pub fn keep_alive_serves_many_requests_on_one_connection(kind: BackendKind) {
        let server = http_hello(kind, &[]);
        assert!(
            server
                .first_line
                .ends_with(&format!("(backend {})\n", kind.name())),
            "{:?}",
            server.first_line
        );
        let mut c = Client::connect(&server);
        for path in ["/", "/?name=x", "/"] {
            c.send(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes());
            let r = c.response(false);
            assert_eq!(r.status, 200, "{kind} {path}: {r:?}");
            assert_eq!(r.body, b"hello world\n", "{kind}");
            assert_eq!(r.header("connection"), None, "{kind}: {r:?}");
        }
    }

    pub fn pipelined_requests_are_answered_in_order(kind: BackendKind) {
        let server = http_hello(kind, &[]);
        let mut c = Client::connect(&server);
        let mut burst = Vec::new();
        burst.extend_from_slice(GET);
        burst.extend_from_slice(b"GET /missing HTTP/1.1\r\nHost: localhost\r\n\r\n");
        burst.extend_from_slice(b"HEAD / HTTP/1.1\r\nHost: localhost\r\n\r\n");
        // A body the server reads past, and a method it does not serve.
        burst.extend_from_slice(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
        burst.extend_from_slice(GET);
        c.send(&burst);
        let r = c.response(false);
        assert_eq!((r.status, &r.body[..]), (200, &b"hello world\n"[..]));
        let r = c.response(false);
        assert_eq!((r.status, &r.body[..]), (404, &b"not found\n"[..]));
        let r = c.response(true);
        assert_eq!(r.status, 200, "{kind}: {r:?}");
        assert_eq!(r.header("content-length"), Some("12"), "{kind}: HEAD");
        let r = c.response(false);
        assert_eq!(r.status, 405, "{kind}: {r:?}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{kind}");
        let r = c.response(false);
        assert_eq!(r.status, 200, "{kind}: after the skipped body: {r:?}");
        // Many more at once than one read takes.
        let many: Vec<u8> = GET.repeat(2000);
        let writer = c.writer.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            let mut w = writer;
            w.write_all(&many).unwrap();
        });
        for i in 0..2000 {
            let r = c.response(false);
            assert_eq!(r.status, 200, "{kind}: answer {i}");
        }
        sender.join().unwrap();
    }

    pub fn requests_split_across_reads_are_put_together(kind: BackendKind) {
        let server = http_hello(kind, &[]);
        let mut c = Client::connect(&server);
        let request = b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\n\r\nabc";
        for piece in request.chunks(7) {
            c.send(piece);
            std::thread::sleep(Duration::from_millis(5));
        }
        let r = c.response(false);
        assert_eq!(r.status, 200, "{kind}: {r:?}");
        c.send(GET);
        assert_eq!(c.response(false).status, 200, "{kind}");
    }

    pub fn connection_close_and_http_1_0_end_the_connection(kind: BackendKind) {
        let server = http_hello(kind, &[]);
        let mut c = Client::connect(&server);
        c.send(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        let r = c.response(false);
        assert_eq!(r.status, 200, "{kind}");
        assert_eq!(r.header("connection"), Some("close"), "{kind}: {r:?}");
        assert!(c.closed(), "{kind}: open after Connection: close");

        let mut c = Client::connect(&server);
        c.send(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(c.response(false).status, 200, "{kind}");
        assert!(c.closed(), "{kind}: HTTP/1.0 left open");

        let mut c = Client::connect(&server);
        for _ in 0..2 {
            c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
            let r = c.response(false);
            assert_eq!(r.status, 200, "{kind}");
            assert_eq!(r.header("connection"), None, "{kind}: {r:?}");
        }
    }

    pub fn bad_requests_get_their_error_and_the_connection_closes(kind: BackendKind) {
        let server = http_hello(kind, &[]);
        let big_header = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(9000));
        let many_headers = format!("GET / HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(70));
        let cases: [(&[u8], u16); 5] = [
            (b"\x01\x02 nonsense\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\nContent-Length: 5000000\r\n\r\n", 413),
            (big_header.as_bytes(), 431),
            (many_headers.as_bytes(), 431),
        ];
        for (request, status) in cases {
            let mut c = Client::connect(&server);
            c.send(request);
            let r = c.response(false);
            assert_eq!(r.status, status, "{kind}: {r:?}");
            assert_eq!(r.header("connection"), Some("close"), "{kind}: {r:?}");
            assert!(c.closed(), "{kind}: open after {status}");
        }
        // The server is unharmed.
        let mut c = Client::connect(&server);
        c.send(GET);
        assert_eq!(c.response(false).status, 200, "{kind}");
    }

    pub fn idle_keep_alive_connections_are_closed(kind: BackendKind) {
        let server = http_hello(kind, &["--idle-timeout", "1"]);
        let mut c = Client::connect(&server);
        c.send(GET);
        assert_eq!(c.response(false).status, 200, "{kind}");
        let started = Instant::now();
        assert!(c.closed(), "{kind}: idle connection left open");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(8),
            "{kind}: closed after {waited:?}"
        );
    }

    pub fn sigterm_stops_it_after_the_answers(kind: BackendKind) {
        let mut server = http_hello(kind, &["--grace", "5"]);
        let mut c = Client::connect(&server);
        c.send(GET);
        assert_eq!(c.response(false).status, 200, "{kind}");
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "{kind}: still running");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{kind}: {status}");
        assert!(c.closed(), "{kind}");
    }
}

per_backend!(
    keep_alive_serves_many_requests_on_one_connection,
    pipelined_requests_are_answered_in_order,
    requests_split_across_reads_are_put_together,
    connection_close_and_http_1_0_end_the_connection,
    bad_requests_get_their_error_and_the_connection_closes,
    idle_keep_alive_connections_are_closed,
    sigterm_stops_it_after_the_answers,
);

/// `fetch` (a client by host name) against `http_hello`.
#[test]
fn fetch_gets_the_hello_by_host_name() {
    let server = http_hello(BackendKind::platform_default(), &[]);
    let url = format!("http://localhost:{}/", server.addr.port());
    let out = Command::new(example_path("fetch"))
        .args([&url, "-v"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(out.stdout, b"hello world\n");
    assert!(err.contains("HTTP/1.1 200 OK"), "{err}");
    let out = Command::new(example_path("fetch"))
        .arg(format!("{url}missing"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    let out = Command::new(example_path("fetch"))
        .args(["http://no-such-host.invalid/", "--timeout", "3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-host.invalid:80"), "{err}");
}

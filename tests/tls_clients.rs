//! The TLS example servers against real TLS clients, on every backend:
//! `curl --cacert` reusing one keep-alive HTTPS connection, `openssl
//! s_client` echoing through TLS 1.2 and TLS 1.3 (with key updates), and
//! a renegotiation attempt, which ends that connection only. Each server is started with
//! a certificate `make_cert` wrote, and each client runs the command line
//! the server printed. Without curl or openssl the cases say so and pass,
//! except under CI (`CI` set), where `.ci/run` installs them. Also the
//! TLS load generator (`tls_load`) against the TLS servers, the
//! tokio-rustls peer and a plain one.
#![cfg(all(feature = "tls", target_os = "linux"))]

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use muxloop::BackendKind;
use util::*;

/// A certificate `make_cert` wrote for localhost; removed when dropped.
struct CertDir(std::path::PathBuf);

impl CertDir {
    fn new(tag: &str) -> CertDir {
        let dir =
            std::env::temp_dir().join(format!("muxloop-tls-clients-{}-{tag}", std::process::id()));
        let out = Command::new(example_path("make_cert"))
            .arg("--dir")
            .arg(&dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "make_cert: {text}");
        assert!(text.starts_with("wrote "), "{text}");
        assert!(
            text.contains("--features tls --example http_hello"),
            "{text}"
        );
        CertDir(dir.canonicalize().unwrap())
    }

    fn flags(&self) -> [String; 4] {
        let path = |f: &str| self.0.join(f).display().to_string();
        [
            "--tls-cert".into(),
            path("cert.pem"),
            "--tls-key".into(),
            path("key.pem"),
        ]
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An example server with TLS on `kind`, and the client command line it
/// printed on its second line (after `listening on …`), split in words.
fn tls_server(name: &str, kind: BackendKind, cert: &CertDir) -> (ServerProcess, Vec<String>) {
    let mut cmd = Command::new(example_path(name));
    cmd.args(["--addr", "127.0.0.1:0", "--backend", kind.name()])
        .args(cert.flags())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stdin(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let (mut first, mut second) = (String::new(), String::new());
    lines.read_line(&mut first).unwrap();
    lines.read_line(&mut second).unwrap();
    std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
    let addr = first
        .strip_prefix("listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("first line {first:?}"));
    assert!(
        first.ends_with(&format!("(backend {})\n", kind.name())),
        "{first:?}"
    );
    let line = second
        .split_once("try: ")
        .unwrap_or_else(|| panic!("second line {second:?}"))
        .1;
    let words = line.split_whitespace().map(String::from).collect();
    let server = ServerProcess {
        child,
        addr,
        first_line: first,
    };
    (server, words)
}

/// A running `openssl s_client`: its stdin, its stdout read line by line,
/// its stderr lines as they come; killed if still running after 20 s.
struct SClient {
    child: Child,
    out: BufReader<ChildStdout>,
    err: mpsc::Receiver<String>,
    err_seen: String,
    done: mpsc::Sender<()>,
}

impl SClient {
    /// Starts the server's printed line plus `extra`.
    fn start(words: &[String], extra: &[&str]) -> SClient {
        assert_eq!(words[..2], ["openssl", "s_client"], "{words:?}");
        let mut child = Command::new(&words[0])
            .args(&words[1..])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, err) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let pid = child.id() as libc::pid_t;
        let (done, wait) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if wait.recv_timeout(Duration::from_secs(20)) == Err(mpsc::RecvTimeoutError::Timeout) {
                // SAFETY: kill has no memory preconditions; the pid is a
                // child of this process not yet waited for.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        SClient {
            child,
            out,
            err,
            err_seen: String::new(),
            done,
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        self.child.stdin.as_mut().unwrap().write_all(bytes).unwrap();
    }

    /// Writes `line` and reads lines until it comes back.
    fn echo_line(&mut self, line: &str) {
        self.write(format!("{line}\n").as_bytes());
        let mut got = String::new();
        loop {
            got.clear();
            let n = self.out.read_line(&mut got).unwrap();
            assert!(n > 0, "s_client ended before {line:?} came back");
            if got.trim_end() == line {
                return;
            }
        }
    }

    /// Waits (at most 10 s) until `times` stderr lines said `what`: s_client
    /// says it has acted on a command (and drops the rest of the input
    /// it read with it: the next line must wait for this).
    fn wait_err(&mut self, what: &str, times: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.err_seen.matches(what).count() < times {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.err.recv_timeout(left) {
                Ok(line) => {
                    self.err_seen.push_str(&line);
                    self.err_seen.push('\n');
                }
                Err(_) => panic!("s_client never said {what:?}: {}", self.err_seen),
            }
        }
    }

    /// Ends it (EOF on its stdin); its exit status and all of its stderr.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        drop(self.child.stdin.take());
        let mut rest = String::new();
        let _ = self.out.read_to_string(&mut rest);
        let status = self.child.wait().unwrap();
        let _ = self.done.send(());
        for line in self.err.iter() {
            self.err_seen.push_str(&line);
            self.err_seen.push('\n');
        }
        (status, self.err_seen)
    }
}

mod cases {
    use super::*;

    pub fn curl_reuses_one_keep_alive_https_connection(kind: BackendKind) {
        if !have("curl", "--version") {
            return;
        }
        let cert = CertDir::new(&format!("curl-{kind}"));
        let (server, words) = tls_server("http_hello", kind, &cert);
        assert_eq!(words[0], "curl", "{words:?}");
        let url = words.last().unwrap().clone();
        assert_eq!(url, format!("https://localhost:{}/", server.addr.port()));
        let mut cmd = Command::new(&words[0]);
        cmd.args(&words[1..])
            .args(["-sS", "-v", "--max-time", "20"])
            .arg(format!("{url}?again"))
            .arg(format!("{url}missing"));
        let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
        let out = child.unwrap().wait_with_output().unwrap();
        let (body, log) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{kind}: {log}");
        assert_eq!(body, "hello world\nhello world\nnot found\n", "{kind}");
        assert_eq!(
            log.matches("Re-using existing connection").count(),
            2,
            "{kind}: one connection for three requests: {log}"
        );
        assert!(
            log.contains("ALPN: server accepted http/1.1"),
            "{kind}: {log}"
        );
        assert!(log.contains("SSL certificate verify ok"), "{kind}: {log}");
    }

    pub fn openssl_s_client_echoes_through_tls_1_2_and_1_3_and_key_updates(kind: BackendKind) {
        if !have("openssl", "version") {
            return;
        }
        let cert = CertDir::new(&format!("s_client-{kind}"));
        let (_server, words) = tls_server("echo_server", kind, &cert);
        for version in ["-tls1_2", "-tls1_3"] {
            let mut c = SClient::start(&words, &[version, "-no_ign_eof"]);
            for i in 0..3 {
                c.echo_line(&format!("{version} line {i}"));
            }
            let (status, err) = c.finish();
            assert!(status.success(), "{kind} {version}: {status}: {err}");
        }
        // TLS 1.3 key updates (`K`: update, and ask the server to update
        // too), answered mid-stream without a break in the echo.
        let plain: Vec<String> = words.iter().filter(|w| *w != "-quiet").cloned().collect();
        let mut c = SClient::start(&plain, &["-tls1_3"]);
        c.echo_line("before the key update");
        for i in 0..2 {
            c.write(b"K\n");
            c.wait_err("KEYUPDATE", i + 1);
            c.echo_line(&format!("after key update {i}"));
        }
        let (status, err) = c.finish();
        assert!(status.success(), "{kind}: {status}: {err}");
    }

    pub fn renegotiation_ends_that_connection_only(kind: BackendKind) {
        if !have("openssl", "version") {
            return;
        }
        let cert = CertDir::new(&format!("reneg-{kind}"));
        let (server, words) = tls_server("echo_server", kind, &cert);
        // A bystander on TLS 1.3, open across the attempt.
        let mut other = SClient::start(&words, &["-tls1_3", "-no_ign_eof"]);
        other.echo_line("before");
        // Without -quiet, s_client reads a line holding `R` as "renegotiate".
        let plain: Vec<String> = words.iter().filter(|w| *w != "-quiet").cloned().collect();
        let mut c = SClient::start(&plain, &["-tls1_2"]);
        c.echo_line("ping");
        let started = Instant::now();
        c.write(b"R\n");
        c.wait_err("RENEGOTIATING", 1);
        // The server refuses; the connection ends, and s_client with it.
        let mut rest = String::new();
        let _ = c.out.read_to_string(&mut rest);
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{kind}: not ended"
        );
        let (status, err) = c.finish();
        assert!(!status.success(), "{kind}: s_client renegotiated: {err}");
        // Everyone else is served: the bystander, and a new client.
        other.echo_line("after");
        let (status, err) = other.finish();
        assert!(status.success(), "{kind}: {err}");
        let mut next = SClient::start(&words, &["-no_ign_eof"]);
        next.echo_line("next");
        let (status, err) = next.finish();
        assert!(status.success(), "{kind}: {err}");
        drop(server);
    }
}

/// `tls_load` against a server (10 connections unless `args` say), its
/// RESULT fields, asserting it passed.
fn tls_load(server: &ServerProcess, args: &[&str]) -> std::collections::HashMap<String, String> {
    let conns: &[&str] = if args.contains(&"--conns") {
        &[]
    } else {
        &["--conns", "10"]
    };
    let out = Command::new(example_path("tls_load"))
        .args(["--addr", &server.addr.to_string(), "--duration", "0.3"])
        .args(conns)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?}: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = result_fields(&stdout);
    assert_eq!(f["errors"], "0", "{args:?}");
    assert!(f["ops"].parse::<u64>().unwrap() > 0, "{args:?}: {stdout}");
    f
}

#[test]
fn tls_load_verifies_against_the_tls_servers_and_the_tokio_rustls_peer() {
    let cert = CertDir::new("load");
    let ca = cert.0.join("cert.pem").display().to_string();
    let kind = BackendKind::platform_default();
    let (echo, _) = tls_server("echo_server", kind, &cert);
    for mode in ["echo", "handshake"] {
        let f = tls_load(&echo, &["--cacert", &ca, "--mode", mode]);
        assert_eq!((f["mode"].as_str(), f["tls"].as_str()), (mode, "true"));
    }
    let f = tls_load(
        &echo,
        &["--cacert", &ca, "--mode", "idle", "--conns", "300"],
    );
    assert_eq!(f["ops"], "300", "each idle connection verified once");
    let f = tls_load(&echo, &["--cacert", &ca, "--tls12", "--mode", "handshake"]);
    assert_eq!(f["mode"], "handshake");
    let (http, _) = tls_server("http_hello", kind, &cert);
    tls_load(&http, &["--cacert", &ca, "--mode", "http"]);
    // The peer, in both of its modes.
    let mut cmd = Command::new(example_path("peer_tokio_tls"));
    cmd.args(["--addr", "127.0.0.1:0", "--max-seconds", "60"])
        .args(cert.flags());
    let peer = start_server(cmd);
    assert!(peer.first_line.ends_with("(backend tokio-peer)\n"));
    tls_load(&peer, &["--cacert", &ca, "--mode", "echo"]);
    tls_load(&peer, &["--cacert", &ca, "--mode", "handshake"]);
    let mut cmd = Command::new(example_path("peer_tokio_tls"));
    cmd.args([
        "--addr",
        "127.0.0.1:0",
        "--max-seconds",
        "60",
        "--mode",
        "http",
    ])
    .args(cert.flags());
    let peer = start_server(cmd);
    tls_load(&peer, &["--cacert", &ca, "--mode", "http"]);
    // Plain TCP, for the cost of TLS.
    let mut cmd = Command::new(example_path("echo_server"));
    cmd.args(["--addr", "127.0.0.1:0"]);
    let plain = start_server(cmd);
    let f = tls_load(&plain, &["--plain", "--mode", "echo"]);
    assert_eq!(f["tls"], "false");
}

#[test]
fn tls_load_fails_on_a_certificate_it_does_not_trust() {
    let cert = CertDir::new("load-srv");
    let other = CertDir::new("load-other");
    let (server, _) = tls_server("echo_server", BackendKind::platform_default(), &cert);
    let out = Command::new(example_path("tls_load"))
        .args(["--addr", &server.addr.to_string(), "--duration", "0.3"])
        .arg("--cacert")
        .arg(other.0.join("cert.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid peer certificate"), "{err}");
    // Plaintext to the TLS port is an error too, not a pass.
    let out = Command::new(example_path("tls_load"))
        .args(["--addr", &server.addr.to_string(), "--plain"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

per_backend!(
    curl_reuses_one_keep_alive_https_connection,
    openssl_s_client_echoes_through_tls_1_2_and_1_3_and_key_updates,
    renegotiation_ends_that_connection_only,
);

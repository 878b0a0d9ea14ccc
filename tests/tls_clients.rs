//! The TLS example servers against real TLS clients, on every backend:
//! `curl --cacert` reusing one keep-alive HTTPS connection, `openssl
//! s_client` echoing through TLS 1.2 and TLS 1.3, and a renegotiation
//! attempt, which ends that connection only. Each server is started with
//! a certificate `make_cert` wrote, and each client runs the command line
//! the server printed. Without curl or openssl the cases say so and pass,
//! except under CI (`CI` set), where `.ci/run` installs them.
#![cfg(all(feature = "tls", target_os = "linux"))]

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use muxloop::BackendKind;
use util::*;

/// Whether `tool` is installed; if not, panics under CI and otherwise
/// says the case is skipped.
fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        || Command::new(tool)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is not installed (CI installs it: .ci/run)"
        );
        eprintln!("skipped: {tool} is not installed");
    }
    found
}

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

/// Kills `child` if it is still running after `limit`.
fn watchdog(child: &Child, limit: Duration) -> mpsc::Sender<()> {
    let pid = child.id() as libc::pid_t;
    let (done, wait) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if wait.recv_timeout(limit) == Err(mpsc::RecvTimeoutError::Timeout) {
            // SAFETY: kill has no memory preconditions; the pid is a child
            // of this process not yet waited for.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    done
}

/// `openssl s_client`, started from the server's printed line plus
/// `extra`, with its stdin and stdout piped.
fn s_client(words: &[String], extra: &[&str]) -> (Child, BufReader<ChildStdout>) {
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
    (child, out)
}

/// Writes `line` to an s_client and reads lines until it comes back.
fn echo_line(child: &mut Child, out: &mut BufReader<ChildStdout>, line: &str) {
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(format!("{line}\n").as_bytes())
        .unwrap();
    let mut got = String::new();
    loop {
        got.clear();
        let n = out.read_line(&mut got).unwrap();
        assert!(n > 0, "s_client ended before {line:?} came back");
        if got.trim_end() == line {
            return;
        }
    }
}

/// Ends an s_client (EOF on its stdin) and returns its exit status and
/// stderr.
fn finish(mut child: Child) -> (std::process::ExitStatus, String) {
    drop(child.stdin.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (child.wait().unwrap(), err)
}

mod cases {
    use super::*;

    pub fn curl_reuses_one_keep_alive_https_connection(kind: BackendKind) {
        if !have("curl") {
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

    pub fn openssl_s_client_echoes_through_tls_1_2_and_1_3(kind: BackendKind) {
        if !have("openssl") {
            return;
        }
        let cert = CertDir::new(&format!("s_client-{kind}"));
        let (_server, words) = tls_server("echo_server", kind, &cert);
        for version in ["-tls1_2", "-tls1_3"] {
            let (mut child, mut out) = s_client(&words, &[version, "-no_ign_eof"]);
            let done = watchdog(&child, Duration::from_secs(20));
            for i in 0..3 {
                echo_line(&mut child, &mut out, &format!("{version} line {i}"));
            }
            let (status, err) = finish(child);
            let _ = done.send(());
            assert!(status.success(), "{kind} {version}: {status}: {err}");
        }
    }

    pub fn renegotiation_ends_that_connection_only(kind: BackendKind) {
        if !have("openssl") {
            return;
        }
        let cert = CertDir::new(&format!("reneg-{kind}"));
        let (server, words) = tls_server("echo_server", kind, &cert);
        // A bystander on TLS 1.3, open across the attempt.
        let (mut other, mut other_out) = s_client(&words, &["-tls1_3", "-no_ign_eof"]);
        let other_done = watchdog(&other, Duration::from_secs(30));
        echo_line(&mut other, &mut other_out, "before");
        // Without -quiet, s_client reads a line holding `R` as "renegotiate".
        let plain: Vec<String> = words.iter().filter(|w| *w != "-quiet").cloned().collect();
        let (mut child, mut out) = s_client(&plain, &["-tls1_2"]);
        let done = watchdog(&child, Duration::from_secs(20));
        echo_line(&mut child, &mut out, "ping");
        let started = Instant::now();
        child.stdin.as_mut().unwrap().write_all(b"R\n").unwrap();
        // The server refuses; the connection ends, and s_client with it.
        let mut rest = String::new();
        let _ = out.read_to_string(&mut rest);
        let (status, err) = finish(child);
        let _ = done.send(());
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{kind}: not ended"
        );
        assert!(err.contains("RENEGOTIATING"), "{kind}: {err}");
        assert!(!status.success(), "{kind}: s_client thinks it renegotiated");
        // Everyone else is served: the bystander, and a new client.
        echo_line(&mut other, &mut other_out, "after");
        let (status, err) = finish(other);
        let _ = other_done.send(());
        assert!(status.success(), "{kind}: {err}");
        let (mut next, mut next_out) = s_client(&words, &["-no_ign_eof"]);
        let next_done = watchdog(&next, Duration::from_secs(20));
        echo_line(&mut next, &mut next_out, "next");
        let (status, err) = finish(next);
        let _ = next_done.send(());
        assert!(status.success(), "{kind}: {err}");
        drop(server);
    }
}

per_backend!(
    curl_reuses_one_keep_alive_https_connection,
    openssl_s_client_echoes_through_tls_1_2_and_1_3,
    renegotiation_ends_that_connection_only,
);

//! The example programs, run as users run them, on every backend.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use muxloop::BackendKind;
use util::*;

fn selectors_echo(kind: BackendKind) -> ServerProcess {
    let mut cmd = Command::new(example_path("selectors_echo"));
    cmd.args(["--addr", "127.0.0.1:0", "--backend", kind.name()]);
    start_server(cmd)
}

#[test]
fn selectors_echo_serves_concurrent_clients_on_every_backend() {
    for &kind in BackendKind::available() {
        let server = selectors_echo(kind);
        assert!(
            server
                .first_line
                .ends_with(&format!("(backend {})\n", kind.name())),
            "{:?}",
            server.first_line
        );
        let bytes = echo_clients(server.addr, 50, 5, 3000);
        assert!(bytes > 50 * 5, "{kind}: {bytes} bytes");
    }
}

#[test]
fn selectors_echo_rejects_unknown_backend() {
    let out = Command::new(example_path("selectors_echo"))
        .args(["--backend", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // Refused naming the value and listing every backend, uring included.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'nope'"), "{err}");
    for kind in BackendKind::all() {
        assert!(err.contains(kind.name()), "{err}");
    }
}

#[test]
fn selectors_echo_on_select_handles_connections_beyond_fd_setsize() {
    let mut cmd = Command::new(example_path("selectors_echo"));
    cmd.args(["--addr", "127.0.0.1:0", "--backend", "select"])
        .env("RUST_LOG", "warn");
    // Start the server with fds 3..1015 taken, so its accepted
    // connections soon reach FD_SETSIZE (1024).
    // SAFETY: the closure only calls async-signal-safe functions
    // (getrlimit, setrlimit, dup) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            lim.rlim_cur = lim.rlim_max.min(4096);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            loop {
                let fd = libc::dup(2);
                if !(0..1015).contains(&fd) {
                    break;
                }
            }
            Ok(())
        });
    }
    let server = start_server(cmd);
    let mut served = Vec::new();
    let mut refused = 0;
    for i in 0..20u8 {
        let mut c = TcpStream::connect(server.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(&[i; 10]).unwrap();
        let mut buf = [0; 10];
        match c.read(&mut buf) {
            Ok(10) => {
                assert_eq!(buf, [i; 10]);
                served.push(c);
            }
            // Closed by the server: read 0 or reset.
            Ok(0) | Err(_) => refused += 1,
            Ok(n) => panic!("short echo {n}"),
        }
    }
    // Every client before the limit is still echoed.
    for (i, c) in served.iter_mut().enumerate() {
        c.write_all(b"still here").unwrap();
        let mut buf = [0; 10];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"still here", "client {i}");
    }
    if cfg!(any(target_os = "linux", target_os = "android")) {
        // The fd set grows: connections past 1024 are served too.
        assert_eq!(refused, 0, "select refused fds on Linux");
        assert_eq!(served.len(), 20);
    } else {
        // A fixed fd_set: connections past 1024 are closed with a warning,
        // and the server keeps serving the others.
        assert!(!served.is_empty(), "no client below FD_SETSIZE was served");
        assert!(refused > 0, "no client reached FD_SETSIZE");
    }
}

#[test]
fn multi_port_answers_ok_on_both_ports_on_every_backend() {
    for &kind in BackendKind::available() {
        let mut cmd = Command::new(example_path("multi_port"));
        cmd.args([
            "--ports",
            "0,0",
            "--backend",
            kind.name(),
            "--max-seconds",
            "60",
        ]);
        // The first line lists both addresses: parse it here.
        cmd.stdout(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let addrs: Vec<std::net::SocketAddr> = line
            .strip_prefix("listening on ")
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("{line:?}"))
            .split(',')
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(addrs.len(), 2, "{line:?}");
        assert!(line.contains(&format!("(backend {})", kind.name())));
        let mut clients: Vec<TcpStream> = addrs
            .iter()
            .flat_map(|a| (0..5).map(move |_| TcpStream::connect(a).unwrap()))
            .collect();
        for round in 0..3 {
            for c in &mut clients {
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                c.write_all(format!("hello {round}").as_bytes()).unwrap();
                let mut ok = [0; 2];
                c.read_exact(&mut ok).unwrap();
                assert_eq!(&ok, b"ok", "{kind}");
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn timers_example_runs_to_completion() {
    let out = Command::new(example_path("timers")).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("result Some(500000500000)"), "{text}");
    assert!(text.contains("tick 1"), "{text}");
}

/// `selectors_echo` on `kind`, or `multi_port` on one port (`--ports 0`):
/// both print `listening on ADDR (backend NAME)` first and answer a
/// two-byte message with two bytes (the echo, or `ok`).
fn two_byte_server(name: &str) -> Command {
    if let Some(model) = name.strip_prefix("io_models:") {
        let mut cmd = Command::new(example_path("io_models"));
        cmd.args(["--serve", model, "--addr", "127.0.0.1:0"]);
        return cmd;
    }
    let mut cmd = Command::new(example_path(name));
    if name == "multi_port" {
        cmd.args(["--ports", "0", "--max-seconds", "120"]);
    } else {
        cmd.args(["--addr", "127.0.0.1:0"]);
    }
    cmd
}

fn ask(c: &mut TcpStream) -> std::io::Result<()> {
    c.write_all(b"hi")?;
    let mut back = [0; 2];
    c.read_exact(&mut back)
}

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

#[test]
fn selectors_echo_returns_everything_to_a_client_that_half_closed() {
    for kind in [BackendKind::Poll, BackendKind::platform_default()] {
        let server = selectors_echo(kind);
        let mut c = connect(server.addr);
        const TOTAL: usize = 5 * 1000 * 1000;
        let data: Vec<u8> = (0..TOTAL).map(|i| (i * 13 % 251) as u8).collect();
        let mut writer = c.try_clone().unwrap();
        let sent = data.clone();
        let sender = std::thread::spawn(move || {
            writer.write_all(&sent).unwrap();
            writer.shutdown(std::net::Shutdown::Write).unwrap();
        });
        // Read late: the server holds the echo, and its EOF, meanwhile.
        std::thread::sleep(Duration::from_millis(1500));
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        sender.join().unwrap();
        assert!(
            back == data,
            "{kind}: {} of {} bytes back",
            back.len(),
            data.len()
        );
    }
}

#[test]
fn servers_shed_connections_without_spinning_or_flooding_the_log_when_out_of_fds() {
    let mut names = vec![
        "selectors_echo",
        "multi_port",
        "echo_server",
        "io_models:threads",
    ];
    let models: Vec<String> = BackendKind::available()
        .iter()
        .map(|k| format!("io_models:{k}"))
        .collect();
    names.extend(models.iter().map(String::as_str));
    for name in names {
        let mut cmd = two_byte_server(name);
        cmd.env("RUST_LOG", "warn")
            .stderr(std::process::Stdio::piped());
        with_fd_limit(&mut cmd, 48);
        let mut server = start_server(cmd);
        let log_bytes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut stderr = server.child.stderr.take().unwrap();
        let counter = log_bytes.clone();
        std::thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut buf) {
                counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let mut served = Vec::new();
        let mut shed = 0;
        for _ in 0..80 {
            let mut c = connect(server.addr);
            c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            match ask(&mut c) {
                Ok(()) => served.push(c),
                Err(_) => shed += 1,
            }
        }
        assert!(shed > 0, "{name}: the fd limit was never reached");
        assert!(served.len() >= 30, "{name}: only {} served", served.len());
        // Clients keep knocking while the server is out of fds.
        let knocking: Vec<TcpStream> = (0..20).map(|_| connect(server.addr)).collect();
        let logged = log_bytes.load(std::sync::atomic::Ordering::Relaxed);
        let cpu = cpu_percent_over(server.child.id(), Duration::from_secs(1));
        let logged = log_bytes.load(std::sync::atomic::Ordering::Relaxed) - logged;
        assert!(cpu < 30, "{name}: {cpu} % CPU while out of fds");
        assert!(logged < 16 * 1024, "{name}: {logged} bytes of log in 1 s");
        drop(knocking);
        for c in served.iter_mut().take(10) {
            ask(c).unwrap_or_else(|e| panic!("{name}: a connected client: {e}"));
        }
        // Free fds: accepting resumes.
        served.truncate(served.len() - 10);
        std::thread::sleep(Duration::from_millis(300));
        ask(&mut connect(server.addr)).unwrap_or_else(|e| panic!("{name}: after: {e}"));
    }
}

#[test]
fn servers_keep_serving_when_their_stdout_is_closed() {
    use std::io::BufRead;
    for name in ["selectors_echo", "multi_port"] {
        let mut cmd = two_byte_server(name);
        cmd.stdout(std::process::Stdio::piped())
            .stdin(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let addr: std::net::SocketAddr = line
            .strip_prefix("listening on ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{line:?}"));
        drop(out); // `| head -1`
        for _ in 0..3 {
            let mut c = connect(addr);
            ask(&mut c).unwrap_or_else(|e| panic!("{name}: {e}"));
            ask(&mut c).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(child.try_wait().unwrap().is_none(), "{name} exited");
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn selectors_echo_does_not_delay_messages_longer_than_its_reads() {
    // 1024-byte messages are read as 1000 + 24 bytes and echoed in two
    // sends; with Nagle's algorithm the second waits for the peer's delayed
    // ACK (~40 ms a round trip). 50 round trips take milliseconds without.
    let server = selectors_echo(BackendKind::platform_default());
    let mut c = connect(server.addr);
    c.set_nodelay(true).unwrap();
    let msg = [7u8; 1024];
    let started = std::time::Instant::now();
    for _ in 0..50 {
        c.write_all(&msg).unwrap();
        let mut back = [0; 1024];
        c.read_exact(&mut back).unwrap();
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "50 round trips took {took:?}"
    );
}

/// Runs an example to its end; returns (success, stdout).
fn run_example(name: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(example_path(name))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run example");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn embed_poll_serves_from_inside_a_poll_host_on_every_backend() {
    use std::io::BufRead;
    for &kind in BackendKind::available() {
        let mut child = Command::new(example_path("embed_poll"))
            .args(["--backend", kind.name(), "--seconds", "2"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        lines.read_line(&mut first).unwrap();
        assert!(
            first.ends_with(&format!("(backend {})\n", kind.name())),
            "{first:?}"
        );
        let addr = first.split_whitespace().nth(2).unwrap().parse().unwrap();
        let bytes = echo_clients(addr, 5, 10, 500);
        let mut last = String::new();
        lines.read_line(&mut last).unwrap();
        assert!(child.wait().unwrap().success(), "{kind}");
        assert!(
            last.contains(&format!(" {bytes} bytes echoed")),
            "{kind}: {last:?} ({bytes} sent)"
        );
        // The host's own fd was served too, and the loop's timer ticked.
        let fields: Vec<&str> = last.split_whitespace().collect();
        let readings: u32 = fields[3].parse().unwrap();
        assert!(readings >= 1, "{kind}: {last:?}");
        assert!(
            last.contains(" 2 ticks") || last.contains(" 1 ticks"),
            "{kind}: {last:?}"
        );
    }
}

#[test]
fn embed_tokio_echoes_everything_from_inside_tokio() {
    for &kind in BackendKind::available() {
        let (ok, out) = run_example(
            "embed_tokio",
            &[
                "--backend",
                kind.name(),
                "--clients",
                "10",
                "--messages",
                "100",
            ],
        );
        // select, poll (and the kqueue backend on its model, off the BSDs)
        // have no backend fd for tokio to watch: the example says so.
        let has_fd = muxloop::EventLoop::<()>::with_backend(kind)
            .unwrap()
            .backend_fd()
            .is_some();
        if !has_fd {
            assert!(!ok, "{kind} has no backend fd: {out}");
            continue;
        }
        assert!(ok, "{kind}: {out}");
        assert!(
            out.contains("10 tokio clients: 33000 bytes echoed"),
            "{kind}: {out}"
        );
    }
}

#[test]
fn subprocess_streams_output_and_reports_the_status() {
    for &kind in BackendKind::available() {
        let (ok, out) = run_example("subprocess", &["--backend", kind.name()]);
        assert!(ok, "{kind}: {out}");
        for i in 1..=4 {
            assert!(out.contains(&format!("child: line {i}\n")), "{kind}: {out}");
        }
        assert!(
            out.contains("child: no newline (no newline)"),
            "{kind}: {out}"
        );
        assert!(out.contains("exited with status 3 after"), "{kind}: {out}");
        assert!(out.contains(", 5 lines"), "{kind}: {out}");
    }
    let (ok, out) = run_example(
        "subprocess",
        &[
            "--timeout",
            "0.3",
            "--",
            "sh",
            "-c",
            "echo start; exec sleep 5",
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("child: start") && out.contains("killed by signal 9"),
        "{out}"
    );
}

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
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown backend"), "{err}");
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

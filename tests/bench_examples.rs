//! Smoke tests of the benchmark programs: they run, print what they
//! promise, verify what they claim, and refuse what they cannot do.

mod util;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

use muxloop::BackendKind;
use util::*;

#[test]
fn bench_prints_one_result_line_on_every_backend() {
    for &kind in BackendKind::available() {
        for (timers, remove) in [(false, false), (true, false), (false, true)] {
            let mut cmd = Command::new(example_path("bench"));
            cmd.args([
                "-b",
                kind.name(),
                "-n",
                "64",
                "-a",
                "4",
                "-w",
                "32",
                "-i",
                "3",
            ]);
            if timers {
                cmd.arg("-t");
            }
            if remove {
                cmd.args(["--rearm", "remove"]);
            }
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(stdout.lines().count(), 1, "{stdout}");
            let f = result_fields(&stdout);
            assert_eq!(f["lib"], "muxloop");
            assert_eq!(f["backend"], kind.name());
            assert_eq!(f["n"], "64");
            assert_eq!(f["t"], if timers { "1" } else { "0" });
            assert_eq!(f["iters"], "2", "the first iteration is a warm-up");
            assert_eq!(
                f.get("rearm").map(String::as_str),
                remove.then_some("remove")
            );
            for key in [
                "setup_us",
                "run_us",
                "total_us",
                "run_min_us",
                "ns_per_cb",
                "setup_ns_per_fd",
            ] {
                let v: f64 = f[key].parse().unwrap();
                assert!(v > 0.0, "{key}={v}");
            }
        }
    }
}

#[test]
fn bench_refuses_a_size_beyond_the_fd_limit() {
    let out = Command::new(example_path("bench"))
        .args(["-n", "1000000", "-i", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RLIMIT_NOFILE"), "{err}");
}

#[test]
fn compare_backends_writes_table_csv_and_svg() {
    let dir = std::env::temp_dir().join(format!("muxloop-cmp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("cmp.csv");
    let svg = dir.join("cmp.svg");
    let out = Command::new(example_path("compare_backends"))
        .args([
            "--pairs",
            "20,60",
            "--active",
            "1,5",
            "--writes",
            "10",
            "--iterations",
            "2",
        ])
        .arg("--csv")
        .arg(&csv)
        .arg("--svg")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    for kind in BackendKind::available() {
        assert!(table.contains(kind.name()), "{table}");
    }
    let csv = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(
        csv.lines().count(),
        1 + 4 * BackendKind::available().len(),
        "{csv}"
    );
    assert!(csv.lines().skip(1).all(|l| l.ends_with(",ok")), "{csv}");
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.contains("<svg") && svg.contains("per callback"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn echo_load_verifies_against_the_echo_server_and_the_peers() {
    let servers = [
        ("echo_server", vec!["--backend", "poll"]),
        ("peer_mio_echo", vec![]),
        ("peer_tokio_echo", vec![]),
    ];
    for (name, extra) in servers {
        let mut cmd = Command::new(example_path(name));
        cmd.args(["--addr", "127.0.0.1:0", "--max-seconds", "60"])
            .args(&extra);
        let server = start_server(cmd);
        let out = Command::new(example_path("echo_load"))
            .args([
                "--addr",
                &server.addr.to_string(),
                "--conns",
                "20",
                "--idle",
                "30",
            ])
            .args(["--count", "200", "--size", "300"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let f = result_fields(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(f["round_trips"], "4000", "{name}");
        assert_eq!(f["errors"], "0", "{name}");
        assert_eq!(f["idle"], "30");
    }
}

#[test]
fn echo_load_fails_on_a_corrupted_echo() {
    // A server that echoes every byte but flips one bit in the 10th.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut seen = 0usize;
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                for (i, b) in buf[..n].iter_mut().enumerate() {
                    if seen + i == 9 {
                        *b ^= 1;
                    }
                }
                seen += n;
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    let out = Command::new(example_path("echo_load"))
        .args(["--addr", &addr.to_string(), "--conns", "1", "--count", "5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("differs"), "{err}");
}

#[test]
fn io_models_servers_echo_byte_for_byte() {
    let mut models = vec!["threads".to_string(), "nonblocking".to_string()];
    models.extend(
        BackendKind::available()
            .iter()
            .map(|k| k.name().to_string()),
    );
    if BackendKind::Epoll.is_available() {
        models.push("epoll-workers".to_string());
    }
    for model in &models {
        let mut cmd = Command::new(example_path("io_models"));
        cmd.args(["--serve", model]);
        let server = start_server(cmd);
        assert!(
            server.first_line.ends_with(&format!("(model {model})\n")),
            "{:?}",
            server.first_line
        );
        // Random payloads up to 20 KB from 20 clients, every byte checked.
        let bytes = echo_clients(server.addr, 20, 5, 20_000);
        assert!(bytes > 20 * 5, "{model}: {bytes} bytes");
    }
}

#[test]
fn io_models_runs_every_model_and_writes_the_csv() {
    let dir = std::env::temp_dir().join(format!("muxloop-models-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("models.csv");
    let svg = dir.join("models.svg");
    let out = Command::new(example_path("io_models"))
        .args([
            "--connections",
            "1,4",
            "--seconds",
            "0.3",
            "--idle-seconds",
            "0.2",
        ])
        .arg("--csv")
        .arg(&csv)
        .arg("--svg")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(&csv).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some(
            "model,connections,round_trips_per_s,p50_us,p99_us,server_cpu_pct,idle_cpu_pct,server_rss_kib,server_threads"
        )
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert!(rows.iter().all(|r| r.len() == 9), "{csv}");
    let mut models = vec!["threads", "nonblocking"];
    models.extend(
        BackendKind::available()
            .iter()
            .filter(|&&k| k != BackendKind::Mio)
            .map(|k| k.name()),
    );
    if BackendKind::Epoll.is_available() {
        models.push("epoll-workers");
    }
    for model in models {
        for n in ["1", "4"] {
            let row = rows
                .iter()
                .find(|r| r[0] == model && r[1] == n)
                .unwrap_or_else(|| panic!("no row for {model} n={n}: {csv}"));
            let rt: f64 = row[2].parse().unwrap_or_else(|_| panic!("{model}: {csv}"));
            assert!(rt > 0.0, "{model} n={n}: {csv}");
            let threads: u64 = row[8].parse().unwrap();
            if model == "threads" {
                assert!(
                    threads > n.parse().unwrap(),
                    "a thread per connection: {csv}"
                );
            } else if model == "epoll-workers" {
                let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
                assert_eq!(threads, cores as u64 + 1, "a loop per core: {csv}");
            } else {
                assert_eq!(threads, 1, "{model}: {csv}");
            }
        }
    }
    // A model that cannot run keeps its rows, without numbers.
    if !BackendKind::available().iter().any(|k| k.name() == "uring") {
        assert!(csv.contains("uring,1,,,,,,,"), "{csv}");
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(table.contains("no io_uring backend"), "{table}");
    }
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("connections"),
        "not an SVG chart"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn udp_load_verifies_against_udp_echo_and_the_tokio_peer() {
    for (name, extra) in [
        ("udp_echo", vec!["--backend", "poll"]),
        ("udp_echo", vec!["--batch", "1"]),
        ("peer_tokio_udp", vec![]),
    ] {
        let mut cmd = Command::new(example_path(name));
        cmd.args(["--addr", "127.0.0.1:0"]).args(&extra);
        let server = start_server(cmd);
        let out = Command::new(example_path("udp_load"))
            .args(["--addr", &server.addr.to_string()])
            .args(["--conns", "10", "--duration", "0.3", "--size", "300"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let f = result_fields(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(f["errors"], "0", "{name}");
        assert!(f["datagrams"].parse::<u64>().unwrap() > 10, "{name}: {f:?}");
    }
}

#[test]
fn pool_latency_runs_every_job_within_the_bound() {
    for in_flight in [None, Some("1")] {
        let mut cmd = Command::new(example_path("pool_latency"));
        cmd.args(["--jobs", "5000", "--threads", "2", "--queued", "64"]);
        if let Some(n) = in_flight {
            cmd.args(["--in-flight", n]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let f = result_fields(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(f["jobs"], "5000");
        assert!(f["p99_us"].parse::<u64>().unwrap() > 0, "{f:?}");
        if in_flight.is_some() {
            assert_eq!(f["refused"], "0", "one at a time never fills the pool");
        }
    }
}

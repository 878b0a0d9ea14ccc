#!/usr/bin/env python3
"""The benchmark runner behind benches/run.sh (standard library only).

1. bench.c: examples/bench.rs on epoll against the same method written on
   libev and libevent (benches/c/bench_*.c), interleaved, medians.
2. Echo: each server (muxloop's echo_server on every backend, the plain mio
   and tokio peers, the libev and libevent C peers) pinned to CPU 0, the
   load (examples/echo_load.rs) pinned to CPU 1, interleaved rounds;
   round trips per second and server CPU time per round trip, medians, and
   ratios against the fastest peer.
3. Idle connections: 10 active clients plus 0 / 900 / 5000 idle ones
   against muxloop's echo_server on select, poll and epoll.
4. Instructions per callback (callgrind, if valgrind is installed).
5. TLS (feature tls, built into target/bench-tls): echo_server and
   http_hello with a certificate against tokio + tokio-rustls
   (examples/peer_tokio_tls.rs, the same rustls configuration on ring),
   driven by examples/tls_load.rs: requests per second, server CPU per
   request, full handshakes per second and server CPU per handshake, the
   same servers over plain TCP (the cost of TLS), and the server's memory
   per idle TLS connection.
6. Workers: echo_server on one loop, on --workers 1 and --workers 2
   (reuse-port, and an acceptor), against tokio's multi-thread runtime on
   two threads and a thread-per-connection server; the servers unpinned
   (they may use both cores), the load on CPU 1, its CPU share reported.
7. UDP: udp_echo (batches of 32, and of 1) against tokio's UdpSocket echo
   (examples/peer_tokio_udp.rs), driven by examples/udp_load.rs (1 and 50
   endpoints ping-ponging): datagrams/s, server CPU per datagram, and
   system calls per datagram (strace -c, if installed).
"""
import argparse
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EX = os.path.join(ROOT, "target", "release", "examples")
CB = os.path.join(ROOT, "target", "bench-c")
TLS_EX = os.path.join(ROOT, "target", "bench-tls", "release", "examples")
TASKSET = shutil.which("taskset")
HZ = os.sysconf("SC_CLK_TCK")


def pin(cpu, argv):
    return ([TASKSET, "-c", str(cpu)] if TASKSET else []) + argv


def result(line):
    return dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)


def run_result(argv, timeout=300):
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{argv}: exit {out.returncode}: {out.stderr.strip()[-300:]}")
    return result(lines[-1])


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class Server:
    def __init__(self, name, argv, cpu=0):
        self.name, self.argv, self.cpu = name, argv, cpu

    def __enter__(self):
        argv = self.argv if self.cpu is None else pin(self.cpu, self.argv)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        m = re.match(r"listening on (\S+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"{self.name}: unexpected first line {line!r}")
        self.addr = m.group(1).split(",")[0]
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def available(backend):
    """Whether this machine lets muxloop use `backend` (io_uring may be blocked)."""
    probe = subprocess.run([os.path.join(EX, "bench"), "-b", backend, "-n", "2", "-a", "1", "-i", "2"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return probe.returncode == 0


def uring():
    """["uring"] where io_uring works here, else [] (and say so)."""
    if available("uring"):
        return ["uring"]
    print("(the uring backend is not available here: left out)")
    return []


def servers():
    echo = os.path.join(EX, "echo_server")
    out = [(f"muxloop-{b}", [echo, "--addr", "127.0.0.1:0", "--backend", b, "--max-seconds", "600"])
           for b in ["epoll", *uring(), "mio", "poll", "select"]]
    out += [
        ("mio (peer)", [os.path.join(EX, "peer_mio_echo"), "--addr", "127.0.0.1:0", "--max-seconds", "600"]),
        ("tokio (peer)", [os.path.join(EX, "peer_tokio_echo"), "--addr", "127.0.0.1:0", "--max-seconds", "600"]),
        ("libev (peer)", [os.path.join(CB, "echo_libev"), "0", "600"]),
        ("libevent (peer)", [os.path.join(CB, "echo_libevent"), "0", "600"]),
    ]
    return out


def table(title, header, rows):
    print(f"\n{title}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    print(fmt.format(*header))
    for r in rows:
        print(fmt.format(*r))


def bench_c(args):
    configs = [["-n", "1000", "-a", "100", "-w", "100"],
               ["-n", "1000", "-a", "100", "-w", "1000"],
               ["-n", "9900", "-a", "100", "-w", "1000"],
               ["-n", "1000", "-a", "100", "-w", "100", "-t"]]
    progs = [("muxloop-epoll", [os.path.join(EX, "bench"), "-b", "epoll"]),
             ("muxloop-epoll remove+add", [os.path.join(EX, "bench"), "-b", "epoll", "--rearm", "remove"])]
    for b in uring():
        progs += [(f"muxloop-{b}", [os.path.join(EX, "bench"), "-b", b]),
                  (f"muxloop-{b} remove+add", [os.path.join(EX, "bench"), "-b", b, "--rearm", "remove"])]
    progs += [("libev", [os.path.join(CB, "bench_libev")]),
             ("libevent", [os.path.join(CB, "bench_libevent")])]
    rows = []
    for cfg in configs:
        samples = {name: {"run": [], "setup": [], "user": []} for name, _ in progs}
        for _ in range(args.rounds):
            for name, argv in progs:
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                r = run_result(pin(0, argv + cfg + ["-i", "15"]))
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                user = after.ru_utime - before.ru_utime
                system = after.ru_stime - before.ru_stime
                samples[name]["run"].append(float(r["run_us"]))
                samples[name]["setup"].append(float(r["setup_us"]))
                samples[name]["user"].append((user, system))
        base_run = statistics.median(samples["libev"]["run"])
        base_setup = statistics.median(samples["libev"]["setup"])
        for name, _ in progs:
            run = statistics.median(samples[name]["run"])
            setup = statistics.median(samples[name]["setup"])
            total = statistics.median(r + s for r, s in zip(samples[name]["run"], samples[name]["setup"]))
            base_total = statistics.median(r + s for r, s in zip(samples["libev"]["run"], samples["libev"]["setup"]))
            # Summed over the rounds: the kernel accounts CPU time in ticks,
            # too coarse for one short run.
            user = sum(u for u, _ in samples[name]["user"])
            user /= max(user + sum(k for _, k in samples[name]["user"]), 1e-9)
            rows.append((" ".join(cfg), name, f"{run:.0f}", f"{run / base_run:.2f}x",
                         f"{setup:.0f}", f"{setup / base_setup:.2f}x", f"{total / base_total:.2f}x",
                         f"{100 * user:.0f}%"))
    table(f"bench.c method, medians of {args.rounds} interleaved rounds (each a median of 14 iterations); "
          "user: the share of the process's CPU time spent in user space over all rounds (the rest is the kernel's)",
          ("config", "library", "run us", "vs libev", "setup us", "vs libev", "total vs libev", "user"), rows)


def echo(args):
    results = {}
    for rnd in range(args.rounds):
        for name, argv in servers():
            with Server(name, argv) as srv:
                before = cpu_ticks(srv.proc.pid)
                r = run_result(pin(1, [os.path.join(EX, "echo_load"), "--addr", srv.addr,
                                       "--conns", str(args.conns), "--duration", str(args.seconds)]))
                used = cpu_ticks(srv.proc.pid) - before
            rt = int(r["round_trips"])
            cpu_ns = used / HZ * 1e9 / max(rt, 1)
            results.setdefault(name, []).append((float(r["rt_per_s"]), cpu_ns, int(r["p99_us"])))
            print(f"round {rnd + 1}/{args.rounds} {name:>16}: {float(r['rt_per_s']):>9.0f} rt/s, "
                  f"server CPU {cpu_ns:>6.0f} ns/rt, p99 {r['p99_us']} us", file=sys.stderr)
    med = {n: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v),
               statistics.median(x[2] for x in v)) for n, v in results.items()}
    peers = [n for n in med if "peer" in n]
    best_rt = max(med[n][0] for n in peers)
    best_cpu = min(med[n][1] for n in peers)
    rows = [(n, f"{rt:.0f}", f"{rt / best_rt:.2f}x", f"{cpu:.0f}", f"{cpu / best_cpu:.2f}x", p99)
            for n, (rt, cpu, p99) in sorted(med.items(), key=lambda kv: kv[1][1])]
    table(f"echo, {args.conns} connections x 64-byte ping-pong, {args.seconds} s, medians of {args.rounds} "
          f"interleaved rounds (server on CPU 0, load on CPU 1); ratios vs the best peer",
          ("server", "rt/s", "vs best", "CPU ns/rt", "vs best", "p99 us"), rows)


def idle(args):
    rows = []
    echo = os.path.join(EX, "echo_server")
    for backend in ["epoll", *uring(), "poll", "select"]:
        row = [backend]
        base = None
        for idle_n in (0, 900, 5000):
            samples = []
            for _ in range(args.rounds):
                with Server(backend, [echo, "--addr", "127.0.0.1:0", "--backend", backend,
                                      "--max-seconds", "600"]) as srv:
                    r = run_result(pin(1, [os.path.join(EX, "echo_load"), "--addr", srv.addr,
                                           "--conns", "10", "--idle", str(idle_n), "--count", "3000"]))
                samples.append(float(r["rt_per_s"]))
            rt = statistics.median(samples)
            base = base or rt
            row.append(f"{rt:.0f} ({rt / base:.2f})")
        rows.append(row)
    table(f"idle connections: 10 active clients, 64-byte ping-pong, rt/s (relative to 0 idle), "
          f"medians of {args.rounds}", ("backend", "0 idle", "900 idle", "5000 idle"), rows)


def instructions(args):
    if not shutil.which("valgrind"):
        print("\n(valgrind not installed: instruction counts skipped)")
        return
    def refs(argv, tool="callgrind", only=None):
        """User-space instructions (callgrind), or D1 misses (cachegrind)."""
        if tool == "callgrind":
            opts = ["--tool=callgrind", "--callgrind-out-file=/dev/null"]
            opts += [f"--toggle-collect={only}"] if only else []
            pattern = r"refs:\s+([\d,]+)"
        else:
            opts = ["--tool=cachegrind", "--cache-sim=yes", "--cachegrind-out-file=/dev/null"]
            pattern = r"D1  misses:\s+([\d,]+)"
        out = subprocess.run(["valgrind"] + opts + argv, capture_output=True, text=True, timeout=600)
        return int(re.search(pattern, out.stderr).group(1).replace(",", ""))
    def size(n, w, i, a=100):
        return ["-n", str(n), "-a", str(a), "-w", str(w), "-i", str(i)]
    def per_callback(argv, i=5, tool="callgrind", only=None):
        """Per extra callback, w 1000 -> 11000: 10,000 more per iteration."""
        lo = refs(argv + size(1000, 1000, i), tool, only)
        hi = refs(argv + size(1000, 11000, i), tool, only)
        return hi - lo, (hi - lo) / (10000 * i)
    def per_callback_steady(argv):
        """Iterations 2-6 (-i 5: the first is the warm-up), and iterations
        7-26 alone (the -i 25 count less the -i 5 one)."""
        early, early_each = per_callback(argv, 5)
        late, _ = per_callback(argv, 25)
        return early_each, (late - early) / (10000 * 20)
    def per_lone_callback(argv):
        """Per extra callback with one ready fd per wait (a=1, w 1000 ->
        2000, iterations 2-6): the callback plus a whole iteration."""
        lo = refs(argv + size(1000, 1000, 5, a=1))
        hi = refs(argv + size(1000, 2000, 5, a=1))
        return (hi - lo) / (1000 * 5)
    def per_fd(argv):
        """Per re-registered watcher: n 1000 -> 9000 pairs, so 8,000 more
        watchers re-armed per iteration, over iterations 7-26 alone."""
        d = {(n, i): refs(argv + size(n, 1000, i)) for n in (1000, 9000) for i in (5, 25)}
        return ((d[9000, 25] - d[1000, 25]) - (d[9000, 5] - d[1000, 5])) / (8000 * 20)
    libev = [os.path.join(CB, "bench_libev")]
    progs = [("muxloop-epoll", [os.path.join(EX, "bench"), "-b", "epoll"], "*Entry*Dispatch*dispatch*"),
             ("libev", libev, "read_cb")]
    rows = []
    for name, argv, cb in progs:
        early, steady = per_callback_steady(argv)
        _, callback = per_callback(argv, 5, only=cb)
        _, misses = per_callback(argv, 5, tool="cachegrind")
        rows.append((name, f"{early:.0f}", f"{steady:.0f}", f"{callback:.0f}", f"{early - callback:.0f}",
                     f"{misses:.2f}", f"{per_fd(argv):.0f}", f"{per_lone_callback(argv):.0f}"))
    for name, argv in (("muxloop-poll", [os.path.join(EX, "bench"), "-b", "poll"]),
                       ("libev-poll", libev + ["-b", "poll"])):
        early, steady = per_callback_steady(argv)
        rows.append((name, f"{early:.0f}", f"{steady:.0f}", "", "", "", "", ""))
    # The callback: muxloop's closure runs inside Entry::dispatch (its only
    # caller frame); libev's is read_cb. Both include their read and write.
    table("user-space instructions per extra callback (callgrind; n=1000 a=100, w 1000 -> 11000; "
          "iterations 2-6 and 7-26), D1 misses per callback (cachegrind, iterations 2-6), "
          "instructions per re-registered watcher (n 1000 -> 9000, iterations 7-26), "
          "per callback with one ready fd per wait (a=1, w 1000 -> 2000: a whole iteration each)",
          ("library", "per callback, it. 2-6", "steady", "in the callback", "in the loop",
           "D1 misses", "per re-armed watcher", "one fd per wait"), rows)

    # The echo servers: the same count is deterministic enough to compare,
    # where CPU time per round trip is noisy. Two load sizes, so start-up
    # and shutdown cancel out.
    def echo_irefs(argv, count):
        proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"] + argv,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        m = re.match(r"listening on (\S+)", line)
        if not m:
            proc.kill()
            raise RuntimeError(f"{argv[0]}: unexpected first line {line!r}")
        run_result([os.path.join(EX, "echo_load"), "--addr", m.group(1).split(",")[0],
                    "--conns", "100", "--count", str(count)])
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        return int(re.search(r"refs:\s+([\d,]+)", err).group(1).replace(",", ""))
    rows = []
    for name, argv in servers():
        # (Not uring: valgrind does not follow io_uring, whose waits can
        # then hang.)
        if name.endswith(("-poll", "-select", "-uring")):
            continue
        lo = echo_irefs(argv, 100)
        hi = echo_irefs(argv, 400)
        rows.append((name, f"{(hi - lo) / (300 * 100):.0f}"))
    rows.sort(key=lambda r: int(r[1]))
    table("echo servers: user-space instructions per round trip (callgrind; 100 connections, "
          "100 -> 400 round trips each)", ("server", "instructions"), rows)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def tls(args):
    cert_dir = os.path.join(ROOT, "target", "bench-tls", "cert")
    subprocess.run([os.path.join(TLS_EX, "make_cert"), "--dir", cert_dir], check=True,
                   stdout=subprocess.DEVNULL)
    cert, key = os.path.join(cert_dir, "cert.pem"), os.path.join(cert_dir, "key.pem")
    creds = ["--tls-cert", cert, "--tls-key", key]
    echo_srv, http_srv = os.path.join(TLS_EX, "echo_server"), os.path.join(TLS_EX, "http_hello")
    peer = os.path.join(TLS_EX, "peer_tokio_tls")
    common = ["--addr", "127.0.0.1:0", "--max-seconds", "600"]
    backends = ["epoll", *uring()]
    # (row name, load mode, server argv, TLS?)
    cases = []
    for mode, srv, peer_mode in (("echo", echo_srv, "echo"), ("http", http_srv, "http")):
        for b in backends:
            cases.append((f"{mode}: muxloop-{b} TLS", mode, [srv, "--backend", b, *common, *creds], True))
        cases.append((f"{mode}: tokio-rustls (peer)", mode,
                      [peer, "--mode", peer_mode, *common, *creds], True))
        cases.append((f"{mode}: muxloop-epoll plain", mode, [srv, "--backend", "epoll", *common], False))
    for b in backends:
        cases.append((f"handshake: muxloop-{b}", "handshake", [echo_srv, "--backend", b, *common, *creds], True))
    cases.append(("handshake: tokio-rustls (peer)", "handshake", [peer, "--mode", "echo", *common, *creds], True))
    results = {}
    for rnd in range(args.rounds):
        for name, mode, argv, secure in cases:
            with Server(name, argv) as srv:
                load = [os.path.join(TLS_EX, "tls_load"), "--addr", srv.addr, "--mode", mode,
                        "--conns", str(args.conns if mode != "handshake" else 20),
                        "--duration", str(args.seconds)]
                load += ["--cacert", cert] if secure else ["--plain"]
                before = cpu_ticks(srv.proc.pid)
                r = run_result(pin(1, load))
                used = cpu_ticks(srv.proc.pid) - before
            ops = int(r["ops"])
            cpu_us = used / HZ * 1e6 / max(ops, 1)
            results.setdefault(name, []).append((float(r["ops_per_s"]), cpu_us, int(r["p99_us"])))
            print(f"round {rnd + 1}/{args.rounds} {name:>32}: {float(r['ops_per_s']):>9.0f}/s, "
                  f"server CPU {cpu_us:>7.2f} us/op, p99 {r['p99_us']} us", file=sys.stderr)
    med = {n: tuple(statistics.median(x[i] for x in v) for i in range(3)) for n, v in results.items()}
    rows = []
    for name, *_ in cases:
        group = name.split(":")[0]
        ref = med[f"{group}: tokio-rustls (peer)"]
        ops, cpu, p99 = med[name]
        rows.append((name, f"{ops:.0f}", f"{ops / ref[0]:.2f}x", f"{cpu:.2f}", f"{cpu / ref[1]:.2f}x", f"{p99:.0f}"))
    table(f"TLS: echo ({args.conns} connections x 64-byte ping-pong), HTTPS hello ({args.conns} keep-alive "
          f"connections, GET / one at a time), full handshakes (20 connections, each: connect, TLS 1.3 "
          f"handshake without resumption, one 64-byte echo, close); {args.seconds} s, medians of "
          f"{args.rounds} interleaved rounds, server on CPU 0, load on CPU 1; ratios vs tokio-rustls",
          ("server", "per s", "vs tokio-rustls", "CPU us/op", "vs tokio-rustls", "p99 us"), rows)

    # Memory: the server's RSS with N idle connections up, less before.
    n = args.idle_tls
    rows = []
    for name, argv, secure in (("muxloop-epoll TLS", [echo_srv, "--backend", "epoll", *common, *creds], True),
                               ("tokio-rustls (peer)", [peer, "--mode", "echo", *common, *creds], True),
                               ("muxloop-epoll plain", [echo_srv, "--backend", "epoll", *common], False)):
        samples = []
        for _ in range(max(1, args.rounds // 2)):
            with Server(name, argv) as srv:
                time.sleep(0.2)
                before = rss_kib(srv.proc.pid)
                load = [os.path.join(TLS_EX, "tls_load"), "--addr", srv.addr, "--mode", "idle",
                        "--conns", str(n), "--hold", "30"]
                load += ["--cacert", cert] if secure else ["--plain"]
                proc = subprocess.Popen(pin(1, load), stdout=subprocess.PIPE, text=True)
                line = proc.stdout.readline()
                if not line.startswith("READY"):
                    proc.kill()
                    raise RuntimeError(f"{name}: idle load said {line!r}")
                time.sleep(0.5)
                after = rss_kib(srv.proc.pid)
                proc.kill()
                proc.wait()
            samples.append((after - before) / n)
        rows.append((name, f"{statistics.median(samples):.1f}"))
    ref = float(rows[1][1])
    rows = [(r[0], r[1], f"{float(r[1]) / ref:.2f}x") for r in rows]
    table(f"memory: server RSS per idle connection ({n} connections up, each verified with one echo), KiB, "
          f"median of {max(1, args.rounds // 2)}", ("server", "KiB/conn", "vs tokio-rustls"), rows)


def workers(args):
    echo = os.path.join(EX, "echo_server")
    common = ["--addr", "127.0.0.1:0", "--max-seconds", "600", "--backend", "epoll"]
    cases = [
        ("muxloop, one loop", [echo, *common]),
        ("muxloop --workers 1", [echo, *common, "--workers", "1"]),
        ("muxloop --workers 2 (reuse-port)", [echo, *common, "--workers", "2", "--balance", "reuseport"]),
        ("muxloop --workers 2 (acceptor)", [echo, *common, "--workers", "2", "--balance", "acceptor"]),
        ("tokio multi-thread, 2 threads", [os.path.join(EX, "peer_tokio_echo"), "--addr", "127.0.0.1:0",
                                           "--max-seconds", "600", "--threads", "2"]),
        ("thread per connection", [os.path.join(EX, "io_models"), "--serve", "threads", "--addr", "127.0.0.1:0"]),
    ]
    results = {}
    for rnd in range(args.rounds):
        for name, argv in cases:
            with Server(name, argv, cpu=None) as srv:
                before_srv = cpu_ticks(srv.proc.pid)
                r = run_result(pin(1, [os.path.join(EX, "echo_load"), "--addr", srv.addr,
                                       "--conns", str(args.conns), "--duration", str(args.seconds)]))
                used = cpu_ticks(srv.proc.pid) - before_srv
            rt = int(r["round_trips"])
            cpu_ns = used / HZ * 1e9 / max(rt, 1)
            load = float(r["cpu_s"]) / float(r["secs"])
            results.setdefault(name, []).append((float(r["rt_per_s"]), cpu_ns, load, int(r["p99_us"])))
            print(f"round {rnd + 1}/{args.rounds} {name:>34}: {float(r['rt_per_s']):>9.0f} rt/s, "
                  f"server CPU {cpu_ns:>6.0f} ns/rt, load {100 * load:.0f} % of a core", file=sys.stderr)
    med = {n: tuple(statistics.median(x[i] for x in v) for i in range(4)) for n, v in results.items()}
    base = med["muxloop --workers 1"]
    rows = [(n, f"{rt:.0f}", f"{rt / base[0]:.2f}x", f"{cpu:.0f}", f"{cpu / base[1]:.2f}x",
             f"{100 * load:.0f} %", f"{p99:.0f}") for n, (rt, cpu, load, p99) in
            ((n, med[n]) for n, _ in cases)]
    table(f"workers: echo, {args.conns} connections x 64-byte ping-pong, {args.seconds} s, medians of "
          f"{args.rounds} interleaved rounds; servers unpinned ({os.cpu_count()} CPUs), the load "
          f"(one thread) on CPU 1; ratios vs --workers 1",
          ("server", "rt/s", "vs 1 worker", "CPU ns/rt", "vs 1 worker", "load CPU", "p99 us"), rows)


def udp(args):
    servers = [
        ("muxloop udp_echo, batch 32", [os.path.join(EX, "udp_echo"), "--addr", "127.0.0.1:0", "--backend", "epoll"]),
        ("muxloop udp_echo, batch 1", [os.path.join(EX, "udp_echo"), "--addr", "127.0.0.1:0", "--backend", "epoll",
                                       "--batch", "1"]),
        ("tokio UdpSocket (peer)", [os.path.join(EX, "peer_tokio_udp"), "--addr", "127.0.0.1:0"]),
    ]
    rows = []
    for conns in (1, 50):
        results = {}
        for rnd in range(args.rounds):
            for name, argv in servers:
                with Server(name, argv) as srv:
                    before = cpu_ticks(srv.proc.pid)
                    r = run_result(pin(1, [os.path.join(EX, "udp_load"), "--addr", srv.addr,
                                           "--conns", str(conns), "--duration", str(args.seconds)]))
                    used = cpu_ticks(srv.proc.pid) - before
                n = int(r["datagrams"])
                cpu_ns = used / HZ * 1e9 / max(n, 1)
                load = float(r["cpu_s"]) / float(r["secs"])
                results.setdefault(name, []).append((float(r["dg_per_s"]), cpu_ns, load))
                print(f"round {rnd + 1}/{args.rounds} {conns:>2} endpoints {name:>28}: "
                      f"{float(r['dg_per_s']):>9.0f} dg/s, server CPU {cpu_ns:>5.0f} ns/dg, "
                      f"load {100 * load:.0f} %", file=sys.stderr)
        med = {n: tuple(statistics.median(x[i] for x in v) for i in range(3)) for n, v in results.items()}
        ref = med["tokio UdpSocket (peer)"]
        for name, _ in servers:
            dg, cpu, load = med[name]
            rows.append((conns, name, f"{dg:.0f}", f"{dg / ref[0]:.2f}x", f"{cpu:.0f}", f"{cpu / ref[1]:.2f}x",
                         f"{100 * load:.0f} %"))
    table(f"UDP echo, 64-byte datagrams ping-pong, {args.seconds} s, medians of {args.rounds} interleaved rounds "
          f"(server on CPU 0, load on CPU 1); ratios vs tokio",
          ("endpoints", "server", "dg/s", "vs tokio", "CPU ns/dg", "vs tokio", "load CPU"), rows)
    if not shutil.which("strace"):
        print("\n(strace not installed: system calls per datagram skipped)")
        return
    rows = []
    for name, argv in servers:
        out = os.path.join(ROOT, "target", "udp-strace.txt")
        with Server(name, ["strace", "-f", "-c", "-o", out] + argv, cpu=None) as srv:
            r = run_result(pin(1, [os.path.join(EX, "udp_load"), "--addr", srv.addr,
                                   "--conns", "50", "--duration", "1"]))
            # The server (strace's child) stops on SIGTERM; strace then
            # writes its counts.
            subprocess.run(["pkill", "-TERM", "-P", str(srv.proc.pid)], check=False)
            try:
                srv.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        n = int(r["datagrams"])
        calls = {}
        with open(out) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 5 and parts[-1].isidentifier() and parts[-1] != "total" and parts[3].isdigit():
                    calls[parts[-1]] = int(parts[3])
        total = sum(calls.values())
        top = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1])[:4])
        rows.append((name, n, f"{total / n:.2f}", top))
    table("UDP echo under strace -c -f (50 endpoints, 1 s): system calls per datagram echoed",
          ("server", "datagrams", "syscalls/dg", "most frequent, per datagram"), rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--conns", type=int, default=100)
    ap.add_argument("--idle-tls", type=int, default=10000, metavar="N",
                    help="idle TLS connections for the memory table (default 10000)")
    ap.add_argument("--quick", action="store_true", help="1 round, 1 s: a smoke run")
    parts = ("bench", "echo", "idle", "instructions", "tls", "workers", "udp")
    ap.add_argument("--only", type=lambda v: v.split(","), metavar="PART[,PART...]",
                    help=f"run only these parts, of: {', '.join(parts)}")
    args = ap.parse_args()
    for part in args.only or ():
        if part not in parts:
            ap.error(f"--only: unknown part {part!r} (one of: {', '.join(parts)})")
    if args.quick:
        args.rounds, args.seconds = 1, 1.0
    # The servers and loads inherit it: thousands of idle connections.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"machine: {os.cpu_count()} CPUs, {os.uname().release}; pinning: {'taskset' if TASKSET else 'none'}")
    t = time.time()
    for name, fn in (("bench", bench_c), ("echo", echo), ("idle", idle), ("instructions", instructions),
                     ("tls", tls), ("workers", workers), ("udp", udp)):
        if args.only is None or name in args.only:
            fn(args)
    print(f"\ntotal {time.time() - t:.0f} s")


if __name__ == "__main__":
    main()

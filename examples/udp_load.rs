//! A UDP load generator on `muxloop::stream::datagram`: N connected
//! endpoints, each sending a datagram and waiting for its echo before the
//! next (one client "as fast as the server answers" with `--conns 1`),
//! every byte checked. Reports datagrams per second and latency.
//!
//! ```text
//! cargo run --release --example udp_echo -- --addr 127.0.0.1:1236 &
//! cargo run --release --example udp_load -- --addr 127.0.0.1:1236 --conns 50 --duration 5
//! ```
//!
//! The last line is machine-readable:
//! `RESULT udp_load conns=… size=… datagrams=… secs=… dg_per_s=… p50_us=… p99_us=… lost=… errors=… cpu_s=…`

#[path = "common/cli.rs"]
mod cli;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use muxloop::stream::Addr;
use muxloop::stream::datagram::{self, DatagramOptions, DatagramProtocol, DatagramTransport};
use muxloop::{BackendKind, EventLoop};

/// UDP echo ping-pong load.
#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:1236")]
    addr: SocketAddr,
    /// Endpoints, each with one datagram in flight.
    #[arg(long, default_value_t = 50)]
    conns: usize,
    /// Datagram size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    #[arg(long, default_value_t = BackendKind::platform_default(), value_parser = cli::backend_parser())]
    backend: BackendKind,
}

struct Load {
    size: usize,
    deadline: Instant,
    hist: Histogram<u64>,
    datagrams: u64,
    errors: u64,
    finished: usize,
}

struct Pinger {
    id: usize,
    k: u64,
    msg: Vec<u8>,
    sent_at: Instant,
}

impl Pinger {
    fn next(&mut self, t: &mut DatagramTransport<'_, Load>, size: usize) {
        self.msg.clear();
        let (id, k) = (self.id as u64, self.k);
        self.msg
            .extend((0..size).map(|i| (id * 31 + k * 17 + i as u64 * 7) as u8));
        self.sent_at = Instant::now();
        if let Err(e) = t.send(&self.msg) {
            cli::tell!("udp_load: send: {e}");
        }
    }
}

impl DatagramProtocol<Load> for Pinger {
    fn connection_made(&mut self, t: &mut DatagramTransport<'_, Load>, st: &mut Load) {
        self.next(t, st.size);
    }

    fn datagram_received(
        &mut self,
        t: &mut DatagramTransport<'_, Load>,
        data: &[u8],
        _: Addr,
        st: &mut Load,
    ) {
        if data != self.msg {
            cli::tell!(
                "udp_load: endpoint {}: datagram {} differs",
                self.id,
                self.k
            );
            st.errors += 1;
            st.finished += 1;
            t.close();
            return;
        }
        let us = self.sent_at.elapsed().as_micros().max(1) as u64;
        let _ = st.hist.record(us.min(st.hist.high()));
        st.datagrams += 1;
        self.k += 1;
        if Instant::now() >= st.deadline {
            st.finished += 1;
            t.close();
        } else {
            self.next(t, st.size);
        }
    }

    fn error_received(&mut self, _: &mut DatagramTransport<'_, Load>, e: io::Error, st: &mut Load) {
        cli::tell!("udp_load: endpoint {}: {e}", self.id);
        st.errors += 1;
    }
}

fn main() -> io::Result<()> {
    cli::guard_stdio();
    env_logger::init();
    let args = Args::parse();
    let mut lp = EventLoop::<Load>::with_backend(args.backend)?;
    let start = Instant::now();
    let mut st = Load {
        size: args.size,
        deadline: start + Duration::from_secs_f64(args.duration),
        hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
        datagrams: 0,
        errors: 0,
        finished: 0,
    };
    let bind: SocketAddr = if args.addr.is_ipv6() {
        "[::1]:0".parse().expect("an address")
    } else {
        "127.0.0.1:0".parse().expect("an address")
    };
    for id in 0..args.conns {
        let mut options = DatagramOptions::default();
        options.connect = Some(args.addr);
        let p = Pinger {
            id,
            k: 0,
            msg: Vec::with_capacity(args.size),
            sent_at: start,
        };
        datagram::open(&mut lp, bind, options, p)?;
    }
    // A datagram lost on the way stalls its endpoint: the run still ends.
    let hard = Duration::from_secs_f64(args.duration + 2.0);
    while st.finished < args.conns && start.elapsed() < hard {
        lp.run_once(Some(Duration::from_millis(100)), &mut st)?;
    }
    let secs = start
        .elapsed()
        .as_secs_f64()
        .min(args.duration.max(0.001) + 0.5);
    let lost = args.conns - st.finished;
    let h = &st.hist;
    cli::say!(
        "RESULT udp_load conns={} size={} datagrams={} secs={secs:.3} dg_per_s={:.0} p50_us={} p99_us={} lost={lost} errors={} cpu_s={:.3}",
        args.conns,
        args.size,
        st.datagrams,
        st.datagrams as f64 / secs,
        h.value_at_quantile(0.50),
        h.value_at_quantile(0.99),
        st.errors,
        cli::own_cpu_seconds(),
    );
    if st.errors > 0 {
        std::process::exit(1);
    }
    Ok(())
}

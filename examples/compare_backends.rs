//! select vs poll vs epoll (vs kqueue) vs mio, side by side: runs the
//! bench.c workload (see `examples/bench.rs`) for every available backend
//! over a sweep of fd counts and active counts, and prints a table of the
//! cost per callback and of setup per fd. `--csv` writes the numbers,
//! `--svg` a log-scale chart of µs per callback against fds.
//!
//! ```text
//! cargo run --release --example compare_backends -- --csv cmp.csv --svg cmp.svg
//! ```
//!
//! What it shows: select and poll hand the kernel every watched fd on every
//! wait, so their cost per callback grows with the number of fds even when
//! one is active; epoll, kqueue and mio pay per ready fd. The run is bounded
//! (`--max-seconds`, 120 by default): steps past the budget are skipped.

#[path = "common/bench_core.rs"]
mod bench_core;
#[path = "common/cli.rs"]
mod cli;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use muxloop::BackendKind;

/// Compare every backend on the bench.c workload.
#[derive(Parser)]
struct Args {
    /// Backends to compare (default: every one available here).
    #[arg(long, value_delimiter = ',')]
    backends: Vec<BackendKind>,
    /// Socket pair counts to sweep (2 fds each).
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000,9900")]
    pairs: Vec<usize>,
    /// Active counts to sweep.
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    active: Vec<usize>,
    /// Writes per iteration (callbacks = active + writes).
    #[arg(long, default_value_t = 100)]
    writes: usize,
    /// Iterations per step, the first a warm-up.
    #[arg(long, default_value_t = 6)]
    iterations: usize,
    /// Time budget; steps that would start after it are skipped.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// Write the results as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write a log-scale chart of µs per callback against fds (SVG).
    #[arg(long)]
    svg: Option<PathBuf>,
}

struct Row {
    backend: BackendKind,
    pairs: usize,
    active: usize,
    outcome: Result<bench_core::Summary, String>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    cli::guard_stdio();
    env_logger::init();
    let args = Args::parse();
    let backends = if args.backends.is_empty() {
        BackendKind::available().to_vec()
    } else {
        args.backends.clone()
    };
    let budget = Duration::from_secs(args.max_seconds);
    let start = Instant::now();
    let steps = backends.len() * args.pairs.len() * args.active.len();
    let mut rows = Vec::new();
    let mut step = 0;
    for &pairs in &args.pairs {
        for &active in &args.active {
            for &backend in &backends {
                step += 1;
                if start.elapsed() > budget {
                    cli::tell!(
                        "[{step}/{steps}] {backend} n={pairs} a={active}: skipped (time budget)"
                    );
                    continue;
                }
                let cfg = bench_core::Config {
                    backend,
                    pairs,
                    active: active.min(pairs),
                    writes: args.writes,
                    iterations: args.iterations,
                    timers: false,
                    rearm: bench_core::Rearm::Pause,
                };
                let t = Instant::now();
                let outcome = bench_core::run(cfg, |_, _| {}).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::InvalidInput
                        && e.to_string().contains("FD_SETSIZE")
                    {
                        "refused: fd >= FD_SETSIZE".to_string()
                    } else {
                        e.to_string()
                    }
                });
                match &outcome {
                    Ok(s) => cli::tell!(
                        "[{step}/{steps}] {backend:>6} n={pairs:>5} a={active:>3}: {:>8.0} ns/callback, setup {:>6.0} ns/fd ({:.1?})",
                        s.ns_per_cb,
                        s.setup_ns_per_fd,
                        t.elapsed()
                    ),
                    Err(e) => {
                        cli::tell!("[{step}/{steps}] {backend:>6} n={pairs:>5} a={active:>3}: {e}")
                    }
                }
                rows.push(Row {
                    backend,
                    pairs,
                    active: cfg.active,
                    outcome,
                });
            }
        }
    }
    print!("{}", table(&rows, &backends, &args));
    if let Some(path) = &args.csv {
        std::fs::write(path, csv(&rows))?;
        cli::tell!("wrote {}", path.display());
    }
    if let Some(path) = &args.svg {
        chart(&rows, &backends, path)?;
        cli::tell!("wrote {}", path.display());
    }
    Ok(())
}

fn table(rows: &[Row], backends: &[BackendKind], args: &Args) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nbench.c workload, {} writes per iteration, medians of {} iterations; ns per callback (setup ns per fd)",
        args.writes,
        args.iterations - 1
    );
    let _ = write!(out, "{:>7} {:>6} {:>6}", "pairs", "fds", "active");
    for b in backends {
        let _ = write!(out, " {:>22}", b.name());
    }
    let _ = writeln!(out);
    for &pairs in &args.pairs {
        for &active in &args.active {
            let _ = write!(
                out,
                "{:>7} {:>6} {:>6}",
                pairs,
                2 * pairs,
                active.min(pairs)
            );
            for b in backends {
                let cell = rows
                    .iter()
                    .find(|r| r.backend == *b && r.pairs == pairs && r.active == active.min(pairs))
                    .map(|r| match &r.outcome {
                        Ok(s) => format!("{:.0} ({:.0})", s.ns_per_cb, s.setup_ns_per_fd),
                        Err(e) if e.starts_with("refused") => "refused".to_string(),
                        Err(_) => "error".to_string(),
                    })
                    .unwrap_or_else(|| "skipped".to_string());
                let _ = write!(out, " {cell:>22}");
            }
            let _ = writeln!(out);
        }
    }
    out
}

fn csv(rows: &[Row]) -> String {
    let mut out =
        String::from("backend,pairs,fds,active,ns_per_cb,setup_ns_per_fd,run_us,setup_us,status\n");
    for r in rows {
        match &r.outcome {
            Ok(s) => {
                let _ = writeln!(
                    out,
                    "{},{},{},{},{:.1},{:.1},{:.1},{:.1},ok",
                    r.backend,
                    r.pairs,
                    2 * r.pairs,
                    r.active,
                    s.ns_per_cb,
                    s.setup_ns_per_fd,
                    s.run_us,
                    s.setup_us
                );
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "{},{},{},{},,,,,\"{}\"",
                    r.backend,
                    r.pairs,
                    2 * r.pairs,
                    r.active,
                    e
                );
            }
        }
    }
    out
}

fn chart(
    rows: &[Row],
    backends: &[BackendKind],
    path: &PathBuf,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let ok: Vec<(&Row, f64)> = rows
        .iter()
        .filter_map(|r| r.outcome.as_ref().ok().map(|s| (r, s.ns_per_cb / 1000.0)))
        .collect();
    if ok.is_empty() {
        return Err("no successful runs to chart".into());
    }
    let (min_fds, max_fds) = ok.iter().fold((f64::MAX, 0f64), |(lo, hi), (r, _)| {
        let fds = 2.0 * r.pairs as f64;
        (lo.min(fds), hi.max(fds))
    });
    let (min_us, max_us) = ok.iter().fold((f64::MAX, 0f64), |(lo, hi), (_, us)| {
        (lo.min(*us), hi.max(*us))
    });
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "µs per callback vs watched fds (bench.c workload)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (min_fds * 0.8..max_fds * 1.25).log_scale(),
            (min_us * 0.8..max_us * 1.25).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("fds watched (2 per socket pair)")
        .y_desc("µs per callback")
        .draw()?;
    let actives: Vec<usize> = {
        let mut v: Vec<usize> = rows.iter().map(|r| r.active).collect();
        v.sort();
        v.dedup();
        v
    };
    for (bi, backend) in backends.iter().enumerate() {
        let color = Palette99::pick(bi).to_rgba();
        for (ai, &active) in actives.iter().enumerate() {
            let mut pts: Vec<(f64, f64)> = ok
                .iter()
                .filter(|(r, _)| r.backend == *backend && r.active == active)
                .map(|(r, us)| (2.0 * r.pairs as f64, *us))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            if pts.is_empty() {
                continue;
            }
            let style = ShapeStyle {
                color,
                filled: ai == 0,
                stroke_width: if ai == 0 { 2 } else { 1 },
            };
            chart
                .draw_series(LineSeries::new(pts.clone(), style))?
                .label(format!("{backend} a={active}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, style)))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

//! `bench-plot`: turns the combined results of `benches/compare.sh` into PNG bar charts
//! and a Markdown table.
//!
//! * `compare-throughput.png` and `compare-latency.png` in `--png-dir`: a panel per
//!   operation (rows) and client count (columns), one bar per system, labelled with
//!   its value.
//! * `--table`: system, op, clients, ops/s, avg / p50 / p99 latency, errors, and the
//!   ratios of throughput and average latency to dBQS f=0 and to etcd in the same
//!   shape; then the targets and the audit's BFT-SMaRt figures, checked
//!   against this run.
//!
//! Text is drawn with a TrueType font loaded at run time (`--font`, DejaVu Sans by
//! default: Debian's `fonts-dejavu-core`), so the build needs no system font library.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use dbqs_bench_harness::{BenchOutput, Combined};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

#[derive(Parser, Debug)]
#[command(about = "Plots and tabulates the combined results of benches/compare.sh")]
struct Args {
    /// The combined results JSON written by compare.sh.
    #[arg(long)]
    input: PathBuf,
    /// Directory for the PNG charts.
    #[arg(long)]
    png_dir: PathBuf,
    /// Markdown table output (also printed to stdout).
    #[arg(long)]
    table: PathBuf,
    /// TrueType font for the charts' text.
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
}

/// The systems in display order, with their bar colours.
const SYSTEMS: [(&str, RGBColor); 3] = [
    ("dbqs-f1", RGBColor(0x1f, 0x77, 0xb4)),
    ("dbqs-f0", RGBColor(0x9e, 0xc9, 0xe8)),
    ("etcd", RGBColor(0xe3, 0x6c, 0x0a)),
];

/// The operations, in display order.
const OPS: [&str; 2] = ["write", "read"];

/// The audit's BFT-SMaRt averages (3 clients x 10,000 ops, 4 replicas, f = 1), in ms.
const AUDIT_MS: [(&str, f64); 2] = [("write", 5.7), ("read", 5.2)];

/// One successful run, flattened.
struct Row {
    system: String,
    label: String,
    out: BenchOutput,
}

impl Row {
    fn key(&self) -> (usize, usize, usize) {
        let op = OPS
            .iter()
            .position(|o| *o == self.out.op)
            .unwrap_or(OPS.len());
        let sys = SYSTEMS
            .iter()
            .position(|(s, _)| *s == self.system)
            .unwrap_or(SYSTEMS.len());
        (op, self.out.clients, sys)
    }
}

/// The metric a chart shows.
#[derive(Clone, Copy)]
enum Metric {
    Throughput,
    AvgLatency,
}

impl Metric {
    fn of(self, o: &BenchOutput) -> f64 {
        match self {
            Metric::Throughput => o.result.ops_per_s,
            Metric::AvgLatency => o.result.avg_ms,
        }
    }
    fn axis(self) -> &'static str {
        match self {
            Metric::Throughput => "operations / s",
            Metric::AvgLatency => "average latency, ms",
        }
    }
    fn title(self) -> &'static str {
        match self {
            Metric::Throughput => "Throughput (higher is better)",
            Metric::AvgLatency => "Average latency (lower is better)",
        }
    }
    fn fmt_axis(self, v: f64) -> String {
        match self {
            Metric::Throughput => format!("{v:.0}"),
            Metric::AvgLatency => format!("{v:.1}"),
        }
    }
    fn fmt(self, v: f64) -> String {
        match self {
            Metric::Throughput => format!("{v:.0}"),
            Metric::AvgLatency if v < 10.0 => format!("{v:.2}"),
            Metric::AvgLatency => format!("{v:.1}"),
        }
    }
}

/// Registers the font under the name "sans-serif" (plotters keeps a `&'static` slice,
/// so the bytes are leaked once).
fn load_font(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "reading the font {} (Debian: apt-get install fonts-dejavu-core)",
            path.display()
        )
    })?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{} is not a usable TrueType font", path.display()))?;
    Ok(())
}

/// Draws one chart: a grid of panels, one row per operation and one column per client
/// count, each with one labelled bar per system and its own y scale (so a 1-client
/// latency is not flattened by a 64-client one).
fn chart(rows: &[Row], metric: Metric, subtitle: &str, path: &Path) -> Result<()> {
    let clients: Vec<usize> = rows
        .iter()
        .map(|r| r.out.clients)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let root = BitMapBackend::new(path, (420 * clients.len() as u32 + 40, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title_area, body) = root.split_vertically(60);
    title_area.titled(
        &format!("{} — {}", metric.title(), subtitle),
        ("sans-serif", 24).into_font(),
    )?;
    let panels = body.split_evenly((OPS.len(), clients.len()));
    let shapes = OPS
        .iter()
        .flat_map(|op| clients.iter().map(move |c| (*op, *c)));
    for (panel, (op, n)) in panels.iter().zip(shapes) {
        // This shape's bars, in system order.
        let bars: Vec<(&Row, RGBColor)> = SYSTEMS
            .iter()
            .filter_map(|(s, colour)| {
                rows.iter()
                    .find(|r| r.system == *s && r.out.op == op && r.out.clients == n)
                    .map(|r| (r, *colour))
            })
            .collect();
        if bars.is_empty() {
            continue;
        }
        let top = bars
            .iter()
            .map(|(r, _)| metric.of(&r.out))
            .fold(0.0f64, f64::max)
            .max(1e-3)
            * 1.18;
        let caption = format!("{op}, {n} client{}", if n == 1 { "" } else { "s" });
        let y_fmt = |v: &f64| metric.fmt_axis(*v);
        let mut ch = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 20).into_font())
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(62)
            .build_cartesian_2d(0.0..bars.len() as f64, 0.0..top)?;
        // The x axis carries system names, not numbers: they are drawn under each bar.
        ch.configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_labels(6)
            .y_label_formatter(&y_fmt)
            .y_desc(metric.axis())
            .label_style(("sans-serif", 14).into_font())
            .axis_desc_style(("sans-serif", 14).into_font())
            .draw()?;
        ch.draw_series(bars.iter().enumerate().map(|(i, (r, colour))| {
            let x = i as f64;
            Rectangle::new(
                [(x + 0.15, 0.0), (x + 0.85, metric.of(&r.out))],
                colour.filled(),
            )
        }))?;
        for (i, (r, _)) in bars.iter().enumerate() {
            let v = metric.of(&r.out);
            let centre = |y: f64| ch.backend_coord(&(i as f64 + 0.5, y));
            let (px, py) = centre(v);
            let above = ("sans-serif", 15)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Bottom));
            root.draw(&Text::new(metric.fmt(v), (px, py - 4), above))?;
            let (px, py) = centre(0.0);
            let below = ("sans-serif", 15)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top));
            root.draw(&Text::new(r.label.clone(), (px, py + 8), below))?;
        }
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `a / b` as "1.23x", or "–" when either is missing or zero.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

/// The Markdown report: the table, then targets and the audit comparison.
fn table(c: &Combined, rows: &[Row]) -> String {
    let find = |sys: &str, op: &str, clients: usize| {
        rows.iter()
            .find(|r| r.system == sys && r.out.op == op && r.out.clients == clients)
            .map(|r| &r.out.result)
    };
    let mut s = String::new();
    let _ = writeln!(s, "Mode: {}; {}; host: {}.\n", c.mode, c.date, c.host);
    s.push_str(
        "| system | op | clients | ops/s | avg ms | p50 ms | p99 ms | errors | ops/s ÷ f=0 | avg ÷ f=0 | ops/s ÷ etcd | avg ÷ etcd |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let x = &r.out.result;
        let f0 = find("dbqs-f0", &r.out.op, r.out.clients).filter(|_| r.system != "dbqs-f0");
        let etcd = find("etcd", &r.out.op, r.out.clients).filter(|_| r.system != "etcd");
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} |",
            r.label,
            r.out.op,
            r.out.clients,
            x.ops_per_s,
            x.avg_ms,
            x.p50_ms,
            x.p99_ms,
            x.errors,
            ratio(Some(x.ops_per_s), f0.map(|y| y.ops_per_s)),
            ratio(Some(x.avg_ms), f0.map(|y| y.avg_ms)),
            ratio(Some(x.ops_per_s), etcd.map(|y| y.ops_per_s)),
            ratio(Some(x.avg_ms), etcd.map(|y| y.avg_ms)),
        );
    }
    for run in c.runs.iter().filter(|r| r.output.is_none()) {
        let _ = writeln!(
            s,
            "\nFailed run: {}: {}",
            run.label,
            run.failure.as_deref().unwrap_or("no output")
        );
    }

    // The targets, checked against this run.
    let yes = |b: bool| if b { "met" } else { "not met" };
    s.push_str("\nTargets of issue [G] in this run:\n\n");
    for (op, audit) in AUDIT_MS {
        if let Some(x) = find("dbqs-f1", op, 3) {
            let _ = writeln!(
                s,
                "- audit shape, {op}: dBQS f=1 avg {:.2} ms vs BFT-SMaRt ~{audit} ms (BFT-SMaRt ÷ dBQS = {:.2}×; target ≥ 10×, i.e. ≤ {:.2} ms): {}",
                x.avg_ms,
                audit / x.avg_ms.max(1e-9),
                audit / 10.0,
                yes(x.avg_ms <= audit / 10.0)
            );
        }
    }
    for op in OPS {
        let clients: BTreeSet<usize> = rows
            .iter()
            .filter(|r| r.out.op == op)
            .map(|r| r.out.clients)
            .collect();
        for n in &clients {
            if let (Some(f1), Some(f0)) = (find("dbqs-f1", op, *n), find("dbqs-f0", op, *n)) {
                let lat = f1.avg_ms / f0.avg_ms.max(1e-9);
                let thr = f1.ops_per_s / f0.ops_per_s.max(1e-9);
                let _ = writeln!(
                    s,
                    "- Byzantine overhead, {op} × {n}: latency {lat:.2}× of f=0 (target ≤ 2×: {}), throughput {thr:.2}× (target ≥ 0.5×: {})",
                    yes(lat <= 2.0),
                    yes(thr >= 0.5)
                );
            }
        }
        for n in clients.iter().filter(|n| **n != 3) {
            if let (Some(f1), Some(e)) = (find("dbqs-f1", op, *n), find("etcd", op, *n)) {
                let _ = writeln!(
                    s,
                    "- vs etcd, {op} × {n}: dBQS f=1 {:.0} ops/s vs etcd {:.0} ({:.2}×; target ≥ 1×: {})",
                    f1.ops_per_s,
                    e.ops_per_s,
                    f1.ops_per_s / e.ops_per_s.max(1e-9),
                    yes(f1.ops_per_s >= e.ops_per_s)
                );
            }
        }
    }
    s
}

fn main() -> Result<()> {
    let a = Args::parse();
    let text =
        std::fs::read_to_string(&a.input).with_context(|| format!("reading {:?}", a.input))?;
    let c: Combined =
        serde_json::from_str(&text).with_context(|| format!("parsing {:?}", a.input))?;
    let mut rows: Vec<Row> = c
        .runs
        .iter()
        .filter_map(|r| {
            r.output.as_ref().map(|o| Row {
                system: r.system.clone(),
                label: r.label.clone(),
                out: o.clone(),
            })
        })
        .collect();
    if rows.is_empty() {
        bail!("no successful runs in {:?}", a.input);
    }
    rows.sort_by_key(Row::key);

    let md = table(&c, &rows);
    if let Some(dir) = a.table.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&a.table, &md).with_context(|| format!("writing {:?}", a.table))?;
    print!("{md}");

    load_font(&a.font)?;
    std::fs::create_dir_all(&a.png_dir)?;
    let subtitle = format!(
        "{} B values, closed loop, one host ({} run)",
        rows[0].out.value_size, c.mode
    );
    for (metric, name) in [
        (Metric::Throughput, "compare-throughput.png"),
        (Metric::AvgLatency, "compare-latency.png"),
    ] {
        let path = a.png_dir.join(name);
        chart(&rows, metric, &subtitle, &path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

//! A held-out metric against training wall time for several runs, in one SVG (one line per run,
//! labelled by its folder name): test accuracy of `federated` runs, or the held-out NLL of
//! `finetune_lm` runs.
//!
//! ```text
//! cargo run --release --example plot_runs -- --out docs/accuracy_vs_time.svg runs/spry runs/head-only runs/fedmezo
//! cargo run --release --example plot_runs -- --metric test_nll --out nll.svg runs/lm-spry runs/lm-mezo
//! ```

use std::path::{Path, PathBuf};

use clap::Parser;
use plotters::prelude::*;

/// Plots a column of `metrics.csv` of each run folder against `wall_s`.
#[derive(Parser, Debug)]
struct Args {
    /// Output SVG.
    #[arg(long, default_value = "accuracy_vs_time.svg")]
    out: PathBuf,
    /// Plot title (default: the metric against training time).
    #[arg(long)]
    title: Option<String>,
    /// The `metrics.csv` column plotted: `test_accuracy` (shown in %) or `test_nll`.
    #[arg(long, default_value = "test_accuracy", value_parser = ["test_accuracy", "test_nll"])]
    metric: String,
    /// Run folders (each with a `metrics.csv`).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// `(wall_s, value)` of every evaluated round of a run (an accuracy in %).
fn points(dir: &Path, metric: &str) -> Result<Vec<(f64, f64)>, Box<dyn std::error::Error>> {
    let path = dir.join("metrics.csv");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| format!("{}: no column {name}", path.display()))
    };
    let (wall, acc) = (col("wall_s")?, col(metric)?);
    let scale = if metric == "test_accuracy" {
        100.0
    } else {
        1.0
    };
    let mut pts = Vec::new();
    for (i, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        let (Some(w), Some(a)) = (f.get(wall), f.get(acc)) else {
            return Err(format!("{}:{}: short row", path.display(), i + 2).into());
        };
        if a.is_empty() {
            continue;
        }
        pts.push((w.parse::<f64>()?, scale * a.parse::<f64>()?));
    }
    Ok(pts)
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let series: Vec<(String, Vec<(f64, f64)>)> = args
        .runs
        .iter()
        .map(|d| {
            let name = d
                .file_name()
                .map_or_else(|| d.display().to_string(), |n| n.to_string_lossy().into());
            points(d, &args.metric).map(|p| (name, p))
        })
        .collect::<Result<_, _>>()?;
    let all = series.iter().flat_map(|(_, p)| p.iter());
    let (t_max, lo, hi) = all.fold(
        (1.0f64, f64::INFINITY, f64::NEG_INFINITY),
        |(t, l, h), &(w, a)| (t.max(w), l.min(a), h.max(a)),
    );
    if !lo.is_finite() {
        return Err("no evaluated round in any run".into());
    }
    let pad = 0.08 * (hi - lo).max(0.05);
    let (lo, hi) = (lo - pad, hi + pad);
    let (y_desc, legend_at) = if args.metric == "test_accuracy" {
        ("test accuracy (%)", SeriesLabelPosition::LowerRight)
    } else {
        (
            "held-out NLL (nats per token)",
            SeriesLabelPosition::UpperRight,
        )
    };
    let title = args
        .title
        .clone()
        .unwrap_or_else(|| format!("{y_desc} against training time"));
    let root = SVGBackend::new(&args.out, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..t_max * 1.02, lo..hi)?;
    chart
        .configure_mesh()
        .x_desc("training wall time (s)")
        .y_desc(y_desc)
        .draw()?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(legend_at)
        .draw()?;
    root.present()?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

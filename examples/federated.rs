//! Federated finetuning of a BERT-family encoder on a labelled file with Spry or a baseline:
//! a command line over [`spry::recipes::classification::ClassificationRun`]. By default
//! all-MiniLM-L6-v2 on Rotten Tomatoes (rt_polarity), with the recipe chosen on its validation
//! split.
//!
//! ```text
//! cargo run --release --example federated -- --out runs/spry
//! cargo run --release --example federated -- --method fedmezo --out runs/mezo
//! cargo run --release --example federated -- --config run.toml --out runs/mine
//! ```
//! Every flag can come from a TOML or JSON file (`--config`; flags given on the command line
//! win). Writes `config.json` (the effective settings: `--config <out>/config.json` repeats the
//! run), `metrics.csv`, `accuracy.svg`, `checkpoint.json` (resumable with `--resume`),
//! `summary.json` and the trained adapter with its classification head in PEFT's format
//! (`adapter/` at the end, `adapter-best/` for the best evaluated round).

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use spry::federated::RoundMetrics;
use spry::recipes::classification::ClassificationRun;
use spry::recipes::config::parse_command_line;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (settings, invocation) = parse_command_line::<ClassificationRun>(
        "federated",
        "Federated finetuning of a BERT-family encoder on a labelled file with Spry or a baseline.",
    )?;
    let out = invocation
        .out
        .unwrap_or_else(|| PathBuf::from("runs/federated"));
    eprintln!(
        "{} on {}: {} rounds at most, {} s budget, output in {}",
        settings.method,
        settings.data_files().0.display(),
        settings.rounds,
        settings.time_budget_s,
        out.display()
    );
    let bar = ProgressBar::new(settings.rounds);
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} rounds {elapsed} {msg}",
    )?);
    let outcome = settings.run(&out, invocation.resume, |m| {
        let acc = m.test.and_then(|t| t.accuracy);
        let acc = acc.map_or(String::new(), |a| format!("acc {:.2}%", 100.0 * a));
        bar.set_position(m.round);
        bar.set_message(format!("loss {:.4} {acc}", m.train_loss));
    })?;
    bar.finish();
    plot(
        &out.join("accuracy.svg"),
        &outcome.history,
        &settings.method.to_string(),
    )?;
    println!("{}", serde_json::to_string(&outcome.summary)?);
    Ok(())
}

/// Evaluated accuracy against the round, as an SVG line chart.
fn plot(
    path: &Path,
    history: &[RoundMetrics],
    label: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let pts: Vec<(f64, f64)> = history
        .iter()
        .filter_map(|m| {
            m.test
                .and_then(|t| t.accuracy)
                .map(|a| (m.round as f64, 100.0 * a))
        })
        .collect();
    let max_round = history.last().map_or(1.0, |m| m.round as f64).max(1.0);
    let (lo, hi) = pts.iter().fold((50.0f64, 60.0f64), |(l, h), &(_, a)| {
        (l.min(a - 2.0), h.max(a + 2.0))
    });
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("accuracy ({label})"), ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..max_round, lo..hi)?;
    chart
        .configure_mesh()
        .x_desc("round")
        .y_desc("accuracy (%)")
        .draw()?;
    chart.draw_series(LineSeries::new(pts.iter().copied(), &BLUE))?;
    chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, BLUE.filled())))?;
    root.present()?;
    Ok(())
}

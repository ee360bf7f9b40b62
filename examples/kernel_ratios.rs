//! Prints, for every JVP kernel at MiniLM sizes, the forward time and the JVP cost per tangent
//! direction for K = 1, 4, 16, measured in this one run.
//!
//! Two ratios per K:
//! - `jvp/K / fwd`: the whole JVP call (primal included) divided by K, over the forward;
//! - `(jvp - fwd)/K / fwd`: the marginal cost of one more direction, over the forward.
//!
//! Run: `cargo run --release --example kernel_ratios [-- --reps 9 --json]`

use clap::Parser;

#[path = "../benches/cases/mod.rs"]
mod cases;

/// Command-line options.
#[derive(Parser)]
struct Args {
    /// Timed repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 7)]
    reps: usize,
    /// Also print one JSON line per kernel.
    #[arg(long)]
    json: bool,
}

fn main() {
    let args = Args::parse();
    let ks = [1usize, 4, 16];
    println!(
        "{:<30} {:>9} {}",
        "kernel (B=8, T=128)",
        "fwd ms",
        ks.iter()
            .map(|k| format!("{:>12} {:>12}", format!("K={k} jvp/K"), "marginal"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for case in cases::all() {
        let mut fwd = (case.prepare)(None);
        let t_fwd = spry::metrics::median_time(2, args.reps, &mut fwd).as_secs_f64();
        drop(fwd);
        let mut cols = Vec::new();
        let mut json = serde_json::Map::new();
        for &k in &ks {
            let mut jvp = (case.prepare)(Some(k));
            let t = spry::metrics::median_time(2, args.reps, &mut jvp).as_secs_f64();
            let per_dir = t / k as f64 / t_fwd;
            let marginal = (t - t_fwd) / k as f64 / t_fwd;
            cols.push(format!("{per_dir:>12.3} {marginal:>12.3}"));
            json.insert(
                format!("k{k}"),
                serde_json::json!({"ms": t * 1e3, "per_dir_over_fwd": per_dir, "marginal_over_fwd": marginal}),
            );
        }
        println!("{:<30} {:>9.3} {}", case.name, t_fwd * 1e3, cols.join(" "));
        if args.json {
            json.insert("kernel".into(), case.name.into());
            json.insert("fwd_ms".into(), (t_fwd * 1e3).into());
            println!("{}", serde_json::Value::Object(json));
        }
    }
}

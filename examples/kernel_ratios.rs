//! Prints, for every JVP kernel at MiniLM sizes, the forward time and the JVP cost per tangent
//! direction for K = 1, 4, 16, measured in this one run.
//!
//! Two ratios per K:
//! - `jvp/K / fwd`: the whole JVP call (primal included) divided by K, over the forward;
//! - `(jvp - fwd)/K / fwd`: the marginal cost of one more direction, over the forward.
//!
//! It first prints the peak memory one attention call adds above its inputs at a long sequence
//! (MiniLM heads, B = 8, T = `--memory-seq`), each measured in a fresh child process so that no
//! memory freed by an earlier measurement is reused.
//!
//! Run: `cargo run --release --example kernel_ratios [-- --reps 9 --json --filter attention]`

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
    /// Only the kernels whose name contains this text.
    #[arg(long, default_value = "")]
    filter: String,
    /// Sequence length of the attention memory measurement (0 = skip it).
    #[arg(long, default_value_t = 512)]
    memory_seq: usize,
    /// Internal: measure the attention memory for this K (0 = forward) and exit.
    #[arg(long, hide = true)]
    memory_child: Option<usize>,
}

/// Prints the peak resident memory one attention call (MiniLM heads, batch 8, sequence `seq`)
/// adds above its inputs, and how much of it is the output itself.
fn attention_memory(seq: usize, k: Option<usize>) {
    let x = cases::AttentionInputs::new(seq, k, false);
    let before = spry::metrics::current_rss_mib().unwrap_or(0.0);
    if !spry::metrics::reset_peak_rss() {
        println!("attention memory: peak RSS reset unsupported here");
        return;
    }
    let y = x.run();
    let peak = spry::metrics::peak_rss_mib().unwrap_or(0.0);
    let out_mib = (y.primal().len() + y.tangent().map_or(0, |t| t.len())) as f64
        * std::mem::size_of::<f32>() as f64
        / (1024.0 * 1024.0);
    println!(
        "attention memory (B={}, T={seq}, {} heads of {}, {}): peak +{:.1} MiB above the inputs, \
         of which the output {out_mib:.1} MiB, working memory {:.1} MiB",
        cases::BATCH,
        x.shape.n_heads,
        x.shape.head_dim,
        k.map_or("forward".to_string(), |k| format!("JVP K={k}")),
        peak - before,
        peak - before - out_mib
    );
}

fn main() {
    let args = Args::parse();
    if let Some(k) = args.memory_child {
        attention_memory(args.memory_seq, (k > 0).then_some(k));
        return;
    }
    if args.memory_seq > 0 {
        let exe = std::env::current_exe().expect("own path");
        for k in [0, 1, 16] {
            let child = std::process::Command::new(&exe)
                .args(["--memory-seq", &args.memory_seq.to_string()])
                .args(["--memory-child", &k.to_string()])
                .output()
                .expect("run the memory measurement");
            print!("{}", String::from_utf8_lossy(&child.stdout));
        }
    }
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
    for case in cases::all()
        .into_iter()
        .filter(|c| c.name.contains(&args.filter))
    {
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

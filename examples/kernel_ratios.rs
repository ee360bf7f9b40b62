//! Prints, for every JVP kernel at MiniLM sizes, the forward time and the JVP cost per tangent
//! direction for K = 1, 4, 16, measured in this one run.
//!
//! Two ratios per K:
//! - `jvp/K / fwd`: the whole JVP call (primal included) divided by K, over the forward;
//! - `(jvp - fwd)/K / fwd`: the marginal cost of one more direction, over the forward.
//!
//! The forward and the three JVPs of a kernel are timed round-robin (one of each per round), and
//! each ratio is the median over rounds of that round's ratio: a slow spell of a shared machine
//! then hits numerator and denominator alike. Each ratio is printed for wall time and for the
//! process's CPU time (`wall | cpu`); CPU time ignores the time other processes hold the cores,
//! so it is the steadier of the two on a loaded machine.
//!
//! Attention's tangent needs four products per direction (`Q̇Kᵀ`, `QK̇ᵀ`, `(E⊙Ṡ)V`, `EV̇`)
//! against the forward's two (`QKᵀ`, `EV`), three with k a symbolic zero (the `q,v dual` row);
//! its ratio still comes out near 1 at K = 16 because the forward's products are small (32
//! query rows by 128 keys per block) and its softmax (exp, row statistics) is shared by every
//! direction, while the stacked tangent products have K·32 rows and run near the GEMM's peak.
//!
//! It first prints the peak memory one attention call adds above its inputs at a long sequence
//! (MiniLM heads, B = 8, T = `--memory-seq`), each measured in a fresh child process so that no
//! memory freed by an earlier measurement is reused.
//!
//! Run: `cargo run --release --example kernel_ratios [-- --reps 15 --json --only linear --memory-seq 0]`

use clap::Parser;

#[path = "../benches/cases/mod.rs"]
mod cases;

use cases::timing::{Sample, measure, medians};

/// Command-line options.
#[derive(Parser)]
struct Args {
    /// Timed rounds per kernel (medians are reported).
    #[arg(long, default_value_t = 7)]
    reps: usize,
    /// Also print one JSON line per kernel.
    #[arg(long)]
    json: bool,
    /// Only the kernels whose name contains this text (e.g. `linear`).
    #[arg(long)]
    only: Option<String>,
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

/// One round: the forward and the JVP for each K.
struct Round {
    fwd: Sample,
    jvp: Vec<Sample>,
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
    assert!(args.reps > 0, "--reps must be at least 1");
    let ks = [1usize, 4, 16];
    println!(
        "{:<30} {:>15} {}",
        "kernel (B=8, T=128)",
        "fwd ms wall|cpu",
        ks.iter()
            .map(|k| format!("{:>13} {:>13}", format!("K={k} jvp/K"), "marginal"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for case in cases::all() {
        if args
            .only
            .as_ref()
            .is_some_and(|o| !case.name.contains(o.as_str()))
        {
            continue;
        }
        let mut fwd = (case.prepare)(None);
        let mut jvps: Vec<_> = ks.iter().map(|&k| (case.prepare)(Some(k))).collect();
        // warm-up round: first-touch page faults, thread-pool start-up
        fwd();
        jvps.iter_mut().for_each(|f| f());
        let rounds: Vec<Round> = (0..args.reps)
            .map(|_| Round {
                fwd: measure(&mut fwd),
                jvp: jvps.iter_mut().map(|f| measure(f.as_mut())).collect(),
            })
            .collect();
        let fwd_ms = medians(&rounds, |r, t| t(&r.fwd) * 1e3);
        let mut cols = Vec::new();
        let mut json = serde_json::Map::new();
        for (i, &k) in ks.iter().enumerate() {
            let kf = k as f64;
            let per_dir = medians(&rounds, |r, t| t(&r.jvp[i]) / kf / t(&r.fwd));
            let marginal = medians(&rounds, |r, t| (t(&r.jvp[i]) - t(&r.fwd)) / kf / t(&r.fwd));
            let ms = medians(&rounds, |r, t| t(&r.jvp[i]) * 1e3);
            cols.push(format!(
                "{:>6.3}|{:<6.3} {:>6.3}|{:<6.3}",
                per_dir.0, per_dir.1, marginal.0, marginal.1
            ));
            json.insert(
                format!("k{k}"),
                serde_json::json!({
                    "ms": ms.0, "cpu_ms": ms.1,
                    "per_dir_over_fwd": per_dir.0, "per_dir_over_fwd_cpu": per_dir.1,
                    "marginal_over_fwd": marginal.0, "marginal_over_fwd_cpu": marginal.1,
                }),
            );
        }
        println!(
            "{:<30} {:>7.2}|{:<7.2} {}",
            case.name,
            fwd_ms.0,
            fwd_ms.1,
            cols.join(" ")
        );
        if args.json {
            json.insert("kernel".into(), case.name.into());
            json.insert("fwd_ms".into(), fwd_ms.0.into());
            json.insert("fwd_cpu_ms".into(), fwd_ms.1.into());
            println!("{}", serde_json::Value::Object(json));
        }
    }
}

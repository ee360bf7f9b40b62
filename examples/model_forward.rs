//! Forward and JVP time and peak memory of each real model for one batch: MiniLM (batch 8,
//! sequence 128, classifier loss) and SmolLM2-135M (batch 4, sequence 256, loss with the chunked
//! LM head), plain forward and K-direction JVPs over all LoRA adapters (r = 1 on the query and
//! value projections).
//!
//! The forward and the JVPs are timed round-robin (one of each per round) and every ratio is the
//! median over rounds of that round's ratio, for wall time and for the process's CPU time
//! (`wall | cpu`; CPU time ignores the time other processes hold the cores, so it is the steadier
//! of the two on a loaded machine). MiniLM's forward throughput is its matrix-product FLOPs
//! (23.0 GFLOP: the six linear layers and the two attention products of every block) over the
//! median wall time.
//!
//! ```text
//! cargo run --release --example model_forward [-- --model minilm --ks 1,16 --reps 5 --json]
//! ```

use clap::Parser;
use ndarray::Array2;
use spry::federated::{StepKey, directions};
use spry::metrics::{current_rss_mib, peak_rss_mib};
use spry::models::WeightFormat;
use spry::models::bert::BertBatch;
use spry::models::pretrained::{load_bert_classifier_dir, load_llama_gguf_as};
use spry::modules::{Directions, LoraConfig, Trainable};
use spry::tokenizer::TokenizerOptions;

#[path = "../benches/cases/timing.rs"]
mod timing;

use timing::{Sample, measure, medians};

/// Command-line options.
#[derive(Parser)]
struct Args {
    /// Timed rounds (medians reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Which models: `minilm`, `smollm` or `all`.
    #[arg(long, default_value = "all")]
    model: String,
    /// Numbers of JVP directions to time, comma-separated.
    #[arg(long, default_value = "1", value_delimiter = ',')]
    ks: Vec<usize>,
    /// Print one JSON line per model instead of a table.
    #[arg(long)]
    json: bool,
    /// Dequantise SmolLM2's weights to dense f32 at load (instead of keeping them packed as
    /// stored and widening them a tile at a time).
    #[arg(long)]
    dense: bool,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn ids(b: usize, t: usize, vocab: u32) -> Array2<u32> {
    Array2::from_shape_fn((b, t), |(i, j)| {
        1000 + ((i * 7919 + j * 104729) as u32 % (vocab - 2000))
    })
}

/// K random directions over every trainable parameter (step 0 of seed 0).
fn all_directions(params: &Trainable<f32>, k: usize) -> spry::Result<Directions<f32>> {
    let all: Vec<usize> = (0..params.len()).collect();
    directions(
        params,
        &all,
        k,
        StepKey {
            seed: 0,
            round: 0,
            client: 0,
            step: 0,
        },
    )
}

/// What one model's measurement found.
struct Report {
    name: &'static str,
    /// Matrix-product FLOPs of one forward, if known.
    flops: Option<f64>,
    /// Forward (wall, cpu) seconds, medians.
    fwd: (f64, f64),
    /// One entry per K.
    jvps: Vec<JvpTime>,
    weights_mib: f64,
    peak_mib: f64,
}

/// The JVP with K directions: (wall, cpu) seconds and its time per direction over the
/// forward's (wall, cpu), medians over rounds.
struct JvpTime {
    k: usize,
    time: (f64, f64),
    per_dir: (f64, f64),
}

/// A timed call.
type Run<'a> = Box<dyn FnMut() + 'a>;

/// Times `fwd` and one JVP per K round-robin; returns the forward's (wall, cpu) median.
fn time_round_robin(
    reps: usize,
    fwd: &mut dyn FnMut(),
    jvps: &mut [(usize, Run<'_>)],
) -> ((f64, f64), Vec<JvpTime>) {
    fwd();
    jvps.iter_mut().for_each(|(_, f)| f());
    let rounds: Vec<(Sample, Vec<Sample>)> = (0..reps)
        .map(|_| {
            let f = measure(fwd);
            (f, jvps.iter_mut().map(|(_, j)| measure(j)).collect())
        })
        .collect();
    let fwd_t = medians(&rounds, |r, t| t(&r.0));
    let per_k = jvps
        .iter()
        .enumerate()
        .map(|(i, (k, _))| {
            let kf = *k as f64;
            JvpTime {
                k: *k,
                time: medians(&rounds, |r, t| t(&r.1[i])),
                per_dir: medians(&rounds, |r, t| t(&r.1[i]) / kf / t(&r.0)),
            }
        })
        .collect();
    (fwd_t, per_k)
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    assert!(args.reps > 0, "--reps must be at least 1");
    let assets = spry::io::assets_dir();
    if args.model == "all" || args.model == "minilm" {
        let base = current_rss_mib().unwrap_or(0.0);
        let lora = LoraConfig::new(1, 1.0, 0.0, &["query", "value"]);
        let (bert, params, _) = load_bert_classifier_dir(
            &assets.join("all-MiniLM-L6-v2"),
            &lora,
            2,
            0,
            TokenizerOptions::default(),
        )?;
        let weights_mib = current_rss_mib().unwrap_or(0.0) - base;
        let (b, t) = (8, 128);
        let batch = BertBatch::new(ids(b, t, 30522), Array2::from_elem((b, t), true))?;
        let labels = vec![0i64, 1, 0, 1, 0, 1, 0, 1];
        let none = Directions::none(params.len());
        let dirs: Vec<(usize, Directions<f32>)> = args
            .ks
            .iter()
            .map(|&k| Ok((k, all_directions(&params, k)?)))
            .collect::<spry::Result<_>>()?;
        let mut fwd = || {
            bert.forward(&batch, Some(&labels), &params, &none, None)
                .expect("forward");
        };
        let mut jvps: Vec<(usize, Run<'_>)> = dirs
            .iter()
            .map(|(k, d)| {
                let run: Run<'_> = Box::new(|| {
                    bert.forward(&batch, Some(&labels), &params, d, None)
                        .expect("jvp");
                });
                (*k, run)
            })
            .collect();
        let (fwd_t, per_k) = time_round_robin(args.reps, &mut fwd, &mut jvps);
        drop(jvps);
        let cfg = bert.bert().config();
        let (n, h, f) = (
            (b * t) as f64,
            cfg.hidden_size as f64,
            cfg.intermediate_size as f64,
        );
        // per block: q, k, v, o (N·H·H each), up and down (N·H·F each), S = QKᵀ and P·V
        // (B·T·T·H each); 2 FLOPs per multiply-add
        let per_block = 2.0 * (4.0 * n * h * h + 2.0 * n * h * f + 2.0 * n * t as f64 * h);
        report(
            &args,
            &Report {
                name: "MiniLM-L6 classifier B=8 T=128",
                flops: Some(per_block * cfg.num_hidden_layers as f64),
                fwd: fwd_t,
                jvps: per_k,
                weights_mib,
                peak_mib: peak_rss_mib().unwrap_or(0.0),
            },
        );
    }

    if args.model == "all" || args.model == "smollm" {
        let lora = LoraConfig::new(1, 1.0, 0.0, &["q_proj", "v_proj"]);
        let before = current_rss_mib().unwrap_or(0.0);
        let gguf = assets.join("SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
        let format = if args.dense {
            WeightFormat::Dense
        } else {
            WeightFormat::Stored
        };
        let (llama, params, _) = load_llama_gguf_as(&gguf, &lora, 0, format)?;
        let weights_mib = current_rss_mib().unwrap_or(0.0) - before;
        let x = ids(4, 256, 49152);
        let y = x.mapv(|v| v as i64);
        let none = Directions::none(params.len());
        let dirs: Vec<(usize, Directions<f32>)> = args
            .ks
            .iter()
            .map(|&k| Ok((k, all_directions(&params, k)?)))
            .collect::<spry::Result<_>>()?;
        let mut fwd = || {
            llama
                .loss(x.view(), y.view(), None, &params, &none, None)
                .expect("forward");
        };
        let mut jvps: Vec<(usize, Run<'_>)> = dirs
            .iter()
            .map(|(k, d)| {
                let run: Run<'_> = Box::new(|| {
                    llama
                        .loss(x.view(), y.view(), None, &params, d, None)
                        .expect("jvp");
                });
                (*k, run)
            })
            .collect();
        let (fwd_t, per_k) = time_round_robin(args.reps, &mut fwd, &mut jvps);
        drop(jvps);
        report(
            &args,
            &Report {
                name: "SmolLM2-135M LM loss B=4 T=256",
                flops: None,
                fwd: fwd_t,
                jvps: per_k,
                weights_mib,
                peak_mib: peak_rss_mib().unwrap_or(0.0),
            },
        );
    }
    Ok(())
}

fn report(args: &Args, r: &Report) {
    let gflops = r.flops.map(|f| f / r.fwd.0 * 1e-9);
    if args.json {
        let jvps: Vec<_> = r
            .jvps
            .iter()
            .map(|j| {
                serde_json::json!({"k": j.k, "ms": j.time.0 * 1e3, "cpu_ms": j.time.1 * 1e3,
                    "per_dir_over_fwd": j.per_dir.0, "per_dir_over_fwd_cpu": j.per_dir.1})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"model": r.name, "fwd_ms": r.fwd.0 * 1e3, "fwd_cpu_ms": r.fwd.1 * 1e3,
                "fwd_gflops": gflops, "jvps": jvps,
                "weights_rss_mib": r.weights_mib, "peak_rss_mib": r.peak_mib})
        );
        return;
    }
    let rate = gflops.map_or(String::new(), |g| format!(" ({g:.0} GFLOP/s)"));
    println!(
        "{:<32} forward {:>7.1}|{:<7.1} ms{rate}   weights {:>5.0} MiB   peak RSS so far {:>5.0} MiB",
        r.name,
        r.fwd.0 * 1e3,
        r.fwd.1 * 1e3,
        r.weights_mib,
        r.peak_mib
    );
    for j in &r.jvps {
        println!(
            "{:<32} JVP K={:<3} {:>7.1}|{:<7.1} ms   per direction / forward {:.2}|{:.2}x",
            "",
            j.k,
            j.time.0 * 1e3,
            j.time.1 * 1e3,
            j.per_dir.0,
            j.per_dir.1
        );
    }
}

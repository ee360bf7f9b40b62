//! Forward time and peak memory of each real model for one batch: MiniLM (batch 8, sequence
//! 128) and SmolLM2-135M (batch 4, sequence 256, loss with the LM head fused with the
//! cross-entropy over vocabulary tiles), plain forward and one-direction JVP over the LoRA
//! adapters.
//!
//! SmolLM2's frozen matrices stay packed as the GGUF file stores them (Q8_0 embeddings, Q4_1
//! projections, widened a tile at a time); `--dense` dequantises them to f32 at load instead.
//! For SmolLM2 the peak RSS is also reported for the load alone and for the client step alone
//! (the JVP runs, watermark reset before them; both include the resident weights).
//!
//! ```text
//! cargo run --release --example model_forward [-- --json] [--dense] [--llama-only]
//! ```

use clap::Parser;
use ndarray::Array2;
use spry::federated::{StepKey, directions};
use spry::metrics::{current_rss_mib, median_time, peak_rss_mib, reset_peak_rss};
use spry::models::WeightFormat;
use spry::models::bert::BertBatch;
use spry::models::pretrained::{load_bert_classifier_dir, load_llama_gguf_as};
use spry::modules::{Directions, LoraConfig};
use spry::tokenizer::TokenizerOptions;

/// Command-line options.
#[derive(Parser)]
struct Args {
    /// Timed repetitions (median reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Print one JSON line per model instead of a table.
    #[arg(long)]
    json: bool,
    /// Dequantise SmolLM2's weights to dense f32 at load (instead of keeping them packed).
    #[arg(long)]
    dense: bool,
    /// Skip MiniLM (so the process peak is SmolLM2's alone).
    #[arg(long)]
    llama_only: bool,
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

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if !args.llama_only {
        minilm(&args)?;
    }
    smollm2(&args)
}

fn minilm(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let assets = spry::io::assets_dir();
    let base = current_rss_mib().unwrap_or(0.0);
    // MiniLM classifier, LoRA r=1 on query/value
    let lora = LoraConfig::new(1, 1.0, 0.0, &["query", "value"]);
    let (bert, params, _) = load_bert_classifier_dir(
        &assets.join("all-MiniLM-L6-v2"),
        &lora,
        2,
        0,
        TokenizerOptions::default(),
    )?;
    let weights_mib = current_rss_mib().unwrap_or(0.0) - base;
    let batch = BertBatch::new(ids(8, 128, 30522), Array2::from_elem((8, 128), true))?;
    let labels = vec![0i64, 1, 0, 1, 0, 1, 0, 1];
    let none = Directions::none(params.len());
    let all: Vec<usize> = (0..params.len()).collect();
    let dirs = directions(
        &params,
        &all,
        1,
        StepKey {
            seed: 0,
            round: 0,
            client: 0,
            step: 0,
        },
    )?;
    let fwd = median_time(1, args.reps, || {
        bert.forward(&batch, Some(&labels), &params, &none, None)
            .expect("forward");
    });
    let jvp = median_time(1, args.reps, || {
        bert.forward(&batch, Some(&labels), &params, &dirs, None)
            .expect("jvp");
    });
    let peak = peak_rss_mib().unwrap_or(0.0);
    report(
        args,
        "MiniLM-L6 classifier B=8 T=128",
        fwd.as_secs_f64(),
        jvp.as_secs_f64(),
        weights_mib,
        peak,
        None,
    );
    Ok(())
}

fn smollm2(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let assets = spry::io::assets_dir();
    let lora = LoraConfig::new(1, 1.0, 0.0, &["q_proj", "v_proj"]);
    let before = current_rss_mib().unwrap_or(0.0);
    let gguf = assets.join("SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let format = if args.dense {
        WeightFormat::Dense
    } else {
        WeightFormat::Stored
    };
    reset_peak_rss();
    let (llama, params, _) = load_llama_gguf_as(&gguf, &lora, 0, format)?;
    let load_peak = peak_rss_mib().unwrap_or(0.0);
    let weights_mib = current_rss_mib().unwrap_or(0.0) - before;
    let frozen_mib = llama.frozen_bytes() as f64 / (1 << 20) as f64;
    let x = ids(4, 256, 49152);
    let y = x.mapv(|v| v as i64);
    let none = Directions::none(params.len());
    let all: Vec<usize> = (0..params.len()).collect();
    let dirs = directions(
        &params,
        &all,
        1,
        StepKey {
            seed: 0,
            round: 0,
            client: 0,
            step: 0,
        },
    )?;
    let fwd = median_time(1, args.reps, || {
        llama
            .loss(x.view(), y.view(), None, &params, &none, None)
            .expect("forward");
    });
    // the client step: LM loss + JVP (K = 1), peak measured from here
    reset_peak_rss();
    let jvp = median_time(1, args.reps, || {
        llama
            .loss(x.view(), y.view(), None, &params, &dirs, None)
            .expect("jvp");
    });
    let step_peak = peak_rss_mib().unwrap_or(0.0);
    let name = if args.dense {
        "SmolLM2-135M dense f32 B=4 T=256"
    } else {
        "SmolLM2-135M packed B=4 T=256"
    };
    report(
        args,
        name,
        fwd.as_secs_f64(),
        jvp.as_secs_f64(),
        weights_mib,
        step_peak,
        Some((frozen_mib, load_peak, step_peak)),
    );
    Ok(())
}

/// One line per model; `llama` = (frozen weight MiB, load peak RSS, client-step peak RSS).
fn report(
    args: &Args,
    name: &str,
    fwd: f64,
    jvp: f64,
    weights_mib: f64,
    peak: f64,
    llama: Option<(f64, f64, f64)>,
) {
    if args.json {
        let mut v = serde_json::json!({"model": name, "fwd_ms": fwd * 1e3, "jvp1_ms": jvp * 1e3, "jvp1_over_fwd": jvp / fwd,
            "weights_rss_mib": weights_mib, "peak_rss_mib": peak});
        if let Some((frozen, load_peak, step_peak)) = llama {
            v["frozen_weights_mib"] = frozen.into();
            v["load_peak_rss_mib"] = load_peak.into();
            v["step_peak_rss_mib"] = step_peak.into();
        }
        println!("{v}");
    } else {
        println!(
            "{name:<34} forward {:>8.1} ms   JVP(K=1) {:>8.1} ms ({:.2}x)   weights {:>6.0} MiB   peak RSS so far {:>6.0} MiB",
            fwd * 1e3,
            jvp * 1e3,
            jvp / fwd,
            weights_mib,
            peak
        );
        if let Some((frozen, load_peak, step_peak)) = llama {
            println!(
                "{:<34} frozen weights {frozen:>6.0} MiB   load peak RSS {load_peak:>6.0} MiB   client step (loss + JVP K=1) peak RSS {step_peak:>6.0} MiB",
                ""
            );
        }
    }
}

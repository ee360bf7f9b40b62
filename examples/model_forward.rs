//! Forward time and peak memory of each real model for one batch: MiniLM (batch 8, sequence
//! 128) and SmolLM2-135M (batch 4, sequence 256, loss with the chunked LM head), plain forward and
//! one-direction JVP over the LoRA adapters.
//!
//! ```text
//! cargo run --release --example model_forward [-- --json]
//! ```

use clap::Parser;
use ndarray::Array2;
use spry::federated::{StepKey, directions};
use spry::metrics::{current_rss_mib, median_time, peak_rss_mib};
use spry::models::bert::BertBatch;
use spry::models::pretrained::{load_bert_classifier_dir, load_llama_gguf};
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
        &args,
        "MiniLM-L6 classifier B=8 T=128",
        fwd.as_secs_f64(),
        jvp.as_secs_f64(),
        weights_mib,
        peak,
    );
    drop((bert, params, dirs));

    let lora = LoraConfig::new(1, 1.0, 0.0, &["q_proj", "v_proj"]);
    let before = current_rss_mib().unwrap_or(0.0);
    let gguf = assets.join("SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let (llama, params, _) = load_llama_gguf(&gguf, &lora, 0)?;
    let weights_mib = current_rss_mib().unwrap_or(0.0) - before;
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
    let jvp = median_time(1, args.reps, || {
        llama
            .loss(x.view(), y.view(), None, &params, &dirs, None)
            .expect("jvp");
    });
    let peak = peak_rss_mib().unwrap_or(0.0);
    report(
        &args,
        "SmolLM2-135M LM loss B=4 T=256",
        fwd.as_secs_f64(),
        jvp.as_secs_f64(),
        weights_mib,
        peak,
    );
    Ok(())
}

fn report(args: &Args, name: &str, fwd: f64, jvp: f64, weights_mib: f64, peak: f64) {
    if args.json {
        println!(
            "{}",
            serde_json::json!({"model": name, "fwd_ms": fwd * 1e3, "jvp1_ms": jvp * 1e3, "jvp1_over_fwd": jvp / fwd,
                "weights_rss_mib": weights_mib, "peak_rss_mib": peak})
        );
    } else {
        println!(
            "{name:<34} forward {:>8.1} ms   JVP(K=1) {:>8.1} ms ({:.2}x)   weights {:>6.0} MiB   peak RSS so far {:>6.0} MiB",
            fwd * 1e3,
            jvp * 1e3,
            jvp / fwd,
            weights_mib,
            peak
        );
    }
}

//! The performance figures of issue 5, measured on the spot: MiniLM geometry with LoRA r = 8
//! (α = 16) on query and value and a 2-class head on the pooled first token (the JAX anchor's
//! model in `../shared/anchors/jax_transformer_jvp.py`), batch 8, f32.
//!
//! - `fwd_ms`, `fwd_gflops`: the loss forward at T = 128 and its matmul FLOP rate (the anchor's
//!   analytic count, LoRA included);
//! - `jvp1_ms`, `jvp1_over_fwd`: one dual pass with one direction over every LoRA tensor;
//! - `jvp16_per_dir_over_fwd`: sixteen directions in one pass, per direction, over the forward;
//! - `topthird_jvp_over_fwd`: one direction over the units of the top third of the layers only
//!   (what a depth-aware plan gives a client);
//! - `step_peak_mib_t512`: a whole client step at T = 512 (loss, JVP, estimate, AdamW update),
//!   peak resident memory above the resident weights, measured in a fresh child process;
//! - `smollm2_step_peak_rss_mib`: a SmolLM2-135M client step (B = 4, T = 256, LoRA on q/v),
//!   total peak resident memory of a fresh child process.
//!
//! Prints a table and then one JSON line with every figure.
//!
//! ```text
//! cargo run --release --example bench [-- --reps 5]
//! ```

use std::process::Command;

use clap::{Parser, ValueEnum};
use ndarray::Array2;
use spry::federated::{
    ClientConfig, HeadGrad, LocalOptimizer, Objective, OptimizerState, Perturbation, StepKey,
    directions, train_local,
};
use spry::metrics::{current_rss_mib, peak_rss_mib};
use spry::models::bert::{BertBatch, BertClassifier, Pooling};
use spry::models::pretrained::{load_bert_classifier_dir, load_llama_gguf};
use spry::modules::{Directions, LoraConfig, Trainable};
use spry::recipes::bundled::median_time;
use spry::tasks::{ClassificationTask, LabelledBatch, LanguageModelTask, LmBatch};
use spry::tokenizer::{TextTokenizer, TokenizerOptions};

/// Batch size of every MiniLM measurement (the anchor's).
const BATCH: usize = 8;

/// Which measurement a child process runs.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Child {
    /// A MiniLM client step at T = 512.
    Step512,
    /// A SmolLM2 client step at B = 4, T = 256.
    Smollm2,
}

/// Command-line options.
#[derive(Parser)]
struct Args {
    /// Timed repetitions per figure (median reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Sequence length of the timed figures.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Skip the two memory measurements (child processes).
    #[arg(long)]
    skip_memory: bool,
    /// Run one memory measurement in this process and print its JSON (used by the parent).
    #[arg(long, value_enum, hide = true)]
    child: Option<Child>,
}

fn main() {
    let args = Args::parse();
    let res = match args.child {
        Some(c) => child(c),
        None => run(&args),
    };
    if let Err(e) = res {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Deterministic token ids away from the special tokens.
fn ids(b: usize, t: usize, vocab: u32) -> Array2<u32> {
    Array2::from_shape_fn((b, t), |(i, j)| {
        1000 + ((i * 7919 + j * 104729) as u32 % (vocab - 2000))
    })
}

/// The anchor's model: MiniLM with LoRA r = 8, α = 16 on query/value and a pooler head.
fn minilm() -> Res<(BertClassifier<f32>, Trainable<f32>, TextTokenizer)> {
    let lora = LoraConfig::new(8, 16.0, 0.0, &["query", "value"]);
    let dir = spry::io::assets_dir().join("all-MiniLM-L6-v2");
    let (model, params, tok) =
        load_bert_classifier_dir(&dir, &lora, 2, 0, TokenizerOptions::default())?;
    Ok((model.with_pooling(Pooling::Pooler), params, tok))
}

fn labelled(t: usize) -> Res<LabelledBatch> {
    Ok(LabelledBatch {
        input: BertBatch::new(ids(BATCH, t, 30522), Array2::from_elem((BATCH, t), true))?,
        labels: (0..BATCH as i64).map(|i| i % 2).collect(),
    })
}

/// The LoRA tensors (every trainable tensor but the head).
fn lora_params(params: &Trainable<f32>, layers: Option<&[usize]>) -> Vec<usize> {
    (0..params.len())
        .filter(|&i| {
            let name = &params.names()[i];
            name.contains("lora_")
                && layers.is_none_or(|ls| ls.iter().any(|l| name.contains(&format!(".layer.{l}."))))
        })
        .collect()
}

fn key() -> StepKey {
    StepKey {
        seed: 0,
        round: 0,
        client: 0,
        step: 0,
    }
}

/// Matmul FLOPs of one forward (the anchor's `forward_matmul_flops`).
fn forward_flops(layers: usize, t: usize, d: usize, f: usize, r: usize) -> f64 {
    let (b, n) = (BATCH as f64, (BATCH * t) as f64);
    let (t, d, f, r) = (t as f64, d as f64, f as f64, r as f64);
    let per_layer =
        2.0 * n * (4.0 * d * d + 2.0 * d * f) + 4.0 * n * 2.0 * d * r + 4.0 * b * t * t * d;
    layers as f64 * per_layer + 2.0 * b * (d * d + 2.0 * d)
}

fn run(args: &Args) -> Res<()> {
    let (model, params, _tok) = minilm()?;
    let batch = labelled(args.seq)?;
    let cfg = model.bert().config().clone();
    let time = |dirs: &Directions<f32>| -> Res<f64> {
        let mut err = None;
        let d = median_time(1, args.reps, || {
            if let Err(e) = model.forward(&batch.input, Some(&batch.labels), &params, dirs, None) {
                err = Some(e);
            }
        });
        match err {
            Some(e) => Err(e.into()),
            None => Ok(d.as_secs_f64() * 1e3),
        }
    };
    let all = lora_params(&params, None);
    let n_layers = cfg.num_hidden_layers;
    let top: Vec<usize> = (n_layers - n_layers / 3..n_layers).collect();
    let top_params = lora_params(&params, Some(&top));
    let fwd_ms = time(&Directions::none(params.len()))?;
    let jvp1_ms = time(&directions(&params, &all, 1, key())?)?;
    let jvp16_ms = time(&directions(&params, &all, 16, key())?)?;
    let top_ms = time(&directions(&params, &top_params, 1, key())?)?;
    let flops = forward_flops(
        n_layers,
        args.seq,
        cfg.hidden_size,
        cfg.intermediate_size,
        8,
    );
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut figures = serde_json::json!({
        "batch": BATCH,
        "seq": args.seq,
        "threads": threads,
        "fwd_ms": fwd_ms,
        "fwd_gflops": flops / fwd_ms / 1e6,
        "jvp1_ms": jvp1_ms,
        "jvp1_over_fwd": jvp1_ms / fwd_ms,
        "jvp16_ms": jvp16_ms,
        "jvp16_per_dir_over_fwd": jvp16_ms / 16.0 / fwd_ms,
        "topthird_jvp_ms": top_ms,
        "topthird_jvp_over_fwd": top_ms / fwd_ms,
    });
    println!(
        "MiniLM geometry, LoRA r=8 on query/value, B={BATCH}, T={}, f32, {threads} threads",
        args.seq
    );
    println!(
        "  forward              {fwd_ms:>9.1} ms   {:>6.1} GFLOP/s",
        flops / fwd_ms / 1e6
    );
    println!(
        "  JVP, K=1             {jvp1_ms:>9.1} ms   {:>6.2}x forward",
        jvp1_ms / fwd_ms
    );
    println!(
        "  JVP, K=16            {jvp16_ms:>9.1} ms   {:>6.2}x forward per direction",
        jvp16_ms / 16.0 / fwd_ms
    );
    println!(
        "  JVP, top third, K=1  {top_ms:>9.1} ms   {:>6.2}x forward (layers {top:?})",
        top_ms / fwd_ms
    );
    drop((model, params));
    if !args.skip_memory {
        for (c, field, what) in [
            (
                Child::Step512,
                "step_peak_mib_t512",
                "client step T=512, working MiB above weights",
            ),
            (
                Child::Smollm2,
                "smollm2_step_peak_rss_mib",
                "SmolLM2 client step B=4 T=256, peak RSS MiB",
            ),
        ] {
            let out = run_child(c)?;
            let v = out[field].clone();
            println!("  {what:<52} {v}");
            for (k, v) in out.as_object().into_iter().flatten() {
                figures[k] = v.clone();
            }
        }
    }
    println!("{figures}");
    Ok(())
}

/// Runs `bench --child c` in a fresh process (a clean peak-RSS counter) and parses its JSON.
fn run_child(c: Child) -> Res<serde_json::Value> {
    let name = format!("{c:?}").to_lowercase();
    let out = Command::new(std::env::current_exe()?)
        .args(["--child", &name])
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "child {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let text = String::from_utf8(out.stdout)?;
    let line = text.lines().last().ok_or("child printed nothing")?;
    Ok(serde_json::from_str(line)?)
}

/// One client step exactly as a Spry client runs it: `train_local` over a single batch.
fn client_step(cfg_k: usize) -> ClientConfig {
    ClientConfig {
        k: cfg_k,
        local_epochs: 1,
        optimizer: LocalOptimizer::adamw(1e-4),
        head_optimizer: None,
        jvp_clip: None,
        head_grad: HeadGrad::Forward,
        dropout: false,
        perturbation: Perturbation::All,
        ..ClientConfig::default()
    }
}

/// One client step over every LoRA tensor (loss, JVP with one direction, estimate, AdamW
/// update) on `batches`; returns its wall time in ms.
fn one_client_step<O: Objective<f32>>(
    task: &O,
    params: &mut Trainable<f32>,
    batches: &[O::Batch],
) -> Res<f64> {
    let all = lora_params(params, None);
    let mut state = OptimizerState::new(params.len());
    let t0 = std::time::Instant::now();
    train_local(
        task,
        params,
        &all,
        batches,
        &client_step(1),
        &mut state,
        key(),
    )?;
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

fn child(c: Child) -> Res<()> {
    match c {
        Child::Step512 => {
            let (model, mut params, tok) = minilm()?;
            let batches = vec![labelled(512)?];
            let task = ClassificationTask {
                model: &model,
                tokenizer: &tok,
                train: Vec::new(),
                test: Vec::new(),
                client_train: Vec::new(),
                client_test: Vec::new(),
                seed: 0,
                eval_batch: BATCH,
            };
            let resident = current_rss_mib().ok_or("no /proc/self/status")?;
            let ms = one_client_step(&task, &mut params, &batches)?;
            let peak = peak_rss_mib().ok_or("no /proc/self/status")?;
            println!(
                "{}",
                serde_json::json!({
                    "step_peak_mib_t512": peak - resident,
                    "step_ms_t512": ms,
                    "minilm_resident_mib": resident,
                })
            );
        }
        Child::Smollm2 => {
            let lora = LoraConfig::new(8, 16.0, 0.0, &["q_proj", "v_proj"]);
            let gguf = spry::io::asset("SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf")?;
            let (llama, mut params, _) = load_llama_gguf(&gguf, &lora, 0)?;
            let resident = current_rss_mib().ok_or("no /proc/self/status")?;
            let x = ids(4, 256, 49152);
            let batches = vec![LmBatch {
                labels: x.mapv(|v| v as i64),
                mask: Array2::from_elem(x.dim(), true),
                ids: x,
            }];
            let task = LanguageModelTask {
                model: &llama,
                train: Vec::new(),
                test: Vec::new(),
                client_train: Vec::new(),
                seed: 0,
            };
            let ms = one_client_step(&task, &mut params, &batches)?;
            println!(
                "{}",
                serde_json::json!({
                    "smollm2_step_peak_rss_mib": peak_rss_mib().ok_or("no /proc/self/status")?,
                    "smollm2_resident_mib": resident,
                    "smollm2_step_ms": ms,
                })
            );
        }
    }
    Ok(())
}

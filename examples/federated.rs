//! Spry federated finetuning of all-MiniLM-L6-v2 on Rotten Tomatoes (rt_polarity), with the
//! FedMeZO and FedFgd baselines on the same setup.
//!
//! ```text
//! cargo run --release --example federated -- --out runs/spry
//! cargo run --release --example federated -- --method fedmezo --out runs/mezo
//! ```
//! Writes `metrics.csv`, `accuracy.svg`, `checkpoint.json` (resumable with `--resume`),
//! `summary.json` and the trained adapter with its classification head in PEFT's format
//! (`adapter/` at the end, `adapter-best/` for the best evaluated round) to the output folder.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use spry::data::{PartitionScheme, load_labelled_tsv};
use spry::federated::{
    ClientConfig, CommMode, DiagnosticsConfig, DirectionScheme, FederatedTask, HeadGrad,
    LocalOptimizer, LrSchedule, Method, Perturbation, PlannerKind, RoundMetrics, RunSummary,
    ServerOptimizer, SimConfig, Simulation, metrics_csv, personalized_accuracy,
};
use spry::models::bert::Pooling;
use spry::models::pretrained::load_bert_classifier_dir;
use spry::modules::{LoraConfig, parse_layers, save_peft_adapter};
use spry::tasks::ClassificationTask;
use spry::tokenizer::TokenizerOptions;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum EvalArg {
    Val,
    Test,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ServerArg {
    Fedavg,
    Fedavgm,
    Fedyogi,
    Fedadam,
    Fedadagrad,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PartitionArg {
    Dirichlet,
    Iid,
    Natural,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PoolingArg {
    Mean,
    Pooler,
}

/// Federated finetuning of MiniLM on rt_polarity with Spry or a baseline.
#[derive(Parser, Debug)]
struct Args {
    /// Training method: `spry`, `fedmezo`, `fedfgd`, or `head-only` (adapters frozen, the head
    /// on its exact gradient: a federated linear probe).
    #[arg(long, default_value = "spry")]
    method: Method,
    /// Rounds (at most: `--time-budget-s` stops the run after the round that crosses it).
    #[arg(long, default_value_t = tuned().rounds)]
    rounds: u64,
    /// Stop after the round that crosses this many seconds of training (0 = no limit); the
    /// summary says where it stopped. The default keeps the whole run (loading, final
    /// evaluation and the personalised metric included) within 30 minutes on 2 cores.
    #[arg(long, default_value_t = 1500.0)]
    time_budget_s: f64,
    /// Total clients.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Clients sampled per round (20: the round's average over label-skewed clients then
    /// swings half as much as with 10, for the same examples per minute).
    #[arg(long, default_value_t = tuned().clients_per_round)]
    per_round: usize,
    /// Local epochs per round.
    #[arg(long, default_value_t = tuned().client.local_epochs)]
    local_epochs: usize,
    /// Minibatch size.
    #[arg(long, default_value_t = tuned().batch_size)]
    batch_size: usize,
    /// Maximum tokens per text.
    #[arg(long, default_value_t = 64)]
    max_len: usize,
    /// Tangent directions per step (one dual pass).
    #[arg(long, default_value_t = tuned().client.k)]
    k: usize,
    /// Communication mode: `per-epoch` or `per-iteration` (K JVP scalars per step).
    #[arg(long, default_value = "per-epoch")]
    comm: CommMode,
    /// Planner (Spry): `depth`, `reference` or `reshuffle`.
    #[arg(long, default_value = "depth")]
    planner: PlannerKind,
    /// Server optimizer. FedAvgM's momentum averages the pseudo-gradients of several rounds, so
    /// a round whose sampled clients share a skewed label mix moves the model less.
    #[arg(long, value_enum, default_value = "fedavgm")]
    server: ServerArg,
    /// Server learning rate (η); default: 0.5 for FedAvg, 0.1 for FedAvgM (with μ = 0.8 an
    /// effective step of η/(1 − μ) = 0.5, averaged over about five rounds), Flower's defaults
    /// otherwise.
    #[arg(long)]
    server_lr: Option<f64>,
    /// FedAvgM's server momentum μ (default: `SimConfig::tuned_classifier`'s 0.8).
    #[arg(long)]
    server_momentum: Option<f64>,
    /// Client learning rate of the forward-gradient (and zero-order) estimates (SGD at 1: chosen
    /// on the validation split, see docs/FORWARD_GRADIENTS.md; 0.1 and 0.3 learn more slowly).
    #[arg(long, default_value_t = 1.0)]
    lr: f64,
    /// Client optimizer of the forward-gradient (and zero-order) estimates. SGD follows the
    /// estimate's magnitude; AdamW moves every coordinate by about `lr` per step whatever the
    /// (noise-dominated) estimate says, and at 1e-4 or 1e-3 left the adapters' effect on the
    /// loss below 1e-3 nats.
    #[arg(long, default_value = "sgd", value_parser = ["sgd", "adamw"])]
    optimizer: String,
    /// Which tensors of an assigned LoRA unit are perturbed: `all`, `b-only` (A frozen at its
    /// random init: while B = 0 a direction on A is pure noise) or `b-first` (A once B ≠ 0).
    #[arg(long, default_value = "b-only")]
    perturbation: Perturbation,
    /// How directions are drawn: `gaussian` (independent), `guided` (one of the K directions
    /// along each LoRA B's current value, the rest orthogonal to it) or `orthogonal` (the K
    /// Gaussian draws of each tensor orthonormalised and scaled to length √d); all unbiased.
    #[arg(long, default_value = "gaussian")]
    directions: DirectionScheme,
    /// Decay the client learning rates (adapters and head) as `1/√(1 + r/τ)` in round r (τ
    /// given here, in rounds); unset: constant rates.
    #[arg(long)]
    lr_decay_rounds: Option<f64>,
    /// Fraction of the training file held out as a validation split (never trained on).
    #[arg(long, default_value_t = 0.1)]
    val_frac: f64,
    /// Which split the periodic evaluations report: the validation split (for choosing
    /// hyper-parameters) or the test set (for the final numbers only).
    #[arg(long, value_enum, default_value = "test")]
    eval: EvalArg,
    /// Per-round diagnostics on a 4-example probe batch (exact gradient of one adapter unit by
    /// forward mode, estimator and update cosines, adapter norms, the adapters' effect); their
    /// time is excluded from `wall_s`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    diagnostics: bool,
    /// Rounds between the diagnostics' exact-gradient measurements (the costly part: a few dual
    /// passes of 64 basis directions per 64 scalars of the probed unit).
    #[arg(long, default_value_t = 5)]
    diag_gradient_every: u64,
    /// Optimizer of the classification head, however its gradient is obtained: plain SGD
    /// follows the gradient's magnitude and settles, where AdamW, restarted every round, takes
    /// sign-like steps of `--head-lr` and keeps oscillating.
    #[arg(long, default_value = "sgd", value_parser = ["sgd", "adamw"])]
    head_optimizer: String,
    /// Learning rate of `--head-optimizer` (default: 2 on the exact head gradient,
    /// `HEAD_LR_FORWARD` on a forward-gradient estimate, `HEAD_LR_SPSA` under FedMeZO). The
    /// mean-pooled MiniLM features are small (mean |x| ≈ 0.15, top eigenvalue of E[xxᵀ] ≈ 3.3),
    /// so the head's cross-entropy is flat and SGD takes a large rate on the exact gradient;
    /// much above 2 the local steps overshoot (local losses of several nats) and the round's
    /// average becomes erratic. An estimate carries noise of about √(d/K) times the
    /// gradient's norm along every direction it samples, and at 1 the head's local losses
    /// reach several nats in the first round.
    #[arg(long)]
    head_lr: Option<f64>,
    /// Gradient of the classification head: exact (free, from the primal pass) or forward.
    #[arg(long, default_value = "exact")]
    head_grad: HeadGrad,
    /// Every client trains the head (cheap with an exact gradient), on top of its plan.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    head_to_all: bool,
    /// Head input: mean of the token states (how MiniLM was trained) or BERT's pooler.
    #[arg(long, value_enum, default_value = "mean")]
    pooling: PoolingArg,
    /// LoRA rank (`LoraConfig::tuned_classifier`'s 4: the best of 1, 2, 4, 8 on the validation
    /// split).
    #[arg(long, default_value_t = tuned_lora().r)]
    lora_r: usize,
    /// LoRA α (α = r: the update's scale α/r is 1).
    #[arg(long, default_value_t = tuned_lora().lora_alpha)]
    lora_alpha: f64,
    /// LoRA target modules (PEFT suffix match), comma-separated; e.g. `query,key,value,dense`
    /// for every linear layer of the encoder.
    #[arg(long, value_delimiter = ',', default_value = "query,value")]
    targets: Vec<String>,
    /// Only these encoder layers get adapters (PEFT's `layers_to_transform`), comma-separated
    /// (default: the top two of MiniLM's six, so each of the four units is trained by five of
    /// the 20 clients of a round and the tangents start at layer 4); `all` for every layer.
    #[arg(long, default_value = "4,5")]
    lora_layers: String,
    /// Data partition.
    #[arg(long, value_enum, default_value = "dirichlet")]
    partition: PartitionArg,
    /// Dirichlet α.
    #[arg(long, default_value_t = 1.0)]
    alpha: f64,
    /// Run seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Evaluate on the test set every this many rounds.
    #[arg(long, default_value_t = 5)]
    eval_every: u64,
    /// Clients trained concurrently.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Clients evaluated after local finetuning at the end (the reference's "after" metric).
    #[arg(long, default_value_t = 5)]
    personalize_clients: usize,
    /// Output folder.
    #[arg(long, default_value = "runs/federated")]
    out: PathBuf,
    /// Resume from `<out>/checkpoint.json` if present.
    #[arg(long)]
    resume: bool,
    /// Assets folder (default: `$SPRY_ASSETS`, else `./assets` if present, else the per-user cache: `spry::io::assets_dir`).
    #[arg(long)]
    assets: Option<PathBuf>,
}

/// The library's recipe tuned for classification: the defaults of the flags above.
fn tuned() -> SimConfig {
    SimConfig::tuned_classifier(0)
}

/// The library's adapters tuned for classification, for MiniLM's six layers.
fn tuned_lora() -> LoraConfig {
    LoraConfig::tuned_classifier(6)
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let assets = args.assets.clone().unwrap_or_else(spry::io::assets_dir);
    let model_dir = assets.join("all-MiniLM-L6-v2");
    if !model_dir.join("model.safetensors").is_file() {
        return Err(format!(
            "{} is missing: run scripts/fetch_assets.sh",
            model_dir.display()
        )
        .into());
    }
    std::fs::create_dir_all(&args.out)?;
    let lora = LoraConfig {
        r: args.lora_r,
        lora_alpha: args.lora_alpha,
        target_modules: args.targets.clone(),
        layers_to_transform: parse_layers(&args.lora_layers)?,
        base_model_name_or_path: Some("sentence-transformers/all-MiniLM-L6-v2".into()),
        ..tuned_lora()
    };
    let opts = TokenizerOptions::default().with_max_len(args.max_len);
    let (model, initial, tokenizer) =
        load_bert_classifier_dir(&model_dir, &lora, 2, args.seed, opts)?;
    let model = model.with_pooling(match args.pooling {
        PoolingArg::Mean => Pooling::Mean,
        PoolingArg::Pooler => Pooling::Pooler,
    });
    let full_train = load_labelled_tsv(
        &assets.join("text/rt_polarity_train.tsv"),
        "text",
        "label",
        Some("movie"),
    )?;
    let (train, val) = spry::data::holdout(full_train, args.val_frac, args.seed)?;
    let test = match args.eval {
        EvalArg::Val => val,
        EvalArg::Test => load_labelled_tsv(
            &assets.join("text/rt_polarity_test.tsv"),
            "text",
            "label",
            None,
        )?,
    };
    let scheme = match args.partition {
        PartitionArg::Dirichlet => PartitionScheme::Dirichlet { alpha: args.alpha },
        PartitionArg::Iid => PartitionScheme::Iid,
        PartitionArg::Natural => PartitionScheme::Natural,
    };
    let task = ClassificationTask::new(
        &model,
        &tokenizer,
        train,
        test,
        &scheme,
        args.clients,
        args.seed,
    )?;
    let tuned = SimConfig::tuned_classifier(model.head_unit());
    let server = match args.server {
        ServerArg::Fedavg => ServerOptimizer::FedAvg { eta: 0.5 },
        ServerArg::Fedavgm => tuned.server,
        ServerArg::Fedyogi => ServerOptimizer::fedyogi(),
        ServerArg::Fedadam => ServerOptimizer::fedadam(),
        ServerArg::Fedadagrad => ServerOptimizer::fedadagrad(),
    };
    let server = match (server, args.server_momentum) {
        (ServerOptimizer::FedAvgM { eta, .. }, Some(momentum)) => {
            ServerOptimizer::FedAvgM { eta, momentum }
        }
        (s, _) => s,
    };
    let server = args.server_lr.map_or(server, |eta| server.with_eta(eta));
    let config = SimConfig {
        method: args.method,
        clients_per_round: args.per_round,
        rounds: args.rounds,
        batch_size: args.batch_size,
        comm: args.comm,
        planner: args.planner,
        server,
        client: ClientConfig {
            k: args.k,
            local_epochs: args.local_epochs,
            optimizer: LocalOptimizer::named(&args.optimizer, args.lr)?,
            head_optimizer: Some(LocalOptimizer::named(&args.head_optimizer, head_lr(&args))?),
            head_grad: args.head_grad,
            perturbation: args.perturbation,
            directions: args.directions,
            lr_schedule: match args.lr_decay_rounds {
                Some(rounds) => LrSchedule::InverseSqrt { rounds },
                None => LrSchedule::Constant,
            },
            ..tuned.client.clone()
        },
        seed: args.seed,
        eval_every: args.eval_every,
        workers: args.workers,
        shared_units: if args.head_to_all || args.method == Method::HeadOnly {
            tuned.shared_units.clone()
        } else {
            Vec::new()
        },
        diagnostics: args.diagnostics.then(|| DiagnosticsConfig {
            gradient_every: args.diag_gradient_every,
            ..DiagnosticsConfig::default()
        }),
        ..tuned
    };
    let ckpt_path = args.out.join("checkpoint.json");
    let mut sim = if args.resume && ckpt_path.is_file() {
        let ckpt = Simulation::<f32>::load_checkpoint(&ckpt_path)?;
        eprintln!("resuming from round {}", ckpt.round);
        Simulation::resume(&config, initial.clone(), ckpt)?
    } else {
        Simulation::new(config.clone(), initial.clone())?
    };
    let before = task.evaluate(&sim.global)?;
    eprintln!(
        "{} clients, {} train / {} test examples, {} trainable tensors in {} units ({} scalars); test accuracy before training {:.2}%",
        task.n_clients(),
        task.train.len(),
        task.test.len(),
        initial.len(),
        initial.units().len(),
        initial.n_scalars(),
        100.0 * before.accuracy.unwrap_or(0.0)
    );
    let bar = ProgressBar::new(config.rounds);
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} rounds {elapsed} {msg}",
    )?);
    bar.set_position(sim.round);
    let budget = args.time_budget_s;
    let metrics_path = args.out.join("metrics.csv");
    let mut csv = metrics_csv(&sim.history);
    // the adapter of the best evaluated round goes to <out>/adapter-best as the run goes
    let best_dir = args.out.join("adapter-best");
    let mut best = sim
        .history
        .iter()
        .filter_map(|m| m.test.and_then(|t| t.accuracy))
        .fold(f64::NEG_INFINITY, f64::max);
    let mut save_error = None;
    sim.run_with(&task, Some(&ckpt_path), |m, global| {
        csv.push_str(&m.csv_row());
        let _ = std::fs::write(&metrics_path, &csv);
        let acc = m.test.and_then(|t| t.accuracy);
        if let Some(a) = acc.filter(|&a| a > best) {
            best = a;
            if let Err(e) = save_peft_adapter(&best_dir, &lora, global) {
                save_error = Some(e);
                return false;
            }
        }
        let acc = acc.map_or(String::new(), |a| format!("acc {:.2}%", 100.0 * a));
        bar.set_message(format!("loss {:.4} {acc}", m.train_loss));
        bar.inc(1);
        budget <= 0.0 || m.wall_s < budget
    })?;
    if let Some(e) = save_error {
        return Err(e.into());
    }
    bar.finish();
    // the last state is evaluated, and the last row of metrics.csv has that evaluation
    let last = sim.evaluate_last(&task)?;
    std::fs::write(&metrics_path, metrics_csv(&sim.history))?;
    save_peft_adapter(&args.out.join("adapter"), &lora, &sim.global)?;
    plot(
        &args.out.join("accuracy.svg"),
        &sim.history,
        &format!("{:?}", args.method),
    )?;
    let mut summary = RunSummary::new(&sim, before, last);
    // the reference's "after local finetuning" metric on a few clients
    if let Some((b, a)) = personalized_accuracy(&task, &sim, args.personalize_clients, 5)? {
        summary.personalized_accuracy_before = Some(b);
        summary.personalized_accuracy_after = Some(a);
    }
    let mut summary = serde_json::to_value(summary)?;
    summary["eval_split"] = format!("{:?}", args.eval).to_lowercase().into();
    summary["total_s"] = start.elapsed().as_secs_f64().into();
    summary["args"] = format!("{args:?}").into();
    std::fs::write(
        args.out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// The head's learning rate on a forward-gradient estimate: the better of 0.03 and 0.1 on the
/// validation split (`docs/FORWARD_GRADIENTS.md`; at 1 it blew up).
const HEAD_LR_FORWARD: f64 = 0.1;
/// The head's learning rate on FedMeZO's SPSA estimate: the better of 0.03 and 0.1 there.
const HEAD_LR_SPSA: f64 = 0.03;

/// `--head-lr`, or its default for how the head is trained.
fn head_lr(args: &Args) -> f64 {
    let default = match (args.method, args.head_grad) {
        (Method::FedMezo, _) => HEAD_LR_SPSA,
        (_, HeadGrad::Exact) => 2.0,
        (_, HeadGrad::Forward) => HEAD_LR_FORWARD,
    };
    args.head_lr.unwrap_or(default)
}

fn plot(
    path: &std::path::Path,
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
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (lo, hi) = pts.iter().fold((50.0f64, 60.0f64), |(l, h), &(_, a)| {
        (l.min(a - 2.0), h.max(a + 2.0))
    });
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("test accuracy ({label})"), ("sans-serif", 20))
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

//! Spry next-token finetuning of SmolLM2-135M-Instruct (GGUF) on Hamlet: LoRA on q_proj/v_proj,
//! forward gradients, federated over clients holding disjoint parts of the play. Reports the
//! held-out next-token NLL before and after, and writes the trained adapter in PEFT's format to
//! `<out>/adapter` (`generate --adapter <out>/adapter` shows the finetuned model).
//!
//! ```text
//! cargo run --release --example finetune_lm -- --rounds 4 --out runs/lm
//! ```

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use spry::data::iid;
use spry::federated::{
    ClientConfig, CommMode, DirectionScheme, HeadGrad, LocalOptimizer, LrSchedule, Method,
    Perturbation, PlannerKind, ServerOptimizer, SimConfig, Simulation,
};
use spry::models::pretrained::load_llama_gguf;
use spry::modules::{LoraConfig, parse_layers, save_peft_adapter};
use spry::tasks::{LanguageModelTask, lm_sequences};

/// Federated Spry finetuning of SmolLM2 on hamlet.txt.
#[derive(Parser, Debug)]
struct Args {
    /// Rounds.
    #[arg(long, default_value_t = 4)]
    rounds: u64,
    /// Total clients.
    #[arg(long, default_value_t = 20)]
    clients: usize,
    /// Clients per round.
    #[arg(long, default_value_t = 4)]
    per_round: usize,
    /// Tokens per training sequence.
    #[arg(long, default_value_t = 64)]
    seq_len: usize,
    /// Sequences per batch. One: the forward-gradient noise (√(d/K) of the gradient's norm)
    /// dwarfs the minibatch noise, so four steps on one sequence each learn more than one step
    /// on four; a step on one sequence costs about half a step on four, and on the validation
    /// block the NLL fell twice as fast per second.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Training sequences used (from the start of the play; 0 = all).
    #[arg(long, default_value_t = 320)]
    train_seqs: usize,
    /// Held-out sequences for the NLL: the test block is the end of the play, the validation
    /// block the sequences just before it; neither is ever trained on.
    #[arg(long, default_value_t = 24)]
    eval_seqs: usize,
    /// Which held-out block the NLL is measured on: `val` for choosing settings, `test` to report.
    #[arg(long, default_value = "test", value_parser = ["val", "test"])]
    eval: String,
    /// Tangent directions per step.
    #[arg(long, default_value_t = 4)]
    k: usize,
    /// Training method: Spry (forward gradients on split units) or the FedMeZO baseline.
    #[arg(long, default_value = "spry", value_parser = ["spry", "fedmezo"])]
    method: String,
    /// Client learning rate (default: the best on the validation block of those tried, per
    /// method: `SPRY_LR` for Spry, `MEZO_LR` for FedMeZO).
    #[arg(long)]
    lr: Option<f64>,
    /// Client optimizer.
    #[arg(long, default_value = "sgd", value_parser = ["sgd", "adamw"])]
    optimizer: String,
    /// Which tensors of an assigned LoRA unit are perturbed: all, b-only or b-first (B starts
    /// at zero, where a direction on A changes nothing and only adds noise).
    #[arg(long, default_value = "b-only")]
    perturbation: Perturbation,
    /// Directions: gaussian, guided by each LoRA B's current value, or orthogonal.
    #[arg(long, default_value = "gaussian")]
    directions: DirectionScheme,
    /// Decay the client learning rate as `1/√(1 + r/τ)` in round r (τ given here, in rounds);
    /// unset: a constant rate.
    #[arg(long)]
    lr_decay_rounds: Option<f64>,
    /// Layers with adapters (PEFT's `layers_to_transform`): `all` or indices such as `26,27,28,29`
    /// (default: the top six of SmolLM2's 30, so the tangents start at layer 24).
    #[arg(long, default_value = "24,25,26,27,28,29")]
    lora_layers: String,
    /// Evaluate the held-out NLL every this many rounds (0: only at the end).
    #[arg(long, default_value_t = 0)]
    eval_every: u64,
    /// Stop after the round that crosses this many seconds of training (0 = no limit).
    #[arg(long, default_value_t = 0.0)]
    time_budget_s: f64,
    /// LoRA rank.
    #[arg(long, default_value_t = 4)]
    lora_r: usize,
    /// Run seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder.
    #[arg(long, default_value = "runs/finetune_lm")]
    out: PathBuf,
    /// The GGUF file (default: the fetched SmolLM2).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Assets folder (default: `$SPRY_ASSETS`, else `./assets` if present, else the per-user cache: `spry::io::assets_dir`).
    #[arg(long)]
    assets: Option<PathBuf>,
}

/// Spry's SGD rate on the forward-gradient estimates of LoRA B, the best of 1, 3 and 10 on the
/// validation block (10 diverged; `docs/FORWARD_GRADIENTS.md`).
const SPRY_LR: f64 = 3.0;
/// FedMeZO's SGD rate on its SPSA estimates, the best of 0.1, 0.3, 1 and 3 on the validation
/// block.
const MEZO_LR: f64 = 1.0;

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let assets = args.assets.clone().unwrap_or_else(spry::io::assets_dir);
    let gguf = args
        .gguf
        .clone()
        .unwrap_or_else(|| assets.join("SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if !gguf.is_file() {
        return Err(format!("{} is missing: run scripts/fetch_assets.sh", gguf.display()).into());
    }
    std::fs::create_dir_all(&args.out)?;
    let lora = LoraConfig {
        layers_to_transform: parse_layers(&args.lora_layers)?,
        task_type: Some("CAUSAL_LM".into()),
        base_model_name_or_path: Some("HuggingFaceTB/SmolLM2-135M-Instruct".into()),
        ..LoraConfig::new(
            args.lora_r,
            2.0 * args.lora_r as f64,
            0.0,
            &["q_proj", "v_proj"],
        )
    };
    let (model, initial, tokenizer) = load_llama_gguf(&gguf, &lora, args.seed)?;
    let text = std::fs::read_to_string(assets.join("text/hamlet.txt"))?;
    let tokens = tokenizer.encode(&text, false)?.ids;
    let seqs = lm_sequences(&tokens, args.seq_len);
    let n_eval = args.eval_seqs.min(seqs.len() / 10).max(1);
    if seqs.len() < 3 * n_eval {
        return Err(format!(
            "only {} sequences of {}: too short to hold out validation and test",
            seqs.len(),
            args.seq_len
        )
        .into());
    }
    // [ train ... | validation (n_eval) | test (n_eval) ]
    let (train_end, val_end) = (seqs.len() - 2 * n_eval, seqs.len() - n_eval);
    let test: Vec<Vec<u32>> = if args.eval == "val" {
        seqs[train_end..val_end].to_vec()
    } else {
        seqs[val_end..].to_vec()
    };
    let mut train: Vec<Vec<u32>> = seqs[..train_end].to_vec();
    if args.train_seqs > 0 {
        train.truncate(args.train_seqs);
    }
    let client_train = iid(train.len(), args.clients, args.seed)?;
    let task = LanguageModelTask {
        model: &model,
        train,
        test,
        client_train,
        seed: args.seed,
    };
    let before = task.nll(&task.test, &initial, 4)?;
    eprintln!(
        "{} tokens of Hamlet, {} training / {} {} sequences of {}; {} LoRA units; held-out NLL before {:.4}",
        tokens.len(),
        task.train.len(),
        task.test.len(),
        args.eval,
        args.seq_len,
        initial.units().len(),
        before.loss
    );
    let lr = args.lr.unwrap_or(if args.method == "fedmezo" {
        MEZO_LR
    } else {
        SPRY_LR
    });
    let config = SimConfig {
        method: if args.method == "fedmezo" {
            Method::FedMezo
        } else {
            Method::Spry
        },
        clients_per_round: args.per_round,
        rounds: args.rounds,
        batch_size: args.batch_size,
        comm: CommMode::PerEpoch,
        planner: PlannerKind::Depth,
        server: ServerOptimizer::fedavg(),
        client: ClientConfig {
            k: args.k,
            local_epochs: 1,
            optimizer: LocalOptimizer::named(&args.optimizer, lr)?,
            head_optimizer: None,
            jvp_clip: None,
            head_grad: HeadGrad::Forward,
            dropout: false,
            zo_eps: 1e-3,
            perturbation: args.perturbation,
            directions: args.directions,
            lr_schedule: match args.lr_decay_rounds {
                Some(rounds) => LrSchedule::InverseSqrt { rounds },
                None => LrSchedule::Constant,
            },
        },
        keep_client_state: false,
        seed: args.seed,
        eval_every: if args.eval_every == 0 {
            args.rounds.max(1)
        } else {
            args.eval_every
        },
        drop_prob: 0.0,
        min_clients: 1,
        workers: 1,
        shared_units: Vec::new(),
        diagnostics: None,
    };
    let mut sim = Simulation::new(config, initial)?;
    let metrics_path = args.out.join("metrics.csv");
    let mut csv = format!(
        "round,wall_s,train_loss,test_nll\n0,0,,{:.6}\n",
        before.loss
    );
    sim.run(&task, Some(&args.out.join("checkpoint.json")), |m| {
        let nll = m.test.map_or(String::new(), |t| format!("{:.6}", t.loss));
        eprintln!(
            "round {} train loss {:.4} held-out NLL {nll} ({:.0} s)",
            m.round, m.train_loss, m.wall_s
        );
        csv.push_str(&format!(
            "{},{:.3},{:.6},{nll}\n",
            m.round, m.wall_s, m.train_loss
        ));
        let _ = std::fs::write(&metrics_path, &csv);
        args.time_budget_s <= 0.0 || m.wall_s < args.time_budget_s
    })?;
    let after = sim
        .history
        .last()
        .and_then(|m| m.test)
        .map_or_else(|| task.nll(&task.test, &sim.global, 4), Ok)?;
    if let Some(last) = sim.history.last().filter(|m| m.test.is_none()) {
        // the run stopped between evaluations: the final evaluation completes the last row
        let cut = csv.trim_end().rfind('\n').map_or(0, |i| i + 1);
        csv.truncate(cut);
        csv.push_str(&format!(
            "{},{:.3},{:.6},{:.6}\n",
            last.round, last.wall_s, last.train_loss, after.loss
        ));
        std::fs::write(&metrics_path, &csv)?;
    }
    // the trained adapter in PEFT's format (`generate --adapter` reads it)
    save_peft_adapter(&args.out.join("adapter"), &lora, &sim.global)?;
    let (up, down) = sim
        .history
        .iter()
        .fold((0u64, 0u64), |(u, d), m| (u + m.bytes.up, d + m.bytes.down));
    let summary = serde_json::json!({
        "args": format!("{args:?}"),
        "method": args.method,
        "eval_split": args.eval,
        "rounds": sim.round,
        "nll_before": before.loss,
        "nll_after": after.loss,
        "final_test_nll": after.loss,
        "wall_s": sim.history.last().map_or(0.0, |m| m.wall_s),
        "total_s": start.elapsed().as_secs_f64(),
        "peak_rss_mib": spry::metrics::peak_rss_mib(),
        "bytes_up": up,
        "bytes_down": down,
        "skipped_steps": sim.history.iter().map(|m| m.skipped_steps).sum::<usize>(),
        "config": sim.config,
    });
    std::fs::write(
        args.out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

//! A whole federated next-token finetuning run of a Llama-family GGUF model on a text file:
//! Spry or FedMeZO over clients holding disjoint parts of the text, the held-out NLL and a sample
//! continuation before and after. By default SmolLM2-135M-Instruct on Hamlet with the settings
//! chosen on the play's validation block (`docs/FORWARD_GRADIENTS.md`).
//!
//! ```text
//! text ─► tokens ─► [ train … | validation | test ] sequences ─► LanguageModelTask
//!                                                        └─► Simulation::run_with ─► out/
//!   config.json, metrics.csv, checkpoint.json, adapter/, adapter-best/, summary.json
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::bundled::{SMOLLM2_GGUF, ensure_bundled};
use super::config::{EvalSplit, by_name, record_settings};
use crate::data::iid;
use crate::federated::{
    ClientConfig, CommMode, DirectionScheme, HeadGrad, LocalOptimizer, LrSchedule, Method,
    Perturbation, PlannerKind, RoundMetrics, ServerOptimizer, SimConfig, Simulation,
};
use crate::io::assets_dir;
use crate::models::llama::Llama;
use crate::models::pretrained::{load_llama_gguf, require_file};
use crate::modules::{LoraConfig, Trainable, parse_layers, save_peft_adapter};
use crate::tasks::{LanguageModelTask, lm_sequences};
use crate::tokenizer::TextTokenizer;
use crate::{Error, Result};

/// Every setting of a federated causal-LM finetuning run; each a flag and a config-file key.
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LanguageModelRun {
    /// The GGUF model (Llama family); default: SmolLM2-135M-Instruct in the assets folder.
    #[arg(long)]
    pub gguf: Option<PathBuf>,
    /// The text to finetune on (UTF-8); default: Hamlet in the assets folder.
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Training method: `spry` (forward gradients on split units) or `fedmezo`.
    #[arg(long, default_value_t = defaults().method)]
    #[serde(with = "by_name")]
    pub method: Method,
    /// Rounds (at most: `time_budget_s` stops the run after the round that crosses it).
    #[arg(long, default_value_t = defaults().rounds)]
    pub rounds: u64,
    /// Stop after the round that crosses this many seconds of training (0 = no limit).
    #[arg(long, default_value_t = defaults().time_budget_s)]
    pub time_budget_s: f64,
    /// Total clients (disjoint parts of the training sequences).
    #[arg(long, default_value_t = defaults().clients)]
    pub clients: usize,
    /// Clients per round (the depth planner splits the adapter units among them).
    #[arg(long, default_value_t = defaults().per_round)]
    pub per_round: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = defaults().seq_len)]
    pub seq_len: usize,
    /// Sequences per step. One: the forward-gradient noise (√(d/K) of the gradient's norm)
    /// dwarfs the minibatch noise, and a step on one sequence costs about half a step on four;
    /// on the validation block the NLL fell twice as fast per second.
    #[arg(long, default_value_t = defaults().batch_size)]
    pub batch_size: usize,
    /// Training sequences used, from the start of the text (0 = all before the held-out blocks).
    #[arg(long, default_value_t = defaults().train_seqs)]
    pub train_seqs: usize,
    /// Sequences in each held-out block (at most a tenth of the text).
    #[arg(long, default_value_t = defaults().eval_seqs)]
    pub eval_seqs: usize,
    /// Held-out block of the NLL: `val` (the sequences just before the test block, for
    /// choosing settings) or `test` (the end of the text, for reporting).
    #[arg(long, default_value_t = defaults().eval)]
    #[serde(with = "by_name")]
    pub eval: EvalSplit,
    /// Evaluate every this many rounds (0: only at the end).
    #[arg(long, default_value_t = defaults().eval_every)]
    pub eval_every: u64,
    /// Tangent directions per step.
    #[arg(long, default_value_t = defaults().k)]
    pub k: usize,
    /// Client learning rate; default: 3 for Spry (of 1, 3, 10 on the validation block; 10
    /// diverged), 1 for FedMeZO (of 0.1, 0.3, 1, 3).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Client optimizer: `sgd` or `adamw`.
    #[arg(long, default_value_t = defaults().optimizer)]
    pub optimizer: String,
    /// Which tensors of an assigned LoRA unit are perturbed: `all`, `b-only`, `b-first`.
    #[arg(long, default_value_t = defaults().perturbation)]
    #[serde(with = "by_name")]
    pub perturbation: Perturbation,
    /// Directions: `gaussian`, `guided` or `orthogonal`.
    #[arg(long, default_value_t = defaults().directions)]
    #[serde(with = "by_name")]
    pub directions: DirectionScheme,
    /// Decay the client rate as `1/√(1 + r/τ)` in round r (τ in rounds); unset: constant.
    #[arg(long)]
    pub lr_decay_rounds: Option<f64>,
    /// Layers with adapters: `all`, or indices such as `24,25`; default: the top six (for
    /// SmolLM2's 30 layers the tangents start at layer 24).
    #[arg(long)]
    pub lora_layers: Option<String>,
    /// LoRA target modules, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = defaults().targets)]
    pub targets: Vec<String>,
    /// LoRA rank (α = 2r).
    #[arg(long, default_value_t = defaults().lora_r)]
    pub lora_r: usize,
    /// Tokens of the sample continuation generated before and after training (0: none).
    #[arg(long, default_value_t = defaults().sample_tokens)]
    pub sample_tokens: usize,
    /// Run seed.
    #[arg(long, default_value_t = defaults().seed)]
    pub seed: u64,
}

fn defaults() -> LanguageModelRun {
    LanguageModelRun::default()
}

impl Default for LanguageModelRun {
    fn default() -> Self {
        LanguageModelRun {
            gguf: None,
            text: None,
            method: Method::Spry,
            rounds: 20,
            time_budget_s: 0.0,
            clients: 20,
            per_round: 4,
            seq_len: 64,
            batch_size: 1,
            train_seqs: 320,
            eval_seqs: 24,
            eval: EvalSplit::Test,
            eval_every: 0,
            k: 4,
            lr: None,
            optimizer: "sgd".into(),
            perturbation: Perturbation::LoraBOnly,
            directions: DirectionScheme::Gaussian,
            lr_decay_rounds: None,
            lora_layers: None,
            targets: vec!["q_proj".into(), "v_proj".into()],
            lora_r: 4,
            sample_tokens: 40,
            seed: 0,
        }
    }
}

/// Spry's SGD rate on the forward-gradient estimates of LoRA B.
const SPRY_LR: f64 = 3.0;
/// FedMeZO's SGD rate on its SPSA estimates.
const MEZO_LR: f64 = 1.0;
/// Adapted layers by default: the top this many.
const TOP_LAYERS: usize = 6;

/// The held-out split of a tokenised text: training sequences and the evaluated block.
struct Split {
    train: Vec<Vec<u32>>,
    held_out: Vec<Vec<u32>>,
}

impl LanguageModelRun {
    /// The model and text files: the given ones, or SmolLM2 and Hamlet in the assets folder.
    pub fn files(&self) -> (PathBuf, PathBuf) {
        (
            self.gguf
                .clone()
                .unwrap_or_else(|| assets_dir().join(SMOLLM2_GGUF)),
            self.text
                .clone()
                .unwrap_or_else(|| assets_dir().join("text/hamlet.txt")),
        )
    }

    /// The adapters for a model of `n_layers` layers.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a malformed `lora_layers`.
    pub fn lora_config(&self, n_layers: usize) -> Result<LoraConfig> {
        Ok(LoraConfig {
            layers_to_transform: match &self.lora_layers {
                Some(spec) => parse_layers(spec)?,
                None => Some((n_layers.saturating_sub(TOP_LAYERS)..n_layers).collect()),
            },
            task_type: Some("CAUSAL_LM".into()),
            base_model_name_or_path: Some(match &self.gguf {
                Some(p) => p.display().to_string(),
                None => "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
            }),
            ..LoraConfig::new(
                self.lora_r,
                2.0 * self.lora_r as f64,
                0.0,
                &self.targets.iter().map(String::as_str).collect::<Vec<_>>(),
            )
        })
    }

    /// The simulation's configuration.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an unknown optimizer or a method other than Spry and
    /// FedMeZO.
    pub fn sim_config(&self) -> Result<SimConfig> {
        let lr = self.lr.unwrap_or(match self.method {
            Method::FedMezo => MEZO_LR,
            _ => SPRY_LR,
        });
        if !matches!(self.method, Method::Spry | Method::FedMezo) {
            return Err(Error::invalid(
                "LanguageModelRun",
                format!(
                    "method {}: a language model has no head; use spry or fedmezo",
                    self.method
                ),
            ));
        }
        Ok(SimConfig {
            method: self.method,
            clients_per_round: self.per_round,
            rounds: self.rounds,
            batch_size: self.batch_size,
            comm: CommMode::PerEpoch,
            planner: PlannerKind::Depth,
            server: ServerOptimizer::fedavg(),
            client: ClientConfig {
                k: self.k,
                optimizer: LocalOptimizer::named(&self.optimizer, lr)?,
                head_grad: HeadGrad::Forward,
                dropout: false,
                perturbation: self.perturbation,
                directions: self.directions,
                lr_schedule: match self.lr_decay_rounds {
                    Some(rounds) => LrSchedule::InverseSqrt { rounds },
                    None => LrSchedule::Constant,
                },
                ..ClientConfig::default()
            },
            eval_every: if self.eval_every == 0 {
                self.rounds.max(1)
            } else {
                self.eval_every
            },
            seed: self.seed,
            ..SimConfig::default()
        })
    }

    /// Sequences of `seq_len` tokens split as `[ train … | validation | test ]`.
    fn split(&self, tokens: &[u32]) -> Result<Split> {
        let seqs = lm_sequences(tokens, self.seq_len);
        let n_eval = self.eval_seqs.min(seqs.len() / 10).max(1);
        if seqs.len() < 3 * n_eval {
            return Err(Error::invalid(
                "LanguageModelRun",
                format!(
                    "the text makes {} sequences of {} tokens: too short to hold out validation \
                     and test blocks",
                    seqs.len(),
                    self.seq_len
                ),
            ));
        }
        let (train_end, val_end) = (seqs.len() - 2 * n_eval, seqs.len() - n_eval);
        let held_out = match self.eval {
            EvalSplit::Val => seqs[train_end..val_end].to_vec(),
            EvalSplit::Test => seqs[val_end..].to_vec(),
        };
        let mut train = seqs[..train_end].to_vec();
        if self.train_seqs > 0 {
            train.truncate(self.train_seqs);
        }
        Ok(Split { train, held_out })
    }

    /// Runs the experiment into `out` (files as in the module docs; `config.json` checked on
    /// `resume`), calling `on_round` after each round.
    ///
    /// # Errors
    /// Missing files (with the hint to fetch them), model, tokenizer and simulation errors, I/O
    /// errors of the output folder.
    pub fn run(
        &self,
        out: &Path,
        resume: bool,
        mut on_round: impl FnMut(&RoundMetrics),
    ) -> Result<LanguageModelOutcome> {
        let start = Instant::now();
        let io = |path: PathBuf| move |source| Error::Io { source, path };
        std::fs::create_dir_all(out).map_err(io(out.to_path_buf()))?;
        if self.gguf.is_none() || self.text.is_none() {
            ensure_bundled()?;
        }
        let (gguf, text_path) = self.files();
        require_file(&gguf)?;
        require_file(&text_path)?;
        let config = self.sim_config()?;
        let n_layers =
            crate::io::LlamaConfig::from_gguf(&crate::io::GgufFile::open_mapped(&gguf)?)?
                .num_hidden_layers;
        let lora = self.lora_config(n_layers)?;
        // a resume with other settings stops here, before anything heavy is loaded
        record_settings(out, self, resume)?;
        let (model, initial, tokenizer) = load_llama_gguf(&gguf, &lora, self.seed)?;
        let text = std::fs::read_to_string(&text_path).map_err(io(text_path.clone()))?;
        let split = self.split(&tokenizer.encode(&text, false)?.ids)?;
        let prompt = split.held_out[0][..self.seq_len / 2].to_vec();
        let client_train = iid(split.train.len(), self.clients, self.seed)?;
        let task = LanguageModelTask {
            model: &model,
            train: split.train,
            test: split.held_out,
            client_train,
            seed: self.seed,
        };
        let ckpt_path = out.join("checkpoint.json");
        let mut sim = if resume && ckpt_path.is_file() {
            let ckpt = Simulation::<f32>::load_checkpoint(&ckpt_path)?;
            Simulation::resume(&config, initial.clone(), ckpt)?
        } else {
            Simulation::new(config, initial.clone())?
        };
        let before = task.nll(&task.test, &initial, 4)?.loss;
        let sample_before = self.sample(&model, &initial, &tokenizer, &prompt)?;
        let metrics_path = out.join("metrics.csv");
        let mut best = best_nll(&sim.history);
        let mut rows = sim.history.clone();
        let mut failure = None;
        sim.run_with(&task, Some(&ckpt_path), |m, global| {
            rows.push(m.clone());
            let written = std::fs::write(&metrics_path, nll_csv(before, &rows))
                .map_err(io(metrics_path.clone()))
                .and_then(|()| match m.test {
                    Some(t) if t.loss < best => {
                        best = t.loss;
                        save_peft_adapter(&out.join("adapter-best"), &lora, global)
                    }
                    _ => Ok(()),
                });
            if let Err(e) = written {
                failure = Some(e);
                return false;
            }
            on_round(m);
            self.time_budget_s <= 0.0 || m.wall_s < self.time_budget_s
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        let after = sim.evaluate_last(&task)?.loss;
        std::fs::write(&metrics_path, nll_csv(before, &sim.history)).map_err(io(metrics_path))?;
        save_peft_adapter(&out.join("adapter"), &lora, &sim.global)?;
        let sample_after = self.sample(&model, &sim.global, &tokenizer, &prompt)?;
        let outcome = LanguageModelOutcome {
            nll_before: before,
            nll_after: after,
            prompt: tokenizer.decode(&prompt, false)?,
            sample_before,
            sample_after,
            history: sim.history.clone(),
        };
        let (up, down) = sim
            .history
            .iter()
            .fold((0u64, 0u64), |(u, d), m| (u + m.bytes.up, d + m.bytes.down));
        let summary = serde_json::json!({
            "method": self.method.to_string(),
            "eval_split": self.eval.to_string(),
            "rounds": sim.round,
            "nll_before": before,
            "nll_after": after,
            "perplexity_before": before.exp(),
            "perplexity_after": after.exp(),
            "best_nll": best.min(after),
            "final_test_nll": after,
            "prompt": outcome.prompt,
            "sample_before": outcome.sample_before,
            "sample_after": outcome.sample_after,
            "wall_s": sim.history.last().map_or(0.0, |m| m.wall_s),
            "total_s": start.elapsed().as_secs_f64(),
            "peak_rss_mib": crate::metrics::peak_rss_mib(),
            "bytes_up": up,
            "bytes_down": down,
            "skipped_steps": sim.history.iter().map(|m| m.skipped_steps).sum::<usize>(),
            "settings": self,
            "config": sim.config,
        });
        let path = out.join("summary.json");
        let text = serde_json::to_string_pretty(&summary)
            .map_err(|e| Error::invalid("summary.json", e.to_string()))?;
        std::fs::write(&path, text).map_err(io(path))?;
        Ok(outcome)
    }

    /// A greedy continuation of `prompt` (`sample_tokens` tokens, decoded; empty when 0).
    fn sample(
        &self,
        model: &Llama<f32>,
        params: &Trainable<f32>,
        tok: &TextTokenizer,
        prompt: &[u32],
    ) -> Result<String> {
        if self.sample_tokens == 0 || prompt.is_empty() {
            return Ok(String::new());
        }
        let ids = model.generate_greedy(prompt, self.sample_tokens, &[], params)?;
        tok.decode(&ids, false)
    }
}

/// What [`LanguageModelRun::run`] returns besides its files.
#[derive(Clone, Debug)]
pub struct LanguageModelOutcome {
    /// Held-out NLL (nats per token) before training.
    pub nll_before: f64,
    /// Held-out NLL after the last round.
    pub nll_after: f64,
    /// The sample's prompt: the first half of the held-out block's first sequence.
    pub prompt: String,
    /// The greedy continuation of `prompt` before training.
    pub sample_before: String,
    /// The same after training.
    pub sample_after: String,
    /// Every round's metrics.
    pub history: Vec<RoundMetrics>,
}

/// `metrics.csv` of a language-model run: round 0 (before training), then one row per round.
fn nll_csv(before: f64, history: &[RoundMetrics]) -> String {
    let mut csv = format!("round,wall_s,train_loss,test_nll\n0,0,,{before:.6}\n");
    for m in history {
        let nll = m.test.map_or(String::new(), |t| format!("{:.6}", t.loss));
        csv.push_str(&format!(
            "{},{:.3},{:.6},{nll}\n",
            m.round, m.wall_s, m.train_loss
        ));
    }
    csv
}

/// The lowest evaluated NLL of `history` (+∞ before any evaluation).
fn best_nll(history: &[RoundMetrics]) -> f64 {
    history
        .iter()
        .filter_map(|m| m.test.map(|t| t.loss))
        .fold(f64::INFINITY, f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_and_split() {
        let run = LanguageModelRun::default();
        let cfg = run.sim_config().unwrap();
        assert_eq!(cfg.client.optimizer, LocalOptimizer::sgd(SPRY_LR));
        assert_eq!(cfg.eval_every, run.rounds);
        let lora = run.lora_config(30).unwrap();
        assert_eq!(lora.layers_to_transform, Some((24..30).collect()));
        assert!(
            LanguageModelRun {
                method: Method::HeadOnly,
                ..run.clone()
            }
            .sim_config()
            .is_err()
        );
        // 100 sequences of 64 tokens: 10 held out twice, the rest (capped at 320) trained on
        let tokens: Vec<u32> = (0..6400).collect();
        let s = run.split(&tokens).unwrap();
        assert_eq!((s.train.len(), s.held_out.len()), (80, 10));
        assert_eq!(s.held_out[0][0], 90 * 64, "test = the last block");
        assert!(run.split(&tokens[..100]).is_err());
        let v = serde_json::to_value(&run).unwrap();
        assert_eq!(v["method"], "spry");
        assert_eq!(serde_json::from_value::<LanguageModelRun>(v).unwrap(), run);
    }
}

//! A whole federated finetuning run of a BERT-family encoder on a labelled file: Spry or a
//! baseline, every setting a flag or a config-file key with the default chosen on rt_polarity's
//! validation split (`docs/FORWARD_GRADIENTS.md`).
//!
//! ```text
//! settings ──► model (+ LoRA, head) ─┐
//!          ──► train / val / test ───┼─► ClassificationTask ─► Simulation::run_with ─► out/
//!          ──► SimConfig ────────────┘      metrics.csv, summary.json, checkpoint.json,
//!                                           config.json, adapter/, adapter-best/
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::bundled::{MINILM_DIR, ensure_bundled};
pub use super::config::EvalSplit;
use super::config::{by_name, record_settings};
use crate::data::{
    Columns, Example, LabelSet, PartitionScheme, holdout, load_labelled, load_labelled_against,
};
use crate::federated::attack::DEFAULT_SCALE;
use crate::federated::{
    Attack, AttackKind, ClientConfig, CombineRule, CommMode, DiagnosticsConfig, DirectionScheme,
    Evaluation, FederatedTask, HeadGrad, LocalOptimizer, LrSchedule, Method, Perturbation,
    PlannerKind, RoundMetrics, RunSummary, ServerOptimizer, SimConfig, Simulation, metrics_csv,
    personalized_accuracy,
};
use crate::io::{BertConfig, assets_dir};
use crate::models::bert::{BertClassifier, ClassifierConfig, Pooling};
use crate::models::pretrained::{
    BERT_DIR_FILES, load_bert_classifier_dir, require_files, save_bert_classifier,
};
use crate::modules::{LoraConfig, Trainable, parse_layers};
use crate::tasks::ClassificationTask;
use crate::tokenizer::{TextTokenizer, TokenizerOptions};
use crate::{Error, Result};

/// The server's aggregation rule (FedAvgM's η and μ are [`ClassificationRun::server_lr`] and
/// [`ClassificationRun::server_momentum`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerRule {
    /// Weighted average, η = 0.5 by default.
    FedAvg,
    /// Weighted average with server momentum ([`SimConfig::tuned_classifier`]'s η 0.1, μ 0.8).
    FedAvgM,
    /// FedYogi with Flower's defaults.
    FedYogi,
    /// FedAdam with Flower's defaults.
    FedAdam,
    /// FedAdagrad with Flower's defaults.
    FedAdagrad,
}

from_names!(ServerRule,
    "fedavg" => ServerRule::FedAvg,
    "fedavgm" => ServerRule::FedAvgM,
    "fedyogi" => ServerRule::FedYogi,
    "fedadam" => ServerRule::FedAdam,
    "fedadagrad" => ServerRule::FedAdagrad,
);

/// How the training examples are split among the clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionKind {
    /// Label skew from Dirichlet(α) ([`ClassificationRun::alpha`]).
    Dirichlet,
    /// Shuffled and dealt evenly.
    Iid,
    /// By the value of [`ClassificationRun::group_column`].
    Natural,
}

from_names!(PartitionKind,
    "dirichlet" => PartitionKind::Dirichlet,
    "iid" => PartitionKind::Iid,
    "natural" => PartitionKind::Natural,
);

/// Every setting of a federated classification run. Each field is a flag (`--per-round 20`) and
/// a config-file key (`per_round = 20`); the defaults are the recipe chosen on rt_polarity's
/// validation split with all-MiniLM-L6-v2 ([`SimConfig::tuned_classifier`],
/// [`ClientConfig::tuned_classifier`], [`LoraConfig::tuned_classifier`]), run on the bundled
/// data unless `train`/`model_dir` say otherwise.
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassificationRun {
    /// BERT-family encoder folder (`config.json`, `model.safetensors`, `tokenizer.json`);
    /// default: all-MiniLM-L6-v2 in the assets folder (`spry::io::assets_dir`).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Head input: `mean` over real tokens, `cls` (the first token) or BERT's `pooler`;
    /// default: what the folder's sentence-transformers `1_Pooling/config.json` names, else
    /// `mean`.
    #[arg(long)]
    pub pooling: Option<Pooling>,
    /// Training file: TSV or CSV with a header row, or JSON Lines (by its extension: `.tsv`,
    /// `.csv`, `.jsonl`); default: the bundled rt_polarity training split.
    #[arg(long)]
    pub train: Option<PathBuf>,
    /// Test file (same columns; its labels must be classes of the training file); default: the
    /// bundled rt_polarity test split when `train` is the default, else `test_frac` of the
    /// training file.
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Without a test file: the fraction of the training file held out as the test set
    /// (seeded, before the validation split is cut).
    #[arg(long, default_value_t = defaults().test_frac)]
    pub test_frac: f64,
    /// Column of the text.
    #[arg(long, default_value_t = defaults().text_column)]
    pub text_column: String,
    /// Column of the second text of a sentence pair (NLI, paraphrase), if any.
    #[arg(long)]
    pub text_pair_column: Option<String>,
    /// Column of the label: class names (the sorted distinct names of the training file
    /// become the classes) or class indices 0..C.
    #[arg(long, default_value_t = defaults().label_column)]
    pub label_column: String,
    /// Column that groups examples for `--partition natural` (rt_polarity: `movie`).
    #[arg(long)]
    pub group_column: Option<String>,
    /// Training method: `spry`, `fedmezo`, `fedfgd`, or `head-only` (adapters frozen, the head
    /// on its exact gradient: a federated linear probe).
    #[arg(long, default_value_t = defaults().method)]
    #[serde(with = "by_name")]
    pub method: Method,
    /// Rounds (at most: `time_budget_s` stops the run after the round that crosses it).
    #[arg(long, default_value_t = defaults().rounds)]
    pub rounds: u64,
    /// Stop after the round that crosses this many seconds of training (0 = no limit). 1500
    /// keeps a whole default run (loading, final evaluation, personalised metric) within 30
    /// minutes on 2 cores.
    #[arg(long, default_value_t = defaults().time_budget_s)]
    pub time_budget_s: f64,
    /// Total clients.
    #[arg(long, default_value_t = defaults().clients)]
    pub clients: usize,
    /// Clients sampled per round (20: the round's average over label-skewed clients swings
    /// half as much as with 10, for the same examples per minute).
    #[arg(long, default_value_t = defaults().per_round)]
    pub per_round: usize,
    /// Local epochs per round.
    #[arg(long, default_value_t = defaults().local_epochs)]
    pub local_epochs: usize,
    /// Minibatch size.
    #[arg(long, default_value_t = defaults().batch_size)]
    pub batch_size: usize,
    /// Maximum tokens per text.
    #[arg(long, default_value_t = defaults().max_len)]
    pub max_len: usize,
    /// Tangent directions per step (one dual pass).
    #[arg(long, default_value_t = defaults().k)]
    pub k: usize,
    /// Communication: `per-epoch`, or `per-iteration` (K JVP scalars per step, replayed by the
    /// server).
    #[arg(long, default_value_t = defaults().comm)]
    #[serde(with = "by_name")]
    pub comm: CommMode,
    /// Planner (Spry): `depth`, `reference` or `reshuffle`.
    #[arg(long, default_value_t = defaults().planner)]
    #[serde(with = "by_name")]
    pub planner: PlannerKind,
    /// Server rule: `fedavg`, `fedavgm`, `fedyogi`, `fedadam`, `fedadagrad`. FedAvgM's momentum
    /// averages the pseudo-gradients of several rounds, so a round of clients with a skewed
    /// label mix moves the model less.
    #[arg(long, default_value_t = defaults().server)]
    #[serde(with = "by_name")]
    pub server: ServerRule,
    /// How the server combines the values a round's clients sent for one parameter: `mean`
    /// (weighted by example counts), or, robust to a few hostile clients, `clip[:c]` (each
    /// client's change clipped to c times the round's median norm, c = 1 by default),
    /// `trimmed-mean[:β]` (per coordinate, ⌊β·n⌋ values dropped at each end, β = 0.2 by
    /// default) or `median` (per coordinate).
    #[arg(long, default_value_t = defaults().combine)]
    #[serde(with = "by_name")]
    pub combine: CombineRule,
    /// Simulated hostile clients per round, to measure what `combine` withstands (0: none): the
    /// first this many clients that report in each round send `attack` instead of their result.
    #[arg(long, default_value_t = defaults().attackers)]
    pub attackers: usize,
    /// What the hostile clients send: `scale[:s]` (their change times s, 100 by default) or
    /// `sign-flip[:s]` (times −s, 4 by default).
    #[arg(long, default_value_t = defaults().attack)]
    #[serde(with = "by_name")]
    pub attack: AttackKind,
    /// Server learning rate η; default: 0.5 for FedAvg, 0.1 for FedAvgM (with μ = 0.8 an
    /// effective step of η/(1 − μ) = 0.5), Flower's defaults otherwise.
    #[arg(long)]
    pub server_lr: Option<f64>,
    /// FedAvgM's momentum μ (default 0.8).
    #[arg(long)]
    pub server_momentum: Option<f64>,
    /// Client learning rate of the forward-gradient (and zero-order) estimates (SGD at 1: 0.1
    /// and 0.3 learnt more slowly on the validation split).
    #[arg(long, default_value_t = defaults().lr)]
    pub lr: f64,
    /// Client optimizer of the estimates, `sgd` or `adamw`. SGD follows the estimate's
    /// magnitude; AdamW moves every coordinate by about `lr` whatever the (noise-dominated)
    /// estimate says, and at 1e-4 or 1e-3 left the adapters' effect below 1e-3 nats.
    #[arg(long, default_value_t = defaults().optimizer)]
    pub optimizer: String,
    /// Which tensors of an assigned LoRA unit are perturbed: `all`, `b-only` (A frozen at its
    /// random init: while B = 0 a direction on A is pure noise) or `b-first`.
    #[arg(long, default_value_t = defaults().perturbation)]
    #[serde(with = "by_name")]
    pub perturbation: Perturbation,
    /// How directions are drawn: `gaussian`, `guided` (one along each LoRA B's current value)
    /// or `orthogonal`; all unbiased.
    #[arg(long, default_value_t = defaults().directions)]
    #[serde(with = "by_name")]
    pub directions: DirectionScheme,
    /// Decay the client learning rates as `1/√(1 + r/τ)` in round r (τ in rounds); unset:
    /// constant.
    #[arg(long)]
    pub lr_decay_rounds: Option<f64>,
    /// Fraction of the training file held out as a validation split (never trained on).
    #[arg(long, default_value_t = defaults().val_frac)]
    pub val_frac: f64,
    /// Which split the evaluations report: `val` (for choosing settings) or `test`.
    #[arg(long, default_value_t = defaults().eval)]
    #[serde(with = "by_name")]
    pub eval: EvalSplit,
    /// Per-round diagnostics on a 4-example probe batch (exact gradient of one adapter unit by
    /// forward mode, estimator and update cosines, adapter norms and effect); their time is
    /// excluded from `wall_s`.
    #[arg(long, default_value_t = defaults().diagnostics, action = clap::ArgAction::Set)]
    pub diagnostics: bool,
    /// Rounds between the diagnostics' exact-gradient measurements (the costly part).
    #[arg(long, default_value_t = defaults().diag_gradient_every)]
    pub diag_gradient_every: u64,
    /// Optimizer of the classification head (`sgd` or `adamw`), however its gradient is
    /// obtained: SGD settles, AdamW restarted every round keeps oscillating.
    #[arg(long, default_value_t = defaults().head_optimizer)]
    pub head_optimizer: String,
    /// Head learning rate; default: 2 on the exact gradient (mean-pooled MiniLM features are
    /// small, the head's loss flat), 0.1 on a forward-gradient estimate, 0.03 under FedMeZO
    /// (each the better of the values tried on the validation split).
    #[arg(long)]
    pub head_lr: Option<f64>,
    /// Gradient of the head: `exact` (free, from the primal pass) or `forward`.
    #[arg(long, default_value_t = defaults().head_grad)]
    #[serde(with = "by_name")]
    pub head_grad: HeadGrad,
    /// Every client trains the head on top of its plan (cheap with an exact gradient).
    #[arg(long, default_value_t = defaults().head_to_all, action = clap::ArgAction::Set)]
    pub head_to_all: bool,
    /// LoRA rank (4: the best of 1, 2, 4, 8 on the validation split).
    #[arg(long, default_value_t = defaults().lora_r)]
    pub lora_r: usize,
    /// LoRA α (α = r: the update's scale α/r is 1).
    #[arg(long, default_value_t = defaults().lora_alpha)]
    pub lora_alpha: f64,
    /// LoRA target modules (PEFT suffix match), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = defaults().targets)]
    pub targets: Vec<String>,
    /// Encoder layers with adapters, comma-separated, or `all`; default: the top two (each unit
    /// trained by five of a round's 20 clients, the tangents start near the top).
    #[arg(long)]
    pub lora_layers: Option<String>,
    /// Train the adapters of the top this many encoder layers on their exact gradient, by a
    /// local reverse pass through those layers only (its memory: their activations, about
    /// 17 MiB per layer for MiniLM at 8 × 64 tokens); the adapters below stay on forward
    /// gradients. 0: forward gradients everywhere (Spry).
    #[arg(long, default_value_t = defaults().exact_top_layers)]
    pub exact_top_layers: usize,
    /// Data partition: `dirichlet`, `iid` or `natural`.
    #[arg(long, default_value_t = defaults().partition)]
    #[serde(with = "by_name")]
    pub partition: PartitionKind,
    /// Dirichlet α (1 ≈ mild label skew, 0.1 strong).
    #[arg(long, default_value_t = defaults().alpha)]
    pub alpha: f64,
    /// Run seed (data split, partition, initialisation, sampling, directions).
    #[arg(long, default_value_t = defaults().seed)]
    pub seed: u64,
    /// Evaluate every this many rounds (and after the last).
    #[arg(long, default_value_t = defaults().eval_every)]
    pub eval_every: u64,
    /// Clients trained concurrently (results do not depend on it).
    #[arg(long, default_value_t = defaults().workers)]
    pub workers: usize,
    /// Clients evaluated after local finetuning at the end (the reference's "after" metric).
    #[arg(long, default_value_t = defaults().personalize_clients)]
    pub personalize_clients: usize,
}

fn defaults() -> ClassificationRun {
    ClassificationRun::default()
}

impl Default for ClassificationRun {
    fn default() -> Self {
        let sim = SimConfig::tuned_classifier(0);
        let lora = LoraConfig::tuned_classifier(0);
        ClassificationRun {
            model_dir: None,
            pooling: None,
            train: None,
            test: None,
            test_frac: 0.2,
            text_column: "text".into(),
            text_pair_column: None,
            label_column: "label".into(),
            group_column: None,
            method: sim.method,
            rounds: sim.rounds,
            time_budget_s: 1500.0,
            clients: 100,
            per_round: sim.clients_per_round,
            local_epochs: sim.client.local_epochs,
            batch_size: sim.batch_size,
            max_len: 64,
            k: sim.client.k,
            comm: sim.comm,
            planner: sim.planner,
            server: ServerRule::FedAvgM,
            combine: sim.combine,
            attackers: 0,
            attack: AttackKind::Scale {
                factor: DEFAULT_SCALE,
            },
            server_lr: None,
            server_momentum: None,
            lr: 1.0,
            optimizer: "sgd".into(),
            perturbation: sim.client.perturbation,
            directions: sim.client.directions,
            lr_decay_rounds: None,
            val_frac: 0.1,
            eval: EvalSplit::Test,
            diagnostics: true,
            diag_gradient_every: 5,
            head_optimizer: "sgd".into(),
            head_lr: None,
            head_grad: sim.client.head_grad,
            head_to_all: true,
            lora_r: lora.r,
            lora_alpha: lora.lora_alpha,
            targets: lora.target_modules,
            lora_layers: None,
            exact_top_layers: 0,
            partition: PartitionKind::Dirichlet,
            alpha: 1.0,
            seed: sim.seed,
            eval_every: sim.eval_every,
            workers: sim.workers,
            personalize_clients: 5,
        }
    }
}

/// Mixed into the seed of the test split cut from a training file, so that it is not the
/// validation split's draw.
const TEST_SPLIT_KEY: u64 = 0x7e57;

/// The held-out learning rate of the head on a forward-gradient estimate (the better of 0.03
/// and 0.1 on the validation split; at 1 it blew up).
const HEAD_LR_FORWARD: f64 = 0.1;
/// The head's learning rate on FedMeZO's SPSA estimate (the better of 0.03 and 0.1 there).
const HEAD_LR_SPSA: f64 = 0.03;
/// The head's learning rate on its exact gradient.
const HEAD_LR_EXACT: f64 = 2.0;

impl ClassificationRun {
    /// The encoder folder: `model_dir`, or all-MiniLM-L6-v2 in the assets folder.
    pub fn model_dir(&self) -> PathBuf {
        self.model_dir
            .clone()
            .unwrap_or_else(|| assets_dir().join(MINILM_DIR))
    }

    /// The training and test files: the given ones, or the bundled rt_polarity splits.
    pub fn data_files(&self) -> (PathBuf, Option<PathBuf>) {
        let text = assets_dir().join("text");
        match &self.train {
            Some(train) => (train.clone(), self.test.clone()),
            None => (
                text.join("rt_polarity_train.tsv"),
                Some(
                    self.test
                        .clone()
                        .unwrap_or_else(|| text.join("rt_polarity_test.tsv")),
                ),
            ),
        }
    }

    /// The adapters for an encoder of `n_layers` layers.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a malformed `lora_layers`.
    pub fn lora_config(&self, n_layers: usize) -> Result<LoraConfig> {
        let tuned = LoraConfig::tuned_classifier(n_layers);
        Ok(LoraConfig {
            r: self.lora_r,
            lora_alpha: self.lora_alpha,
            target_modules: self.targets.clone(),
            layers_to_transform: match &self.lora_layers {
                Some(spec) => parse_layers(spec)?,
                None => tuned.layers_to_transform.clone(),
            },
            base_model_name_or_path: Some(match &self.model_dir {
                Some(dir) => dir.display().to_string(),
                None => "sentence-transformers/all-MiniLM-L6-v2".into(),
            }),
            ..tuned
        })
    }

    /// The head's learning rate: `head_lr`, or its default for how the head is trained.
    pub fn head_lr(&self) -> f64 {
        self.head_lr.unwrap_or(match (self.method, self.head_grad) {
            (Method::FedMezo, _) => HEAD_LR_SPSA,
            (_, HeadGrad::Exact) => HEAD_LR_EXACT,
            (_, HeadGrad::Forward) => HEAD_LR_FORWARD,
        })
    }

    /// The simulation's configuration for a classifier whose head is unit `head_unit`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an unknown optimizer name or a bad learning rate.
    pub fn sim_config(&self, head_unit: usize) -> Result<SimConfig> {
        let tuned = SimConfig::tuned_classifier(head_unit);
        let server = match self.server {
            ServerRule::FedAvg => ServerOptimizer::FedAvg { eta: 0.5 },
            ServerRule::FedAvgM => match (tuned.server, self.server_momentum) {
                (ServerOptimizer::FedAvgM { eta, .. }, Some(momentum)) => {
                    ServerOptimizer::FedAvgM { eta, momentum }
                }
                (s, _) => s,
            },
            ServerRule::FedYogi => ServerOptimizer::fedyogi(),
            ServerRule::FedAdam => ServerOptimizer::fedadam(),
            ServerRule::FedAdagrad => ServerOptimizer::fedadagrad(),
        };
        let head_shared = self.head_to_all || self.method == Method::HeadOnly;
        Ok(SimConfig {
            method: self.method,
            clients_per_round: self.per_round,
            rounds: self.rounds,
            batch_size: self.batch_size,
            comm: self.comm,
            planner: self.planner,
            server: self.server_lr.map_or(server, |eta| server.with_eta(eta)),
            client: ClientConfig {
                k: self.k,
                local_epochs: self.local_epochs,
                optimizer: LocalOptimizer::named(&self.optimizer, self.lr)?,
                head_optimizer: Some(LocalOptimizer::named(&self.head_optimizer, self.head_lr())?),
                head_grad: self.head_grad,
                perturbation: self.perturbation,
                directions: self.directions,
                lr_schedule: match self.lr_decay_rounds {
                    Some(rounds) => LrSchedule::InverseSqrt { rounds },
                    None => LrSchedule::Constant,
                },
                ..tuned.client.clone()
            },
            seed: self.seed,
            eval_every: self.eval_every,
            workers: self.workers,
            shared_units: if head_shared {
                tuned.shared_units.clone()
            } else {
                Vec::new()
            },
            diagnostics: self.diagnostics.then(|| DiagnosticsConfig {
                gradient_every: self.diag_gradient_every,
                ..DiagnosticsConfig::default()
            }),
            combine: self.combine,
            attack: (self.attackers > 0).then_some(Attack {
                clients_per_round: self.attackers,
                kind: self.attack,
            }),
            ..tuned
        })
    }

    /// The training examples, the evaluation examples (validation split, test file, or the
    /// held-out test fraction) and the classes of the training file.
    ///
    /// # Errors
    /// File errors (with file and line); [`Error::InvalidArgument`] for fractions outside
    /// (0, 1).
    pub fn load_data(&self) -> Result<(Vec<Example>, Vec<Example>, LabelSet)> {
        let (train_path, test_path) = self.data_files();
        let columns = Columns {
            text: self.text_column.clone(),
            text_pair: self.text_pair_column.clone(),
            label: self.label_column.clone(),
            group: self.group_column.clone(),
        };
        let (all, labels) = load_labelled(&train_path, &columns)?;
        let (train, eval) = match test_path {
            Some(path) => {
                let (train, val) = holdout(all, self.val_frac, self.seed)?;
                let eval = match self.eval {
                    EvalSplit::Val => val,
                    EvalSplit::Test => load_labelled_against(&path, &columns, &labels)?,
                };
                (train, eval)
            }
            None => {
                // the test split is cut first, with its own stream of the seed
                let (rest, test) = holdout(all, self.test_frac, self.seed ^ TEST_SPLIT_KEY)?;
                let (train, val) = holdout(rest, self.val_frac, self.seed)?;
                let eval = match self.eval {
                    EvalSplit::Val => val,
                    EvalSplit::Test => test,
                };
                (train, eval)
            }
        };
        Ok((train, eval, labels))
    }

    /// The pooling: `pooling`, else the one a sentence-transformers folder names in
    /// `1_Pooling/config.json` (`pooling_mode_cls_token` → CLS, else mean), else mean.
    pub fn pooling_for(&self, model_dir: &Path) -> Pooling {
        if let Some(p) = self.pooling {
            return p;
        }
        let cls = std::fs::read_to_string(model_dir.join("1_Pooling/config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["pooling_mode_cls_token"].as_bool())
            .unwrap_or(false);
        if cls { Pooling::Cls } else { Pooling::Mean }
    }

    /// The model folder (the bundled files fetched on first use when a default is used), its
    /// files checked, and the LoRA configuration for its layer count.
    ///
    /// # Errors
    /// Missing model files (with the hint to fetch them), config errors.
    fn model_files(&self) -> Result<(PathBuf, LoraConfig)> {
        if self.model_dir.is_none() || self.train.is_none() {
            ensure_bundled()?;
        }
        let model_dir = self.model_dir();
        require_files(&model_dir, &BERT_DIR_FILES)?;
        let bert_config = BertConfig::from_file(model_dir.join("config.json"))?;
        let lora = self.lora_config(bert_config.num_hidden_layers)?;
        Ok((model_dir, lora))
    }

    /// Everything a run needs loaded, without running it: the model with its adapters and
    /// head (pooling and exact top layers applied), its tokenizer, the data (training and
    /// evaluation examples), the partition scheme and the simulation's configuration. What
    /// [`ClassificationRun::run`] trains, and what a run driven from elsewhere (the Flower app
    /// in `python/`) loads on its server and on each node.
    ///
    /// # Errors
    /// Missing model files (with the hint to fetch them), data, config and model errors.
    pub fn load(&self) -> Result<LoadedClassification> {
        let (model_dir, lora) = self.model_files()?;
        let (train, eval, labels) = self.load_data()?;
        let opts = TokenizerOptions::default().with_max_len(self.max_len);
        let (model, initial, tokenizer) =
            load_bert_classifier_dir(&model_dir, &lora, labels.len(), self.seed, opts)?;
        let pooling = self.pooling_for(&model_dir);
        let model = model
            .with_pooling(pooling)
            .with_exact_top_layers(self.exact_top_layers);
        let saved = ClassifierConfig::new(labels.names(), pooling, Some(self.max_len))?;
        let scheme = match self.partition {
            PartitionKind::Dirichlet => PartitionScheme::Dirichlet { alpha: self.alpha },
            PartitionKind::Iid => PartitionScheme::Iid,
            PartitionKind::Natural => PartitionScheme::Natural,
        };
        let config = self.sim_config(model.head_unit())?;
        Ok(LoadedClassification {
            model,
            tokenizer,
            initial,
            lora,
            saved,
            train,
            eval,
            scheme,
            config,
        })
    }

    /// Runs the experiment into `out`: writes `config.json` (these settings; on `resume` they
    /// must equal the recorded ones), `checkpoint.json` after every round, `metrics.csv` as it
    /// goes, `adapter-best/` at each better evaluation, and at the end `adapter/` (each a PEFT
    /// folder with `classifier_config.json`, as [`save_bert_classifier`] writes it) and
    /// `summary.json`. `on_round` sees each round's metrics as it ends.
    ///
    /// # Errors
    /// Missing model files (with the hint to fetch them), data, config and model errors, I/O
    /// errors of the output folder, the simulation's errors.
    pub fn run(
        &self,
        out: &Path,
        resume: bool,
        mut on_round: impl FnMut(&RoundMetrics),
    ) -> Result<RunOutcome> {
        let start = Instant::now();
        let io = |path: PathBuf| move |source| Error::Io { source, path };
        std::fs::create_dir_all(out).map_err(io(out.to_path_buf()))?;
        // missing files or a resume with other settings stop here, before anything heavy loads
        self.model_files()?;
        record_settings(out, self, resume)?;
        let loaded = self.load()?;
        let (model, initial, tokenizer, saved, lora) = (
            loaded.model,
            loaded.initial,
            loaded.tokenizer,
            loaded.saved,
            loaded.lora,
        );
        let task = ClassificationTask::new(
            &model,
            &tokenizer,
            loaded.train,
            loaded.eval,
            &loaded.scheme,
            self.clients,
            self.seed,
        )?;
        let config = loaded.config;
        let ckpt_path = out.join("checkpoint.json");
        let mut sim = if resume && ckpt_path.is_file() {
            let ckpt = Simulation::<f32>::load_checkpoint(&ckpt_path)?;
            Simulation::resume(&config, initial, ckpt)?
        } else {
            Simulation::new(config, initial)?
        };
        let before = task.evaluate(&sim.global)?;
        let metrics_path = out.join("metrics.csv");
        let mut csv = metrics_csv(&sim.history);
        let best_dir = out.join("adapter-best");
        let mut best = best_accuracy(&sim.history);
        let mut failure = None;
        sim.run_with(&task, Some(&ckpt_path), |m, global| {
            csv.push_str(&m.csv_row());
            let written = std::fs::write(&metrics_path, &csv)
                .map_err(io(metrics_path.clone()))
                .and_then(|()| match m.test.and_then(|t| t.accuracy) {
                    Some(a) if a > best => {
                        best = a;
                        save_bert_classifier(&best_dir, &lora, global, &saved)
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
        // the last state is evaluated, and the last row of metrics.csv has that evaluation
        let last = sim.evaluate_last(&task)?;
        std::fs::write(&metrics_path, metrics_csv(&sim.history)).map_err(io(metrics_path))?;
        save_bert_classifier(&out.join("adapter"), &lora, &sim.global, &saved)?;
        let summary = self.write_summary(out, &task, &sim, before, last, start)?;
        Ok(RunOutcome {
            summary,
            history: sim.history,
        })
    }

    /// `summary.json`: [`RunSummary`], the personalised metric, the evaluated split, the total
    /// time and these settings.
    ///
    /// # Errors
    /// Evaluation errors; I/O errors of `out`.
    pub fn write_summary(
        &self,
        out: &Path,
        task: &ClassificationTask<'_>,
        sim: &Simulation<f32>,
        before: Evaluation,
        last: Evaluation,
        start: Instant,
    ) -> Result<serde_json::Value> {
        let mut summary = RunSummary::new(sim, before, last);
        if let Some((b, a)) = personalized_accuracy(task, sim, self.personalize_clients, 5)? {
            summary.personalized_accuracy_before = Some(b);
            summary.personalized_accuracy_after = Some(a);
        }
        let json_err = |e: serde_json::Error| Error::invalid("summary.json", e.to_string());
        let mut summary = serde_json::to_value(summary).map_err(json_err)?;
        summary["eval_split"] = self.eval.to_string().into();
        summary["total_s"] = start.elapsed().as_secs_f64().into();
        summary["settings"] = serde_json::to_value(self).map_err(json_err)?;
        let path = out.join("summary.json");
        let text = serde_json::to_string_pretty(&summary).map_err(json_err)?;
        std::fs::write(&path, text).map_err(|source| Error::Io { source, path })?;
        Ok(summary)
    }
}

/// What [`ClassificationRun::load`] loads.
pub struct LoadedClassification {
    /// The classifier (pooling and exact top layers applied).
    pub model: BertClassifier<f32>,
    /// Its tokenizer (truncating at `max_len`).
    pub tokenizer: TextTokenizer,
    /// The initial trainable tensors (LoRA and head, seeded).
    pub initial: Trainable<f32>,
    /// The adapters' configuration.
    pub lora: LoraConfig,
    /// What the adapter folder records besides the tensors (classes, pooling, truncation).
    pub saved: ClassifierConfig,
    /// Training examples (the validation split removed).
    pub train: Vec<Example>,
    /// Evaluation examples (the test set or the validation split).
    pub eval: Vec<Example>,
    /// How the training examples are split among the clients.
    pub scheme: PartitionScheme,
    /// The simulation's configuration.
    pub config: SimConfig,
}

/// What [`ClassificationRun::run`] returns besides its files.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// The contents of `summary.json`.
    pub summary: serde_json::Value,
    /// Every round's metrics (those of a resumed run's earlier segments included), the last
    /// with the final evaluation.
    pub history: Vec<RoundMetrics>,
}

/// The best evaluated accuracy of `history` (−∞ before any evaluation).
fn best_accuracy(history: &[RoundMetrics]) -> f64 {
    history
        .iter()
        .filter_map(|m| m.test.and_then(|t| t.accuracy))
        .fold(f64::NEG_INFINITY, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_library_presets() {
        let run = ClassificationRun::default();
        let sim = run.sim_config(7).unwrap();
        let tuned = SimConfig::tuned_classifier(7);
        assert_eq!(sim.client, tuned.client, "client recipe");
        assert_eq!(sim.server, tuned.server);
        assert_eq!(
            (sim.clients_per_round, sim.rounds, sim.shared_units),
            (20, 40, vec![7])
        );
        let lora = run.lora_config(6).unwrap();
        let want = LoraConfig::tuned_classifier(6);
        assert_eq!(
            (lora.r, lora.layers_to_transform, lora.target_modules),
            (want.r, want.layers_to_transform, want.target_modules)
        );
    }

    #[test]
    fn settings_round_trip_through_json_by_name() {
        let run = ClassificationRun {
            method: Method::FedMezo,
            server: ServerRule::FedYogi,
            pooling: Some(Pooling::Cls),
            ..ClassificationRun::default()
        };
        let v = serde_json::to_value(&run).unwrap();
        assert_eq!(v["method"], "fedmezo");
        assert_eq!(v["server"], "fedyogi");
        assert_eq!(v["pooling"], "cls");
        let back: ClassificationRun = serde_json::from_value(v).unwrap();
        assert_eq!(back, run);
        // FedMeZO's head rate default
        assert_eq!(back.head_lr(), HEAD_LR_SPSA);
    }

    #[test]
    fn command_line_flags_override_the_config_file() {
        use crate::recipes::config::{command, settings_from_matches};
        let dir = std::env::temp_dir().join(format!("spry-run-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("run.toml");
        std::fs::write(
            &path,
            "rounds = 9\nlr = 0.5\nmethod = \"fedmezo\"\ntargets = [\"query\"]\n",
        )
        .unwrap();
        let cmd = command::<ClassificationRun>("t", "t");
        let p = path.to_str().unwrap();
        let m = cmd
            .try_get_matches_from(["t", "--config", p, "--rounds", "3", "--out", "o"])
            .unwrap();
        let (run, inv) = settings_from_matches::<ClassificationRun>(&m).unwrap();
        assert_eq!((run.rounds, run.lr, run.method), (3, 0.5, Method::FedMezo));
        assert_eq!(run.targets, vec!["query".to_string()]);
        assert_eq!(
            run.k,
            ClassificationRun::default().k,
            "untouched: the default"
        );
        assert_eq!(inv.out, Some(PathBuf::from("o")));
        // without a file the flags alone
        let m = command::<ClassificationRun>("t", "t")
            .try_get_matches_from(["t", "--method", "head-only", "--pooling", "cls"])
            .unwrap();
        let (run, inv) = settings_from_matches::<ClassificationRun>(&m).unwrap();
        assert_eq!(
            (run.method, run.pooling),
            (Method::HeadOnly, Some(Pooling::Cls))
        );
        assert!(inv.config.is_none() && !inv.resume);
        // a bad name is clap's usage error
        assert!(
            command::<ClassificationRun>("t", "t")
                .try_get_matches_from(["t", "--server", "fedsgd"])
                .is_err()
        );
    }
}

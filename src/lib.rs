//! # spry
//!
//! Forward-mode automatic differentiation (JVPs) for transformers, and memory-efficient federated
//! finetuning of language models with it: the Spry algorithm (Panchal et al., NeurIPS 2024,
//! arXiv 2405.15551).
//!
//! A forward pass over [`Dual`] values carries K tangent directions beside every activation and
//! yields the directional derivatives `∇f·v_k` without storing any activation for a backward
//! pass. See `docs/ARCHITECTURE.md` for the layout of the crate and `docs/ALGORITHM.md` for the
//! algorithm.
//!
//! ## A JVP
//!
//! Every kernel takes and returns [`Dual`] values: the primal and K stacked tangents.
//!
//! ```
//! use spry::Dual;
//! use spry::kernels::tanh;
//! use spry::ndarray::array;
//!
//! // x = [0.5, -1.0] with one direction v = [1, 0]
//! let x = Dual::from_directions(array![[0.5f64, -1.0]], &[array![[1.0, 0.0]].view()])?;
//! let y = tanh(&x)?;
//! // the tangent is tanh'(x)·v = (1 − tanh²(0.5), 0)
//! let dy = y.direction(0).unwrap();
//! assert!((dy[[0, 0]] - (1.0 - 0.5f64.tanh().powi(2))).abs() < 1e-12 && dy[[0, 1]] == 0.0);
//! # Ok::<(), spry::Error>(())
//! ```
//!
//! ## Federated finetuning on your own labelled file
//!
//! A BERT-family checkpoint folder (`config.json`, `model.safetensors`, `tokenizer.json`), a
//! labelled TSV, CSV or JSON Lines file (string or integer labels, optionally sentence pairs:
//! [`data::load_labelled`]), and the recipe tuned for classification
//! ([`federated::SimConfig::tuned_classifier`]); [`io::asset`] finds the model files through
//! `$SPRY_ASSETS`, `./assets` or a per-user cache.
//!
//! ```no_run
//! use spry::data::{Columns, PartitionScheme, holdout, load_labelled};
//! use spry::federated::{SimConfig, Simulation};
//! use spry::models::bert::Pooling;
//! use spry::models::pretrained::load_bert_classifier_dir;
//! use spry::modules::{LoraConfig, save_peft_adapter};
//! use spry::tasks::ClassificationTask;
//! use spry::TokenizerOptions;
//!
//! let (examples, labels) = load_labelled("topics.csv".as_ref(), &Columns::new("text", "label"))?;
//! let (train, test) = holdout(examples, 0.2, 0)?;
//! let lora = LoraConfig {
//!     layers_to_transform: Some(vec![4, 5]),
//!     ..LoraConfig::new(1, 1.0, 0.0, &["query", "value"])
//! };
//! let dir = spry::io::asset("all-MiniLM-L6-v2")?;
//! let opts = TokenizerOptions::default().with_max_len(64);
//! let (model, initial, tokenizer) = load_bert_classifier_dir(&dir, &lora, labels.len(), 0, opts)?;
//! let model = model.with_pooling(Pooling::Mean);
//! let task =
//!     ClassificationTask::new(&model, &tokenizer, train, test, &PartitionScheme::Iid, 100, 0)?;
//! let mut sim = Simulation::new(SimConfig::tuned_classifier(model.head_unit()), initial)?;
//! sim.run(&task, None, |m| {
//!     println!("round {}: train loss {:.4}", m.round, m.train_loss);
//!     true
//! })?;
//! println!("test: {:?}", sim.evaluate_last(&task)?);
//! save_peft_adapter("my-adapter".as_ref(), &lora, &sim.global)?;
//! # Ok::<(), spry::Error>(())
//! ```
//!
//! With the `recipes` feature, `spry::recipes::classification::ClassificationRun` is that whole run
//! (every setting a clap flag and a TOML/JSON config key, the metrics, checkpoints, adapters and
//! summary written to a folder): the `federated` example is a command line over it.
//!
//! A planner or aggregation rule of your own plugs in with
//! [`federated::Simulation::with_planner`] / [`federated::Simulation::with_aggregator`]; a model of
//! your own with [`tasks::TextClassifier`]; a JVP along a direction of your own (for example a
//! PEFT folder) with [`modules::Directions::from_named`] / [`modules::Directions::from_trainable`].
#![deny(missing_docs)]

/// `FromStr` for a fieldless enum from its command-line spellings (`"b-only" => LoraBOnly`),
/// with an [`Error::InvalidArgument`] that lists them, and `Display` writing the same spelling.
macro_rules! from_names {
    ($ty:ident, $($name:literal => $variant:path),+ $(,)?) => {
        impl std::str::FromStr for $ty {
            type Err = crate::Error;

            /// The command-line spelling: one of the names listed in the error.
            fn from_str(s: &str) -> crate::Result<Self> {
                match s {
                    $($name => Ok($variant),)+
                    _ => Err(crate::Error::invalid(
                        stringify!($ty),
                        format!("{s:?}: expected one of {}", [$($name),+].join(", ")),
                    )),
                }
            }
        }

        impl std::fmt::Display for $ty {
            /// The command-line spelling, as [`std::str::FromStr`] reads it.
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self {
                    $($variant => $name,)+
                })
            }
        }
    };
}

pub mod data;
pub mod dual;
pub mod error;
pub mod federated;
pub mod float;
pub mod io;
pub mod kernels;
mod mapped;
pub mod metrics;
pub mod models;
pub mod modules;
pub mod packed;
pub mod parallel;
#[cfg(feature = "recipes")]
pub mod recipes;
pub mod rng;
pub mod tasks;
pub mod tokenizer;

/// The array crate of spry's public types (`ArrayD`, `Array2`, ...), re-exported so that a
/// dependent uses the very version spry was built with.
pub use ndarray;
/// The JSON crate of spry's checkpoint states (`Aggregator::state`), re-exported likewise.
pub use serde_json;

pub use dual::{Dual, common_k};
pub use error::{Error, Result};
pub use float::Float;
pub use tokenizer::{TextTokenizer, TokenizerOptions};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

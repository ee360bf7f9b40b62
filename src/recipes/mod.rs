//! Ready-made runs (feature `recipes`): what the examples are thin command lines over.
//!
//! - [`bundled`]: the checkpoints and data `scripts/fetch_assets.sh` downloads (paths, MiniLM's
//!   truncation, SmolLM2's chat template) and a timing helper;
//! - [`config`]: a run's settings from a TOML or JSON file and the command line, the effective
//!   settings written beside the results and checked on resume;
//! - [`classification`]: a whole federated finetuning run of a BERT-family encoder on a labelled
//!   file (Spry or a baseline), leaving `metrics.csv`, `summary.json`, a checkpoint and the
//!   trained adapter in PEFT's format;
//! - [`language_model`]: the same for next-token finetuning of a Llama-family GGUF model on a
//!   text, with the held-out NLL and a sample continuation before and after.
//!
//! Everything here is built from the public API of the layers below; a dependent that wants
//! other wiring writes its own the same way (see the crate docs).

pub mod bundled;
pub mod classification;
pub mod config;
pub mod language_model;

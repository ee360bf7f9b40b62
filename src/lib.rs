//! # spry
//!
//! Forward-mode automatic differentiation (JVPs) for transformers, and memory-efficient federated
//! finetuning of language models with it: the Spry algorithm (Panchal et al., NeurIPS 2024,
//! arXiv 2405.15551).
//!
//! A forward pass over [`Dual`] values carries K tangent directions beside every activation and
//! yields the directional derivatives `∇f·v_k` without storing any activation for a backward
//! pass. See `docs/ARCHITECTURE.md` for the layout of the crate.
#![deny(missing_docs)]

pub mod data;
pub mod dual;
pub mod error;
pub mod federated;
pub mod float;
pub mod io;
pub mod kernels;
pub mod metrics;
pub mod models;
pub mod modules;
pub mod packed;
pub mod parallel;
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

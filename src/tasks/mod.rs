//! Federated tasks over real models: what a [`crate::federated::Simulation`] trains. The
//! algorithm in `federated/` names no model; a task binds one (or a user's own, through
//! [`TextClassifier`]) to federated data.

pub mod classification;
pub mod language_model;

pub use classification::{ClassificationTask, LabelledBatch, TextClassifier};
pub use language_model::{LanguageModelTask, LmBatch, lm_sequences};

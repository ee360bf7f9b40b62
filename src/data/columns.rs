//! [`Columns`]: which columns (or JSON keys) of a labelled file hold what.

use serde::{Deserialize, Serialize};

/// The columns of a labelled file: header names in TSV and CSV, keys in JSON Lines. Names match
/// exactly (case and spaces count).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Columns {
    /// The text column.
    pub text: String,
    /// The second text of a sentence pair, if the task has one (NLI, paraphrase, ...).
    pub text_pair: Option<String>,
    /// The label column: class names or non-negative class indices.
    pub label: String,
    /// A grouping column (a user, a movie) for natural federated partitions.
    pub group: Option<String>,
}

impl Columns {
    /// The text and label columns, no pair and no group.
    pub fn new(text: impl Into<String>, label: impl Into<String>) -> Self {
        Columns {
            text: text.into(),
            text_pair: None,
            label: label.into(),
            group: None,
        }
    }

    /// Names the second text column of sentence pairs.
    #[must_use]
    pub fn with_text_pair(mut self, name: impl Into<String>) -> Self {
        self.text_pair = Some(name.into());
        self
    }

    /// Names the grouping column.
    #[must_use]
    pub fn with_group(mut self, name: impl Into<String>) -> Self {
        self.group = Some(name.into());
        self
    }
}

impl Default for Columns {
    /// `text` and `label`.
    fn default() -> Self {
        Columns::new("text", "label")
    }
}

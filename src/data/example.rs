//! [`Example`]: one labelled text, or text pair, of a classification data set.

/// One labelled text (or sentence pair).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// The text (the first segment of a pair).
    pub text: String,
    /// The second text of a sentence pair (`[CLS] text [SEP] text_pair [SEP]` for BERT), if the
    /// data set has one.
    pub text_pair: Option<String>,
    /// Class index (into the data set's [`LabelSet`](super::LabelSet)).
    pub label: usize,
    /// Value of the grouping column (e.g. the movie), if one was named.
    pub group: Option<String>,
}

impl Example {
    /// A single text with its class index, no pair and no group.
    pub fn new(text: impl Into<String>, label: usize) -> Self {
        Example {
            text: text.into(),
            text_pair: None,
            label,
            group: None,
        }
    }

    /// Sets the second text of a sentence pair.
    #[must_use]
    pub fn with_text_pair(mut self, text_pair: impl Into<String>) -> Self {
        self.text_pair = Some(text_pair.into());
        self
    }

    /// Sets the group value.
    #[must_use]
    pub fn with_group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }
}

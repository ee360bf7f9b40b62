//! A trained classifier on disk: a PEFT adapter folder (the LoRA factors and the head,
//! `modules_to_save = ["classifier"]`) plus `classifier_config.json`, which says what the
//! adapter files cannot: the class names (transformers' `id2label`/`label2id`) and how the head
//! reads the encoder (pooling, truncation).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Pooling;
use crate::io::config::MAX_DIMENSION;
use crate::io::write_atomic;
use crate::{Error, Result};

/// File name of a classifier's settings inside its adapter folder.
pub const CLASSIFIER_CONFIG_FILE: &str = "classifier_config.json";

/// What a classifier adapter needs besides its tensors to label texts as it was trained to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    /// Class names by id, as transformers writes them (`{"0": "negative", "1": "positive"}`).
    pub id2label: BTreeMap<usize, String>,
    /// The inverse map (for tools that read transformers' configs).
    pub label2id: BTreeMap<String, usize>,
    /// How the head reads the last hidden state.
    pub pooling: Pooling,
    /// Truncation length of the texts in training (`None`: the tokenizer's own).
    pub max_len: Option<usize>,
}

impl ClassifierConfig {
    /// The config of a classifier over the classes `labels` (id order).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for fewer than two classes, a name given twice or empty, or a
    /// `max_len` outside `1..=`[`MAX_DIMENSION`].
    pub fn new<S: AsRef<str>>(
        labels: &[S],
        pooling: Pooling,
        max_len: Option<usize>,
    ) -> Result<Self> {
        let id2label: BTreeMap<usize, String> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i, l.as_ref().to_string()))
            .collect();
        let config = ClassifierConfig {
            label2id: id2label.iter().map(|(i, l)| (l.clone(), *i)).collect(),
            id2label,
            pooling,
            max_len,
        };
        config
            .check()
            .map_err(|msg| Error::invalid("ClassifierConfig::new", msg))?;
        Ok(config)
    }

    /// Number of classes.
    pub fn n_labels(&self) -> usize {
        self.id2label.len()
    }

    /// The name of class `id` (its number as text for an id outside the map).
    pub fn label(&self, id: usize) -> String {
        self.id2label
            .get(&id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }

    /// Writes `dir/classifier_config.json` (atomically).
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be written.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::invalid("ClassifierConfig::save", e.to_string()))?;
        text.push('\n');
        write_atomic(&dir.join(CLASSIFIER_CONFIG_FILE), text.as_bytes())
    }

    /// Reads and checks `dir/classifier_config.json`.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be read; [`Error::Config`] (naming the file) if it is not such
    /// a config, has fewer than two classes, ids other than `0..n`, a repeated or empty name, a
    /// `label2id` that is not the inverse of `id2label`, or a `max_len` outside
    /// `1..=`[`MAX_DIMENSION`].
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(CLASSIFIER_CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            source,
            path: path.clone(),
        })?;
        let bad = |msg: String| Error::Config {
            path: path.clone(),
            msg,
        };
        let config: ClassifierConfig =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        config.check().map_err(bad)?;
        Ok(config)
    }

    fn check(&self) -> std::result::Result<(), String> {
        let n = self.id2label.len();
        if n < 2 {
            return Err(format!("{n} class(es); a classifier needs at least 2"));
        }
        if self.id2label.keys().enumerate().any(|(i, id)| i != *id) {
            return Err(format!("class ids must be 0..{n}"));
        }
        if let Some(empty) = self.id2label.values().position(String::is_empty) {
            return Err(format!("class {empty} has an empty name"));
        }
        let inverse: BTreeMap<String, usize> =
            self.id2label.iter().map(|(i, l)| (l.clone(), *i)).collect();
        if inverse.len() != n {
            return Err("a class name is given twice".into());
        }
        if inverse != self.label2id {
            return Err("label2id is not the inverse of id2label".into());
        }
        if let Some(m) = self.max_len
            && !(1..=MAX_DIMENSION).contains(&m)
        {
            return Err(format!("max_len {m} outside 1..={MAX_DIMENSION}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checks() {
        let dir = std::env::temp_dir().join(format!("spry-clfcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = ClassifierConfig::new(&["neg", "pos", "mixed"], Pooling::Cls, Some(64)).unwrap();
        c.save(&dir).unwrap();
        let text = std::fs::read_to_string(dir.join(CLASSIFIER_CONFIG_FILE)).unwrap();
        assert!(
            text.contains("\"0\": \"neg\"") && text.contains("\"pooling\": \"cls\""),
            "{text}"
        );
        assert_eq!(ClassifierConfig::load(&dir).unwrap(), c);
        assert_eq!(
            (c.n_labels(), c.label(2), c.label(9)),
            (3, "mixed".into(), "9".into())
        );
        assert!(ClassifierConfig::new(&["a"], Pooling::Mean, None).is_err());
        assert!(ClassifierConfig::new(&["a", "a"], Pooling::Mean, None).is_err());
        assert!(ClassifierConfig::new(&["a", ""], Pooling::Mean, None).is_err());
        for bad in [
            r#"{"id2label": {"0": "a", "2": "b"}, "label2id": {"a": 0, "b": 2}, "pooling": "mean", "max_len": null}"#,
            r#"{"id2label": {"0": "a", "1": "b"}, "label2id": {"a": 1, "b": 0}, "pooling": "mean", "max_len": null}"#,
            r#"{"id2label": {"0": "a", "1": "b"}, "label2id": {"a": 0, "b": 1}, "pooling": "max", "max_len": null}"#,
        ] {
            std::fs::write(dir.join(CLASSIFIER_CONFIG_FILE), bad).unwrap();
            assert!(
                matches!(ClassifierConfig::load(&dir), Err(Error::Config { .. })),
                "{bad}"
            );
        }
    }
}

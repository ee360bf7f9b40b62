//! [`LabelSet`]: the class names of a classification data set, in class-index order.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, Result};

/// The most classes a [`LabelSet`] may hold. An integer label above it is almost surely not a
/// class index (an id, a year, a score): refused before any table sized by it is built.
pub const MAX_CLASSES: usize = 100_000;

/// The classes of a data set: their names in class-index order, and the index of each name.
///
/// Read from a training file ([`LabelSet::infer`]), written beside a trained adapter as the
/// `id2label`/`label2id` maps of a transformers `config.json` ([`LabelSet::to_id2label`],
/// [`LabelSet::from_id2label`]), or serialised by serde as the list of names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct LabelSet {
    names: Vec<String>,
    #[serde(skip)]
    index: HashMap<String, usize>,
}

/// Whether `s` spells a non-negative integer: ASCII digits only.
fn is_integer(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The first few names of a list, for messages (`["a", "b", … 98 more]`).
pub(crate) fn preview(names: &[String]) -> String {
    const SHOWN: usize = 10;
    let shown: Vec<&String> = names.iter().take(SHOWN).collect();
    if names.len() > SHOWN {
        format!("{shown:?} and {} more", names.len() - SHOWN)
    } else {
        format!("{shown:?}")
    }
}

impl LabelSet {
    /// The classes `names[0]`, `names[1]`, … in that index order.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `names` is empty or longer than [`MAX_CLASSES`], or a name
    /// is empty, has leading or trailing whitespace (labels are read trimmed, so it could never
    /// match), or repeats.
    pub fn new(names: Vec<String>) -> Result<Self> {
        const OP: &str = "LabelSet::new";
        if names.is_empty() || names.len() > MAX_CLASSES {
            return Err(Error::invalid(
                OP,
                format!("{} classes: expected 1 to {MAX_CLASSES}", names.len()),
            ));
        }
        let mut index = HashMap::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() || name.trim() != name {
                return Err(Error::invalid(
                    OP,
                    format!("class {i}: name {name:?} is empty or padded with whitespace"),
                ));
            }
            if let Some(first) = index.insert(name.clone(), i) {
                return Err(Error::invalid(
                    OP,
                    format!("classes {first} and {i} are both named {name:?}"),
                ));
            }
        }
        Ok(LabelSet { names, index })
    }

    /// The classes of a training file's labels (trimmed).
    ///
    /// If every label is a non-negative integer (ASCII digits), the classes are `0..=max` named
    /// `"0"`, `"1"`, …, so a label's class index is its value (a class no example has is kept,
    /// unused). Otherwise they are the distinct labels sorted (byte order): `["neg", "neu",
    /// "pos"]`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if there is no label, a label is empty, an integer label is
    /// [`MAX_CLASSES`] or more, or there are more than [`MAX_CLASSES`] distinct labels; the
    /// message names the label's position in `labels`.
    pub fn infer<S: AsRef<str>>(labels: &[S]) -> Result<Self> {
        Self::infer_at(labels).map_err(|(i, msg)| {
            Error::invalid("LabelSet::infer", format!("label {i} (0-based): {msg}"))
        })
    }

    /// [`LabelSet::infer`] with the failing label's position and the reason apart, for loaders
    /// that turn the position into a file line.
    pub(crate) fn infer_at<S: AsRef<str>>(
        labels: &[S],
    ) -> std::result::Result<Self, (usize, String)> {
        if labels.is_empty() {
            return Err((0, "no labels to infer classes from".into()));
        }
        let labels: Vec<&str> = labels.iter().map(|l| l.as_ref().trim()).collect();
        if let Some(i) = labels.iter().position(|l| l.is_empty()) {
            return Err((i, "empty label".into()));
        }
        let names = if labels.iter().all(|l| is_integer(l)) {
            let mut max = 0usize;
            for (i, l) in labels.iter().enumerate() {
                match l.parse::<usize>() {
                    Ok(v) if v < MAX_CLASSES => max = max.max(v),
                    _ => {
                        return Err((
                            i,
                            format!(
                                "integer label {l} is not a class index below {MAX_CLASSES} \
                                 (the classes of integer labels are 0..=max)"
                            ),
                        ));
                    }
                }
            }
            (0..=max).map(|c| c.to_string()).collect()
        } else {
            let mut distinct = BTreeSet::new();
            for (i, l) in labels.iter().enumerate() {
                distinct.insert(*l);
                if distinct.len() > MAX_CLASSES {
                    return Err((
                        i,
                        format!(
                            "more than {MAX_CLASSES} distinct labels (is it the label column?)"
                        ),
                    ));
                }
            }
            distinct.into_iter().map(str::to_owned).collect()
        };
        LabelSet::new(names).map_err(|e| (0, e.to_string()))
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Always `false`: a label set has at least one class.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The class names in index order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The name of class `id`, if there is one.
    pub fn name(&self, id: usize) -> Option<&str> {
        self.names.get(id).map(String::as_str)
    }

    /// The class index of a label (trimmed). A label of digits also matches the class named by
    /// its decimal value, so `"01"` is class `"1"`.
    pub fn id(&self, label: &str) -> Option<usize> {
        let label = label.trim();
        self.index.get(label).copied().or_else(|| {
            is_integer(label)
                .then(|| label.parse::<usize>().ok())
                .flatten()
                .and_then(|v| self.index.get(&v.to_string()).copied())
        })
    }

    /// The transformers `id2label` map: `{"0": "negative", "1": "positive"}`.
    pub fn to_id2label(&self) -> Value {
        Value::Object(
            self.names
                .iter()
                .enumerate()
                .map(|(i, n)| (i.to_string(), Value::String(n.clone())))
                .collect(),
        )
    }

    /// The transformers `label2id` map: `{"negative": 0, "positive": 1}`.
    pub fn to_label2id(&self) -> Value {
        Value::Object(
            self.names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), Value::from(i)))
                .collect(),
        )
    }

    /// The classes of a transformers `id2label` map, whose keys must be exactly `"0"` to
    /// `"n-1"` (decimal, no sign or leading zero), each naming its class.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `map` is not an object of string values, its keys are not
    /// the indices `0..n` (a gap, a repeat, a non-number), or [`LabelSet::new`] refuses the
    /// names.
    pub fn from_id2label(map: &Value) -> Result<Self> {
        const OP: &str = "LabelSet::from_id2label";
        let obj = as_object(OP, map)?;
        let mut names = vec![None; obj.len()];
        for (key, value) in obj {
            let id = key
                .parse::<usize>()
                .ok()
                .filter(|&i| i < names.len() && i.to_string() == *key)
                .ok_or_else(|| {
                    Error::invalid(
                        OP,
                        format!("key {key:?} is not a class index below {}", names.len()),
                    )
                })?;
            let name = value.as_str().ok_or_else(|| {
                Error::invalid(OP, format!("class {key}: {value} is not a string"))
            })?;
            if names[id].replace(name.to_owned()).is_some() {
                return Err(Error::invalid(OP, format!("class {id} is named twice")));
            }
        }
        Self::from_slots(OP, names)
    }

    /// The classes of a transformers `label2id` map (`{"negative": 0, ...}`), whose values must
    /// be exactly the indices `0..n`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `map` is not an object of non-negative integers, its values
    /// are not the indices `0..n`, or [`LabelSet::new`] refuses the names.
    pub fn from_label2id(map: &Value) -> Result<Self> {
        const OP: &str = "LabelSet::from_label2id";
        let obj = as_object(OP, map)?;
        let mut names = vec![None; obj.len()];
        for (name, value) in obj {
            let id = value
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .filter(|&i| i < names.len())
                .ok_or_else(|| {
                    Error::invalid(
                        OP,
                        format!(
                            "{name:?}: {value} is not a class index below {}",
                            names.len()
                        ),
                    )
                })?;
            if names[id].replace(name.clone()).is_some() {
                return Err(Error::invalid(OP, format!("class {id} is named twice")));
            }
        }
        Self::from_slots(OP, names)
    }

    /// The label set of names filled into every slot `0..n`.
    fn from_slots(op: &'static str, slots: Vec<Option<String>>) -> Result<Self> {
        let names = slots
            .into_iter()
            .enumerate()
            .map(|(i, n)| n.ok_or_else(|| Error::invalid(op, format!("class {i} has no name"))))
            .collect::<Result<Vec<_>>>()?;
        LabelSet::new(names)
    }
}

/// `map` as a JSON object of at most [`MAX_CLASSES`] entries.
fn as_object<'a>(op: &'static str, map: &'a Value) -> Result<&'a Map<String, Value>> {
    let obj = map
        .as_object()
        .ok_or_else(|| Error::invalid(op, format!("expected a JSON object, got {map}")))?;
    if obj.is_empty() || obj.len() > MAX_CLASSES {
        return Err(Error::invalid(
            op,
            format!("{} classes: expected 1 to {MAX_CLASSES}", obj.len()),
        ));
    }
    Ok(obj)
}

impl TryFrom<Vec<String>> for LabelSet {
    type Error = Error;

    /// [`LabelSet::new`].
    fn try_from(names: Vec<String>) -> Result<Self> {
        LabelSet::new(names)
    }
}

impl From<LabelSet> for Vec<String> {
    /// The class names in index order.
    fn from(labels: LabelSet) -> Self {
        labels.names
    }
}

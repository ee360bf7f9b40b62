//! JSON Lines rows: one JSON object per line, the columns its keys. Blank lines are skipped.

use serde_json::{Map, Value};

use super::Columns;
use super::rows::{RawRow, Source};
use crate::Result;

/// What a field may hold: a text must be a JSON string; a label or group may also be a number
/// or a boolean, read as its JSON spelling (an integral number such as `1.0` as `1`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Scalar,
}

/// A JSON value for a message, cut to its first 60 characters.
fn brief(value: &Value) -> String {
    let s = value.to_string();
    match s.char_indices().nth(60) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s,
    }
}

/// The value of `key` in a row object, as text.
fn field(
    src: &Source,
    line: u64,
    obj: &Map<String, Value>,
    key: &str,
    kind: Kind,
) -> Result<String> {
    let value = obj.get(key).ok_or_else(|| {
        let keys: Vec<&String> = obj.keys().collect();
        src.at(
            line,
            format!("no key `{key}` in the object (keys {keys:?})"),
        )
    })?;
    match (value, kind) {
        (Value::String(s), _) => Ok(s.clone()),
        (Value::Number(n), Kind::Scalar) => Ok(match n.as_f64() {
            // pandas writes an integer column holding a NaN as floats: 1.0 is the label 1
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 2f64.powi(53) => {
                format!("{f:.0}")
            }
            _ => n.to_string(),
        }),
        (Value::Bool(b), Kind::Scalar) => Ok(b.to_string()),
        _ => Err(src.at(
            line,
            format!(
                "key `{key}` holds {}, expected a string{}",
                brief(value),
                if kind == Kind::Scalar {
                    ", a number or a boolean"
                } else {
                    ""
                }
            ),
        )),
    }
}

/// The rows of a JSON Lines file.
///
/// # Errors
/// As [`super::rows::read_rows`].
pub(super) fn read(src: &Source, content: &str, columns: &Columns) -> Result<Vec<RawRow>> {
    let mut rows = Vec::new();
    for (i, line) in content.split('\n').enumerate() {
        let n = i as u64 + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(line).map_err(|e| src.at(n, format!("not valid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(src.at(n, format!("expected a JSON object, got {}", brief(&value))));
        };
        let get = |key: &str, kind| field(src, n, &obj, key, kind);
        let text = get(&columns.text, Kind::Text)?;
        let pair = columns
            .text_pair
            .as_deref()
            .map(|k| get(k, Kind::Text))
            .transpose()?;
        let label = get(&columns.label, Kind::Scalar)?;
        let group = columns
            .group
            .as_deref()
            .map(|k| get(k, Kind::Scalar))
            .transpose()?;
        rows.push(src.row(n, columns, text, pair, &label, group)?);
    }
    Ok(rows)
}

//! The named columns of a labelled file, row by row, as text: the step every format shares
//! before labels become class indices. The file is read whole and checked to be UTF-8, then
//! parsed by [`super::delimited`] or [`super::jsonl`].

use std::fmt::Display;
use std::path::Path;

use super::{Columns, FileFormat};
use crate::{Error, Result};

/// One row's named fields, with the line it starts on (1-based; the header is line 1).
#[derive(Clone, Debug)]
pub(crate) struct RawRow {
    /// The line the row starts on.
    pub line: u64,
    /// The text, as written.
    pub text: String,
    /// The second text of a pair, as written.
    pub text_pair: Option<String>,
    /// The label, trimmed.
    pub label: String,
    /// The group value, as written.
    pub group: Option<String>,
}

/// How many fields a TSV or CSV row must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Width {
    /// Exactly as many as the header: an extra field means an unquoted delimiter in a text.
    Exact,
    /// At least up to the last named column; extra fields are ignored (`load_labelled_tsv`).
    AtLeast,
}

/// The file being read, for errors that name it, its format and a line.
#[derive(Clone, Copy)]
pub(crate) struct Source<'a> {
    pub path: &'a Path,
    pub format: FileFormat,
}

impl Source<'_> {
    /// [`Error::Format`] about the whole file.
    pub fn error(&self, msg: impl Into<String>) -> Error {
        Error::Format {
            path: self.path.to_path_buf(),
            format: self.format.name(),
            msg: msg.into(),
        }
    }

    /// [`Error::Format`] about one line: `line 7: …`.
    pub fn at(&self, line: u64, msg: impl Display) -> Error {
        self.error(format!("line {line}: {msg}"))
    }

    /// A row from its named fields, refusing an empty (or blank) text, text pair or label.
    pub fn row(
        &self,
        line: u64,
        columns: &Columns,
        text: String,
        text_pair: Option<String>,
        label: &str,
        group: Option<String>,
    ) -> Result<RawRow> {
        let blank = |name: &str| self.at(line, format!("empty value in column `{name}`"));
        if text.trim().is_empty() {
            return Err(blank(&columns.text));
        }
        if let (Some(pair), Some(name)) = (&text_pair, &columns.text_pair)
            && pair.trim().is_empty()
        {
            return Err(blank(name));
        }
        let label = label.trim();
        if label.is_empty() {
            return Err(blank(&columns.label));
        }
        Ok(RawRow {
            line,
            text,
            text_pair,
            label: label.to_owned(),
            group,
        })
    }
}

/// Reads `path` as `format` and returns the named fields of every row, in file order.
///
/// # Errors
/// [`Error::Io`] if the file cannot be read; [`Error::Format`] if it is not UTF-8, has no header
/// (TSV, CSV), lacks a named column, or has a malformed row (too few fields, an empty text or
/// label, a JSON line that is not an object): the message names the line.
pub(crate) fn read_rows(
    path: &Path,
    format: FileFormat,
    columns: &Columns,
    width: Width,
) -> Result<Vec<RawRow>> {
    let src = Source { path, format };
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let content = String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let line = 1 + bytes[..valid].iter().filter(|&&b| b == b'\n').count() as u64;
        src.at(line, format!("invalid UTF-8 at byte {valid}"))
    })?;
    // a byte-order mark (spreadsheet exports) is not part of the first column's name
    let content = content.strip_prefix('\u{feff}').unwrap_or(&content);
    match format {
        FileFormat::Tsv | FileFormat::Csv => super::delimited::read(&src, content, columns, width),
        FileFormat::JsonLines => super::jsonl::read(&src, content, columns),
    }
}

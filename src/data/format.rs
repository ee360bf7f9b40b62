//! [`FileFormat`]: the layouts a labelled file may have, chosen by extension or by name.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The layout of a labelled file.
///
/// Spelled `tsv`, `csv` and `jsonl` on a command line ([`std::str::FromStr`], `Display`) and in
/// a config file (serde).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileFormat {
    /// Tab-separated values with a header row, no quoting: every `"` is text and a field ends at
    /// the next tab or line end (`\n`, `\r\n` or a lone `\r`), the IANA
    /// `text/tab-separated-values` convention. A text cannot hold a tab or a line break.
    #[serde(rename = "tsv")]
    Tsv,
    /// Comma-separated values with a header row, quoted as RFC 4180 says: a field in double
    /// quotes may hold commas, line breaks and doubled quotes (`""` for `"`).
    #[serde(rename = "csv")]
    Csv,
    /// JSON Lines (NDJSON): one JSON object per line, the columns its keys.
    #[serde(rename = "jsonl")]
    JsonLines,
}

from_names!(FileFormat, "tsv" => FileFormat::Tsv, "csv" => FileFormat::Csv, "jsonl" => FileFormat::JsonLines);

impl FileFormat {
    /// The format a file's extension names, ignoring case: `.tsv`, `.csv`, `.jsonl` or
    /// `.ndjson`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for any other extension, or none.
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("tsv") => Ok(FileFormat::Tsv),
            Some("csv") => Ok(FileFormat::Csv),
            Some("jsonl" | "ndjson") => Ok(FileFormat::JsonLines),
            _ => Err(Error::invalid(
                "FileFormat::from_path",
                format!(
                    "{}: the extension is not .tsv, .csv, .jsonl or .ndjson; name the format \
                     (tsv, csv or jsonl) explicitly",
                    path.display()
                ),
            )),
        }
    }

    /// The name [`Error::Format`] gives the format: `tsv`, `csv` or `jsonl`.
    pub fn name(self) -> &'static str {
        match self {
            FileFormat::Tsv => "tsv",
            FileFormat::Csv => "csv",
            FileFormat::JsonLines => "jsonl",
        }
    }
}

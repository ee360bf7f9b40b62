//! TSV and CSV rows through the `csv` crate: a header row names the columns, CSV fields may be
//! quoted (RFC 4180), TSV has no quoting. A row ends at `\n`, `\r\n` or a lone `\r` (outside
//! quotes); empty lines between rows are skipped.

use csv::{Position, ReaderBuilder, StringRecord};

use super::Columns;
use super::rows::{RawRow, Source, Width};
use crate::Result;

/// The line a record starts on. The csv crate's position of a record is where the previous one
/// ended, before the empty lines it skips: count those (`\r` and `\n` only) from that byte on.
fn start_line(content: &[u8], pos: Option<&Position>) -> u64 {
    let Some(pos) = pos else { return 0 };
    let skipped = usize::try_from(pos.byte())
        .ok()
        .and_then(|b| content.get(b..))
        .unwrap_or_default()
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .filter(|&&b| b == b'\n')
        .count();
    pos.line() + skipped as u64
}

/// The rows of a TSV or CSV file (`src.format` says which).
///
/// # Errors
/// As [`super::rows::read_rows`].
pub(super) fn read(
    src: &Source,
    content: &str,
    columns: &Columns,
    width: Width,
) -> Result<Vec<RawRow>> {
    let csv = src.format == super::FileFormat::Csv;
    let mut reader = ReaderBuilder::new()
        .delimiter(if csv { b',' } else { b'\t' })
        .quoting(csv)
        .has_headers(false)
        .flexible(true)
        .from_reader(content.as_bytes());
    let bytes = content.as_bytes();
    let mut record = StringRecord::new();
    let mut next = |record: &mut StringRecord| {
        reader.read_record(record).map_err(|e| {
            let line = start_line(bytes, e.position());
            src.at(line, e)
        })
    };
    if !next(&mut record)? {
        return Err(src.error("empty file: no header row"));
    }
    let header_line = start_line(bytes, record.position());
    let header: Vec<String> = record.iter().map(str::to_owned).collect();
    let col = |name: &str| match header.iter().filter(|h| *h == name).count() {
        1 => Ok(header.iter().position(|h| h == name).unwrap_or_default()),
        0 => Err(src.at(
            header_line,
            format!("no column `{name}` in the header {header:?}"),
        )),
        n => Err(src.at(
            header_line,
            format!("column `{name}` appears {n} times in the header {header:?}"),
        )),
    };
    let text = col(&columns.text)?;
    let pair = columns.text_pair.as_deref().map(col).transpose()?;
    let label = col(&columns.label)?;
    let group = columns.group.as_deref().map(col).transpose()?;
    let need = [Some(text), pair, Some(label), group]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0)
        + 1;
    let mut rows = Vec::new();
    while next(&mut record)? {
        let line = start_line(bytes, record.position());
        let n = record.len();
        match width {
            Width::Exact if n != header.len() => {
                return Err(src.at(
                    line,
                    format!("{n} fields where the header has {}", header.len()),
                ));
            }
            Width::AtLeast if n < need => {
                return Err(src.at(line, format!("{n} fields, need {need}")));
            }
            _ => {}
        }
        let field = |i: usize| record.get(i).unwrap_or_default().to_owned();
        rows.push(src.row(
            line,
            columns,
            field(text),
            pair.map(field),
            &field(label),
            group.map(field),
        )?);
    }
    Ok(rows)
}

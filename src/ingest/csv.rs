//! Streaming CSV ingest: one uploaded file of one [`JobKind`] into validated [`Job`]s.
//!
//! [`CsvIngest`] reads the header, maps its columns to the kind's fields (by name or alias,
//! see [`ColumnSpec::matches`]), then yields one [`RowResult`] per data row: the row's
//! [`Job`] or a [`Rejection`] naming the column and the rule broken (never the value). It
//! holds one row at a time, so memory does not grow with the file. Opening the input
//! (encoding, BOM, delimiter, byte count) is in `ingest::sniff`, the header mapping in
//! `ingest::header`.
//!
//! The file format is documented in `docs/csv-formats.md`.

use std::borrow::Cow;
use std::io::{self, Read};

use chrono::NaiveDate;
use csv::{ByteRecord, ReaderBuilder, Terminator, Trim};

use super::header::{Columns, expected_columns, map_header, trim};
use super::sniff::{self, CountingReader, Opened, Source};
use crate::jobs::columns::ColumnSpec;
use crate::jobs::fields::FieldError;
use crate::jobs::kind::{Job, JobKind};

/// The optional column every file may carry: the programme's own reference for the row.
pub const EXTERNAL_REF: ColumnSpec = ColumnSpec {
    name: "external_ref",
    required: false,
    aliases: &[
        "ext_ref",
        "reference",
        "ref",
        "ref_no",
        "reference_no",
        "reference_number",
        "external_reference",
        "external_id",
    ],
    description: "the programme's own reference for the row, at most 100 characters; \
         copied to the results",
};

/// Longest accepted `external_ref`, in characters.
const MAX_EXTERNAL_REF: usize = 100;

/// Reason given for a cell that is not UTF-8.
const NOT_UTF8: &str = "not UTF-8 text: save the file as UTF-8";

/// One valid data row.
#[derive(Debug, Clone)]
pub struct CsvRow {
    /// 1-based number of the data row: the header is not counted, blank lines are, and a
    /// quoted cell spanning several lines is still one row. In a spreadsheet, the row's
    /// line number minus 1.
    pub row_number: u64,
    /// The row's `external_ref`, when given.
    pub external_ref: Option<String>,
    /// The validated job.
    pub job: Job,
}

/// One invalid data row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// 1-based data row number, as in [`CsvRow::row_number`].
    pub row_number: u64,
    /// The row's `external_ref`, when given and valid.
    pub external_ref: Option<String>,
    /// Canonical name of the (first) invalid field, or `*` when the row as a whole is wrong
    /// (wrong number of cells).
    pub column: String,
    /// The rule broken; with several invalid fields, `field1: reason1; field2: reason2`.
    /// Never contains a value from the file.
    pub reason: String,
}

/// What one data row became.
#[derive(Debug, Clone)]
pub enum RowResult {
    /// A valid job.
    Accepted(CsvRow),
    /// An invalid row.
    Rejected(Rejection),
}

/// A problem with the file as a whole: nothing in it can be run.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Reading failed.
    #[error("could not read the file")]
    Io(#[from] io::Error),
    /// No bytes, or only blank lines.
    #[error("the file is empty")]
    Empty,
    /// The first line has no column names.
    #[error("the file has no header row: its first line must name the columns ({expected})")]
    NoHeader {
        /// The columns the kind expects.
        expected: String,
    },
    /// Required columns are absent.
    #[error(
        "the {kind} file lacks the required column(s) {}; {found}; accepted column names: {hint}",
        .missing.join(", ")
    )]
    MissingColumns {
        /// The kind being ingested.
        kind: JobKind,
        /// Each missing column, or `a or b` for a one-of group.
        missing: Vec<String>,
        /// What the header had (`columns found: ...`), or why it is not listed.
        found: String,
        /// The accepted names of the missing columns.
        hint: String,
    },
    /// The file is UTF-16 or UTF-32 text (Excel's "Unicode text"), not UTF-8.
    #[error(
        "the file is {0} text, not UTF-8: save it as \"CSV UTF-8\" (Excel) or convert it, e.g. iconv -f {0} -t UTF-8"
    )]
    WrongEncoding(&'static str),
    /// Two header cells name the same field.
    #[error("columns {} all mean {field}: keep only one of them", .columns.join(", "))]
    DuplicateColumn {
        /// Canonical field name.
        field: String,
        /// The header cells naming it, quoted.
        columns: Vec<String>,
    },
}

/// Streams the rows of one CSV file as validated jobs.
///
/// Iterating yields one item per non-empty data row; `Err` only for an I/O error mid-file
/// (after which the iterator ends). Fully empty rows are skipped but counted in
/// [`CsvRow::row_number`].
pub struct CsvIngest<R: Read> {
    rdr: csv::Reader<Source<R>>,
    kind: JobKind,
    today: NaiveDate,
    /// Number of header cells: every row must have as many.
    header_len: usize,
    /// Header cell index → canonical field.
    fields: Vec<(usize, &'static str)>,
    /// Header cell index of `external_ref`.
    external_ref: Option<usize>,
    warnings: Vec<String>,
    /// Bytes of a UTF-8 BOM skipped at the start (not seen by the CSV reader).
    bom_len: u64,
    record: ByteRecord,
    row_number: u64,
    done: bool,
}

impl<R: Read> CsvIngest<R> {
    /// Reads and maps the header of a `kind` file. `today` is the date birth dates are
    /// checked against.
    pub fn new(reader: R, kind: JobKind, today: NaiveDate) -> Result<Self, IngestError> {
        let Opened {
            source,
            bom_len,
            delimiter,
        } = sniff::open(reader)?;
        let mut rdr = ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(Trim::None)
            .delimiter(delimiter)
            .terminator(Terminator::Any(b'\n'))
            .from_reader(source);

        // The header is the first line that is not blank (blank lines before it are not
        // counted as rows).
        let mut header = ByteRecord::new();
        loop {
            if !rdr.read_byte_record(&mut header).map_err(csv_error)? {
                return Err(IngestError::Empty);
            }
            if header.len() > 1 || !trim(&header[0]).is_empty() {
                break;
            }
        }
        if header.iter().all(|c| trim(c).is_empty()) {
            return Err(IngestError::NoHeader {
                expected: expected_columns(kind),
            });
        }

        let Columns {
            fields,
            external_ref,
            warnings,
        } = map_header(kind, &header)?;
        Ok(Self {
            rdr,
            kind,
            today,
            header_len: header.len(),
            fields,
            external_ref,
            warnings,
            bom_len,
            record: ByteRecord::new(),
            row_number: 0,
            done: false,
        })
    }

    /// Non-fatal remarks about the header, e.g. unknown columns that are ignored.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Bytes read from the input so far (ahead of the rows yielded, by at most a buffer).
    pub fn bytes_read(&self) -> u64 {
        self.source().bytes
    }

    fn source(&self) -> &CountingReader<R> {
        self.rdr.get_ref().get_ref().1
    }

    /// The field name of cell `i` (`*` for a cell outside the known columns).
    fn column_name(&self, i: usize) -> String {
        if self.external_ref == Some(i) {
            return EXTERNAL_REF.name.into();
        }
        self.fields
            .iter()
            .find(|(j, _)| *j == i)
            .map_or_else(|| "*".into(), |(_, f)| (*f).to_string())
    }

    /// Reads the next record into `self.record`, advancing `row_number` by the rows it
    /// took (blank lines before it included). `false` at the end of the file.
    fn read_record(&mut self) -> Result<bool, IngestError> {
        let line_before = self.rdr.position().line();
        if !self
            .rdr
            .read_byte_record(&mut self.record)
            .map_err(csv_error)?
        {
            return Ok(false);
        }
        let pos = self.rdr.position();
        // Every '\n' consumed is a record terminator, a blank line the reader skipped, or a
        // line break inside a quoted cell. The last record may end without a '\n'.
        let newlines = pos.line() - line_before;
        let inside = self
            .record
            .as_slice()
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        let src = self.source();
        let at_end = src.eof && pos.byte() + self.bom_len >= src.bytes;
        let terminated = !at_end || src.last_byte == Some(b'\n');
        let rows = (newlines - inside + u64::from(!terminated)).max(1);
        self.row_number += rows;
        Ok(true)
    }

    /// Validates the record just read.
    fn process(&self) -> RowResult {
        let row_number = self.row_number;
        let mut errors: Vec<FieldError> = Vec::new();

        let external_ref = self
            .external_ref
            .and_then(|i| self.record.get(i))
            .map(trim)
            .filter(|b| !b.is_empty())
            .and_then(|b| match std::str::from_utf8(b) {
                Ok(s) if s.chars().count() <= MAX_EXTERNAL_REF => Some(s.to_string()),
                Ok(_) => {
                    errors.push(FieldError {
                        field: EXTERNAL_REF.name.into(),
                        reason: format!(
                            "external_ref must be at most {MAX_EXTERNAL_REF} characters"
                        ),
                    });
                    None
                }
                Err(_) => {
                    errors.push(FieldError {
                        field: EXTERNAL_REF.name.into(),
                        reason: NOT_UTF8.into(),
                    });
                    None
                }
            });

        // Postgres text cannot hold NUL, and no identifier or name contains one: the row is
        // rejected here, with its number, rather than failing the whole upload later.
        if let Some(i) = (0..self.record.len()).find(|&i| self.record[i].contains(&0)) {
            return RowResult::Rejected(Rejection {
                row_number,
                external_ref: None,
                column: self.column_name(i),
                reason:
                    "contains a NUL byte: the file may be binary or UTF-16; save it as CSV UTF-8"
                        .into(),
            });
        }
        let cells = self.record.len();
        if cells != self.header_len {
            return RowResult::Rejected(Rejection {
                row_number,
                external_ref,
                column: "*".into(),
                reason: format!(
                    "row has {cells} cells but the header has {}: check for a missing or \
                     extra delimiter (quote values that contain one)",
                    self.header_len
                ),
            });
        }

        let values: Vec<(&'static str, Cow<'_, str>)> = self
            .fields
            .iter()
            .map(|&(i, field)| {
                let raw = trim(self.record.get(i).unwrap_or_default());
                let text = String::from_utf8_lossy(raw);
                if matches!(text, Cow::Owned(_)) {
                    errors.push(FieldError {
                        field: field.into(),
                        reason: NOT_UTF8.into(),
                    });
                }
                (field, text)
            })
            .collect();
        let get = |name: &str| {
            values
                .iter()
                .find(|(f, _)| *f == name)
                .map(|(_, v)| v.as_ref())
        };
        let job = match Job::from_fields(self.kind, get, self.today) {
            Ok(job) if errors.is_empty() => {
                return RowResult::Accepted(CsvRow {
                    row_number,
                    external_ref,
                    job,
                });
            }
            Ok(_) => Vec::new(),
            Err(e) => e,
        };
        // A non-UTF-8 cell's own error says it best; keep the other fields' errors.
        for e in job {
            if !errors.iter().any(|u| u.field == e.field) {
                errors.push(e);
            }
        }
        let order = |f: &str| {
            self.kind
                .columns()
                .iter()
                .position(|c| c.name == f)
                .unwrap_or(usize::MAX)
        };
        errors.sort_by_key(|e| order(&e.field));
        RowResult::Rejected(rejection(row_number, external_ref, errors))
    }
}

/// One rejection from a row's field errors (at least one).
fn rejection(row_number: u64, external_ref: Option<String>, errors: Vec<FieldError>) -> Rejection {
    let column = errors
        .first()
        .map_or_else(|| "*".to_string(), |e| e.field.clone());
    let reason = match errors.as_slice() {
        [one] => one.reason.clone(),
        many => many
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    };
    Rejection {
        row_number,
        external_ref,
        column,
        reason,
    }
}

/// The `csv` reader fails only on I/O here (byte records, flexible lengths).
fn csv_error(e: csv::Error) -> IngestError {
    match e.into_kind() {
        csv::ErrorKind::Io(e) => IngestError::Io(e),
        other => IngestError::Io(io::Error::other(format!("CSV reader: {other:?}"))),
    }
}

impl<R: Read> Iterator for CsvIngest<R> {
    type Item = Result<RowResult, IngestError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            match self.read_record() {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(false) => self.done = true,
                Ok(true) if self.record.iter().all(|c| trim(c).is_empty()) => continue,
                Ok(true) => return Some(Ok(self.process())),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;

//! Streaming CSV ingest: one uploaded file of one [`JobKind`] into validated [`Job`]s.
//!
//! [`CsvIngest`] reads the header, maps its columns to the kind's fields (by name or alias,
//! see [`ColumnSpec::matches`]), then yields one [`RowResult`] per data row: the row's
//! [`Job`] or a [`Rejection`] naming the column and the rule broken (never the value). It
//! holds one row at a time, so memory does not grow with the file, and hashes every byte it
//! reads so a re-submitted file can be recognised.
//!
//! The file format is documented in `docs/csv-formats.md`.

use std::borrow::Cow;
use std::io::{self, Chain, Cursor, Read};

use chrono::NaiveDate;
use csv::{ByteRecord, ReaderBuilder, Terminator, Trim};

use crate::jobs::columns::ColumnSpec;
use crate::jobs::fields::FieldError;
use crate::jobs::kind::{Job, JobKind};
use crate::pii::scrub_digits;

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

/// How far into the file the first line is looked for to choose the delimiter.
const SNIFF_LIMIT: usize = 64 * 1024;

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

/// The name of a UTF-16/32 encoding recognised by its byte-order mark or by NUL bytes between
/// ASCII characters of the first line.
fn wide_encoding(prefix: &[u8]) -> Option<&'static str> {
    if prefix.starts_with(&[0xFF, 0xFE, 0, 0]) {
        return Some("UTF-32LE");
    }
    if prefix.starts_with(&[0, 0, 0xFE, 0xFF]) {
        return Some("UTF-32BE");
    }
    if prefix.starts_with(&[0xFF, 0xFE]) {
        return Some("UTF-16LE");
    }
    if prefix.starts_with(&[0xFE, 0xFF]) {
        return Some("UTF-16BE");
    }
    let head = &prefix[..prefix.len().min(64)];
    if head.len() >= 4 && head[1] == 0 && head[3] == 0 && head[0] != 0 {
        return Some("UTF-16LE");
    }
    if head.len() >= 4 && head[0] == 0 && head[2] == 0 && head[1] != 0 {
        return Some("UTF-16BE");
    }
    None
}

/// Passes bytes through, counting them. (The file's SHA-256 is taken by `submit` before
/// the batch exists, so it is not computed again here.)
struct CountingReader<R> {
    inner: R,
    bytes: u64,
    eof: bool,
    last_byte: Option<u8>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = loop {
            match self.inner.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        if n == 0 {
            if !buf.is_empty() {
                self.eof = true;
            }
        } else {
            self.bytes += n as u64;
            self.last_byte = Some(buf[n - 1]);
        }
        Ok(n)
    }
}

type Source<R> = Chain<Cursor<Vec<u8>>, CountingReader<R>>;

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

fn trim(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

/// A header name fit for an error message: digit runs masked, length bounded.
fn shown(name: &str) -> String {
    let s = scrub_digits(name);
    if s.chars().count() > 40 {
        format!("'{}...'", s.chars().take(40).collect::<String>())
    } else {
        format!("'{s}'")
    }
}

/// `abha_number (or abha, abha_no, ...)`.
fn accepted_names(c: &ColumnSpec) -> String {
    if c.aliases.is_empty() {
        c.name.to_string()
    } else {
        format!("{} (or {})", c.name, c.aliases.join(", "))
    }
}

/// The first complete line of `prefix` that is not blank, if any.
fn first_line(prefix: &[u8]) -> Option<&[u8]> {
    let complete = &prefix[..prefix.iter().rposition(|&b| b == b'\n')?];
    complete
        .split(|&b| b == b'\n')
        .find(|line| !line.trim_ascii().is_empty())
}

/// Chooses the delimiter from the first line: `,` unless the line has none and has `;` or
/// tabs.
fn sniff_delimiter(first_line: &[u8]) -> u8 {
    if first_line.contains(&b',') {
        return b',';
    }
    let semis = first_line.iter().filter(|&&b| b == b';').count();
    let tabs = first_line.iter().filter(|&&b| b == b'\t').count();
    match (semis, tabs) {
        (0, 0) => b',',
        (s, t) if s >= t => b';',
        _ => b'\t',
    }
}

impl<R: Read> CsvIngest<R> {
    /// Reads and maps the header of a `kind` file. `today` is the date birth dates are
    /// checked against.
    pub fn new(reader: R, kind: JobKind, today: NaiveDate) -> Result<Self, IngestError> {
        let mut src = CountingReader {
            inner: reader,
            bytes: 0,
            eof: false,
            last_byte: None,
        };
        // Read the first line (or a bounded prefix) to skip a BOM and choose the delimiter.
        let mut prefix = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = src.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            prefix.extend_from_slice(&chunk[..n]);
            if first_line(&prefix).is_some() || prefix.len() >= SNIFF_LIMIT {
                break;
            }
        }
        if let Some(encoding) = wide_encoding(&prefix) {
            return Err(IngestError::WrongEncoding(encoding));
        }
        let bom_len = if prefix.starts_with(&[0xEF, 0xBB, 0xBF]) {
            3
        } else {
            0
        };
        let body = &prefix[bom_len..];
        if body.iter().all(u8::is_ascii_whitespace) && src.eof {
            return Err(IngestError::Empty);
        }
        let delimiter = sniff_delimiter(first_line(body).unwrap_or(body));

        let mut cursor = Cursor::new(prefix);
        cursor.set_position(bom_len as u64);
        let mut rdr = ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(Trim::None)
            .delimiter(delimiter)
            .terminator(Terminator::Any(b'\n'))
            .from_reader(cursor.chain(src));

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

        let mut ingest = Self {
            rdr,
            kind,
            today,
            header_len: header.len(),
            fields: Vec::new(),
            external_ref: None,
            warnings: Vec::new(),
            bom_len: bom_len as u64,
            record: ByteRecord::new(),
            row_number: 0,
            done: false,
        };
        ingest.map_header(&header)?;
        Ok(ingest)
    }

    fn map_header(&mut self, header: &ByteRecord) -> Result<(), IngestError> {
        let kind = self.kind;
        let names: Vec<String> = header
            .iter()
            .map(|c| String::from_utf8_lossy(trim(c)).into_owned())
            .collect();
        // Canonical field → header cells naming it.
        let mut seen: Vec<(&'static str, Vec<usize>)> = Vec::new();
        let mut unnamed = 0;
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() {
                unnamed += 1;
                continue;
            }
            let spec = kind
                .columns()
                .iter()
                .chain(std::iter::once(&EXTERNAL_REF))
                .find(|c| c.matches(name));
            match spec {
                Some(c) => match seen.iter_mut().find(|(f, _)| *f == c.name) {
                    Some((_, cells)) => cells.push(i),
                    None => seen.push((c.name, vec![i])),
                },
                None => self.warnings.push(format!(
                    "column {} is not used by {kind} files and is ignored",
                    shown(name)
                )),
            }
        }
        if unnamed > 0 {
            self.warnings.push(format!(
                "{unnamed} column(s) without a name in the header are ignored"
            ));
        }

        let has = |field: &str| seen.iter().any(|(f, _)| *f == field);
        let mut missing = Vec::new();
        let mut hint = Vec::new();
        for c in kind.columns().iter().filter(|c| c.required && !has(c.name)) {
            missing.push(c.name.to_string());
            hint.push(accepted_names(c));
        }
        for group in kind.one_of_groups() {
            if !group.iter().any(|f| has(f)) {
                missing.push(group.join(" or "));
                for f in *group {
                    if let Some(c) = kind.columns().iter().find(|c| c.name == *f) {
                        hint.push(accepted_names(c));
                    }
                }
            }
        }
        if !missing.is_empty() {
            let found = if seen.is_empty() {
                // Probably no header at all: the first line is data, so do not echo it.
                format!(
                    "none of the {} cells of the first line is a known column name \
                     (is the header row missing?)",
                    names.len()
                )
            } else {
                let listed: Vec<String> = names
                    .iter()
                    .filter(|n| !n.is_empty())
                    .map(|n| shown(n))
                    .collect();
                format!("columns found: {}", listed.join(", "))
            };
            return Err(IngestError::MissingColumns {
                kind,
                missing,
                found,
                hint: hint.join("; "),
            });
        }
        if let Some((field, cells)) = seen.iter().find(|(_, cells)| cells.len() > 1) {
            return Err(IngestError::DuplicateColumn {
                field: field.to_string(),
                columns: cells.iter().map(|&i| shown(&names[i])).collect(),
            });
        }
        for (field, cells) in seen {
            if field == EXTERNAL_REF.name {
                self.external_ref = Some(cells[0]);
            } else {
                self.fields.push((cells[0], field));
            }
        }
        Ok(())
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

fn expected_columns(kind: JobKind) -> String {
    kind.columns()
        .iter()
        .map(|c| c.name)
        .chain(std::iter::once(EXTERNAL_REF.name))
        .collect::<Vec<_>>()
        .join(", ")
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
mod tests {
    use super::*;
    use crate::pii::verhoeff;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 1, 10).unwrap()
    }

    fn aadhaar(body: &str) -> String {
        format!("{body}{}", verhoeff::check_digit(body))
    }

    fn ingest(kind: JobKind, data: &[u8]) -> CsvIngest<&[u8]> {
        CsvIngest::new(data, kind, today()).expect("header accepted")
    }

    /// All results, panicking on an I/O error.
    fn collect(kind: JobKind, data: &[u8]) -> (Vec<CsvRow>, Vec<Rejection>) {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for r in ingest(kind, data) {
            match r.expect("no I/O error") {
                RowResult::Accepted(row) => ok.push(row),
                RowResult::Rejected(rej) => bad.push(rej),
            }
        }
        (ok, bad)
    }

    fn numbers(rows: &[CsvRow]) -> Vec<u64> {
        rows.iter().map(|r| r.row_number).collect()
    }

    #[test]
    fn bom_crlf_and_quoted_cells() {
        let data = "\u{FEFF}abha_number,external_ref\r\n\
                    91-1234-5678-9012,\"ref, with \"\"quotes\"\"\r\nand a new line\"\r\n\
                    91123456789013,plain\r\n";
        let (ok, bad) = collect(JobKind::BenefitLink, data.as_bytes());
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(numbers(&ok), [1, 2]);
        assert_eq!(
            ok[0].external_ref.as_deref(),
            Some("ref, with \"quotes\"\r\nand a new line")
        );
        assert_eq!(ok[1].external_ref.as_deref(), Some("plain"));
        assert_eq!(ok[1].job.subject(), "91-1234-5678-9013");
    }

    #[test]
    fn aliases_and_warnings() {
        let data = "Ref,ABHA Number,Comments\nA1,91-1234-5678-9012,hello\n";
        let ing = ingest(JobKind::BenefitLookup, data.as_bytes());
        assert_eq!(ing.warnings().len(), 1);
        assert!(ing.warnings()[0].contains("'Comments'"));
        let rows: Vec<_> = ing.map(Result::unwrap).collect();
        let [RowResult::Accepted(row)] = rows.as_slice() else {
            panic!("{rows:?}")
        };
        assert_eq!(row.external_ref.as_deref(), Some("A1"));
        assert_eq!(row.job.subject(), "91-1234-5678-9012");

        let data = "Aadhaar No,Name,DOB,Sex,LGD State Code,lgd_district_code,Phone,PIN\n";
        assert!(CsvIngest::new(data.as_bytes(), JobKind::AbhaCreateDemo, today()).is_ok());
    }

    #[test]
    fn missing_columns_named() {
        let data = "name,dob,Notes\nRavi Kumar,01-01-1990,x\n";
        let err = CsvIngest::new(data.as_bytes(), JobKind::AbhaCreateDemo, today())
            .err()
            .expect("missing columns");
        let IngestError::MissingColumns { missing, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(
            missing,
            &["aadhaar", "gender", "state_code", "district_code"]
        );
        let msg = err.to_string();
        assert!(msg.contains("'Notes'"), "{msg}");
        assert!(msg.contains("uid"), "hint at aliases: {msg}");

        let err = CsvIngest::new(
            "external_ref\nA\n".as_bytes(),
            JobKind::BenefitLink,
            today(),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("abha_number or aadhaar"), "{err}");

        // A headerless file: the first line (data) is not echoed.
        let err = CsvIngest::new(
            "91-1234-5678-9012,Ravi Kumar\n".as_bytes(),
            JobKind::BenefitLookup,
            today(),
        )
        .err()
        .unwrap();
        let msg = err.to_string();
        assert!(!msg.contains("5678") && !msg.contains("Ravi"), "{msg}");
        assert!(msg.contains("header row missing"), "{msg}");
    }

    #[test]
    fn file_level_errors() {
        let empty = CsvIngest::new(&b""[..], JobKind::AbhaFind, today());
        assert!(matches!(empty, Err(IngestError::Empty)));
        let bom_only = CsvIngest::new(&b"\xEF\xBB\xBF\r\n\n"[..], JobKind::AbhaFind, today());
        assert!(matches!(bom_only, Err(IngestError::Empty)));
        let no_header = CsvIngest::new(&b",,\n1,2,3\n"[..], JobKind::AbhaFind, today());
        assert!(matches!(no_header, Err(IngestError::NoHeader { .. })));
        let dup = CsvIngest::new(&b"mobile,Phone\n"[..], JobKind::AbhaFind, today());
        let Err(IngestError::DuplicateColumn { field, columns }) = dup else {
            panic!("expected a duplicate column error")
        };
        assert_eq!(field, "mobile");
        assert_eq!(columns, ["'mobile'", "'Phone'"]);
    }

    #[test]
    fn wrong_cell_count_rejects_row() {
        let data = "mobile,external_ref\n9876543210\n9876543211,r2,extra\n9876543212,r3\n";
        let (ok, bad) = collect(JobKind::AbhaFind, data.as_bytes());
        assert_eq!(numbers(&ok), [3]);
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].row_number, 1);
        assert_eq!(bad[0].column, "*");
        assert!(bad[0].reason.contains("1 cells but the header has 2"));
        assert_eq!(bad[1].row_number, 2);
        assert!(bad[1].reason.contains("3 cells"));
        assert_eq!(bad[1].external_ref.as_deref(), Some("r2"));
    }

    #[test]
    fn a_nul_byte_rejects_only_its_row_and_utf16_is_named() {
        let mut data = b"child_name,parent_x_token,child_dob,child_gender,external_ref\n".to_vec();
        data.extend_from_slice(b"Asha,tok1,01-01-2020,F,a\n");
        data.extend_from_slice(b"Rena,tok2,01-01-2020,F,b\0c\n");
        data.extend_from_slice(b"Meena,tok3,01-01-2020,F,d\n");
        let (ok, bad) = collect(JobKind::ChildCreate, &data);
        assert_eq!(numbers(&ok), [1, 3]);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].row_number, 2);
        assert_eq!(bad[0].column, "external_ref");
        assert!(bad[0].reason.contains("NUL"), "{}", bad[0].reason);
        let utf16: Vec<u8> = "\u{FEFF}mobile\r\n9876543210\r\n"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let err = CsvIngest::new(&utf16[..], JobKind::AbhaFind, today()).err();
        assert!(
            matches!(err, Some(IngestError::WrongEncoding("UTF-16LE"))),
            "{err:?}"
        );
        assert!(err.unwrap().to_string().contains("UTF-16LE"));
    }

    #[test]
    fn non_utf8_rejects_only_its_row() {
        let mut data = b"child_name,parent_x_token,child_dob,child_gender\n".to_vec();
        data.extend_from_slice(b"Asha,tok1,01-01-2020,F\n");
        data.extend_from_slice(b"R\xE9na,tok2,01-01-2020,F\n");
        data.extend_from_slice(b"Meena,tok3,01-01-2020,F\n");
        let (ok, bad) = collect(JobKind::ChildCreate, &data);
        assert_eq!(numbers(&ok), [1, 3]);
        assert_eq!(
            bad,
            [Rejection {
                row_number: 2,
                external_ref: None,
                column: "child_name".into(),
                reason: NOT_UTF8.into(),
            }]
        );
    }

    #[test]
    fn several_field_errors_joined() {
        let data = "aadhaar,name,dob,gender,state_code,district_code\n\
                    123,Ravi Kumar,01-01-1990,Q,9,143\n";
        let (_, bad) = collect(JobKind::AbhaCreateDemo, data.as_bytes());
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].column, "aadhaar");
        assert_eq!(
            bad[0].reason,
            "aadhaar: Aadhaar number must be 12 digits; gender: gender must be M, F or O"
        );
        let long = "x".repeat(101);
        let data = format!("mobile,external_ref\n9876543210,{long}\n");
        let (_, bad) = collect(JobKind::AbhaFind, data.as_bytes());
        assert_eq!(bad[0].column, "external_ref");
        assert!(bad[0].reason.contains("at most 100"));
    }

    #[test]
    fn empty_rows_skipped_but_counted() {
        let data = "mobile,external_ref\n\n9876543210,a\n,\n  ,  \n\r\n9876543211,\"b\nc\"\n\n9876543212,d";
        let (ok, bad) = collect(JobKind::AbhaFind, data.as_bytes());
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(numbers(&ok), [2, 6, 8]);
        // The same with CRLF and a trailing empty line.
        let crlf = data.replace('\n', "\r\n") + "\r\n";
        let (ok, _) = collect(JobKind::AbhaFind, crlf.as_bytes());
        assert_eq!(numbers(&ok), [2, 6, 8]);
    }

    #[test]
    fn row_numbers_with_leading_blanks_and_final_quoted_newline() {
        let data = "\n\r\nmobile;external_ref\n9876543210;\"a\n\nb\"\n\n9876543211;\"c\nd\"";
        let (ok, bad) = collect(JobKind::AbhaFind, data.as_bytes());
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(numbers(&ok), [1, 3]);
        assert_eq!(ok[1].external_ref.as_deref(), Some("c\nd"));
        // Debug output of a row is masked.
        assert!(!format!("{:?}", ok[0]).contains("987654"));
    }

    #[test]
    fn semicolon_and_tab_delimited() {
        let aad = aadhaar("23456789012");
        let data = format!("Aadhaar;External Ref\n{aad};\"a;b\"\n");
        let (ok, bad) = collect(JobKind::BenefitSearch, data.as_bytes());
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(ok[0].external_ref.as_deref(), Some("a;b"));
        assert_eq!(ok[0].job.subject(), aad);
        let data = format!("aadhaar\texternal_ref\n{aad}\tx,y\n");
        let (ok, bad) = collect(JobKind::BenefitSearch, data.as_bytes());
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(ok[0].external_ref.as_deref(), Some("x,y"));
    }

    #[test]
    fn bytes_of_whole_file() {
        let data = "\u{FEFF}mobile\r\n9876543210\r\n9876543211\r\n".as_bytes();
        let mut ing = ingest(JobKind::AbhaFind, data);
        assert_eq!(ing.by_ref().count(), 2);
        assert_eq!(ing.bytes_read(), data.len() as u64);
    }

    /// Produces a large CSV on the fly, so the test itself holds no file.
    struct Generated {
        rows: u64,
        next: u64,
        pending: Vec<u8>,
        bytes: u64,
    }

    impl Read for Generated {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pending.is_empty() {
                if self.next > self.rows {
                    return Ok(0);
                }
                let line = if self.next == 0 {
                    "abha_number,external_ref\n".to_string()
                } else if self.next % 1000 == 0 {
                    format!("91-0000-{:04}-12,bad-{}\n", self.next % 10_000, self.next)
                } else {
                    format!(
                        "91-{:04}-{:04}-{:04},ref-{}\n",
                        self.next / 100_000_000,
                        self.next / 10_000 % 10_000,
                        self.next % 10_000,
                        self.next
                    )
                };
                self.bytes += line.len() as u64;
                self.pending = line.into_bytes();
                self.next += 1;
            }
            let n = buf.len().min(self.pending.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            Ok(n)
        }
    }

    #[test]
    fn large_file_streams() {
        let mut gen_reader = Generated {
            rows: 100_000,
            next: 0,
            pending: Vec::new(),
            bytes: 0,
        };
        let mut ing = CsvIngest::new(&mut gen_reader, JobKind::BenefitLookup, today()).unwrap();
        let (mut ok, mut bad, mut last) = (0u64, 0u64, 0u64);
        for r in ing.by_ref() {
            match r.unwrap() {
                RowResult::Accepted(row) => {
                    ok += 1;
                    assert_eq!(row.row_number, last + 1);
                    last = row.row_number;
                }
                RowResult::Rejected(rej) => {
                    bad += 1;
                    assert_eq!(rej.row_number % 1000, 0);
                    assert_eq!(rej.column, "abha_number");
                    last = rej.row_number;
                }
            }
        }
        assert_eq!((ok, bad, last), (99_900, 100, 100_000));
        let bytes = ing.bytes_read();
        drop(ing);
        assert_eq!(bytes, gen_reader.bytes);
    }

    #[test]
    fn io_error_mid_file_is_reported() {
        struct Failing(Vec<u8>);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Err(io::Error::other("disk on fire"));
                }
                let n = buf.len().min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0.drain(..n);
                Ok(n)
            }
        }
        let ing = CsvIngest::new(
            Failing(b"mobile\n9876543210\n98765".to_vec()),
            JobKind::AbhaFind,
            today(),
        )
        .unwrap();
        let items: Vec<_> = ing.collect();
        assert!(matches!(items.last(), Some(Err(IngestError::Io(_)))));
    }

    #[test]
    fn example_files_have_no_rejections() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        for kind in JobKind::ALL {
            let path = dir.join(format!("{kind}.csv"));
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            let ing = CsvIngest::new(file, kind, today()).unwrap();
            assert!(ing.warnings().is_empty(), "{kind}: {:?}", ing.warnings());
            let mut accepted = 0;
            for r in ing {
                match r.unwrap() {
                    RowResult::Accepted(row) => {
                        accepted += 1;
                        assert!(row.external_ref.is_some(), "{kind} row {}", row.row_number);
                    }
                    RowResult::Rejected(rej) => panic!("{kind}: {rej:?}"),
                }
            }
            assert!((5..=10).contains(&accepted), "{kind}: {accepted} rows");
        }
    }

    #[test]
    fn docs_cover_every_kind_and_column() {
        let docs = include_str!("../../docs/csv-formats.md");
        for kind in JobKind::ALL {
            let heading = format!("## {kind}");
            let start = docs
                .find(&heading)
                .unwrap_or_else(|| panic!("no section {heading}"));
            let section = &docs[start..];
            let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
            for c in kind.columns() {
                assert!(
                    section.contains(&format!("`{}`", c.name)),
                    "{kind}: {}",
                    c.name
                );
                for a in c.aliases {
                    assert!(section.contains(a), "{kind}: alias {a}");
                }
            }
        }
        for a in EXTERNAL_REF.aliases {
            assert!(docs.contains(a), "external_ref alias {a}");
        }
    }

    #[test]
    fn external_ref_aliases_do_not_clash() {
        for kind in JobKind::ALL {
            for c in kind.columns() {
                for n in std::iter::once(&EXTERNAL_REF.name).chain(EXTERNAL_REF.aliases) {
                    assert!(!c.matches(n), "{kind}: {n}");
                }
            }
        }
    }
}

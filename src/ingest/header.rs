//! The header row of an upload: each cell mapped to one of the kind's fields (by name or
//! alias, see [`ColumnSpec::matches`]) or to `external_ref`; unknown columns are ignored with
//! a warning, missing and repeated ones refuse the file.

use csv::ByteRecord;

use super::csv::{EXTERNAL_REF, IngestError};
use crate::jobs::columns::ColumnSpec;
use crate::jobs::kind::JobKind;
use crate::pii::scrub_digits;

/// Where each field is in a row.
#[derive(Debug, Default)]
pub(super) struct Columns {
    /// Header cell index → canonical field.
    pub(super) fields: Vec<(usize, &'static str)>,
    /// Header cell index of `external_ref`.
    pub(super) external_ref: Option<usize>,
    /// Non-fatal remarks (ignored columns).
    pub(super) warnings: Vec<String>,
}

/// A cell without surrounding ASCII whitespace.
pub(super) fn trim(b: &[u8]) -> &[u8] {
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

/// The columns a `kind` file may have, for the message about a missing header.
pub(super) fn expected_columns(kind: JobKind) -> String {
    kind.columns()
        .iter()
        .map(|c| c.name)
        .chain(std::iter::once(EXTERNAL_REF.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Maps the header cells of a `kind` file to its fields.
pub(super) fn map_header(kind: JobKind, header: &ByteRecord) -> Result<Columns, IngestError> {
    let mut out = Columns::default();
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
            None => out.warnings.push(format!(
                "column {} is not used by {kind} files and is ignored",
                shown(name)
            )),
        }
    }
    if unnamed > 0 {
        out.warnings.push(format!(
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
            out.external_ref = Some(cells[0]);
        } else {
            out.fields.push((cells[0], field));
        }
    }
    Ok(out)
}

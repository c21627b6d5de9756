//! Helpers for the unit tests of the kinds: a fixed "today" and rows given as cell lists.

use std::collections::BTreeMap;

use chrono::NaiveDate;

use crate::jobs::columns::ColumnSpec;
use crate::jobs::fields::FieldError;
use crate::jobs::kind::{Job, JobKind};
use crate::pii::verhoeff;

/// The day the test files are "checked" (birth dates are compared with it).
pub(crate) fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 1, 10).unwrap()
}

/// A valid Aadhaar number: `body` (11 digits) and its Verhoeff check digit.
pub(crate) fn aadhaar(body: &str) -> String {
    format!("{body}{}", verhoeff::check_digit(body))
}

/// Validates a row given as (column, cell) pairs.
pub(crate) fn run(kind: JobKind, cells: &[(&str, &str)]) -> Result<Job, Vec<FieldError>> {
    let map: BTreeMap<&str, &str> = cells.iter().copied().collect();
    Job::from_fields(kind, |k| map.get(k).copied(), today())
}

/// [`run`] for owned cells, such as a kind's example row.
pub(crate) fn run_owned(
    kind: JobKind,
    cells: &[(&'static str, String)],
) -> Result<Job, Vec<FieldError>> {
    let borrowed: Vec<(&str, &str)> = cells.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run(kind, &borrowed)
}

/// The errors of a row that must be rejected.
pub(crate) fn errors(kind: JobKind, cells: &[(&str, &str)]) -> Vec<FieldError> {
    run(kind, cells).expect_err("row should be rejected")
}

/// Asserts exactly one error, on `field`, whose reason does not contain `value`; returns the
/// reason.
pub(crate) fn assert_one(
    kind: JobKind,
    cells: &[(&str, &str)],
    field: &str,
    value: &str,
) -> String {
    let e = errors(kind, cells);
    assert_eq!(e.len(), 1, "{kind} {field}: {e:?}");
    assert_eq!(e[0].field, field);
    assert!(
        !e[0].reason.contains(value),
        "reason of {field} contains the value"
    );
    e[0].reason.clone()
}

/// The kind's example row with `field` set to `value`: exactly that field must be refused,
/// without echoing the value.
pub(crate) fn assert_example_refuses(kind: JobKind, field: &'static str, value: &str) {
    let mut cells = kind.example();
    for c in &mut cells {
        if c.0 == field {
            c.1 = value.to_string();
        }
    }
    let borrowed: Vec<(&str, &str)> = cells.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_one(kind, &borrowed, field, value);
}

/// The column `name` of `kind`.
pub(crate) fn col(kind: JobKind, name: &str) -> ColumnSpec {
    *kind
        .columns()
        .iter()
        .find(|c| c.name == name)
        .expect("column")
}

//! What one row of a bulk file asks for, and doing it once.
//!
//! | module | holds |
//! |---|---|
//! | [`kind`] | the registry: [`kind::JobKind`], [`kind::Job`] and the [`kind::Kind`] trait |
//! | `kind::<name>` | one kind each: columns and aliases, payload, validation, subject, the ABDM call and its outcomes |
//! | [`columns`] | [`columns::ColumnSpec`], header matching, the columns and aliases kinds share |
//! | [`fields`] | reading a row: [`fields::FieldError`], the [`fields::Fields`] reader, shared parsers |
//! | [`execute`] | one job → one outcome: [`execute::Success`], lost answers, shared outcome mapping |
//! | [`benefit`] | the benefit (programme) name |
//! | [`sample`] | what sample rows are made from: the [`sample::SampleWorld`] the sandbox implements, shared sample helpers |
//!
//! # Adding a kind
//!
//! 1. Write `src/jobs/kind/<name>.rs`: a unit struct named after the new [`kind::JobKind`]
//!    variant, implementing [`kind::Kind`] (its columns, payload, `parse`, `to_fields`,
//!    subject, the ABDM call and its outcome names, its share, header and rows in the
//!    sandbox's sample files, an example row for the tests).
//! 2. Add one line to the `registry!` list in `src/jobs/kind.rs`: `Variant => name,` under
//!    its doc comment.
//!
//! Queues, metrics labels, the CLI's value list and the header checks follow from
//! [`kind::JobKind::ALL`], and so do the sandbox's sample files (`sandbox::samples`). Outside
//! this module the kind needs its section in docs/csv-formats.md (a test of `ingest::csv`
//! checks every column is there).
//! The ABDM call itself, if new, belongs in [`crate::abdm`].

pub mod benefit;
pub mod columns;
pub mod execute;
pub mod fields;
pub mod kind;
pub mod sample;

#[cfg(test)]
mod testing;

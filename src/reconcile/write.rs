//! The last pass: the report in roster order (then the swept links, in job order), written
//! from the answers in Postgres while the roster streams by once more, and the `--apply`
//! fixes queued on the way. A resumed run writes the whole report, its earlier answers
//! included.

use std::collections::HashMap;
use std::path::Path;

use uuid::Uuid;

use super::ReconcileError;
use super::check::class;
use super::fixes::FixQueue;
use super::output::{Line, ReportWriter};
use super::roster::{Item, chunks};
use super::sweep::{PAGE, link_abha};
use crate::store::Store;
use crate::store::reconcile_rows::StagedRow;

/// Counts only the report pass knows (per row, not per ABHA).
#[derive(Debug, Default)]
pub(super) struct RowCounts {
    pub roster_rows: i64,
    pub repeated: i64,
    pub invalid: i64,
}

fn class_of(s: &StagedRow) -> &'static str {
    match s.class.as_deref() {
        Some(class::LINKED) => class::LINKED,
        Some(class::MISSING) => class::MISSING,
        Some(class::UNEXPECTED) => class::UNEXPECTED,
        Some(class::UNKNOWN) => class::UNKNOWN,
        Some(class::NOT_LINKED) => class::NOT_LINKED,
        Some(class::SKIPPED) => class::SKIPPED,
        _ => class::ERROR,
    }
}

/// Writes the roster's lines; with `links`, queues a link job for each missing link that has
/// no open one.
pub(super) async fn roster_lines(
    store: &Store,
    run: Uuid,
    path: &Path,
    out: &mut ReportWriter,
    mut links: Option<&mut FixQueue<'_>>,
) -> Result<RowCounts, ReconcileError> {
    let (mut rx, reader) = chunks(store, path)?;
    let mut counts = RowCounts::default();
    while let Some(chunk) = rx.recv().await {
        let hashes: Vec<Vec<u8>> = chunk
            .iter()
            .filter_map(|i| match i {
                Item::Valid(r) => Some(r.hash.clone()),
                Item::Invalid(_) => None,
            })
            .collect();
        let staged: HashMap<Vec<u8>, StagedRow> = store
            .staged_rows(run, &hashes)
            .await?
            .into_iter()
            .map(|s| (s.subject_hash.clone(), s))
            .collect();
        for item in chunk {
            counts.roster_rows += 1;
            let r = match item {
                Item::Invalid(r) => {
                    counts.invalid += 1;
                    out.write(&Line {
                        row: Some(r.row_number),
                        external_ref: r.external_ref,
                        masked: None,
                        class: class::INVALID,
                        code: String::new(),
                        column: r.column,
                        detail: r.reason,
                    })?;
                    continue;
                }
                Item::Valid(r) => r,
            };
            let Some(s) = staged.get(&r.hash) else {
                return Err(ReconcileError::Roster {
                    path: path.to_path_buf(),
                    reason: "the file changed during the run; run again".into(),
                });
            };
            let first = s.first_row.unwrap_or_default();
            if first != r.row as i64 {
                counts.repeated += 1;
                out.write(&Line {
                    row: Some(r.row),
                    external_ref: r.external_ref,
                    masked: Some(r.abha.masked()),
                    class: class::REPEATED,
                    code: String::new(),
                    column: String::new(),
                    detail: format!(
                        "same ABHA number as row {first}: looked up and counted once, there"
                    ),
                })?;
                continue;
            }
            let c = class_of(s);
            out.write(&Line {
                row: Some(r.row),
                external_ref: r.external_ref.clone(),
                masked: Some(r.abha.masked()),
                class: c,
                code: s.code.clone().unwrap_or_default(),
                column: String::new(),
                detail: s.detail.clone().unwrap_or_default(),
            })?;
            if c == class::MISSING
                && !s.fix_open
                && let Some(q) = links.as_deref_mut()
            {
                q.push(Some(r.row), r.external_ref, r.abha).await?;
            }
        }
    }
    reader
        .await
        .expect("roster reader")
        .map_err(|reason| ReconcileError::Roster {
            path: path.to_path_buf(),
            reason,
        })?;
    Ok(counts)
}

/// Writes the swept links that are drift (still linked) or could not be checked (ABDM
/// errors); with `delinks`, queues a de-link job for each unexpected link without an open one.
pub(super) async fn swept_lines(
    store: &Store,
    run: Uuid,
    out: &mut ReportWriter,
    mut delinks: Option<&mut FixQueue<'_>>,
) -> Result<(), ReconcileError> {
    let mut after = 0i64;
    loop {
        let page = store.swept_page(run, after, PAGE, false).await?;
        let Some(last) = page.last() else { break };
        after = last.0.job_id.unwrap_or(i64::MAX);
        for (s, dedup, payload, result) in page {
            let c = class_of(&s);
            if c != class::UNEXPECTED && c != class::ERROR {
                continue;
            }
            let job = s.job_id.unwrap_or_default();
            out.write(&Line {
                row: None,
                external_ref: None,
                masked: s.masked.clone(),
                class: c,
                code: s.code.clone().unwrap_or_default(),
                column: String::new(),
                detail: format!(
                    "{} (earlier link: job {job})",
                    s.detail.clone().unwrap_or_default()
                ),
            })?;
            if c == class::UNEXPECTED
                && !s.fix_open
                && let Some(q) = delinks.as_deref_mut()
                && let Some(abha) = link_abha(store, job, &dedup, &payload, result)
            {
                q.push(None, None, abha).await?;
            }
        }
    }
    Ok(())
}

//! What a reconciliation shows while it runs (progress with an ETA) and the CSV it writes.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::ReconcileError;
use crate::report::{format_duration, spreadsheet_safe};

/// Progress of one phase: a bar with an ETA on a terminal, otherwise a log line at the start
/// and every 10 s with done, total, rate and ETA.
pub(super) struct Progress {
    what: &'static str,
    total: u64,
    started: Instant,
    bar: Option<indicatif::ProgressBar>,
    last_log: Mutex<Instant>,
}

/// Seconds between two progress log lines when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);

impl Progress {
    pub(super) fn start(what: &'static str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:40}] {pos}/{len} {prefix} ({per_sec}, ETA {eta}) {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b.set_prefix(what);
            b
        });
        if bar.is_none() {
            tracing::info!(total, "reconciliation: {what}: starting");
        }
        Self {
            what,
            total,
            started: Instant::now(),
            bar,
            last_log: Mutex::new(Instant::now()),
        }
    }

    /// `done` items so far; `msg` is a short count (never an identifier).
    pub(super) fn set(&self, done: u64, msg: &str) {
        if let Some(b) = &self.bar {
            b.set_position(done);
            b.set_message(msg.to_string());
            return;
        }
        let mut last = self.last_log.lock().expect("progress lock");
        if last.elapsed() < LOG_EVERY {
            return;
        }
        *last = Instant::now();
        tracing::info!(
            done,
            total = self.total,
            "reconciliation: {}: {done}/{} ({}), {}",
            self.what,
            self.total,
            msg,
            eta(self.started.elapsed(), done, self.total)
        );
    }

    pub(super) fn finish(self) {
        match self.bar {
            Some(b) => b.finish_and_clear(),
            None => tracing::info!(
                total = self.total,
                "reconciliation: {}: done in {}",
                self.what,
                format_duration(self.started.elapsed().as_secs_f64())
            ),
        }
    }
}

/// `1.2/s, ETA 3m 05s`, from the average so far.
pub(super) fn eta(elapsed: Duration, done: u64, total: u64) -> String {
    let secs = elapsed.as_secs_f64();
    if done == 0 || secs <= 0.0 {
        return "ETA unknown".into();
    }
    let rate = done as f64 / secs;
    format!(
        "{rate:.1}/s, ETA {}",
        format_duration(total.saturating_sub(done) as f64 / rate)
    )
}

/// One line of the report.
pub(super) struct Line {
    pub row: Option<u64>,
    pub external_ref: Option<String>,
    /// Masked ABHA number.
    pub masked: Option<String>,
    pub class: &'static str,
    pub code: String,
    pub column: String,
    pub detail: String,
}

/// The report, written to `<out>.partial` and renamed to `<out>` once complete: a run killed
/// half-way leaves no report that looks whole, and never a half-overwritten earlier one.
pub(super) struct ReportWriter {
    path: std::path::PathBuf,
    partial: std::path::PathBuf,
    force: bool,
    w: csv::Writer<std::io::BufWriter<std::fs::File>>,
}

/// The report's columns (docs/report-format.md).
pub const COLUMNS: [&str; 7] = [
    "row",
    "external_ref",
    "identifier",
    "class",
    "abdm_code",
    "rejected_column",
    "detail",
];

/// Refuses an existing `path` unless `force`, as `report` does.
pub(super) fn check_target(path: &Path, force: bool) -> Result<(), ReconcileError> {
    if !force && path.exists() {
        return Err(ReconcileError::Report(
            path.display().to_string(),
            "the file exists; give --force to replace it, or another --out".into(),
        ));
    }
    Ok(())
}

impl ReportWriter {
    pub(super) fn create(path: &Path, force: bool) -> Result<Self, ReconcileError> {
        let err = |e: String| ReconcileError::Report(path.display().to_string(), e);
        check_target(path, force)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| err(e.to_string()))?;
        }
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = std::path::PathBuf::from(partial);
        let f = std::fs::File::create(&partial).map_err(|e| err(e.to_string()))?;
        let mut w = csv::Writer::from_writer(std::io::BufWriter::new(f));
        w.write_record(COLUMNS).map_err(|e| err(e.to_string()))?;
        Ok(Self {
            path: path.to_path_buf(),
            partial,
            force,
            w,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> ReconcileError {
        ReconcileError::Report(self.path.display().to_string(), e.to_string())
    }

    pub(super) fn write(&mut self, l: &Line) -> Result<(), ReconcileError> {
        let cells = [
            l.row.map(|r| r.to_string()).unwrap_or_default(),
            l.external_ref.clone().unwrap_or_default(),
            l.masked.clone().unwrap_or_default(),
            l.class.to_string(),
            l.code.clone(),
            l.column.clone(),
            l.detail.clone(),
        ];
        self.w
            .write_record(cells.iter().map(|c| spreadsheet_safe(c)))
            .map_err(|e| self.err(e))
    }

    /// Flushes and moves the report into place (checking again that nothing appeared there
    /// meanwhile, unless `--force`).
    pub(super) fn finish(self) -> Result<(), ReconcileError> {
        let Self {
            path,
            partial,
            force,
            w,
        } = self;
        let err = |e: String| ReconcileError::Report(path.display().to_string(), e);
        let inner = w.into_inner().map_err(|e| err(e.to_string()))?;
        let f = inner.into_inner().map_err(|e| err(e.to_string()))?;
        f.sync_all().map_err(|e| err(e.to_string()))?;
        check_target(&path, force)?;
        std::fs::rename(&partial, &path).map_err(|e| err(e.to_string()))
    }
}

/// Deletes all but the `keep` newest files `<prefix>*.csv` in `dir` (dated names sort by
/// time). Returns how many were deleted. `.partial` files of a run in progress are left.
pub fn prune_reports(dir: &Path, prefix: &str, keep: usize) -> std::io::Result<usize> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix) && n.ends_with(".csv"))
        .collect();
    names.sort();
    let old = names.len().saturating_sub(keep);
    for n in &names[..old] {
        std::fs::remove_file(dir.join(n))?;
    }
    Ok(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_from_the_average_so_far() {
        assert_eq!(eta(Duration::from_secs(10), 0, 3), "ETA unknown");
        assert_eq!(eta(Duration::from_secs(10), 50, 100), "5.0/s, ETA 10s");
    }

    #[test]
    fn only_the_newest_dated_reports_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "reconcile-PMJAY-20261201-013000.csv",
            "reconcile-PMJAY-20261203-013000.csv",
            "reconcile-PMJAY-20261202-013000.csv",
            "reconcile-PMJAY-20261204-013000.csv.partial",
            "reconcile-OTHER-20261101-013000.csv",
            "notes.csv",
        ] {
            std::fs::write(dir.path().join(n), "x").unwrap();
        }
        assert_eq!(prune_reports(dir.path(), "reconcile-PMJAY-", 2).unwrap(), 1);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "notes.csv",
                "reconcile-OTHER-20261101-013000.csv",
                "reconcile-PMJAY-20261202-013000.csv",
                "reconcile-PMJAY-20261203-013000.csv",
                "reconcile-PMJAY-20261204-013000.csv.partial",
            ]
        );
    }
}

//! What a reconciliation shows while it runs (progress with an ETA) and the CSV it writes.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Line, ReconcileError};
use crate::pii::AbhaNumber;
use crate::report::{format_duration, spreadsheet_safe};

/// Data records of a CSV file (the header and blank lines not counted), read quickly before
/// the run so progress has a total from the start.
pub(super) fn count_records(path: &Path) -> std::io::Result<u64> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_path(path)
        .map_err(std::io::Error::other)?;
    let mut rec = csv::ByteRecord::new();
    let mut n = 0;
    while r
        .read_byte_record(&mut rec)
        .map_err(std::io::Error::other)?
    {
        n += 1;
    }
    Ok(n)
}

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

pub(super) struct ReportWriter {
    path: String,
    w: csv::Writer<std::io::BufWriter<std::fs::File>>,
}

impl ReportWriter {
    pub(super) fn create(path: &Path) -> Result<Self, ReconcileError> {
        let err = |e: String| ReconcileError::Report(path.display().to_string(), e);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| err(e.to_string()))?;
        }
        let f = std::fs::File::create(path).map_err(|e| err(e.to_string()))?;
        let mut w = csv::Writer::from_writer(std::io::BufWriter::new(f));
        w.write_record([
            "row",
            "external_ref",
            "identifier",
            "class",
            "abdm_code",
            "rejected_column",
            "detail",
        ])
        .map_err(|e| err(e.to_string()))?;
        Ok(Self {
            path: path.display().to_string(),
            w,
        })
    }

    pub(super) fn write(&mut self, l: &Line) -> Result<(), ReconcileError> {
        // An invalid roster row carries its column, never an ABDM code.
        let (code, column) = match l.class {
            super::Class::Invalid => (String::new(), l.code.clone()),
            _ => (l.code.clone(), String::new()),
        };
        let cells = [
            l.row.map(|r| r.to_string()).unwrap_or_default(),
            l.external_ref.clone().unwrap_or_default(),
            l.abha.as_ref().map(AbhaNumber::masked).unwrap_or_default(),
            l.class.as_str().to_string(),
            code,
            column,
            l.detail.clone(),
        ];
        self.w
            .write_record(cells.iter().map(|c| spreadsheet_safe(c)))
            .map_err(|e| ReconcileError::Report(self.path.clone(), e.to_string()))
    }

    pub(super) fn finish(mut self) -> Result<(), ReconcileError> {
        self.w
            .flush()
            .map_err(|e| ReconcileError::Report(self.path.clone(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roster_records_are_counted_without_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        std::fs::write(
            &path,
            "abha_number\r\n91-1234-5678-9012\r\n\r\n91-1234-5678-9013\n",
        )
        .unwrap();
        assert_eq!(count_records(&path).unwrap(), 2);
    }

    #[test]
    fn eta_from_the_average_so_far() {
        assert_eq!(eta(Duration::from_secs(10), 0, 3), "ETA unknown");
        assert_eq!(eta(Duration::from_secs(10), 50, 100), "5.0/s, ETA 10s");
    }
}

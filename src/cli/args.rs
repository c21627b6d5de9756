//! The clap definitions of the `abha-bulk` command line: the global options, the subcommands
//! and their arguments (the help text users read). Kept apart from the dispatch in `cli.rs`
//! so each command's options read as one list.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::Settings;
use crate::jobs::kind::JobKind;
use crate::sandbox::{KeySource, SandboxConfig};

use super::api_cmd;

/// Runs ABDM ABHA V3 Benefit API operations in bulk.
#[derive(Debug, Parser)]
#[command(
    name = "abha-bulk",
    version = crate::telemetry::build::LONG_VERSION,
    about,
    long_about = None
)]
pub struct Cli {
    /// Extra settings file applied after config/<env>.toml.
    #[arg(long, global = true, env = "ABHA_BULK_CONFIG_FILE")]
    pub config: Option<PathBuf>,
    /// Folder of config/<env>.toml.
    #[arg(
        long,
        global = true,
        env = "ABHA_BULK_CONFIG_DIR",
        default_value = "config"
    )]
    pub config_dir: PathBuf,
    /// Environment name: selects config/<env>.toml.
    #[arg(long, global = true, env = "ABHA_BULK_ENV", default_value = "local")]
    pub env: String,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database if missing and run the migrations.
    Migrate,
    /// GET a local health endpoint; exit 0 on a 2xx answer. The image's HEALTHCHECK: the
    /// runtime image has no shell or HTTP client of its own.
    Probe(ProbeArgs),
    /// Validate a CSV file and queue its rows as a batch of jobs.
    Submit(SubmitArgs),
    /// Consume jobs, call ABDM at the configured rate, record outcomes (runs the relay too).
    Worker(WorkerArgs),
    /// Publish due outbox rows to RabbitMQ (also runs inside `worker`).
    Relay,
    /// Batch progress: counts by state, rate, ETA.
    Status(StatusArgs),
    /// Write the per-row CSV report of a batch.
    Report(ReportArgs),
    /// Re-run the failed and dead rows of a batch.
    RetryFailed(RetryArgs),
    /// Cancel the rows of a batch that have not run yet.
    Cancel(BatchArg),
    /// Compare a programme's roster with ABDM; with --apply, queue the link/de-link jobs that
    /// fix the drift. Also repairs abha-bulk's own state.
    Reconcile(ReconcileArgs),
    /// Run the embedded ABDM simulator until Ctrl-C / SIGTERM.
    Sandbox(SandboxArgs),
    /// Make one real call of every operation and print what each returned.
    Tour(TourArgs),
    /// The whole pipeline in one process against the embedded sandbox, on a generated sample.
    Demo(DemoArgs),
    /// Load, validate and print the effective settings (secrets masked).
    Config,
    /// Serve the programme API (docs/api.md) on api.listen.
    Serve,
    /// Create, list or revoke the programme API's keys.
    #[command(subcommand)]
    ApiKey(api_cmd::ApiKeyCommand),
    /// Re-encrypt every stored identifier under `pii.key` while `pii.previous_keys` still
    /// decrypt (online, in chunks), then record the new key's check value.
    Rekey(RekeyArgs),
    /// Erase every stored row about the people in a file of identifiers (Aadhaar, ABHA
    /// number or mobile, one per line; DPDP Act s.12), cancelling their rows that have not run.
    Erase(EraseArgs),
    /// Run the retention sweep once to its end (the relay's housekeeping runs it anyway):
    /// erase the identifiers of batches past their retention, purge old records.
    Retention,
}

/// `erase` options.
#[derive(Debug, Clone, Args)]
pub struct EraseArgs {
    /// The file: one identifier per line (`aadhaar:`, `abha:` or `mobile:` before a value
    /// whose digits alone are ambiguous); blank lines and `#` comments are skipped.
    pub file: PathBuf,
    /// Why (required; recorded in the erasure log).
    #[arg(long)]
    pub reason: String,
    /// Only rows of these benefits (programmes); repeat for several. Default: every benefit.
    #[arg(long = "benefit", visible_alias = "programme")]
    pub benefits: Vec<String>,
    /// The person responsible (recorded in the erasure log).
    #[arg(long)]
    pub operator: Option<String>,
    /// Seconds to wait for rows running right now to finish before leaving them for the next
    /// run of the same request.
    #[arg(long, default_value_t = 300)]
    pub wait_secs: u64,
}

/// How `submit` and `status` answer on standard output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Prose for people (the default).
    #[default]
    Text,
    /// One JSON document, for scripts (docs/operations.md, "JSON answers").
    Json,
}

/// `rekey` options.
#[derive(Debug, Clone, Args)]
pub struct RekeyArgs {
    /// Jobs read and rewritten per round.
    #[arg(long, default_value_t = 1000)]
    pub chunk: i64,
}

/// `submit` options.
#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// The CSV file (see docs/csv-formats.md).
    pub file: PathBuf,
    /// Job kind of every row.
    #[arg(long, value_enum)]
    pub kind: JobKind,
    /// Benefit (programme) name as registered with ABDM (letters, digits, spaces and
    /// - _ . / ( ) &; one of `benefits.served` when that is set).
    #[arg(long)]
    pub benefit: String,
    /// Submit even if these exact bytes were already submitted for this kind and benefit.
    /// (Rows that an earlier batch already holds, in another file, are warned about after
    /// the submission either way.)
    #[arg(long)]
    pub force: bool,
    /// Priority within the programme's share of the ABDM rate: low, normal, high or urgent
    /// (weights 1, 2, 4, 8; default: the programme's `benefits.priorities`, else normal).
    #[arg(long)]
    pub priority: Option<crate::scheduler::Priority>,
    /// `json`: print the outcome (batch id, counts, warnings) as one JSON document.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// `worker` options.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Do not run the outbox relay in this process (run `abha-bulk relay` separately).
    #[arg(long)]
    pub no_relay: bool,
    /// Consume only these kinds (comma-separated; default: all). Needs
    /// `rabbitmq.queue_per_kind = true`: each kind's queue then gets `worker.in_flight`
    /// prefetch, so a worker of fewer kinds holds fewer messages.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub kinds: Vec<JobKind>,
}

/// `status` options.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Batch id (or a unique prefix); without it, the active batches.
    pub batch: Option<String>,
    /// Refresh until the batch (without BATCH: every active batch) is finished.
    #[arg(long)]
    pub watch: bool,
    /// Without BATCH: list finished and cancelled batches too.
    #[arg(long, conflicts_with = "batch")]
    pub all: bool,
    /// `json`: print the batch (without BATCH: `{"batches": [...]}`) as one JSON document.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text, conflicts_with = "watch")]
    pub output: OutputFormat,
}

/// `report` options.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// Batch id (or a unique prefix).
    pub batch: String,
    /// Output CSV file (`-`: standard output). An existing file is not replaced without
    /// --force, and the input file of a batch never is; the folder must exist.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing --out file.
    #[arg(long)]
    pub force: bool,
    /// Put the identifiers found or created (ABHA numbers) in clear in `result_revealed`;
    /// recorded in the audit table first, the file is created with mode 0600.
    #[arg(long, requires = "reason")]
    pub reveal: bool,
    /// Why the identifiers are revealed (required with --reveal, stored in the audit table).
    #[arg(long, requires = "reveal")]
    pub reason: Option<String>,
    /// Who is responsible for the reveal (stored in the audit table beside the OS account).
    #[arg(long, requires = "reveal")]
    pub operator: Option<String>,
}

/// `retry-failed` options.
#[derive(Debug, Clone, Args)]
pub struct RetryArgs {
    /// Batch id (or a unique prefix).
    pub batch: String,
    /// Only rows whose last ABDM code is this (e.g. ABDM-9999, timeout).
    #[arg(long)]
    pub code: Option<String>,
}

/// `reconcile` options.
#[derive(Debug, Clone, Args)]
pub struct ReconcileArgs {
    /// Benefit name.
    #[arg(long)]
    pub benefit: String,
    /// Roster CSV: `abha_number` (and optional `external_ref`) of every beneficiary the
    /// programme believes is linked.
    #[arg(long)]
    pub roster: PathBuf,
    /// Queue link jobs for missing links (and, with --sweep-unexpected, de-link jobs for
    /// unexpected links).
    #[arg(long)]
    pub apply: bool,
    /// Also look up every ABHA this service linked for the benefit that is not in the
    /// roster (one ABDM call each at `reconcile.rate_per_second`: slow on a large history).
    #[arg(long)]
    pub sweep_unexpected: bool,
    /// Report file (default <reports-dir>/reconcile-<benefit>-<time>.csv). An existing file
    /// is refused unless --force.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace an existing --out file.
    #[arg(long)]
    pub force: bool,
    /// Directory of the dated default reports.
    #[arg(long, default_value = "reports", conflicts_with = "out")]
    pub reports_dir: PathBuf,
    /// After a successful run, keep only the N newest dated reports of this benefit in
    /// --reports-dir (older reconcile-<benefit>-*.csv files are deleted).
    #[arg(long, value_name = "N", conflicts_with = "out", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: Option<u32>,
    /// Start afresh instead of continuing an unfinished run of the same roster (a run that
    /// was interrupted continues where it stopped when the same roster is given again).
    #[arg(long)]
    pub restart: bool,
}

/// A batch argument.
#[derive(Debug, Clone, Args)]
pub struct BatchArg {
    /// Batch id (or a unique prefix).
    pub batch: String,
}

/// `demo` options.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Rows over all kinds.
    #[arg(long, default_value_t = 10_000)]
    pub rows: usize,
    /// ABDM calls per second.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Folder for the generated inputs and the reports (default reports/demo-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Turn the sandbox's fault injection off.
    #[arg(long)]
    pub no_faults: bool,
}

/// Options of the sandbox (each overrides the `[sandbox]` setting of the same name).
#[derive(Debug, Clone, Args, Default)]
pub struct SandboxArgs {
    /// Listen address.
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// RSA key size (ABDM uses 4096; smaller starts faster).
    #[arg(long)]
    pub key_bits: Option<usize>,
    /// PKCS#8 PEM private key file to use instead of generating one.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Seeded beneficiaries.
    #[arg(long)]
    pub population: Option<u64>,
    /// Seed of the population.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Requests per second before ABDM-1022 (0 = unlimited).
    #[arg(long)]
    pub rate_limit: Option<f64>,
    /// Access token lifetime, seconds.
    #[arg(long)]
    pub token_ttl_secs: Option<u64>,
    /// Percentage of calls answered 500.
    #[arg(long)]
    pub fault_5xx: Option<f64>,
    /// Percentage of calls held past the client timeout.
    #[arg(long)]
    pub fault_timeout: Option<f64>,
    /// Percentage of calls whose connection drops after the side effect.
    #[arg(long)]
    pub fault_drop: Option<f64>,
    /// Latency added to every answer, milliseconds.
    #[arg(long)]
    pub latency_ms: Option<u64>,
    /// How long a timeout fault holds its answer, milliseconds (above the client's request
    /// timeout, or the answer is merely late rather than lost).
    #[arg(long)]
    pub timeout_hold_ms: Option<u64>,
    /// At start, write one CSV per job kind into this folder that succeeds against this
    /// sandbox (it seeds the links and children the rows need); benefit: the first of
    /// sandbox.benefits. Same seed, population and options → the same files and world.
    #[arg(long, value_name = "DIR")]
    pub write_samples: Option<PathBuf>,
    /// Rows over all kinds for --write-samples (default 10 000).
    #[arg(long, requires = "write_samples")]
    pub rows: Option<usize>,
    /// Percentage of demo-like invalid rows in the samples (default 0).
    #[arg(long, requires = "write_samples")]
    pub invalid_percent: Option<f64>,
}

impl SandboxArgs {
    pub(super) fn apply(&self, settings: &mut Settings) {
        let s = &mut settings.sandbox;
        macro_rules! set {
            ($($f:ident => $t:ident),*) => { $( if let Some(v) = self.$f.clone() { s.$t = v; } )* };
        }
        set!(listen => listen, key_bits => key_bits, population => population, seed => seed,
             rate_limit => rate_limit, token_ttl_secs => token_ttl_secs,
             fault_5xx => fault_5xx_percent, fault_timeout => fault_timeout_percent,
             fault_drop => fault_drop_percent, latency_ms => latency_ms);
    }

    pub(super) fn config(&self, settings: &Settings) -> anyhow::Result<SandboxConfig> {
        let mut cfg = SandboxConfig::from_settings(settings)?;
        if let Some(path) = &self.key_file {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --key-file {}", path.display()))?;
            cfg.key = KeySource::Pem(pem);
        }
        if let Some(ms) = self.timeout_hold_ms {
            cfg.faults.timeout_hold_ms = ms;
        }
        Ok(cfg)
    }
}

/// Options of the tour.
#[derive(Debug, Clone, Args)]
pub struct TourArgs {
    /// Benefit name to call with (checked like `submit --benefit`).
    #[arg(long, default_value = "DEMO-BENEFIT")]
    pub benefit: crate::jobs::benefit::BenefitName,
    /// Use identifiers of the sandbox population (seed and size from `[sandbox]`).
    #[arg(long)]
    pub sandbox_population: bool,
    /// Start a sandbox in this process and tour it (ignores `[abdm]`).
    #[arg(long)]
    pub embedded: bool,
    /// File of `key=value` lines naming the identifiers to call with (`-` reads stdin):
    /// `abha` (search, link, de-link), `aadhaar` (search), `find_mobile` (find ABHAs). Unset
    /// keys are read from ABHA_BULK_TOUR_ABHA, ABHA_BULK_TOUR_AADHAAR and
    /// ABHA_BULK_TOUR_FIND_MOBILE. Never arguments: those are visible in `ps`.
    #[arg(long)]
    pub inputs: Option<PathBuf>,
    /// File holding a parent's X-token (child creation and listing).
    #[arg(long)]
    pub parent_x_token_file: Option<PathBuf>,
}

/// `abha-bulk probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The endpoint, e.g. http://127.0.0.1:9187/healthz (the worker) or
    /// http://127.0.0.1:8090/healthz (serve).
    #[arg(default_value = "http://127.0.0.1:9187/healthz")]
    pub url: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3)]
    pub timeout_secs: u64,
}

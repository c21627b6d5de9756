//! The long-running and operator commands: submit, worker, relay, status, report.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{
    OutputFormat, ReconcileArgs, ReportArgs, SubmitArgs, WorkerArgs, spawn_signal_handler,
};
use crate::abdm::AbdmClient;
use crate::config::{ExposeSecret, Settings};
use crate::jobs::benefit::BenefitName;
use crate::jobs::kind::JobKind;
use crate::queue::Topology;
use crate::ratelimit::{GlobalBudget, RateLimiter};
use crate::store::Store;
use crate::submit::{Progress, SubmitRequest};
use crate::worker::{Worker, WorkerConfig};

/// Progress of `submit`: a byte bar on a terminal, a log line every 100 000 rows otherwise.
struct SubmitProgress {
    bar: Option<indicatif::ProgressBar>,
    last_logged: std::sync::atomic::AtomicU64,
}

impl Progress for SubmitProgress {
    fn update(&self, bytes: u64, rows: u64) {
        match &self.bar {
            Some(b) => {
                b.set_position(bytes);
                b.set_message(format!("{rows} rows"));
            }
            None => {
                let last = self.last_logged.load(std::sync::atomic::Ordering::Relaxed);
                if rows >= last + 100_000 {
                    self.last_logged
                        .store(rows, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(rows, bytes, "submit progress");
                }
            }
        }
    }
}

pub(super) async fn submit(settings: &Settings, args: &SubmitArgs) -> anyhow::Result<ExitCode> {
    let benefit = BenefitName::parse_served(&args.benefit, &settings.benefits.served)?;
    let store = Store::connect(settings).await?;
    let size = std::fs::metadata(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?
        .len();
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(size);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {bytes}/{total_bytes} {msg} ({bytes_per_sec})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b
    });
    let progress = Arc::new(SubmitProgress {
        bar: bar.clone(),
        last_logged: Default::default(),
    });
    let req = SubmitRequest {
        path: args.file.clone(),
        kind: args.kind,
        benefit: benefit.to_string(),
        force: args.force,
        priority: args
            .priority
            .unwrap_or_else(|| settings.benefits.priority(benefit.as_str())),
    };
    // SIGTERM/Ctrl-C abort the batch: none of its rows runs, and the file may be sent again.
    let stop = CancellationToken::new();
    spawn_signal_handler(stop.clone());
    let result = crate::submit::submit_until(&store, &req, progress, &stop).await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let s = result?;
    for w in &s.warnings {
        eprintln!("warning: {w}");
    }
    let json = args.output == OutputFormat::Json;
    if !json {
        out!(
            "batch {}: {} rows read, {} accepted, {} rejected, {} duplicate (run once) in {:.1} s ({:.0} rows/s)",
            s.batch,
            s.total,
            s.accepted,
            s.rejected,
            s.duplicates,
            s.elapsed.as_secs_f64(),
            s.total as f64 / s.elapsed.as_secs_f64().max(0.001)
        );
    }
    let overlaps = warn_overlaps(&store, &s, args.kind, &benefit).await;
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&submit_json(&s, args, &benefit, &overlaps))?
        );
    } else if s.rejected > 0 {
        out!(
            "rejected rows are in the report: abha-bulk report {} --out report.csv",
            s.batch
        );
    }
    if s.accepted + s.duplicates == 0 {
        eprintln!("error: no row of {} could be accepted", args.file.display());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `submit --output json` (docs/operations.md, "JSON answers").
fn submit_json(
    s: &crate::submit::SubmitSummary,
    args: &SubmitArgs,
    benefit: &BenefitName,
    overlaps: &[crate::store::batch_views::Overlap],
) -> serde_json::Value {
    serde_json::json!({
        "batch": s.batch,
        "kind": args.kind.as_str(),
        "benefit": benefit.as_str(),
        "total_rows": s.total,
        "accepted_rows": s.accepted,
        "rejected_rows": s.rejected,
        "duplicate_rows": s.duplicates,
        "elapsed_seconds": s.elapsed.as_secs_f64(),
        "warnings": s.warnings,
        "overlaps": overlaps.iter().map(|o| serde_json::json!({
            "batch": o.batch, "created_at": o.created_at, "file_name": o.file_name,
            "rows": o.rows, "exact": o.exact,
        })).collect::<Vec<_>>(),
    })
}

pub(super) async fn worker(settings: &Settings, args: &WorkerArgs) -> anyhow::Result<ExitCode> {
    let no_relay = args.no_relay;
    if !args.kinds.is_empty() && !settings.rabbitmq.queue_per_kind {
        anyhow::bail!(
            "--kinds needs a queue per kind: set rabbitmq.queue_per_kind = true \
             (ABHA_BULK__RABBITMQ__QUEUE_PER_KIND=true) on every process; the shared work \
             queue carries every kind"
        );
    }
    let store = Store::connect(settings).await?;
    let client = Arc::new(AbdmClient::new(&settings.abdm)?);
    let amqp = settings.rabbitmq_url()?.expose_secret().to_string();
    let topology = Topology::from_settings(&settings.rabbitmq);
    let w = &settings.worker;
    let global = w.global_rate_limit.then(|| {
        GlobalBudget::new(
            store.clone(),
            &settings.abdm.client_id,
            w.rate_per_second,
            f64::from(w.burst),
        )
    });
    let limiter = RateLimiter::with_aimd(w.rate_per_second, w.burst, global, w.aimd());
    let stop = CancellationToken::new();
    spawn_signal_handler(stop.clone());
    tokio::spawn(store.clone().watch_key_set(stop.clone()));
    let worker = Worker::with_breaker(
        store.clone(),
        client.clone(),
        limiter,
        topology.clone(),
        WorkerConfig {
            kinds: if args.kinds.is_empty() {
                JobKind::ALL.to_vec()
            } else {
                args.kinds.clone()
            },
            ..WorkerConfig::from_settings(w)
        },
        w.breaker(),
    );
    crate::http::serve(
        &w.http_listen,
        crate::http::Readiness {
            store: store.clone(),
            client: client.clone(),
            amqp_url: amqp.clone(),
            breaker: Some(worker.breaker.clone()),
        },
        stop.clone(),
    )
    .await
    .with_context(|| format!("cannot listen on worker.http_listen {}", w.http_listen))?;
    let relay = (!no_relay).then(|| {
        // Webhooks go out beside the relay, in a task of their own (docs/api.md#webhooks).
        tokio::spawn(crate::api::webhooks::run(
            store.clone(),
            settings.webhooks.clone(),
            stop.clone(),
        ));
        tokio::spawn(crate::relay::run(
            store.clone(),
            amqp.clone(),
            topology.clone(),
            crate::relay::RelayConfig::for_fleet(settings),
            stop.clone(),
        ))
    });
    let depth = tokio::spawn(queue_depth_gauges(
        amqp.clone(),
        topology.clone(),
        stop.clone(),
    ));
    worker.run(amqp, stop).await;
    if let Some(r) = relay {
        let _ = r.await;
    }
    depth.abort();
    tracing::info!("worker stopped");
    Ok(ExitCode::SUCCESS)
}

/// Reads the depth of every queue into `abha_queue_messages` every 15 s.
async fn queue_depth_gauges(amqp: String, topology: Topology, stop: CancellationToken) {
    while !stop.is_cancelled() {
        if let Ok(conn) = crate::queue::connect(&amqp).await {
            if let Ok(ch) = conn.create_channel().await {
                if let Ok(depths) = topology.depths(&ch).await {
                    for (q, n) in depths {
                        crate::telemetry::metrics::QUEUE_MESSAGES
                            .with_label_values(&[q.as_str()])
                            .set(f64::from(n));
                    }
                }
                let _ = ch.close(200, "depth check".into()).await;
            }
            let _ = conn.close(200, "depth check".into()).await;
        }
        crate::relay::sleep_or_stop(Duration::from_secs(15), &stop).await;
    }
}

pub(super) async fn relay(settings: &Settings) -> anyhow::Result<ExitCode> {
    let store = Store::connect(settings).await?;
    let stop = CancellationToken::new();
    spawn_signal_handler(stop.clone());
    tokio::spawn(store.clone().watch_key_set(stop.clone()));
    let webhooks = tokio::spawn(crate::api::webhooks::run(
        store.clone(),
        settings.webhooks.clone(),
        stop.clone(),
    ));
    crate::relay::run(
        store,
        settings.rabbitmq_url()?.expose_secret().to_string(),
        Topology::from_settings(&settings.rabbitmq),
        crate::relay::RelayConfig::for_fleet(settings),
        stop,
    )
    .await;
    let _ = webhooks.await;
    Ok(ExitCode::SUCCESS)
}

/// Warns about rows of the new batch that earlier batches of the same kind and benefit
/// already hold (the same file reordered, re-saved with other line endings, or merged into
/// another). The batch is already queued: the warning says how to stop it.
async fn warn_overlaps(
    store: &Store,
    s: &crate::submit::SubmitSummary,
    kind: crate::jobs::kind::JobKind,
    benefit: &BenefitName,
) -> Vec<crate::store::batch_views::Overlap> {
    if s.accepted == 0 {
        return Vec::new();
    }
    let started = std::time::Instant::now();
    let overlaps = match store
        .overlapping_batches(s.batch, kind.as_str(), benefit.as_str(), s.accepted)
        .await
    {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "could not compare the batch with earlier batches");
            return Vec::new();
        }
    };
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        batches = overlaps.len(),
        "overlap check"
    );
    for o in &overlaps {
        eprintln!(
            "warning: {}{} of the {} accepted row(s) were already submitted in batch {} ({}{}, {kind} / {benefit}); they will run again. To stop this batch: abha-bulk cancel {}",
            if o.exact { "" } else { "about " },
            o.rows,
            s.accepted,
            o.batch,
            o.created_at.format("%Y-%m-%d %H:%M UTC"),
            o.file_name
                .as_ref()
                .map(|f| format!(", file {f}"))
                .unwrap_or_default(),
            s.batch
        );
    }
    overlaps
}

pub(super) async fn report(settings: &Settings, args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let store = Store::connect(settings).await?;
    let batch = store.find_batch(&args.batch).await?;
    let os_user = crate::report::os_account();
    let reveal = args.reveal.then(|| crate::report::Reveal {
        os_user: &os_user,
        operator: args.operator.as_deref(),
        reason: args.reason.as_deref().unwrap_or(""),
    });
    let target = crate::report::ReportTarget::from_arg(&args.out, args.force);
    let counts = match crate::report::write_report(&store, batch.id, &target, reveal).await {
        Ok(c) => c,
        Err(crate::report::ReportError::Io(_, e))
            if target == crate::report::ReportTarget::Stdout
                && e.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            return Err(super::output::stdout_error(e));
        }
        Err(e) => return Err(e.into()),
    };
    eprintln!(
        "{}: {} row(s) of batch {}{}",
        target.display(),
        counts.rows,
        batch.id,
        if args.reveal {
            format!(
                ", {} identifier(s) revealed (recorded in reveal_audit)",
                counts.revealed
            )
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn reconcile(
    settings: &Settings,
    args: &ReconcileArgs,
) -> anyhow::Result<ExitCode> {
    let benefit = BenefitName::parse_served(&args.benefit, &settings.benefits.served)?;
    let store = Store::connect(settings).await?;
    let client = Arc::new(AbdmClient::new(&settings.abdm)?);
    // Reconciliation's own pace; with the shared budget, each call also takes a token at the
    // fleet's rate (crate::reconcile::ReconcileGate says why both).
    let gate = crate::reconcile::ReconcileGate::new(
        &store,
        &settings.abdm.client_id,
        settings.reconcile.rate_per_second,
        settings.worker.global_rate_limit.then(|| {
            (
                settings.worker.rate_per_second,
                settings.worker.burst,
                settings.worker.aimd(),
            )
        }),
    );
    let prefix = format!(
        "reconcile-{}-",
        benefit
            .as_str()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    let out = args.out.clone().unwrap_or_else(|| {
        args.reports_dir.join(format!(
            "{prefix}{}.csv",
            chrono::Utc::now().format("%Y%m%d-%H%M%S")
        ))
    });
    let amqp = settings.rabbitmq_url()?.expose_secret().to_string();
    let topology = Topology::from_settings(&settings.rabbitmq);
    let request = crate::reconcile::ReconcileRequest {
        benefit: benefit.to_string(),
        roster: args.roster.clone(),
        apply: args.apply,
        out,
        force: args.force,
        restart: args.restart,
        concurrency: settings.reconcile.concurrency,
        sweep_unexpected: args.sweep_unexpected,
    };
    let run = crate::reconcile::run(&store, client, gate, Some(&amqp), &topology, &request);
    // SIGTERM (the CronJob's deadline, a drain) or Ctrl-C: the answers so far are committed,
    // so stop at once and say how to continue.
    let stop = tokio_util::sync::CancellationToken::new();
    spawn_signal_handler(stop.clone());
    let summary = tokio::select! {
        s = run => s?,
        () = stop.cancelled() => {
            tracing::warn!(
                "reconciliation interrupted: its answers so far are kept; run the same command with the same roster to continue"
            );
            return Ok(ExitCode::from(143));
        }
    };
    out!("{}", summary.render());
    if let Some(keep) = args.keep {
        let removed = crate::reconcile::prune_reports(&args.reports_dir, &prefix, keep as usize)?;
        if removed > 0 {
            out!("removed {removed} older report(s) (--keep {keep})");
        }
    }
    Ok(ExitCode::SUCCESS)
}

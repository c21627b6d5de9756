//! The `abha-bulk` command line: the entry point and the dispatch of each command. The clap
//! definitions are in `cli/args.rs`; the longer commands in `cli/commands.rs`, `status.rs`,
//! `api_cmd.rs`, `ops.rs` and `tour_cmd.rs`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use crate::abdm::AbdmClient;
use crate::config::{ConfigSource, ExposeSecret, Settings};
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::store::Store;
use crate::tour::TourInputs;

#[macro_use]
mod output;
mod api_cmd;
mod args;
mod commands;
mod erase_cmd;
mod ops;
mod status;
mod tour_cmd;
pub use args::{
    BatchArg, Cli, Command, DemoArgs, EraseArgs, OutputFormat, ProbeArgs, ReconcileArgs, RekeyArgs,
    ReportArgs, RetryArgs, SandboxArgs, StatusArgs, SubmitArgs, TourArgs, WorkerArgs,
};
use tour_cmd::{print_tour, tour_inputs};

/// Entry point of the binary.
pub fn main() -> ExitCode {
    output::quiet_on_broken_pipe();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        // The reader of our output went away (`abha-bulk status | head -1`): stop quietly.
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_settings(cli: &Cli) -> anyhow::Result<Settings> {
    let source = ConfigSource {
        dir: cli.config_dir.clone(),
        env: cli.env.clone(),
        file: cli.config.clone(),
    };
    Ok(Settings::load(&source)?)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Probe(args) = &cli.command {
        return ops::probe(args).await;
    }
    let mut settings = load_settings(&cli)?;
    crate::telemetry::init(&settings.telemetry);
    match &cli.command {
        Command::Config => {
            crate::store::Vault::from_secrets(&settings.pii.key, &settings.pii.previous_keys)?;
            out!("{settings:#?}");
            for (key, set) in settings.secrets_set() {
                out!("# {key}: {}", if set { "set" } else { "not set" });
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sandbox(args) => {
            args.apply(&mut settings);
            settings.validate()?;
            let cfg = args.config(&settings)?;
            eprintln!(
                "starting the ABDM sandbox ({}-bit key, {} beneficiaries, seed {})...",
                settings.sandbox.key_bits, cfg.population, cfg.seed
            );
            let sandbox = Sandbox::start(cfg).await?;
            if let Some(dir) = &args.write_samples {
                write_samples(&sandbox, dir, args, &settings)?;
            }
            println!(
                "ABDM sandbox on {} (base_url {}/abha/api, session_url {}/api/hiecm/gateway/v3/sessions)",
                sandbox.addr(),
                sandbox.url(),
                sandbox.url()
            );
            let stop = tokio_util::sync::CancellationToken::new();
            spawn_signal_handler(stop.clone());
            sandbox.run_until(stop).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Tour(args) if args.embedded => {
            settings.sandbox.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            settings.sandbox.key_bits = 2048;
            let sandbox = Sandbox::start(SandboxConfig::from_settings(&settings)?).await?;
            let mut abdm = crate::sandbox::settings_for_sandbox(&sandbox.url());
            abdm.benefit_header = settings.abdm.benefit_header.clone();
            let client = AbdmClient::new(&abdm)?;
            let inputs =
                TourInputs::from_population(sandbox.state().population(), args.benefit.as_str());
            println!(
                "ABDM sandbox on {}; calling every operation once:\n",
                sandbox.url()
            );
            let failed = print_tour(&client, &inputs).await;
            sandbox.shutdown().await;
            Ok(exit(!failed))
        }
        Command::Tour(args) => {
            let client = AbdmClient::new(&settings.abdm)?;
            let inputs = tour_inputs(args, &settings)?;
            let failed = print_tour(&client, &inputs).await;
            Ok(exit(!failed))
        }
        Command::Demo(args) => {
            let mut opts = crate::demo::DemoOptions {
                rows: args.rows,
                rate: args.rate,
                ..Default::default()
            };
            if let Some(out) = &args.out {
                opts.out_dir = out.clone();
            }
            if args.no_faults {
                opts.faults = (0.0, 0.0, 0.0);
            }
            let outcome = crate::demo::run(&settings, &opts).await?;
            if outcome.duplicate_side_effects > 0 {
                eprintln!("error: the sandbox saw a side effect done twice");
            }
            Ok(exit(outcome.duplicate_side_effects == 0))
        }
        Command::Migrate => {
            let url = settings.database_url()?;
            Store::migrate(url.expose_secret()).await?;
            out!("database migrated");
            Ok(ExitCode::SUCCESS)
        }
        Command::Rekey(args) => ops::rekey(&settings, args).await,
        Command::Erase(args) => erase_cmd::erase(&settings, args).await,
        Command::Retention => erase_cmd::retention(&settings).await,
        // Answered before the settings are read (above); kept here so the match stays whole.
        Command::Probe(args) => ops::probe(args).await,
        Command::Submit(args) => commands::submit(&settings, args).await,
        Command::Serve => api_cmd::serve(&settings).await,
        Command::ApiKey(cmd) => api_cmd::api_key(&settings, cmd).await,
        Command::Reconcile(args) => commands::reconcile(&settings, args).await,
        Command::Worker(args) => commands::worker(&settings, args).await,
        Command::Relay => commands::relay(&settings).await,
        Command::Status(args) => status::status(&settings, args).await,
        Command::Report(args) => commands::report(&settings, args).await,
        Command::RetryFailed(args) => {
            let store = Store::connect(&settings).await?;
            let batch = store.find_batch(&args.batch).await?;
            let n = store.retry_failed(batch.id, args.code.as_deref()).await?;
            let only = args
                .code
                .as_ref()
                .map(|c| format!(" (last code {c})"))
                .unwrap_or_default();
            out!(
                "{n} failed/dead row(s){only} of batch {} queued again",
                batch.id
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel(args) => {
            let store = Store::connect(&settings).await?;
            let batch = store.find_batch(&args.batch).await?;
            if matches!(batch.state.as_str(), "finished" | "cancelled") {
                eprintln!(
                    "error: batch {} is already {}: there is nothing left to cancel",
                    batch.id, batch.state
                );
                return Ok(ExitCode::FAILURE);
            }
            let n = store.cancel_batch(batch.id).await?;
            out!(
                "batch {} cancelled: {n} row(s) that had not run will not run",
                batch.id
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `sandbox --write-samples`: writes the files (seeding the world) and lists them.
fn write_samples(
    sandbox: &Sandbox,
    dir: &std::path::Path,
    args: &SandboxArgs,
    settings: &Settings,
) -> anyhow::Result<()> {
    use crate::sandbox::samples::{SampleMix, write_samples_seeded};
    let benefit = settings
        .sandbox
        .benefits
        .first()
        .context("--write-samples needs a benefit in sandbox.benefits")?;
    let mix = SampleMix {
        invalid_percent: args.invalid_percent.unwrap_or(0.0),
        ..SampleMix::VALID
    };
    let rows = args.rows.unwrap_or(10_000);
    let files = write_samples_seeded(sandbox.state(), dir, rows, benefit, mix)?;
    for f in &files {
        println!(
            "sample: {} ({} rows) abha-bulk submit {} --kind {} --benefit {benefit}",
            f.kind.as_str(),
            f.rows,
            f.path.display(),
            f.kind.as_str()
        );
    }
    Ok(())
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Cancels `stop` on Ctrl-C or SIGTERM.
pub fn spawn_signal_handler(stop: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        stop.cancel();
    });
}

//! `abha-bulk serve` and `abha-bulk api-key create|list|revoke`.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::api::auth::SCOPES;
use crate::config::Settings;
use crate::jobs::benefit::BenefitName;
use crate::store::Store;

/// `api-key` subcommands.
#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create a key for one or more programmes; the key is printed once and never stored.
    Create(CreateKeyArgs),
    /// List keys (never the secrets).
    List,
    /// Revoke a key by id or prefix; requests with it get 401 at once.
    Revoke {
        /// The key's id or prefix (as `list` shows).
        key: String,
    },
}

/// `api-key create` options.
#[derive(Debug, Clone, Args)]
pub struct CreateKeyArgs {
    /// Benefit (programme) names the key may see and act on (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub benefit: Vec<String>,
    /// Scopes: submit, read, reveal (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "submit,read")]
    pub scope: Vec<String>,
    /// Days until the key expires (none: it lives until revoked).
    #[arg(long)]
    pub expires_days: Option<u32>,
    /// Who the key is for (shown by `list`).
    #[arg(long)]
    pub name: Option<String>,
    /// HTTPS URL told (signed, Standard Webhooks) when a batch uploaded with this key finishes
    /// or is cancelled.
    #[arg(long)]
    pub webhook_url: Option<String>,
}

/// An HTTPS URL to a public address; private, loopback and link-local destinations (and plain
/// HTTP) only to a host named in `webhooks.allow_private_hosts`. Checked again on the resolved
/// address at every delivery (`api::webhooks::destination`).
fn check_webhook_url(url: &str, settings: &Settings) -> anyhow::Result<()> {
    use crate::api::webhooks::destination::{Allowed, check_url};
    let u = reqwest::Url::parse(url).with_context(|| format!("--webhook-url {url:?}"))?;
    let allowed = Allowed::new(&settings.webhooks.allow_private_hosts);
    check_url(&u, &allowed).map_err(|why| {
        anyhow::anyhow!(
            "--webhook-url {url:?}: {why} (https:// to a public address; name a private host in webhooks.allow_private_hosts)"
        )
    })?;
    let host = u.host_str().unwrap_or("").to_ascii_lowercase();
    anyhow::ensure!(
        !(host == "localhost" || host.ends_with(".localhost"))
            || settings
                .webhooks
                .allow_private_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&host)),
        "--webhook-url {url:?}: localhost is private (name it in webhooks.allow_private_hosts)"
    );
    Ok(())
}

pub(super) async fn api_key(settings: &Settings, cmd: &ApiKeyCommand) -> anyhow::Result<ExitCode> {
    let store = Store::connect(settings).await?;
    match cmd {
        ApiKeyCommand::Create(a) => {
            let mut benefits = Vec::new();
            for b in &a.benefit {
                let b = BenefitName::parse_served(b, &settings.benefits.served)
                    .with_context(|| format!("--benefit {b:?}"))?;
                benefits.push(b.as_str().to_string());
            }
            for s in &a.scope {
                anyhow::ensure!(
                    SCOPES.contains(&s.as_str()),
                    "--scope {s:?}: expected {}",
                    SCOPES.join(", ")
                );
            }
            if let Some(url) = &a.webhook_url {
                check_webhook_url(url, settings)?;
            }
            let expires = a
                .expires_days
                .map(|d| chrono::Utc::now() + chrono::Duration::days(i64::from(d)));
            let (key, secret) = store
                .create_api_key(a.name.as_deref(), &benefits, &a.scope, expires)
                .await?;
            eprintln!(
                "API key {} for {} with scopes {} created{}. It is shown once; store it now:",
                key.id,
                benefits.join(", "),
                a.scope.join(", "),
                expires.map_or(String::new(), |e| format!(
                    ", expires {}",
                    e.format("%Y-%m-%d")
                ))
            );
            println!("{secret}");
            if let Some(url) = &a.webhook_url {
                let signing = store.set_webhook(key.id, url).await?;
                eprintln!("webhook signing secret (shown once; verify webhook-signature with it):");
                println!("{signing}");
            }
        }
        ApiKeyCommand::List => {
            println!(
                "{:<36}  {:<8}  {:<8}  {:<20}  {:<18}  name",
                "id", "prefix", "status", "benefits", "scopes"
            );
            for k in store.list_api_keys().await? {
                let status = if k.revoked_at.is_some() {
                    "revoked"
                } else if k.is_live() {
                    "live"
                } else {
                    "expired"
                };
                println!(
                    "{:<36}  {:<8}  {:<8}  {:<20}  {:<18}  {}",
                    k.id,
                    k.prefix,
                    status,
                    k.benefits.join(","),
                    k.scopes.join(","),
                    k.name.unwrap_or_default()
                );
            }
        }
        ApiKeyCommand::Revoke { key } => {
            if !store.revoke_api_key(key).await? {
                eprintln!("error: no live key with id or prefix {key:?}");
                return Ok(ExitCode::FAILURE);
            }
            println!("key {key} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn serve(settings: &Settings) -> anyhow::Result<ExitCode> {
    let store = Store::connect(settings).await?;
    let listen = settings.api.listen;
    let state = crate::api::ApiState {
        store,
        served: settings.benefits.served.clone(),
        max_upload: settings.api.max_upload_mib.saturating_mul(1 << 20),
        read_timeout: settings
            .api
            .read_timeout
            .max(std::time::Duration::from_secs(1)),
        spool: std::env::temp_dir(),
        guards: crate::api::Guards::new(&settings.api),
        priorities: settings.benefits.priorities.clone(),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    super::spawn_signal_handler(stop.clone());
    tokio::spawn(state.store.clone().watch_key_set(stop.clone()));
    crate::api::serve_metrics(settings.api.metrics_listen, stop.clone())
        .await
        .with_context(|| {
            format!(
                "cannot serve metrics on api.metrics_listen {}",
                settings.api.metrics_listen
            )
        })?;
    crate::api::serve(state, listen, stop)
        .await
        .with_context(|| format!("cannot serve on api.listen {}", settings.api.listen))?;
    Ok(ExitCode::SUCCESS)
}

//! `abha-bulk sandbox`: an embedded ABDM simulator.
//!
//! It serves the gateway session and every ABHA V3 endpoint abha-bulk calls, with ABDM's
//! paths, headers and bodies; really decrypts `loginId`/`mobile`/`aadhaarNumber` with its own
//! RSA key; checks `Authorization`, `REQUEST-ID`, `TIMESTAMP` (skew → ABDM-1016) and the
//! benefit header; keeps links, profiles and children in memory over a deterministic
//! [`Population`]; expires tokens; enforces a rate with ABDM-1022; and injects faults.
//! Tests start it in-process with [`Sandbox::start`]; `abha-bulk sandbox` runs it standalone.
//!
//! Admin endpoints (not ABDM's) under `/sandbox/`: `GET calls`, `GET timeline`,
//! `PUT faults`, `POST script`, `POST expire-tokens`, `PUT client-secret`, `POST rotate-key`,
//! `POST x-token`.

pub mod key;
pub mod population;
mod routes;
pub mod samples;
mod state;
pub mod timeline;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use key::Decryptor;
pub use population::{Person, Population};
pub use state::{CallLog, FaultScope, Faults, ScriptedResponse, State};
pub use timeline::Second;

use crate::abdm::crypto::CryptoError;
use crate::config::{AbdmSettings, ChildrenListMethod, SecretString};

/// Client id the sandbox accepts by default.
pub const DEFAULT_CLIENT_ID: &str = "abha-bulk-sandbox";
/// Client secret the sandbox accepts by default (public: it guards nothing real).
pub const DEFAULT_CLIENT_SECRET: &str = "sandbox-secret";

/// Client settings that reach a sandbox at `base` (`http://HOST:PORT`) with its default
/// credentials: what tests, the demo and the benchmark give [`crate::abdm::AbdmClient::new`].
pub fn settings_for_sandbox(base: &str) -> AbdmSettings {
    AbdmSettings {
        base_url: format!("{base}/abha/api"),
        session_url: format!("{base}/api/hiecm/gateway/v3/sessions"),
        client_id: DEFAULT_CLIENT_ID.into(),
        client_secret: SecretString::from(DEFAULT_CLIENT_SECRET),
        cm_id: "sbx".into(),
        benefit_header: "BENEFIT-NAME".into(),
        children_list_method: ChildrenListMethod::Get,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        token_refresh_fraction: 0.8,
        key_refresh_min_interval: Duration::ZERO,
        clock_offset_secs: 0,
    }
}

/// Where the sandbox's RSA key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// Generate a key of this many bits at start (ABDM: 4096).
    Generate(usize),
    /// A PKCS#8 PEM private key (tests use a pre-generated 2048-bit key: key generation is slow).
    Pem(String),
}

/// Everything the sandbox needs to start.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Listen address (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Encryption key.
    pub key: KeySource,
    /// Seeded beneficiaries.
    pub population: u64,
    /// Seed.
    pub seed: u64,
    /// Known benefit names.
    pub benefits: Vec<String>,
    /// Header that carries the benefit name.
    pub benefit_header: String,
    /// Accepted client id.
    pub client_id: String,
    /// Accepted client secret.
    pub client_secret: String,
    /// Faults, rate limit, token lifetime and latency (changeable at run time).
    pub faults: Faults,
    /// Most children per parent before ABDM-1157.
    pub max_children: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            key: KeySource::Generate(4096),
            population: 100_000,
            seed: 42,
            benefits: vec!["DEMO-BENEFIT".into(), "PMJAY".into(), "COVIN".into()],
            benefit_header: "BENEFIT-NAME".into(),
            client_id: DEFAULT_CLIENT_ID.into(),
            client_secret: DEFAULT_CLIENT_SECRET.into(),
            faults: Faults::default(),
            max_children: 5,
        }
    }
}

impl SandboxConfig {
    /// From the `[sandbox]` settings (and the benefit header name of `[abdm]`).
    pub fn from_settings(s: &crate::config::Settings) -> Result<Self, crate::config::ConfigError> {
        Ok(Self {
            listen: s.sandbox.listen,
            key: KeySource::Generate(s.sandbox.key_bits),
            population: s.sandbox.population,
            seed: s.sandbox.seed,
            benefits: s.sandbox.benefits.clone(),
            benefit_header: s.abdm.benefit_header.clone(),
            faults: Faults {
                rate_limit: s.sandbox.rate_limit,
                token_ttl_secs: s.sandbox.token_ttl_secs,
                error_5xx_percent: s.sandbox.fault_5xx_percent,
                timeout_percent: s.sandbox.fault_timeout_percent,
                drop_percent: s.sandbox.fault_drop_percent,
                latency_ms: s.sandbox.latency_ms,
                ..Faults::default()
            },
            ..Self::default()
        })
    }
}

/// Errors starting the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The key could not be generated or read.
    #[error("sandbox key")]
    Key(#[from] CryptoError),
    /// The address could not be bound.
    #[error("sandbox cannot listen on {addr}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// A running sandbox. Dropping it does not stop it; call [`Sandbox::shutdown`].
pub struct Sandbox {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Sandbox {
    /// Generates or loads the key, binds, and serves in a background task.
    pub async fn start(cfg: SandboxConfig) -> Result<Self, SandboxError> {
        let decryptor = match &cfg.key {
            KeySource::Generate(bits) => {
                let bits = *bits;
                tokio::task::spawn_blocking(move || Decryptor::generate(bits))
                    .await
                    .expect("key generation task")?
            }
            KeySource::Pem(pem) => Decryptor::from_pkcs8_pem(pem)?,
        };
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| SandboxError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SandboxError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let state = Arc::new(State::new(cfg, decryptor));
        let app = routes::router(state.clone());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        tracing::info!(%addr, "ABDM sandbox listening");
        Ok(Self {
            addr,
            state,
            shutdown,
            task,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` (the client's `base_url` is this plus `/abha/api`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The shared state (call log, faults, population) for tests.
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Stops serving and waits for the server task.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.task.abort();
        let _ = self.task.await;
    }

    /// Serves until the token is cancelled (for `abha-bulk sandbox`).
    pub async fn run_until(self, stop: tokio_util::sync::CancellationToken) {
        stop.cancelled().await;
        self.shutdown().await;
    }
}

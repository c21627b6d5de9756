//! The ABDM V3 client: what it is made of and how it is built.
//!
//! Its parts live beside it: `transport` sends one call (headers, gate, the retries of auth,
//! clock and key), `certificate` keeps ABDM's public key, [`trace`](super::trace) records the
//! attempts; each operation is a method in the file of its API area
//! ([`benefit`](super::benefit), [`profile`](super::profile), [`child`](super::child),
//! [`enrol`](super::enrol)), next to the types it sends and reads.

use reqwest::header::HeaderName;

use crate::abdm::certificate::KeyCache;
use crate::abdm::error::ClientError;
use crate::abdm::session::{SessionConfig, SessionManager};
use crate::abdm::trace::{CallTrace, Operation};
use crate::abdm::transport::{Body, Request};
use crate::config::{AbdmSettings, ExposeSecret};

/// The ABDM V3 client. Cheap to share (`Arc`); every method is safe to call concurrently.
pub struct AbdmClient {
    pub(super) http: reqwest::Client,
    pub(super) base_url: String,
    pub(super) benefit_header: HeaderName,
    /// Whether the children list is a POST (the spec says GET; some gateways want POST).
    pub(super) children_list_post: bool,
    pub(super) session: SessionManager,
    pub(super) keys: KeyCache,
    /// Added to the clock in `TIMESTAMP` headers (`abdm.clock_offset_secs`: zero but in tests
    /// of a skewed replica).
    pub(super) clock_offset: chrono::TimeDelta,
}

impl std::fmt::Debug for AbdmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AbdmClient")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl AbdmClient {
    /// Builds a client from settings. Fails when the benefit header name is invalid or the
    /// client secret is missing.
    pub fn new(settings: &AbdmSettings) -> Result<Self, crate::config::ConfigError> {
        if settings.client_secret.expose_secret().is_empty() {
            return Err(crate::config::ConfigError::Invalid {
                key: "abdm.client_secret".into(),
                reason: "is required: set ABHA_BULK__ABDM__CLIENT_SECRET or ABHA_BULK__ABDM__CLIENT_SECRET_FILE".into(),
            });
        }
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .pool_max_idle_per_host(256)
            .user_agent(concat!("abha-bulk/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| crate::config::ConfigError::Invalid {
                key: "abdm".into(),
                reason: format!("cannot build the HTTP client: {e}"),
            })?;
        let benefit_header =
            HeaderName::from_bytes(settings.benefit_header.as_bytes()).map_err(|_| {
                crate::config::ConfigError::Invalid {
                    key: "abdm.benefit_header".into(),
                    reason: "is not a valid header name".into(),
                }
            })?;
        let session = SessionManager::new(
            http.clone(),
            SessionConfig {
                url: settings.session_url.clone(),
                client_id: settings.client_id.clone(),
                client_secret: settings.client_secret.clone(),
                cm_id: settings.cm_id.clone(),
                refresh_fraction: settings.token_refresh_fraction,
                clock_offset: chrono::TimeDelta::seconds(settings.clock_offset_secs),
            },
        );
        Ok(Self {
            http,
            base_url: settings.base_url.trim_end_matches('/').to_string(),
            benefit_header,
            children_list_post: settings.children_list_method
                == crate::config::ChildrenListMethod::Post,
            session,
            keys: KeyCache::new(settings.key_refresh_min_interval),
            clock_offset: chrono::TimeDelta::seconds(settings.clock_offset_secs),
        })
    }

    /// The gateway client id (names the shared rate budget and circuit breaker; not a secret).
    pub fn client_id(&self) -> &str {
        self.session.client_id()
    }

    /// The session manager (readiness checks, metrics).
    pub fn session(&self) -> &SessionManager {
        &self.session
    }

    /// Fetches a session token now if none is valid (readiness check, start-up).
    pub async fn ensure_session(&self) -> Result<(), ClientError> {
        self.session
            .token(&mut CallTrace::default())
            .await
            .map(|_| ())
    }

    /// Fetches what every call needs, a session token and ABDM's public key, unless they are
    /// cached, through `trace`'s gate. A worker does this before it takes a job. Otherwise its
    /// first jobs each take a rate token and then queue behind the one job fetching the session
    /// and the key, whose own token waits behind theirs. Measured: every worker start left
    /// 52 tokens stale, a second of a 50/s rate.
    pub async fn warm_up(&self, trace: &mut CallTrace) -> Result<(), ClientError> {
        self.session.token(trace).await?;
        self.encryptor(trace).await.map(|_| ())
    }

    /// One probe while the circuit breaker is open: a fresh gateway session (proves the
    /// credentials), the public certificate, and one real read-only ABHA call
    /// ([`Self::probe_abha`]): sessions and the certificate can work while the ABHA endpoints
    /// answer 5xx, and a probe of those alone closed the breaker into the outage again.
    /// Changes nothing. An `Err` that is an answer about the probe's made-up ABHA number (a 4xx
    /// with an ABDM code) means ABDM works: the breaker decides with [`crate::breaker::signal`].
    pub async fn probe(&self, trace: &mut CallTrace) -> Result<(), ClientError> {
        self.session.force_refresh(trace).await?;
        let stale = self.keys.current().await;
        self.fetch_key(stale.as_ref(), trace).await?;
        self.probe_abha(trace).await
    }

    /// The read-only ABHA call of a probe: `GET /v3/profile/benefit/abha/{PROBE_ABHA}`, the
    /// benefit lookup of a well-formed ABHA number that belongs to nobody (ABDM answers 404
    /// ABDM-1114, the sandbox too). It carries every header a job's call does, `TIMESTAMP`
    /// included, so it also tells whether ABDM accepts this replica's clock.
    pub async fn probe_abha(&self, trace: &mut CallTrace) -> Result<(), ClientError> {
        self.execute::<serde_json::Value>(
            trace,
            Request {
                op: Operation::BenefitLookup,
                method: reqwest::Method::GET,
                path: format!("/v3/profile/benefit/abha/{PROBE_ABHA}"),
                benefit: None,
                x_token: None,
                body: Body::Empty,
            },
        )
        .await
        .map(|_| ())
    }
}

/// The ABHA number a probe looks up: well-formed (14 digits, `91`), belonging to nobody. Not an
/// identifier of a person, so it may appear in a URL and a log.
pub const PROBE_ABHA: &str = "91-0000-0000-0000";

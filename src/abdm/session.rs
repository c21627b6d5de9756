//! Gateway session token: cached, refreshed before expiry, one refresh in flight at a time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

use crate::abdm::error::{AbdmError, ClientError};
use crate::abdm::trace::{CallTrace, Operation};
use crate::abdm::transport::{stamp, standard_headers};
use crate::config::{ExposeSecret, SecretString};

/// The gateway's answer to `POST .../v3/sessions`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionAnswer {
    access_token: String,
    expires_in: u64,
}

/// A cached access token.
struct Cached {
    token: Arc<SecretString>,
    refresh_at: Instant,
}

/// Settings of the session manager.
#[derive(Clone)]
pub struct SessionConfig {
    /// `POST` URL of the gateway session.
    pub url: String,
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: SecretString,
    /// `X-CM-ID` header.
    pub cm_id: String,
    /// Fraction of `expiresIn` after which the token is refreshed.
    pub refresh_fraction: f64,
    /// Added to the clock in `TIMESTAMP` headers (`abdm.clock_offset_secs`; tests of skew).
    pub clock_offset: chrono::TimeDelta,
}

/// Holds the gateway access token for every task of the process.
///
/// `token()` is lock-free in the common case (a read lock); when the token is due, the first
/// task to notice takes the refresh lock and fetches a new one while the others wait for it, so
/// at most one session request is in flight.
pub struct SessionManager {
    http: reqwest::Client,
    cfg: SessionConfig,
    cached: RwLock<Option<Cached>>,
    refresh: Mutex<()>,
    refreshes: std::sync::atomic::AtomicU64,
    /// The last failed login and when: for a second after it, callers get the same error
    /// without a new request, so a refused secret costs one login per second, not one per row.
    failed: std::sync::Mutex<Option<(Instant, ClientError)>>,
}

/// How long a failed login is answered from memory.
const FAILURE_MEMORY: Duration = Duration::from_secs(1);

/// A copy of a login failure worth remembering (the variants a login can end with).
fn remembered(e: &ClientError) -> Option<ClientError> {
    Some(match e {
        ClientError::Abdm(a) => ClientError::Abdm(a.clone()),
        ClientError::Timeout => ClientError::Timeout,
        ClientError::Connect(m) => ClientError::Connect(m.clone()),
        ClientError::Transport(m) => ClientError::Transport(m.clone()),
        _ => return None,
    })
}

impl SessionManager {
    /// A manager that fetches its first token on first use.
    pub fn new(http: reqwest::Client, cfg: SessionConfig) -> Self {
        Self {
            http,
            cfg,
            cached: RwLock::new(None),
            refresh: Mutex::new(()),
            refreshes: Default::default(),
            failed: std::sync::Mutex::new(None),
        }
    }

    /// The client id logged in with.
    pub fn client_id(&self) -> &str {
        &self.cfg.client_id
    }

    /// How many session requests succeeded so far.
    pub fn refresh_count(&self) -> u64 {
        self.refreshes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A valid access token, fetching one when none is cached or the cached one is due.
    pub async fn token(&self, trace: &mut CallTrace) -> Result<Arc<SecretString>, ClientError> {
        if let Some(c) = self.cached.read().await.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        self.refresh(None, trace).await
    }

    /// Replaces `stale` (a token ABDM just rejected) unless another task already did.
    pub async fn invalidate(
        &self,
        stale: &Arc<SecretString>,
        trace: &mut CallTrace,
    ) -> Result<Arc<SecretString>, ClientError> {
        // Forget the rejected token at once: the calls that start while the refresh runs
        // (or after it failed) must not spend a request on a token ABDM already refused.
        {
            let mut cached = self.cached.write().await;
            if cached
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(&c.token, stale))
            {
                *cached = None;
            }
        }
        self.refresh(Some(stale), trace).await
    }

    /// Fetches a new token now whatever is cached (the circuit breaker's probe).
    pub async fn force_refresh(
        &self,
        trace: &mut CallTrace,
    ) -> Result<Arc<SecretString>, ClientError> {
        let _single_flight = self.refresh.lock().await;
        let token = self.fetch(trace).await.map_err(|e| match e {
            ClientError::NotSent(_) => e,
            e => ClientError::Session(Box::new(e)),
        })?;
        *self.failed.lock().expect("session failure") = None;
        Ok(token)
    }

    /// True when a token is cached and not yet due.
    pub async fn is_valid(&self) -> bool {
        self.cached
            .read()
            .await
            .as_ref()
            .is_some_and(|c| Instant::now() < c.refresh_at)
    }

    async fn refresh(
        &self,
        stale: Option<&Arc<SecretString>>,
        trace: &mut CallTrace,
    ) -> Result<Arc<SecretString>, ClientError> {
        let _single_flight = self.refresh.lock().await;
        if let Some(c) = self.cached.read().await.as_ref() {
            let rejected = stale.is_some_and(|s| Arc::ptr_eq(s, &c.token));
            if !rejected && Instant::now() < c.refresh_at {
                return Ok(c.token.clone());
            }
        }
        if let Some((at, e)) = self.failed.lock().expect("session failure").as_ref()
            && at.elapsed() < FAILURE_MEMORY
            && let Some(e) = remembered(e)
        {
            return Err(ClientError::Session(Box::new(e)));
        }
        let token = self.fetch(trace).await.map_err(|e| match e {
            // The gate stopped it: the gateway was not asked, so this says nothing about it.
            ClientError::NotSent(_) => e,
            e => {
                if let Some(copy) = remembered(&e) {
                    *self.failed.lock().expect("session failure") = Some((Instant::now(), copy));
                }
                ClientError::Session(Box::new(e))
            }
        })?;
        *self.failed.lock().expect("session failure") = None;
        Ok(token)
    }

    async fn fetch(&self, trace: &mut CallTrace) -> Result<Arc<SecretString>, ClientError> {
        trace.pass(Operation::Session).await?;
        let started = Instant::now();
        let (request_id, headers) = standard_headers();
        let body = serde_json::json!({
            "clientId": self.cfg.client_id,
            "clientSecret": self.cfg.client_secret.expose_secret(),
            "grantType": "client_credentials",
        });
        let request = self
            .http
            .post(&self.cfg.url)
            .headers(headers)
            .header("X-CM-ID", &self.cfg.cm_id)
            .json(&body);
        let sent = stamp(request, self.cfg.clock_offset).send().await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                let err = ClientError::from_reqwest(e);
                trace.record(Operation::Session, request_id, None, &Err(&err), started);
                return Err(err);
            }
        };
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(ClientError::from_reqwest)?;
        if !(200..300).contains(&status) {
            let err = ClientError::Abdm(AbdmError::parse(status, &bytes, None));
            trace.record(
                Operation::Session,
                request_id,
                Some(status),
                &Err(&err),
                started,
            );
            return Err(err);
        }
        let answer: SessionAnswer =
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
                status,
                reason: format!("session answer: {e}"),
            })?;
        trace.record(
            Operation::Session,
            request_id,
            Some(status),
            &Ok(()),
            started,
        );
        let lifetime = Duration::from_secs(answer.expires_in.max(1));
        let token = Arc::new(SecretString::from(answer.access_token));
        *self.cached.write().await = Some(Cached {
            token: token.clone(),
            refresh_at: started + lifetime.mul_f64(self.cfg.refresh_fraction),
        });
        self.refreshes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            expires_in_secs = answer.expires_in,
            "gateway session token refreshed"
        );
        Ok(token)
    }
}

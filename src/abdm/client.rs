//! The ABDM V3 client: headers, session, encryption, error parsing, one retry of auth.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::BoxFuture;
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::{Mutex, RwLock};
use uuid::Uuid;

use crate::abdm::benefit::{Beneficiary, BenefitProgrammes, BenefitRecord, LinkAction, LinkResult};
use crate::abdm::child::{ChildCreated, ChildDetails, ChildUpdate, Children};
use crate::abdm::crypto::Encryptor;
use crate::abdm::enrol::{DemoAuthCreated, DemoAuthRequest};
use crate::abdm::error::{AbdmError, CLOCK_SKEW_CODE, ClientError, Disposition};
use crate::abdm::profile::{FoundAccounts, Profile, ProfilePatch};
use crate::abdm::session::{SessionConfig, SessionManager};
use crate::config::{AbdmSettings, ChildrenListMethod, ExposeSecret, SecretString};
use crate::pii::{AbhaNumber, Mobile, XToken, format_date};

/// Every ABDM call the client makes; the value is the `endpoint` label of metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Gateway session.
    Session,
    /// Public certificate.
    Certificate,
    /// Benefit search by ABHA number or Aadhaar.
    BenefitSearch,
    /// Benefit lookup by ABHA number.
    BenefitLookup,
    /// Link to benefit.
    Link,
    /// De-link from benefit.
    Delink,
    /// Profile patch.
    ProfileUpdate,
    /// Child creation.
    ChildCreate,
    /// Children list.
    ChildList,
    /// Child update.
    ChildUpdate,
    /// Find ABHA by mobile.
    AbhaFind,
    /// ABHA creation by demographic authentication.
    DemoAuthCreate,
}

impl Operation {
    /// Stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Certificate => "certificate",
            Self::BenefitSearch => "benefit_search",
            Self::BenefitLookup => "benefit_lookup",
            Self::Link => "link",
            Self::Delink => "delink",
            Self::ProfileUpdate => "profile_update",
            Self::ChildCreate => "child_create",
            Self::ChildList => "child_list",
            Self::ChildUpdate => "child_update",
            Self::AbhaFind => "abha_find",
            Self::DemoAuthCreate => "demo_auth_create",
        }
    }

    /// True for calls that change something at ABDM (a link, a profile, a new ABHA): before
    /// one of these the worker checks that it still holds the job's lease and records that
    /// the side effect may have started.
    pub fn changes_state(self) -> bool {
        matches!(
            self,
            Self::Link
                | Self::Delink
                | Self::ProfileUpdate
                | Self::ChildCreate
                | Self::ChildUpdate
                | Self::DemoAuthCreate
        )
    }
}

/// Asked before every HTTP request the client sends on behalf of one job (session and
/// certificate requests included), so that every request to ABDM passes the rate limiter and
/// a worker that lost its job's lease makes no call. An `Err` stops the call unsent.
pub trait CallGate: Send + Sync {
    /// Waits until `op` may be sent.
    fn before_send(&self, op: Operation) -> BoxFuture<'_, Result<(), ClientError>>;
}

/// One HTTP attempt, for the attempts table and metrics. No identifiers.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// What was called.
    pub operation: Operation,
    /// The `REQUEST-ID` header sent.
    pub request_id: Uuid,
    /// HTTP status, when an answer came.
    pub http_status: Option<u16>,
    /// ABDM code of an error answer (`timeout`, `connect`, ... without one).
    pub code: Option<String>,
    /// Scrubbed message of an error answer.
    pub message: Option<String>,
    /// What the answer means.
    pub disposition: Disposition,
    /// Time from send to answer.
    pub duration: Duration,
}

/// Collects the HTTP attempts of one logical call (session refreshes and retries included),
/// and carries the gate every one of them passes first.
#[derive(Default)]
pub struct CallTrace {
    /// Attempts in order.
    pub attempts: Vec<AttemptRecord>,
    /// Asked before each request (none: requests go out at once).
    pub gate: Option<Arc<dyn CallGate>>,
}

impl std::fmt::Debug for CallTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallTrace")
            .field("attempts", &self.attempts)
            .field("gated", &self.gate.is_some())
            .finish()
    }
}

impl CallTrace {
    /// A trace whose requests pass `gate` first.
    pub fn gated(gate: Arc<dyn CallGate>) -> Self {
        Self {
            attempts: Vec::new(),
            gate: Some(gate),
        }
    }

    /// Passes the gate for `op` (at once when there is none).
    pub(crate) async fn pass(&self, op: Operation) -> Result<(), ClientError> {
        match &self.gate {
            Some(g) => g.before_send(op).await,
            None => Ok(()),
        }
    }

    pub(crate) fn record(
        &mut self,
        operation: Operation,
        request_id: Uuid,
        http_status: Option<u16>,
        result: &Result<(), &ClientError>,
        started: Instant,
    ) {
        let (code, message, disposition) = match result {
            Ok(()) => (None, None, Disposition::Success),
            Err(e) => (Some(e.code()), Some(e.stored_message()), e.disposition()),
        };
        let duration = started.elapsed();
        crate::telemetry::metrics::observe_abdm_request(
            operation.as_str(),
            http_status,
            code.as_deref(),
            duration,
        );
        tracing::debug!(
            endpoint = operation.as_str(),
            request_id = %request_id,
            status = http_status,
            code = code.as_deref(),
            duration_ms = duration.as_millis() as u64,
            "ABDM call"
        );
        self.attempts.push(AttemptRecord {
            operation,
            request_id,
            http_status,
            code,
            message,
            disposition,
            duration,
        });
    }

    /// The last attempt.
    pub fn last(&self) -> Option<&AttemptRecord> {
        self.attempts.last()
    }
}

/// A fresh `REQUEST-ID` and the `TIMESTAMP` (UTC, milliseconds, `Z`).
pub(crate) fn standard_headers() -> (Uuid, HeaderMap) {
    let id = Uuid::new_v4();
    let mut h = HeaderMap::new();
    h.insert(
        "REQUEST-ID",
        HeaderValue::from_str(&id.to_string()).expect("uuid is a valid header"),
    );
    h.insert(
        "TIMESTAMP",
        HeaderValue::from_str(&timestamp_now()).expect("timestamp is a valid header"),
    );
    (id, h)
}

/// `2024-09-19T10:15:30.123Z`.
pub fn timestamp_now() -> String {
    Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// The certificate answer.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CertificateAnswer {
    public_key: String,
    #[serde(default = "default_algorithm")]
    encryption_algorithm: String,
}

fn default_algorithm() -> String {
    crate::abdm::crypto::OAEP_SHA1.to_string()
}

/// How a request body is made; encrypted bodies are rebuilt if the key is fetched again.
enum Body<'a> {
    Empty,
    Plain(Value),
    Encrypted(&'a (dyn Fn(&Encryptor) -> Result<Value, crate::abdm::crypto::CryptoError> + Sync)),
}

struct Request<'a> {
    op: Operation,
    method: Method,
    path: String,
    benefit: Option<&'a str>,
    x_token: Option<&'a XToken>,
    body: Body<'a>,
}

struct CachedKey {
    encryptor: Arc<Encryptor>,
    fetched: Instant,
}

/// The ABDM V3 client. Cheap to share (`Arc`); every method is safe to call concurrently.
pub struct AbdmClient {
    http: reqwest::Client,
    base_url: String,
    benefit_header: HeaderName,
    children_list_post: bool,
    key_refresh_min_interval: Duration,
    session: SessionManager,
    key: RwLock<Option<CachedKey>>,
    key_fetch: Mutex<()>,
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
            .connect_timeout(settings.connect_timeout())
            .timeout(settings.request_timeout())
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
            },
        );
        Ok(Self {
            http,
            base_url: settings.base_url.trim_end_matches('/').to_string(),
            benefit_header,
            children_list_post: settings.children_list_method == ChildrenListMethod::Post,
            key_refresh_min_interval: Duration::from_secs(settings.key_refresh_min_interval_secs),
            session,
            key: RwLock::new(None),
            key_fetch: Mutex::new(()),
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

    /// One probe while the circuit breaker is open: a fresh gateway session (proves the
    /// credentials) and the public certificate (proves the ABHA API answers). Changes nothing.
    pub async fn probe(&self, trace: &mut CallTrace) -> Result<(), ClientError> {
        self.session.force_refresh(trace).await?;
        let stale = self.key.read().await.as_ref().map(|k| k.encryptor.clone());
        self.fetch_key(stale.as_ref(), trace).await.map(|_| ())
    }

    /// The cached public key, fetched on first use.
    pub async fn encryptor(&self, trace: &mut CallTrace) -> Result<Arc<Encryptor>, ClientError> {
        if let Some(k) = self.key.read().await.as_ref() {
            return Ok(k.encryptor.clone());
        }
        self.fetch_key(None, trace).await
    }

    async fn fetch_key(
        &self,
        stale: Option<&Arc<Encryptor>>,
        trace: &mut CallTrace,
    ) -> Result<Arc<Encryptor>, ClientError> {
        let _single = self.key_fetch.lock().await;
        if let Some(k) = self.key.read().await.as_ref()
            && !stale.is_some_and(|s| Arc::ptr_eq(s, &k.encryptor))
        {
            return Ok(k.encryptor.clone());
        }
        // Boxed: execute → encryptor → fetch_key → execute is recursive (never for Empty bodies).
        let answer: CertificateAnswer = Box::pin(self.execute(
            trace,
            Request {
                op: Operation::Certificate,
                method: Method::GET,
                path: "/v3/profile/public/certificate".into(),
                benefit: None,
                x_token: None,
                body: Body::Empty,
            },
        ))
        .await?;
        let encryptor = Arc::new(Encryptor::from_certificate(
            &answer.public_key,
            &answer.encryption_algorithm,
        )?);
        tracing::info!(
            fingerprint = encryptor.fingerprint(),
            "ABDM public key fetched"
        );
        *self.key.write().await = Some(CachedKey {
            encryptor: encryptor.clone(),
            fetched: Instant::now(),
        });
        Ok(encryptor)
    }

    async fn key_may_be_refetched(&self) -> bool {
        self.key
            .read()
            .await
            .as_ref()
            .is_none_or(|k| k.fetched.elapsed() >= self.key_refresh_min_interval)
    }

    /// Sends one logical call: attempts are recorded in `trace`. A rejected session token is
    /// refreshed and the call retried once; a rejected TIMESTAMP is retried once with a fresh
    /// one; rejected ciphertext makes the key be fetched again (at most once per
    /// `key_refresh_min_interval_secs`) and the call retried once.
    async fn execute<T: DeserializeOwned>(
        &self,
        trace: &mut CallTrace,
        req: Request<'_>,
    ) -> Result<T, ClientError> {
        let (mut auth_retried, mut clock_retried, mut key_retried) = (false, false, false);
        loop {
            let token = self.session.token(trace).await?;
            let (encryptor, body) = match &req.body {
                Body::Empty => (None, None),
                Body::Plain(v) => (None, Some(v.clone())),
                Body::Encrypted(build) => {
                    let enc = self.encryptor(trace).await?;
                    let body = build(&enc)?;
                    (Some(enc), Some(body))
                }
            };
            let url = format!("{}{}", self.base_url, req.path);
            let (request_id, mut headers) = standard_headers();
            headers.insert(
                reqwest::header::AUTHORIZATION,
                bearer(token.expose_secret()).map_err(|_| ClientError::Decode {
                    status: 0,
                    reason: "session token is not a valid header value".into(),
                })?,
            );
            if let Some(benefit) = req.benefit {
                headers.insert(
                    self.benefit_header.clone(),
                    HeaderValue::from_str(benefit).map_err(|_| ClientError::Decode {
                        status: 0,
                        reason: "benefit name is not a valid header value".into(),
                    })?,
                );
            }
            if let Some(x) = req.x_token {
                headers.insert(
                    "X-token",
                    bearer(x.expose()).map_err(|_| ClientError::Decode {
                        status: 0,
                        reason: "X-token is not a valid header value".into(),
                    })?,
                );
            }
            let mut builder = self.http.request(req.method.clone(), &url).headers(headers);
            if let Some(b) = &body {
                builder = builder.json(b);
            }
            trace.pass(req.op).await?;
            let started = Instant::now();
            let result = self.send(builder).await;
            let err = match result {
                Ok((status, bytes)) => match serde_json::from_slice::<T>(&bytes) {
                    Ok(v) => {
                        trace.record(req.op, request_id, Some(status), &Ok(()), started);
                        return Ok(v);
                    }
                    Err(e) => {
                        let err = ClientError::Decode {
                            status,
                            reason: crate::pii::scrub_digits(&e.to_string()),
                        };
                        trace.record(req.op, request_id, Some(status), &Err(&err), started);
                        return Err(err);
                    }
                },
                Err(err) => err,
            };
            let status = err.abdm().map(|e| e.status);
            trace.record(req.op, request_id, status, &Err(&err), started);
            match &err {
                ClientError::Abdm(e) if e.disposition() == Disposition::Auth && !auth_retried => {
                    auth_retried = true;
                    crate::telemetry::metrics::session_refresh_after_401();
                    self.session.invalidate(&token, trace).await?;
                }
                ClientError::Abdm(e)
                    if e.code.as_deref() == Some(CLOCK_SKEW_CODE) && !clock_retried =>
                {
                    clock_retried = true;
                    tracing::warn!("ABDM rejected our TIMESTAMP (ABDM-1016); retrying once");
                }
                ClientError::Abdm(e)
                    if e.is_bad_ciphertext()
                        && !key_retried
                        && encryptor.is_some()
                        && self.key_may_be_refetched().await =>
                {
                    key_retried = true;
                    self.fetch_key(encryptor.as_ref(), trace).await?;
                }
                _ => return Err(err),
            }
        }
    }

    /// Sends and reads the answer. `Ok` for 2xx (status, body); ABDM errors parsed.
    async fn send(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> Result<(u16, bytes::Bytes), ClientError> {
        let response = builder.send().await.map_err(ClientError::from_reqwest)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let bytes = response.bytes().await.map_err(ClientError::from_reqwest)?;
        if (200..300).contains(&status) {
            Ok((status, bytes))
        } else {
            Err(ClientError::Abdm(AbdmError::parse(
                status,
                &bytes,
                retry_after,
            )))
        }
    }

    /// `POST /v3/profile/benefit/search`: benefit records of an ABHA or Aadhaar holder.
    pub async fn benefit_search(
        &self,
        trace: &mut CallTrace,
        benefit: &str,
        who: &Beneficiary,
    ) -> Result<Vec<BenefitRecord>, ClientError> {
        let build = |e: &Encryptor| {
            Ok(json!({
                "scope": ["search"],
                "loginHint": who.search_hint(),
                "loginId": e.encrypt(who.login_id())?,
            }))
        };
        let answer: OneOrMany<BenefitRecord> = self
            .execute(
                trace,
                Request {
                    op: Operation::BenefitSearch,
                    method: Method::POST,
                    path: "/v3/profile/benefit/search".into(),
                    benefit: Some(benefit),
                    x_token: None,
                    body: Body::Encrypted(&build),
                },
            )
            .await?;
        Ok(answer.into_vec())
    }

    /// `GET /v3/profile/benefit/abha/{abhaNumber}`: programmes an ABHA is linked to.
    pub async fn benefit_lookup(
        &self,
        trace: &mut CallTrace,
        benefit: &str,
        abha: &AbhaNumber,
    ) -> Result<BenefitProgrammes, ClientError> {
        self.execute(
            trace,
            Request {
                op: Operation::BenefitLookup,
                method: Method::GET,
                path: format!("/v3/profile/benefit/abha/{}", abha.expose()),
                benefit: Some(benefit),
                x_token: None,
                body: Body::Empty,
            },
        )
        .await
    }

    /// `POST /v3/profile/benefit/linkAndDelink`. ABDM-1140 (already linked) and ABDM-1138
    /// (already de-linked) come back as `Err` with [`Disposition::IdempotentSuccess`].
    pub async fn link(
        &self,
        trace: &mut CallTrace,
        benefit: &str,
        action: LinkAction,
        who: &Beneficiary,
    ) -> Result<LinkResult, ClientError> {
        let build = |e: &Encryptor| {
            Ok(json!({
                "scope": [action.scope()],
                "loginHint": who.link_hint(),
                "loginId": e.encrypt(who.login_id())?,
            }))
        };
        self.execute(
            trace,
            Request {
                op: match action {
                    LinkAction::Link => Operation::Link,
                    LinkAction::Delink => Operation::Delink,
                },
                method: Method::POST,
                path: "/v3/profile/benefit/linkAndDelink".into(),
                benefit: Some(benefit),
                x_token: None,
                body: Body::Encrypted(&build),
            },
        )
        .await
    }

    /// `PATCH /v3/profile/account`: mobile (encrypted), account status, photo.
    pub async fn update_profile(
        &self,
        trace: &mut CallTrace,
        benefit: &str,
        patch: &ProfilePatch,
    ) -> Result<Profile, ClientError> {
        let build = |e: &Encryptor| {
            let mut body = serde_json::Map::new();
            body.insert("abhaNumber".into(), json!(patch.abha_number.expose()));
            if let Some(m) = &patch.mobile {
                body.insert("mobile".into(), json!(e.encrypt(m.expose())?));
            }
            if let Some(s) = patch.account_status {
                body.insert("accountStatus".into(), json!(s.as_str()));
            }
            if let Some(p) = &patch.profile_photo {
                body.insert("profilePhoto".into(), json!(p.expose()));
            }
            Ok(Value::Object(body))
        };
        self.execute(
            trace,
            Request {
                op: Operation::ProfileUpdate,
                method: Method::PATCH,
                path: "/v3/profile/account".into(),
                benefit: Some(benefit),
                x_token: None,
                body: Body::Encrypted(&build),
            },
        )
        .await
    }

    /// `POST /v3/enrollment/enrol/byAadhaar` with `authMethods: ["child"]` and the parent's
    /// X-token.
    pub async fn create_child(
        &self,
        trace: &mut CallTrace,
        benefit: &str,
        parent: &XToken,
        child: &ChildDetails,
    ) -> Result<ChildCreated, ClientError> {
        let body = json!({
            "authData": { "authMethods": ["child"], "child": child.to_json() },
            "consent": { "code": "abha-enrollment", "version": "1.4" },
        });
        self.execute(
            trace,
            Request {
                op: Operation::ChildCreate,
                method: Method::POST,
                path: "/v3/enrollment/enrol/byAadhaar".into(),
                benefit: Some(benefit),
                x_token: Some(parent),
                body: Body::Plain(body),
            },
        )
        .await
    }

    /// `/v3/enrollment/profile/children` (GET or POST by configuration) with the parent's
    /// X-token.
    pub async fn list_children(
        &self,
        trace: &mut CallTrace,
        benefit: &str,
        parent: &XToken,
    ) -> Result<Children, ClientError> {
        self.execute(
            trace,
            Request {
                op: Operation::ChildList,
                method: if self.children_list_post {
                    Method::POST
                } else {
                    Method::GET
                },
                path: "/v3/enrollment/profile/children".into(),
                benefit: Some(benefit),
                x_token: Some(parent),
                body: Body::Empty,
            },
        )
        .await
    }

    /// `PATCH /v3/profile/account` for a child: name, date of birth, gender.
    pub async fn update_child(
        &self,
        trace: &mut CallTrace,
        benefit: &str,
        update: &ChildUpdate,
    ) -> Result<Profile, ClientError> {
        let body = json!({
            "abhaNumber": update.abha_number.expose(),
            "name": update.name.expose(),
            "dob": format_date(update.birth_date),
            "gender": update.gender.as_str(),
        });
        self.execute(
            trace,
            Request {
                op: Operation::ChildUpdate,
                method: Method::PATCH,
                path: "/v3/profile/account".into(),
                benefit: Some(benefit),
                x_token: None,
                body: Body::Plain(body),
            },
        )
        .await
    }

    /// `POST /v3/profile/account/abha/search`: ABHA accounts on a mobile.
    pub async fn find_by_mobile(
        &self,
        trace: &mut CallTrace,
        benefit: &str,
        mobile: &Mobile,
    ) -> Result<Vec<FoundAccounts>, ClientError> {
        let build = |e: &Encryptor| {
            Ok(json!({
                "scope": ["search-abha"],
                "mobile": e.encrypt(mobile.expose())?,
            }))
        };
        let answer: OneOrMany<FoundAccounts> = self
            .execute(
                trace,
                Request {
                    op: Operation::AbhaFind,
                    method: Method::POST,
                    path: "/v3/profile/account/abha/search".into(),
                    benefit: Some(benefit),
                    x_token: None,
                    body: Body::Encrypted(&build),
                },
            )
            .await?;
        Ok(answer.into_vec())
    }

    /// `POST /v3/enrollment/enrol/byAadhaar` with `authMethods: ["demo_auth"]`: creates an
    /// ABHA, or returns the existing one with `is_new: false`.
    pub async fn create_by_demo_auth(
        &self,
        trace: &mut CallTrace,
        benefit: &str,
        req: &DemoAuthRequest,
    ) -> Result<DemoAuthCreated, ClientError> {
        let build = |e: &Encryptor| {
            let mut demo = serde_json::Map::new();
            demo.insert(
                "aadhaarNumber".into(),
                json!(e.encrypt(req.aadhaar.expose())?),
            );
            demo.insert("name".into(), json!(req.name.expose()));
            demo.insert("dateOfBirth".into(), json!(format_date(req.birth_date)));
            demo.insert("gender".into(), json!(req.gender.as_str()));
            demo.insert("stateCode".into(), json!(req.state_code));
            demo.insert("districtCode".into(), json!(req.district_code));
            if let Some(m) = &req.mobile {
                demo.insert("mobile".into(), json!(e.encrypt(m.expose())?));
            }
            if let Some(p) = &req.pin_code {
                demo.insert("pinCode".into(), json!(p));
            }
            Ok(json!({
                "authData": { "authMethods": ["demo_auth"], "demo_auth": Value::Object(demo) },
                "consent": { "code": "abha-enrollment", "version": "1.4" },
            }))
        };
        let answer: Value = self
            .execute(
                trace,
                Request {
                    op: Operation::DemoAuthCreate,
                    method: Method::POST,
                    path: "/v3/enrollment/enrol/byAadhaar".into(),
                    benefit: Some(benefit),
                    x_token: None,
                    body: Body::Encrypted(&build),
                },
            )
            .await?;
        DemoAuthCreated::from_json(&answer).ok_or(ClientError::Decode {
            status: 200,
            reason: "no healthIdNumber/ABHANumber in the enrolment answer".into(),
        })
    }
}

fn bearer(token: &str) -> Result<HeaderValue, reqwest::header::InvalidHeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}"))?;
    v.set_sensitive(true);
    Ok(v)
}

/// `Retry-After` in seconds (HTTP dates are not used by ABDM).
fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// ABDM answers some lists as an array and, in some versions, as a single object.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    Many(Vec<T>),
    One(T),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            Self::Many(v) => v,
            Self::One(t) => vec![t],
        }
    }
}

/// Test helper: a settings block pointing at `base` (the sandbox) with its default credentials.
pub fn settings_for_sandbox(base: &str) -> AbdmSettings {
    AbdmSettings {
        base_url: format!("{base}/abha/api"),
        session_url: format!("{base}/api/hiecm/gateway/v3/sessions"),
        client_id: crate::sandbox::DEFAULT_CLIENT_ID.into(),
        client_secret: SecretString::from(crate::sandbox::DEFAULT_CLIENT_SECRET),
        cm_id: "sbx".into(),
        benefit_header: "BENEFIT-NAME".into(),
        children_list_method: ChildrenListMethod::Get,
        connect_timeout_ms: 2000,
        request_timeout_ms: 5000,
        token_refresh_fraction: 0.8,
        key_refresh_min_interval_secs: 0,
    }
}

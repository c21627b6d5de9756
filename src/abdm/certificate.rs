//! ABDM's public key: fetched on first use, shared by every call, fetched again when ABDM
//! refuses what it encrypted (a rotated key), but not more often than configured, so that a
//! flood of refused ciphertext cannot turn into a flood of certificate requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

use crate::abdm::client::AbdmClient;
use crate::abdm::crypto::{Encryptor, OAEP_SHA1};
use crate::abdm::error::ClientError;
use crate::abdm::trace::{CallTrace, Operation};
use crate::abdm::transport::{Body, Request};

/// The certificate answer.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CertificateAnswer {
    public_key: String,
    #[serde(default = "default_algorithm")]
    encryption_algorithm: String,
}

fn default_algorithm() -> String {
    OAEP_SHA1.to_string()
}

struct CachedKey {
    encryptor: Arc<Encryptor>,
    fetched: Instant,
}

/// The cached key, and the lock that keeps its fetches to one at a time.
pub(super) struct KeyCache {
    key: RwLock<Option<CachedKey>>,
    fetch: Mutex<()>,
    min_interval: Duration,
}

impl KeyCache {
    /// Empty: the first call that needs the key fetches it.
    pub(super) fn new(min_interval: Duration) -> Self {
        Self {
            key: RwLock::new(None),
            fetch: Mutex::new(()),
            min_interval,
        }
    }

    /// The key in use, if one was fetched.
    pub(super) async fn current(&self) -> Option<Arc<Encryptor>> {
        self.key.read().await.as_ref().map(|k| k.encryptor.clone())
    }

    /// True when no key is cached or the cached one is old enough to be fetched again.
    pub(super) async fn may_be_refetched(&self) -> bool {
        self.key
            .read()
            .await
            .as_ref()
            .is_none_or(|k| k.fetched.elapsed() >= self.min_interval)
    }
}

impl AbdmClient {
    /// The cached public key, fetched on first use.
    pub async fn encryptor(&self, trace: &mut CallTrace) -> Result<Arc<Encryptor>, ClientError> {
        if let Some(k) = self.keys.current().await {
            return Ok(k);
        }
        self.fetch_key(None, trace).await
    }

    /// Fetches the key unless another task replaced `stale` (the key ABDM refused, or none)
    /// while this one waited for the fetch lock.
    pub(super) async fn fetch_key(
        &self,
        stale: Option<&Arc<Encryptor>>,
        trace: &mut CallTrace,
    ) -> Result<Arc<Encryptor>, ClientError> {
        let _single = self.keys.fetch.lock().await;
        if let Some(k) = self.keys.key.read().await.as_ref()
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
        *self.keys.key.write().await = Some(CachedKey {
            encryptor: encryptor.clone(),
            fetched: Instant::now(),
        });
        Ok(encryptor)
    }
}

//! The sandbox's admin endpoints, read as JSON (not through the library's types, so the
//! driver depends on the documented HTTP contract only).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Result, http};

/// Counters of `GET /sandbox/calls` the driver uses.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Calls {
    /// Requests that reached a handler, per operation.
    pub requests: BTreeMap<String, u64>,
    /// Requests received, by class (`session`, `certificate`, `api`).
    pub received: BTreeMap<String, u64>,
    /// Side effects done more than once on the same subject, per operation.
    pub duplicate_side_effects: BTreeMap<String, u64>,
    /// Side effects per operation.
    pub side_effects: BTreeMap<String, u64>,
    /// Answers to ABHA API requests by code.
    pub answers: BTreeMap<String, u64>,
    /// Answers to session requests by code.
    pub session_answers: BTreeMap<String, u64>,
    /// Faults injected by kind.
    pub faults: BTreeMap<String, u64>,
}

/// One second of `GET /sandbox/timeline`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Second {
    /// Unix second.
    pub t: u64,
    /// Requests received by class.
    pub received: BTreeMap<String, u64>,
    /// Answers by code.
    pub answers: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct Timeline {
    seconds: Vec<Second>,
}

/// A client of one sandbox's admin endpoints.
#[derive(Clone)]
pub struct Admin {
    http: reqwest::Client,
    base: String,
}

impl Admin {
    /// For the sandbox at `http://127.0.0.1:<port>`.
    pub fn new(port: u16) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .no_proxy()
                .build()
                .expect("HTTP client"),
            base: format!("http://127.0.0.1:{port}/sandbox"),
        }
    }

    async fn get(&self, path: &str) -> Result<reqwest::Response> {
        self.http
            .get(format!("{}/{path}", self.base))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(http(format!("GET {path}")))
    }

    async fn put(&self, path: &str, body: &Value) -> Result<()> {
        self.http
            .put(format!("{}/{path}", self.base))
            .json(body)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map(drop)
            .map_err(http(format!("PUT {path}")))
    }

    /// True when the admin endpoints answer.
    pub async fn up(&self) -> bool {
        self.get("faults").await.is_ok()
    }

    /// The call log.
    pub async fn calls(&self) -> Result<Calls> {
        self.get("calls")
            .await?
            .json()
            .await
            .map_err(http("GET calls"))
    }

    /// Seconds at or after `since`.
    pub async fn timeline(&self, since: u64) -> Result<Vec<Second>> {
        let t: Timeline = self
            .get(&format!("timeline?since={since}"))
            .await?
            .json()
            .await
            .map_err(http("GET timeline"))?;
        Ok(t.seconds)
    }

    /// The current rate limit (requests per second).
    pub async fn rate_limit(&self) -> Result<f64> {
        let f: Value = self
            .get("faults")
            .await?
            .json()
            .await
            .map_err(http("GET faults"))?;
        Ok(f.get("rate_limit").and_then(Value::as_f64).unwrap_or(0.0))
    }

    /// The faults and limits as they are now (`GET /sandbox/faults`, whole).
    pub async fn faults(&self) -> Result<Value> {
        self.get("faults")
            .await?
            .json()
            .await
            .map_err(http("GET faults"))
    }

    /// Replaces the faults and limits (give them whole: what is left out is reset).
    pub async fn put_faults(&self, faults: &Value) -> Result<()> {
        self.put("faults", faults).await
    }

    /// Accepts only `secret` from now on; every issued token is revoked.
    pub async fn set_client_secret(&self, secret: &str) -> Result<()> {
        self.put(
            "client-secret",
            &serde_json::json!({ "clientSecret": secret }),
        )
        .await
    }
}

//! The sandbox's in-memory world: tokens, links, profiles, children, faults and call log.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use super::SandboxConfig;
use super::key::Decryptor;
use super::population::Population;
use super::timeline::{Event, Second, Timeline};

/// Faults and limits, changeable at run time with `PUT /sandbox/faults`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Requests per second accepted before ABDM-1022 (0 = unlimited).
    pub rate_limit: f64,
    /// Access token lifetime, seconds.
    pub token_ttl_secs: u64,
    /// Percentage answered 500 before any side effect.
    pub error_5xx_percent: f64,
    /// Percentage whose answer is held back `timeout_hold_ms` after the side effect.
    pub timeout_percent: f64,
    /// Percentage whose connection drops after the side effect.
    pub drop_percent: f64,
    /// Latency added to every answer, milliseconds.
    pub latency_ms: u64,
    /// How long a "timeout" answer is held, milliseconds.
    pub timeout_hold_ms: u64,
    /// `Retry-After` seconds sent with ABDM-1022 (none when 0).
    pub retry_after_secs: u64,
    /// Which requests `error_5xx_percent` hits: `all` (every ABHA API request, the certificate
    /// included) or `abha` (the ABHA endpoints only: the certificate and gateway sessions still
    /// answer, the partial outage that a session-and-certificate probe could not see).
    pub error_5xx_scope: FaultScope,
    /// How far a `TIMESTAMP` may be from the sandbox's clock before ABDM-1016, seconds.
    pub timestamp_tolerance_secs: u64,
}

/// The requests a 5xx fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultScope {
    /// Every ABHA API request (the certificate included).
    #[default]
    All,
    /// The ABHA endpoints only (not the certificate; sessions are never faulted).
    Abha,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            rate_limit: 0.0,
            token_ttl_secs: 1200,
            error_5xx_percent: 0.0,
            timeout_percent: 0.0,
            drop_percent: 0.0,
            latency_ms: 0,
            timeout_hold_ms: 120_000,
            retry_after_secs: 1,
            error_5xx_scope: FaultScope::All,
            timestamp_tolerance_secs: 300,
        }
    }
}

/// A canned answer for the next matching requests (`POST /sandbox/script`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScriptedResponse {
    /// Only requests whose path contains this (empty = every ABHA API request).
    #[serde(default)]
    pub path_contains: String,
    /// HTTP status.
    pub status: u16,
    /// Body, sent verbatim.
    #[serde(default)]
    pub body: String,
    /// `Retry-After` header value, if any.
    #[serde(default)]
    pub retry_after: Option<String>,
    /// How many requests get it.
    #[serde(default = "one")]
    pub times: u32,
}

fn one() -> u32 {
    1
}

/// Link state of one ABHA for one benefit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkState {
    Linked,
    Delinked,
}

/// A child ABHA.
#[derive(Debug, Clone)]
pub(crate) struct ChildRecord {
    pub abha: crate::pii::AbhaNumber,
    pub name: String,
    pub dob: chrono::NaiveDate,
    pub gender: String,
    pub updates: u32,
}

/// Profile changes made through the API.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProfileChange {
    pub mobile: Option<String>,
    pub status: Option<String>,
    /// SHA-256 of the last photo set.
    pub photo: Option<Vec<u8>>,
}

#[derive(Default)]
pub(crate) struct World {
    pub tokens: HashMap<String, Instant>,
    /// (benefit, ABHA digits) → state.
    pub links: HashMap<(String, String), LinkState>,
    /// ABHA digits → change.
    pub profiles: HashMap<String, ProfileChange>,
    /// parent ABHA digits → children.
    pub children: HashMap<String, Vec<ChildRecord>>,
    /// child ABHA digits → parent ABHA digits.
    pub child_parent: HashMap<String, String>,
    /// Aadhaar → ABHA digits created by demographic auth.
    pub demo_created: HashMap<String, String>,
    pub next_new_index: u64,
}

impl World {
    /// Enrols a child under `parent_digits` with a fresh ABHA number.
    pub(crate) fn add_child(
        &mut self,
        population: &Population,
        parent_digits: &str,
        name: &str,
        dob: chrono::NaiveDate,
        gender: &str,
    ) -> crate::pii::AbhaNumber {
        let index = self.next_new_index;
        self.next_new_index += 1;
        let abha = population.abha(index);
        self.children
            .entry(parent_digits.to_string())
            .or_default()
            .push(ChildRecord {
                abha: abha.clone(),
                name: name.to_string(),
                dob,
                gender: gender.to_string(),
                updates: 0,
            });
        self.child_parent
            .insert(abha.digits(), parent_digits.to_string());
        abha
    }
}

/// What the sandbox was asked and did; read by tests and `GET /sandbox/calls`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallLog {
    /// Requests per operation (every request that reached a handler).
    pub requests: BTreeMap<String, u64>,
    /// Side effects per operation (a link made, a child created, ...).
    pub side_effects: BTreeMap<String, u64>,
    /// Side effects done more than once on the same subject, per operation.
    pub duplicate_side_effects: BTreeMap<String, u64>,
    /// Answers to ABHA API requests by ABDM code (`ABDM-1022`, ...) or `ok`.
    pub answers: BTreeMap<String, u64>,
    /// Answers to gateway session requests: `ok` or `900901` (wrong client id or secret).
    pub session_answers: BTreeMap<String, u64>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Requests received, by class: `session`, `certificate` and `api` (every other ABHA API
    /// request, also those refused before a handler: throttled, unauthorised, 5xx faults).
    /// `requests` counts only what reached a handler.
    pub received: BTreeMap<String, u64>,
}

/// Shared sandbox state.
pub struct State {
    pub(crate) cfg: SandboxConfig,
    pub(crate) population: Population,
    pub(crate) key: Mutex<Arc<Decryptor>>,
    pub(crate) world: Mutex<World>,
    faults: Mutex<Faults>,
    limiter: Mutex<Option<Arc<DefaultDirectRateLimiter>>>,
    script: Mutex<VecDeque<ScriptedResponse>>,
    log: Mutex<CallLog>,
    /// (operation, subject) → times the side effect was done.
    effects: Mutex<HashMap<(String, String), u64>>,
    /// Per-second traffic (`GET /sandbox/timeline`).
    timeline: Mutex<Timeline>,
    /// The client secret sessions are accepted with (changeable to play a rotated secret).
    client_secret: Mutex<String>,
}

impl State {
    pub(crate) fn new(cfg: SandboxConfig, key: Decryptor) -> Self {
        let population = Population::new(cfg.population, cfg.seed);
        let faults = cfg.faults.clone();
        let state = Self {
            population,
            key: Mutex::new(Arc::new(key)),
            world: Mutex::new(World {
                next_new_index: cfg.population + 10_000_007,
                ..World::default()
            }),
            limiter: Mutex::new(None),
            faults: Mutex::new(faults.clone()),
            script: Mutex::new(VecDeque::new()),
            log: Mutex::new(CallLog::default()),
            effects: Mutex::new(HashMap::new()),
            timeline: Mutex::new(Timeline::default()),
            client_secret: Mutex::new(cfg.client_secret.clone()),
            cfg,
        };
        state.set_faults(faults);
        state
    }

    /// The population the sandbox serves.
    pub fn population(&self) -> &Population {
        &self.population
    }

    /// Current faults.
    pub fn faults(&self) -> Faults {
        self.faults.lock().expect("faults lock").clone()
    }

    /// Replaces the faults (and rebuilds the rate limiter).
    pub fn set_faults(&self, f: Faults) {
        let limiter = (f.rate_limit > 0.0).then(|| {
            let period = Duration::from_secs_f64(1.0 / f.rate_limit);
            let burst = NonZeroU32::new(f.rate_limit.ceil().max(1.0) as u32).expect("≥ 1");
            Arc::new(RateLimiter::direct(
                Quota::with_period(period)
                    .expect("period > 0")
                    .allow_burst(burst),
            ))
        });
        *self.limiter.lock().expect("limiter lock") = limiter;
        *self.faults.lock().expect("faults lock") = f;
    }

    /// Queues canned answers.
    pub fn push_script(&self, r: ScriptedResponse) {
        self.script.lock().expect("script lock").push_back(r);
    }

    pub(crate) fn take_script(&self, path: &str) -> Option<ScriptedResponse> {
        let mut q = self.script.lock().expect("script lock");
        let pos = q.iter().position(|r| path.contains(&r.path_contains))?;
        let r = q.get_mut(pos)?;
        r.times = r.times.saturating_sub(1);
        let out = r.clone();
        if r.times == 0 {
            q.remove(pos);
        }
        Some(out)
    }

    /// False when the request exceeds the rate limit.
    pub(crate) fn admit(&self) -> bool {
        let limiter = self.limiter.lock().expect("limiter lock").clone();
        limiter.is_none_or(|l| l.check().is_ok())
    }

    /// Revokes every access token (the next ABHA call gets 401).
    pub fn expire_tokens(&self) {
        self.world.lock().expect("world lock").tokens.clear();
    }

    /// Accepts only `secret` from now on and revokes every access token, as ABDM does when a
    /// client secret is rotated: the chaos run plays a wrong-secret phase with it.
    pub fn set_client_secret(&self, secret: &str) {
        *self.client_secret.lock().expect("secret lock") = secret.to_string();
        self.expire_tokens();
    }

    /// True when `id` and `secret` are the accepted client credentials.
    pub(crate) fn credentials_ok(&self, id: &str, secret: &str) -> bool {
        id == self.cfg.client_id && secret == *self.client_secret.lock().expect("secret lock")
    }

    /// The per-second traffic at or after `since` (unix seconds).
    pub fn timeline(&self, since: u64) -> Vec<Second> {
        self.timeline.lock().expect("timeline lock").since(since)
    }

    fn tick(&self, event: Event<'_>) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.timeline
            .lock()
            .expect("timeline lock")
            .record(now, event);
    }

    /// Counts a request on arrival, before any check (`session`, `certificate`, `api`).
    pub(crate) fn count_received(&self, class: &str) {
        *self
            .log
            .lock()
            .expect("log lock")
            .received
            .entry(class.to_string())
            .or_default() += 1;
        self.tick(Event::Received(class));
    }

    /// Replaces the RSA key (clients must fetch the certificate again).
    pub fn rotate_key(&self, key: Decryptor) {
        *self.key.lock().expect("key lock") = Arc::new(key);
    }

    /// A snapshot of the call log.
    pub fn call_log(&self) -> CallLog {
        self.log.lock().expect("log lock").clone()
    }

    /// How many times `operation` had its side effect on `subject` (ABHA digits, or
    /// parent digits + child name + birth date for child creation).
    pub fn side_effect_count(&self, operation: &str, subject: &str) -> u64 {
        self.effects
            .lock()
            .expect("effects lock")
            .get(&(operation.to_string(), subject.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// True when `abha` (digits) is linked to `benefit`.
    pub fn is_linked(&self, benefit: &str, abha_digits: &str) -> bool {
        self.world
            .lock()
            .expect("world lock")
            .links
            .get(&(benefit.to_string(), abha_digits.to_string()))
            == Some(&LinkState::Linked)
    }

    /// Links or de-links directly, without a call (tests seed drift with it).
    pub fn set_linked(&self, benefit: &str, abha_digits: &str, linked: bool) {
        let state = if linked {
            LinkState::Linked
        } else {
            LinkState::Delinked
        };
        self.world
            .lock()
            .expect("world lock")
            .links
            .insert((benefit.to_string(), abha_digits.to_string()), state);
    }

    /// Creates a child ABHA under `parent` directly, without a call (the demo and tests seed
    /// children to update with it).
    pub fn seed_child(
        &self,
        parent: &crate::pii::AbhaNumber,
        name: &str,
        dob: chrono::NaiveDate,
        gender: &str,
    ) -> crate::pii::AbhaNumber {
        self.world.lock().expect("world lock").add_child(
            &self.population,
            &parent.digits(),
            name,
            dob,
            gender,
        )
    }

    pub(crate) fn count_request(&self, op: &str) {
        *self
            .log
            .lock()
            .expect("log lock")
            .requests
            .entry(op.to_string())
            .or_default() += 1;
    }

    pub(crate) fn count_answer(&self, code: &str) {
        *self
            .log
            .lock()
            .expect("log lock")
            .answers
            .entry(code.to_string())
            .or_default() += 1;
        self.tick(Event::Answer(code));
    }

    pub(crate) fn count_session_answer(&self, code: &str) {
        *self
            .log
            .lock()
            .expect("log lock")
            .session_answers
            .entry(code.to_string())
            .or_default() += 1;
        self.tick(Event::SessionAnswer(code));
    }

    pub(crate) fn count_fault(&self, kind: &str) {
        *self
            .log
            .lock()
            .expect("log lock")
            .faults
            .entry(kind.to_string())
            .or_default() += 1;
        self.tick(Event::Fault(kind));
    }

    pub(crate) fn side_effect(&self, op: &str, subject: &str) {
        let n = {
            let mut e = self.effects.lock().expect("effects lock");
            let n = e.entry((op.to_string(), subject.to_string())).or_default();
            *n += 1;
            *n
        };
        let mut log = self.log.lock().expect("log lock");
        *log.side_effects.entry(op.to_string()).or_default() += 1;
        if n > 1 {
            *log.duplicate_side_effects
                .entry(op.to_string())
                .or_default() += 1;
        }
    }
}

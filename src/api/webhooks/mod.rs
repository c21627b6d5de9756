//! Sending webhook deliveries (Standard Webhooks): `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>`.
//!
//! Deliveries run in a task of their own ([`run`]), started beside the relay but independent
//! of it (it keeps going while RabbitMQ is down). Each round queues deliveries for ended
//! batches and leases the due ones: at most `webhooks.concurrency` in flight in this process,
//! at most `webhooks.per_key` of one API key (programme) at a time, each with a deadline of
//! `webhooks.deadline_secs` that is shorter than its lease, so a hung receiver holds only its
//! own programme's deliveries back and two senders never send the same delivery at once.
//! Redirects are not followed, and the destination is checked on the resolved address
//! ([`destination`]). A failure is due again after 10 s doubling to an hour, up to
//! `store::webhooks::MAX_ATTEMPTS` attempts. Receivers use `webhook-id` to ignore repeats.

pub mod destination;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::store::Store;
use crate::store::webhooks::DueWebhook;
use destination::{Allowed, GuardedResolver};

/// `[webhooks]` settings (config/default.toml says why each default is what it is).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Deliveries in flight at once in one process.
    pub concurrency: usize,
    /// Deliveries of one API key (programme) in flight at once in one process.
    pub per_key: usize,
    /// Longest a delivery may take, connection included.
    #[serde(rename = "deadline_secs", with = "crate::config::secs")]
    pub deadline: Duration,
    /// How often due deliveries are looked for.
    #[serde(rename = "poll_ms", with = "crate::config::millis")]
    pub poll: Duration,
    /// Hosts (as written in webhook URLs) that may be private or loopback and plain `http://`.
    pub allow_private_hosts: Vec<String>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            concurrency: 16,
            per_key: 2,
            deadline: Duration::from_secs(10),
            poll: Duration::from_secs(1),
            allow_private_hosts: Vec::new(),
        }
    }
}

/// The `webhook-signature` value of a delivery.
pub fn sign(secret: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret).expect("any key length");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Delay before attempt `attempts + 1`.
fn backoff(attempts: i32) -> f64 {
    (10.0 * 2f64.powi(attempts.clamp(0, 9))).min(3600.0)
}

/// What one attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// An answer (2xx: delivered; 3xx is not followed and counts as a failure).
    Answered(u16),
    /// No answer within the deadline.
    Timeout,
    /// No connection.
    Failed,
    /// The destination is not allowed.
    Refused(&'static str),
}

/// The HTTP client of the sender: no redirects, no proxy (a proxy would resolve names where
/// the check cannot see), names resolved through [`GuardedResolver`].
pub fn client(settings: &WebhookSettings) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(settings.deadline)
        .connect_timeout(settings.deadline)
        .dns_resolver(Arc::new(GuardedResolver::new(Allowed::new(
            &settings.allow_private_hosts,
        ))))
        .build()
        .expect("a client without custom TLS always builds")
}

async fn attempt(http: &reqwest::Client, allowed: &Allowed, d: &DueWebhook) -> Attempt {
    let url = match reqwest::Url::parse(&d.url) {
        Ok(u) => u,
        Err(_) => return Attempt::Refused("destination refused: malformed URL"),
    };
    if let Err(why) = destination::check_url(&url, allowed) {
        return Attempt::Refused(match why {
            destination::Refused::Scheme => "destination refused: not https",
            destination::Refused::Private => "destination refused: private or reserved address",
            destination::Refused::Malformed => "destination refused: malformed URL",
        });
    }
    let body = d.body.to_string();
    let id = d.id.to_string();
    let ts = chrono::Utc::now().timestamp();
    let sent = http
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sign(&d.secret, &id, ts, &body))
        .body(body)
        .send()
        .await;
    match sent {
        Ok(r) => Attempt::Answered(r.status().as_u16()),
        Err(e) if e.is_timeout() => Attempt::Timeout,
        Err(e) if refused_resolution(&e) => {
            Attempt::Refused("destination refused: the host resolves only to private addresses")
        }
        Err(_) => Attempt::Failed,
    }
}

fn refused_resolution(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<destination::RefusedResolution>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Sends one delivery and records the answer.
async fn deliver(store: Store, http: reqwest::Client, allowed: Allowed, d: DueWebhook) {
    let outcome = attempt(&http, &allowed, &d).await;
    let (status, error, result) = match outcome {
        Attempt::Answered(s) if (200..300).contains(&s) => (Some(s), None, "delivered"),
        Attempt::Answered(s) if (300..400).contains(&s) => {
            (Some(s), Some("redirect not followed"), "failed")
        }
        Attempt::Answered(s) => (Some(s), None, "failed"),
        Attempt::Timeout => (None, Some("timeout"), "timeout"),
        Attempt::Failed => (None, Some("connection failed"), "failed"),
        Attempt::Refused(why) => (None, Some(why), "refused"),
    };
    crate::telemetry::metrics::WEBHOOK_DELIVERIES
        .with_label_values(&[result])
        .inc();
    if result != "delivered" {
        tracing::warn!(delivery = %d.id, key_id = %d.key, status, error, attempts = d.attempts + 1, "webhook delivery failed; will retry");
    }
    if let Err(e) = store
        .webhook_attempted(d.id, status, error, backoff(d.attempts))
        .await
    {
        tracing::warn!(error = %e, "recording a webhook attempt failed");
    }
}

/// Delivers webhooks until `stop`; see the module's documentation.
pub async fn run(store: Store, settings: WebhookSettings, stop: CancellationToken) {
    let http = client(&settings);
    let allowed = Allowed::new(&settings.allow_private_hosts);
    let concurrency = settings.concurrency.max(1);
    // The lease outlives the deadline by a margin, so a delivery is never sent twice at once.
    let lease = (settings.deadline + Duration::from_secs(30)).as_secs_f64();
    let mut running: JoinSet<()> = JoinSet::new();
    // Which key each running delivery belongs to, by task id: a task that panics still gives
    // its key's slot back.
    let mut keys: HashMap<tokio::task::Id, Uuid> = HashMap::new();
    let mut per_key: HashMap<Uuid, usize> = HashMap::new();
    let mut last_enqueue: Option<tokio::time::Instant> = None;
    while !stop.is_cancelled() {
        while let Some(done) = running.try_join_next_with_id() {
            release(&mut per_key, &mut keys, task_id(&done));
        }
        if last_enqueue.is_none_or(|t| t.elapsed() >= settings.poll) {
            if let Err(e) = store.enqueue_webhooks().await {
                tracing::warn!(error = %e, "queueing webhooks failed");
            }
            last_enqueue = Some(tokio::time::Instant::now());
        }
        let free = concurrency.saturating_sub(running.len());
        // A stale process (store::keyset) may not read a secret set under the newer key.
        if free > 0 && !store.key_stale() {
            let busy: Vec<Uuid> = per_key.keys().copied().collect();
            match store
                .due_webhooks(free as i64, lease, settings.per_key.max(1) as i64, &busy)
                .await
            {
                Ok(due) => {
                    for d in due {
                        *per_key.entry(d.key).or_default() += 1;
                        let key = d.key;
                        let (store, http, allowed) = (store.clone(), http.clone(), allowed.clone());
                        let deadline = settings.deadline;
                        let task = running.spawn(async move {
                            // The client's timeout covers the request; this covers the rest.
                            let _ = tokio::time::timeout(
                                deadline + Duration::from_secs(5),
                                deliver(store, http, allowed, d),
                            )
                            .await;
                        });
                        keys.insert(task.id(), key);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading due webhooks failed"),
            }
        }
        // Wake when a delivery ends (its key may have more) or the poll interval passes.
        tokio::select! {
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                release(&mut per_key, &mut keys, task_id(&done));
            }
            _ = tokio::time::sleep(settings.poll) => {}
            _ = stop.cancelled() => {}
        }
    }
    running.shutdown().await;
}

fn task_id(done: &Result<(tokio::task::Id, ()), tokio::task::JoinError>) -> tokio::task::Id {
    match done {
        Ok((id, ())) => *id,
        Err(e) => {
            tracing::error!(error = %e, "a webhook delivery task failed");
            e.id()
        }
    }
}

fn release(
    per_key: &mut HashMap<Uuid, usize>,
    keys: &mut HashMap<tokio::task::Id, Uuid>,
    task: tokio::task::Id,
) {
    let Some(key) = keys.remove(&task) else {
        return;
    };
    if let Some(n) = per_key.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            per_key.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_follows_standard_webhooks() {
        // The example of the Standard Webhooks specification.
        let secret = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let sig = sign(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_eq!(backoff(0), 10.0);
        assert_eq!(backoff(20), 3600.0);
    }
}

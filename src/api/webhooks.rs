//! Sending webhook deliveries (Standard Webhooks): `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>`.
//!
//! Run by the relay's housekeeping: a round leases the due deliveries, posts each with a short
//! timeout, and records the answer; a failure is due again after 10 s doubling to an hour, up
//! to `store::webhooks::MAX_ATTEMPTS` attempts. Receivers use `webhook-id` to ignore repeats.

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::store::Store;

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

/// One round: queues deliveries for ended batches and sends what is due. Errors are logged.
pub async fn round(store: &Store, http: &reqwest::Client) {
    if let Err(e) = store.enqueue_webhooks().await {
        tracing::warn!(error = %e, "queueing webhooks failed");
        return;
    }
    let due = match store.due_webhooks(50, 60.0).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "reading due webhooks failed");
            return;
        }
    };
    for d in due {
        let body = d.body.to_string();
        let id = d.id.to_string();
        let ts = chrono::Utc::now().timestamp();
        let sent = http
            .post(&d.url)
            .timeout(Duration::from_secs(10))
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sign(&d.secret, &id, ts, &body))
            .body(body)
            .send()
            .await;
        let (status, error) = match sent {
            Ok(r) => (Some(r.status().as_u16()), None),
            Err(e) => (
                None,
                Some(if e.is_timeout() {
                    "timeout"
                } else {
                    "connection failed"
                }),
            ),
        };
        if !status.is_some_and(|s| (200..300).contains(&s)) {
            tracing::warn!(delivery = %id, status, error, attempts = d.attempts + 1, "webhook delivery failed; will retry");
        }
        if let Err(e) = store
            .webhook_attempted(d.id, status, error, backoff(d.attempts))
            .await
        {
            tracing::warn!(error = %e, "recording a webhook attempt failed");
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

//! The state of this process's link to RabbitMQ, shared by the worker and the relay: one
//! ERROR when the broker becomes unreachable (naming `host:port/vhost` and the setting, never
//! the credentials), one INFO when it answers again, and quiet (debug) retries in between.
//! lapin's own log lines are off by default ([`crate::telemetry::filter`]), so these are the
//! only ones.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::Mutex;
use std::time::Duration;

/// Broker address → reachable at the last attempt.
static STATE: Mutex<BTreeMap<String, bool>> = Mutex::new(BTreeMap::new());

/// `host:port/vhost` of an AMQP URL, without user or password.
pub fn target(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let port = u
                .port()
                .unwrap_or(if u.scheme() == "amqps" { 5671 } else { 5672 });
            let vhost = u.path().trim_start_matches('/');
            let vhost = if vhost.is_empty() || vhost == "%2f" || vhost == "%2F" {
                "/"
            } else {
                vhost
            };
            format!("{}:{port} (vhost {vhost})", u.host_str().unwrap_or("?"))
        }
        Err(_) => "(unparsable rabbitmq.url)".into(),
    }
}

/// Records a state; true when it changed.
fn set(url: &str, up: bool) -> (String, bool) {
    let target = target(url);
    let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let before = state.insert(target.clone(), up);
    (target, before != Some(up))
}

/// A connection to `url` opened.
pub fn up(url: &str) {
    let (target, changed) = set(url, true);
    if changed {
        tracing::info!(broker = %target, "RabbitMQ connected");
    }
}

/// `who` (worker, relay) cannot reach or lost the broker at `url` and retries in `retry_in`.
/// Logs an ERROR only on the change from reachable (or unknown) to unreachable.
pub fn down(who: &str, url: &str, error: &dyn Display, retry_in: Duration) {
    let (target, changed) = set(url, false);
    let retry_in_ms = retry_in.as_millis() as u64;
    if changed {
        tracing::error!(
            broker = %target,
            error = %error,
            "{who} cannot reach RabbitMQ at {target}; check `rabbitmq.url` (ABHA_BULK__RABBITMQ__URL) and that the broker runs there; retrying quietly until it answers"
        );
    } else {
        tracing::debug!(broker = %target, error = %error, retry_in_ms, "{who}: RabbitMQ still unreachable");
    }
}

/// True when the last attempt reached the broker at `url`.
pub fn is_up(url: &str) -> bool {
    let state = STATE.lock().unwrap_or_else(|p| p.into_inner());
    state.get(&target(url)).copied().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_never_has_credentials() {
        assert_eq!(
            target("amqp://guest:s3cret@mq.example:5673/%2f"),
            "mq.example:5673 (vhost /)"
        );
        assert_eq!(target("amqps://u:p@mq/abha"), "mq:5671 (vhost abha)");
        assert!(!target("amqp://u:s3cret@[::1").contains("s3cret"));
    }

    #[test]
    fn one_change_per_state() {
        let url = "amqp://u:p@state-test:1/%2f";
        assert!(set(url, false).1);
        assert!(!set(url, false).1);
        assert!(set(url, true).1);
        assert!(is_up(url));
        assert!(!set(url, true).1);
    }
}

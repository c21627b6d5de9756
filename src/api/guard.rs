//! What keeps one client from hurting the others: failed-authentication throttling and upload
//! slots.
//!
//! - [`AuthThrottle`]: every failed authentication (an unknown or wrong key, a revoked or
//!   expired one) takes a token from two buckets, one per client address and one per key
//!   prefix (the public part of `abk_<prefix>_<secret>`). A request whose bucket is empty is
//!   answered 429 with `Retry-After` before its key is looked at, so neither one address
//!   guessing many keys nor many addresses guessing one key's secret go faster than
//!   `api.auth_failure_burst` at once and `api.auth_failures_per_sec` after. A good key from an
//!   address in good standing is never held back by its own past failures.
//! - [`UploadSlots`]: at most `api.max_concurrent_uploads` uploads at once and
//!   `api.max_uploads_per_key` per key, so one key cannot fill the spool.
//!
//! State is per process (each `serve` replica throttles on its own), which bounds the rate
//! per replica; the alert on `abha_api_auth_failures_total` sees all of them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// A token bucket of failures.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Whether this throttling episode was already logged.
    logged: bool,
}

/// Failed-authentication throttling per client address and per key prefix.
#[derive(Debug)]
pub struct AuthThrottle {
    burst: f64,
    per_sec: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Refused by the throttle: retry after this long; `first` is the first refusal of the
/// episode (the one that is logged).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throttled {
    /// Until the next failure would be allowed.
    pub retry_after: Duration,
    /// The first refusal since the bucket was last non-empty.
    pub first: bool,
}

/// Buckets beyond this many are pruned of the full ones (memory stays bounded under a flood
/// of made-up prefixes).
const PRUNE_AT: usize = 50_000;

impl AuthThrottle {
    /// `burst` failures at once, then `per_sec` a second.
    pub fn new(burst: u32, per_sec: f64) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_sec: per_sec.max(0.001),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn names(addr: Option<IpAddr>, prefix: Option<&str>) -> Vec<String> {
        let mut v = Vec::with_capacity(2);
        if let Some(a) = addr {
            v.push(format!("addr:{a}"));
        }
        if let Some(p) = prefix {
            v.push(format!("prefix:{p}"));
        }
        v
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let t = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + t * self.per_sec).min(self.burst);
        b.at = now;
    }

    /// Refuses a request from `addr` presenting a key with `prefix` while either bucket is
    /// empty.
    pub fn check(&self, addr: Option<IpAddr>, prefix: Option<&str>) -> Result<(), Throttled> {
        let now = Instant::now();
        let mut map = self.buckets.lock().expect("throttle lock");
        let mut refused: Option<Throttled> = None;
        for name in Self::names(addr, prefix) {
            if let Some(b) = map.get_mut(&name) {
                self.refill(b, now);
                if b.tokens < 1.0 {
                    let wait = Duration::from_secs_f64((1.0 - b.tokens) / self.per_sec);
                    let first = !b.logged;
                    b.logged = true;
                    refused = Some(match refused {
                        Some(r) => Throttled {
                            retry_after: r.retry_after.max(wait),
                            first: r.first || first,
                        },
                        None => Throttled {
                            retry_after: wait,
                            first,
                        },
                    });
                } else {
                    b.logged = false;
                }
            }
        }
        refused.map_or(Ok(()), Err)
    }

    /// Records a failed authentication.
    pub fn failed(&self, addr: Option<IpAddr>, prefix: Option<&str>) {
        let now = Instant::now();
        let mut map = self.buckets.lock().expect("throttle lock");
        if map.len() > PRUNE_AT {
            let burst = self.burst;
            let per_sec = self.per_sec;
            map.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_sec < burst
            });
        }
        for name in Self::names(addr, prefix) {
            let b = map.entry(name).or_insert(Bucket {
                tokens: self.burst,
                at: now,
                logged: false,
            });
            self.refill(b, now);
            b.tokens -= 1.0;
        }
    }
}

/// Upload slots: overall and per key.
#[derive(Debug)]
pub struct UploadSlots {
    overall: usize,
    per_key: usize,
    held: Mutex<(usize, HashMap<Uuid, usize>)>,
}

/// Why no upload slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// The key already has `per_key` uploads running.
    Key(usize),
    /// The server already has `overall` uploads running.
    Overall(usize),
}

/// A held upload slot, given back when dropped.
#[derive(Debug)]
pub struct UploadSlot {
    slots: Arc<UploadSlots>,
    key: Uuid,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().expect("slots lock");
        held.0 -= 1;
        if let Some(n) = held.1.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.1.remove(&self.key);
            }
        }
    }
}

impl UploadSlots {
    /// `overall` uploads at once, `per_key` of one key.
    pub fn new(overall: usize, per_key: usize) -> Arc<Self> {
        Arc::new(Self {
            overall: overall.max(1),
            per_key: per_key.max(1),
            held: Mutex::new((0, HashMap::new())),
        })
    }

    /// Uploads running now (for tests and diagnostics).
    pub fn running(&self) -> usize {
        self.held.lock().expect("slots lock").0
    }

    /// A slot for an upload of `key`, or why not.
    pub fn take(self: &Arc<Self>, key: Uuid) -> Result<UploadSlot, NoSlot> {
        let mut held = self.held.lock().expect("slots lock");
        let mine = held.1.get(&key).copied().unwrap_or(0);
        if mine >= self.per_key {
            return Err(NoSlot::Key(self.per_key));
        }
        if held.0 >= self.overall {
            return Err(NoSlot::Overall(self.overall));
        }
        held.0 += 1;
        *held.1.entry(key).or_default() += 1;
        Ok(UploadSlot {
            slots: self.clone(),
            key,
        })
    }
}

/// Free bytes of the file system holding `dir`, for the spool's floor.
pub fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_beyond_the_burst_are_throttled_per_address_and_per_prefix() {
        let t = AuthThrottle::new(3, 0.001);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(t.check(Some(a), Some("p1")).is_ok());
            t.failed(Some(a), Some("p1"));
        }
        let r = t.check(Some(a), Some("p2")).unwrap_err();
        assert!(r.first && r.retry_after > Duration::from_secs(100));
        assert!(!t.check(Some(a), None).unwrap_err().first, "logged once");
        // Another address guessing the same prefix is held back too; other prefixes are not.
        assert!(t.check(Some(b), Some("p1")).is_err());
        assert!(t.check(Some(b), Some("p2")).is_ok());
    }

    #[test]
    fn upload_slots_are_capped_per_key_and_overall() {
        let s = UploadSlots::new(3, 2);
        let (k1, k2) = (Uuid::new_v4(), Uuid::new_v4());
        let a = s.take(k1).unwrap();
        let _b = s.take(k1).unwrap();
        assert_eq!(s.take(k1).unwrap_err(), NoSlot::Key(2));
        let _c = s.take(k2).unwrap();
        assert_eq!(s.take(k2).unwrap_err(), NoSlot::Overall(3));
        drop(a);
        assert!(s.take(k1).is_ok());
    }
}

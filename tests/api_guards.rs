//! What keeps one client of the programme API from hurting the others, through the real
//! server: failed-authentication throttling (measured, on `/v1` and the console's sign-in),
//! upload slots, the spool's floor, file names, and 405 as a problem document.
//! (`Idempotency-Key`, the batch list and the report: `tests/api_idempotency.rs`.)

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use abha_bulk::api::ApiSettings;
use abha_bulk::telemetry::metrics::AUTH_FAILURES;
use common::api::{client_from, key, links, problem, retry_after, start};
use common::{BENEFIT, TestEnv};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_keys_are_throttled_per_address_and_per_prefix_with_a_measured_bound() {
    let env = TestEnv::new().await;
    let settings = ApiSettings::default();
    let (burst, per_sec) = (settings.auth_failure_burst, settings.auth_failures_per_sec);
    let api = start(&env, settings).await;
    let url = format!("{}/v1/batches", api.base);
    let throttled_before = AUTH_FAILURES.with_label_values(&["api", "throttled"]).get();
    let unknown_before = AUTH_FAILURES.with_label_values(&["api", "unknown"]).get();

    // One address, 200 wrong keys as fast as it can (each with another made-up prefix, so
    // only the address's bucket counts).
    let from_one = client_from("127.0.0.1");
    let started = Instant::now();
    let (mut refused, mut throttled) = (0u64, 0u64);
    for i in 0..200 {
        let r = from_one
            .get(&url)
            .bearer_auth(format!("abk_{i:08x}_{}", "0".repeat(48)))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            401 => refused += 1,
            429 => {
                assert!(retry_after(&r) >= 1);
                problem(r, 429).await;
                throttled += 1;
            }
            s => panic!("status {s}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let bound = f64::from(burst) + per_sec * elapsed;
    eprintln!(
        "200 wrong keys from one address in {elapsed:.2} s: {refused} answered 401 (checked), \
         {throttled} answered 429; bound {bound:.1} ({:.1} checked failures/s)",
        refused as f64 / elapsed
    );
    assert!(refused as f64 <= bound.ceil(), "{refused} > {bound}");
    assert_eq!(refused + throttled, 200);
    assert!(throttled >= 150, "{throttled}");
    assert_eq!(
        AUTH_FAILURES.with_label_values(&["api", "unknown"]).get() - unknown_before,
        refused
    );
    assert_eq!(
        AUTH_FAILURES.with_label_values(&["api", "throttled"]).get() - throttled_before,
        throttled
    );

    api.task.abort();

    // The rest on a server whose buckets refill slowly (one token in 100 s), so that no
    // refill lands between a bucket emptying and the next check on a busy machine.
    let api = start(
        &env,
        ApiSettings {
            auth_failures_per_sec: 0.01,
            ..ApiSettings::default()
        },
    )
    .await;
    let url = format!("{}/v1/batches", api.base);
    // One key's prefix guessed from many addresses: its bucket empties too.
    let (_, victim) = key(&env, &["read"]).await;
    let (_, bystander) = key(&env, &["read"]).await;
    let prefix = victim.split('_').nth(1).unwrap();
    for i in 0..burst {
        let r = client_from(&format!("127.0.1.{}", i + 1))
            .get(&url)
            .bearer_auth(format!("abk_{prefix}_{}", "1".repeat(48)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let fresh = client_from("127.0.2.1");
    let r = fresh
        .get(&url)
        .bearer_auth(format!("abk_{prefix}_{}", "2".repeat(48)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        429,
        "the prefix is throttled from a fresh address"
    );
    // Its owner waits too (the price of not letting guesses through); other keys do not.
    let r = fresh.get(&url).bearer_auth(&victim).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let r = fresh
        .get(&url)
        .bearer_auth(&bystander)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // An address that used up its failures is refused even with a good key until its bucket
    // refills.
    let scanner = client_from("127.0.4.1");
    for i in 0..burst {
        let r = scanner
            .get(&url)
            .bearer_auth(format!("abk_{:08x}_{}", 0xa000 + i, "3".repeat(48)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let r = scanner
        .get(&url)
        .bearer_auth(&bystander)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);

    // The console's sign-in goes through the same throttle.
    let console = client_from("127.0.3.1");
    let before = AUTH_FAILURES
        .with_label_values(&["console", "throttled"])
        .get();
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..(burst + 3) {
        let page = console
            .get(format!("{}/console/sign-in", api.base))
            .send()
            .await
            .unwrap();
        let cookie = page.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let html = page.text().await.unwrap();
        let csrf = html
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_string();
        let r = console
            .post(format!("{}/console/sign-in", api.base))
            .header("cookie", cookie)
            .form(&[("csrf", csrf.as_str()), ("key", "abk_c0c0c0c0_nope")])
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        last = Some(r);
    }
    assert_eq!(&statuses[..burst as usize], vec![401; burst as usize]);
    assert!(
        statuses[burst as usize..].iter().all(|s| *s == 429),
        "{statuses:?}"
    );
    assert!(retry_after(last.as_ref().unwrap()) >= 1);
    assert!(
        AUTH_FAILURES
            .with_label_values(&["console", "throttled"])
            .get()
            > before
    );
    api.task.abort();
    env.cleanup().await;
}

/// Starts an upload of `key` over a raw connection and leaves its body unfinished.
async fn stalled_upload(addr: SocketAddr, key: &str) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/batches?kind=benefit-link&benefit={BENEFIT} HTTP/1.1\r\nhost: x\r\n\
         authorization: Bearer {key}\r\ncontent-type: text/csv\r\ncontent-length: 100000\r\n\r\n\
         external_ref,abha_number\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.flush().await.unwrap();
    // Not answered: the upload is waiting for the rest of its body.
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 2000];
    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
        panic!(
            "the stalled upload was answered: {}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    s
}

/// Waits (up to 10 s) until the server holds `n` upload slots.
async fn slots_in_use(api: &common::api::Api, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.guards.uploads.running() != n {
        assert!(Instant::now() < deadline, "{n} upload(s) never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Retries `send` until it answers `status` (the server takes a moment to start an upload).
async fn until_status<F, Fut>(status: u16, send: F) -> reqwest::Response
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = reqwest::Response>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = send().await;
        if r.status().as_u16() == status {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "still {} instead of {status} after 5 s: {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_capped_named_safely_and_every_refusal_is_a_problem_document() {
    let env = TestEnv::new().await;
    let api = start(
        &env,
        ApiSettings {
            max_uploads_per_key: 1,
            max_concurrent_uploads: 2,
            ..ApiSettings::default()
        },
    )
    .await;
    let http = reqwest::Client::new();
    let (_, a) = key(&env, &["submit", "read"]).await;
    let (_, b) = key(&env, &["submit", "read"]).await;
    let (_, c) = key(&env, &["submit", "read"]).await;
    let upload = |k: &str, body: String| {
        http.post(format!(
            "{}/v1/batches?kind=benefit-link&benefit={BENEFIT}",
            api.base
        ))
        .bearer_auth(k)
        .header("content-type", "text/csv")
        .body(body)
        .send()
    };
    // Every probe sends another file (the same file twice would be 409, already submitted).
    let n = std::sync::atomic::AtomicU64::new(1000);
    let fresh = || {
        let i = n.fetch_add(2, Ordering::SeqCst);
        links(&env, i..i + 2)
    };
    // A's one upload runs (stalled): A's next is refused, B's runs, then the server is full.
    let hold_a = stalled_upload(api.addr, &a).await;
    slots_in_use(&api, 1).await;
    let r = until_status(429, || async { upload(&a, fresh()).await.unwrap() }).await;
    assert!(retry_after(&r) >= 1);
    let v = problem(r, 429).await;
    assert_eq!(v["type"], "docs/api.md#too-many-uploads");
    let mut hold_b = stalled_upload(api.addr, &b).await;
    {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 2000];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), hold_b.read(&mut buf)).await
        {
            panic!(
                "B's stalled upload was answered: {}",
                String::from_utf8_lossy(&buf[..n])
            );
        }
    }
    until_status(429, || async { upload(&b, fresh()).await.unwrap() }).await;
    let r = upload(&c, fresh()).await.unwrap();
    assert!(retry_after(&r) >= 1);
    assert_eq!(problem(r, 503).await["type"], "docs/api.md#busy");
    // Their connections end: the slots come back.
    drop(hold_a);
    drop(hold_b);
    let r = until_status(201, || async { upload(&c, fresh()).await.unwrap() }).await;
    assert_eq!(r.status(), 201);

    // A file name over 255 bytes, with a NUL and control characters, is only a label.
    let long = format!("{}%00%0d%0a%1b{}.csv", "n".repeat(150), "m".repeat(150));
    let r = http
        .post(format!(
            "{}/v1/batches?kind=benefit-link&benefit={BENEFIT}&file_name={long}",
            api.base
        ))
        .bearer_auth(&a)
        .header("content-type", "text/csv")
        .body(links(&env, 10..12))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let batch: Value = r.json().await.unwrap();
    let shown: Value = http
        .get(format!(
            "{}/v1/batches/{}",
            api.base,
            batch["batch"].as_str().unwrap()
        ))
        .bearer_auth(&a)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let name = shown["file_name"].as_str().unwrap();
    assert!(
        name.len() <= 200 && !name.chars().any(char::is_control),
        "{name:?}"
    );
    assert!(name.starts_with("nnnn"));

    // Wrong methods: a problem document, not a bare 405.
    let r = http
        .delete(format!("{}/v1/batches", api.base))
        .bearer_auth(&a)
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem(r, 405).await["type"],
        "docs/api.md#method-not-allowed"
    );
    let r = http
        .get(format!(
            "{}/v1/batches/{}/cancel",
            api.base,
            uuid::Uuid::new_v4()
        ))
        .send()
        .await
        .unwrap();
    problem(r, 405).await;
    assert_eq!(
        std::fs::read_dir(env.dir.path()).unwrap().count(),
        0,
        "no spool file left behind"
    );
    api.task.abort();

    // A spool below its floor takes nothing.
    let api = start(
        &env,
        ApiSettings {
            spool_min_free_mib: u64::MAX >> 21,
            ..ApiSettings::default()
        },
    )
    .await;
    let r = http
        .post(format!(
            "{}/v1/batches?kind=benefit-link&benefit={BENEFIT}",
            api.base
        ))
        .bearer_auth(&b)
        .header("content-type", "text/csv")
        .body(links(&env, 20..22))
        .send()
        .await
        .unwrap();
    assert!(retry_after(&r) >= 1);
    assert_eq!(problem(r, 507).await["type"], "docs/api.md#no-space");
    assert_eq!(std::fs::read_dir(env.dir.path()).unwrap().count(), 0);
    api.task.abort();
    env.cleanup().await;
}

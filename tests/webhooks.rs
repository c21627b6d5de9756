//! Webhook deliveries on their own (`api::webhooks::run`, no relay, no RabbitMQ): a receiver
//! that hangs holds back only its own programme's deliveries, redirects are not followed,
//! private and metadata destinations are refused at delivery time unless the operator allows
//! the host, and a revoked or expired key's deliveries stop. Started beside the relay (as
//! `worker` and `relay` do), deliveries go out while RabbitMQ is unreachable.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use abha_bulk::api::webhooks::{WebhookSettings, run};
use axum::http::StatusCode;
use common::TestEnv;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A receiver on loopback: records when each delivery arrived, answers with `answer` after
/// `hold`.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

async fn receiver(answer: StatusCode, hold: Duration, location: Option<String>) -> Receiver {
    let got: Arc<Mutex<Vec<Instant>>> = Default::default();
    let g = got.clone();
    let app = axum::Router::new().fallback(move || {
        let g = g.clone();
        let location = location.clone();
        async move {
            g.lock().await.push(Instant::now());
            tokio::time::sleep(hold).await;
            let mut r = axum::response::IntoResponse::into_response(answer);
            if let Some(l) = location {
                r.headers_mut()
                    .insert(axum::http::header::LOCATION, l.parse().unwrap());
            }
            r
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver { url, got, task }
}

/// A key with a webhook to `url` and `n` finished batches uploaded with it.
async fn programme(env: &TestEnv, url: &str, n: usize) -> Uuid {
    let (k, _) = env
        .store
        .create_api_key(None, &[common::BENEFIT.into()], &["read".into()], None)
        .await
        .unwrap();
    env.store.set_webhook(k.id, url).await.unwrap();
    for _ in 0..n {
        let b = env.new_link_batch(None).await;
        sqlx::query("UPDATE batches SET state = 'finished', finished_at = now() WHERE id = $1")
            .bind(b)
            .execute(&env.store.pool)
            .await
            .unwrap();
        env.store.set_batch_key(b, k.id).await.unwrap();
    }
    k.id
}

fn settings(allow: &[&str]) -> WebhookSettings {
    WebhookSettings {
        concurrency: 4,
        per_key: 2,
        deadline: Duration::from_secs(5),
        poll: Duration::from_millis(50),
        allow_private_hosts: allow.iter().map(|s| s.to_string()).collect(),
    }
}

async fn wait_for(got: &Arc<Mutex<Vec<Instant>>>, n: usize, within: Duration) -> Vec<Instant> {
    let deadline = Instant::now() + within;
    loop {
        let g = got.lock().await.clone();
        if g.len() >= n || Instant::now() > deadline {
            return g;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn deliveries(env: &TestEnv, key: Uuid) -> Vec<(i32, Option<i32>, Option<String>, bool)> {
    sqlx::query_as(
        "SELECT attempts, last_status, last_error, delivered_at IS NOT NULL
         FROM webhook_deliveries WHERE key_id = $1 ORDER BY created_at",
    )
    .bind(key)
    .fetch_all(&env.store.pool)
    .await
    .unwrap()
}

/// Programme B's deliveries.
const B: usize = 30;

/// How long programme B's deliveries take from the sender's start, with programme A's
/// receiver hanging (`a_hangs`) or absent.
async fn time_b(
    a_hangs: bool,
    check_a: bool,
) -> (Duration, Vec<(i32, Option<i32>, Option<String>, bool)>) {
    let env = TestEnv::new().await;
    let hung = receiver(StatusCode::OK, Duration::from_secs(3600), None).await;
    // B's receiver takes 30 ms a delivery: B's 30 deliveries, two at a time, take about half a
    // second, long enough for a 10 % bound to mean something.
    let fine = receiver(StatusCode::OK, Duration::from_millis(30), None).await;
    let a = if a_hangs {
        Some(programme(&env, &hung.url, 6).await)
    } else {
        None
    };
    let _b = programme(&env, &fine.url, B).await;
    let stop = CancellationToken::new();
    let started = Instant::now();
    let sender = tokio::spawn(run(
        env.store.clone(),
        settings(&["127.0.0.1"]),
        stop.clone(),
    ));
    let got = wait_for(&fine.got, B, Duration::from_secs(20)).await;
    assert_eq!(got.len(), B, "B's deliveries all arrive");
    let took = got.iter().max().unwrap().duration_since(started);
    let a_rows = match a {
        Some(a) if check_a => {
            assert_eq!(hung.got.lock().await.len(), 2, "per_key of A in flight");
            // A's two time out at the deadline (5 s) and wait for their retry; the next two
            // of A are in flight then.
            tokio::time::sleep(Duration::from_secs(6)).await;
            deliveries(&env, a).await
        }
        _ => Vec::new(),
    };
    stop.cancel();
    let _ = sender.await;
    hung.task.abort();
    fine.task.abort();
    env.cleanup().await;
    (took, a_rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_receiver_delays_only_its_own_programme() {
    // Baseline: B alone. Then A's receiver never answers, with more of A's deliveries due
    // than the sender's concurrency: B must not wait for them.
    // Three runs of each, interleaved, compared by their medians (the machine is shared:
    // one run can be slow for reasons of its own).
    let (mut alone, mut beside, mut a_rows) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..3 {
        alone.push(time_b(false, false).await.0);
        let (t, rows) = time_b(true, i == 0).await;
        beside.push(t);
        if i == 0 {
            a_rows = rows;
        }
    }
    alone.sort();
    beside.sort();
    let (alone, beside_hung) = (alone[1], beside[1]);
    eprintln!(
        "B's {B} deliveries (median of 3): {:.0} ms alone, {:.0} ms beside a hung receiver",
        alone.as_secs_f64() * 1e3,
        beside_hung.as_secs_f64() * 1e3
    );
    // Within 10 % (plus two poll intervals of slack for the sender's own clock).
    assert!(
        beside_hung <= alone.mul_f64(1.1) + Duration::from_millis(100),
        "B took {beside_hung:?} beside a hung receiver, {alone:?} alone"
    );
    let timed_out = a_rows
        .iter()
        .filter(|(attempts, _, error, delivered)| {
            *attempts == 1 && error.as_deref() == Some("timeout") && !delivered
        })
        .count();
    assert_eq!(
        timed_out, 2,
        "A's two leased deliveries timed out: {a_rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed_and_private_destinations_are_refused() {
    let env = TestEnv::new().await;
    // An "internal" service the redirect points at: it must never be reached.
    let internal = receiver(StatusCode::OK, Duration::ZERO, None).await;
    let redirecting = receiver(
        StatusCode::TEMPORARY_REDIRECT,
        Duration::ZERO,
        Some(internal.url.clone()),
    )
    .await;
    let moved = receiver(
        StatusCode::MOVED_PERMANENTLY,
        Duration::ZERO,
        Some(internal.url.clone()),
    )
    .await;
    let r307 = programme(&env, &redirecting.url, 1).await;
    let r301 = programme(&env, &moved.url, 1).await;
    // Allowed by name: 127.0.0.1 only. A loopback receiver named otherwise, the metadata
    // service, a private range and a name that resolves to loopback are refused.
    let plain = receiver(StatusCode::OK, Duration::ZERO, None).await;
    let port = plain
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let refused = [
        programme(&env, &format!("https://127.0.0.2:{port}/hook"), 1).await,
        programme(&env, "https://169.254.169.254/latest/meta-data", 1).await,
        programme(&env, "https://10.0.0.1/hook", 1).await,
        programme(&env, &format!("https://localhost:{port}/hook"), 1).await,
        programme(&env, &format!("http://localhost:{port}/hook"), 1).await,
    ];
    let stop = CancellationToken::new();
    let sender = tokio::spawn(run(
        env.store.clone(),
        settings(&["127.0.0.1"]),
        stop.clone(),
    ));
    wait_for(&redirecting.got, 1, Duration::from_secs(10)).await;
    wait_for(&moved.got, 1, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while futures::future::join_all(refused.iter().map(|k| deliveries(&env, *k)))
        .await
        .iter()
        .any(|d| d.first().is_none_or(|r| r.0 == 0))
    {
        assert!(Instant::now() < deadline, "every delivery attempted once");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let _ = sender.await;
    assert!(internal.got.lock().await.is_empty(), "no redirect followed");
    assert!(
        plain.got.lock().await.is_empty(),
        "no refused destination reached"
    );
    for (k, status) in [(r307, 307), (r301, 301)] {
        let d = deliveries(&env, k).await;
        assert_eq!(d[0].1, Some(status));
        assert_eq!(d[0].2.as_deref(), Some("redirect not followed"));
        assert!(!d[0].3);
    }
    for k in refused {
        let d = deliveries(&env, k).await;
        assert!(
            d[0].2
                .as_deref()
                .is_some_and(|e| e.starts_with("destination refused")),
            "{d:?}"
        );
        assert_eq!(d[0].1, None);
    }
    for r in [internal, redirecting, moved, plain] {
        r.task.abort();
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_expired_keys_get_no_deliveries() {
    let env = TestEnv::new().await;
    let live = receiver(StatusCode::OK, Duration::ZERO, None).await;
    let revoked = receiver(StatusCode::OK, Duration::ZERO, None).await;
    let expired = receiver(StatusCode::OK, Duration::ZERO, None).await;
    let k_live = programme(&env, &live.url, 1).await;
    let k_revoked = programme(&env, &revoked.url, 1).await;
    let k_expired = programme(&env, &expired.url, 1).await;
    // Queued while the keys were live; then one is revoked and one expires.
    env.store.enqueue_webhooks().await.unwrap();
    assert!(
        env.store
            .revoke_api_key(&k_revoked.to_string())
            .await
            .unwrap()
    );
    sqlx::query("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(k_expired)
        .execute(&env.store.pool)
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let sender = tokio::spawn(run(
        env.store.clone(),
        settings(&["127.0.0.1"]),
        stop.clone(),
    ));
    assert_eq!(
        wait_for(&live.got, 1, Duration::from_secs(10)).await.len(),
        1
    );
    // Several more rounds of the sender pass.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let _ = sender.await;
    assert!(revoked.got.lock().await.is_empty());
    assert!(expired.got.lock().await.is_empty());
    for k in [k_revoked, k_expired] {
        let d = deliveries(&env, k).await;
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].0, d[0].3), (0, false), "never attempted");
    }
    assert!(deliveries(&env, k_live).await[0].3);
    for r in [live, revoked, expired] {
        r.task.abort();
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_go_out_beside_a_relay_that_cannot_reach_rabbitmq() {
    let env = TestEnv::new().await;
    let hook = receiver(StatusCode::OK, Duration::ZERO, None).await;
    let k = programme(&env, &hook.url, 1).await;
    // The pipeline as `worker` starts it (relay, and the webhook sender beside it), with
    // RabbitMQ unreachable: the relay keeps reconnecting, the deliveries still go.
    let pipeline = env.start_via(
        common::PipelineOpts::default(),
        "amqp://guest:guest@127.0.0.1:1/%2f",
    );
    assert_eq!(
        wait_for(&hook.got, 1, Duration::from_secs(15)).await.len(),
        1
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !deliveries(&env, k).await[0].3 {
        assert!(Instant::now() < deadline, "the delivery is recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pipeline.kill().await;
    hook.task.abort();
    env.cleanup().await;
}

//! The sandbox's admin endpoints the chaos run relies on: the per-second timeline and the
//! client-secret switch (the wrong-secret phase), over HTTP.

use abha_bulk::sandbox::{
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Faults, KeySource, Sandbox, SandboxConfig,
};
use serde_json::{Value, json};

const KEY: &str = include_str!("fixtures/test-key-2048.pem");

async fn start(faults: Faults) -> Sandbox {
    Sandbox::start(SandboxConfig {
        key: KeySource::Pem(KEY.into()),
        population: 1000,
        faults,
        ..SandboxConfig::default()
    })
    .await
    .expect("sandbox starts")
}

async fn session(http: &reqwest::Client, sb: &Sandbox, secret: &str) -> reqwest::Response {
    http.post(format!("{}/api/hiecm/gateway/v3/sessions", sb.url()))
        .json(&json!({"clientId": DEFAULT_CLIENT_ID, "clientSecret": secret}))
        .send()
        .await
        .expect("session call")
}

async fn lookup(http: &reqwest::Client, sb: &Sandbox, token: &str) -> reqwest::Response {
    let abha = sb.state().population().abha(1);
    http.get(format!(
        "{}/abha/api/v3/profile/benefit/abha/{}",
        sb.url(),
        abha.expose()
    ))
    .bearer_auth(token)
    .header("REQUEST-ID", uuid::Uuid::new_v4().to_string())
    .header(
        "TIMESTAMP",
        chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string(),
    )
    .send()
    .await
    .expect("lookup call")
}

async fn token(http: &reqwest::Client, sb: &Sandbox) -> String {
    let v: Value = session(http, sb, DEFAULT_CLIENT_SECRET)
        .await
        .json()
        .await
        .expect("session body");
    v["accessToken"].as_str().expect("token").to_string()
}

#[tokio::test]
async fn a_changed_client_secret_refuses_sessions_and_revokes_tokens_until_restored() {
    let sb = start(Faults::default()).await;
    let http = reqwest::Client::new();
    let t = token(&http, &sb).await;
    assert_eq!(lookup(&http, &sb, &t).await.status(), 200);

    let put = |secret: &str| {
        http.put(format!("{}/sandbox/client-secret", sb.url()))
            .json(&json!({ "clientSecret": secret }))
            .send()
    };
    assert_eq!(put("rotated").await.unwrap().status(), 200);
    assert_eq!(lookup(&http, &sb, &t).await.status(), 401, "token revoked");
    assert_eq!(
        session(&http, &sb, DEFAULT_CLIENT_SECRET).await.status(),
        401
    );
    assert_eq!(session(&http, &sb, "rotated").await.status(), 200);
    assert_eq!(put("").await.unwrap().status(), 400);

    assert_eq!(put(DEFAULT_CLIENT_SECRET).await.unwrap().status(), 200);
    let t = token(&http, &sb).await;
    assert_eq!(lookup(&http, &sb, &t).await.status(), 200);
    sb.shutdown().await;
}

#[tokio::test]
async fn the_timeline_counts_requests_and_answers_per_second() {
    let sb = start(Faults {
        rate_limit: 2.0,
        ..Faults::default()
    })
    .await;
    let http = reqwest::Client::new();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let t = token(&http, &sb).await;
    let mut throttled = 0;
    for _ in 0..6 {
        if lookup(&http, &sb, &t).await.status() == 429 {
            throttled += 1;
        }
    }
    assert!(
        throttled >= 1,
        "the limit of 2/s throttles some of 6 quick calls"
    );
    let v: Value = http
        .get(format!("{}/sandbox/timeline?since={started}", sb.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seconds = v["seconds"].as_array().expect("seconds");
    let total = |field: &str, key: &str| -> u64 {
        seconds
            .iter()
            .map(|s| s[field][key].as_u64().unwrap_or(0))
            .sum()
    };
    assert_eq!(
        total("received", "api"),
        6,
        "throttled requests are received too"
    );
    assert_eq!(total("received", "session"), 1);
    assert_eq!(total("session_answers", "ok"), 1);
    assert_eq!(total("answers", "ABDM-1022"), throttled);
    assert!(seconds.iter().all(|s| s["t"].as_u64().unwrap() >= started));
    // The call log's totals agree.
    let calls: Value = http
        .get(format!("{}/sandbox/calls", sb.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(calls["received"]["api"], 6);
    assert_eq!(calls["session_answers"]["ok"], 1);
    assert!(calls["answers"].get("900901").is_none());
    // Nothing after "now".
    let later: Value = http
        .get(format!(
            "{}/sandbox/timeline?since={}",
            sb.url(),
            started + 3600
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(later["seconds"].as_array().unwrap().is_empty());
    sb.shutdown().await;
}

//! Helpers of the programme API's tests that start `serve`'s router with chosen settings.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use abha_bulk::api::{ApiSettings, ApiState, Guards, app};
use serde_json::Value;

use super::{BENEFIT, TestEnv};

/// A running API.
pub struct Api {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// Its address.
    pub addr: SocketAddr,
    /// The server task.
    pub task: tokio::task::JoinHandle<()>,
    /// Its guards (tests read the upload slots in use).
    pub guards: std::sync::Arc<Guards>,
}

/// Starts the API on loopback with `settings`, spooling into the test's folder.
pub async fn start(env: &TestEnv, settings: ApiSettings) -> Api {
    let guards = Guards::new(&settings);
    let state = ApiState {
        store: env.store.clone(),
        served: vec![],
        max_upload: 1 << 20,
        read_timeout: Duration::from_secs(10),
        spool: env.dir.path().to_path_buf(),
        priorities: Default::default(),
        guards: guards.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app(state)).await.unwrap();
    });
    Api {
        base: format!("http://{addr}"),
        addr,
        task,
        guards,
    }
}

/// A client whose connections come from `ip` (any 127.0.0.0/8 address works on loopback).
pub fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A key of `BENEFIT` with `scopes`: its id and the key string.
pub async fn key(env: &TestEnv, scopes: &[&str]) -> (uuid::Uuid, String) {
    let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    let (k, secret) = env
        .store
        .create_api_key(None, &[BENEFIT.to_string()], &scopes, None)
        .await
        .unwrap();
    (k.id, secret)
}

/// Checks a problem document of `status`; returns it.
pub async fn problem(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status().as_u16(), status);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], status);
    v
}

/// The `Retry-After` seconds of an answer.
pub fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// A benefit-link CSV of the population's people in `range`.
pub fn links(env: &TestEnv, range: std::ops::Range<u64>) -> String {
    let pop = env.pop();
    let mut s = String::from("external_ref,abha_number\n");
    for i in range {
        s.push_str(&format!("L{i},{}\n", pop.abha(i).expose()));
    }
    s
}

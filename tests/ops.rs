//! Operations: what commands say when Postgres is unreachable or unmigrated or the key is
//! wrong; key rotation with `rekey`; ciphertexts bound to their row; X-tokens deleted once a
//! job is final; error chains printed without repeats.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use abha_bulk::jobs::kind::{Job, JobKind};
use abha_bulk::store::jobs::ExternalJob;
use abha_bulk::store::vault::Aad;
use abha_bulk::store::{Store, StoreError, Vault};
use common::TestEnv;
use sqlx::Row;
use sqlx::migrate::MigrateDatabase;

async fn connect(url: &str, vault: Vault) -> Result<Store, StoreError> {
    Store::connect_url(url, 2, Duration::from_secs(30), Arc::new(vault)).await
}

#[tokio::test]
async fn postgres_on_a_closed_port_fails_within_seconds_naming_host_and_setting() {
    let started = Instant::now();
    let e = connect(
        "postgres://postgres:hunter2@127.0.0.1:1/abha_bulk",
        Vault::from_bytes(&[7; 32]),
    )
    .await
    .unwrap_err();
    let text = format!("{:#}", anyhow::Error::from(e));
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert!(text.contains("127.0.0.1:1/abha_bulk"), "{text}");
    assert!(text.contains("database.url"), "{text}");
    assert!(
        !text.contains("hunter2") && !text.contains("pool timed out"),
        "{text}"
    );
}

#[tokio::test]
async fn an_unmigrated_database_says_run_migrate() {
    let env = TestEnv::new().await;
    let mut url = reqwest::Url::parse(&env.db_url).unwrap();
    url.set_path(&format!("{}_bare", url.path()));
    sqlx::Postgres::create_database(url.as_str()).await.unwrap();
    let e = connect(url.as_str(), Vault::from_bytes(&[7; 32]))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("run `abha-bulk migrate`"), "{e}");
    sqlx::Postgres::force_drop_database(url.as_str())
        .await
        .unwrap();
    env.cleanup().await;
}

async fn payloads(store: &Store) -> Vec<(i64, Vec<u8>, Vec<u8>, Vec<u8>)> {
    sqlx::query("SELECT id, dedup_hash, payload, subject_hash FROM jobs ORDER BY id")
        .fetch_all(&store.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

#[tokio::test]
async fn a_wrong_key_is_refused_and_rekey_rotates_online() {
    let env = TestEnv::new().await;
    env.submit_links("k", 0..30).await;
    // One value as written before the versioned header existed.
    let rows = payloads(&env.store).await;
    let (id0, dedup0, payload0, _) = &rows[0];
    let plain = env
        .store
        .vault
        .decrypt(payload0, Aad::JobPayload(dedup0))
        .unwrap();
    sqlx::query("UPDATE jobs SET payload = $2 WHERE id = $1")
        .bind(id0)
        .bind(env.store.vault.encrypt_legacy(&plain))
        .execute(&env.store.pool)
        .await
        .unwrap();

    let e = connect(&env.db_url, Vault::from_bytes(&[9; 32]))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("`pii.key`") && e.contains("rekey"), "{e}");

    let rotating = connect(
        &env.db_url,
        Vault::from_bytes(&[9; 32]).with_previous(&[7; 32]),
    )
    .await
    .expect("the stored key is a previous key: a rotation in progress");
    let mut seen = Vec::new();
    let p = rotating.rekey(7, |p| seen.push(p.scanned)).await.unwrap();
    assert!(p.complete(), "{p:?}");
    assert_eq!((p.total, p.scanned, p.rewritten), (30, 30, 30));
    assert_eq!(seen.last(), Some(&30));
    assert!(seen.len() >= 5, "progress after every chunk: {seen:?}");
    let again = rotating.rekey(100, |_| {}).await.unwrap();
    assert_eq!(again.rewritten, 0, "a second run has nothing to do");
    rotating.pool.close().await;

    let new = connect(&env.db_url, Vault::from_bytes(&[9; 32]))
        .await
        .expect("the new key alone now matches");
    for (id, dedup, payload, subject) in payloads(&new).await {
        assert!(new.vault.is_current(&payload));
        let job = new
            .decrypt_job(id, JobKind::BenefitLink, &dedup, &payload)
            .unwrap();
        assert_eq!(dedup, new.vault.hash(&job.dedup_key()), "hash recomputed");
        assert_eq!(subject, new.vault.hash(&job.subject()));
    }
    new.pool.close().await;
    let e = connect(&env.db_url, Vault::from_bytes(&[7; 32]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pii.key"),
        "the old key is refused after rekey: {e}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_payload_moved_to_another_row_does_not_decrypt() {
    let env = TestEnv::new().await;
    env.submit_links("m", 0..2).await;
    let rows = payloads(&env.store).await;
    let (a, b) = (&rows[0], &rows[1]);
    assert!(
        env.store
            .decrypt_job(a.0, JobKind::BenefitLink, &a.1, &b.2)
            .is_err()
    );
    assert!(
        env.store
            .decrypt_job(a.0, JobKind::BenefitLink, &a.1, &a.2)
            .is_ok()
    );
    env.cleanup().await;
}

#[tokio::test]
async fn finished_child_create_jobs_lose_the_parents_x_token() {
    let env = TestEnv::new().await;
    let job = |name: &str| {
        let fields = [
            ("parent_x_token", "sbx1.token-of-the-parent"),
            ("parent_abha_number", "91-1234-5678-9012"),
            ("child_name", name),
            ("child_dob", "05-03-2019"),
            ("child_gender", "F"),
        ];
        Job::from_fields(
            JobKind::ChildCreate,
            |k| fields.iter().find(|(f, _)| *f == k).map(|(_, v)| *v),
            chrono::Utc::now().date_naive(),
        )
        .unwrap()
    };
    let mut ids = Vec::new();
    for (key, name) in [
        ("c-1", "Asha Devi"),
        ("c-2", "Meena Kumari"),
        ("c-3", "Ravi Kumar"),
    ] {
        let j = job(name);
        let id = env
            .store
            .upsert_external(
                JobKind::ChildCreate,
                ExternalJob {
                    idempotency_key: key,
                    benefit: common::BENEFIT,
                    external_ref: None,
                    job: &j,
                },
            )
            .await
            .unwrap();
        ids.push(id);
    }
    let set = |id: i64, state: &'static str, ago_secs: f64| {
        let pool = env.store.pool.clone();
        async move {
            sqlx::query(
                "UPDATE jobs SET state = $2, finished_at = now() - make_interval(secs => $3) WHERE id = $1",
            )
            .bind(id)
            .bind(state)
            .bind(ago_secs)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    // Succeeded: at once. Failed a minute ago: kept (retry-failed may still use it). Queued: kept.
    set(ids[0], "succeeded", 0.0).await;
    set(ids[1], "failed", 60.0).await;
    let holding = || async {
        let mut out = Vec::new();
        for (id, dedup, payload, _) in payloads(&env.store).await {
            let plain = env
                .store
                .vault
                .decrypt(&payload, Aad::JobPayload(&dedup))
                .unwrap();
            if String::from_utf8(plain)
                .unwrap()
                .contains("token-of-the-parent")
            {
                out.push(id);
            }
        }
        out
    };
    assert_eq!(env.store.delete_final_tokens(100).await.unwrap(), 1);
    assert_eq!(env.store.delete_final_tokens(100).await.unwrap(), 0);
    assert_eq!(holding().await, vec![ids[1], ids[2]]);
    // Failed longer ago than the grace period: deleted too.
    set(ids[1], "failed", 7200.0).await;
    assert_eq!(env.store.delete_final_tokens(100).await.unwrap(), 1);
    assert_eq!(holding().await, vec![ids[2]]);
    env.cleanup().await;
}

#[tokio::test]
async fn readyz_reuses_its_last_check_and_opens_no_connection_per_probe() {
    let env = TestEnv::new().await;
    // A client whose session request always fails: every uncached probe would ask again.
    let mut abdm = abha_bulk::sandbox::settings_for_sandbox(&env.sandbox.url());
    abdm.client_secret = abha_bulk::config::SecretString::from("wrong");
    let client = Arc::new(abha_bulk::abdm::AbdmClient::new(&abdm).unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let addr = abha_bulk::http::serve(
        "127.0.0.1:0",
        abha_bulk::http::Readiness {
            store: env.store.clone(),
            client,
            amqp_url: env.amqp_url.clone(),
            breaker: None,
        },
        stop.clone(),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let before = env
        .sandbox
        .state()
        .call_log()
        .requests
        .get("session")
        .copied();
    let started = Instant::now();
    for _ in 0..5 {
        let r = http
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        let body = r.text().await.unwrap();
        assert!(
            body.contains("abdm_session down") && body.contains("postgres ok"),
            "{body}"
        );
    }
    assert!(started.elapsed() < abha_bulk::http::READY_CACHE);
    let after = env
        .sandbox
        .state()
        .call_log()
        .requests
        .get("session")
        .copied();
    assert_eq!(
        after.unwrap_or(0) - before.unwrap_or(0),
        1,
        "five probes within the cache time: one session request"
    );
    stop.cancel();
    env.cleanup().await;
}

/// The binary, with nothing but `vars` in its environment.
fn bin(args: &[&str], vars: &[(&str, &str)]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_abha-bulk"))
        .args(args)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ABHA_BULK_CONFIG_DIR", dir.path().join("none"))
        .envs(vars.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn commands_fail_fast_and_clearly_without_a_key_or_a_database() {
    let o = bin(&["config"], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("pii.key"), "{err}");

    let key = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
    let started = Instant::now();
    let o = bin(
        &["status"],
        &[
            ("ABHA_BULK__PII__KEY", key),
            (
                "ABHA_BULK__DATABASE__URL",
                "postgres://postgres@127.0.0.1:1/abha_bulk",
            ),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(started.elapsed() < Duration::from_secs(6));
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("127.0.0.1:1") && err.contains("database.url"),
        "{err}"
    );
    assert_eq!(
        err.matches("Connection refused").count(),
        1,
        "said once: {err}"
    );

    let o = bin(
        &["tour", "--abha", "91-1234-5678-9012"],
        &[("ABHA_BULK__PII__KEY", key)],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("unexpected argument '--abha'"),
        "identifiers are no arguments: {err}"
    );
}

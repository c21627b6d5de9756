//! `rekey` after a `pii.key` rotation rewrites every encrypted column (the test enumerates
//! them, and every bytea column of the schema, so a new encrypted column without `rekey`
//! coverage fails it), after which everything, webhook deliveries included, works with the new
//! key alone; the X-token sweep flags only what it rewrote.

mod common;

use std::sync::Arc;
use std::time::Duration;

use abha_bulk::jobs::kind::{Job, JobKind};
use abha_bulk::store::Store;
use abha_bulk::store::Vault;
use abha_bulk::store::jobs::ExternalJob;
use abha_bulk::store::vault::{Aad, ENCRYPTED_COLUMNS};
use common::TestEnv;
use common::keys::{NEW, connect, link_jobs, new_pod};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

/// Bytea columns that hold no ciphertext: keyed hashes, SHA-256 digests, key check values.
const NOT_ENCRYPTED: &[(&str, &str)] = &[
    ("jobs", "subject_hash"),
    ("jobs", "dedup_hash"),
    ("pii_key_check", "check_value"),
    ("pii_keys", "check_value"),
    ("api_keys", "secret_sha256"),
    ("console_sessions", "id_sha256"),
    ("api_idempotency", "fingerprint"),
    ("reconcile_runs", "roster_sha256"),
    ("reconcile_rows", "subject_hash"),
    ("_sqlx_migrations", "checksum"),
];

/// Every value of an encrypted column, with its associated data, decrypts with `store`'s keys.
async fn check_column(store: &Store, table: &str, column: &str) -> usize {
    let rows = match (table, column) {
        ("jobs", "payload") => {
            sqlx::query("SELECT id, dedup_hash, payload FROM jobs WHERE erased_at IS NULL")
        }
        ("jobs", "result") => sqlx::query(
            "SELECT id, dedup_hash, result FROM jobs WHERE result IS NOT NULL AND erased_at IS NULL",
        ),
        ("api_keys", "webhook_secret") => sqlx::query(
            "SELECT id, NULL::bytea, webhook_secret FROM api_keys WHERE webhook_secret IS NOT NULL",
        ),
        _ => panic!("{table}.{column} is encrypted but this test cannot check it: add it here"),
    }
    .fetch_all(&store.pool)
    .await
    .unwrap();
    for r in &rows {
        let blob: Vec<u8> = r.get(2);
        let plain = match column {
            "payload" => {
                let dedup: Vec<u8> = r.get(1);
                store.vault.decrypt(&blob, Aad::JobPayload(&dedup))
            }
            "result" => store.vault.decrypt(&blob, Aad::JobResult(r.get(0))),
            _ => store.vault.decrypt(&blob, Aad::WebhookSecret(r.get(0))),
        };
        assert!(plain.is_ok(), "{table}.{column}: {plain:?}");
        assert!(store.vault.is_current(&blob), "{table}.{column} rewritten");
    }
    rows.len()
}

#[tokio::test]
async fn rekey_covers_every_encrypted_column_and_webhooks_work_with_the_new_key_alone() {
    let env = TestEnv::new().await;
    // Every bytea column is either encrypted (and listed) or known not to be.
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = 'public' AND data_type = 'bytea' ORDER BY 1, 2",
    )
    .fetch_all(&env.store.pool)
    .await
    .unwrap();
    for (t, c) in &columns {
        let tc = (t.as_str(), c.as_str());
        assert!(
            ENCRYPTED_COLUMNS.contains(&tc) || NOT_ENCRYPTED.contains(&tc),
            "{t}.{c}: a new bytea column; if it holds ciphertexts, add it to \
             vault::ENCRYPTED_COLUMNS and to rekey"
        );
    }
    // Values under the old key in every encrypted column.
    let ids = link_jobs(&env, &env.store, 0..5).await;
    for id in &ids[..2] {
        sqlx::query("UPDATE jobs SET result = $2 WHERE id = $1")
            .bind(id)
            .bind(
                env.store
                    .vault
                    .encrypt(b"{\"x\":\"1\"}", Aad::JobResult(*id)),
            )
            .execute(&env.store.pool)
            .await
            .unwrap();
    }
    let got: Arc<tokio::sync::Mutex<u32>> = Arc::default();
    let url = {
        let got = got.clone();
        let app = axum::Router::new().fallback(move || {
            let got = got.clone();
            async move {
                *got.lock().await += 1;
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    };
    let (k, _) = env
        .store
        .create_api_key(None, &[common::BENEFIT.into()], &["read".into()], None)
        .await
        .unwrap();
    env.store.set_webhook(k.id, &url).await.unwrap();
    for (t, c) in ENCRYPTED_COLUMNS {
        assert!(check_column(&env.store, t, c).await > 0, "{t}.{c} seeded");
    }

    let rotating = new_pod(&env).await;
    let mut tables = Vec::new();
    let p = rotating.rekey(2, |p| tables.push(p.table)).await.unwrap();
    assert!(p.complete(), "{p:?}");
    assert_eq!(
        (p.total, p.rewritten),
        (6, 6),
        "5 jobs and 1 webhook secret"
    );
    assert!(
        tables.contains(&"api_keys") && tables.len() >= 4,
        "{tables:?}"
    );
    rotating.pool.close().await;

    // The previous key removed: every value of every encrypted column decrypts.
    let new = connect(&env, Vault::from_bytes(&NEW))
        .await
        .expect("the new key alone matches after rekey");
    for (t, c) in ENCRYPTED_COLUMNS {
        assert!(
            check_column(&new, t, c).await > 0,
            "{t}.{c} has no value to check"
        );
    }
    // And a webhook goes out, signed with the secret read under the new key.
    let b = env.new_link_batch(None).await;
    sqlx::query("UPDATE batches SET state = 'finished', finished_at = now() WHERE id = $1")
        .bind(b)
        .execute(&new.pool)
        .await
        .unwrap();
    new.set_batch_key(b, k.id).await.unwrap();
    let stop = CancellationToken::new();
    let sender = tokio::spawn(abha_bulk::api::webhooks::run(
        new.clone(),
        common::test_webhooks(),
        stop.clone(),
    ));
    let mut delivered = false;
    for _ in 0..100 {
        delivered = sqlx::query_scalar::<_, bool>(
            "SELECT count(*) > 0 FROM webhook_deliveries WHERE key_id = $1 AND delivered_at IS NOT NULL",
        )
        .bind(k.id)
        .fetch_one(&new.pool)
        .await
        .unwrap();
        if delivered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let _ = sender.await;
    assert!(
        delivered && *got.lock().await >= 1,
        "the webhook was delivered"
    );
    env.cleanup().await;
}

/// A finished child-create job (its own child name, so its own `dedup_hash`).
async fn child_job(store: &Store, key: &str, name: &str) -> i64 {
    let fields = [
        ("parent_x_token", "sbx1.token-of-the-parent"),
        ("parent_abha_number", "91-1234-5678-9012"),
        ("child_name", name),
        ("child_dob", "05-03-2019"),
        ("child_gender", "F"),
    ];
    let job = Job::from_fields(
        JobKind::ChildCreate,
        |k| fields.iter().find(|(f, _)| *f == k).map(|(_, v)| *v),
        chrono::Utc::now().date_naive(),
    )
    .unwrap();
    let ext = ExternalJob {
        idempotency_key: key,
        benefit: common::BENEFIT,
        external_ref: None,
        job: &job,
    };
    let id = store
        .upsert_external(JobKind::ChildCreate, ext)
        .await
        .unwrap();
    sqlx::query("UPDATE jobs SET state = 'succeeded', finished_at = now() WHERE id = $1")
        .bind(id)
        .execute(&store.pool)
        .await
        .unwrap();
    id
}

async fn flagged(store: &Store, id: i64) -> bool {
    sqlx::query_scalar("SELECT token_deleted FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&store.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_token_sweep_flags_only_what_it_rewrote() {
    let env = TestEnv::new().await;
    let corrupt = child_job(&env.store, "c-1", "Asha Devi").await;
    let good = child_job(&env.store, "c-2", "Meena Kumari").await;
    // A payload that fails under a key this process holds (another row's value).
    sqlx::query("UPDATE jobs SET payload = (SELECT payload FROM jobs WHERE id = $2) WHERE id = $1")
        .bind(corrupt)
        .bind(good)
        .execute(&env.store.pool)
        .await
        .unwrap();
    // One row a call: the unreadable row is skipped, unflagged, and does not block the next.
    assert_eq!(env.store.delete_final_tokens(1).await.unwrap(), 0);
    assert_eq!(env.store.delete_final_tokens(1).await.unwrap(), 1);
    assert_eq!(env.store.delete_final_tokens(1).await.unwrap(), 0);
    assert!(
        !flagged(&env.store, corrupt).await,
        "not rewritten, not flagged"
    );
    assert!(flagged(&env.store, good).await);

    // A row under a newer key: not flagged, and this process goes stale.
    let new = new_pod(&env).await;
    let newer = child_job(&new, "c-3", "Ravi Kumar").await;
    assert_eq!(env.store.delete_final_tokens(100).await.unwrap(), 0);
    assert!(!flagged(&env.store, newer).await);
    assert!(env.store.key_stale());
    // Stale: the housekeeping sweep skips, even a row it could read (written under the old
    // key by a process that holds the newest key only as a previous key; a stale process
    // itself writes no identifiers).
    let old_writer = connect(
        &env,
        Vault::from_bytes(&common::keys::OLD).with_previous(&NEW),
    )
    .await
    .unwrap();
    let readable = child_job(&old_writer, "c-4", "Sita Ram").await;
    abha_bulk::relay::housekeeping::round(&env.store).await;
    assert!(!flagged(&env.store, readable).await);
    // The up-to-date process deletes both.
    assert_eq!(new.delete_final_tokens(100).await.unwrap(), 2);
    assert!(flagged(&new, newer).await && flagged(&new, readable).await);
    assert!(!flagged(&new, corrupt).await);
    env.cleanup().await;
}

/// A reconciliation matches roster rows to the service's links by lookup hash, so none runs
/// while the hashes are under two keys: it refuses during a rotation; `rekey` refuses while
/// one is in progress and abandons the older unfinished ones (their rows hold old hashes).
#[tokio::test]
async fn reconciliation_and_rekey_never_overlap_a_rotation() {
    let env = TestEnv::new().await;
    let running = env
        .store
        .start_or_resume_reconcile(common::BENEFIT, "roster.csv", b"sha-a", false)
        .await
        .unwrap();
    let old = env
        .store
        .start_or_resume_reconcile("COVIN", "roster.csv", b"sha-b", false)
        .await
        .unwrap();
    sqlx::query("UPDATE reconcile_runs SET progress_at = now() - interval '3 hours', started_at = now() - interval '3 hours' WHERE id = $1")
        .bind(old.id)
        .execute(&env.store.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO reconcile_rows (run_id, subject_hash, first_row) VALUES ($1, '\\x01', 1)",
    )
    .bind(old.id)
    .execute(&env.store.pool)
    .await
    .unwrap();

    // A rotation starts: a reconciliation now refuses, naming what to do.
    let new = new_pod(&env).await;
    link_jobs(&env, &new, 0..2).await;
    let e = new
        .start_or_resume_reconcile(common::BENEFIT, "roster.csv", b"sha-c", false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rotation is in progress") && e.contains("rekey"),
        "{e}"
    );

    // rekey refuses while the recent run is unfinished, and names it.
    let e = new.rekey(100, |_| {}).await.unwrap_err().to_string();
    assert!(e.contains(&running.id.to_string()), "{e}");
    sqlx::query("UPDATE reconcile_runs SET finished_at = now() WHERE id = $1")
        .bind(running.id)
        .execute(&env.store.pool)
        .await
        .unwrap();
    // Then it runs, abandons the old unfinished run and drops its rows.
    assert!(new.rekey(100, |_| {}).await.unwrap().complete());
    let (abandoned, rows): (bool, i64) = sqlx::query_as(
        "SELECT abandoned_at IS NOT NULL, (SELECT count(*) FROM reconcile_rows WHERE run_id = $1)
         FROM reconcile_runs WHERE id = $1",
    )
    .bind(old.id)
    .fetch_one(&env.store.pool)
    .await
    .unwrap();
    assert_eq!((abandoned, rows), (true, 0));
    // Rotation complete: reconciliations start again.
    new.start_or_resume_reconcile(common::BENEFIT, "roster.csv", b"sha-c", false)
        .await
        .unwrap();
    env.cleanup().await;
}

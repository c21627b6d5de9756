//! Two key sets on one database, as two pods of a rolling `pii.key` deploy would have
//! (tests/key_rotation*.rs).

use std::time::Duration;

use abha_bulk::jobs::kind::{Job, JobKind};
use abha_bulk::store::jobs::ExternalJob;
use abha_bulk::store::{Store, StoreError, Vault};

use super::TestEnv;

pub const OLD: [u8; 32] = [7; 32];
pub const NEW: [u8; 32] = [9; 32];

pub async fn connect(env: &TestEnv, vault: Vault) -> Result<Store, StoreError> {
    Store::connect_url(
        &env.db_url,
        3,
        Duration::from_secs(30),
        std::sync::Arc::new(vault),
    )
    .await
}

/// A pod rolled out with the new key (the old one still decrypts).
pub async fn new_pod(env: &TestEnv) -> Store {
    connect(env, Vault::from_bytes(&NEW).with_previous(&OLD))
        .await
        .expect("a rotation starts: the recorded key is a previous key")
}

/// Queue jobs written by `store` (so under its `pii.key`): one benefit link per person.
pub async fn link_jobs(env: &TestEnv, store: &Store, people: std::ops::Range<u64>) -> Vec<i64> {
    let pop = env.pop();
    let mut ids = Vec::new();
    for i in people {
        let abha = pop.abha(i).expose().to_string();
        let job = Job::from_fields(
            JobKind::BenefitLink,
            |k| (k == "abha_number").then_some(abha.as_str()),
            chrono::Utc::now().date_naive(),
        )
        .unwrap();
        let key = format!("rot-{i}");
        let ext = ExternalJob {
            idempotency_key: &key,
            benefit: super::BENEFIT,
            external_ref: None,
            job: &job,
        };
        ids.push(
            store
                .upsert_external(JobKind::BenefitLink, ext)
                .await
                .unwrap(),
        );
    }
    ids
}

pub async fn job_row(store: &Store, id: i64) -> (String, i32, Option<String>) {
    sqlx::query_as("SELECT state, attempts, last_code FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&store.pool)
        .await
        .unwrap()
}

//! Erasure on request against real Postgres (issue 19): scoping across two programmes, a
//! request during a running batch, and a full `pg_dump` afterwards in which no ciphertext
//! decrypts to an identifier of the people erased.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use abha_bulk::jobs::kind::JobKind;
use abha_bulk::lifecycle::erase::{self, EraseOptions, EraseProgress};
use abha_bulk::store::Vault;
use abha_bulk::store::erasure::ErasureRequest;
use abha_bulk::store::vault::Aad;
use abha_bulk::submit::{SubmitRequest, submit};
use common::{BENEFIT, PipelineOpts, TestEnv, by_ref};
use sqlx::Row;
use uuid::Uuid;

const OTHER: &str = "OTHER-PROG";

/// Submits benefit-link rows of `benefit` for people `people` (external refs `<prefix><i>`).
async fn links_of(env: &TestEnv, benefit: &str, prefix: &str, people: &[u64]) -> Uuid {
    let pop = env.pop();
    let rows: Vec<Vec<String>> = people
        .iter()
        .map(|i| vec![format!("{prefix}{i}"), pop.abha(*i).expose().to_string()])
        .collect();
    let path = env.write_csv(
        &format!("{prefix}.csv"),
        &["external_ref", "abha_number"],
        &rows,
    );
    submit(
        &env.store,
        &SubmitRequest {
            path,
            kind: JobKind::BenefitLink,
            benefit: benefit.into(),
            force: true,
            priority: Default::default(),
        },
        Arc::new(()),
    )
    .await
    .expect("submit")
    .batch
}

fn request(env: &TestEnv, file: &str, scope: Option<&str>) -> ErasureRequest {
    let hashes = erase::parse_identifiers(file, &env.store.vault).expect("identifiers");
    erase::request(
        hashes,
        scope.map(|s| vec![s.to_string()]),
        "test".into(),
        Some("dpo".into()),
        "data principal asked (s.12)",
    )
    .unwrap()
}

async fn run(env: &TestEnv, req: &ErasureRequest) -> EraseProgress {
    let opts = EraseOptions {
        chunk: 13,
        wait: Duration::from_secs(60),
        poll: Duration::from_millis(50),
    };
    erase::run(&env.store, req, opts, |_| {}).await.unwrap()
}

/// (state, erased, payload bytes, has result) of the row with `external_ref`.
async fn row(env: &TestEnv, batch: Uuid, r: &str) -> (String, bool, i32, bool) {
    let r = sqlx::query(
        "SELECT state, erased_at IS NOT NULL, length(payload), result IS NOT NULL FROM jobs
         WHERE batch_id = $1 AND external_ref = $2",
    )
    .bind(batch)
    .bind(r)
    .fetch_one(&env.store.pool)
    .await
    .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_crosses_programmes_only_within_its_scope() {
    let env = TestEnv::new().await;
    env.warm_up().await;
    let pop = env.pop();
    // Person 1 is in both programmes, person 2 only in the first.
    let here = links_of(&env, BENEFIT, "h", &[1, 2, 3]).await;
    let p = env.start(PipelineOpts::default());
    env.wait_until_done(&[here]).await;
    p.stop().await;
    // The other programme's batch has not run yet.
    let there = links_of(&env, OTHER, "t", &[1, 4]).await;
    let file = format!("# DPDP request 17\n{}\n", pop.abha(1).expose());

    // Scoped to the other programme: only its row, cancelled before it ran.
    let first = run(&env, &request(&env, &file, Some(OTHER))).await;
    assert_eq!((first.erased, first.cancelled, first.waiting), (1, 1, 0));
    assert_eq!(
        row(&env, there, "t1").await,
        ("cancelled".into(), true, 0, false)
    );
    assert!(!row(&env, there, "t4").await.1);
    let h1 = row(&env, here, "h1").await;
    assert!(h1.0 == "succeeded" && !h1.1 && h1.2 > 0 && h1.3, "{h1:?}");

    // Unscoped (the CLI's default): the first programme's row too; nobody else's.
    let second = run(&env, &request(&env, &file, None)).await;
    assert_eq!((second.erased, second.cancelled), (1, 0));
    assert_eq!(
        row(&env, here, "h1").await,
        ("succeeded".into(), true, 0, false)
    );
    assert!(!row(&env, here, "h2").await.1 && !row(&env, here, "h3").await.1);

    // Idempotent: the same request again finds nothing left.
    let again = run(&env, &request(&env, &file, None)).await;
    assert_eq!((again.erased, again.cancelled), (0, 0));

    // Recorded without the identifier or its hash: who, why, where, how many.
    let log: Vec<(Option<Uuid>, i64, Option<i32>, String)> = sqlx::query_as(
        "SELECT batch_id, jobs_erased, subjects, reason FROM erasure_log WHERE kind = 'request' ORDER BY id",
    )
    .fetch_all(&env.store.pool)
    .await
    .unwrap();
    assert!(log.contains(&(Some(there), 1, None, "data principal asked (s.12)".into())));
    assert!(log.contains(&(Some(here), 1, None, "data principal asked (s.12)".into())));
    assert_eq!(log.iter().filter(|l| l.0.is_none()).count(), 3, "{log:?}");
    let dump: String = sqlx::query_scalar("SELECT string_agg(e::text, '|') FROM erasure_log e")
        .fetch_one(&env.store.pool)
        .await
        .unwrap();
    let hash_hex: String = env
        .store
        .vault
        .hash(pop.abha(1).expose())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!dump.contains(&pop.abha(1).digits()) && !dump.contains(&hash_hex));

    // The cancelled row never runs afterwards, and the rest of its batch does.
    let p = env.start(PipelineOpts::default());
    env.wait_until_done(&[there]).await;
    p.stop().await;
    assert_eq!(row(&env, there, "t1").await.0, "cancelled");
    let attempts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE j.batch_id = $1 AND j.external_ref = 't1'",
    )
    .bind(there)
    .fetch_one(&env.store.pool)
    .await
    .unwrap();
    assert_eq!(attempts, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_row_is_erased_only_once_it_finished() {
    let env = TestEnv::new().await;
    let pop = env.pop();
    let batch = links_of(&env, BENEFIT, "r", &[5, 6]).await;
    // A worker is calling ABDM for person 5 right now (lease held).
    let id: i64 = sqlx::query_scalar(
        "UPDATE jobs SET state = 'running', lease_owner = 'w1', lease_until = now() + interval '1 hour',
                attempts = 1 WHERE batch_id = $1 AND external_ref = 'r5' RETURNING id",
    )
    .bind(batch)
    .fetch_one(&env.store.pool)
    .await
    .unwrap();
    let req = request(&env, &format!("{}\n", pop.abha(5).expose()), None);
    let store = env.store.clone();
    let task = tokio::spawn(async move {
        let opts = EraseOptions {
            chunk: 1000,
            wait: Duration::from_secs(60),
            poll: Duration::from_millis(50),
        };
        erase::run(&store, &req, opts, |_| {}).await.unwrap()
    });
    // While it runs, the row is untouched: not half-erased under the worker.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!task.is_finished());
    let r5 = row(&env, batch, "r5").await;
    assert!(r5.0 == "running" && !r5.1 && r5.2 > 0, "{r5:?}");
    // The worker finishes and writes a result (as a found ABHA would be).
    let result = env
        .store
        .vault
        .encrypt(b"91-0000-0000-0005", Aad::JobResult(id));
    sqlx::query(
        "UPDATE jobs SET state = 'succeeded', result = $2, lease_owner = NULL, lease_until = NULL,
                finished_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(&result)
    .execute(&env.store.pool)
    .await
    .unwrap();
    let p = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the request ends once the row finished")
        .unwrap();
    assert_eq!((p.erased, p.cancelled, p.waiting), (1, 0, 0));
    assert_eq!(
        row(&env, batch, "r5").await,
        ("succeeded".into(), true, 0, false)
    );
    assert!(!row(&env, batch, "r6").await.1);

    // And during a real run: the person's row is either cancelled before it ran or erased
    // after; no ABDM call is made for it after the erasure.
    env.warm_up().await;
    let people: Vec<u64> = (100..160).collect();
    let live = links_of(&env, BENEFIT, "l", &people).await;
    env.set_faults(abha_bulk::sandbox::Faults {
        latency_ms: 20,
        ..common::no_faults()
    });
    let pl = env.start(PipelineOpts::default());
    env.wait_for(&[live], "some rows done", |c| c.get("succeeded") >= 5)
        .await;
    let file: String = [159u64, 158, 100]
        .iter()
        .map(|i| format!("{}\n", pop.abha(*i).expose()))
        .collect();
    let done = run(&env, &request(&env, &file, Some(BENEFIT))).await;
    env.wait_until_done(&[live]).await;
    pl.stop().await;
    assert_eq!(done.erased, 3, "{done:?}");
    for r in ["l159", "l158", "l100"] {
        let (state, erased, bytes, result) = row(&env, live, r).await;
        assert!(erased && bytes == 0 && !result, "{r}: {state}");
        assert!(state == "cancelled" || state == "succeeded", "{r}: {state}");
        let late: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM attempts a JOIN jobs j ON j.id = a.job_id
             WHERE j.batch_id = $1 AND j.external_ref = $2 AND a.created_at > j.erased_at",
        )
        .bind(live)
        .bind(r)
        .fetch_one(&env.store.pool)
        .await
        .unwrap();
        assert_eq!(late, 0, "{r} ran after its erasure");
    }
    env.cleanup().await;
}

/// A dumped job: (id, dedup_hash, payload, result).
type DumpedJob = (i64, Vec<u8>, Vec<u8>, Option<Vec<u8>>);

/// Every `jobs` row of a `pg_dump`, decoded from COPY text.
fn dumped_jobs(dump: &str) -> Vec<DumpedJob> {
    let mut lines = dump.lines();
    let header = lines
        .by_ref()
        .find(|l| l.starts_with("COPY public.jobs "))
        .expect("the dump holds the jobs table");
    let cols: Vec<&str> = header["COPY public.jobs (".len()..header.find(") FROM").unwrap()]
        .split(", ")
        .collect();
    let at = |name: &str| cols.iter().position(|c| *c == name).unwrap();
    let (id, dedup, payload, result) = (at("id"), at("dedup_hash"), at("payload"), at("result"));
    let bytea = |cell: &str| -> Option<Vec<u8>> {
        let hex = cell.strip_prefix("\\\\x")?;
        Some(
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect(),
        )
    };
    lines
        .take_while(|l| *l != "\\.")
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (
                f[id].parse().unwrap(),
                bytea(f[dedup]).unwrap(),
                bytea(f[payload]).unwrap(),
                bytea(f[result]),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_pg_dump_after_erasure_decrypts_to_nothing_about_the_people_erased() {
    let env = TestEnv::new().await;
    env.warm_up().await;
    let pop = env.pop();
    let links = env.submit_links("k", 0..40).await;
    let finds: Vec<Vec<String>> = (0..40u64)
        .map(|i| vec![format!("f{i}"), pop.mobile(i).expose().to_string()])
        .collect();
    let finds = env
        .submit_rows(JobKind::AbhaFind, &["external_ref", "mobile"], &finds)
        .await
        .batch;
    let p = env.start(PipelineOpts::default());
    env.wait_until_done(&[links, finds]).await;
    p.stop().await;
    // People 0..10 ask for erasure, by ABHA number for their links and mobile for the finds.
    let file: String = (0..10u64)
        .map(|i| {
            format!(
                "abha:{}\nmobile:{}\n",
                pop.abha(i).expose(),
                pop.mobile(i).expose()
            )
        })
        .collect();
    let done = run(&env, &request(&env, &file, None)).await;
    assert_eq!(done.erased, 20, "{done:?}");

    let out = std::process::Command::new("pg_dump")
        .arg("--no-owner")
        .arg(&env.db_url)
        .output()
        .expect("pg_dump runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = String::from_utf8(out.stdout).unwrap();
    let erased: Vec<String> = (0..10u64)
        .flat_map(|i| {
            [
                pop.abha(i).expose().to_string(),
                pop.abha(i).digits(),
                pop.mobile(i).expose().to_string(),
                pop.aadhaar(i).expose().to_string(),
            ]
        })
        .collect();
    let kept: Vec<String> = (10..40u64)
        .flat_map(|i| {
            [
                pop.abha(i).expose().to_string(),
                pop.mobile(i).expose().to_string(),
            ]
        })
        .collect();
    for id in &erased {
        assert!(
            !dump.contains(id.as_str()),
            "an erased identifier in clear in the dump"
        );
    }
    // Decrypt every ciphertext of the dump with the configured key.
    let vault: &Vault = &env.store.vault;
    let rows = dumped_jobs(&dump);
    assert_eq!(rows.len(), 80);
    let mut plain = Vec::new();
    let mut empty = 0;
    for (id, dedup, payload, result) in &rows {
        if payload.is_empty() {
            empty += 1;
        } else {
            plain.push(
                String::from_utf8(
                    vault
                        .decrypt(payload, Aad::JobPayload(dedup))
                        .expect("every payload decrypts"),
                )
                .unwrap(),
            );
        }
        if let Some(r) = result {
            plain.push(
                String::from_utf8(
                    vault
                        .decrypt(r, Aad::JobResult(*id))
                        .expect("every result decrypts"),
                )
                .unwrap(),
            );
        }
    }
    assert_eq!(empty, 20);
    let all = plain.join("\n");
    for id in &erased {
        assert!(
            !all.contains(id.as_str()),
            "an erased identifier decrypts from the dump"
        );
    }
    // The check can fail: the people kept are all there.
    let found: HashSet<&String> = kept.iter().filter(|k| all.contains(k.as_str())).collect();
    assert_eq!(found.len(), kept.len());
    // The report of the finds says erased where the ABHA numbers found are gone.
    let (_, report) = env.report(finds, None).await;
    assert_eq!(by_ref(&report, "f3")["result_revealed"], "erased");
    assert_eq!(by_ref(&report, "f13")["result_revealed"], "");
    env.cleanup().await;
}

/// `abha-bulk erase` as an operator runs it: a malformed file is refused naming the line, a
/// good one erases; neither its output nor its logs (at debug) hold an identifier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_erase_command_names_a_bad_line_and_prints_no_identifier() {
    let env = TestEnv::new().await;
    let pop = env.pop();
    let batch = links_of(&env, BENEFIT, "c", &[7, 8]).await;
    let mut url = reqwest::Url::parse(&env.db_url).unwrap();
    let password = url.password().unwrap_or("").to_string();
    url.set_password(None).unwrap();
    let run = |file: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_abha-bulk"))
            .args([
                "erase",
                file.to_str().unwrap(),
                "--reason",
                "DPDP request 9",
            ])
            .current_dir(env.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ABHA_BULK_CONFIG_DIR", env.dir.path().join("no-config"))
            .env("ABHA_BULK__DATABASE__URL", url.to_string())
            .env("ABHA_BULK__DATABASE__PASSWORD", &password)
            .env(
                "ABHA_BULK__PII__KEY",
                "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",
            )
            .env("ABHA_BULK__TELEMETRY__LOG_FILTER", "debug")
            .output()
            .expect("abha-bulk runs")
    };
    let abha = pop.abha(7).expose().to_string();
    let bad = env.write_file("bad.txt", &format!("{abha}\n98765\n"));
    let out = run(&bad);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success());
    assert!(
        text.contains("line 2:") && text.contains("nothing was erased"),
        "{text}"
    );
    assert!(!text.contains("98765") && !text.contains(&abha), "{text}");
    assert!(!row(&env, batch, "c7").await.1);

    let good = env.write_file("good.txt", &format!("identifier\n{abha}\n"));
    let out = run(&good);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("done: 1 rows erased, 1 of them cancelled"),
        "{text}"
    );
    assert!(
        !text.contains(&abha) && !text.contains(&pop.abha(7).digits()),
        "{text}"
    );
    assert!(row(&env, batch, "c7").await.1 && !row(&env, batch, "c8").await.1);
    env.cleanup().await;
}

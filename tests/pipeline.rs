//! End to end: CSV → Postgres → outbox relay → RabbitMQ → worker → ABDM sandbox → outcome,
//! against the real Postgres and RabbitMQ, one database, topology and sandbox per test.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use abha_bulk::jobs::kind::JobKind;
use abha_bulk::pii::format_date;
use abha_bulk::queue::publish::REJECT_REASON_HEADER;
use abha_bulk::sandbox::Faults;
use abha_bulk::submit::SubmitError;
use chrono::{NaiveDate, Utc};
use common::{BENEFIT, PipelineOpts, TestEnv, by_ref, no_faults, s};
use sqlx::Row;

const BENEFICIARY: &[&str] = &["external_ref", "abha_number", "aadhaar"];
const LOOKUP: &[&str] = &["external_ref", "abha_number"];
const CHILD_CREATE: &[&str] = &[
    "external_ref",
    "parent_x_token",
    "parent_abha_number",
    "child_name",
    "child_dob",
    "child_gender",
];

fn ymd(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).expect("valid date")
}

fn x_token_exp() -> i64 {
    Utc::now().timestamp() + 3600
}

/// An ABHA number nobody in the population owns.
fn unknown_abha(env: &TestEnv, k: u64) -> abha_bulk::pii::AbhaNumber {
    let pop = env.pop();
    pop.abha(pop.size() + 5_000_000 + k)
}

fn assert_row(rows: &[HashMap<String, String>], r: &str, state: &str, outcome: &str, code: &str) {
    let row = by_ref(rows, r);
    assert_eq!(
        (
            row["state"].as_str(),
            row["outcome"].as_str(),
            row["abdm_code"].as_str()
        ),
        (state, outcome, code),
        "row {r}: {row:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_reaches_the_right_terminal_states() {
    let env = TestEnv::new().await;
    let pop = env.pop();
    let st = env.sandbox.state();
    let p = |i: u64| pop.person(i);
    let exp = x_token_exp();

    // Seeded state: a link to find, a link already there, links to undo (one already undone).
    st.set_linked(BENEFIT, &p(2).abha.digits(), true);
    st.set_linked(BENEFIT, &p(12).abha.digits(), true);
    st.set_linked(BENEFIT, &p(20).abha.digits(), true);
    st.set_linked(BENEFIT, &p(21).abha.digits(), false);
    let child_dob = ymd(2019, 6, 15);
    let seeded_child = st.seed_child(&p(50).abha, "Baby Demo", child_dob, "F");

    let pipeline = env.start(PipelineOpts::default());
    let mut batches = Vec::new();
    let mut submit = async |kind: JobKind, header: &[&str], rows: Vec<Vec<String>>| {
        let sum = env.submit_rows(kind, header, &rows).await;
        assert_eq!(sum.accepted as usize, rows.len(), "{kind}: {sum:?}");
        batches.push(sum.batch);
        sum.batch
    };
    let search = submit(
        JobKind::BenefitSearch,
        BENEFICIARY,
        vec![
            vec![s("S-not-linked"), s(p(0).abha.expose()), s("")],
            vec![s("S-by-aadhaar"), s(""), s(p(1).aadhaar.expose())],
            vec![s("S-found"), s(p(2).abha.expose()), s("")],
            vec![s("S-unknown"), s(unknown_abha(&env, 1).expose()), s("")],
        ],
    )
    .await;
    let lookup = submit(
        JobKind::BenefitLookup,
        LOOKUP,
        vec![
            vec![s("L-known"), s(p(3).abha.expose())],
            vec![s("L-unknown"), s(unknown_abha(&env, 2).expose())],
        ],
    )
    .await;
    let link = submit(
        JobKind::BenefitLink,
        BENEFICIARY,
        vec![
            vec![s("K-abha"), s(p(10).abha.expose()), s("")],
            vec![s("K-aadhaar"), s(""), s(p(11).aadhaar.expose())],
            vec![s("K-already"), s(p(12).abha.expose()), s("")],
            vec![s("K-unknown"), s(unknown_abha(&env, 3).expose()), s("")],
        ],
    )
    .await;
    let delink = submit(
        JobKind::BenefitDelink,
        BENEFICIARY,
        vec![
            vec![s("D-linked"), s(p(20).abha.expose()), s("")],
            vec![s("D-already"), s(p(21).abha.expose()), s("")],
        ],
    )
    .await;
    let new_mobile = pop.mobile(pop.size() + 30);
    let profile = submit(
        JobKind::ProfileUpdate,
        &["external_ref", "abha_number", "mobile", "account_status"],
        vec![vec![
            s("P-mobile"),
            s(p(30).abha.expose()),
            s(new_mobile.expose()),
            s("ACTIVE"),
        ]],
    )
    .await;
    let child_create = submit(
        JobKind::ChildCreate,
        CHILD_CREATE,
        vec![vec![
            s("C-new"),
            pop.x_token(&p(40).abha, exp),
            s(p(40).abha.expose()),
            s("Asha Sharma"),
            format_date(ymd(2020, 3, 5)),
            s("F"),
        ]],
    )
    .await;
    let child_update = submit(
        JobKind::ChildUpdate,
        &["external_ref", "abha_number", "name", "dob", "gender"],
        vec![vec![
            s("U-child"),
            s(seeded_child.expose()),
            s("Baby Anu"),
            format_date(child_dob),
            s("F"),
        ]],
    )
    .await;
    let find = submit(
        JobKind::AbhaFind,
        &["external_ref", "mobile"],
        vec![vec![s("F-mobile"), s(p(60).mobile.expose())]],
    )
    .await;
    let demo_row = |r: &str, aadhaar: &str, who: &abha_bulk::sandbox::Person| {
        vec![
            s(r),
            s(aadhaar),
            s(who.name.expose()),
            format_date(who.birth_date),
            s(who.gender.as_str()),
            who.state_code.clone(),
            who.district_code.clone(),
        ]
    };
    let demo = submit(
        JobKind::AbhaCreateDemo,
        &[
            "external_ref",
            "aadhaar",
            "name",
            "dob",
            "gender",
            "state_code",
            "district_code",
        ],
        vec![
            demo_row("A-new", pop.unknown_aadhaar(1).expose(), &p(70)),
            demo_row("A-existing", p(71).aadhaar.expose(), &p(71)),
        ],
    )
    .await;

    env.wait_until_done(&batches).await;
    pipeline.stop().await;

    let expect = [
        (search, 3, 1),
        (lookup, 1, 1),
        (link, 3, 1),
        (delink, 2, 0),
        (profile, 1, 0),
        (child_create, 1, 0),
        (child_update, 1, 0),
        (find, 1, 0),
        (demo, 2, 0),
    ];
    for (batch, succeeded, failed) in expect {
        let c = env.counts(batch).await;
        assert_eq!(
            (c.get("succeeded"), c.get("failed"), c.total()),
            (succeeded, failed, succeeded + failed),
            "batch {batch}: {:?}",
            c.0
        );
    }

    let (_, rows) = env.report(search, None).await;
    assert_row(&rows, "S-not-linked", "succeeded", "not_linked", "");
    assert_row(&rows, "S-by-aadhaar", "succeeded", "not_linked", "");
    assert_row(&rows, "S-found", "succeeded", "found", "");
    assert_row(&rows, "S-unknown", "failed", "", "ABDM-1114");
    let (_, rows) = env.report(lookup, None).await;
    assert_row(&rows, "L-known", "succeeded", "not_linked", "");
    assert_row(&rows, "L-unknown", "failed", "", "ABDM-1114");
    let (_, rows) = env.report(link, None).await;
    assert_row(&rows, "K-abha", "succeeded", "linked", "");
    assert_row(&rows, "K-aadhaar", "succeeded", "linked", "");
    assert_row(
        &rows,
        "K-already",
        "succeeded",
        "already_linked",
        "ABDM-1140",
    );
    assert_row(&rows, "K-unknown", "failed", "", "ABDM-1114");
    let (_, rows) = env.report(delink, None).await;
    assert_row(&rows, "D-linked", "succeeded", "delinked", "");
    assert_row(
        &rows,
        "D-already",
        "succeeded",
        "already_delinked",
        "ABDM-1138",
    );
    let (_, rows) = env.report(profile, None).await;
    assert_row(&rows, "P-mobile", "succeeded", "updated", "");
    let (_, rows) = env.report(child_create, None).await;
    assert_row(&rows, "C-new", "succeeded", "created", "");
    assert!(by_ref(&rows, "C-new")["result"].starts_with("child ABHA XX-"));
    let (_, rows) = env.report(child_update, None).await;
    assert_row(&rows, "U-child", "succeeded", "updated", "");
    let (_, rows) = env.report(find, None).await;
    assert_row(&rows, "F-mobile", "succeeded", "found", "");
    assert_eq!(
        by_ref(&rows, "F-mobile")["result"],
        format!("1 ABHA(s): {}", p(60).abha.masked())
    );
    let (_, rows) = env.report(demo, None).await;
    assert_row(&rows, "A-new", "succeeded", "created", "");
    assert_row(&rows, "A-existing", "succeeded", "existing", "");

    // The sandbox's view: every side effect once, the idempotent answers none.
    let log = st.call_log();
    assert!(
        log.duplicate_side_effects.is_empty(),
        "{:?}",
        log.duplicate_side_effects
    );
    assert_eq!(st.side_effect_count("link", &p(10).abha.digits()), 1);
    assert_eq!(st.side_effect_count("link", &p(11).abha.digits()), 1);
    assert_eq!(st.side_effect_count("link", &p(12).abha.digits()), 0);
    assert!(st.is_linked(BENEFIT, &p(10).abha.digits()));
    assert!(st.is_linked(BENEFIT, &p(11).abha.digits()));
    assert_eq!(st.side_effect_count("delink", &p(20).abha.digits()), 1);
    assert_eq!(st.side_effect_count("delink", &p(21).abha.digits()), 0);
    assert!(!st.is_linked(BENEFIT, &p(20).abha.digits()));
    assert_eq!(
        st.side_effect_count("profile_update", &p(30).abha.digits()),
        1
    );
    assert_eq!(
        st.side_effect_count(
            "child_create",
            &format!(
                "{}|Asha Sharma|{}",
                p(40).abha.digits(),
                format_date(ymd(2020, 3, 5))
            )
        ),
        1
    );
    assert_eq!(
        st.side_effect_count("child_update", &seeded_child.digits()),
        1
    );
    assert_eq!(
        st.side_effect_count("demo_auth_create", pop.unknown_aadhaar(1).expose()),
        1
    );
    assert_eq!(
        st.side_effect_count("demo_auth_create", p(71).aadhaar.expose()),
        0
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_loses_nothing_and_does_nothing_twice() {
    let env = TestEnv::new().await;
    let pop = env.pop();
    let st = env.sandbox.state();
    let exp = x_token_exp();
    // A third of the links are already there (ABDM-1140 on the first try).
    let link_rows: Vec<Vec<String>> = (100..160u64)
        .map(|i| {
            if i % 3 == 0 {
                st.set_linked(BENEFIT, &pop.abha(i).digits(), true);
            }
            vec![format!("K-{i}"), s(pop.abha(i).expose()), s("")]
        })
        .collect();
    // Two children for each of 15 parents.
    let mut children = Vec::new();
    let child_rows: Vec<Vec<String>> = (200..215u64)
        .flat_map(|i| {
            let parent = pop.abha(i);
            let token = pop.x_token(&parent, exp);
            (0..2u32)
                .map(|k| {
                    let name = ["Anu Rao", "Bala Rao"][k as usize];
                    let dob = ymd(2018 + k as i32, 1 + (i % 12) as u32, 10);
                    children.push(format!("{}|{name}|{}", parent.digits(), format_date(dob)));
                    vec![
                        format!("C-{i}-{k}"),
                        token.clone(),
                        s(parent.expose()),
                        s(name),
                        format_date(dob),
                        s("F"),
                    ]
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let link = env
        .submit_rows(JobKind::BenefitLink, BENEFICIARY, &link_rows)
        .await;
    let child = env
        .submit_rows(JobKind::ChildCreate, CHILD_CREATE, &child_rows)
        .await;
    let batches = [link.batch, child.batch];
    let accepted = (link.accepted + child.accepted) as i64;
    assert_eq!(accepted, 90);

    // Slow answers keep jobs in flight; some answers are lost after the side effect.
    env.set_faults(Faults {
        latency_ms: 150,
        timeout_percent: 10.0,
        drop_percent: 10.0,
        ..no_faults()
    });
    let opts = PipelineOpts {
        lease: Duration::from_secs(4),
        ..PipelineOpts::default()
    };
    let first = env.start(PipelineOpts {
        worker_id: "worker-a".into(),
        ..opts.clone()
    });
    let at_kill = env
        .wait_for(&batches, "some jobs done", |c| c.done() >= 15)
        .await;
    first.kill().await;
    assert!(
        at_kill.open() > 0,
        "the worker must die mid-batch: {:?}",
        at_kill.0
    );
    let second = env.start(PipelineOpts {
        worker_id: "worker-b".into(),
        ..opts
    });
    env.wait_until_done(&batches).await;
    second.stop().await;

    // Every accepted row has exactly one final state: succeeded.
    let c = env.counts(link.batch).await;
    assert_eq!((c.get("succeeded"), c.total()), (60, 60), "{:?}", c.0);
    let c = env.counts(child.batch).await;
    assert_eq!((c.get("succeeded"), c.total()), (30, 30), "{:?}", c.0);
    for (batch, n) in [(link.batch, 60), (child.batch, 30)] {
        let (_, rows) = env.report(batch, None).await;
        assert_eq!(rows.len(), n);
        let numbers: BTreeSet<&str> = rows.iter().map(|r| r["row"].as_str()).collect();
        assert_eq!(numbers.len(), n, "one line per row");
        assert!(rows.iter().all(|r| r["state"] == "succeeded"), "{rows:#?}");
    }

    // Faults happened, and nothing was done twice.
    let log = st.call_log();
    assert!(
        log.faults.get("timeout").copied().unwrap_or(0)
            + log.faults.get("drop").copied().unwrap_or(0)
            > 0,
        "{:?}",
        log.faults
    );
    assert!(
        log.duplicate_side_effects.is_empty(),
        "{:?}",
        log.duplicate_side_effects
    );
    for i in 100..160u64 {
        let digits = pop.abha(i).digits();
        let n = st.side_effect_count("link", &digits);
        assert!(n <= 1, "ABHA index {i} linked {n} times");
        assert_eq!(n, u64::from(i % 3 != 0), "ABHA index {i}");
        assert!(st.is_linked(BENEFIT, &digits));
    }
    for c in &children {
        assert_eq!(st.side_effect_count("child_create", c), 1, "child {c}");
    }
    // Retried child creations looked for the child before creating it again.
    assert!(
        log.requests.get("child_list").copied().unwrap_or(0) > 0,
        "no child creation was retried: {:?}",
        log.requests
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_exhaustion_ends_in_dead_with_the_last_abdm_code() {
    let env = TestEnv::new().await;
    let pop = env.pop();
    env.warm_up().await;
    env.set_faults(Faults {
        error_5xx_percent: 100.0,
        ..no_faults()
    });
    let sum = env
        .submit_rows(
            JobKind::BenefitLookup,
            LOOKUP,
            &[
                vec![s("R-1"), s(pop.abha(1).expose())],
                vec![s("R-2"), s(pop.abha(2).expose())],
            ],
        )
        .await;
    let pipeline = env.start(PipelineOpts {
        max_attempts: 3,
        ..PipelineOpts::default()
    });
    env.wait_until_done(&[sum.batch]).await;
    pipeline.stop().await;

    let c = env.counts(sum.batch).await;
    assert_eq!((c.get("dead"), c.total()), (2, 2), "{:?}", c.0);
    let (_, rows) = env.report(sum.batch, None).await;
    for r in ["R-1", "R-2"] {
        let row = by_ref(&rows, r);
        assert_eq!(row["state"], "dead", "{row:?}");
        assert_eq!(row["abdm_code"], "ABDM-9999", "{row:?}");
        assert_eq!(row["attempts"], "3", "{row:?}");
    }
    let per_job = sqlx::query(
        "SELECT j.id, j.attempts, j.last_code, count(a.id) AS n,
                array_agg(a.job_attempt ORDER BY a.job_attempt) AS tries,
                bool_and(a.code = 'ABDM-9999' AND a.operation = 'benefit_lookup') AS all_5xx
         FROM jobs j JOIN attempts a ON a.job_id = j.id WHERE j.batch_id = $1 GROUP BY j.id",
    )
    .bind(sum.batch)
    .fetch_all(&env.store.pool)
    .await
    .expect("attempts");
    assert_eq!(per_job.len(), 2);
    for r in per_job {
        assert_eq!(r.get::<i32, _>("attempts"), 3);
        assert_eq!(
            r.get::<Option<String>, _>("last_code").as_deref(),
            Some("ABDM-9999")
        );
        assert_eq!(r.get::<i64, _>("n"), 3);
        assert_eq!(r.get::<Vec<i32>, _>("tries"), vec![1, 2, 3]);
        assert!(r.get::<bool, _>("all_5xx"));
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_and_slows_down() {
    let env = TestEnv::new().await;
    let pop = env.pop();
    env.set_faults(Faults {
        rate_limit: 20.0,
        retry_after_secs: 1,
        ..no_faults()
    });
    let rows: Vec<Vec<String>> = (0..80u64)
        .map(|i| vec![format!("T-{i}"), s(pop.abha(i).expose())])
        .collect();
    let sum = env.submit_rows(JobKind::BenefitLookup, LOOKUP, &rows).await;
    let pipeline = env.start(PipelineOpts {
        rate: 200.0,
        burst: 20,
        max_attempts: 30,
        ..PipelineOpts::default()
    });
    env.wait_until_done(&[sum.batch]).await;
    let rate = pipeline.limiter.current_rate();
    let configured = pipeline.limiter.configured_rate();
    pipeline.stop().await;

    let c = env.counts(sum.batch).await;
    assert_eq!((c.get("succeeded"), c.total()), (80, 80), "{:?}", c.0);
    let throttled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM attempts a JOIN jobs j ON j.id = a.job_id
         WHERE j.batch_id = $1 AND a.code = 'ABDM-1022' AND a.disposition = 'throttled'",
    )
    .bind(sum.batch)
    .fetch_one(&env.store.pool)
    .await
    .expect("attempts");
    assert!(throttled > 0, "no attempt was throttled");
    assert!(
        env.sandbox
            .state()
            .call_log()
            .answers
            .get("ABDM-1022")
            .copied()
            .unwrap_or(0)
            > 0
    );
    assert!(
        rate < configured,
        "the effective rate ({rate}) must have dropped below the configured {configured}"
    );
    env.cleanup().await;
}

/// Reads up to `n` messages from the dead-letter queue (waiting up to 60 s for them).
async fn dead_letters(env: &TestEnv, n: usize) -> Vec<(String, String)> {
    use lapin::options::BasicGetOptions;
    let conn = abha_bulk::queue::connect(&env.amqp_url)
        .await
        .expect("RabbitMQ");
    let ch = conn.create_channel().await.expect("channel");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while out.len() < n {
        let got = ch
            .basic_get(
                env.topology.dead_letter_queue.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic_get");
        match got {
            Some(m) => {
                let body = String::from_utf8_lossy(&m.delivery.data).to_string();
                let reason = m
                    .delivery
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get(REJECT_REASON_HEADER).cloned())
                    .map(|v| match v {
                        lapin::types::AMQPValue::LongString(s) => s.to_string(),
                        other => format!("{other:?}"),
                    })
                    .unwrap_or_default();
                out.push((body, reason));
            }
            None => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "only {} of {n} dead letters after 60 s: {out:#?}",
                    out.len()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let _ = conn.close(200, "read dead letters".into()).await;
    out
}

/// The id and state of the job of an external producer's idempotency key.
async fn external_jobs(env: &TestEnv, key: &str) -> Vec<(i64, String)> {
    sqlx::query("SELECT id, state FROM jobs WHERE idempotency_key = $1")
        .bind(key)
        .fetch_all(&env.store.pool)
        .await
        .expect("jobs")
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn wait_external_final(env: &TestEnv, key: &str) -> (i64, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let jobs = external_jobs(env, key).await;
        if let [(id, state)] = jobs.as_slice()
            && ["succeeded", "failed", "dead"].contains(&state.as_str())
        {
            return (*id, state.clone());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job {key} not final after 60 s: {jobs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn external_link(key: &str, abha: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "v": 1, "kind": "benefit-link", "idempotency_key": key, "benefit": BENEFIT,
        "external_ref": "x", "payload": {"abha_number": abha}
    }))
    .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_envelopes_go_to_the_dead_letter_queue_with_the_reason() {
    let env = TestEnv::new().await;
    let pop = env.pop();
    let pipeline = env.start(PipelineOpts::default());
    let (_conn, publisher) = env.publisher().await;
    // An Aadhaar whose check digit is wrong.
    let good = pop.aadhaar(5).expose().to_string();
    let last = good.as_bytes()[11] - b'0';
    let bad_aadhaar = format!("{}{}", &good[..11], (last + 1) % 10);
    let bad_payload = serde_json::json!({
        "v": 1, "kind": "benefit-link", "idempotency_key": "bad-1", "benefit": BENEFIT,
        "payload": {"aadhaar": bad_aadhaar}
    })
    .to_string();
    let cases: Vec<(&str, String, &str)> = vec![
        ("not json", s("this is not JSON"), "not a JSON envelope"),
        (
            "no v",
            s(r#"{"kind":"benefit-link","job_id":1}"#),
            "missing \"v\"",
        ),
        // Not a kind of any release (a kind this release does not know goes back to the queue
        // for a newer worker: tests/rolling_upgrade.rs).
        (
            "invalid kind",
            s(r#"{"v":1,"kind":"Tele port!","job_id":1}"#),
            "invalid kind",
        ),
        (
            "invalid payload",
            bad_payload.clone(),
            "invalid payload: aadhaar",
        ),
    ];
    for (_, body, _) in &cases {
        publisher
            .publish_raw("benefit-link", body.as_bytes())
            .await
            .expect("publish");
    }
    let got = dead_letters(&env, cases.len()).await;
    for (what, _, reason) in &cases {
        // The dead letter keeps the reason and the reference, not the message's identifiers.
        let (dead_body, header) = got
            .iter()
            .find(|(_, h)| h.contains(reason))
            .unwrap_or_else(|| panic!("{what}: not dead-lettered: {got:#?}"));
        assert!(
            dead_body.contains("\"redacted\":true"),
            "{what}: {dead_body}"
        );
        assert!(
            !dead_body.contains(&good[..11]),
            "{what}: the dead letter keeps the Aadhaar"
        );
        assert!(
            !header.contains(&bad_aadhaar),
            "{what}: reason leaks the Aadhaar"
        );
        assert!(
            !header.contains(&good[..11]),
            "{what}: reason leaks the Aadhaar"
        );
    }
    assert!(external_jobs(&env, "bad-1").await.is_empty());

    // The worker is still consuming: a valid job afterwards runs.
    publisher
        .publish_raw(
            "benefit-link",
            &external_link("good-1", pop.abha(6).expose()),
        )
        .await
        .expect("publish");
    let (_, state) = wait_external_final(&env, "good-1").await;
    assert_eq!(state, "succeeded");
    assert!(!pipeline.worker.is_finished());
    pipeline.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_producer_envelopes_run_once_per_idempotency_key() {
    let env = TestEnv::new().await;
    let pop = env.pop();
    let abha = pop.abha(7);
    let (_conn, publisher) = env.publisher().await;
    let body = external_link("k1", abha.expose());
    publisher
        .publish_raw("benefit-link", &body)
        .await
        .expect("publish");
    publisher
        .publish_raw("benefit-link", &body)
        .await
        .expect("publish");

    // Run until both messages were consumed and acked: after a graceful stop nothing may be
    // left in the queue (an unacked message would be back in it).
    let queue = env.topology.queue(JobKind::BenefitLink);
    let mut rounds = 0;
    loop {
        rounds += 1;
        let pipeline = env.start(PipelineOpts::default());
        let (_, state) = wait_external_final(&env, "k1").await;
        assert_eq!(state, "succeeded");
        pipeline.stop().await;
        if env.depth(&queue).await == 0 {
            break;
        }
        assert!(rounds < 5, "messages still queued after {rounds} runs");
    }
    let jobs = external_jobs(&env, "k1").await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].1, "succeeded");
    let st = env.sandbox.state();
    assert_eq!(st.side_effect_count("link", &abha.digits()), 1);
    assert_eq!(st.call_log().requests.get("link").copied(), Some(1));
    assert!(st.is_linked(BENEFIT, &abha.digits()));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_csvs_get_the_documented_messages_and_the_valid_rows_still_run() {
    let env = TestEnv::new().await;
    let pop = env.pop();

    // A missing required column refuses the file, naming it; nothing is created.
    let path = env.write_file("no-abha.csv", "external_ref,name\nR-1,Asha\n");
    match env.try_submit(JobKind::BenefitLookup, &path, false).await {
        Err(SubmitError::Ingest { source, .. }) => {
            let msg = source.to_string();
            assert!(
                msg.contains("lacks the required column(s) abha_number"),
                "{msg}"
            );
        }
        other => panic!("expected an ingest error, got {other:?}"),
    }
    assert!(
        env.store
            .list_batches(false, 10)
            .await
            .expect("batches")
            .is_empty()
    );

    // Some invalid rows: the valid ones are accepted and run.
    let a0 = pop.abha(0);
    let text = format!(
        "external_ref,abha_number\nV-1,{}\nBAD-1,91-1234-5678\nV-2,{}\nDUP-1,{}\nBAD-2,{},extra\n",
        a0.expose(),
        pop.abha(1).expose(),
        a0.digits(),
        pop.abha(2).expose()
    );
    let path = env.write_file("lookup.csv", &text);
    let sum = env.submit(JobKind::BenefitLookup, &path).await;
    assert_eq!(
        (sum.total, sum.accepted, sum.rejected, sum.duplicates),
        (5, 2, 2, 1),
        "{sum:?}"
    );
    let pipeline = env.start(PipelineOpts::default());
    env.wait_until_done(&[sum.batch]).await;
    let c = env.counts(sum.batch).await;
    assert_eq!((c.get("succeeded"), c.total()), (2, 2), "{:?}", c.0);
    let (_, rows) = env.report(sum.batch, None).await;
    let lines: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["row"].as_str(),
                r["external_ref"].as_str(),
                r["state"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            ("1", "V-1", "succeeded"),
            ("2", "BAD-1", "rejected"),
            ("3", "V-2", "succeeded"),
            ("4", "DUP-1", "duplicate"),
            ("5", "BAD-2", "rejected"),
        ]
    );
    let bad1 = by_ref(&rows, "BAD-1");
    assert_eq!(bad1["rejected_column"], "abha_number", "{bad1:?}");
    assert_eq!(bad1["abdm_code"], "", "{bad1:?}");
    assert!(bad1["message"].contains("must be 14 digits"), "{bad1:?}");
    assert!(!bad1["message"].contains("1234"), "{bad1:?}");
    let bad2 = by_ref(&rows, "BAD-2");
    assert_eq!(bad2["rejected_column"], "*", "{bad2:?}");
    assert!(
        bad2["message"].contains("row has 3 cells but the header has 2"),
        "{bad2:?}"
    );
    let dup = by_ref(&rows, "DUP-1");
    assert!(dup["message"].contains("duplicate of row 1"), "{dup:?}");

    // The same bytes again: refused, unless forced.
    match env.try_submit(JobKind::BenefitLookup, &path, false).await {
        Err(SubmitError::AlreadySubmitted { batch, .. }) => assert_eq!(batch, sum.batch),
        other => panic!("expected AlreadySubmitted, got {other:?}"),
    }
    let again = env
        .try_submit(JobKind::BenefitLookup, &path, true)
        .await
        .expect("forced submit");
    assert_ne!(again.batch, sum.batch);
    assert_eq!(
        (again.accepted, again.rejected, again.duplicates),
        (2, 2, 1)
    );
    env.wait_until_done(&[again.batch]).await;
    pipeline.stop().await;
    assert_eq!(env.counts(again.batch).await.get("succeeded"), 2);
    // Each distinct row ran once per batch: 2 + 2 lookups.
    assert_eq!(
        env.sandbox
            .state()
            .call_log()
            .requests
            .get("benefit_lookup")
            .copied(),
        Some(4)
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_and_retry_failed() {
    let env = TestEnv::new().await;
    let pop = env.pop();
    env.warm_up().await;
    let mut rows: Vec<Vec<String>> = (0..6u64)
        .map(|i| vec![format!("R-{i}"), s(pop.abha(i).expose()), s("")])
        .collect();
    rows[0][0] = s("=HYPERLINK(\"x\")");
    rows.push(vec![s("R-bad"), s("91-1234"), s("")]);
    rows.push(vec![s("R-dup"), pop.abha(1).digits(), s("")]);
    let sum = env
        .submit_rows(JobKind::BenefitLink, BENEFICIARY, &rows)
        .await;
    assert_eq!((sum.accepted, sum.rejected, sum.duplicates), (6, 1, 1));

    // Everything fails with 5xx and dies at once.
    env.set_faults(Faults {
        error_5xx_percent: 100.0,
        ..no_faults()
    });
    let pipeline = env.start(PipelineOpts {
        max_attempts: 1,
        ..PipelineOpts::default()
    });
    env.wait_until_done(&[sum.batch]).await;
    let c = env.counts(sum.batch).await;
    assert_eq!((c.get("dead"), c.total()), (6, 6), "{:?}", c.0);

    // A code that matches nothing re-queues nothing; ABDM-9999 re-queues exactly those.
    assert_eq!(
        env.store
            .retry_failed(sum.batch, Some("ABDM-1114"))
            .await
            .expect("retry"),
        0
    );
    env.set_faults(no_faults());
    assert_eq!(
        env.store
            .retry_failed(sum.batch, Some("ABDM-9999"))
            .await
            .expect("retry"),
        6
    );
    env.wait_until_done(&[sum.batch]).await;
    pipeline.stop().await;
    let c = env.counts(sum.batch).await;
    assert_eq!((c.get("succeeded"), c.total()), (6, 6), "{:?}", c.0);
    let st = env.sandbox.state();
    for i in 0..6u64 {
        assert_eq!(st.side_effect_count("link", &pop.abha(i).digits()), 1);
    }

    // The report: a line per input row, formula cells escaped, identifiers masked.
    let (text, lines) = env.report(sum.batch, None).await;
    assert_eq!(lines.len(), 8, "{lines:#?}");
    let states: Vec<&str> = lines.iter().map(|r| r["state"].as_str()).collect();
    assert_eq!(
        states,
        [
            "succeeded",
            "succeeded",
            "succeeded",
            "succeeded",
            "succeeded",
            "succeeded",
            "rejected",
            "duplicate"
        ]
    );
    assert_eq!(lines[0]["external_ref"], "'=HYPERLINK(\"x\")");
    for (i, line) in lines.iter().take(6).enumerate() {
        let abha = pop.abha(i as u64);
        assert_eq!(line["identifier"], abha.masked());
        assert_eq!(line["outcome"], "linked");
        assert_eq!(line["attempts"], "1");
        assert_eq!(line["result_revealed"], "");
    }
    for i in 0..6u64 {
        let abha = pop.abha(i);
        assert!(!text.contains(abha.expose()), "report shows ABHA {i}");
        assert!(!text.contains(&abha.digits()), "report shows ABHA {i}");
    }
    let audits: i64 = sqlx::query_scalar("SELECT count(*) FROM reveal_audit")
        .fetch_one(&env.store.pool)
        .await
        .expect("audit");
    assert_eq!(audits, 0);

    // --reveal: the results in clear, and an audit row.
    let (_, lines) = env
        .report(
            sum.batch,
            Some(abha_bulk::report::Reveal {
                os_user: "tester",
                operator: None,
                reason: "audit test",
            }),
        )
        .await;
    for (i, line) in lines.iter().take(6).enumerate() {
        assert_eq!(line["result_revealed"], pop.abha(i as u64).expose());
    }
    assert!(lines[6..].iter().all(|l| l["result_revealed"].is_empty()));
    let audit = sqlx::query("SELECT batch_id, revealed_by, reason, rows FROM reveal_audit")
        .fetch_all(&env.store.pool)
        .await
        .expect("audit");
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].get::<uuid::Uuid, _>(0), sum.batch);
    assert_eq!(audit[0].get::<String, _>(1), "tester");
    assert_eq!(
        audit[0].get::<Option<String>, _>(2).as_deref(),
        Some("audit test")
    );
    assert_eq!(audit[0].get::<i64, _>(3), 6);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_batch_never_reaches_abdm() {
    let env = TestEnv::new().await;
    let pop = env.pop();
    let rows: Vec<Vec<String>> = (0..10u64)
        .map(|i| vec![format!("X-{i}"), s(pop.abha(i).expose())])
        .collect();
    let sum = env.submit_rows(JobKind::BenefitLookup, LOOKUP, &rows).await;
    assert_eq!(env.store.cancel_batch(sum.batch).await.expect("cancel"), 10);

    // A later batch of another kind runs through the same pipeline: once it is done, the
    // relay and worker have had every chance to run the cancelled one.
    let pipeline = env.start(PipelineOpts::default());
    let later = env
        .submit_rows(
            JobKind::AbhaFind,
            &["external_ref", "mobile"],
            &[vec![s("F-1"), s(pop.mobile(1).expose())]],
        )
        .await;
    env.wait_until_done(&[later.batch]).await;
    pipeline.stop().await;
    assert_eq!(env.counts(later.batch).await.get("succeeded"), 1);
    let c = env.counts(sum.batch).await;
    assert_eq!((c.get("cancelled"), c.total()), (10, 10), "{:?}", c.0);
    let (_, lines) = env.report(sum.batch, None).await;
    assert_eq!(lines.len(), 10);
    assert!(
        lines
            .iter()
            .all(|l| l["state"] == "cancelled" && l["attempts"] == "0")
    );
    let requests = env.sandbox.state().call_log().requests;
    assert_eq!(requests.get("benefit_lookup"), None, "{requests:?}");
    assert_eq!(requests.get("abha_find").copied(), Some(1), "{requests:?}");
    let batch = env
        .store
        .batch(sum.batch)
        .await
        .expect("batch")
        .expect("exists");
    assert_eq!(batch.state, "cancelled");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_jobs_and_loses_nothing() {
    let env = TestEnv::new().await;
    let pop = env.pop();
    env.set_faults(Faults {
        latency_ms: 300,
        ..no_faults()
    });
    let rows: Vec<Vec<String>> = (0..40u64)
        .map(|i| vec![format!("G-{i}"), s(pop.abha(i).expose()), s("")])
        .collect();
    let sum = env
        .submit_rows(JobKind::BenefitLink, BENEFICIARY, &rows)
        .await;
    let grace = Duration::from_secs(10);
    let pipeline = env.start(PipelineOpts {
        grace,
        ..PipelineOpts::default()
    });
    let before = env
        .wait_for(&[sum.batch], "jobs in flight", |c| {
            c.done() >= 8 && c.get("running") > 0
        })
        .await;
    pipeline.stop.cancel();
    // The worker returns within the grace period (with a generous margin).
    tokio::time::timeout(grace + Duration::from_secs(20), pipeline.worker)
        .await
        .expect("the worker stops within the grace period")
        .expect("worker task");
    let _ = pipeline.relay.await;
    // In-flight jobs were finished, not abandoned: nothing is left running under a lease.
    let after = env.counts(sum.batch).await;
    assert_eq!(
        after.get("running"),
        0,
        "{:?} (before {:?})",
        after.0,
        before.0
    );
    assert!(after.open() > 0, "stopped mid-batch: {:?}", after.0);

    // A restarted pipeline finishes the rest; every job ran exactly once.
    let pipeline = env.start(PipelineOpts::default());
    env.wait_until_done(&[sum.batch]).await;
    pipeline.stop().await;
    let c = env.counts(sum.batch).await;
    assert_eq!((c.get("succeeded"), c.total()), (40, 40), "{:?}", c.0);
    let st = env.sandbox.state();
    assert_eq!(st.call_log().requests.get("link").copied(), Some(40));
    assert!(st.call_log().duplicate_side_effects.is_empty());
    for i in 0..40u64 {
        assert_eq!(st.side_effect_count("link", &pop.abha(i).digits()), 1);
    }
    env.cleanup().await;
}

/// A producer's envelope on its last delivery before the queue's limit (it kept crashing its
/// workers) is dead-lettered by the worker as a redacted summary, before RabbitMQ would
/// dead-letter it verbatim with its identifiers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_at_its_delivery_limit_is_dead_lettered_without_identifiers() {
    use lapin::options::BasicPublishOptions;
    use lapin::types::{AMQPValue, FieldTable};
    let env = TestEnv::new().await;
    let abha = env.pop().abha(9).expose().to_string();
    let conn = abha_bulk::queue::connect(&env.amqp_url).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut headers = FieldTable::default();
    headers.insert(
        "x-delivery-count".into(),
        AMQPValue::LongLongInt(i64::from(env.topology.delivery_limit) - 1),
    );
    ch.basic_publish(
        env.topology.exchange.as_str().into(),
        "benefit-link".into(),
        BasicPublishOptions::default(),
        &external_link("limit-1", &abha),
        lapin::BasicProperties::default().with_headers(headers),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let pipeline = env.start(PipelineOpts::default());
    let got = dead_letters(&env, 1).await;
    pipeline.stop().await;
    assert!(got[0].1.contains("delivery limit"), "{got:?}");
    assert!(
        !got[0].0.contains(&abha),
        "the identifier stays out: {}",
        got[0].0
    );
    assert!(external_jobs(&env, "limit-1").await.is_empty());
    let _ = conn.close(200, "done".into()).await;
    env.cleanup().await;
}

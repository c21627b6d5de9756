//! What a programme officer meets in the first week (issue 9): names in Indian scripts,
//! benefit names, the same rows in another file, report layout and output rules, reveal
//! audit, status rate and ETA, cancel, id prefixes, closed pipes. No worker runs here: jobs
//! are submitted, or their outcomes written directly, so each test is quick.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

use abha_bulk::jobs::kind::JobKind;
use abha_bulk::report::{ReportError, ReportTarget, Reveal, write_report};
use common::{BENEFIT, TestEnv, by_ref, s};
use sqlx::Row;
use uuid::Uuid;

/// The `abha-bulk` binary on the test's database.
fn cli(env: &TestEnv, args: &[&str], extra_env: &[(&str, &str)]) -> Command {
    env.cli(args, extra_env)
}

fn run(env: &TestEnv, args: &[&str]) -> Output {
    cli(env, args, &[]).output().expect("abha-bulk runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn batches(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM batches")
        .fetch_one(&env.store.pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn benefit_names_are_checked_where_they_enter() {
    let env = TestEnv::new().await;
    let file = env.write_file("f.csv", "abha_number\n91-1234-5678-9012\n");
    let f = file.to_str().unwrap();
    for (benefit, says) in [
        ("PMJAY\r\nX-Evil: 1", "a line break"),
        ("", "empty"),
        ("  ", "empty"),
        ("=HYPERLINK()", "start"),
    ] {
        let o = run(
            &env,
            &[
                "submit",
                f,
                "--kind",
                "benefit-lookup",
                "--benefit",
                benefit,
            ],
        );
        assert!(!o.status.success(), "{benefit:?} accepted");
        assert!(text(&o.stderr).contains(says), "{}", text(&o.stderr));
        let o = run(&env, &["reconcile", "--benefit", benefit, "--roster", f]);
        assert!(!o.status.success(), "reconcile {benefit:?} accepted");
    }
    // With the deployment's list: unknown names and a wrong case are refused.
    let served = [("ABHA_BULK__BENEFITS__SERVED", "[\"DEMO-BENEFIT\"]")];
    for (benefit, says) in [
        ("demo-benefit", "did you mean"),
        ("PMJAY", "does not serve"),
    ] {
        let o = cli(
            &env,
            &[
                "submit",
                f,
                "--kind",
                "benefit-lookup",
                "--benefit",
                benefit,
            ],
            &served,
        )
        .output()
        .unwrap();
        assert!(!o.status.success(), "{benefit:?} accepted");
        assert!(text(&o.stderr).contains(says), "{}", text(&o.stderr));
    }
    assert_eq!(batches(&env).await, 0, "a refused benefit created a batch");
    let o = cli(
        &env,
        &[
            "submit",
            f,
            "--kind",
            "benefit-lookup",
            "--benefit",
            BENEFIT,
        ],
        &served,
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    // A newline in an X-token is refused at validation.
    let tokens = env.write_file(
        "c.csv",
        "parent_x_token,child_name,child_dob,child_gender\n\"abc.def\nX-Evil: 1\",Asha Devi,05-03-2019,F\n",
    );
    let sum = env.submit(JobKind::ChildCreate, &tokens).await;
    assert_eq!((sum.accepted, sum.rejected), (0, 1));
    env.cleanup().await;
}

#[tokio::test]
async fn indian_names_nfc_duplicates_headers_and_report_columns() {
    let env = TestEnv::new().await;
    let aadhaar = |body: &str| format!("{body}{}", abha_bulk::pii::verhoeff::check_digit(body));
    let header = [
        "external_ref",
        "aadhaar",
        "name",
        "dob",
        "gender",
        "state_code",
        "district_code",
    ];
    let row = |r: &str, a: &str, name: &str, dob: &str| {
        vec![s(r), aadhaar(a), s(name), s(dob), s("F"), s("9"), s("143")]
    };
    let rows = vec![
        row("HI", "23456789012", "प्रिया शर्मा", "01-01-1990"),
        row("PA", "23456789013", "ਗੁਰਪ੍ਰੀਤ", "01-01-1990"),
        row("TA", "23456789014", "முருகன் செல்வம்", "01-01-1990"),
        row("KN", "23456789015", "ಕನ್ನಡ", "01-01-1990"),
        // The same person as HI with the name decomposed: a duplicate, run once.
        row("HI-NFD", "23456789012", "प्रिया शर्मा", "01-01-1990"),
        row("ZA-1", "23456789016", "गुरप्रीत सिंह \u{95B}ैल", "01-01-1990"),
        row(
            "ZA-2",
            "23456789016",
            "गुरप्रीत सिंह \u{91C}\u{93C}ैल",
            "01-01-1990",
        ),
        row("OLD", "23456789017", "Ravi Kumar", "31-12-1899"),
        row("DIGIT", "23456789018", "रवि१", "01-01-1990"),
    ];
    let sum = env
        .submit_rows(JobKind::AbhaCreateDemo, &header, &rows)
        .await;
    assert_eq!(
        (sum.accepted, sum.duplicates, sum.rejected),
        (5, 2, 2),
        "{sum:?}"
    );
    let (_, lines) = env.report(sum.batch, None).await;
    assert_eq!(by_ref(&lines, "HI-NFD")["state"], "duplicate");
    assert_eq!(by_ref(&lines, "ZA-2")["state"], "duplicate");
    let old = by_ref(&lines, "OLD");
    assert_eq!(old["rejected_column"], "dob");
    assert_eq!(old["abdm_code"], "");
    assert!(old["message"].contains("before 01-01-1900"), "{old:?}");
    assert_eq!(by_ref(&lines, "DIGIT")["rejected_column"], "name");

    // Header names in any case; an ABHA address and a number without 91 say what is wrong.
    let path = env.write_file(
        "lookup.csv",
        "External_Ref,AbHa_NuMbEr\r\nA,91-1234-5678-9012\r\nB,ravi.kumar@sbx\r\nC,12345678901234\r\n",
    );
    let sum = env.submit(JobKind::BenefitLookup, &path).await;
    assert_eq!((sum.accepted, sum.rejected), (1, 2));
    let (_, lines) = env.report(sum.batch, None).await;
    let b = by_ref(&lines, "B");
    assert_eq!(b["rejected_column"], "abha_number");
    assert!(b["message"].contains("ABHA addresses"), "{b:?}");
    assert!(!b["message"].contains("ravi"), "{b:?}");
    assert!(by_ref(&lines, "C")["message"].contains("start with 91"));
    env.cleanup().await;
}

#[tokio::test]
async fn the_same_rows_in_another_file_are_found() {
    let env = TestEnv::new().await;
    let pop = env.pop();
    let abha = |i: u64| pop.abha(i).expose().to_string();
    let first = env.write_file(
        "first.csv",
        &format!("abha_number\n{}\n{}\n{}\n", abha(1), abha(2), abha(3)),
    );
    let a = env.submit(JobKind::BenefitLink, &first).await;
    // Reordered, CRLF, digits without dashes, one new row: other bytes, same rows.
    let second = env.write_file(
        "second.csv",
        &format!(
            "abha_number\r\n{}\r\n{}\r\n{}\r\n{}\r\n",
            pop.abha(3).digits(),
            abha(4),
            abha(1),
            abha(2)
        ),
    );
    let b = env.submit(JobKind::BenefitLink, &second).await;
    let o = env
        .store
        .overlapping_batches(b.batch, "benefit-link", BENEFIT, b.accepted)
        .await
        .expect("overlap");
    assert_eq!(o.len(), 1, "{o:?}");
    assert_eq!((o[0].batch, o[0].rows, o[0].exact), (a.batch, 3, true));
    // Another kind or benefit is not an overlap.
    let other = env
        .store
        .overlapping_batches(b.batch, "benefit-link", "OTHER", b.accepted)
        .await
        .expect("overlap");
    assert!(other.is_empty());
    let delink = env.submit(JobKind::BenefitDelink, &first).await;
    let o = env
        .store
        .overlapping_batches(delink.batch, "benefit-delink", BENEFIT, delink.accepted)
        .await
        .expect("overlap");
    assert!(o.is_empty(), "{o:?}");

    // Larger than the sample: counted exactly up to 20 000 rows, estimated above.
    let many = |name: &str, range: std::ops::Range<u64>| {
        let mut text = String::from("abha_number\n");
        for i in range {
            text.push_str(pop.abha(i).expose());
            text.push('\n');
        }
        env.write_file(name, &text)
    };
    let c = env
        .submit(JobKind::BenefitLink, &many("c.csv", 100_000..102_500))
        .await;
    let d = env
        .submit(JobKind::BenefitLink, &many("d.csv", 101_250..103_750))
        .await;
    let o = env
        .store
        .overlapping_batches(d.batch, "benefit-link", BENEFIT, d.accepted)
        .await
        .unwrap();
    assert_eq!(o.len(), 1, "{o:?}");
    assert_eq!((o[0].batch, o[0].rows, o[0].exact), (c.batch, 1250, true));
    let e = env
        .submit(JobKind::BenefitLink, &many("e.csv", 200_000..225_000))
        .await;
    let f = env
        .submit(JobKind::BenefitLink, &many("f.csv", 212_500..237_500))
        .await;
    let o = env
        .store
        .overlapping_batches(f.batch, "benefit-link", BENEFIT, f.accepted)
        .await
        .unwrap();
    assert_eq!(o.len(), 1, "{o:?}");
    assert_eq!((o[0].batch, o[0].exact), (e.batch, false));
    assert!((10_000..15_000).contains(&o[0].rows), "{o:?}");

    // The command warns with the earlier batch and the count.
    let third = env.write_file("third.csv", &format!("abha_number\n{}\n", abha(2)));
    let out = run(
        &env,
        &[
            "submit",
            third.to_str().unwrap(),
            "--kind",
            "benefit-link",
            "--benefit",
            BENEFIT,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("1 of the 1 accepted row(s) were already submitted in batch"));
    assert!(err.contains(&a.batch.to_string()) || err.contains(&b.batch.to_string()));
    assert!(err.contains("abha-bulk cancel"), "{err}");
    env.cleanup().await;
}

/// A batch with `n` jobs of benefit-link, inserted directly.
async fn batch_with_jobs(env: &TestEnv, n: u64) -> Uuid {
    let pop = env.pop();
    let batch = env.new_link_batch(Some("x.csv")).await;
    let rows: Vec<_> = (0..n)
        .map(|i| {
            let job = abha_bulk::jobs::kind::Job::BenefitLink(
                abha_bulk::abdm::benefit::Beneficiary::Abha(pop.abha(i)),
            );
            env.store.prepare(i as i64 + 1, None, &job)
        })
        .collect();
    env.store
        .insert_jobs(batch, JobKind::BenefitLink, BENEFIT, &rows)
        .await
        .unwrap();
    env.store.finish_submit(batch, n, n, 0, 0).await.unwrap();
    sqlx::query("DELETE FROM outbox")
        .execute(&env.store.pool)
        .await
        .unwrap();
    batch
}

async fn exec(env: &TestEnv, sql: &str, batch: Uuid) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .bind(batch)
        .execute(&env.store.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn rate_eta_cancel_and_prefixes() {
    let env = TestEnv::new().await;
    // Finished in 20 s, long ago: its own average, not "the last minute".
    let done = batch_with_jobs(&env, 6).await;
    exec(
        &env,
        "UPDATE batches SET submitted_at = now() - interval '1 hour', state = 'finished' WHERE id = $1",
        done,
    )
    .await;
    exec(
        &env,
        "UPDATE jobs SET state = 'succeeded', finished_at = now() - interval '1 hour' + (row_number * interval '20 seconds' / 6) WHERE batch_id = $1",
        done,
    )
    .await;
    let b = env.store.batch(done).await.unwrap().unwrap();
    let st = abha_bulk::report::status(&env.store, &b).await.unwrap();
    assert!((st.rate - 0.3).abs() < 0.01, "{}", st.rate);
    assert!(st.render().contains("ETA done"), "{}", st.render());

    // Running: 3 of 10 finished in the 10 s since submission → 0.3/s, 7 left → ~23 s.
    let running = batch_with_jobs(&env, 10).await;
    exec(
        &env,
        "UPDATE batches SET submitted_at = now() - interval '10 seconds' WHERE id = $1",
        running,
    )
    .await;
    exec(
        &env,
        "UPDATE jobs SET state = 'succeeded', finished_at = now() - interval '2 seconds' WHERE batch_id = $1 AND row_number <= 3",
        running,
    )
    .await;
    let b = env.store.batch(running).await.unwrap().unwrap();
    let st = abha_bulk::report::status(&env.store, &b).await.unwrap();
    assert!((st.rate - 0.3).abs() < 0.02, "{}", st.rate);
    let eta = st.eta_secs().unwrap();
    assert!((20.0..27.0).contains(&eta), "{eta}");

    // Cancel through the command: the cancelled jobs are not a rate; a second cancel and a
    // cancel of a finished batch are refused.
    let id = running.to_string();
    let o = run(&env, &["cancel", &id]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let b = env.store.batch(running).await.unwrap().unwrap();
    let st = abha_bulk::report::status(&env.store, &b).await.unwrap();
    assert!(
        st.rate < 1.0,
        "cancelled jobs counted as a rate: {}",
        st.rate
    );
    assert!(st.render().contains("cancelled"), "{}", st.render());
    for batch in [running, done] {
        let o = run(&env, &["cancel", &batch.to_string()]);
        assert!(!o.status.success());
        assert!(text(&o.stderr).contains("nothing left to cancel"));
    }
    assert_eq!(
        env.store.batch(done).await.unwrap().unwrap().state,
        "finished"
    );

    // status lists active batches only, unless --all.
    let active = batch_with_jobs(&env, 1).await;
    let o = run(&env, &["status"]);
    let listed = text(&o.stdout);
    assert!(listed.contains(&active.to_string()[..8]), "{listed}");
    assert!(!listed.contains(&done.to_string()[..8]), "{listed}");
    let o = run(&env, &["status", "--all"]);
    assert!(text(&o.stdout).contains(&done.to_string()[..8]));

    // --watch without an id follows every active batch until none is left.
    exec(
        &env,
        "UPDATE jobs SET state = 'succeeded', finished_at = now() WHERE batch_id = $1",
        active,
    )
    .await;
    let o = run(&env, &["status", "--watch"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let watched = text(&o.stdout);
    assert!(watched.contains(&format!("batch {active}")), "{watched}");
    assert!(!watched.contains(&done.to_string()), "{watched}");
    sqlx::query("UPDATE batches SET state = 'finished'")
        .execute(&env.store.pool)
        .await
        .unwrap();
    let o = run(&env, &["status", "--watch"]);
    assert!(text(&o.stdout).contains("no active batches"));

    // A closed pipe ends the command quietly.
    for args in [
        &["status", "--all"][..],
        &["status", &id],
        &["report", &id, "--out", "-"],
        &["config"],
    ] {
        let mut child = cli(&env, args, &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{args:?}: {o:?}");
        assert!(!text(&o.stderr).contains("panicked"), "{}", text(&o.stderr));
    }

    // Prefixes: wildcards refused, ambiguity lists the candidates.
    for id in [
        "aaaa1111-0000-4000-8000-000000000000",
        "aaaa2222-0000-4000-8000-000000000000",
    ] {
        sqlx::query("INSERT INTO batches (id, kind, benefit, source) VALUES ($1::uuid, 'abha-find', 'COVIN', 'csv')")
            .bind(id)
            .execute(&env.store.pool)
            .await
            .unwrap();
    }
    for bad in ["%", "_", "aa%", "aaaa'"] {
        let e = env.store.find_batch(bad).await.unwrap_err().to_string();
        assert!(e.contains("hex digits"), "{bad}: {e}");
    }
    let e = env.store.find_batch("AAAA").await.unwrap_err().to_string();
    assert!(
        e.contains("aaaa1111-0000") && e.contains("aaaa2222-0000"),
        "{e}"
    );
    assert!(e.contains("abha-find") && e.contains("COVIN"), "{e}");
    let one = env.store.find_batch("aaaa1").await.unwrap();
    assert!(one.id.to_string().starts_with("aaaa1111"));
    env.cleanup().await;
}

#[tokio::test]
async fn report_output_rules_and_reveal_audit() {
    let env = TestEnv::new().await;
    let pop = env.pop();
    let input = env.write_file(
        "input.csv",
        &format!(
            "abha_number\n{}\n{}\n",
            pop.abha(1).expose(),
            pop.abha(2).expose()
        ),
    );
    let sum = env.submit(JobKind::BenefitLink, &input).await;
    let job_id: i64 =
        sqlx::query_scalar("SELECT id FROM jobs WHERE batch_id = $1 AND row_number = 1")
            .bind(sum.batch)
            .fetch_one(&env.store.pool)
            .await
            .unwrap();
    let result = env.store.vault.encrypt(
        pop.abha(1).expose().as_bytes(),
        abha_bulk::store::vault::Aad::JobResult(job_id),
    );
    sqlx::query("UPDATE jobs SET state = 'succeeded', finished_at = now(), result = $2, result_masked = 'XX' WHERE batch_id = $1 AND row_number = 1")
        .bind(sum.batch)
        .bind(result)
        .execute(&env.store.pool)
        .await
        .unwrap();
    let id = sum.batch.to_string();
    let out = env.dir.path().join("r.csv");
    let out_s = out.to_str().unwrap();

    // First write; the second needs --force; the input file is never overwritten.
    let o = run(&env, &["report", &id, "--out", out_s]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = run(&env, &["report", &id, "--out", out_s]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("--force"), "{}", text(&o.stderr));
    let o = run(&env, &["report", &id, "--out", out_s, "--force"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let before = std::fs::read(&input).unwrap();
    let o = run(
        &env,
        &["report", &id, "--out", input.to_str().unwrap(), "--force"],
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("input file of batch"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(std::fs::read(&input).unwrap(), before);
    // No folder is created; `-` is standard output.
    let o = run(&env, &["report", &id, "--out", "missing/r.csv"]);
    assert!(!o.status.success());
    assert!(!env.dir.path().join("missing").exists());
    let o = run(&env, &["report", &id, "--out", "-"]);
    assert!(o.status.success());
    assert!(
        text(&o.stdout)
            .starts_with("row,external_ref,identifier,state,outcome,abdm_code,rejected_column")
    );
    assert!(!env.dir.path().join("-").exists());

    // --reveal needs a (non-blank) reason; nothing is audited or written otherwise.
    let secret = env.dir.path().join("secret.csv");
    let secret_s = secret.to_str().unwrap();
    let o = run(&env, &["report", &id, "--out", secret_s, "--reveal"]);
    assert!(!o.status.success());
    let o = run(
        &env,
        &[
            "report", &id, "--out", secret_s, "--reveal", "--reason", " ",
        ],
    );
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("--reason"), "{}", text(&o.stderr));
    assert!(!secret.exists());
    let audits = |env: &TestEnv| {
        let pool = env.store.pool.clone();
        async move {
            sqlx::query("SELECT revealed_by, os_user, operator, reason, rows FROM reveal_audit")
                .fetch_all(&pool)
                .await
                .unwrap()
        }
    };
    assert!(audits(&env).await.is_empty());
    let o = cli(
        &env,
        &[
            "report",
            &id,
            "--out",
            secret_s,
            "--reveal",
            "--reason",
            "grievance 42",
            "--operator",
            "DPO Meena",
        ],
        &[("USER", "root-pretender")],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        std::fs::read_to_string(&secret)
            .unwrap()
            .contains(pop.abha(1).expose())
    );
    let a = audits(&env).await;
    assert_eq!(a.len(), 1);
    let os_user: String = a[0].get("os_user");
    assert!(os_user.contains("uid"), "{os_user}");
    assert!(!os_user.contains("root-pretender"));
    assert_eq!(a[0].get::<String, _>("revealed_by"), "DPO Meena");
    assert_eq!(
        a[0].get::<Option<String>, _>("operator").as_deref(),
        Some("DPO Meena")
    );
    assert_eq!(
        a[0].get::<Option<String>, _>("reason").as_deref(),
        Some("grievance 42")
    );
    assert_eq!(a[0].get::<i64, _>("rows"), 1);

    // The audit row comes first: when it cannot be written, no plaintext file appears.
    sqlx::query("ALTER TABLE reveal_audit RENAME TO reveal_audit_gone")
        .execute(&env.store.pool)
        .await
        .unwrap();
    let other = env.dir.path().join("secret2.csv");
    let e = write_report(
        &env.store,
        sum.batch,
        &ReportTarget::File {
            path: other.clone(),
            force: false,
        },
        Some(Reveal {
            os_user: "tester",
            operator: None,
            reason: "test",
        }),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ReportError::Store(_)), "{e}");
    assert!(!other.exists());
    sqlx::query("ALTER TABLE reveal_audit_gone RENAME TO reveal_audit")
        .execute(&env.store.pool)
        .await
        .unwrap();
    env.cleanup().await;
}

//! The web console (`/console`) in a real browser: headless Chromium driven through
//! chromedriver (WebDriver, by fantoccini). Signs in with an API key, uploads a CSV, sees its
//! rejected rows, watches the progress bar reach done against the sandbox, sees failed rows
//! grouped by code with what to do, a running batch's share of the rate beside its chart of the
//! last hour and the running batches in order of expected completion (the scheduler's rows
//! written directly), downloads the masked report, finds retry and cancel, checks the
//! server-side session (sign-out, expiry, revocation), the sign-in throttle, and that another
//! programme's key gets a 404 page.
//! A screenshot of each step is kept under `target/test-output/console/`.
//!
//! `scripts/test.sh` installs `chromium` and `chromium-driver` and sets
//! `ABHA_BULK_CHROMEDRIVER`; under CI the test fails without a driver, elsewhere it says it
//! skipped.

mod common;

#[path = "console/browser.rs"]
mod browser;

use std::path::Path;
use std::time::{Duration, Instant};

use abha_bulk::api::{ApiSettings, ApiState, Guards, app};
use browser::{
    SHOTS, browser, driver_path, heading, session_cookie, shot, sign_in, submit_key, text,
};
use common::{BENEFIT, PipelineOpts, TestEnv};
use fantoccini::Locator;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_programme_uses_the_console_in_a_browser() {
    let Some(driver) = driver_path() else {
        assert!(
            std::env::var("CI").is_err(),
            "chromedriver not found: run the suite with scripts/test.sh (it installs it)"
        );
        eprintln!("skipped: no chromedriver (scripts/test.sh installs chromium-driver)");
        return;
    };
    let env = TestEnv::new().await;
    let state = ApiState {
        store: env.store.clone(),
        served: vec![],
        max_upload: 1 << 20,
        read_timeout: Duration::from_secs(5),
        spool: env.dir.path().to_path_buf(),
        // A person types slower than the default refill (1 a second): a small burst and a slow
        // refill let the browser reach the throttle in a few tries.
        priorities: Default::default(),
        guards: Guards::new(&ApiSettings {
            auth_failure_burst: 3,
            auth_failures_per_sec: 0.01,
            ..ApiSettings::default()
        }),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // localhost: a browser keeps `Secure` cookies over plain HTTP only there.
    let base = format!("http://localhost:{}", listener.local_addr().unwrap().port());
    let server = tokio::spawn(async move { axum::serve(listener, app(state)).await.unwrap() });
    let scopes = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let (_, pmjay) = env
        .store
        .create_api_key(
            Some("console"),
            &[BENEFIT.into()],
            &scopes(&["submit", "read"]),
            None,
        )
        .await
        .unwrap();
    let (_, other) = env
        .store
        .create_api_key(
            Some("other"),
            &["COVIN".into()],
            &scopes(&["submit", "read"]),
            None,
        )
        .await
        .unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // Every console answer carries the security headers.
    let r = http
        .get(format!("{base}/console/sign-in"))
        .send()
        .await
        .unwrap();
    let h = r.headers();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
    assert!(csp.contains("frame-ancestors 'none'"));
    assert_eq!(h["x-frame-options"], "DENY");
    let set = h["set-cookie"].to_str().unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/console"] {
        assert!(set.contains(attr), "{attr} in {set}");
    }

    // Only this run's screenshots.
    let _ = std::fs::remove_dir_all(Path::new(env!("CARGO_MANIFEST_DIR")).join(SHOTS));
    let profile = tempfile::tempdir().unwrap();
    let (chromedriver, c) = browser(&driver, profile.path()).await;
    c.goto(&format!("{base}/console")).await.unwrap();
    heading(&c, "Sign in").await;
    shot(&c, "01-sign-in").await;
    // A wrong key is refused on the page.
    submit_key(&c, "abk_00000000_nope").await;
    assert!(text(&c, ".error").await.contains("unknown API key"));

    sign_in(&c, &base, &pmjay).await;
    assert!(text(&c, "#no-batches").await.contains("No batches"));
    shot(&c, "02-batches").await;

    // Upload 20 good rows and a bad one; the batch page lists the rejected row.
    let pop = env.pop();
    let mut csv = String::from("external_ref,abha_number\n");
    for i in 100..120 {
        csv.push_str(&format!("L{i},{}\n", pop.abha(i).expose()));
    }
    csv.push_str("BAD,12345\n");
    let file = env.write_file("links.csv", &csv);
    c.find(Locator::Id("kind"))
        .await
        .unwrap()
        .select_by_value("benefit-link")
        .await
        .unwrap();
    c.find(Locator::Id("file"))
        .await
        .unwrap()
        .send_keys(file.to_str().unwrap())
        .await
        .unwrap();
    c.find(Locator::Id("upload"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let rejected = text(&c, "#rejected").await;
    assert!(
        rejected.contains("21") && rejected.contains("abha_number"),
        "{rejected}"
    );
    let url = c.current_url().await.unwrap();
    let id = url.path().rsplit('/').next().unwrap().to_string();
    let batch: uuid::Uuid = id.parse().expect("a batch page");
    for v in [pop.abha(100).expose().to_string(), pmjay.clone()] {
        assert!(
            !c.source().await.unwrap().contains(&v),
            "no identifier or key on the page"
        );
        assert!(!url.as_str().contains(&v));
    }
    shot(&c, "03-uploaded-rejected-rows").await;

    // The progress bar, polled by app.js every 2 s, moves while the pipeline runs (held to
    // 4 rows/s, so the 20 rows take about 5 s and the page shows them part done), then
    // reaches done.
    assert!(
        text(&c, "#progress-text")
            .await
            .contains("0 of 20 rows done (0%)")
    );
    let pipeline = env.start(PipelineOpts {
        rate: 4.0,
        burst: 1,
        ..PipelineOpts::default()
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut part_done = None;
    loop {
        let bar = c.find(Locator::Id("progress")).await.unwrap();
        if bar.attr("data-done").await.unwrap().as_deref() == Some("true") {
            break;
        }
        let value: f64 = bar.attr("value").await.unwrap().unwrap().parse().unwrap();
        if part_done.is_none() && value > 0.0 && value < 20.0 {
            part_done = Some(text(&c, "#progress-text").await);
            shot(&c, "04-progress-running").await;
        }
        assert!(
            Instant::now() < deadline,
            "the progress bar never reached done"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let part_done = part_done.expect("the page showed the batch part done");
    assert!(part_done.contains(" of 20 rows done ("), "{part_done}");
    assert!(
        text(&c, "#progress-text")
            .await
            .contains("20 of 20 rows done (100%)")
    );
    assert_eq!(text(&c, "#count-succeeded").await, "20");
    shot(&c, "05-progress-done").await;
    pipeline.stop().await;
    env.wait_until_done(&[batch]).await;

    // The report link answers the masked CSV to the browser's session.
    let href = c
        .find(Locator::Id("report"))
        .await
        .unwrap()
        .attr("href")
        .await
        .unwrap()
        .unwrap();
    let cookie = session_cookie(&c).await;
    let r = http
        .get(format!("{base}{href}"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let report = r.text().await.unwrap();
    assert_eq!(report.lines().count(), 22, "header + 21 rows");
    assert!(
        !report.contains(pop.abha(100).expose()),
        "identifiers masked"
    );
    // A form without this session's CSRF token is refused.
    let r = http
        .post(format!("{base}/console/batches/{id}/cancel"))
        .header("cookie", &cookie)
        .form(&[("csrf", "00")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // So is an upload with a wrong token: refused before the file is read, nothing stored.
    let form = |csrf: &str| {
        format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n\
             --XyZ\r\nContent-Disposition: form-data; name=\"kind\"\r\n\r\nbenefit-link\r\n\
             --XyZ\r\nContent-Disposition: form-data; name=\"benefit\"\r\n\r\n{BENEFIT}\r\n\
             --XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"other.csv\"\r\n\
             Content-Type: text/csv\r\n\r\nexternal_ref,abha_number\r\nX1,{}\r\n--XyZ--\r\n",
            pop.abha(1).expose()
        )
    };
    let r = http
        .post(format!("{base}/console/batches"))
        .header("cookie", &cookie)
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(form(&"ab".repeat(32)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let ours = env
        .store
        .batches_of(&[BENEFIT.into()], None, 10, 0)
        .await
        .unwrap();
    assert_eq!(ours.len(), 1, "nothing stored");

    // Failed rows grouped by code, each with what to do: two rows unknown to ABDM, one out of
    // retries on timeouts (written directly: every row of the sandbox run succeeded).
    for (rows, state, code, message) in [
        ("1, 2", "failed", "ABDM-1114", "user not found"),
        (
            "3",
            "dead",
            "timeout",
            "ABDM did not answer within the timeout",
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE jobs SET state = '{state}', last_code = '{code}', last_message = '{message}'
             WHERE batch_id = $1 AND row_number IN ({rows})"
        )))
        .bind(batch)
        .execute(&env.store.pool)
        .await
        .unwrap();
    }
    env.store.finish_batches().await.unwrap();
    c.goto(&format!("{base}/console/batches/{id}"))
        .await
        .unwrap();
    let failures = text(&c, "#failures").await;
    let (unknown, timeouts) = (failures.find("ABDM-1114"), failures.find("timeout"));
    assert!(
        unknown.is_some() && timeouts.is_some() && unknown < timeouts,
        "the larger group first: {failures}"
    );
    let cell =
        |row: usize, col: usize| format!("#failures tbody tr:nth-child({row}) td:nth-child({col})");
    assert_eq!(text(&c, &cell(1, 2)).await, "2");
    assert_eq!(text(&c, &cell(1, 3)).await, "user not found");
    assert!(
        text(&c, &cell(1, 4))
            .await
            .contains("retrying will not help")
    );
    assert!(text(&c, &cell(2, 2)).await.contains("1 out of retries"));
    assert!(text(&c, &cell(2, 4)).await.contains("Retry failed rows"));
    assert_eq!(
        text(&c, "#share").await,
        "none",
        "a finished batch takes no share"
    );
    c.execute(
        "document.getElementById('failures').scrollIntoView()",
        vec![],
    )
    .await
    .unwrap();
    shot(&c, "05a-failures-by-code").await;

    // A batch the scheduler runs at 40 % of the rate, with an hour of published messages: its
    // share beside the chart, and the list's running batches with position and ETA.
    let running = running_batch(&env, 6).await;
    sqlx::query(
        "INSERT INTO batch_shares (batch_id, programme, share, rate, backlog) VALUES ($1, $2, 0.4, 8.0, 6)",
    )
    .bind(running)
    .bind(BENEFIT)
    .execute(&env.store.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO batch_minutes (batch_id, minute, published)
         SELECT $1, date_trunc('minute', now()) - make_interval(mins => m), 60 * (1 + m % 8)
         FROM generate_series(1, 59) AS m",
    )
    .bind(running)
    .execute(&env.store.pool)
    .await
    .unwrap();
    c.goto(&format!("{base}/console/batches/{running}"))
        .await
        .unwrap();
    assert_eq!(text(&c, "#share").await, "40%");
    let said = text(&c, "#share-text").await;
    assert!(
        said.contains("8.0 calls/s") && said.contains("DEMO-BENEFIT's only active batch"),
        "{said}"
    );
    let points = c
        .find(Locator::Css("#rate-chart polyline"))
        .await
        .expect("the rate chart")
        .attr("points")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(points.split(' ').count(), 60, "a point a minute: {points}");
    let caption = text(&c, "#rate-chart-caption").await;
    assert!(caption.contains("peak 8.0/s"), "{caption}");
    assert!(
        text(&c, "#eta").await.ends_with(" s"),
        "an ETA at its share"
    );
    assert!(text(&c, "#no-failures").await.contains("No row has failed"));
    shot(&c, "05b-share-and-rate-chart").await;
    c.goto(&format!("{base}/console/batches")).await.unwrap();
    let active = text(&c, "#active").await;
    assert!(
        active.contains("1 of 1") && active.contains("40%") && active.contains("normal"),
        "{active}"
    );
    assert!(!active.contains(&batch.to_string()[..8]));
    shot(&c, "05c-running-now").await;
    c.goto(&format!("{base}/console/batches/{id}"))
        .await
        .unwrap();

    // Retry and cancel are there; cancelling a finished batch is refused.
    c.find(Locator::Id("retry")).await.unwrap();
    c.find(Locator::Id("cancel"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(text(&c, "#problem").await, "Conflict");
    assert!(text(&c, ".error").await.contains("nothing left to cancel"));
    shot(&c, "06-cancel-refused").await;
    c.goto(&format!("{base}/console/batches/{id}"))
        .await
        .unwrap();
    c.find(Locator::Id("retry"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(
        text(&c, "#notice")
            .await
            .contains("3 failed rows queued again")
    );
    shot(&c, "07-retry").await;
    c.goto(&format!("{base}/console/batches")).await.unwrap();
    assert!(text(&c, "#batches").await.contains("benefit-link"));
    shot(&c, "08-batches-list").await;

    // The session is on the server: the cookie holds a session id, never the key, and a
    // copy of it works only while the session lives.
    let get_with = |cookie: String| {
        http.get(format!("{base}/console/batches"))
            .header("cookie", cookie)
            .send()
    };
    let signed_out = |r: reqwest::Response| {
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/console/sign-in");
    };
    let copied = session_cookie(&c).await;
    let secret = pmjay.split('_').nth(2).unwrap();
    assert!(!copied.contains(secret), "the key is not in the cookie");
    assert_eq!(get_with(copied.clone()).await.unwrap().status(), 200);
    // The key itself where the old console kept it is no session.
    signed_out(
        get_with(format!("abha_console={}.{pmjay}", "0".repeat(64)))
            .await
            .unwrap(),
    );

    // Sign out: the batch page sends the browser back to sign in, and the copied cookie is
    // dead too (the session ended everywhere, not only in this browser).
    c.find(Locator::Id("sign-out"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    heading(&c, "Sign in").await;
    c.goto(&format!("{base}/console/batches/{id}"))
        .await
        .unwrap();
    heading(&c, "Sign in").await;
    shot(&c, "09-signed-out").await;
    signed_out(get_with(copied).await.unwrap());

    // Idle too long, or past its absolute lifetime: the session is over.
    let age = |column: &'static str, by: &'static str| {
        let pool = env.store.pool.clone();
        async move {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE console_sessions SET {column} = {column} - interval '{by}' WHERE ended_at IS NULL"
            )))
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    sign_in(&c, &base, &pmjay).await;
    let idle = session_cookie(&c).await;
    assert_eq!(get_with(idle.clone()).await.unwrap().status(), 200);
    age("last_seen_at", "31 minutes").await;
    signed_out(get_with(idle).await.unwrap());
    c.goto(&format!("{base}/console/batches")).await.unwrap();
    heading(&c, "Sign in").await;
    sign_in(&c, &base, &pmjay).await;
    let old = session_cookie(&c).await;
    assert_eq!(get_with(old.clone()).await.unwrap().status(), 200);
    age("created_at", "13 hours").await;
    signed_out(get_with(old).await.unwrap());

    // Revoking the key ends its console sessions at once.
    let (_, spare) = env
        .store
        .create_api_key(Some("spare"), &[BENEFIT.into()], &scopes(&["read"]), None)
        .await
        .unwrap();
    c.goto(&format!("{base}/console/sign-in")).await.unwrap();
    sign_in(&c, &base, &spare).await;
    let spare_cookie = session_cookie(&c).await;
    assert_eq!(get_with(spare_cookie.clone()).await.unwrap().status(), 200);
    let spare_prefix = spare.split('_').nth(1).unwrap().to_string();
    assert!(env.store.revoke_api_key(&spare_prefix).await.unwrap());
    signed_out(get_with(spare_cookie).await.unwrap());
    c.goto(&format!("{base}/console/batches")).await.unwrap();
    heading(&c, "Sign in").await;

    // Another programme's key: an empty list and a 404 page for this batch.
    sign_in(&c, &base, &other).await;
    assert!(text(&c, "#no-batches").await.contains("No batches"));
    c.goto(&format!("{base}/console/batches/{id}"))
        .await
        .unwrap();
    assert_eq!(text(&c, "#problem").await, "Not found");
    shot(&c, "10-other-programme-404").await;
    let cookie = session_cookie(&c).await;
    for path in ["", "/report", "/progress"] {
        let r = http
            .get(format!("{base}/console/batches/{id}{path}"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }

    // Wrong keys at the sign-in are throttled: past the burst the browser gets the 429 page.
    for k in ["abk_0badc0de_wrong"; 4] {
        c.goto(&format!("{base}/console/sign-in")).await.unwrap();
        if c.find(Locator::Id("key")).await.is_err() {
            // Still signed in as `other`: sign out first.
            c.find(Locator::Id("sign-out"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            heading(&c, "Sign in").await;
        }
        submit_key(&c, k).await;
        // The answer's page (a fresh form has no error line) before the next try.
        text(&c, ".error").await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text(&c, ".error")
        .await
        .contains("too many failed sign-ins")
    {
        assert!(Instant::now() < deadline, "the throttled sign-in says so");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shot(&c, "11-sign-in-throttled").await;

    c.close().await.unwrap();
    drop(chromedriver);
    server.abort();
    env.cleanup().await;
}

/// An active batch of `n` queued link jobs that nothing publishes (no outbox rows).
async fn running_batch(env: &TestEnv, n: u64) -> Uuid {
    let pop = env.pop();
    let batch = env.new_link_batch(Some("later.csv")).await;
    let rows: Vec<_> = (0..n)
        .map(|i| {
            let job = abha_bulk::jobs::kind::Job::BenefitLink(
                abha_bulk::abdm::benefit::Beneficiary::Abha(pop.abha(500 + i)),
            );
            env.store.prepare(i as i64 + 1, None, &job)
        })
        .collect();
    env.store
        .insert_jobs(
            batch,
            abha_bulk::jobs::kind::JobKind::BenefitLink,
            BENEFIT,
            &rows,
        )
        .await
        .unwrap();
    env.store.finish_submit(batch, n, n, 0, 0).await.unwrap();
    sqlx::query("DELETE FROM outbox WHERE batch_ref = $1 OR batch_id = $1")
        .bind(batch)
        .execute(&env.store.pool)
        .await
        .unwrap();
    batch
}

//! `abha-bulk reconcile` as the CronJob runs it (issue 22), the real binary against the
//! test's sandbox and Postgres: a run killed with SIGTERM continues where it stopped; dated
//! reports are kept to a set number; `--out` is not overwritten without `--force`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BENEFIT, TestEnv};

/// Lookups the sandbox has answered so far.
fn lookups(env: &TestEnv) -> u64 {
    let log = env.sandbox.state().call_log();
    log.requests.get("benefit_lookup").copied().unwrap_or(0)
}

fn report(path: &Path) -> Vec<csv::StringRecord> {
    let mut r = csv::Reader::from_path(path).expect("report");
    assert_eq!(
        r.headers().unwrap().iter().collect::<Vec<_>>(),
        abha_bulk::reconcile::COLUMNS
    );
    r.records().map(|r| r.expect("record")).collect()
}

fn roster(env: &TestEnv, name: &str, people: &[u64]) -> PathBuf {
    let pop = env.pop();
    let rows: Vec<Vec<String>> = people
        .iter()
        .enumerate()
        .map(|(i, p)| vec![format!("r-{}", i + 1), pop.abha(*p).expose().to_string()])
        .collect();
    env.write_csv(name, &["external_ref", "abha_number"], &rows)
}

/// `abha-bulk reconcile` against the test's sandbox and database.
fn cli(env: &TestEnv, args: &[&str]) -> Command {
    let mut url = reqwest::Url::parse(&env.db_url).expect("db url");
    let password = url.password().unwrap_or("").to_string();
    url.set_password(None).expect("no password");
    let sb = env.sandbox.url();
    let mut c = Command::new(env!("CARGO_BIN_EXE_abha-bulk"));
    c.args(args)
        .current_dir(env.dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ABHA_BULK_CONFIG_DIR", env.dir.path().join("no-config"))
        .env("ABHA_BULK__DATABASE__URL", url.to_string())
        .env("ABHA_BULK__DATABASE__PASSWORD", password)
        .env(
            "ABHA_BULK__PII__KEY",
            "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",
        )
        .env("ABHA_BULK__ABDM__BASE_URL", format!("{sb}/abha/api"))
        .env(
            "ABHA_BULK__ABDM__SESSION_URL",
            format!("{sb}/api/hiecm/gateway/v3/sessions"),
        )
        .env(
            "ABHA_BULK__ABDM__CLIENT_SECRET",
            abha_bulk::sandbox::DEFAULT_CLIENT_SECRET,
        )
        .env("ABHA_BULK__RECONCILE__RATE_PER_SECOND", "40")
        .env("ABHA_BULK__TELEMETRY__LOG_FILTER", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

async fn recorded(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM reconcile_rows WHERE class IS NOT NULL")
        .fetch_one(&env.store.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_run_killed_with_sigterm_continues_where_it_stopped() {
    let env = TestEnv::new().await;
    let people: Vec<u64> = (0..300).collect();
    let path = roster(&env, "roster.csv", &people);
    let p = path.to_str().unwrap();
    let args = [
        "reconcile",
        "--benefit",
        BENEFIT,
        "--roster",
        p,
        "--out",
        "night.csv",
    ];
    let before = lookups(&env);
    let mut child = cli(&env, &args).spawn().expect("abha-bulk runs");
    // Wait until at least 100 answers are recorded (2.5 s at 40/s), then SIGTERM.
    let deadline = Instant::now() + Duration::from_secs(60);
    while recorded(&env).await < 100 {
        assert!(Instant::now() < deadline, "no progress recorded");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "stopped on SIGTERM");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("run the same command"), "{stderr}");
    let done_before = recorded(&env).await;
    let first = lookups(&env) - before;
    assert!(first < 300, "killed before the end: {first}");
    assert!(
        !env.dir.path().join("night.csv").exists(),
        "no report that looks whole"
    );

    // The same command continues: only what had no recorded answer is looked up again.
    // On a blocking thread: the sandbox answers on this test's runtime.
    let mut again = cli(&env, &args);
    let out = tokio::task::spawn_blocking(move || again.output())
        .await
        .unwrap()
        .expect("abha-bulk runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("(continued)"), "{stdout}");
    let second = lookups(&env) - before - first;
    assert_eq!(
        second,
        300 - done_before as u64,
        "first {first}, recorded {done_before}: {stdout}"
    );
    let lines = report(&env.dir.path().join("night.csv"));
    assert_eq!(lines.len(), 300);
    assert!(
        lines
            .iter()
            .enumerate()
            .all(|(i, l)| l[0] == (i + 1).to_string())
    );
    assert!(lines.iter().all(|l| &l[3] == "missing_link"));
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM reconcile_runs")
        .fetch_one(&env.store.pool)
        .await
        .unwrap();
    assert_eq!(runs, 1, "one run, continued");
    env.cleanup().await;
}

/// The CronJob's options: dated reports in --reports-dir, the newest --keep N kept; --out
/// refuses an existing file unless --force.
#[tokio::test]
async fn dated_reports_are_kept_to_a_set_number_and_out_is_not_overwritten() {
    let env = TestEnv::new().await;
    let path = roster(&env, "roster.csv", &[0, 1]);
    let p = path.to_str().unwrap().to_string();
    let run_cli = |extra: &[&str]| {
        let mut args = vec!["reconcile", "--benefit", BENEFIT, "--roster", &p];
        args.extend_from_slice(extra);
        let mut c = cli(&env, &args);
        // On a blocking thread: the sandbox answers on this test's runtime.
        tokio::task::spawn_blocking(move || c.output().expect("abha-bulk runs"))
    };
    let dir = env.dir.path().join("nightly");
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = format!(
        "reconcile-{}-",
        BENEFIT.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    // Three earlier nights, and a file that is not a report.
    for night in ["20261201-013000", "20261202-013000", "20261203-013000"] {
        std::fs::write(dir.join(format!("{prefix}{night}.csv")), "old\n").unwrap();
    }
    std::fs::write(dir.join("notes.txt"), "keep me\n").unwrap();
    let d = dir.to_str().unwrap();
    let o = run_cli(&["--reports-dir", d, "--keep", "2"]).await.unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left.len(), 3, "{left:?}");
    assert_eq!(left[0], "notes.txt");
    assert_eq!(left[1], format!("{prefix}20261203-013000.csv"));
    assert!(
        left[2].starts_with(&prefix) && left[2] != left[1],
        "{left:?}"
    );
    assert_eq!(report(&dir.join(&left[2])).len(), 2, "tonight's report");

    // --out: an existing file is refused, and kept, unless --force.
    let out = env.write_file("fixed.csv", "precious\n");
    let o = run_cli(&["--out", "fixed.csv"]).await.unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "precious\n");
    let o = run_cli(&["--out", "fixed.csv", "--force"]).await.unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(report(&out).len(), 2);
    env.cleanup().await;
}

//! The real ABDM client against the sandbox over HTTP: every operation, token expiry and
//! refresh, a 401 mid-run, 5xx, timeouts, dropped connections, throttling, key rotation, and
//! every ABDM error shape.

use std::sync::Arc;
use std::time::Duration;

use abha_bulk::abdm::benefit::{Beneficiary, LinkAction};
use abha_bulk::abdm::child::{ChildDetails, ChildUpdate};
use abha_bulk::abdm::enrol::DemoAuthRequest;
use abha_bulk::abdm::profile::{AccountStatus, ProfilePatch};
use abha_bulk::abdm::{AbdmClient, CallTrace, ClientError, Disposition, Operation};
use abha_bulk::config::{AbdmSettings, SecretString};
use abha_bulk::pii::{AbhaNumber, Gender, PersonName, XToken};
use abha_bulk::sandbox::{
    Faults, KeySource, Sandbox, SandboxConfig, ScriptedResponse, settings_for_sandbox,
};
use chrono::{NaiveDate, Utc};

const KEY: &str = include_str!("fixtures/test-key-2048.pem");
const B: &str = "DEMO-BENEFIT";

async fn start(faults: Faults) -> Sandbox {
    Sandbox::start(SandboxConfig {
        key: KeySource::Pem(KEY.into()),
        population: 1000,
        seed: 9,
        faults,
        ..SandboxConfig::default()
    })
    .await
    .expect("sandbox starts")
}

fn client_with(sandbox: &Sandbox, tweak: impl FnOnce(&mut AbdmSettings)) -> AbdmClient {
    let mut s = settings_for_sandbox(&sandbox.url());
    tweak(&mut s);
    AbdmClient::new(&s).expect("client")
}

fn client(sandbox: &Sandbox) -> AbdmClient {
    client_with(sandbox, |_| {})
}

fn abha_err(r: Result<impl std::fmt::Debug, ClientError>) -> ClientError {
    r.expect_err("expected an error")
}

#[tokio::test]
async fn every_operation_round_trips() {
    let sb = start(Faults::default()).await;
    let c = client(&sb);
    let pop = sb.state().population().clone();
    let p0 = pop.person(0);
    let mut t = CallTrace::default();

    // Benefit search, link (twice: ABDM-1140), lookup, search by Aadhaar.
    let by_abha = Beneficiary::Abha(p0.abha.clone());
    assert!(
        c.benefit_search(&mut t, B, &by_abha)
            .await
            .unwrap()
            .is_empty()
    );
    let linked = c.link(&mut t, B, LinkAction::Link, &by_abha).await.unwrap();
    assert_eq!(linked.benefit_name, B);
    assert_eq!(linked.health_id.expose(), p0.abha.expose());
    let again = abha_err(c.link(&mut t, B, LinkAction::Link, &by_abha).await);
    assert_eq!(again.disposition(), Disposition::IdempotentSuccess);
    assert_eq!(again.code(), "ABDM-1140");
    assert!(sb.state().is_linked(B, &p0.abha.digits()));
    let lookup = c.benefit_lookup(&mut t, B, &p0.abha).await.unwrap();
    assert!(lookup.has(B));
    let by_aadhaar = Beneficiary::Aadhaar(p0.aadhaar.clone());
    let records = c.benefit_search(&mut t, B, &by_aadhaar).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].benefit_name, B);
    assert_eq!(records[0].abha_number.expose(), p0.abha.expose());

    // Profile patch with an encrypted mobile.
    let new_mobile = pop.mobile(5000);
    let profile = c
        .update_profile(
            &mut t,
            B,
            &ProfilePatch {
                abha_number: pop.abha(1),
                mobile: Some(new_mobile.clone()),
                account_status: Some(AccountStatus::Active),
                profile_photo: Some(abha_bulk::pii::Sensitive::new("aGVsbG8=")),
            },
        )
        .await
        .unwrap();
    assert_eq!(profile.status.as_deref(), Some("ACTIVE"));
    assert!(
        profile
            .mobile
            .unwrap()
            .expose()
            .ends_with(&new_mobile.expose()[6..])
    );

    // Find by mobile.
    let found = c.find_by_mobile(&mut t, B, &pop.mobile(2)).await.unwrap();
    assert_eq!(found[0].abha[0].abha_number.expose(), pop.abha(2).expose());

    // Child: create with the parent's X-token, list, update once (second update: ABDM-1160).
    let parent = XToken::parse(&pop.x_token(&pop.abha(3), Utc::now().timestamp() + 600)).unwrap();
    let child = ChildDetails {
        name: PersonName::parse("Asha Rao").unwrap(),
        birth_date: NaiveDate::from_ymd_opt(2022, 3, 22).unwrap(),
        gender: Gender::F,
    };
    let created = c.create_child(&mut t, B, &parent, &child).await.unwrap();
    assert_eq!(created.profile.abha_type.as_deref(), Some("CHILD"));
    assert!(created.is_new);
    let children = c.list_children(&mut t, B, &parent).await.unwrap();
    assert_eq!(children.children_count, 1);
    assert!(children.children[0].matches(&child));
    let child_abha = AbhaNumber::parse(created.profile.abha_number.expose()).unwrap();
    let update = ChildUpdate {
        abha_number: child_abha,
        name: PersonName::parse("Asha R Rao").unwrap(),
        birth_date: child.birth_date,
        gender: Gender::F,
    };
    let updated = c.update_child(&mut t, B, &update).await.unwrap();
    assert_eq!(updated.name.expose(), "Asha R Rao");
    let twice = abha_err(c.update_child(&mut t, B, &update).await);
    assert_eq!(
        (twice.code().as_str(), twice.disposition()),
        ("ABDM-1160", Disposition::Permanent)
    );

    // ABHA by demographic auth: new, then existing; a seeded Aadhaar is existing.
    let stranger = pop.person(4);
    let demo = DemoAuthRequest {
        aadhaar: pop.unknown_aadhaar(1),
        name: stranger.name.clone(),
        birth_date: stranger.birth_date,
        gender: stranger.gender,
        state_code: "27".into(),
        district_code: "490".into(),
        mobile: Some(pop.mobile(4)),
        pin_code: None,
    };
    let first = c.create_by_demo_auth(&mut t, B, &demo).await.unwrap();
    let second = c.create_by_demo_auth(&mut t, B, &demo).await.unwrap();
    assert!(first.is_new && !second.is_new);
    assert_eq!(first.abha_number, second.abha_number);
    let seeded = DemoAuthRequest {
        aadhaar: stranger.aadhaar.clone(),
        ..demo
    };
    let existing = c.create_by_demo_auth(&mut t, B, &seeded).await.unwrap();
    assert!(!existing.is_new);
    assert_eq!(existing.abha_number.expose(), stranger.abha.expose());

    // De-link twice: ABDM-1138; de-link of a never-linked ABHA: ABDM-1139.
    c.link(&mut t, B, LinkAction::Delink, &by_abha)
        .await
        .unwrap();
    let again = abha_err(c.link(&mut t, B, LinkAction::Delink, &by_abha).await);
    assert_eq!(
        (again.code().as_str(), again.disposition()),
        ("ABDM-1138", Disposition::IdempotentSuccess)
    );
    let never = Beneficiary::Abha(pop.abha(7));
    let e = abha_err(c.link(&mut t, B, LinkAction::Delink, &never).await);
    assert_eq!(
        (e.code().as_str(), e.disposition()),
        ("ABDM-1139", Disposition::Permanent)
    );

    // Unknown ABHA: ABDM-1114; unknown benefit: ABDM-1137.
    let unknown = Beneficiary::Abha(pop.abha(5_000_000));
    let e = abha_err(c.benefit_search(&mut t, B, &unknown).await);
    assert_eq!(
        (e.code().as_str(), e.disposition()),
        ("ABDM-1114", Disposition::Permanent)
    );
    let e = abha_err(
        c.link(&mut t, "NO-SUCH-BENEFIT", LinkAction::Link, &by_abha)
            .await,
    );
    assert_eq!(e.code(), "ABDM-1137");

    // One session and one certificate fetch for the whole run; every attempt has its own id.
    let sessions = t
        .attempts
        .iter()
        .filter(|a| a.operation == Operation::Session)
        .count();
    let certs = t
        .attempts
        .iter()
        .filter(|a| a.operation == Operation::Certificate)
        .count();
    assert_eq!((sessions, certs), (1, 1));
    let mut ids: Vec<_> = t.attempts.iter().map(|a| a.request_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), t.attempts.len());
    let log = sb.state().call_log();
    assert_eq!(log.duplicate_side_effects.values().sum::<u64>(), 0);
    sb.shutdown().await;
}

#[tokio::test]
async fn child_limit_and_bad_x_token() {
    let sb = start(Faults::default()).await;
    let c = client(&sb);
    let pop = sb.state().population().clone();
    let parent = XToken::parse(&pop.x_token(&pop.abha(10), Utc::now().timestamp() + 600)).unwrap();
    let mut t = CallTrace::default();
    for i in 0..5 {
        let child = ChildDetails {
            name: PersonName::parse(&format!("Child {}", ["A", "B", "C", "D", "E"][i])).unwrap(),
            birth_date: NaiveDate::from_ymd_opt(2020, 1, 1 + i as u32).unwrap(),
            gender: Gender::M,
        };
        c.create_child(&mut t, B, &parent, &child).await.unwrap();
    }
    let sixth = ChildDetails {
        name: PersonName::parse("Child F").unwrap(),
        birth_date: NaiveDate::from_ymd_opt(2021, 1, 1).unwrap(),
        gender: Gender::M,
    };
    let e = abha_err(c.create_child(&mut t, B, &parent, &sixth).await);
    assert_eq!(
        (e.code().as_str(), e.disposition()),
        ("ABDM-1157", Disposition::Permanent)
    );
    let expired = XToken::parse(&pop.x_token(&pop.abha(10), Utc::now().timestamp() - 1)).unwrap();
    let e = abha_err(c.list_children(&mut t, B, &expired).await);
    assert_eq!(
        (e.code().as_str(), e.disposition()),
        ("ABDM-1094", Disposition::Permanent)
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn token_is_refreshed_before_expiry() {
    let sb = start(Faults {
        token_ttl_secs: 2,
        ..Faults::default()
    })
    .await;
    // Refresh at 50 % of 2 s: the client renews after 1 s, before the sandbox would reject.
    let c = client_with(&sb, |s| s.token_refresh_fraction = 0.5);
    let who = Beneficiary::Abha(sb.state().population().abha(0));
    let mut t = CallTrace::default();
    for _ in 0..3 {
        c.benefit_search(&mut t, B, &who).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    c.benefit_search(&mut t, B, &who).await.unwrap();
    assert!(
        c.session().refresh_count() >= 3,
        "{}",
        c.session().refresh_count()
    );
    assert!(
        t.attempts.iter().all(|a| a.http_status != Some(401)),
        "no call should have been rejected"
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn a_401_mid_run_refreshes_once_and_retries() {
    let sb = start(Faults::default()).await;
    let c = Arc::new(client(&sb));
    let pop = sb.state().population().clone();
    c.ensure_session().await.unwrap();
    let before = c.session().refresh_count();
    sb.state().expire_tokens();
    // Twenty concurrent calls all meet the 401; one refresh serves them all.
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let c = c.clone();
        let who = Beneficiary::Abha(pop.abha(i));
        tasks.push(tokio::spawn(async move {
            let mut t = CallTrace::default();
            let r = c.benefit_search(&mut t, B, &who).await;
            (r.is_ok(), t)
        }));
    }
    for task in tasks {
        let (ok, t) = task.await.unwrap();
        assert!(ok, "{:?}", t.attempts);
    }
    let refreshes = c.session().refresh_count() - before;
    assert!(
        (1..=2).contains(&refreshes),
        "single-flight refresh, got {refreshes}"
    );
    // A single call shows the sequence: 401 → session → retry.
    sb.state().expire_tokens();
    let mut t = CallTrace::default();
    c.benefit_search(&mut t, B, &Beneficiary::Abha(pop.abha(1)))
        .await
        .unwrap();
    let seq: Vec<_> = t
        .attempts
        .iter()
        .map(|a| (a.operation, a.http_status))
        .collect();
    assert_eq!(
        seq,
        vec![
            (Operation::BenefitSearch, Some(401)),
            (Operation::Session, Some(200)),
            (Operation::BenefitSearch, Some(200)),
        ]
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn a_401_twice_is_an_auth_error_not_a_loop() {
    let sb = start(Faults::default()).await;
    let c = client(&sb);
    c.ensure_session().await.unwrap();
    sb.state().push_script(ScriptedResponse {
        path_contains: "/benefit/search".into(),
        status: 401,
        body: String::new(),
        retry_after: None,
        times: 2,
    });
    let mut t = CallTrace::default();
    let who = Beneficiary::Abha(sb.state().population().abha(0));
    let e = abha_err(c.benefit_search(&mut t, B, &who).await);
    assert_eq!(e.disposition(), Disposition::Auth);
    let calls = t
        .attempts
        .iter()
        .filter(|a| a.operation == Operation::BenefitSearch)
        .count();
    assert_eq!(calls, 2, "refresh once, retry once");
    sb.shutdown().await;
}

#[tokio::test]
async fn wrong_client_secret_is_a_session_error() {
    let sb = start(Faults::default()).await;
    let c = client_with(&sb, |s| s.client_secret = SecretString::from("wrong"));
    let mut t = CallTrace::default();
    let e = abha_err(
        c.benefit_search(
            &mut t,
            B,
            &Beneficiary::Abha(sb.state().population().abha(0)),
        )
        .await,
    );
    assert!(matches!(e, ClientError::Session(_)), "{e:?}");
    assert_eq!(e.code(), "session:900901");
    assert!(!e.to_string().contains("wrong"), "secret leaked: {e}");
    sb.shutdown().await;
}

#[tokio::test]
async fn server_errors_timeouts_and_drops_are_transient() {
    let sb = start(Faults::default()).await;
    let c = client_with(&sb, |s| s.request_timeout = Duration::from_millis(400));
    let pop = sb.state().population().clone();
    let mut t = CallTrace::default();
    c.ensure_session().await.unwrap();
    c.encryptor(&mut t).await.unwrap();

    // 5xx before the side effect.
    sb.state().set_faults(Faults {
        error_5xx_percent: 100.0,
        ..Faults::default()
    });
    let who = Beneficiary::Abha(pop.abha(20));
    let e = abha_err(c.link(&mut t, B, LinkAction::Link, &who).await);
    assert_eq!(
        (e.code().as_str(), e.disposition()),
        ("ABDM-9999", Disposition::Transient)
    );
    assert!(!sb.state().is_linked(B, &pop.abha(20).digits()));

    // A timeout after the side effect: the link happened, the answer was lost.
    sb.state().set_faults(Faults {
        timeout_percent: 100.0,
        timeout_hold_ms: 1500,
        ..Faults::default()
    });
    let e = abha_err(c.link(&mut t, B, LinkAction::Link, &who).await);
    assert!(matches!(e, ClientError::Timeout), "{e:?}");
    assert_eq!(e.disposition(), Disposition::Transient);
    assert!(sb.state().is_linked(B, &pop.abha(20).digits()));

    // A dropped connection after the side effect.
    sb.state().set_faults(Faults {
        drop_percent: 100.0,
        ..Faults::default()
    });
    let who2 = Beneficiary::Abha(pop.abha(21));
    let e = abha_err(c.link(&mut t, B, LinkAction::Link, &who2).await);
    assert!(matches!(e, ClientError::Transport(_)), "{e:?}");
    assert_eq!(e.disposition(), Disposition::Transient);

    // The retry of both finds the link done: ABDM-1140, success for the job.
    sb.state().set_faults(Faults::default());
    for w in [&who, &who2] {
        let e = abha_err(c.link(&mut t, B, LinkAction::Link, w).await);
        assert_eq!(e.disposition(), Disposition::IdempotentSuccess);
    }
    assert_eq!(
        sb.state()
            .call_log()
            .duplicate_side_effects
            .values()
            .sum::<u64>(),
        0
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn throttling_answers_are_throttled_with_retry_after() {
    let sb = start(Faults {
        rate_limit: 5.0,
        retry_after_secs: 2,
        ..Faults::default()
    })
    .await;
    let c = Arc::new(client(&sb));
    let pop = sb.state().population().clone();
    let mut throttled = 0;
    for i in 0..30u64 {
        let mut t = CallTrace::default();
        if let Err(e) = c.benefit_lookup(&mut t, B, &pop.abha(i)).await {
            assert_eq!(e.disposition(), Disposition::Throttled, "{e:?}");
            assert_eq!(e.code(), "ABDM-1022");
            assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
            throttled += 1;
        }
    }
    assert!(throttled >= 15, "only {throttled} of 30 throttled at 5/s");
    sb.shutdown().await;
}

#[tokio::test]
async fn every_error_shape_over_http() {
    let sb = start(Faults::default()).await;
    let c = client(&sb);
    let abha = sb.state().population().abha(0);
    let cases: &[(u16, &str, &str, Disposition)] = &[
        (
            404,
            r#"{"error":{"code":"ABDM-1204","message":"Not found"}}"#,
            "ABDM-1204",
            Disposition::Permanent,
        ),
        (
            404,
            r#"{"code":"ABDM-1114","message":"User not found","timestamp":"x"}"#,
            "ABDM-1114",
            Disposition::Permanent,
        ),
        (
            400,
            r#"{"abhaNumber":"Invalid ABHA number"}"#,
            "HTTP-400",
            Disposition::Permanent,
        ),
        (
            500,
            r#"[{"code":"ABDM-9999: ","message":"Something went wrong"}]"#,
            "ABDM-9999",
            Disposition::Transient,
        ),
        (
            400,
            r#"{"code":"HIS-1000","message":"Bad","details":[{"message":"field x","code":"HIS-1","attribute":{"key":"x","value":"y"}}]}"#,
            "HIS-1000",
            Disposition::Permanent,
        ),
        (
            429,
            r#"{"code":"ABDM-2429","message":"slow down"}"#,
            "ABDM-2429",
            Disposition::Throttled,
        ),
        (
            403,
            r#"{"code":"ABDM-1027","message":"Blocked for 24 hours"}"#,
            "ABDM-1027",
            Disposition::Permanent,
        ),
        (503, "", "HTTP-503", Disposition::Transient),
    ];
    for (status, body, code, disposition) in cases {
        sb.state().push_script(ScriptedResponse {
            path_contains: "/benefit/abha/".into(),
            status: *status,
            body: body.to_string(),
            retry_after: None,
            times: 1,
        });
        let mut t = CallTrace::default();
        let e = abha_err(c.benefit_lookup(&mut t, B, &abha).await);
        assert_eq!(
            (e.code().as_str(), e.disposition()),
            (*code, *disposition),
            "{body}"
        );
    }
    // The gateway shapes (900901 JSON and an empty 401) mean "refresh the session".
    for body in [r#"{"code":"900901","message":"Invalid Credentials"}"#, ""] {
        sb.state().push_script(ScriptedResponse {
            path_contains: "/benefit/abha/".into(),
            status: 401,
            body: body.to_string(),
            retry_after: None,
            times: 1,
        });
        let mut t = CallTrace::default();
        c.benefit_lookup(&mut t, B, &abha).await.unwrap();
        assert_eq!(t.attempts[0].disposition, Disposition::Auth, "{body}");
    }
    sb.shutdown().await;
}

#[tokio::test]
async fn clock_skew_is_retried_once_with_a_fresh_timestamp() {
    let sb = start(Faults::default()).await;
    let c = client(&sb);
    let abha = sb.state().population().abha(0);
    sb.state().push_script(ScriptedResponse {
        path_contains: "/benefit/abha/".into(),
        status: 400,
        body: r#"{"code":"ABDM-1016","message":"Invalid timestamp"}"#.into(),
        retry_after: None,
        times: 1,
    });
    let mut t = CallTrace::default();
    c.benefit_lookup(&mut t, B, &abha).await.unwrap();
    let codes: Vec<_> = t
        .attempts
        .iter()
        .filter(|a| a.operation == Operation::BenefitLookup)
        .map(|a| a.code.clone())
        .collect();
    assert_eq!(codes, vec![Some("ABDM-1016".to_string()), None]);

    // The sandbox itself rejects a skewed or local-offset TIMESTAMP.
    let http = reqwest::Client::new();
    let token = {
        let r: serde_json::Value = http
            .post(format!("{}/api/hiecm/gateway/v3/sessions", sb.url()))
            .json(&serde_json::json!({"clientId": abha_bulk::sandbox::DEFAULT_CLIENT_ID, "clientSecret": abha_bulk::sandbox::DEFAULT_CLIENT_SECRET}))
            .send().await.unwrap().json().await.unwrap();
        r["accessToken"].as_str().unwrap().to_string()
    };
    let old = (Utc::now() - chrono::Duration::minutes(10))
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let local = Utc::now().format("%Y-%m-%dT%H:%M:%S%.3f+05:30").to_string();
    for ts in [old, local] {
        let r = http
            .get(format!(
                "{}/abha/api/v3/profile/benefit/abha/{}",
                sb.url(),
                abha.expose()
            ))
            .bearer_auth(&token)
            .header("REQUEST-ID", uuid::Uuid::new_v4().to_string())
            .header("TIMESTAMP", ts)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], "ABDM-1016");
    }
    sb.shutdown().await;
}

#[tokio::test]
async fn rotated_key_is_fetched_again_and_bad_ciphertext_is_rejected() {
    let sb = start(Faults::default()).await;
    let c = client(&sb);
    let who = Beneficiary::Abha(sb.state().population().abha(0));
    let mut t = CallTrace::default();
    c.benefit_search(&mut t, B, &who).await.unwrap();
    let other = abha_bulk::sandbox::Decryptor::generate(1024).unwrap();
    sb.state().rotate_key(other);
    let mut t = CallTrace::default();
    c.benefit_search(&mut t, B, &who).await.unwrap();
    let seq: Vec<_> = t
        .attempts
        .iter()
        .map(|a| (a.operation, a.http_status))
        .collect();
    assert_eq!(
        seq,
        vec![
            (Operation::BenefitSearch, Some(400)),
            (Operation::Certificate, Some(200)),
            (Operation::BenefitSearch, Some(200)),
        ]
    );
}

#[tokio::test]
async fn benefit_header_name_and_children_method_are_configurable() {
    let sb = Sandbox::start(SandboxConfig {
        key: KeySource::Pem(KEY.into()),
        population: 100,
        benefit_header: "BENEFIT_NAME".into(),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let pop = sb.state().population().clone();
    let who = Beneficiary::Abha(pop.abha(0));
    let mut t = CallTrace::default();
    let wrong = client(&sb);
    let e = abha_err(wrong.benefit_search(&mut t, B, &who).await);
    assert!(e.to_string().contains("BENEFIT_NAME"), "{e}");
    let right = client_with(&sb, |s| {
        s.benefit_header = "BENEFIT_NAME".into();
        s.children_list_method = abha_bulk::config::ChildrenListMethod::Post;
    });
    right.benefit_search(&mut t, B, &who).await.unwrap();
    let parent = XToken::parse(&pop.x_token(&pop.abha(1), Utc::now().timestamp() + 60)).unwrap();
    right.list_children(&mut t, B, &parent).await.unwrap();
    assert_eq!(sb.state().call_log().requests.get("child_list"), Some(&1));
    sb.shutdown().await;
}

#[tokio::test]
async fn identifiers_never_appear_in_errors_or_debug() {
    let sb = start(Faults::default()).await;
    let c = client(&sb);
    let pop = sb.state().population().clone();
    let abha = pop.abha(999_999); // not seeded
    let mut t = CallTrace::default();
    let e = abha_err(c.benefit_lookup(&mut t, B, &abha).await);
    let shown = format!("{e} {e:?} {:?}", t.attempts);
    assert!(!shown.contains(&abha.digits()[2..]), "{shown}");
    assert!(!shown.contains(abha.expose()), "{shown}");
    // A connect failure must not print the URL (it holds the ABHA number).
    drop(c);
    let url = sb.url();
    sb.shutdown().await;
    let mut s = settings_for_sandbox(&url);
    s.connect_timeout = Duration::from_millis(300);
    let dead = AbdmClient::new(&s).unwrap();
    let e = abha_err(dead.benefit_lookup(&mut t, B, &abha).await);
    assert_eq!(e.disposition(), Disposition::Transient);
    assert!(!format!("{e} {e:?}").contains(&abha.digits()[2..]), "{e:?}");
}

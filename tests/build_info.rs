//! Which build runs where: `abha-bulk --version` names the release and the commit the binary
//! was built from (build.rs), and `abha-bulk probe`, the image's HEALTHCHECK, exits 0 only on
//! a 2xx answer.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_abha-bulk");

#[test]
fn version_names_the_release_and_the_commit_of_this_checkout() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    // The commit build.rs saw: ABHA_BULK_GIT_COMMIT when the build had it, else git's HEAD.
    let head = std::env::var("ABHA_BULK_GIT_COMMIT").ok().or_else(|| {
        Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    });
    let commit = head.unwrap_or_else(|| "unknown".into());
    assert_eq!(
        text.trim(),
        format!("abha-bulk {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );
}

/// A one-shot HTTP server answering `status` to the first request; returns its URL.
fn answer_once(status: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/healthz", listener.local_addr().unwrap());
    let status = status.to_string();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = conn.read(&mut buf);
        let body = "ok\n";
        let _ = write!(
            conn,
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    url
}

#[test]
fn probe_exits_zero_only_on_a_2xx_answer() {
    let ok = Command::new(BIN)
        .args(["probe", &answer_once("200 OK")])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("200 OK"));

    let unavailable = Command::new(BIN)
        .args(["probe", &answer_once("503 Service Unavailable")])
        .output()
        .unwrap();
    assert!(!unavailable.status.success(), "{unavailable:?}");

    // Nothing listening: a failure, quickly, without settings or secrets.
    let closed = Command::new(BIN)
        .args(["probe", "http://127.0.0.1:1/healthz", "--timeout-secs", "2"])
        .env("ABHA_BULK_CONFIG_DIR", "/nonexistent")
        .output()
        .unwrap();
    assert!(!closed.status.success(), "{closed:?}");
}

//! The browser side of `tests/console.rs`: chromedriver and Chromium in a process group of
//! their own, screenshots, and waiting for what a page shows.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

/// Where the screenshots of each step are kept.
pub const SHOTS: &str = "target/test-output/console";

pub fn driver_path() -> Option<PathBuf> {
    std::env::var_os("ABHA_BULK_CHROMEDRIVER")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/usr/bin/chromedriver")))
        .filter(|p| p.exists())
}

pub fn chromium_path() -> String {
    std::env::var("ABHA_BULK_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// chromedriver and the Chromium it starts, in a process group of their own: killed whole
/// when dropped, so a failing test leaves no browser behind.
pub struct Driver(tokio::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(pid) = self.0.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
    }
}

/// chromedriver as a child process and a browser session through it.
pub async fn browser(driver: &Path, profile: &Path) -> (Driver, Client) {
    let port = free_port();
    let child = tokio::process::Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map(Driver)
        .expect("chromedriver starts");
    let caps = json!({"goog:chromeOptions": {
        "binary": chromium_path(),
        "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1400", format!("--user-data-dir={}", profile.display())],
    }});
    let caps = caps.as_object().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // chromedriver listens on loopback over plain HTTP: no TLS connector needed.
        let builder = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await;
        match builder {
            Ok(c) => return (child, c),
            Err(e) if Instant::now() > deadline => panic!("no browser session: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

pub async fn shot(c: &Client, name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(SHOTS);
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

pub async fn text(c: &Client, css: &str) -> String {
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
        .text()
        .await
        .unwrap()
}

/// Waits (up to 10 s) for the page's heading to read `want` (a click's navigation is
/// asynchronous: the old page may still be there).
pub async fn heading(c: &Client, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h1 = match c.find(Locator::Css("h1")).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if h1 == want {
            return;
        }
        assert!(Instant::now() < deadline, "heading {h1:?}, not {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Types `key` into the sign-in form on the current page and sends it.
pub async fn submit_key(c: &Client, key: &str) {
    c.wait()
        .for_element(Locator::Id("key"))
        .await
        .unwrap()
        .send_keys(key)
        .await
        .unwrap();
    c.find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

pub async fn sign_in(c: &Client, base: &str, key: &str) {
    c.goto(&format!("{base}/console")).await.unwrap();
    submit_key(c, key).await;
    heading(c, "Batches").await;
    let url = c.current_url().await.unwrap();
    assert!(
        !url.as_str().contains(key),
        "the key is never in an address"
    );
}

pub async fn session_cookie(c: &Client) -> String {
    let cookie = c.get_named_cookie("abha_console").await.expect("cookie");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.secure(), Some(true));
    format!("abha_console={}", cookie.value())
}

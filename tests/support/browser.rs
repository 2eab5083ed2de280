//! A real browser for the status page's tests: Debian's `chromium`, headless, driven over
//! WebDriver by `chromedriver` (Debian's `chromium-driver`) on a free loopback port.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};

/// chromedriver and one browser session, both ended when dropped.
pub struct Browser {
    pub client: Client,
    driver: Child,
}

impl Browser {
    /// Starts chromedriver and a headless chromium with a window of `width` × `height`.
    pub async fn start(width: u32, height: u32) -> Self {
        let port = super::free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so that the browser it starts ends with it (Drop).
            .process_group(0)
            .spawn()
            .expect("start chromedriver (Debian package chromium-driver; scripts/setup-dev installs it)");
        super::wait_listening(super::loopback(port), Duration::from_secs(20)).await;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    format!("--window-size={width},{height}"),
                ]
            }),
        );
        let client = ClientBuilder::rustls()
            .expect("rustls client")
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a chromium session through chromedriver");
        Browser { client, driver }
    }

    /// Runs `script` (a function body that returns a value) in the page.
    pub async fn eval(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Evaluates `script` until `done` accepts its value, or panics after `limit` with `what`.
    pub async fn wait_for(&self, what: &str, limit: Duration, script: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let v = self.eval(script).await;
            if done(&v) {
                return v;
            }
            assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}; last value: {v}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Saves a PNG screenshot of the window to `path`.
    pub async fn screenshot(&self, path: &std::path::Path) {
        let png = self.client.screenshot().await.expect("screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot directory");
        }
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and the chromium it started share a process group: end them all.
        // `--` before the negative id: procps' kill read `kill -KILL -PGID` otherwise as
        // something else and killed every process of the machine (the CI run with it).
        let pgid = self.driver.id();
        if pgid > 1 {
            let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{pgid}")]).status();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

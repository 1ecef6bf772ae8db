//! A real headless Chromium, driven through Debian's `chromedriver` with fantoccini.
//!
//! Every `*.test` host name resolves to 127.0.0.1 inside this browser, so a test can open
//! `http://app.test:PORT/` on its gateway. The driver process and the session end on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use super::gateway::free_port;

/// A browser session.
pub struct Browser {
    /// The WebDriver client.
    pub client: Client,
    driver: Child,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium. Panics with installation advice if either
    /// is missing (`make test` installs them).
    pub async fn start() -> Self {
        Self::start_with(None, &[]).await
    }

    /// A browser started with extra Chromium flags (e.g. `--ignore-certificate-errors`).
    pub async fn start_with_args(args: &[&str]) -> Self {
        Self::start_with(None, args).await
    }

    /// A browser whose viewport is `width` CSS pixels wide (a phone), through Chromium's
    /// device emulation.
    pub async fn start_narrow(width: u32) -> Self {
        Self::start_with(Some(width), &[]).await
    }

    async fn start_with(width: Option<u32>, extra: &[&str]) -> Self {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run chromedriver ({e}): apt-get install chromium chromium-driver")
            });
        let mut capabilities = serde_json::Map::new();
        let mut options = json!({
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1024,768",
                "--host-resolver-rules=MAP *.test 127.0.0.1",
            ]
        });
        if let Some(args) = options["args"].as_array_mut() {
            args.extend(extra.iter().map(|arg| json!(arg)));
        }
        if let Some(width) = width {
            options["mobileEmulation"] = json!({
                "deviceMetrics": { "width": width, "height": 640, "pixelRatio": 1.0 }
            });
        }
        if std::path::Path::new("/usr/bin/chromium").exists() {
            options["binary"] = json!("/usr/bin/chromium");
        }
        capabilities.insert("goog:chromeOptions".into(), options);
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("cannot open a browser session: {error}"),
            }
        };
        Self { client, driver }
    }

    /// Runs `script` (a function body) in the page and returns its JSON result.
    pub async fn eval(&self, script: &str) -> serde_json::Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or(serde_json::Value::Null)
    }

    /// Polls `script` until it returns `true`, or panics after `timeout` with `what`.
    pub async fn wait_until(&self, script: &str, timeout: Duration, what: &str) {
        if !self.poll_until(script, timeout).await {
            panic!("{what}: not within {timeout:?}\n{}", self.state().await);
        }
    }

    /// Polls `script` until it returns `true` (then `true`), or until `timeout` (`false`).
    pub async fn poll_until(&self, script: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(script).await == json!(true) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// What the page is, for a failure's message: its source, and every resource it loaded
    /// (name, status, protocol, duration).
    pub async fn state(&self) -> String {
        let page = self.client.source().await.unwrap_or_default();
        let resources = self
            .eval(
                "return performance.getEntriesByType('resource').map(e => \
                 [e.name, e.responseStatus, e.nextHopProtocol, Math.round(e.duration)].join(' '))",
            )
            .await;
        format!("the page loaded: {resources}\nthe page is:\n{page}")
    }

    /// The text of the element matching `css`, if there is one.
    pub async fn text(&self, css: &str) -> Option<String> {
        let element = self.client.find(Locator::Css(css)).await.ok()?;
        element.text().await.ok()
    }

    /// Ends the session (also done, less politely, on drop).
    pub async fn close(mut self) {
        let client = self.client.clone();
        let _ = client.close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

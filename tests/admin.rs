//! Operating the gateway: the admin listener (metrics, routes, wake and sleep by hand), privacy
//! of the public endpoints, and clients that must not wake anything — against the real Docker
//! engine, through the real binary.
#![allow(clippy::unwrap_used, unreachable_pub)] // A test: a failed unwrap is a failed test; helpers are shared.

mod common;

use std::time::{Duration, Instant};

use common::container::TestContainer;
use common::engine::EventCounter;
use common::eventually;
use common::gateway::{free_port, Gateway};
use common::image::INDEX_BODY;

const WAIT: Duration = Duration::from_secs(20);

/// A config with the route `name` (host `name.test`) in front of `container`, an admin listener
/// on `admin`, and `extra` route keys (each line indented by six spaces).
fn config(name: &str, container: &str, admin: &str, extra: &str) -> String {
    format!(
        "idlewatcher:\n  listen: [\"@LISTEN@\"]\n  admin: {admin}\n  routes:\n    - name: {name}\n      hosts: [\"{name}.test\"]\n      docker: {{ container: {container} }}\n      port: 80\n{extra}"
    )
}

/// An admin API client: `base` is `http://127.0.0.1:PORT`.
struct Admin {
    base: String,
    client: reqwest::Client,
}

impl Admin {
    fn new(port: u16) -> Self {
        Self {
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    async fn post(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.client.post(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    /// The scrape, parsed by a Prometheus text-format parser.
    async fn scrape(&self) -> prometheus_parse::Scrape {
        let text = self.get("/metrics", None).await.text().await.unwrap();
        let lines = text.lines().map(|line| Ok(line.to_string()));
        prometheus_parse::Scrape::parse(lines).unwrap()
    }
}

/// The value of the sample `name` whose labels include every `(key, value)` of `labels`.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|sample| {
            sample.metric == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(key) == Some(*value))
        })
        .map(|sample| match &sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.last().map_or(0.0, |bucket| bucket.count)
            }
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

/// Waits until the route's state in `/api/routes` is `state`.
async fn wait_api_state(admin: &Admin, token: Option<&str>, route: &str, state: &str) {
    let reached = eventually(WAIT, Duration::from_millis(50), || async move {
        let routes: serde_json::Value = admin.get("/api/routes", token).await.json().await.unwrap();
        let found = routes
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == route)
            .cloned()
            .unwrap();
        if found["state"] == state {
            Ok(())
        } else {
            Err(found)
        }
    })
    .await;
    if let Err(found) = reached {
        panic!("{route} never became {state}: {found}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_one_wake_and_one_sleep() {
    let container = TestContainer::http("admin-metrics").await;
    let port = free_port();
    let gateway = Gateway::start(&config(
        "app",
        &container.name,
        &format!("{{ listen: \"127.0.0.1:{port}\" }}"),
        "      idle_timeout: 2s\n",
    ))
    .await;
    let admin = Admin::new(port);

    let before = admin.scrape().await;
    assert_eq!(
        sample(
            &before,
            "idlewatcher_route_state",
            &[("route", "app"), ("state", "napping")]
        ),
        Some(1.0)
    );
    let body = gateway
        .client()
        .get(gateway.url("app.test", "/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, INDEX_BODY);
    let awake = admin.scrape().await;
    assert_eq!(
        sample(
            &awake,
            "idlewatcher_route_state",
            &[("route", "app"), ("state", "ready")]
        ),
        Some(1.0)
    );
    gateway.wait_state("app.test", "napping", WAIT).await;

    let after = admin.scrape().await;
    let wakes = |result| {
        sample(
            &after,
            "idlewatcher_wakes_total",
            &[("route", "app"), ("result", result)],
        )
    };
    assert_eq!(wakes("ok"), Some(1.0));
    let phase_sum = |phase| {
        sample(
            &after,
            "idlewatcher_wake_duration_seconds_sum",
            &[("route", "app"), ("phase", phase)],
        )
        .unwrap_or_else(|| panic!("no {phase} phase"))
    };
    let (start, ready, total) = (phase_sum("start"), phase_sum("ready"), phase_sum("total"));
    assert!(start > 0.0 && ready > 0.0, "start {start}, ready {ready}");
    assert!(
        total >= start + ready,
        "total {total} < start {start} + ready {ready}"
    );
    assert!(total < 20.0, "total {total}");
    assert_eq!(
        sample(
            &after,
            "idlewatcher_sleeps_total",
            &[("route", "app"), ("result", "ok")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            "idlewatcher_route_state",
            &[("route", "app"), ("state", "napping")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&after, "idlewatcher_requests_held", &[("route", "app")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&after, "idlewatcher_in_flight", &[("route", "app")]),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_lists_wakes_and_sleeps_routes_behind_a_token() {
    let container = TestContainer::http("admin-api").await;
    let events = EventCounter::new(&container.name);
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("admin.token");
    std::fs::write(&token_path, "let-me-in\n").unwrap();
    let port = free_port();
    let _gateway = Gateway::start(&config(
        "app",
        &container.name,
        &format!(
            "{{ listen: \"127.0.0.1:{port}\", token_file: \"{}\" }}",
            token_path.display()
        ),
        "",
    ))
    .await;
    let admin = Admin::new(port);
    let token = Some("let-me-in");

    for wrong in [None, Some("let-me-i"), Some("let-me-in-too")] {
        let answer = admin.get("/api/routes", wrong).await;
        assert_eq!(answer.status(), 401, "token {wrong:?}");
        let answer = admin.post("/api/routes/app/wake", wrong).await;
        assert_eq!(answer.status(), 401, "token {wrong:?}");
    }
    let routes: serde_json::Value = admin.get("/api/routes", token).await.json().await.unwrap();
    let app = &routes[0];
    assert_eq!(app["name"], "app");
    assert_eq!(app["hosts"][0], "app.test");
    assert_eq!(app["state"], "napping");
    assert_eq!(app["source"], "file");
    assert!(app["backend"].as_str().unwrap().contains(&container.name));

    let woken = admin.post("/api/routes/app/wake", token).await;
    assert_eq!(woken.status(), 200);
    let woken: serde_json::Value = woken.json().await.unwrap();
    assert_eq!(woken["state"], "ready");
    assert_eq!(container.status().await, "running");
    assert_eq!(events.count("start"), 1, "{events:?}");
    // A second wake of a ready backend starts nothing.
    assert_eq!(
        admin.post("/api/routes/app/wake", token).await.status(),
        200
    );

    let slept = admin.post("/api/routes/app/sleep", token).await;
    assert_eq!(slept.status(), 200);
    let slept: serde_json::Value = slept.json().await.unwrap();
    assert_eq!(slept["state"], "napping");
    assert_ne!(container.status().await, "running");
    assert_eq!(events.count("start"), 1, "{events:?}");

    let unknown = admin.post("/api/routes/nope/wake", token).await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        unknown.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(admin.get("/api/routes/app/wake", token).await.status(), 405);
    // The metrics need no token (they carry no secret and monitors scrape them).
    assert_eq!(admin.get("/metrics", None).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_sleep_waits_for_requests_in_flight_unless_forced() {
    let container = TestContainer::http("admin-sleep").await;
    let port = free_port();
    let gateway = Gateway::start(&config(
        "app",
        &container.name,
        &format!("{{ listen: \"127.0.0.1:{port}\" }}"),
        "",
    ))
    .await;
    let admin = Admin::new(port);

    // The stream CGI answers ten lines over five seconds.
    let stream = |gateway: &Gateway| {
        let request = gateway
            .client()
            .get(gateway.url("app.test", "/cgi-bin/stream"));
        tokio::spawn(async move { request.send().await.unwrap().text().await })
    };
    let streaming = stream(&gateway);
    wait_api_state(&admin, None, "app", "ready").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    let slept = admin.post("/api/routes/app/sleep", None).await;
    assert_eq!(slept.status(), 200);
    let body = streaming.await.unwrap().unwrap();
    assert!(body.contains("line 9"), "the stream was cut: {body:?}");
    assert!(asked.elapsed() >= Duration::from_secs(3), "did not wait");
    assert_ne!(container.status().await, "running");

    let streaming = stream(&gateway);
    wait_api_state(&admin, None, "app", "ready").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    let slept = admin.post("/api/routes/app/sleep?force=true", None).await;
    assert_eq!(slept.status(), 200);
    assert!(
        asked.elapsed() < Duration::from_secs(4),
        "a forced sleep waited"
    );
    let cut = streaming.await.unwrap();
    assert!(
        cut.as_ref().map_or(true, |body| !body.contains("line 9")),
        "the stream survived a forced sleep: {cut:?}"
    );
}

/// A wake that fails (the backend never listens), seen by a visitor: with `show_details: false`
/// the page, the events and the status name neither the container nor its address nor the
/// engine's words; with `true` they do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_details_a_failed_wake_shows_no_backend_name_address_or_error_text() {
    for details in [false, true] {
        let container = TestContainer::with_cmd("admin-private", &["sleep", "3600"]).await;
        let port = free_port();
        let gateway = Gateway::start(&config(
            "app",
            &container.name,
            &format!("{{ listen: \"127.0.0.1:{port}\" }}"),
            &format!("      wake_timeout: 2s\n      show_details: {details}\n"),
        ))
        .await;
        let client = gateway.client();
        let page = client
            .get(gateway.url("app.test", "/"))
            .header("accept", "text/html")
            .header("sec-fetch-mode", "navigate")
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 503);
        let page = page.text().await.unwrap();
        let events = gateway
            .event_history("app.test", "error", Duration::from_secs(10))
            .await;
        assert!(events.iter().any(|e| e["type"] == "error"), "{events:?}");
        let events = serde_json::to_string(&events).unwrap();
        let status = gateway.status("app.test").await.to_string();
        let held = client
            .get(gateway.url("app.test", "/api"))
            .send()
            .await
            .unwrap();
        assert_eq!(held.status(), 503);
        let held = held.text().await.unwrap();

        let shown = [&page, &events, &status, &held];
        for (what, text) in ["page", "events", "status", "503"].iter().zip(shown) {
            let leaks = [
                text.contains(&container.name),
                text.contains("172.1"),
                text.contains("did not become ready") || text.contains("connection refused"),
            ];
            if details {
                if *what != "page" {
                    assert!(
                        leaks.iter().any(|&leak| leak),
                        "{what} shows no detail: {text}"
                    );
                }
            } else {
                assert_eq!(leaks, [false; 3], "{what} leaks a detail: {text}");
            }
        }
        if !details {
            assert!(
                events.contains("The service could not be started"),
                "{events}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ignored_user_agent_wakes_nothing_but_passes_once_awake() {
    let container = TestContainer::http("admin-agents").await;
    let events = EventCounter::new(&container.name);
    let port = free_port();
    let gateway = Gateway::start(&config(
        "app",
        &container.name,
        &format!("{{ listen: \"127.0.0.1:{port}\" }}"),
        "      ignore_user_agents: [uptime-kuma, bot]\n",
    ))
    .await;
    let monitor = gateway
        .client_builder()
        .user_agent("Uptime-Kuma/1.23")
        .build()
        .unwrap();
    let refused = monitor
        .get(gateway.url("app.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gateway.status("app.test").await["state"], "napping");
    assert_eq!(events.count("start"), 0, "{events:?}");

    let visitor = gateway
        .client()
        .get(gateway.url("app.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(visitor.text().await.unwrap(), INDEX_BODY);
    let passed = monitor
        .get(gateway.url("app.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(passed.status(), 200);
    assert_eq!(events.count("start"), 1, "{events:?}");

    let admin = Admin::new(port);
    let scrape = admin.scrape().await;
    assert_eq!(
        sample(
            &scrape,
            "idlewatcher_requests_rejected_total",
            &[("route", "app"), ("reason", "ignored_user_agent")]
        ),
        Some(1.0)
    );
}

//! Issue 3 acceptance: the `events` SSE endpoint, the internal endpoints, and who gets the
//! loading page — against the real gateway and the real Docker engine.
#![allow(clippy::unwrap_used, unreachable_pub)] // A test: a failed unwrap is a failed test; helpers are shared.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::container::TestContainer;
use common::engine::EventCounter;
use common::gateway::{one_route, Gateway};
use common::http::{exchange, SseEvent as Event, SseStream};
use common::image::INDEX_BODY;

/// A backend that takes about `secs` seconds to start listening (so a wake can be watched).
async fn slow_backend(prefix: &str, secs: u32) -> TestContainer {
    TestContainer::with_cmd(
        prefix,
        &["sh", "-c", &format!("sleep {secs}; exec /bin/serve")],
    )
    .await
}

/// Sends a held request in the background (it wakes the backend).
fn wake_in_background(gateway: &Gateway, host: &str) -> tokio::task::JoinHandle<u16> {
    let request = gateway.client().get(gateway.url(host, "/"));
    tokio::spawn(async move {
        request
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_subscriber_gets_the_history_in_order_then_live_events() {
    let container = slow_backend("sse-late", 2).await;
    let gateway = Gateway::start(&one_route("late", &container.name, "")).await;
    let held = wake_in_background(&gateway, "late.test");
    gateway
        .wait_state("late.test", "starting", Duration::from_secs(10))
        .await;
    // Join mid-wake: `starting` and `container_woke` already happened.
    let mut early = gateway.subscribe("late.test", None).await;
    let first = early.next(Duration::from_secs(5)).await.expect("history");
    assert_eq!(first.kind(), "starting", "history comes first");
    assert!(early.retry_seen, "retry: is sent once, first");
    let mut events = vec![first];
    events.extend(early.until("ready", Duration::from_secs(20)).await);
    let kinds: Vec<&str> = events.iter().map(Event::kind).collect();
    assert_eq!(
        kinds,
        ["starting", "container_woke", "waiting_ready", "ready"],
        "{events:?}"
    );
    assert!(
        events.windows(2).all(|pair| pair[0].id < pair[1].id),
        "ids increase"
    );
    for event in &events {
        assert_eq!(event.data["route"], "late");
        let timestamp = event.data["timestamp"].as_str().expect("a timestamp");
        humantime::parse_rfc3339(timestamp).expect("RFC 3339");
        assert!(event.data.get("message").is_some_and(|m| m.is_string()));
        assert!(event.data.get("error").is_some_and(|e| e.is_null()));
    }
    assert_eq!(held.await.expect("held request"), 200);

    // Resuming with Last-Event-ID returns only what came after it.
    let woke = events[1].id;
    let mut resumed = gateway.subscribe("late.test", Some(woke)).await;
    let rest = resumed.until("ready", Duration::from_secs(5)).await;
    let kinds: Vec<&str> = rest.iter().map(Event::kind).collect();
    assert_eq!(kinds, ["waiting_ready", "ready"]);
    assert!(rest.iter().all(|event| event.id > woke));
    // And the query parameter means the same, for clients that cannot set the header.
    let response = gateway
        .client()
        .get(gateway.url(
            "late.test",
            &format!("/.idlewatcher/events?last_event_id={}", events[2].id),
        ))
        .send()
        .await
        .expect("events answered");
    let mut by_query = SseStream::new(response);
    let rest = by_query.until("ready", Duration::from_secs(5)).await;
    assert_eq!(rest.len(), 1, "{rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_all_receive_ready() {
    let container = slow_backend("sse-fan", 2).await;
    let gateway = Gateway::start(&one_route("fan", &container.name, "")).await;
    let client = gateway
        .client_builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let mut subscribers = Vec::new();
    for _ in 0..1000 {
        subscribers.push(gateway.subscribe_with(&client, "fan.test", None).await);
    }
    let woke_at = Instant::now();
    let held = wake_in_background(&gateway, "fan.test");
    let mut waiting = tokio::task::JoinSet::new();
    for mut subscriber in subscribers {
        waiting.spawn(async move {
            let events = subscriber.until("ready", Duration::from_secs(30)).await;
            events.last().map(|event| event.id)
        });
    }
    let mut received = 0;
    while let Some(result) = waiting.join_next().await {
        assert!(result.expect("subscriber task").is_some());
        received += 1;
    }
    assert_eq!(received, 1000);
    assert_eq!(held.await.expect("held request"), 200);
    println!(
        "MEASURE sse fan-out: 1000 subscribers all got ready {:?} after the wake began",
        woke_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_delays_nobody_and_its_task_ends_when_it_leaves() {
    let container = slow_backend("sse-stuck", 1).await;
    let gateway = Gateway::start(&one_route("stuck", &container.name, "")).await;
    // A raw client that asks for the stream and then never reads a byte, with a tiny receive
    // buffer so the gateway's writes back up.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(1024).expect("small buffer");
    socket.connect(&gateway.address.into()).expect("connect");
    let mut stuck: std::net::TcpStream = socket.into();
    let port = stuck.local_addr().expect("local address").port();
    stuck
        .write_all(
            b"GET /.idlewatcher/events HTTP/1.1\r\nHost: stuck.test\r\nAccept: text/event-stream\r\n\r\n",
        )
        .expect("request sent");

    let mut reader = gateway.subscribe("stuck.test", None).await;
    let woke_at = Instant::now();
    let held = wake_in_background(&gateway, "stuck.test");
    let events = reader.until("ready", Duration::from_secs(20)).await;
    assert_eq!(events.last().map(Event::kind), Some("ready"));
    assert_eq!(held.await.expect("held request"), 200);
    assert!(
        woke_at.elapsed() < Duration::from_secs(10),
        "the wake was not delayed by the stuck subscriber"
    );
    assert!(
        gateway.holds_connection_from(port).await,
        "the stuck subscriber is still connected"
    );

    drop(stuck);
    let deadline = Instant::now() + Duration::from_secs(5);
    while gateway.holds_connection_from(port).await {
        assert!(
            Instant::now() < deadline,
            "the gateway still holds the departed subscriber's connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_sends_keepalive_comments() {
    let container = TestContainer::http("sse-keepalive").await;
    let gateway = Gateway::start(&one_route("keepalive", &container.name, "")).await;
    let mut subscriber = gateway.subscribe("keepalive.test", None).await;
    // Nothing happens on this route: after 15 s the first keepalive comment arrives.
    assert!(subscriber.next(Duration::from_secs(17)).await.is_none());
    assert!(subscriber.retry_seen);
    assert!(subscriber.comments >= 1, "no `: keepalive` comment in 17 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_work_over_http2() {
    let container = slow_backend("sse-h2", 1).await;
    let gateway = Gateway::start(&one_route("htwo", &container.name, "")).await;
    let client = gateway
        .client_builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let response = client
        .get(gateway.url("htwo.test", "/.idlewatcher/events"))
        .send()
        .await
        .expect("events answered over h2c");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let mut subscriber = SseStream::new(response);
    let held = wake_in_background(&gateway, "htwo.test");
    let events = subscriber.until("ready", Duration::from_secs(20)).await;
    assert_eq!(events.first().map(Event::kind), Some("starting"));
    assert_eq!(held.await.expect("held request"), 200);
    // A held request over HTTP/2 is proxied too.
    let answer = client
        .get(gateway.url("htwo.test", "/"))
        .send()
        .await
        .expect("answered");
    assert_eq!(answer.text().await.expect("body"), INDEX_BODY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_endpoints_never_wake_and_are_served_when_ready() {
    let container = TestContainer::http("internal").await;
    let engine = EventCounter::new(&container.name);
    let gateway = Gateway::start(&one_route("internal", &container.name, "")).await;
    let client = gateway.client();
    for path in [
        "/.idlewatcher/loading.js",
        "/.idlewatcher/style.css",
        "/.idlewatcher/status",
        "/favicon.ico",
    ] {
        let response = client
            .get(gateway.url("internal.test", path))
            .send()
            .await
            .expect("answered");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
    }
    // The events endpoint too (it stays open: read only its first bytes).
    let mut subscriber = gateway.subscribe("internal.test", None).await;
    assert!(subscriber.next(Duration::from_millis(300)).await.is_none());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        engine.count("start"),
        0,
        "an internal endpoint woke the backend"
    );
    assert_eq!(gateway.status("internal.test").await["state"], "napping");

    // Once ready, the assets are still answered by the gateway, not the backend.
    let woke = client
        .get(gateway.url("internal.test", "/"))
        .send()
        .await
        .expect("answered");
    assert_eq!(woke.text().await.expect("body"), INDEX_BODY);
    let script = client
        .get(gateway.url("internal.test", "/.idlewatcher/loading.js"))
        .send()
        .await
        .expect("answered");
    assert_eq!(script.status(), 200);
    assert!(script.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert_eq!(
        script.text().await.expect("body"),
        include_str!("../assets/loading.js")
    );
    let style = client
        .get(gateway.url("internal.test", "/.idlewatcher/style.css"))
        .send()
        .await
        .expect("answered");
    assert_eq!(
        style.text().await.expect("body"),
        include_str!("../assets/style.css")
    );
}

/// What the gateway answered to one request shape, in a word.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// 503 with the HTML loading page.
    LoadingPage,
    /// 503 with application/problem+json (held, then the wake failed).
    Problem,
}

/// Sends a raw HTTP/1.1 request and classifies the answer.
async fn classify(gateway: &Gateway, request: &str) -> (Answer, String) {
    let text = exchange(gateway.address, request).await;
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 503"), "not a 503: {text}");
    assert!(head.contains("retry-after:"), "no Retry-After: {text}");
    assert!(
        head.contains("cache-control: no-store"),
        "cacheable: {text}"
    );
    let answer = if head.contains("content-type: text/html") {
        Answer::LoadingPage
    } else if head.contains("content-type: application/problem+json") {
        Answer::Problem
    } else {
        panic!("neither the page nor a problem: {text}");
    };
    (answer, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_browser_navigations_get_the_loading_page() {
    use Answer::{LoadingPage, Problem};
    // A route whose container does not exist: every wake fails at once, so held requests are
    // answered with a problem quickly, and navigations with the page.
    let gateway = Gateway::start(&one_route(
        "shapes",
        "idlewatcher-test-no-such-container",
        "      wake_timeout: 2s\n",
    ))
    .await;
    let navigate =
        "Sec-Fetch-Mode: navigate\r\nSec-Fetch-Dest: document\r\nSec-Fetch-Site: none\r\n";
    let html = "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n";
    let cases: Vec<(&str, String, Answer)> = vec![
        ("chrome navigation", format!("GET / HTTP/1.1\r\n{navigate}{html}"), LoadingPage),
        ("firefox navigation, no Sec-Fetch", format!("GET /page HTTP/1.1\r\n{html}"), LoadingPage),
        ("safari-style Accept", "GET / HTTP/1.1\r\nAccept: text/html\r\n".into(), LoadingPage),
        ("navigation into an iframe", "GET / HTTP/1.1\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Dest: iframe\r\nAccept: text/html\r\n".into(), LoadingPage),
        ("fetch() with */*", "GET /api HTTP/1.1\r\nAccept: */*\r\nSec-Fetch-Mode: cors\r\nSec-Fetch-Dest: empty\r\n".into(), Problem),
        ("curl", "GET / HTTP/1.1\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n".into(), Problem),
        ("axios", "GET /api/items HTTP/1.1\r\nAccept: application/json, text/plain, */*\r\nUser-Agent: axios/1.6.0\r\n".into(), Problem),
        ("no Accept at all", "GET / HTTP/1.1\r\n".into(), Problem),
        ("text/html;q=0", "GET / HTTP/1.1\r\nAccept: text/html;q=0, application/json\r\n".into(), Problem),
        ("WebSocket upgrade", format!("GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{html}"), Problem),
        ("HEAD with text/html", format!("HEAD / HTTP/1.1\r\n{html}"), Problem),
        ("form POST navigation", format!("POST /form HTTP/1.1\r\n{navigate}{html}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\na=1"), Problem),
        ("img sub-resource", "GET /logo.png HTTP/1.1\r\nAccept: image/avif,image/webp,*/*\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Dest: image\r\n".into(), Problem),
        ("script sub-resource", "GET /app.js HTTP/1.1\r\nAccept: */*\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Dest: script\r\n".into(), Problem),
        ("style sub-resource", "GET /app.css HTTP/1.1\r\nAccept: text/css,*/*;q=0.1\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Dest: style\r\n".into(), Problem),
        ("EventSource", "GET /stream HTTP/1.1\r\nAccept: text/event-stream\r\nSec-Fetch-Mode: cors\r\nSec-Fetch-Dest: empty\r\n".into(), Problem),
        ("XHR asking for HTML", "GET /fragment HTTP/1.1\r\nAccept: text/html\r\nSec-Fetch-Mode: cors\r\nSec-Fetch-Dest: empty\r\n".into(), Problem),
        ("prefetch", "GET / HTTP/1.1\r\nAccept: text/html\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Dest: empty\r\nSec-Purpose: prefetch\r\n".into(), Problem),
        ("JSON API POST", "POST /api HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}".into(), Problem),
    ];
    assert!(cases.len() >= 15);
    for (name, request, expected) in cases {
        let (head, body) = match request.split_once("\r\n\r\n") {
            Some((head, body)) => (head.to_string(), body.to_string()),
            None => (request.trim_end().to_string(), String::new()),
        };
        let request = format!(
            "{}\r\nHost: shapes.test\r\nConnection: close\r\n\r\n{body}",
            head.trim_end()
        );
        let (answer, text) = classify(&gateway, &request).await;
        assert_eq!(answer, expected, "{name}: {text}");
        if answer == LoadingPage {
            assert!(
                text.contains("id=\"route-name\">shapes<"),
                "{name}: the page names the route"
            );
        } else {
            let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
            if !body.is_empty() {
                let problem: serde_json::Value = serde_json::from_str(body).expect("JSON");
                assert_eq!(problem["status"], 503, "{name}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_stay_text_in_the_page_and_the_events() {
    let hostile = r#"</title><script>alert("x")</script>'"#;
    let config = format!(
        "idlewatcher:\n  listen: [\"@LISTEN@\"]\n  routes:\n    - name: '{}'\n      hosts: [\"hostile.test\"]\n      docker: {{ container: idlewatcher-test-no-such-container }}\n      port: 80\n      show_details: true\n",
        hostile.replace('\'', "''")
    );
    let gateway = Gateway::start(&config).await;
    // The engine answered (start-up does not wait for it): the wake's error is the missing
    // container, not an engine still connecting on a loaded machine.
    assert!(
        gateway
            .wait_for_log("Docker event stream connected", Duration::from_secs(30))
            .await,
        "{}",
        gateway.logs()
    );
    let page = gateway
        .client()
        .get(gateway.url("hostile.test", "/"))
        .header("accept", "text/html")
        .send()
        .await
        .expect("answered");
    assert_eq!(page.status(), 503);
    let html = page.text().await.expect("page");
    assert!(!html.contains("<script>alert"), "markup injected: {html}");
    assert_eq!(
        html.matches("<script").count(),
        1,
        "only our own script tag"
    );
    assert!(html.contains("&lt;/title&gt;&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#39;"));

    let mut subscriber = gateway.subscribe("hostile.test", None).await;
    let events = subscriber.until("error", Duration::from_secs(10)).await;
    let error = events.last().expect("an error event");
    assert_eq!(
        error.data["route"], hostile,
        "the name survives JSON intact"
    );
    assert!(
        error.data["error"]
            .as_str()
            .is_some_and(|e| e.contains("not found")),
        "{:?}",
        error.data
    );
}

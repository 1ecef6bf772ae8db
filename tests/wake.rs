//! Issue 2 acceptance: wake on request, end to end, against the real Docker engine.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::docker::{EventCounter, TestContainer, INDEX_BODY};
use common::gateway::{one_route, Gateway};

/// The RFC 3339 timestamp of the first event of `kind` in the route's event history.
async fn event_time(gateway: &Gateway, host: &str, kind: &str) -> Option<SystemTime> {
    let history = gateway
        .event_history(host, kind, Duration::from_millis(500))
        .await;
    let event = history.iter().find(|event| event["type"] == kind)?;
    humantime::parse_rfc3339(event["timestamp"].as_str()?).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_requests_start_the_container_once() {
    let container = TestContainer::http_async("herd").await;
    let engine = EventCounter::new(&container.name);
    let gateway = Gateway::start(&one_route(
        "herd",
        &container.name,
        "      max_waiters: 5000\n",
    ));
    let client = gateway.client();
    let url = gateway.url("herd.test", "/");
    let started = Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..2000 {
        let client = client.clone();
        let url = url.clone();
        requests.spawn(async move {
            let response = client.get(&url).send().await.expect("answered");
            let status = response.status().as_u16();
            let body = response.text().await.expect("a body");
            (status, body, SystemTime::now())
        });
    }
    let mut last_answer = SystemTime::UNIX_EPOCH;
    let mut answered = 0;
    while let Some(result) = requests.join_next().await {
        let (status, body, at) = result.expect("request task");
        assert_eq!(status, 200, "body: {body}");
        assert_eq!(body, INDEX_BODY);
        last_answer = last_answer.max(at);
        answered += 1;
    }
    assert_eq!(answered, 2000);
    let elapsed = started.elapsed();
    // Let late engine events arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        engine.count("start"),
        1,
        "engine events: {:?}",
        engine.actions()
    );
    let ready = event_time(&gateway, "herd.test", "ready")
        .await
        .expect("a ready event in the history");
    let release = last_answer.duration_since(ready).unwrap_or_default();
    println!(
        "MEASURE herd: 2000 requests answered in {elapsed:?}; first successful probe → last held \
         request answered: {release:?}"
    );
}

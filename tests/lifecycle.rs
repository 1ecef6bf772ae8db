//! Dependencies and shutdown, against the real gateway and Docker engine.
#![allow(clippy::unwrap_used, unreachable_pub)] // A test: a failed unwrap is a failed test; helpers are shared.

mod common;

use std::time::{Duration, Instant};

use common::container::TestContainer;
use common::engine::EventCounter;
use common::gateway::Gateway;
use common::image::INDEX_BODY;
use futures_util::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_is_woken_and_healthy_first() {
    // The database takes a second to listen; the app must not start before it answers.
    let db = TestContainer::with_cmd("dep-db", &["sh", "-c", "sleep 1; exec /bin/serve"]).await;
    let app = TestContainer::http("dep-app").await;
    let db_events = EventCounter::new(&db.name);
    let app_events = EventCounter::new(&app.name);
    let gateway = Gateway::start(&format!(
        "idlewatcher:\n  listen: [\"@LISTEN@\"]\n  routes:\n\
         \x20   - {{ name: db, hosts: [db.test], docker: {{ container: {} }}, port: 80 }}\n\
         \x20   - {{ name: app, hosts: [app.test], docker: {{ container: {} }}, port: 80, depends_on: [\"db:service_healthy\"] }}\n",
        db.name, app.name
    ))
    .await;
    let answer = gateway
        .client()
        .get(gateway.url("app.test", "/"))
        .send()
        .await
        .expect("answered");
    assert_eq!(answer.text().await.expect("body"), INDEX_BODY);
    // `docker events` may deliver the starts a moment after the answer.
    for counter in [&db_events, &app_events] {
        assert!(
            counter.wait_for("start", Duration::from_secs(5)).await,
            "{:?}",
            counter.actions()
        );
    }
    assert_eq!(db_events.count("start"), 1, "{:?}", db_events.actions());
    assert_eq!(app_events.count("start"), 1, "{:?}", app_events.actions());
    let started = |counter: &EventCounter| {
        counter
            .events()
            .iter()
            .find(|event| event.action == "start")
            .map(|event| event.time_nano)
            .expect("a start event")
    };
    let (db_started, app_started) = (started(&db_events), started(&app_events));
    assert!(
        app_started >= db_started + 900_000_000,
        "the app started before its dependency answered: db {db_started:?}, app {app_started:?}"
    );
    assert_eq!(gateway.status("db.test").await["state"], "ready");
    let kinds = gateway
        .event_kinds("app.test", "ready", Duration::from_secs(2))
        .await;
    assert_eq!(
        kinds,
        [
            "starting",
            "waking_dep",
            "dep_ready",
            "container_woke",
            "waiting_ready",
            "ready"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_dependency_need_not_answer() {
    // `service_started`: a worker that never listens only has to be running.
    let worker = TestContainer::with_cmd("dep-worker", &["sleep", "3600"]).await;
    let app = TestContainer::http("dep-web").await;
    let gateway = Gateway::start(&format!(
        "idlewatcher:\n  listen: [\"@LISTEN@\"]\n  defaults: {{ wake_timeout: 10s }}\n  routes:\n\
         \x20   - {{ name: worker, hosts: [worker.test], docker: {{ container: {} }}, port: 80, health: {{ tcp: true }} }}\n\
         \x20   - {{ name: web, hosts: [web.test], docker: {{ container: {} }}, port: 80, depends_on: [worker] }}\n",
        worker.name, app.name
    ))
    .await;
    let answer = gateway
        .client()
        .get(gateway.url("web.test", "/"))
        .send()
        .await
        .expect("answered");
    assert_eq!(answer.status(), 200);
    assert_eq!(worker.status().await, "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_event_streams_and_exits_promptly() {
    let container = TestContainer::with_cmd("shutdown", &["sleep", "3600"]).await;
    let mut gateway = Gateway::start(&format!(
        "idlewatcher:\n  listen: [\"@LISTEN@\"]\n  routes:\n    - {{ name: down, hosts: [down.test], docker: {{ container: {} }}, port: 80, wake_timeout: 60s }}\n",
        container.name
    ))
    .await;
    let client = gateway.client();
    // An open event stream and a held request (the backend never listens).
    let events = client
        .get(gateway.url("down.test", "/.idlewatcher/events"))
        .send()
        .await
        .expect("events answered");
    let mut stream = events.bytes_stream();
    let held = tokio::spawn(client.get(gateway.url("down.test", "/")).send());
    gateway
        .wait_state("down.test", "starting", Duration::from_secs(10))
        .await;
    let signalled = Instant::now();
    let exited = tokio::spawn(async move {
        let took = gateway.terminate(Duration::from_secs(10)).await;
        (took, gateway)
    });
    // The stream ends (cleanly or not) instead of hanging.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the event stream outlived the gateway");
    let (took, _gateway) = exited.await.expect("terminate");
    let took = took.expect("the gateway did not exit within 10 s of SIGTERM");
    println!(
        "MEASURE shutdown: SIGTERM → exit in {took:?} (stream ended after {:?})",
        signalled.elapsed()
    );
    assert!(took < Duration::from_secs(6), "took {took:?}");
    // The held request got an answer or a closed connection, not a hang.
    let _ = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the held request was released");
}

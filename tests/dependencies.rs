//! Dependencies as a reference-counted graph (issue 12), against the real gateway and Docker
//! engine: a dependency-only backend is woken before its dependent, held awake while any
//! dependent is awake or busy, and sleeps its own `idle_timeout` after the last one; Docker's
//! HEALTHCHECK as readiness; chains and diamonds start each backend once, in order.
#![allow(clippy::unwrap_used, unreachable_pub)] // A test: a failed unwrap is a failed test; helpers are shared.

mod common;

use std::time::{Duration, Instant};

use common::container::TestContainer;
use common::engine::EventCounter;
use common::gateway::Gateway;
use common::image::INDEX_BODY;
use futures_util::StreamExt;

/// The gateway section shared by these tests: a fine tick so idle timeouts of 1–2 s are precise.
/// Details shown: these tests read the backends' names and errors in the public answers.
const HEAD: &str =
    "idlewatcher:\n  listen: [\"@LISTEN@\"]\n  tick: 200ms\n  defaults: { show_details: true }\n  routes:\n";

/// The engine's time of the first `action` event, in nanoseconds.
fn first(counter: &EventCounter, action: &str) -> i64 {
    counter
        .events()
        .iter()
        .find(|event| event.action == action)
        .map(|event| event.time_nano)
        .unwrap_or_else(|| panic!("no {action} of {}: {:?}", counter.name, counter.actions()))
}

/// Sends one request to `host` and checks the test page came back.
async fn get_ok(gateway: &Gateway, host: &str) {
    let answer = gateway
        .client()
        .get(gateway.url(host, "/"))
        .send()
        .await
        .expect("answered");
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), INDEX_BODY);
}

/// Waits for `counter`'s `action`; panics with the gateway's log if it does not come.
async fn expect(counter: &EventCounter, action: &str, within: Duration, gateway: &Gateway) {
    assert!(
        counter.wait_for(action, within).await,
        "no {action} of {} within {within:?}: {:?}\n{}",
        counter.name,
        counter.actions(),
        gateway.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_only_db_is_held_under_traffic_and_sleeps_after_its_app() {
    let db = TestContainer::http("dep-db").await;
    let app = TestContainer::http("dep-app").await;
    let db_events = EventCounter::new(&db.name);
    let app_events = EventCounter::new(&app.name);
    let gateway = Gateway::start(&format!(
        "{HEAD}\
         \x20   - {{ name: db, docker: {{ container: {} }}, idle_timeout: 2s }}\n\
         \x20   - {{ name: app, hosts: [app.test], docker: {{ container: {} }}, port: 80, idle_timeout: 2s, depends_on: [db] }}\n",
        db.name, app.name
    ))
    .await;
    get_ok(&gateway, "app.test").await;
    expect(&app_events, "start", Duration::from_secs(5), &gateway).await;
    assert!(
        first(&db_events, "start") <= first(&app_events, "start"),
        "db first"
    );
    let status = gateway.status("app.test").await;
    assert_eq!(
        status["dependencies"][0]["held_by"],
        serde_json::json!(["app"]),
        "{status}"
    );
    assert_eq!(status["dependencies"][0]["state"], "ready", "{status}");

    // Ten seconds of traffic to the app (db's own idle_timeout is 2 s): db is never stopped.
    let traffic_until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < traffic_until {
        get_ok(&gateway, "app.test").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        db_events.count("die"),
        0,
        "db stopped under a busy app: {:?}",
        db_events.actions()
    );
    assert_eq!(db_events.count("start"), 1);
    assert_eq!(app_events.count("start"), 1);

    // Traffic ends: the app sleeps after 2 s, then db 2 s after that.
    expect(&app_events, "die", Duration::from_secs(6), &gateway).await;
    expect(&db_events, "die", Duration::from_secs(6), &gateway).await;
    let gap = Duration::from_nanos((first(&db_events, "die") - first(&app_events, "die")) as u64);
    assert!(
        gap >= Duration::from_millis(1800) && gap < Duration::from_secs(4),
        "db slept {gap:?} after the app (its idle_timeout is 2 s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_db_stays_up_while_the_other_app_is_awake() {
    let db = TestContainer::http("dep-shared-db").await;
    let short = TestContainer::http("dep-short").await;
    let long = TestContainer::http("dep-long").await;
    let db_events = EventCounter::new(&db.name);
    let short_events = EventCounter::new(&short.name);
    let gateway = Gateway::start(&format!(
        "{HEAD}\
         \x20   - {{ name: db, docker: {{ container: {} }}, idle_timeout: 1s }}\n\
         \x20   - {{ name: short, hosts: [short.test], docker: {{ container: {} }}, port: 80, idle_timeout: 1s, depends_on: [db] }}\n\
         \x20   - {{ name: long, hosts: [long.test], docker: {{ container: {} }}, port: 80, idle_timeout: 60s, depends_on: [db] }}\n",
        db.name, short.name, long.name
    ))
    .await;
    get_ok(&gateway, "short.test").await;
    get_ok(&gateway, "long.test").await;
    expect(&short_events, "die", Duration::from_secs(5), &gateway).await;
    // Well past db's own idle_timeout after `short` slept.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(db_events.count("die"), 0, "{:?}", db_events.actions());
    assert_eq!(db_events.count("start"), 1);
    let status = gateway.status("long.test").await;
    assert_eq!(
        status["dependencies"][0]["held_by"],
        serde_json::json!(["long"]),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_on_the_app_keeps_the_db_awake() {
    let db = TestContainer::http("dep-stream-db").await;
    let app = TestContainer::http("dep-stream-app").await;
    let db_events = EventCounter::new(&db.name);
    let gateway = Gateway::start(&format!(
        "{HEAD}\
         \x20   - {{ name: db, docker: {{ container: {} }}, idle_timeout: 1s }}\n\
         \x20   - {{ name: app, hosts: [app.test], docker: {{ container: {} }}, port: 80, idle_timeout: 1s, depends_on: [db] }}\n",
        db.name, app.name
    ))
    .await;
    // The stream CGI answers one line every 0.5 s for 5 s: far longer than both idle timeouts.
    let answer = gateway
        .client()
        .get(gateway.url("app.test", "/cgi-bin/stream"))
        .send()
        .await
        .expect("answered");
    let mut body = answer.bytes_stream();
    let mut lines = 0;
    while let Some(chunk) = body.next().await {
        lines += chunk.unwrap().iter().filter(|b| **b == b'\n').count();
        assert_eq!(
            db_events.count("die"),
            0,
            "db stopped under a streamed response"
        );
    }
    assert_eq!(lines, 10);
    expect(&db_events, "die", Duration::from_secs(6), &gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_health_releases_held_requests_only_once_healthy() {
    let app = TestContainer::builder("dep-health")
        .cmd(&[
            "sh",
            "-c",
            "trap 'exit 0' TERM; sleep 2; /bin/serve & sleep 0.3; touch /tmp/ok; wait",
        ])
        .health_cmd("test -f /tmp/ok", Duration::from_millis(200))
        // Failures before the file exists do not count: `starting` until the first success.
        .arg("--health-start-period")
        .arg("10s")
        .create()
        .await;
    let events = EventCounter::new(&app.name);
    let gateway = Gateway::start(&format!(
        "{HEAD}\
         \x20   - {{ name: app, hosts: [app.test], docker: {{ container: {} }}, port: 80, health: {{ docker: true }} }}\n",
        app.name
    ))
    .await;
    get_ok(&gateway, "app.test").await;
    let answered = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    expect(
        &events,
        "health_status: healthy",
        Duration::from_secs(5),
        &gateway,
    )
    .await;
    let healthy = first(&events, "health_status: healthy");
    assert!(
        healthy <= answered,
        "answered before the container was healthy"
    );
    assert!(
        healthy - first(&events, "start") >= 1_900_000_000,
        "healthy after ~2 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_healthy_waits_for_a_dependencys_healthcheck_when_it_has_no_probe() {
    // db: dependency-only, no `health` set, a HEALTHCHECK that passes 2 s after the start.
    let db = TestContainer::builder("dep-hc-db")
        .cmd(&[
            "sh",
            "-c",
            "trap 'exit 0' TERM; sleep 2; touch /tmp/ok; sleep 3600 & wait",
        ])
        .health_cmd("test -f /tmp/ok", Duration::from_millis(200))
        .arg("--health-start-period")
        .arg("10s")
        .create()
        .await;
    let app = TestContainer::http("dep-hc-app").await;
    let db_events = EventCounter::new(&db.name);
    let app_events = EventCounter::new(&app.name);
    let gateway = Gateway::start(&format!(
        "{HEAD}\
         \x20   - {{ name: db, docker: {{ container: {} }} }}\n\
         \x20   - {{ name: app, hosts: [app.test], docker: {{ container: {} }}, port: 80, depends_on: [\"db:service_healthy\"] }}\n",
        db.name, app.name
    ))
    .await;
    get_ok(&gateway, "app.test").await;
    expect(&app_events, "start", Duration::from_secs(5), &gateway).await;
    expect(
        &db_events,
        "health_status: healthy",
        Duration::from_secs(5),
        &gateway,
    )
    .await;
    let healthy = db_events
        .events()
        .iter()
        .find(|event| event.action == "health_status: healthy")
        .map(|event| event.time_nano)
        .unwrap_or_else(|| panic!("db never healthy: {:?}", db_events.actions()));
    assert!(
        first(&app_events, "start") >= healthy,
        "the app started before its dependency was healthy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_container_is_a_503_with_the_reason() {
    let app = TestContainer::builder("dep-unhealthy")
        .health_cmd("echo db not migrated; false", Duration::from_millis(200))
        .arg("--health-retries")
        .arg("1")
        .create()
        .await;
    let gateway = Gateway::start(&format!(
        "{HEAD}\
         \x20   - {{ name: app, hosts: [app.test], docker: {{ container: {} }}, port: 80, health: {{ docker: true }} }}\n",
        app.name
    ))
    .await;
    let answer = gateway
        .client()
        .get(gateway.url("app.test", "/"))
        .send()
        .await
        .expect("answered");
    assert_eq!(answer.status(), 503);
    let body = answer.text().await.unwrap();
    assert!(
        body.contains("unhealthy") && body.contains("db not migrated"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_and_a_diamond_start_each_backend_once_in_order() {
    // Chain a → b → c; diamond w → x, y; x → z; y → z. Only a and w have hosts.
    let names = ["a", "b", "c", "w", "x", "y", "z"];
    let mut containers = Vec::new();
    for name in names {
        containers.push(TestContainer::http(&format!("dep-graph-{name}")).await);
    }
    let counters: Vec<EventCounter> = containers
        .iter()
        .map(|c| EventCounter::new(&c.name))
        .collect();
    let route = |i: usize, hosts: bool, deps: &str| {
        let hosts = if hosts {
            format!("hosts: [{}.test], port: 80, ", names[i])
        } else {
            String::new()
        };
        format!(
            "    - {{ name: {}, {hosts}docker: {{ container: {} }}, depends_on: [{deps}] }}\n",
            names[i], containers[i].name
        )
    };
    let config = [
        route(0, true, "\"b:service_healthy\""),
        route(1, false, "\"c:service_healthy\""),
        route(2, false, ""),
        route(3, true, "x, y"),
        route(4, false, "z"),
        route(5, false, "z"),
        route(6, false, ""),
    ]
    .concat();
    let gateway = Gateway::start(&format!("{HEAD}{config}")).await;
    tokio::join!(get_ok(&gateway, "a.test"), get_ok(&gateway, "w.test"));
    for counter in &counters {
        expect(counter, "start", Duration::from_secs(5), &gateway).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // Any second start would show by now.
    for counter in &counters {
        assert_eq!(
            counter.count("start"),
            1,
            "{}: {:?}",
            counter.name,
            counter.actions()
        );
    }
    let start = |i: usize| first(&counters[i], "start");
    assert!(
        start(2) <= start(1) && start(1) <= start(0),
        "chain order c, b, a"
    );
    assert!(
        start(6) <= start(4) && start(6) <= start(5),
        "z before x and y"
    );
    assert!(
        start(4) <= start(3) && start(5) <= start(3),
        "x and y before w"
    );
    let kinds = gateway
        .event_kinds("w.test", "ready", Duration::from_secs(2))
        .await;
    let waking: Vec<&String> = kinds
        .iter()
        .filter(|k| k.as_str() == "waking_dep")
        .collect();
    assert_eq!(waking.len(), 2, "{kinds:?}");
    let last_dep = kinds.iter().rposition(|k| k == "dep_ready").unwrap();
    let first_waking = kinds.iter().position(|k| k == "waking_dep").unwrap();
    assert!(first_waking < last_dep, "{kinds:?}");
}

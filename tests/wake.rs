//! Issue 2 acceptance: wake on request, end to end, against the real Docker engine.
#![allow(clippy::unwrap_used, unreachable_pub)] // A test: a failed unwrap is a failed test; helpers are shared.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::container::TestContainer;
use common::engine::EventCounter;
use common::gateway::{one_route, Gateway};
use common::http::{
    expect_index, expect_problem, md5_hex, parse_responses, random_bytes, read_one_response,
    retry_after, RawAnswers,
};
use common::image::INDEX_BODY;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_requests_start_the_container_once() {
    let container = TestContainer::http("herd").await;
    let engine = EventCounter::new(&container.name);
    let gateway = Gateway::start(&one_route(
        "herd",
        &container.name,
        "      max_waiters: 5000\n",
    ))
    .await;
    let client = gateway.client();
    let url = gateway.url("herd.test", "/");
    let started = Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..2000 {
        let client = client.clone();
        let url = url.clone();
        requests.spawn(async move {
            let outcome = expect_index(&client, &url, Duration::from_secs(30)).await;
            (outcome, SystemTime::now(), started.elapsed())
        });
    }
    let mut last_answer = SystemTime::UNIX_EPOCH;
    let mut latencies = Vec::with_capacity(2000);
    let mut failures = Vec::new();
    while let Some(result) = requests.join_next().await {
        let (outcome, at, latency) = result.expect("request task");
        if let Err(e) = outcome {
            failures.push(format!("after {latency:?}: {e}"));
        }
        last_answer = last_answer.max(at);
        latencies.push(latency);
    }
    latencies.sort();
    let quantile = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let spread = format!(
        "latency p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        quantile(0.5),
        quantile(0.9),
        quantile(0.99),
        quantile(1.0)
    );
    assert!(
        failures.is_empty(),
        "{} of 2000 requests failed ({spread}); first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
    let elapsed = started.elapsed();
    // Let late engine events arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        engine.count("start"),
        1,
        "engine events: {:?}",
        engine.actions()
    );
    let ready = gateway
        .event_time("herd.test", "ready")
        .await
        .expect("a ready event in the history");
    let release = last_answer.duration_since(ready).unwrap_or_default();
    println!(
        "MEASURE herd: 2000 requests answered in {elapsed:?}; first successful probe → last held \
         request answered: {release:?}; {spread}"
    );
}

/// The herd's tail: requests that reach the gateway just after the route turned ready, while the
/// held ones are still being released, must be answered too. (In the 2,000-request herd some
/// requests always arrive after the wake, the client being slower to open 2,000 connections than
/// the backend to start; this test makes that tail large and certain.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_arriving_just_after_a_wake_are_answered_too() {
    // Listens one second after it starts: the first burst is certainly held.
    let container = TestContainer::builder("tail")
        .cmd(&["sh", "-c", "sleep 1; exec /bin/serve"])
        .create()
        .await;
    let gateway = Gateway::start(&one_route(
        "tail",
        &container.name,
        "      max_waiters: 5000\n      wake_timeout: 20s\n",
    ))
    .await;
    let client = gateway.client();
    let url = gateway.url("tail.test", "/");
    let started = Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    let mut spawn = |burst: &'static str, n: usize| {
        for _ in 0..n {
            let client = client.clone();
            let url = url.clone();
            requests.spawn(async move {
                let outcome = expect_index(&client, &url, Duration::from_secs(20)).await;
                (burst, outcome, started.elapsed())
            });
        }
    };
    spawn("held", 1000);
    gateway
        .wait_state("tail.test", "ready", Duration::from_secs(20))
        .await;
    spawn("after ready", 1000);
    let mut failures: Vec<String> = Vec::new();
    let mut failed = std::collections::BTreeMap::<&str, usize>::new();
    let mut last = Duration::ZERO;
    while let Some(result) = requests.join_next().await {
        let (burst, outcome, at) = result.expect("request task");
        last = last.max(at);
        if let Err(e) = outcome {
            *failed.entry(burst).or_default() += 1;
            if failures.len() < 5 {
                failures.push(format!("{burst}, after {at:?}: {e}"));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "failed requests per burst: {failed:?} (last answer {last:?}); first ones:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// A request body sent while the backend sleeps
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mib_post_to_a_stopped_container_arrives_intact() {
    let container = TestContainer::http("post").await;
    let engine = EventCounter::new(&container.name);
    let gateway = Gateway::start(&one_route(
        "post",
        &container.name,
        "      wake_timeout: 20s\n",
    ))
    .await;
    assert_eq!(container.status().await, "created");

    let body = random_bytes(1 << 20);
    let expected = format!("{} {}\n", md5_hex(&body).await, body.len());
    let response = gateway
        .client()
        .post(gateway.url("post.test", "/cgi-bin/sum"))
        .header("content-type", "application/octet-stream")
        .body(body)
        .timeout(Duration::from_secs(25))
        .send()
        .await
        .expect("the POST is answered");
    let status = response.status().as_u16();
    let answer = response.text().await.expect("a body");
    assert_eq!(status, 200, "body: {answer}");
    assert_eq!(
        answer, expected,
        "md5 and length of the body the backend received"
    );
    assert!(
        engine.wait_for("start", Duration::from_secs(5)).await,
        "no engine start: {:?}",
        engine.actions()
    );
    assert_eq!(engine.count("start"), 1, "{:?}", engine.actions());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_no_interim_answer_before_the_backend_is_ready() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // Runs, but answers only after a second: a window in which the route is `starting` while
    // the client waits for its 100 Continue.
    let container = TestContainer::builder("expect")
        .cmd(&["sh", "-c", "sleep 1; exec /bin/serve"])
        .create()
        .await;
    let engine = EventCounter::new(&container.name);
    let gateway = Gateway::start(&one_route(
        "expect",
        &container.name,
        "      wake_timeout: 20s\n",
    ))
    .await;
    let host = "expect.test";

    let body = random_bytes(1 << 20);
    let expected = format!("{} {}\n", md5_hex(&body).await, body.len());
    let mut stream = tokio::net::TcpStream::connect(gateway.address)
        .await
        .expect("connected to the gateway");
    let head = format!(
        "POST /cgi-bin/sum HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("request head sent");
    let sent = Instant::now();

    // Until the route is ready nothing may arrive; once it is, wait a second for an interim
    // 100 (the backend's own, relayed), then send the body anyway, as curl does.
    let mut received = Vec::new();
    let mut ready_at: Option<Instant> = None;
    let mut states = Vec::new();
    loop {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf)).await {
            Ok(Ok(0)) => panic!(
                "the gateway closed the connection before answering (states seen: {states:?})"
            ),
            Ok(Ok(n)) => {
                received.extend_from_slice(&buf[..n]);
                let state = gateway.status(host).await["state"].clone();
                assert_eq!(
                    state,
                    "ready",
                    "bytes arrived while the route was not ready yet: {:?}",
                    String::from_utf8_lossy(&received)
                );
                break;
            }
            Ok(Err(e)) => panic!("reading from the gateway: {e}"),
            Err(_) => {}
        }
        if ready_at.is_none() {
            let state = gateway.status(host).await["state"].clone();
            if states.last() != Some(&state) {
                states.push(state.clone());
            }
            if state == "ready" {
                ready_at = Some(Instant::now());
            }
        }
        if ready_at.is_some_and(|at| at.elapsed() > Duration::from_secs(1)) {
            break;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(20),
            "the route never became ready (states seen: {states:?})"
        );
    }
    assert!(
        states.iter().any(|s| s == "starting"),
        "the client must have waited through the wake; states seen: {states:?}"
    );
    assert_eq!(
        engine.count("start"),
        1,
        "the backend was started while the client waited: {:?}",
        engine.actions()
    );
    if !received.is_empty() {
        let text = String::from_utf8_lossy(&received);
        assert!(
            text.starts_with("HTTP/1.1 100") || text.starts_with("HTTP/1.1 200"),
            "the first bytes are neither a 100 Continue nor the final answer: {text:?}"
        );
    }

    // A final answer already received needs no body (the write may then fail: ignore it).
    let _ = stream.write_all(&body).await;
    let read_all = async {
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.map(|_| rest)
    };
    let rest = tokio::time::timeout(Duration::from_secs(20), read_all)
        .await
        .expect("the answer arrives within 20 s")
        .expect("the answer is read");
    received.extend_from_slice(&rest);
    let RawAnswers {
        interim,
        status_line,
        body: answer,
    } = parse_responses(&received);
    println!(
        "expect-continue: states seen while waiting {states:?}; bytes before the body: {}; \
         interim answers {interim:?}; final {status_line:?}",
        received.len() - rest.len()
    );
    assert!(
        interim.iter().all(|line| line.contains(" 100")),
        "unexpected interim answers: {interim:?}"
    );
    assert!(
        status_line.starts_with("HTTP/1.1 200"),
        "final status {status_line:?}; body {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(
        String::from_utf8_lossy(&answer),
        expected,
        "md5 and length of the body the backend received"
    );
}

// ---------------------------------------------------------------------------------------------
// A backend that never becomes ready
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_listens_fails_held_requests_in_time_then_backs_off() {
    // Never listens; exits at once on SIGTERM, so the stop that follows a failed wake (the
    // gateway puts back to sleep what it started) is over well within the backoff.
    let container = TestContainer::exiting_on("deaf", "TERM", 0).await;
    let engine = EventCounter::new(&container.name);
    let gateway = Gateway::start(&one_route(
        "deaf",
        &container.name,
        "      wake_timeout: 3s\n      retry_backoff: 2s\n      stop_timeout: 2s\n      show_details: true\n",
    ))
    .await;
    let host = "deaf.test";
    let client = gateway.client();
    let url = gateway.url(host, "/");

    // Several held requests: each gets its 503 between 2.5 s (it was held) and 4 s
    // (wake_timeout + 1 s) after it was sent.
    let mut held = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let client = client.clone();
        let url = url.clone();
        held.spawn(async move {
            let sent = Instant::now();
            let response = client
                .get(&url)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .expect("a held request is answered");
            (sent.elapsed(), Instant::now(), response)
        });
    }
    let mut failed_at = None::<Instant>;
    while let Some(result) = held.join_next().await {
        let (took, at, response) = result.expect("request task");
        let (headers, body) = expect_problem(response, 503).await;
        assert!(
            retry_after(&headers) >= 1,
            "Retry-After must be at least 1 s"
        );
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("did not become ready within 3s"),
            "the detail must name the reason: {body}"
        );
        assert!(
            took <= Duration::from_secs(4),
            "answered {took:?} after it was sent (wake_timeout 3s + 1s allowed)"
        );
        assert!(
            took >= Duration::from_millis(2500),
            "answered after only {took:?}: it was not held until the wake failed"
        );
        failed_at = Some(failed_at.map_or(at, |f| f.max(at)));
    }
    let failed_at = failed_at.expect("five answers");
    let status = gateway.status(host).await;
    assert_eq!(status["state"], "error", "{status}");
    assert!(status["error"].is_string(), "{status}");

    // During the backoff: 503 at once, with Retry-After, and no new wake.
    let sent = Instant::now();
    let response = client
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("answered during the backoff");
    let took = sent.elapsed();
    let (headers, body) = expect_problem(response, 503).await;
    assert!(
        took < Duration::from_millis(500),
        "a request during the backoff waited {took:?}"
    );
    let wait = retry_after(&headers);
    assert!(
        (1..=2).contains(&wait),
        "Retry-After {wait} during a 2 s backoff"
    );
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("did not become ready")),
        "the detail must name the last failure: {body}"
    );
    let status = gateway.status(host).await;
    assert_eq!(
        status["state"], "error",
        "no new wake in the backoff: {status}"
    );

    // After the backoff a request starts a new wake. Requests are tried every 50 ms; those
    // refused by the backoff come back at once, the first one let through is held.
    let retrier = {
        let client = client.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let sent = Instant::now();
                let response = client
                    .get(&url)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .expect("answered");
                let took = sent.elapsed();
                if took < Duration::from_millis(500) && Instant::now() < deadline {
                    assert_eq!(response.status().as_u16(), 503);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                return (took, response);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(8);
    let new_wake_at = loop {
        let status = gateway.status(host).await;
        if status["state"] == "starting" {
            break Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "no new wake after the backoff: last status {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let gap = new_wake_at - failed_at;
    assert!(
        gap >= Duration::from_millis(1800),
        "a new wake began {gap:?} after the failure, inside the 2 s backoff"
    );
    assert!(
        gap <= Duration::from_secs(4),
        "the new wake began only {gap:?} after the failure (backoff 2 s)"
    );
    assert!(
        engine
            .wait_for_count("start", 2, Duration::from_secs(3))
            .await,
        "the new wake did not start the container again: {:?}",
        engine.actions()
    );
    let (took, response) = retrier.await.expect("retrier");
    let (headers, _) = expect_problem(response, 503).await;
    retry_after(&headers);
    assert!(
        took >= Duration::from_millis(2500) && took <= Duration::from_secs(4),
        "the request that began the new wake was answered after {took:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// start_endpoint
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_start_endpoint_wakes_the_backend() {
    let container = TestContainer::http("endpoint").await;
    let engine = EventCounter::new(&container.name);
    let gateway = Gateway::start(&one_route(
        "endpoint",
        &container.name,
        "      start_endpoint: /index.html\n      wake_timeout: 20s\n",
    ))
    .await;
    let host = "endpoint.test";
    let client = gateway.client();

    let response = client
        .get(gateway.url(host, "/"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("answered");
    let (_, body) = expect_problem(response, 403).await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("/index.html")),
        "the detail should name the start endpoint: {body}"
    );
    // Nothing woke: no start reaches the engine, the container and the route stay asleep.
    assert!(
        !engine.wait_for("start", Duration::from_millis(750)).await,
        "a 403'd request started the container: {:?}",
        engine.actions()
    );
    assert_eq!(container.status().await, "created");
    assert_eq!(gateway.status(host).await["state"], "napping");

    let response = client
        .get(gateway.url(host, "/index.html"))
        .timeout(Duration::from_secs(25))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.text().await.expect("a body"), INDEX_BODY);
    assert_eq!(container.status().await, "running");
    assert_eq!(engine.count("start"), 1, "{:?}", engine.actions());
    // Awake, every path passes.
    let response = client
        .get(gateway.url(host, "/"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status().as_u16(), 200);
}

// ---------------------------------------------------------------------------------------------
// Changes made outside the gateway
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_stopped_removed_and_recreated_by_hand() {
    let container = TestContainer::http("byhand").await;
    let engine = EventCounter::new(&container.name);
    let gateway = Gateway::start(&one_route(
        "byhand",
        &container.name,
        "      wake_timeout: 20s\n      show_details: true\n",
    ))
    .await;
    let host = "byhand.test";
    let client = gateway.client();
    let get = || async {
        let response = client
            .get(gateway.url(host, "/"))
            .timeout(Duration::from_secs(25))
            .send()
            .await
            .expect("answered");
        let status = response.status().as_u16();
        (status, response.text().await.expect("a body"))
    };
    assert_eq!(gateway.status(host).await["state"], "napping");

    // Started by hand: adopted (ready) with no start of the gateway's own.
    container.start().await;
    gateway
        .wait_state(host, "ready", Duration::from_secs(10))
        .await;
    assert_eq!(get().await, (200, INDEX_BODY.to_string()));
    assert!(engine.wait_for("start", Duration::from_secs(5)).await);
    assert!(
        !engine
            .wait_for_count("start", 2, Duration::from_millis(500))
            .await,
        "the gateway started an adopted container again: {:?}",
        engine.actions()
    );

    // Stopped by hand: napping; the next request wakes it.
    container.stop().await;
    gateway
        .wait_state(host, "napping", Duration::from_secs(10))
        .await;
    assert_eq!(get().await, (200, INDEX_BODY.to_string()));
    assert!(
        engine
            .wait_for_count("start", 2, Duration::from_secs(5))
            .await,
        "{:?}",
        engine.actions()
    );
    assert_eq!(engine.count("start"), 2, "{:?}", engine.actions());

    // Removed: error.
    container.remove().await;
    gateway
        .wait_state(host, "error", Duration::from_secs(10))
        .await;
    let status = gateway.status(host).await;
    assert!(
        status["error"]
            .as_str()
            .is_some_and(|e| e.contains("removed")),
        "the status should say the container was removed: {status}"
    );

    // Recreated under the same name: the route works again, same gateway.
    container.recreate().await;
    assert_eq!(get().await, (200, INDEX_BODY.to_string()));
    assert_eq!(container.status().await, "running");
    assert!(
        engine
            .wait_for_count("start", 3, Duration::from_secs(5))
            .await,
        "{:?}",
        engine.actions()
    );
    assert_eq!(engine.count("start"), 3, "{:?}", engine.actions());
}

// ---------------------------------------------------------------------------------------------
// Unknown hosts and the status endpoint
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_is_404_and_status_never_wakes() {
    let container = TestContainer::http("status").await;
    let engine = EventCounter::new(&container.name);
    let gateway = Gateway::start(&one_route("status", &container.name, "")).await;
    let client = gateway.client();

    let response = client
        .get(gateway.url("nobody.test", "/"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("answered");
    let (_, body) = expect_problem(response, 404).await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("nobody.test")),
        "the detail should name the host: {body}"
    );

    for _ in 0..5 {
        let status = gateway.status("status.test").await;
        assert_eq!(status["route"], "status", "{status}");
        assert_eq!(status["state"], "napping", "{status}");
    }
    // Also as a browser would ask for it.
    let response = client
        .get(gateway.url("status.test", "/.idlewatcher/status"))
        .header("accept", "text/html,application/xhtml+xml")
        .header("sec-fetch-mode", "navigate")
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status().as_u16(), 200);
    // An absolute-form target (as sent to a forward proxy) is routed too.
    {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(gateway.address)
            .await
            .expect("connected to the gateway");
        stream
            .write_all(
                b"GET http://status.test/.idlewatcher/status HTTP/1.1\r\nHost: status.test\r\n\r\n",
            )
            .await
            .expect("request sent");
        let (status, body) = read_one_response(&mut stream).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(r#""route":"status""#), "{body}");
    }
    assert!(
        !engine.wait_for("start", Duration::from_millis(750)).await,
        "the status endpoint started the container: {:?}",
        engine.actions()
    );
    assert_eq!(container.status().await, "created");
    assert_eq!(gateway.status("status.test").await["state"], "napping");
}

// ---------------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_held_request_exits_within_a_few_seconds() {
    let container = TestContainer::with_cmd("term", &["sh", "-c", "sleep 3600"]).await;
    // The shipped configuration's shutdown settings (conf/idlewatcher.yaml).
    let mut gateway = Gateway::start(&format!(
        "version: 1\nthreads: 2\ngrace_period_seconds: 1\ngraceful_shutdown_timeout_seconds: 3\n{}",
        one_route("term", &container.name, "      wake_timeout: 60s\n")
    ))
    .await;
    let client = gateway.client();
    let url = gateway.url("term.test", "/");
    let held = tokio::spawn(async move {
        client
            .get(&url)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    gateway
        .wait_state("term.test", "starting", Duration::from_secs(10))
        .await;
    assert!(!held.is_finished(), "the request should be held");

    let took = gateway.terminate(Duration::from_secs(15)).await;
    let took = took.unwrap_or_else(|| {
        panic!(
            "the gateway did not exit within 15 s of SIGTERM:\n{}",
            gateway.logs()
        )
    });
    assert!(
        took <= Duration::from_secs(5),
        "the gateway took {took:?} to exit after SIGTERM"
    );
    // The held request is answered before the process exits: 503, come back later.
    let outcome = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the held request ended with the gateway")
        .expect("request task");
    assert_eq!(
        outcome.as_ref().ok(),
        Some(&503),
        "the held request is told to come back"
    );
    println!("held request at shutdown: {outcome:?}; exit after {took:?}");
}

// ---------------------------------------------------------------------------------------------
// The early hold (requests held before Pingora reads them)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_client_that_leaves_gives_its_place_back() {
    use tokio::io::AsyncWriteExt;

    // Listens 3 s after it starts: the wake is long enough to see who is held.
    let container = TestContainer::builder("leaver")
        .cmd(&["sh", "-c", "sleep 3; exec /bin/serve"])
        .create()
        .await;
    let gateway = Gateway::start(&one_route(
        "leaver",
        &container.name,
        "      max_waiters: 1\n      wake_timeout: 20s\n",
    ))
    .await;
    let host = "leaver.test";
    let client = gateway.client();
    let url = gateway.url(host, "/");

    // A takes the only place among the waiters.
    let mut first = tokio::net::TcpStream::connect(gateway.address)
        .await
        .expect("connected to the gateway");
    first
        .write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .expect("request sent");
    gateway
        .wait_state(host, "starting", Duration::from_secs(10))
        .await;

    // B, while A holds it: turned away at once.
    let response = client
        .get(&url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("B is answered");
    let (_, body) = expect_problem(response, 503).await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("already holds 1 requests")),
        "B must be refused for want of a place: {body}"
    );

    // A leaves: its place is given back, so C is held, then served.
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = gateway.status(host).await;
    assert_ne!(
        status["state"], "ready",
        "C must be sent while the backend is still waking: {status}"
    );
    expect_index(&client, &url, Duration::from_secs(20))
        .await
        .expect("C is held, then served by the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_of_any_head_size_are_served_and_their_connections_kept_alive() {
    use tokio::io::AsyncWriteExt;

    let container = TestContainer::http("heads").await;
    let engine = EventCounter::new(&container.name);
    let gateway = Gateway::start(&one_route("heads", &container.name, "")).await;
    let host = "heads.test";

    // A small head (held before Pingora reads it), the same in two pieces, and one larger than
    // the gateway's first read (held inside Pingora's session): the same answers.
    let padding = "p".repeat(6000);
    let mut connections = Vec::new();
    for (pad, split) in [("", false), ("", true), (padding.as_str(), false)] {
        let mut stream = tokio::net::TcpStream::connect(gateway.address)
            .await
            .expect("connected to the gateway");
        let head = format!("GET / HTTP/1.1\r\nHost: {host}\r\nX-Pad: {pad}\r\n\r\n");
        let (start, rest) = head.split_at(if split { 20 } else { head.len() });
        for piece in [start, rest] {
            stream
                .write_all(piece.as_bytes())
                .await
                .expect("request sent");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        connections.push(stream);
    }
    for (index, stream) in connections.iter_mut().enumerate() {
        let (status, body) = read_one_response(stream).await;
        assert_eq!(
            (status, body.as_str()),
            (200, INDEX_BODY),
            "held request {index}"
        );
        // The connection serves the next request as any other.
        stream
            .write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .expect("second request sent");
        let (status, body) = read_one_response(stream).await;
        assert_eq!(
            (status, body.as_str()),
            (200, INDEX_BODY),
            "second request on connection {index}"
        );
    }
    assert_eq!(engine.count("start"), 1, "{:?}", engine.actions());
}

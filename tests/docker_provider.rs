//! The Docker provider and the Docker event source against the real engine.
//!
//! Every test makes its own uniquely named containers of the busybox test image (see
//! `common::container`); they are removed when the test ends, also on failure, so the tests run in
//! parallel with each other and with other test binaries.
#![allow(clippy::unwrap_used, unreachable_pub)] // A test: a failed unwrap is a failed test; helpers are shared.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::container::{unique_name, TestContainer};
use common::engine::{EngineProxy, EventCounter};
use common::http::{http_get, md5_hex, send_raw};
use common::image::{HTTP_PORT, INDEX_BODY};
use common::recorder::{Recorder, SOON};
use idlewatcher::providers::docker::{connect, DockerEvents, DockerProvider};
use idlewatcher::providers::{
    BackendEvent, BackendObserver, BackendStatus, Provider, ProviderError,
};

async fn provider_for(container: &TestContainer) -> DockerProvider {
    common::init_tracing();
    DockerProvider::new(connect(None).await.expect("engine"), &container.name)
}

/// Spawns `events.run` with a shutdown switch.
fn spawn_events(
    events: DockerEvents,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    common::init_tracing();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    (stop, tokio::spawn(events.run(shutdown)))
}

#[tokio::test]
async fn connect_accepts_every_host_form_and_negotiates() {
    let docker = connect(None).await.expect("default engine");
    let version = docker.client_version();
    let server = common::engine::docker(&["version", "--format", "{{.Server.APIVersion}}"]).await;
    assert_eq!(
        version.to_string(),
        server,
        "negotiated down to the engine's API"
    );

    let socket = match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => h,
        Ok(_) => return, // a remote engine: the socket forms do not apply
        Err(_) => "unix:///var/run/docker.sock".to_string(),
    };
    connect(Some(&socket)).await.expect("unix:// form");
    connect(Some(socket.trim_start_matches("unix://")))
        .await
        .expect("bare socket path");

    let proxy = EngineProxy::start().await;
    connect(Some(&proxy.host)).await.expect("tcp:// form");
    let http = proxy.host.replace("tcp://", "http://");
    connect(Some(&http)).await.expect("http:// form");

    proxy.set_up(false);
    let err = connect(Some(&proxy.host)).await.unwrap_err();
    assert!(matches!(err, ProviderError::Api { .. }), "{err:?}");
    let err = connect(Some("unix:///nonexistent/docker.sock"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/docker.sock"),
        "{err}"
    );
}

#[tokio::test]
async fn status_follows_the_container_lifecycle() {
    let c = TestContainer::http("status").await;
    let p = provider_for(&c).await;
    assert_eq!(p.describe(), format!("docker container \"{}\"", c.name));

    assert_eq!(p.status().await.unwrap(), BackendStatus::Stopped, "created");
    c.start().await;
    assert_eq!(p.status().await.unwrap(), BackendStatus::Running);
    c.pause().await;
    assert_eq!(p.status().await.unwrap(), BackendStatus::Paused);
    c.unpause().await;
    c.stop().await;
    assert_eq!(c.status().await, "exited");
    assert_eq!(p.status().await.unwrap(), BackendStatus::Stopped);
    c.remove().await;
    assert_eq!(p.status().await.unwrap(), BackendStatus::Missing);

    // By id (full and short) too.
    let d = TestContainer::http("status-id").await;
    let docker = connect(None).await.unwrap();
    for reference in [d.id(), d.id()[..12].to_string()] {
        let by_id = DockerProvider::new(docker.clone(), &reference);
        assert_eq!(by_id.status().await.unwrap(), BackendStatus::Stopped);
    }
}

#[tokio::test]
async fn start_is_idempotent_and_unpauses() {
    let c = TestContainer::http("start").await;
    let p = provider_for(&c).await;
    let events = EventCounter::new(&c.name);

    p.start().await.expect("start");
    assert_eq!(c.status().await, "running");
    p.start().await.expect("start on a running container (304)");
    let addr = c.wait_http(SOON).await;
    let page = http_get(addr, "/").await;
    assert!(page.ends_with(INDEX_BODY), "{page}");

    c.pause().await;
    p.start().await.expect("start on a paused container");
    assert_eq!(c.status().await, "running");
    assert!(events.wait_for("unpause", SOON).await);
    assert_eq!(events.count("start"), 1, "{:?}", events.actions());
}

#[tokio::test]
async fn stop_without_signal_uses_the_default_and_the_timeout() {
    // Handles SIGTERM: stops at once.
    let graceful = TestContainer::http("stop-term").await;
    graceful.start().await;
    graceful.wait_http(SOON).await;
    let p = provider_for(&graceful).await;
    let began = Instant::now();
    p.stop(None, Duration::from_secs(10)).await.expect("stop");
    let took = began.elapsed();
    assert!(took < Duration::from_secs(5), "graceful stop took {took:?}");
    assert_eq!(graceful.status().await, "exited");
    assert_eq!(graceful.exit_code().await, 0);

    // Ignores SIGTERM: killed once the timeout is over.
    let stubborn = TestContainer::ignoring_sigterm("stop-stubborn").await;
    stubborn.start().await;
    let p = provider_for(&stubborn).await;
    let began = Instant::now();
    p.stop(None, Duration::from_secs(2)).await.expect("stop");
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(1900),
        "did not wait: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "waited too long: {took:?}");
    assert_eq!(stubborn.exit_code().await, 137, "SIGKILLed");

    // Already stopped, and never started: success.
    p.stop(None, Duration::from_secs(2))
        .await
        .expect("stop again");
    let created = TestContainer::http("stop-created").await;
    provider_for(&created)
        .await
        .stop(None, Duration::from_secs(2))
        .await
        .expect("stop a created container");
}

#[tokio::test]
async fn stop_with_signal_sends_it_and_honours_the_timeout() {
    // Exits 42 on SIGINT, ignores SIGTERM (PID 1 without a handler).
    let c = TestContainer::exiting_on("stop-int", "INT", 42).await;
    c.start().await;
    c.wait_for_log("ready", SOON).await;
    let p = provider_for(&c).await;
    let events = EventCounter::new(&c.name);
    let began = Instant::now();
    p.stop(Some("SIGINT"), Duration::from_secs(10))
        .await
        .expect("stop with SIGINT");
    let took = began.elapsed();
    assert!(took < Duration::from_secs(5), "SIGINT stop took {took:?}");
    assert_eq!(c.status().await, "exited");
    assert_eq!(
        c.exit_code().await,
        42,
        "the trap ran: SIGINT was delivered"
    );
    assert!(events.wait_for("die", SOON).await);
    let signals: Vec<String> = events
        .events()
        .iter()
        .filter(|e| e.action == "kill")
        .filter_map(|e| e.attributes.get("signal").cloned())
        .collect();
    assert_eq!(signals, ["2"], "only SIGINT, no SIGKILL");

    // The wrong signal: ignored, so the timeout runs out and SIGKILL follows.
    c.start().await;
    c.wait_for_log("ready", SOON).await;
    let began = Instant::now();
    p.stop(Some("SIGTERM"), Duration::from_secs(2))
        .await
        .expect("stop with SIGTERM");
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(1900),
        "did not wait: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "waited too long: {took:?}");
    assert_eq!(c.exit_code().await, 137);

    // Already stopped: success.
    p.stop(Some("SIGINT"), Duration::from_secs(1))
        .await
        .expect("stop a stopped container");
}

#[tokio::test]
async fn stop_a_paused_container() {
    let a = TestContainer::http("stop-paused-a").await;
    let b = TestContainer::http("stop-paused-b").await;
    for c in [&a, &b] {
        c.start().await;
        c.wait_http(SOON).await;
        c.pause().await;
    }
    // Both handle SIGTERM once thawed: neither may sit out the timeout.
    let began = Instant::now();
    provider_for(&a)
        .await
        .stop(None, Duration::from_secs(10))
        .await
        .expect("stop paused, engine's default signal");
    provider_for(&b)
        .await
        .stop(Some("SIGTERM"), Duration::from_secs(10))
        .await
        .expect("stop paused, explicit signal");
    let took = began.elapsed();
    assert!(took < Duration::from_secs(8), "paused stops took {took:?}");
    assert_eq!(a.status().await, "exited");
    assert_eq!(b.status().await, "exited");
}

#[tokio::test]
async fn kill_sends_the_signal() {
    let c = TestContainer::exiting_on("kill-usr1", "USR1", 7).await;
    c.start().await;
    c.wait_for_log("ready", SOON).await;
    let p = provider_for(&c).await;
    p.kill(Some("SIGUSR1")).await.expect("kill USR1");
    let deadline = Instant::now() + SOON;
    while c.status().await != "exited" {
        assert!(Instant::now() < deadline, "USR1 did not end it");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.exit_code().await, 7);
    p.kill(None).await.expect("kill a stopped container");

    let stubborn = TestContainer::ignoring_sigterm("kill-default").await;
    stubborn.start().await;
    let p = provider_for(&stubborn).await;
    p.kill(None).await.expect("kill (SIGKILL)");
    let deadline = Instant::now() + SOON;
    while stubborn.status().await != "exited" {
        assert!(Instant::now() < deadline, "SIGKILL did not end it");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stubborn.exit_code().await, 137);
}

#[tokio::test]
async fn pause_and_unpause_are_idempotent() {
    let c = TestContainer::http("pause").await;
    let p = provider_for(&c).await;
    p.start().await.unwrap();
    p.pause().await.expect("pause");
    assert_eq!(c.status().await, "paused");
    p.pause().await.expect("pause a paused container");
    p.unpause().await.expect("unpause");
    assert_eq!(c.status().await, "running");
    p.unpause().await.expect("unpause a running container");
    c.wait_http(SOON).await;

    c.stop().await;
    p.pause()
        .await
        .expect("pause a stopped container: already asleep");
    let err = p
        .unpause()
        .await
        .expect_err("unpause must not pass for a start");
    assert!(
        matches!(&err, ProviderError::Api { action: "unpause", message, .. } if !message.is_empty()),
        "{err:?}"
    );
    assert_eq!(c.status().await, "exited");
}

#[tokio::test]
async fn address_is_read_again_after_every_start() {
    let a = TestContainer::http("addr-a").await;
    let b = TestContainer::http("addr-b").await;
    let p = provider_for(&a).await;
    let err = p.address().await.unwrap_err();
    assert!(
        matches!(err, ProviderError::NoAddress { .. }),
        "created: {err:?}"
    );

    p.start().await.unwrap();
    let first = p.address().await.expect("address");
    assert_eq!(first, a.ip().await);
    a.wait_http(SOON).await;
    assert!(http_get(SocketAddr::new(first, HTTP_PORT), "/")
        .await
        .ends_with(INDEX_BODY));

    // Free the address, let another container take it, start again.
    p.stop(None, Duration::from_secs(5)).await.unwrap();
    let err = p.address().await.unwrap_err();
    assert!(
        matches!(err, ProviderError::NoAddress { .. }),
        "stopped: {err:?}"
    );
    b.start().await;
    p.start().await.unwrap();
    let second = p.address().await.expect("address after restart");
    assert_eq!(second, a.ip().await, "the engine's current address");
    assert_ne!(second, b.ip().await);
    eprintln!("address before restart {first}, after {second}");
}

#[tokio::test]
async fn address_in_host_none_and_shared_network_modes() {
    let host = TestContainer::builder("addr-host")
        .network("host")
        .cmd(&["sleep", "3600"])
        .create()
        .await;
    host.start().await;
    assert_eq!(
        provider_for(&host).await.address().await.unwrap(),
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    );

    let none = TestContainer::builder("addr-none")
        .network("none")
        .cmd(&["sleep", "3600"])
        .create()
        .await;
    none.start().await;
    let err = provider_for(&none).await.address().await.unwrap_err();
    assert!(matches!(err, ProviderError::NoAddress { .. }), "{err:?}");
    assert!(err.to_string().contains(&none.name), "{err}");

    let owner = TestContainer::http("addr-owner").await;
    owner.start().await;
    let sidecar = TestContainer::builder("addr-sidecar")
        .network(&format!("container:{}", owner.name))
        .cmd(&["sleep", "3600"])
        .create()
        .await;
    sidecar.start().await;
    assert_eq!(
        provider_for(&sidecar).await.address().await.unwrap(),
        owner.ip().await
    );
    drop(sidecar); // before its network owner
}

// A missing container answering NotFound to every call is one of the provider contract's checks
// (`tests/provider_contract.rs`, `a_missing_backend_is_not_found`), run against Docker there.

#[tokio::test]
async fn events_follow_changes_made_by_hand() {
    let c = TestContainer::http("events").await;
    let recorder = Arc::new(Recorder::default());
    let events = DockerEvents::new(connect(None).await.unwrap());
    events.watch(&c.name, recorder.clone());
    let (stop, run) = spawn_events(events);

    use BackendEvent::*;
    let mut at = recorder
        .expect_from(0, Resync(BackendStatus::Stopped))
        .await;
    c.start().await;
    at = recorder.expect_from(at, Started).await;
    c.pause().await;
    at = recorder.expect_from(at, Stopped).await;
    c.unpause().await;
    at = recorder.expect_from(at, Started).await;
    c.stop().await;
    at = recorder.expect_from(at, Stopped).await;
    c.remove().await;
    at = recorder.expect_from(at, Removed).await;
    c.recreate().await;
    at = recorder.expect_from(at, Created).await;
    c.start().await;
    at = recorder.expect_from(at, Started).await;
    c.kill("SIGKILL").await;
    recorder.expect_from(at, Stopped).await;

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .expect("run ends on shutdown")
        .unwrap();
}

#[tokio::test]
async fn a_container_watched_while_the_stream_runs_is_resynced_and_followed_and_unwatched() {
    let first = TestContainer::http("watch-first").await;
    let later = TestContainer::http("watch-later").await;
    let first_recorder = Arc::new(Recorder::default());
    let events = DockerEvents::new(connect(None).await.unwrap());
    events.watch(&first.name, first_recorder.clone());
    let (stop, run) = spawn_events(events.clone());
    use BackendEvent::*;
    first_recorder
        .expect_from(0, Resync(BackendStatus::Stopped))
        .await;

    // Watched after the stream connected (a route added at run time): its status at once.
    later.start().await;
    let recorder = Arc::new(Recorder::default());
    events.watch(&later.name, recorder.clone());
    let mut at = recorder
        .expect_from(0, Resync(BackendStatus::Running))
        .await;
    later.stop().await;
    at = recorder.expect_from(at, Stopped).await;

    // Unwatched (a route removed): told nothing more, while the other container still is.
    let observer: Arc<dyn BackendObserver> = recorder.clone();
    events.unwatch(&later.name, &observer);
    later.start().await;
    first.start().await;
    first_recorder.expect_from(1, Started).await;
    assert_eq!(
        recorder.all().len(),
        at,
        "unwatched, yet told: {:?}",
        recorder.all()
    );

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .expect("run ends on shutdown")
        .unwrap();
}

#[tokio::test]
async fn resync_on_connect_reports_every_state() {
    let running = TestContainer::http("resync-running").await;
    let paused = TestContainer::http("resync-paused").await;
    let created = TestContainer::http("resync-created").await;
    running.start().await;
    paused.start().await;
    paused.pause().await;
    let missing = unique_name("resync-missing");

    let events = DockerEvents::new(connect(None).await.unwrap());
    let cases = [
        (running.name.clone(), BackendStatus::Running),
        (paused.name.clone(), BackendStatus::Paused),
        (created.name.clone(), BackendStatus::Stopped),
        (missing, BackendStatus::Missing),
    ];
    let recorders: Vec<Arc<Recorder>> = cases
        .iter()
        .map(|(name, _)| {
            let r = Arc::new(Recorder::default());
            events.watch(name, r.clone());
            r
        })
        .collect();
    let (stop, run) = spawn_events(events);
    for ((name, status), recorder) in cases.iter().zip(&recorders) {
        let first = recorder.expect_from(0, BackendEvent::Resync(*status)).await;
        assert_eq!(first, 1, "{name}: resync comes first: {:?}", recorder.all());
    }
    stop.send(true).unwrap();
    run.await.unwrap();
}

#[tokio::test]
async fn one_stream_serves_many_containers_and_observers() {
    let a = TestContainer::http("many-a").await;
    let b = TestContainer::http("many-b").await;
    let by_name = Arc::new(Recorder::default());
    let by_short_id = Arc::new(Recorder::default());
    let by_full_id = Arc::new(Recorder::default());
    let other = Arc::new(Recorder::default());

    let proxy = EngineProxy::start().await;
    let events = DockerEvents::new(connect(Some(&proxy.host)).await.unwrap());
    events.watch(&a.name, by_name.clone());
    events.watch(&a.id()[..12], by_short_id.clone());
    events.watch(&a.id(), by_full_id.clone());
    events.watch(&b.name, other.clone());
    let before = proxy.forwarded();
    let (stop, run) = spawn_events(events);

    use BackendEvent::*;
    for r in [&by_name, &by_short_id, &by_full_id, &other] {
        r.expect_from(0, Resync(BackendStatus::Stopped)).await;
    }
    a.start().await;
    for r in [&by_name, &by_short_id, &by_full_id] {
        r.expect_from(1, Started).await;
    }
    b.start().await;
    other.expect_from(1, Started).await;
    b.stop().await;
    other.expect_from(2, Stopped).await;
    // a's observers saw only a's start.
    for r in [&by_name, &by_short_id, &by_full_id] {
        let seen: Vec<_> = r.all().into_iter().filter(|e| *e != Created).collect();
        assert_eq!(seen, [Resync(BackendStatus::Stopped), Started]);
    }
    // One reading of the engine's clock, one subscription, one inspect per watched container;
    // nothing per event.
    let used = proxy.forwarded() - before;
    assert!(
        used <= 6,
        "{used} connections for one clock reading, one stream and four resyncs"
    );

    stop.send(true).unwrap();
    run.await.unwrap();
}

#[tokio::test]
async fn reconnects_and_resyncs_after_the_stream_breaks() {
    let c = TestContainer::http("reconnect").await;
    let proxy = EngineProxy::start().await;
    let recorder = Arc::new(Recorder::default());
    let events = DockerEvents::new(connect(Some(&proxy.host)).await.unwrap());
    events.watch(&c.name, recorder.clone());
    let (stop, run) = spawn_events(events);

    use BackendEvent::*;
    let at = recorder
        .expect_from(0, Resync(BackendStatus::Stopped))
        .await;

    // Stream cut: reconnect at once and resync.
    proxy.sever();
    let at = recorder
        .expect_from(at, Resync(BackendStatus::Stopped))
        .await;

    // Engine unreachable while the container starts: the change is not lost.
    proxy.set_up(false);
    c.start().await;
    tokio::time::sleep(Duration::from_millis(700)).await; // a few failed attempts
    assert!(
        !recorder.all()[at..].contains(&Resync(BackendStatus::Running)),
        "{:?}",
        recorder.all()
    );
    proxy.set_up(true);
    let at = recorder
        .expect_from(at, Resync(BackendStatus::Running))
        .await;

    // And the stream works again.
    c.stop().await;
    recorder.expect_from(at, Stopped).await;

    // Shutdown while reconnecting is prompt too.
    proxy.set_up(false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_millis(500), run)
        .await
        .expect("run ends promptly while backing off")
        .unwrap();
}

#[tokio::test]
async fn shutdown_ends_run_promptly() {
    let c = TestContainer::http("shutdown").await;
    let recorder = Arc::new(Recorder::default());
    let events = DockerEvents::new(connect(None).await.unwrap());
    events.watch(&c.name, recorder.clone());
    let (stop, run) = spawn_events(events);
    recorder
        .expect_from(0, BackendEvent::Resync(BackendStatus::Stopped))
        .await;
    let began = Instant::now();
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_millis(500), run)
        .await
        .expect("run ends promptly")
        .unwrap();
    eprintln!("run ended {:?} after shutdown", began.elapsed());

    // Already shut down before it starts: returns at once, delivers nothing.
    let quiet = Arc::new(Recorder::default());
    let events = DockerEvents::new(connect(None).await.unwrap());
    events.watch(&c.name, quiet.clone());
    let (_stop, shutdown) = tokio::sync::watch::channel(true);
    tokio::time::timeout(Duration::from_millis(500), events.run(shutdown))
        .await
        .expect("returns at once");
    assert!(quiet.all().is_empty());
}

#[tokio::test]
async fn a_signalled_stop_is_not_undone_by_a_restart_policy() {
    let c = TestContainer::builder("stop-restart")
        .restart("always")
        .cmd(&[
            "sh",
            "-c",
            "trap 'exit 42' INT; echo ready; sleep 3600 & wait",
        ])
        .create()
        .await;
    c.start().await;
    c.wait_for_log("ready", SOON).await;
    provider_for(&c)
        .await
        .stop(Some("SIGINT"), Duration::from_secs(5))
        .await
        .expect("stop");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(c.status().await, "exited", "restarted by its policy");
    assert_eq!(c.exit_code().await, 42);
}

/// The fixtures themselves: the image serves its page, the CGI checks a large body, the event
/// counter follows a name through recreation.
#[tokio::test]
async fn fixtures_work() {
    let c = TestContainer::http("fixtures").await;
    let events = EventCounter::new(&c.name);
    c.start().await;
    let addr = c.wait_http(SOON).await;
    assert_eq!(c.base_url().await, format!("http://{addr}"));

    let body: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let expected = format!("{} {}", md5_hex(&body).await, body.len());
    let response = {
        let head = format!(
            "POST /cgi-bin/sum HTTP/1.0\r\nHost: t\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(&body);
        String::from_utf8(send_raw(addr, &request).await).unwrap()
    };
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("text/plain"), "{response}");
    assert_eq!(response.rsplit("\r\n\r\n").next().unwrap().trim(), expected);

    assert!(events.wait_for("start", SOON).await);
    let first_id = c.id();
    c.recreate().await;
    assert_ne!(c.id(), first_id);
    c.start().await;
    assert!(
        events.wait_for_count("start", 2, SOON).await,
        "{:?}",
        events.actions()
    );
    assert_eq!(events.count("create"), 1, "{:?}", events.actions());
    assert_eq!(events.count("destroy"), 1, "{:?}", events.actions());
    assert_eq!(c.status().await, "running");
    c.remove().await;
    assert_eq!(c.status().await, "missing");
}

#[tokio::test]
async fn an_idle_stream_outlives_the_request_timeout() {
    // bollard's request timeout bounds the wait for response headers, not a streaming body: a
    // quiet event stream must not be cut (and resynced) every `timeout`.
    let c = TestContainer::http("idle-stream").await;
    let recorder = Arc::new(Recorder::default());
    let docker = connect(None)
        .await
        .unwrap()
        .with_timeout(Duration::from_secs(1));
    let events = DockerEvents::new(docker);
    events.watch(&c.name, recorder.clone());
    let (stop, run) = spawn_events(events);
    let at = recorder
        .expect_from(0, BackendEvent::Resync(BackendStatus::Stopped))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.start().await;
    recorder.expect_from(at, BackendEvent::Started).await;
    let resyncs = recorder
        .all()
        .iter()
        .filter(|e| matches!(e, BackendEvent::Resync(_)))
        .count();
    assert_eq!(resyncs, 1, "reconnected: {:?}", recorder.all());
    stop.send(true).unwrap();
    run.await.unwrap();
}

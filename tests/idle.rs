//! Issue 4 acceptance: idle backends are put to sleep — against the real Docker engine.
#![allow(clippy::unwrap_used, unreachable_pub)] // A test: a failed unwrap is a failed test; helpers are shared.

mod common;

use std::time::{Duration, Instant};

use common::container::TestContainer;
use common::engine::EventCounter;
use common::gateway::{one_route, Gateway};
use common::http::read_head;
use common::image::INDEX_BODY;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The clock's tick in these tests (the default).
const TICK: Duration = Duration::from_secs(1);
const IDLE: Duration = Duration::from_secs(2);
/// Engine round trips and polling, on top of the promise "asleep within idle_timeout + 2 ticks".
const SLACK: Duration = Duration::from_millis(1500);

/// Wakes the route with one request, then checks it sleeps by `idle_timeout + 2 ticks` after
/// that request and not before `idle_timeout`; returns the measured delay.
async fn sleeps_after_idle(
    gateway: &Gateway,
    host: &str,
    container: &TestContainer,
    asleep: &str,
) -> Duration {
    let response = gateway
        .client()
        .get(gateway.url(host, "/"))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.text().await.expect("body"), INDEX_BODY);
    let last_request = Instant::now();
    tokio::time::sleep(IDLE - TICK / 2).await;
    assert_eq!(
        container.status().await,
        "running",
        "asleep before idle_timeout"
    );
    let seen = container.wait_status(asleep, IDLE + 2 * TICK + SLACK).await;
    seen - last_request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stop_method_puts_an_idle_backend_to_sleep() {
    let paused = TestContainer::http("idle-pause").await;
    let stopped = TestContainer::http("idle-stop").await;
    // Serves HTTP, and exits with 7 on SIGUSR1.
    let killed = TestContainer::with_cmd(
        "idle-kill",
        &[
            "sh",
            "-c",
            "trap 'exit 7' USR1; httpd -f -p 80 -h /www & wait",
        ],
    )
    .await;
    let config = format!(
        "idlewatcher:\n  listen: [\"@LISTEN@\"]\n  defaults:\n    idle_timeout: 2s\n  routes:\n\
         \x20   - {{ name: pause, hosts: [pause.test], docker: {{ container: {} }}, port: 80, stop_method: pause }}\n\
         \x20   - {{ name: stop, hosts: [stop.test], docker: {{ container: {} }}, port: 80, stop_method: stop, stop_timeout: 5s }}\n\
         \x20   - {{ name: kill, hosts: [kill.test], docker: {{ container: {} }}, port: 80, stop_method: kill, stop_signal: SIGUSR1 }}\n",
        paused.name, stopped.name, killed.name
    );
    let gateway = Gateway::start(&config).await;
    let (pause, stop, kill) = tokio::join!(
        sleeps_after_idle(&gateway, "pause.test", &paused, "paused"),
        sleeps_after_idle(&gateway, "stop.test", &stopped, "exited"),
        sleeps_after_idle(&gateway, "kill.test", &killed, "exited"),
    );
    assert_eq!(
        killed.exit_code().await,
        7,
        "killed with the configured signal"
    );
    println!(
        "MEASURE idle: last request → asleep: pause {pause:?}, stop {stop:?}, kill {kill:?} \
         (idle_timeout 2s, tick 1s)"
    );
    for host in ["pause.test", "stop.test", "kill.test"] {
        gateway
            .wait_state(host, "napping", Duration::from_secs(5))
            .await;
    }
    // And each wakes again on the next request (unpause for the paused one).
    for host in ["pause.test", "stop.test", "kill.test"] {
        let answer = gateway
            .client()
            .get(gateway.url(host, "/"))
            .send()
            .await
            .expect("answered");
        assert_eq!(answer.text().await.expect("body"), INDEX_BODY, "{host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_streamed_response_keeps_the_backend_awake() {
    let container = TestContainer::http("idle-stream").await;
    let gateway = Gateway::start(&one_route(
        "stream",
        &container.name,
        "      idle_timeout: 2s\n",
    ))
    .await;
    // The CGI streams one line every 0.5 s for 5 s: longer than idle_timeout.
    let mut response = gateway
        .client()
        .get(gateway.url("stream.test", "/cgi-bin/stream"))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
    let mut lines = 0;
    while let Some(chunk) = response.chunk().await.expect("stream") {
        lines += String::from_utf8_lossy(&chunk).matches('\n').count();
        assert_eq!(container.status().await, "running", "stopped mid-stream");
    }
    assert_eq!(lines, 10);
    let ended = Instant::now();
    tokio::time::sleep(IDLE - TICK / 2).await;
    assert_eq!(container.status().await, "running", "asleep too early");
    let seen = container
        .wait_status("exited", IDLE + 2 * TICK + SLACK)
        .await;
    println!(
        "MEASURE idle: stream end → asleep {:?} (idle_timeout 2s)",
        seen - ended
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_keeps_the_backend_awake() {
    let container = TestContainer::http("idle-ws").await;
    // The image's upgrade echo server listens on 81.
    let gateway = Gateway::start(&format!(
        "idlewatcher:\n  listen: [\"@LISTEN@\"]\n  routes:\n    - name: ws\n      hosts: [ws.test]\n      docker: {{ container: {} }}\n      port: 81\n      idle_timeout: 2s\n      health: {{ tcp: true }}\n",
        container.name
    ))
    .await;
    let mut socket = tokio::net::TcpStream::connect(gateway.address)
        .await
        .expect("connect");
    socket
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .expect("request");
    let head = read_head(&mut socket, Duration::from_secs(20)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // The connection stays open, silent, for twice the idle timeout.
    tokio::time::sleep(IDLE * 2).await;
    assert_eq!(
        container.status().await,
        "running",
        "slept under an open connection"
    );
    socket.write_all(b"ping\n").await.expect("send");
    let mut echo = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(20), socket.read_exact(&mut echo))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echo, b"ping\n");
    drop(socket);
    let closed = Instant::now();
    let seen = container
        .wait_status("exited", IDLE + 2 * TICK + SLACK)
        .await;
    println!(
        "MEASURE idle: websocket close → asleep {:?} (idle_timeout 2s)",
        seen - closed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_during_a_slow_stop_is_answered_after_the_restart() {
    // Serves HTTP and ignores SIGTERM: a stop takes the whole stop_timeout, then SIGKILL.
    let container = TestContainer::with_cmd(
        "idle-slowstop",
        &["sh", "-c", "trap '' TERM; httpd -f -p 80 -h /www & wait"],
    )
    .await;
    let gateway = Gateway::start(&one_route(
        "slowstop",
        &container.name,
        "      idle_timeout: 2s\n      stop_timeout: 4s\n      health: { tcp: true }\n",
    ))
    .await;
    let first = gateway
        .client()
        .get(gateway.url("slowstop.test", "/"))
        .send()
        .await
        .expect("answered");
    assert_eq!(first.status(), 200);
    gateway
        .wait_state("slowstop.test", "stopping", IDLE + 3 * TICK)
        .await;
    let asked = Instant::now();
    let during = gateway
        .client()
        .get(gateway.url("slowstop.test", "/"))
        .send()
        .await
        .expect("answered");
    assert_eq!(during.status(), 200, "held through the stop, then proxied");
    assert_eq!(during.text().await.expect("body"), INDEX_BODY);
    // It waited for the stop (SIGTERM ignored: the 4 s timeout, then SIGKILL) and a new start.
    println!(
        "MEASURE idle: request during a slow stop answered after {:?}",
        asked.elapsed()
    );
    assert_eq!(container.status().await, "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_started_by_hand_is_idle_timed_too() {
    let container = TestContainer::http("idle-adopt").await;
    let engine = EventCounter::new(&container.name);
    let gateway = Gateway::start(&one_route(
        "adopt",
        &container.name,
        "      idle_timeout: 2s\n",
    ))
    .await;
    container.start().await;
    let started = Instant::now();
    gateway
        .wait_state("adopt.test", "ready", Duration::from_secs(10))
        .await;
    // No traffic at all: asleep about idle_timeout after it was adopted.
    let seen = container
        .wait_status("exited", IDLE + 3 * TICK + SLACK)
        .await;
    assert!(seen - started >= IDLE, "asleep before idle_timeout");
    assert_eq!(engine.count("start"), 1, "only the start made by hand");
    gateway
        .wait_state("adopt.test", "napping", Duration::from_secs(5))
        .await;
}

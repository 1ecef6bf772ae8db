//! Several container engines behind one gateway (issue 18), and Podman's event names (issue 17,
//! point 5), against real engines: the local Docker engine, the same engine through a TCP
//! forwarder (which the test cuts) or a TLS front with client certificates, and Debian's Podman
//! 4.3 (`podman system service` on a socket of its own).
//!
//! What "the engine's connection cut" means here: the control plane (the engine API) is gone, the
//! data plane (the container's own address) is not. A route that is READY keeps proxying to its
//! container; a route that must WAKE (or is woken while its engine is down) answers 503 with
//! `Retry-After` at once, naming the engine.
#![allow(clippy::unwrap_used, unreachable_pub)] // A test: a failed unwrap is a failed test; helpers are shared.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::container::TestContainer;
use common::engine::{EngineProxy, EventCounter};
use common::eventually;
use common::gateway::{binary, write_config, Gateway};
use common::http::{expect_index, expect_problem, retry_after};
use common::image::ensure_test_image;
use common::podman::Podman;
use common::tls_engine::{TestPki, TlsEngineFront};

/// A gateway config with `routes` (YAML flow mappings, one a line) and a short retry backoff.
fn config(routes: &[String]) -> String {
    let mut text = String::from(
        "idlewatcher:\n  listen: [\"@LISTEN@\"]\n  defaults: { retry_backoff: 200ms, show_details: true }\n  routes:\n",
    );
    for route in routes {
        text.push_str(&format!("    - {route}\n"));
    }
    text
}

/// A route `name` (host `name.test`, port 80) on `container`, with `engine` added to its
/// `docker:` section (`""` = the default engine).
fn route(name: &str, container: &str, engine: &str) -> String {
    format!("{{ name: {name}, hosts: [{name}.test], docker: {{ container: {container}{engine} }}, port: 80 }}")
}

/// GETs `host`'s `/` until it is the test page, or panics after `timeout` with the last answer.
async fn until_served(gateway: &Gateway, host: &str, timeout: Duration) {
    let client = gateway.client();
    let url = gateway.url(host, "/");
    let served = eventually(timeout, Duration::from_millis(100), || {
        expect_index(&client, &url, Duration::from_secs(10))
    })
    .await;
    if let Err(last) = served {
        panic!("{host} never served: {last}\n{}", gateway.logs());
    }
}

/// One GET of `host`'s `/` through `gateway`, woken if it must be: the backend's page.
async fn serves(gateway: &Gateway, client: &reqwest::Client, host: &str) {
    expect_index(client, &gateway.url(host, "/"), Duration::from_secs(30))
        .await
        .unwrap();
}

/// One GET of `host`'s `/` that must be a 503 problem with `Retry-After`, naming `engine`;
/// returns how long the answer took and its detail.
async fn expect_engine_down(gateway: &Gateway, host: &str, engine: &str) -> (Duration, String) {
    let began = Instant::now();
    let response = gateway
        .client()
        .get(gateway.url(host, "/"))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let took = began.elapsed();
    let (headers, body) = expect_problem(response, 503).await;
    assert!(retry_after(&headers) >= 1);
    let detail = body["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains(engine),
        "the answer names the engine {engine}: {detail}"
    );
    (took, detail)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_each_wake_their_own_container_and_fail_and_heal_alone() {
    let a = TestContainer::http("eng-a").await;
    let b = TestContainer::http("eng-b").await;
    let (a_events, b_events) = (EventCounter::new(&a.name), EventCounter::new(&b.name));
    // The second engine: the same Docker engine through a forwarder the test cuts. Down when the
    // gateway starts: start-up does not wait for it.
    let second = EngineProxy::start().await;
    second.set_up(false);
    let second_engine = format!("Docker engine at {}", second.host);
    let gateway = Gateway::start(&config(&[
        route("a", &a.name, ""),
        route("b", &b.name, &format!(", host: \"{}\"", second.host)),
    ]))
    .await;
    let client = gateway.client();

    // Start-up with the second engine unreachable: its route answers 503 + Retry-After, the
    // other route wakes on its own engine.
    let (took, detail) = expect_engine_down(&gateway, "b.test", &second_engine).await;
    eprintln!("engine down at start-up: 503 in {took:?}: {detail}");
    serves(&gateway, &client, "a.test").await;

    // The engine comes up: retried in the background, its route wakes, no restart.
    let began = Instant::now();
    second.set_up(true);
    until_served(&gateway, "b.test", Duration::from_secs(30)).await;
    eprintln!(
        "second engine up: route b served after {:?}",
        began.elapsed()
    );
    assert_eq!(a_events.count("start"), 1, "{:?}", a_events.actions());
    assert_eq!(b_events.count("start"), 1, "{:?}", b_events.actions());

    // Cut while b is ready: the engine is the control plane only, b keeps being proxied.
    second.set_up(false);
    expect_index(
        &client,
        &gateway.url("b.test", "/"),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    second.set_up(true);

    // Both stopped by hand (seen on each engine's own stream), then the second engine cut: b's
    // wake fails at once naming its engine; a wakes on its engine meanwhile.
    b.stop().await;
    gateway
        .wait_state("b.test", "napping", Duration::from_secs(20))
        .await;
    a.stop().await;
    gateway
        .wait_state("a.test", "napping", Duration::from_secs(20))
        .await;
    second.set_up(false);
    let (took, detail) = expect_engine_down(&gateway, "b.test", &second_engine).await;
    eprintln!("engine cut: 503 in {took:?}: {detail}");
    assert!(took < Duration::from_secs(1), "503 after {took:?}");
    serves(&gateway, &client, "a.test").await;
    assert_eq!(a_events.count("start"), 2, "{:?}", a_events.actions());
    assert_eq!(b_events.count("start"), 1, "{:?}", b_events.actions());

    // Restored: b works again, without a restart of the gateway.
    let began = Instant::now();
    second.set_up(true);
    until_served(&gateway, "b.test", Duration::from_secs(30)).await;
    eprintln!(
        "engine restored: route b served after {:?}",
        began.elapsed()
    );
    assert_eq!(b_events.count("start"), 2, "{:?}", b_events.actions());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_name_on_docker_and_podman_is_two_backends_and_podman_changes_are_seen() {
    let podman = Podman::start().await;
    let image = ensure_test_image().await;
    podman.load_image(image).await;
    let docker_side = TestContainer::http("both").await;
    let name = docker_side.name.clone();
    podman
        .cli(&[
            "create",
            "--name",
            &name,
            "--label",
            "idlewatcher-test=1",
            image,
        ])
        .await;
    let gateway = Gateway::start(&config(&[
        route("d", &name, ""),
        route("p", &name, &format!(", host: \"{}\"", podman.host)),
    ]))
    .await;
    let client = gateway.client();

    // Waking the Podman one starts only that one.
    serves(&gateway, &client, "p.test").await;
    assert_eq!(podman.state(&name).await.as_deref(), Some("running"));
    assert_eq!(docker_side.status().await, "created");
    assert_eq!(gateway.status("d.test").await["state"], "napping");
    // And the Docker one only that one.
    serves(&gateway, &client, "d.test").await;
    assert_eq!(docker_side.status().await, "running");

    // A hand stop on Podman (its compatible API spells events its own way) is seen, and only
    // for the Podman backend.
    podman.cli(&["stop", "-t", "2", &name]).await;
    gateway
        .wait_state("p.test", "napping", Duration::from_secs(20))
        .await;
    assert_eq!(gateway.status("d.test").await["state"], "ready");
    // Woken again, then removed by hand: seen too.
    serves(&gateway, &client, "p.test").await;
    podman.cli(&["rm", "-f", "-t", "2", &name]).await;
    gateway
        .wait_state("p.test", "error", Duration::from_secs(20))
        .await;
    let status = gateway.status("p.test").await;
    assert!(
        status.to_string().contains("removed"),
        "the removal is the route's error: {status}"
    );
    assert_eq!(gateway.status("d.test").await["state"], "ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_engine_with_a_client_certificate_works_and_a_wrong_ca_is_refused() {
    let pki = TestPki::new();
    let front = TlsEngineFront::start(&pki).await;
    let trusted = TestContainer::http("tls-ok").await;
    let untrusted = TestContainer::http("tls-bad").await;
    let tls = |dir: std::path::PathBuf| {
        format!(
            ", host: \"{}\", tls: {{ cert_path: \"{}\" }}",
            front.host,
            dir.display()
        )
    };
    let gateway = Gateway::start(&config(&[
        route("t", &trusted.name, &tls(pki.good_dir())),
        route("w", &untrusted.name, &tls(pki.wrong_ca_dir())),
    ]))
    .await;
    let client = gateway.client();
    serves(&gateway, &client, "t.test").await;
    assert_eq!(trusted.status().await, "running");

    let engine = format!("Docker engine at {}", front.host);
    let (_, detail) = expect_engine_down(&gateway, "w.test", &engine).await;
    eprintln!("wrong CA: {detail}");
    assert!(
        detail.contains("certificate") || detail.contains("UnknownIssuer"),
        "the answer says the engine's certificate is not trusted: {detail}"
    );
    assert_eq!(untrusted.status().await, "created");
    let logs = gateway.logs();
    assert!(
        logs.lines()
            .any(|line| line.contains(&engine) && line.contains("UnknownIssuer")),
        "the log names the engine and the TLS failure:\n{logs}"
    );
}

#[test]
fn check_names_the_route_key_line_and_file_of_bad_tls_material() {
    let pki = TestPki::new();
    let broken = tempfile::tempdir().unwrap();
    for file in ["ca.pem", "cert.pem"] {
        std::fs::copy(pki.good_dir().join(file), broken.path().join(file)).unwrap();
    }
    std::fs::write(broken.path().join("key.pem"), "not a key\n").unwrap();
    let missing = tempfile::tempdir().unwrap();
    let text = format!(
        "idlewatcher:\n  routes:\n    - name: broken\n      hosts: [broken.test]\n      port: 80\n      docker:\n        container: x\n        host: \"tcp://127.0.0.1:2376\"\n        tls: {{ cert_path: \"{}\" }}\n    - name: missing\n      hosts: [missing.test]\n      port: 80\n      docker:\n        container: y\n        host: \"tcp://127.0.0.1:2376\"\n        tls: {{ cert_path: \"{}\" }}\n    - name: plain\n      hosts: [plain.test]\n      port: 80\n      docker:\n        container: z\n        host: \"unix:///var/run/docker.sock\"\n        tls: {{ cert_path: \"{}\" }}\n",
        broken.path().display(),
        missing.path().display(),
        pki.good_dir().display(),
    );
    let (_dir, path) = write_config(&text);
    let output = Command::new(binary())
        .args(["-t", "-c"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let key = broken.path().join("key.pem");
    let ca = missing.path().join("ca.pem");
    for (line, route, key_name, needle) in [
        (
            9,
            "broken",
            "docker.tls.cert_path",
            key.display().to_string(),
        ),
        (
            16,
            "missing",
            "docker.tls.cert_path",
            ca.display().to_string(),
        ),
        (
            23,
            "plain",
            "docker.tls",
            "TLS applies to tcp://".to_string(),
        ),
    ] {
        assert!(
            stderr.lines().any(|l| l.contains(&format!("line {line},"))
                && l.contains(&format!("route \"{route}\""))
                && l.contains(&format!("key \"{key_name}\""))
                && l.contains(&needle)),
            "no error for route {route} at line {line} naming {needle}:\n{stderr}"
        );
    }

    // The good material passes.
    let good = format!(
        "idlewatcher:\n  docker: {{ host: \"tcp://127.0.0.1:2376\", tls: {{ cert_path: \"{}\" }} }}\n  routes:\n    - {{ name: ok, hosts: [ok.test], port: 80, docker: {{ container: x }} }}\n",
        pki.good_dir().display()
    );
    let (_dir, path) = write_config(&good);
    let output = Command::new(binary())
        .args(["-t", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

//! Docker label discovery (`docker: { labels: true }`): a container labelled
//! `idlewatcher.enable=true` is routed from its creation (stopped: the first request wakes it)
//! until its removal; bad labels and clashes with the file are not routed and are listed with
//! their errors — against the real Docker engine, through the real binary.
#![allow(clippy::unwrap_used, unreachable_pub)] // A test: a failed unwrap is a failed test; helpers are shared.

mod common;

use std::time::{Duration, Instant};

use common::container::TestContainer;
use common::engine::EventCounter;
use common::gateway::{free_port, Gateway};

const WAIT: Duration = Duration::from_secs(20);

/// A gateway config discovering labelled containers, with an admin listener on `admin` and
/// `routes` from the file.
fn config(admin: u16, routes: &str) -> String {
    format!(
        "idlewatcher:\n  listen: [\"@LISTEN@\"]\n  docker: {{ labels: true }}\n  admin: {{ listen: \"127.0.0.1:{admin}\" }}\n  routes:\n{routes}"
    )
}

/// `GET /api/routes`.
async fn listing(admin: u16) -> Vec<serde_json::Value> {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    client
        .get(format!("http://127.0.0.1:{admin}/api/routes"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until the listing has (or, with `present` false, lacks) an entry named `name`;
/// returns it and how long that took.
async fn wait_listed(
    admin: u16,
    name: &str,
    present: bool,
) -> (Option<serde_json::Value>, Duration) {
    let began = Instant::now();
    loop {
        let found = listing(admin)
            .await
            .into_iter()
            .find(|entry| entry["name"] == name);
        if found.is_some() == present {
            return (found, began.elapsed());
        }
        assert!(
            began.elapsed() < WAIT,
            "{name} {} the listing after {WAIT:?}",
            if present { "never in" } else { "still in" }
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_labelled_container_is_routed_from_its_creation_to_its_removal() {
    let admin = free_port();
    let gateway = Gateway::start(&config(admin, "    []\n")).await;
    let prefix = "lbl-web";
    let host = format!("{}.test", common::container::unique_name("lbl-host"));
    let container = TestContainer::builder(prefix)
        .label("idlewatcher.enable", "true")
        .label("idlewatcher.hosts", &host)
        .label("idlewatcher.port", "80")
        .label("idlewatcher.show_details", "true")
        .create()
        .await;
    let engine = EventCounter::new(&container.name);
    let (entry, took) = wait_listed(admin, &container.name, true).await;
    let entry = entry.unwrap();
    assert_eq!(entry["source"], "labels", "{entry}");
    assert_eq!(entry["state"], "napping", "{entry}");
    eprintln!("labelled container routed {took:?} after docker create returned");
    // The engine's `create` event, not a periodic scan, routes it.
    assert!(took < Duration::from_secs(1), "routed after {took:?}");

    let client = gateway.client();
    let woken = client.get(gateway.url(&host, "/")).send().await.unwrap();
    assert_eq!(woken.status(), 200, "{}", gateway.logs());
    assert!(
        engine.wait_for("start", WAIT).await,
        "{:?}",
        engine.actions()
    );
    assert_eq!(engine.count("start"), 1);

    container.remove().await;
    let (_, took) = wait_listed(admin, &container.name, false).await;
    eprintln!("route of a removed container gone {took:?} after docker rm returned");
    let gone = client.get(gateway.url(&host, "/")).send().await.unwrap();
    assert_eq!(gone.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_label_is_not_routed_and_its_error_is_listed() {
    let admin = free_port();
    let gateway = Gateway::start(&config(admin, "    []\n")).await;
    let host = format!("{}.test", common::container::unique_name("lbl-bad"));
    let container = TestContainer::builder("lbl-bad")
        .label("idlewatcher.enable", "true")
        .label("idlewatcher.hosts", &host)
        .label("idlewatcher.port", "80")
        .label("idlewatcher.idle_timeout", "5x")
        .create()
        .await;
    let (entry, _) = wait_listed(admin, &container.name, true).await;
    let entry = entry.unwrap();
    assert_eq!(entry["source"], "labels", "{entry}");
    assert_eq!(entry["state"], "rejected", "{entry}");
    let errors = entry["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{entry}");
    let error = errors[0].as_str().unwrap();
    assert!(
        error.contains("idlewatcher.idle_timeout")
            && error.contains("5x")
            && error.contains(&container.name),
        "{error}"
    );
    assert!(
        gateway.logs().contains("idlewatcher.idle_timeout"),
        "logged"
    );
    let answer = gateway
        .client()
        .get(gateway.url(&host, "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404, "not routed");
    assert_eq!(container.status().await, "created", "never started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_route_clashing_with_the_file_is_rejected_and_the_file_route_kept() {
    let file_backend = TestContainer::http("lbl-file").await;
    let admin = free_port();
    let host = format!("{}.test", common::container::unique_name("lbl-clash"));
    let gateway = Gateway::start(&config(
        admin,
        &format!(
            "    - name: filed\n      hosts: [\"{host}\"]\n      docker: {{ container: {} }}\n      port: 80\n",
            file_backend.name
        ),
    ))
    .await;
    let labelled = TestContainer::builder("lbl-clash")
        .label("idlewatcher.enable", "true")
        .label("idlewatcher.hosts", &host)
        .label("idlewatcher.port", "80")
        .create()
        .await;
    let (entry, _) = wait_listed(admin, &labelled.name, true).await;
    let entry = entry.unwrap();
    assert_eq!(entry["state"], "rejected", "{entry}");
    let error = entry["errors"][0].as_str().unwrap();
    assert!(
        error.contains("idlewatcher.hosts") && error.contains("\"filed\""),
        "{error}"
    );
    let answer = gateway
        .client()
        .get(gateway.url(&host, "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "the file's route serves the host");
    assert_eq!(
        labelled.status().await,
        "created",
        "the labelled one never woke"
    );
    assert_eq!(file_backend.status().await, "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_container_keeps_its_route() {
    let admin = free_port();
    let gateway = Gateway::start(&config(admin, "    []\n")).await;
    let host = format!("{}.test", common::container::unique_name("lbl-re"));
    let container = TestContainer::builder("lbl-re")
        .label("idlewatcher.enable", "true")
        .label("idlewatcher.hosts", &host)
        .label("idlewatcher.port", "80")
        .create()
        .await;
    wait_listed(admin, &container.name, true).await;
    container.recreate().await;
    // The new container is routed as the old one was: one request wakes it.
    let answer = gateway
        .client()
        .get(gateway.url(&host, "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{}", gateway.logs());
    let (entry, _) = wait_listed(admin, &container.name, true).await;
    assert_eq!(entry.unwrap()["state"], "ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_create_during_a_wake_answers_the_held_requests() {
    let admin = free_port();
    let gateway = Gateway::start(&config(admin, "    []\n")).await;
    let host = format!("{}.test", common::container::unique_name("lbl-rewake"));
    // Listens 3 s after it starts: the wake is still probing when it is re-created.
    let container = TestContainer::builder("lbl-rewake")
        .cmd(&["sh", "-c", "sleep 3; exec /bin/serve"])
        .label("idlewatcher.enable", "true")
        .label("idlewatcher.hosts", &host)
        .label("idlewatcher.port", "80")
        .create()
        .await;
    wait_listed(admin, &container.name, true).await;
    let held = gateway.burst(&host, 20).await;
    container.wait_status("running", WAIT).await;
    // docker rm -f, then docker create with the same name and labels (a new id).
    container.recreate().await;
    let statuses = held.await.unwrap();
    assert!(
        statuses.iter().all(|status| *status == 200),
        "the held requests were answered by the re-created container: {statuses:?}\n{}",
        gateway.logs()
    );
    assert_eq!(container.status().await, "running");
}

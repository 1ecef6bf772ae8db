//! Reloading the configuration without a restart (SIGHUP, `POST /api/reload`): routes added,
//! removed and changed under load, held requests kept, invalid files refused whole, listeners
//! reported as needing a restart — against the real Docker engine, through the real binary.
#![allow(clippy::unwrap_used, unreachable_pub)] // A test: a failed unwrap is a failed test; helpers are shared.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::container::TestContainer;
use common::engine::EventCounter;
use common::gateway::{free_port, Gateway};

const WAIT: Duration = Duration::from_secs(30);

/// A route `name` (host `name.test`) in front of `container` on port 80; `extra` adds keys
/// (each line indented by six spaces).
fn route(name: &str, container: &str, extra: &str) -> String {
    format!(
        "    - name: {name}\n      hosts: [\"{name}.test\"]\n      docker: {{ container: {container} }}\n      port: 80\n{extra}"
    )
}

/// A gateway config with an admin listener on loopback `admin` and `routes`.
fn config(admin: u16, routes: &[String]) -> String {
    format!(
        "idlewatcher:\n  listen: [\"@LISTEN@\"]\n  admin: {{ listen: \"127.0.0.1:{admin}\" }}\n  routes:\n{}",
        routes.concat()
    )
}

/// `POST /api/reload` on the admin listener: status and JSON body.
async fn reload(admin: u16) -> (u16, serde_json::Value) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = client
        .post(format!("http://127.0.0.1:{admin}/api/reload"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn names(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|name| name.as_str().unwrap().to_string())
        .collect()
}

/// The status `url` answers to a plain GET.
async fn status_of(client: &reqwest::Client, url: String) -> reqwest::StatusCode {
    client.get(url).send().await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_leave_the_steady_route_alone() {
    let a = TestContainer::http("reload-a").await;
    let b = TestContainer::http("reload-b").await;
    let a_events = EventCounter::new(&a.name);
    let admin = free_port();
    let only_a = config(admin, &[route("a", &a.name, "")]);
    let both = config(admin, &[route("a", &a.name, ""), route("b", &b.name, "")]);
    let gateway = Gateway::start(&only_a).await;
    let client = gateway.client();
    let first = client.get(gateway.url("a.test", "/")).send().await.unwrap();
    assert_eq!(first.status(), 200, "{}", gateway.logs());

    // 200 requests a second to route A for as long as the reloads last (at least 10 s).
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (client, url, done) = (client.clone(), gateway.url("a.test", "/"), done.clone());
        tokio::spawn(async move {
            let began = Instant::now();
            let mut ticks = tokio::time::interval(Duration::from_millis(5));
            let mut requests = Vec::new();
            while began.elapsed() < Duration::from_secs(10)
                || !done.load(std::sync::atomic::Ordering::Relaxed)
            {
                ticks.tick().await;
                let (client, url) = (client.clone(), url.clone());
                requests.push(tokio::spawn(async move {
                    match client.get(url).send().await {
                        Ok(response) => response.status().as_u16(),
                        Err(_) => 0,
                    }
                }));
            }
            let mut statuses = Vec::new();
            for request in requests {
                statuses.push(request.await.unwrap());
            }
            statuses
        })
    };

    for round in 0..20 {
        gateway.rewrite_config(&both);
        let (status, answer) = reload(admin).await;
        assert_eq!(status, 200, "round {round}: {answer}");
        assert_eq!(names(&answer["added"]), ["b"], "round {round}: {answer}");
        assert!(names(&answer["removed"]).is_empty(), "{answer}");
        assert!(
            names(&answer["changed"]).is_empty(),
            "A never changes: {answer}"
        );
        let reached = client.get(gateway.url("b.test", "/")).send().await.unwrap();
        assert_eq!(reached.status(), 200, "round {round}: B after its add");

        gateway.rewrite_config(&only_a);
        let (status, answer) = reload(admin).await;
        assert_eq!(status, 200, "round {round}: {answer}");
        assert_eq!(names(&answer["removed"]), ["b"], "round {round}: {answer}");
        let gone = client.get(gateway.url("b.test", "/")).send().await.unwrap();
        assert_eq!(gone.status(), 404, "round {round}: B after its removal");
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = load.await.unwrap();
    let failed: Vec<&u16> = statuses.iter().filter(|status| **status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests to A were not answered 200: {:?}",
        failed.len(),
        statuses.len(),
        &failed[..failed.len().min(20)]
    );
    assert!(statuses.len() >= 1500, "{} requests sent", statuses.len());
    assert_eq!(
        a_events.count("start"),
        1,
        "A's container was started once in all: {:?}",
        a_events.actions()
    );
    eprintln!(
        "reload under load: {} requests to A, all 200; 40 reloads; A started once",
        statuses.len()
    );
}

/// Waits until `route` holds `count` requests (admin API), or panics after `WAIT`.
async fn wait_held(admin: u16, route: &str, count: u64) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let routes: serde_json::Value = client
            .get(format!("http://127.0.0.1:{admin}/api/routes"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let held = routes
            .as_array()
            .unwrap()
            .iter()
            .find(|entry| entry["name"] == route)
            .and_then(|entry| entry["held"].as_u64())
            .unwrap_or(0);
        if held >= count {
            return;
        }
        assert!(Instant::now() < deadline, "{route} holds {held} of {count}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_during_a_wake_answers_the_held_requests_of_a_kept_route() {
    // Listens only 3 s after it starts: requests are held meanwhile.
    let slow =
        TestContainer::with_cmd("reload-slow", &["sh", "-c", "sleep 3; exec /bin/serve"]).await;
    let other = TestContainer::http("reload-other").await;
    let events = EventCounter::new(&slow.name);
    let admin = free_port();
    let gateway = Gateway::start(&config(admin, &[route("slow", &slow.name, "")])).await;
    let held = gateway.burst("slow.test", 100).await;
    wait_held(admin, "slow", 100).await;
    // The kept route changes (its idle timeout) and another is added, mid-wake.
    gateway.rewrite_config(&config(
        admin,
        &[
            route("slow", &slow.name, "      idle_timeout: 1h\n"),
            route("other", &other.name, ""),
        ],
    ));
    let (status, answer) = reload(admin).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(names(&answer["changed"]), ["slow"], "{answer}");
    assert_eq!(names(&answer["added"]), ["other"], "{answer}");
    let statuses = held.await.unwrap();
    assert!(
        statuses.iter().all(|status| *status == 200),
        "every held request answered 200: {statuses:?}"
    );
    assert_eq!(statuses.len(), 100);
    assert_eq!(events.count("start"), 1, "{:?}", events.actions());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_route_answers_its_held_requests_503_at_once() {
    let slow =
        TestContainer::with_cmd("reload-gone", &["sh", "-c", "sleep 20; exec /bin/serve"]).await;
    let other = TestContainer::http("reload-stay").await;
    let admin = free_port();
    let gateway = Gateway::start(&config(
        admin,
        &[
            route("gone", &slow.name, ""),
            route("stay", &other.name, ""),
        ],
    ))
    .await;
    let held = gateway.burst("gone.test", 20).await;
    wait_held(admin, "gone", 20).await;
    gateway.rewrite_config(&config(admin, &[route("stay", &other.name, "")]));
    let (status, answer) = reload(admin).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(names(&answer["removed"]), ["gone"], "{answer}");
    // Well before the container could answer (20 s): the removal, not the wake, ended them.
    let statuses = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the held requests were answered at the removal")
        .unwrap();
    assert!(
        statuses.iter().all(|status| *status == 503),
        "every held request of the removed route got 503: {statuses:?}"
    );
    let gone = gateway
        .client()
        .get(gateway.url("gone.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    let stay = gateway
        .client()
        .get(gateway.url("stay.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(stay.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_on_sighup_changes_nothing_and_every_error_is_logged_with_its_line() {
    let a = TestContainer::http("reload-valid").await;
    let admin = free_port();
    let good = config(admin, &[route("a", &a.name, "")]);
    let gateway = Gateway::start(&good).await;
    let client = gateway.client();
    assert_eq!(status_of(&client, gateway.url("a.test", "/")).await, 200);
    // Line numbers below count the four server keys the helper puts first.
    let bad = config(
        admin,
        &[
            route("a", &a.name, "      idle_timeout: 5x\n"),
            route("b", &a.name, "      colour: blue\n"),
        ],
    );
    gateway.rewrite_config(&bad);
    let written = std::fs::read_to_string(gateway.dir().join("idlewatcher.yaml")).unwrap();
    let line_of = |needle: &str| {
        written
            .lines()
            .position(|line| line.contains(needle))
            .map(|index| index + 1)
            .unwrap()
    };
    let (duration_line, key_line) = (line_of("idle_timeout: 5x"), line_of("colour: blue"));
    gateway.signal("HUP").await;
    assert!(
        gateway.wait_for_log("nothing changed", WAIT).await,
        "{}",
        gateway.logs()
    );
    let logs = gateway.logs();
    for line in [duration_line, key_line] {
        assert!(
            logs.contains(&format!("line {line},")),
            "line {line} named in the log:\n{logs}"
        );
    }
    assert!(
        logs.contains("idle_timeout") && logs.contains("colour"),
        "{logs}"
    );
    // Still serving on the old configuration; `b` never came.
    assert_eq!(status_of(&client, gateway.url("a.test", "/")).await, 200);
    assert_eq!(status_of(&client, gateway.url("b.test", "/")).await, 404);
    // The API answers the same file with 400 and the list.
    let (status, answer) = reload(admin).await;
    assert_eq!(status, 400, "{answer}");
    let lines: Vec<u64> = answer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| error["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [duration_line as u64, key_line as u64], "{answer}");
    // A valid SIGHUP afterwards applies.
    gateway.rewrite_config(&config(
        admin,
        &[route("a", &a.name, ""), route("b", &a.name, "")],
    ));
    gateway.signal("HUP").await;
    assert!(
        gateway.wait_for_log("configuration reloaded", WAIT).await,
        "{}",
        gateway.logs()
    );
    assert_eq!(status_of(&client, gateway.url("b.test", "/")).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_listen_address_is_reported_not_applied() {
    let a = TestContainer::http("reload-listen").await;
    let admin = free_port();
    let gateway = Gateway::start(&config(admin, &[route("a", &a.name, "")])).await;
    let elsewhere = free_port();
    let moved = config(admin, &[route("a", &a.name, "")])
        .replace("@LISTEN@", &format!("127.0.0.1:{elsewhere}"));
    gateway.rewrite_config(&moved);
    let (status, answer) = reload(admin).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        names(&answer["restart_needed"]),
        ["idlewatcher.listen"],
        "{answer}"
    );
    assert!(gateway.logs().contains("idlewatcher.listen"), "logged too");
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", elsewhere))
            .await
            .is_err(),
        "the new address is not listened on"
    );
    let answer = gateway
        .client()
        .get(gateway.url("a.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "the old address still serves");
}

/// A second gateway process, terminated when dropped (also when the test fails).
struct Upgraded(std::process::Child);

impl Drop for Upgraded {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether process `pid` has exited (gone, or a zombie its parent has not reaped yet).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => status.contains("State:\tZ"),
        Err(_) => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reported_listen_change_the_upgrade_still_hands_the_listeners_over() {
    let a = TestContainer::http("reload-upgrade").await;
    let admin = free_port();
    let sockets = tempfile::tempdir().unwrap();
    let upgrade_sock = sockets.path().join("upgrade.sock");
    let server = format!(
        "version: 1\nthreads: 2\ngrace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 1\nupgrade_sock: {}\n",
        upgrade_sock.display()
    );
    let original = format!("{server}{}", config(admin, &[route("a", &a.name, "")]));
    let gateway = Gateway::start(&original).await;
    let client = gateway.client();
    let url = gateway.url("a.test", "/");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);

    // A listen change is reported, not applied…
    let moved = original.replace("@LISTEN@", &format!("127.0.0.1:{}", free_port()));
    gateway.rewrite_config(&moved);
    let (status, answer) = reload(admin).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(names(&answer["restart_needed"]), ["idlewatcher.listen"]);
    // …and the upgrade that applies a restart still takes the running listeners over.
    gateway.rewrite_config(&original);
    let log = std::fs::File::create(sockets.path().join("upgraded.log")).unwrap();
    let upgraded = Upgraded(
        std::process::Command::new(common::gateway::binary())
            .arg("-c")
            .arg(gateway.dir().join("idlewatcher.yaml"))
            .arg("-u")
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + WAIT;
    while !upgrade_sock.exists() {
        assert!(
            Instant::now() < deadline,
            "the new process never waited for the listeners"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Requests all along the handover.
    let load = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            let began = Instant::now();
            while began.elapsed() < Duration::from_secs(4) {
                statuses.push(match client.get(&url).send().await {
                    Ok(response) => response.status().as_u16(),
                    Err(_) => 0,
                });
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            statuses
        })
    };
    gateway.signal("QUIT").await;
    let deadline = Instant::now() + WAIT;
    while !exited(gateway.pid()) {
        assert!(Instant::now() < deadline, "the old process never left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let statuses = load.await.unwrap();
    assert!(
        statuses.iter().all(|status| *status == 200),
        "every request across the handover answered 200: {statuses:?}"
    );
    // The old process is gone: the new one answers, on the same address and admin listener.
    let fresh = reqwest::Client::builder()
        .no_proxy()
        .resolve("a.test", gateway.address)
        .build()
        .unwrap();
    assert_eq!(fresh.get(&url).send().await.unwrap().status(), 200);
    let (status, answer) = reload(admin).await;
    assert_eq!(status, 200, "the new process reloads too: {answer}");
    drop(upgraded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_reloads_is_applied_one_after_the_other() {
    let a = TestContainer::http("reload-burst-a").await;
    let b = TestContainer::http("reload-burst-b").await;
    let admin = free_port();
    let gateway = Gateway::start(&config(admin, &[route("a", &a.name, "")])).await;
    gateway.rewrite_config(&config(
        admin,
        &[route("a", &a.name, ""), route("b", &b.name, "")],
    ));
    let answers = futures_util::future::join_all((0..10).map(|_| reload(admin))).await;
    let mut added = 0;
    for (status, answer) in &answers {
        assert_eq!(*status, 200, "{answer}");
        match names(&answer["added"]).as_slice() {
            [] => {}
            [only] if only == "b" => added += 1,
            other => panic!("unexpected: {other:?}"),
        }
    }
    // Each reload is diffed against the one before it: b is added once, by the first.
    assert_eq!(added, 1, "{answers:?}");
    let reached = gateway
        .client()
        .get(gateway.url("b.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(reached.status(), 200);
}

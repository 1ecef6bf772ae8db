//! Issue 10 acceptance: the Proxmox LXC provider, through the real gateway binary, against the
//! fake PVE API of `common/pve.rs` (HTTPS with a certificate made here, token auth, UPID tasks).
//! Each guest's HTTP is served by the test itself on 127.0.0.1 (the address the fake reports in
//! `interfaces`).
#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::gateway::{binary, free_port, write_config, Gateway};
use common::pve::{FakePve, TOKEN_ID, TOKEN_SECRET};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A guest's web server: answers every request `200 lxc {vmid}`; counts requests.
struct GuestHttp {
    port: u16,
    hits: Arc<AtomicUsize>,
}

async fn guest_http(vmid: u32) -> GuestHttp {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let hits = Arc::clone(&counted);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                }
                hits.fetch_add(1, Ordering::SeqCst);
                let body = format!("lxc {vmid}");
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    GuestHttp { port, hits }
}

/// The `proxmox:` section for `fake`, pinned by fingerprint, polling every `poll`.
fn section(fake: &FakePve, poll: &str) -> String {
    format!(
        "  proxmox:\n    url: \"{}\"\n    token_id: \"{TOKEN_ID}\"\n    token_secret: \"{TOKEN_SECRET}\"\n    fingerprint: \"{}\"\n    poll: {poll}\n",
        fake.url(),
        fake.fingerprint
    )
}

/// One route `ct{vmid}.test` on guest `vmid` of pve1; `extra` are more route keys (6 spaces).
fn route(vmid: u32, port: u16, extra: &str) -> String {
    format!(
        "    - name: ct{vmid}\n      hosts: [\"ct{vmid}.test\"]\n      proxmox: {{ node: pve1, vmid: {vmid} }}\n      port: {port}\n{extra}"
    )
}

fn config(fake: &FakePve, poll: &str, routes: &[String]) -> String {
    format!(
        // Details shown: these tests read guest names and PVE's errors in the public answers.
        "idlewatcher:\n  listen: [\"@LISTEN@\"]\n  defaults: {{ show_details: true }}\n{}  routes:\n{}",
        section(fake, poll),
        routes.concat()
    )
}

fn calls_of(fake: &FakePve, kind: &str, vmid: u32) -> Vec<String> {
    fake.power_calls()
        .into_iter()
        .filter(|(k, v, _)| k == kind && *v == vmid)
        .map(|(_, _, body)| body)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_guest_is_started_once_for_500_held_requests_then_proxied() {
    common::init_tracing();
    let fake = FakePve::start().await;
    let http = guest_http(101).await;
    fake.add_guest("pve1", 101, Some("127.0.0.1"));
    fake.set_task_time(Duration::from_millis(400));
    let gateway = Gateway::start(&config(&fake, "2s", &[route(101, http.port, "")])).await;
    gateway
        .wait_state("ct101.test", "napping", Duration::from_secs(5))
        .await;

    let client = gateway.client();
    let url = gateway.url("ct101.test", "/hello");
    let requests = (0..500).map(|_| {
        let client = client.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let response = client.get(url).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        })
    });
    let answers = futures_util::future::join_all(requests).await;
    for answer in answers {
        let (status, body) = answer.unwrap();
        assert_eq!(
            (status, body.as_str()),
            (200, "lxc 101"),
            "{}",
            gateway.logs()
        );
    }
    assert_eq!(fake.count("POST start"), 1, "{:?}", fake.counts());
    assert_eq!(calls_of(&fake, "vzstart", 101).len(), 1);
    assert!(http.hits.load(Ordering::SeqCst) >= 500);
    assert_eq!(fake.guest_status(101).as_deref(), Some("running"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_stop_is_one_graceful_shutdown_and_kill_is_one_hard_stop() {
    common::init_tracing();
    let fake = FakePve::start().await;
    let http = guest_http(0).await;
    fake.add_guest("pve1", 201, Some("127.0.0.1"));
    fake.add_guest("pve1", 202, Some("127.0.0.1"));
    let gateway = Gateway::start(&config(
        &fake,
        "500ms",
        &[
            route(
                201,
                http.port,
                "      idle_timeout: 1s\n      stop_method: stop\n      stop_timeout: 7s\n",
            ),
            route(
                202,
                http.port,
                "      idle_timeout: 1s\n      stop_method: kill\n",
            ),
        ],
    ))
    .await;
    for host in ["ct201.test", "ct202.test"] {
        let response = gateway
            .client()
            .get(gateway.url(host, "/"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", gateway.logs());
    }
    gateway
        .wait_state("ct201.test", "napping", Duration::from_secs(10))
        .await;
    gateway
        .wait_state("ct202.test", "napping", Duration::from_secs(10))
        .await;

    let shutdowns = calls_of(&fake, "vzshutdown", 201);
    assert_eq!(shutdowns.len(), 1, "{:?}", fake.power_calls());
    assert!(shutdowns[0].contains("forceStop=1"), "{shutdowns:?}");
    assert!(shutdowns[0].contains("timeout=7"), "{shutdowns:?}");
    assert!(calls_of(&fake, "vzstop", 201).is_empty());
    assert_eq!(
        calls_of(&fake, "vzstop", 202).len(),
        1,
        "{:?}",
        fake.power_calls()
    );
    assert!(calls_of(&fake, "vzshutdown", 202).is_empty());
    assert_eq!(fake.guest_status(201).as_deref(), Some("stopped"));
    assert_eq!(fake.guest_status(202).as_deref(), Some("stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_with_warnings_succeeds_and_a_failed_task_is_a_named_503_and_backs_off() {
    common::init_tracing();
    let fake = FakePve::start().await;
    let http = guest_http(0).await;
    fake.add_guest("pve1", 301, Some("127.0.0.1"));
    fake.add_guest("pve1", 302, Some("127.0.0.1"));
    fake.next_exit("vzstart", "WARNINGS: 1");
    let gateway = Gateway::start(&config(
        &fake,
        "2s",
        &[
            route(301, http.port, ""),
            route(302, http.port, "      retry_backoff: 30s\n"),
        ],
    ))
    .await;
    let client = gateway.client();
    let ok = client
        .get(gateway.url("ct301.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "{}", gateway.logs());
    assert_eq!(ok.text().await.unwrap(), "lxc 0");

    fake.next_exit("vzstart", "startup for container '302' failed");
    let failed = client
        .get(gateway.url("ct302.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 503);
    assert!(failed.headers().contains_key("retry-after"));
    let problem = failed.text().await.unwrap();
    assert!(
        problem.contains("startup for container '302' failed")
            && problem.contains("lxc/302 on pve1"),
        "{problem}"
    );
    gateway
        .wait_state("ct302.test", "error", Duration::from_secs(2))
        .await;
    // Backoff: another request at once is answered without a second start.
    let again = client
        .get(gateway.url("ct302.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 503);
    assert_eq!(
        calls_of(&fake, "vzstart", 302).len(),
        1,
        "{:?}",
        fake.power_calls()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_behind_the_gateways_back_are_followed_within_two_polls() {
    common::init_tracing();
    let fake = FakePve::start().await;
    let http = guest_http(401).await;
    fake.add_guest("pve1", 401, Some("127.0.0.1"));
    let poll = Duration::from_millis(500);
    let gateway = Gateway::start(&config(&fake, "500ms", &[route(401, http.port, "")])).await;
    gateway
        .wait_state("ct401.test", "napping", Duration::from_secs(5))
        .await;
    // Two polls, plus the readiness probe of an adopted guest.
    let within = 2 * poll + Duration::from_millis(300);

    fake.power("pve1", 401, "start").await;
    gateway.wait_state("ct401.test", "ready", within).await;
    assert!(
        calls_of(&fake, "vzstart", 401).len() == 1,
        "adopted, not started again"
    );

    fake.power("pve1", 401, "shutdown").await;
    gateway.wait_state("ct401.test", "napping", within).await;

    let removed = fake.remove_guest(401).unwrap();
    gateway.wait_state("ct401.test", "error", within).await;
    let status = gateway.status("ct401.test").await;
    assert!(status.to_string().contains("removed"), "{status}");

    fake.add_guest(&removed.node, 401, Some("127.0.0.1"));
    gateway.wait_state("ct401.test", "napping", within).await;
    let response = gateway
        .client()
        .get(gateway.url("ct401.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", gateway.logs());
    assert_eq!(response.text().await.unwrap(), "lxc 401");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_locked_guest_is_not_started_and_a_missing_one_is_not_found() {
    common::init_tracing();
    let fake = FakePve::start().await;
    let http = guest_http(0).await;
    fake.add_guest("pve1", 501, Some("127.0.0.1"));
    fake.edit_guest(501, |g| g.lock = Some("backup".into()));
    let gateway = Gateway::start(&config(
        &fake,
        "300ms",
        &[
            route(501, http.port, "      retry_backoff: 100ms\n"),
            route(599, http.port, ""),
        ],
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await; // the poller saw the lock
    let client = gateway.client();
    let locked = client
        .get(gateway.url("ct501.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(locked.status(), 503);
    let problem = locked.text().await.unwrap();
    assert!(problem.contains("locked (backup)"), "{problem}");
    assert_eq!(fake.count("POST start"), 0, "no start while locked");

    let missing = client
        .get(gateway.url("ct599.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 503);
    let problem = missing.text().await.unwrap();
    assert!(problem.contains("lxc/599 on pve1 not found"), "{problem}");

    // Unlocked: the next request starts it.
    fake.edit_guest(501, |g| g.lock = None);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let response = client
        .get(gateway.url("ct501.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", gateway.logs());
}

/// Runs the gateway on `text` expecting it to exit non-zero before listening; its stderr.
fn failing_start(text: &str) -> String {
    let address = format!("127.0.0.1:{}", free_port());
    let (_dir, path) = write_config(&text.replace("@LISTEN@", &address));
    let output = Command::new(binary())
        .arg("-c")
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "started anyway:\n{stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_token_fails_start_up_naming_the_token_id_never_the_secret() {
    let fake = FakePve::start().await;
    let wrong = "00000000-dead-beef-0000-000000000000";
    let text = config(&fake, "2s", &[route(601, 9, "")]).replace(TOKEN_SECRET, wrong);
    let started = Instant::now();
    let stderr = tokio::task::spawn_blocking(move || failing_start(&text))
        .await
        .unwrap();
    assert!(stderr.contains(TOKEN_ID), "{stderr}");
    assert!(stderr.contains("refused API token"), "{stderr}");
    assert!(!stderr.contains(wrong), "the secret leaked:\n{stderr}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "PVE delays a bad token"
    );
    assert!(fake.count("GET version") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pin_mismatch_is_refused_naming_both_fingerprints() {
    let fake = FakePve::start().await;
    let pinned = "AA:".repeat(31) + "AA";
    let text = config(&fake, "2s", &[route(701, 9, "")]).replace(&fake.fingerprint, &pinned);
    let stderr = tokio::task::spawn_blocking(move || failing_start(&text))
        .await
        .unwrap();
    assert!(stderr.contains(&pinned), "{stderr}");
    assert!(stderr.contains(&fake.fingerprint), "{stderr}");
    assert_eq!(
        fake.count("GET version"),
        0,
        "no request got through the TLS handshake"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ca_file_is_trusted_and_insecure_is_warned_about() {
    let fake = FakePve::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("pve-root-ca.pem");
    std::fs::write(&ca, &fake.cert_pem).unwrap();
    let pinned = format!("fingerprint: \"{}\"", fake.fingerprint);
    let text = config(&fake, "2s", &[route(801, 9, "")]);
    let gateway =
        Gateway::start(&text.replace(&pinned, &format!("ca_file: \"{}\"", ca.display()))).await;
    gateway
        .wait_state("ct801.test", "error", Duration::from_secs(5))
        .await;
    drop(gateway);
    let gateway = Gateway::start(&text.replace(&pinned, "insecure: true")).await;
    gateway
        .wait_state("ct801.test", "error", Duration::from_secs(5))
        .await;
    assert!(gateway.logs().contains("NOT checked"), "{}", gateway.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watching_1000_guests_costs_one_api_call_per_poll() {
    let fake = FakePve::start().await;
    let routes: Vec<String> = (0..1000u32)
        .map(|i| {
            let vmid = 10_000 + i;
            fake.add_guest("pve1", vmid, Some("127.0.0.1"));
            format!(
                "    - name: g{vmid}\n      hosts: [\"g{vmid}.test\"]\n      proxmox: {{ node: pve1, vmid: {vmid} }}\n      upstream: \"127.0.0.1:9\"\n"
            )
        })
        .collect();
    let poll = Duration::from_millis(250);
    let gateway = Gateway::start(&config(&fake, "250ms", &routes)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (before_total, before_polls) = (fake.total(), fake.count("GET resources"));
    let window = Duration::from_secs(3);
    tokio::time::sleep(window).await;
    let (total, polls) = (
        fake.total() - before_total,
        fake.count("GET resources") - before_polls,
    );
    println!("1,000 guests watched for {window:?} at poll {poll:?}: {total} API calls, {polls} of them /cluster/resources");
    assert_eq!(total, polls, "only the bulk poll: {:?}", fake.counts());
    let expected = (window.as_millis() / poll.as_millis()) as usize;
    assert!(
        (expected - 2..=expected + 1).contains(&polls),
        "{polls} polls in {window:?} at {poll:?}"
    );
    gateway
        .wait_state("g10500.test", "napping", Duration::from_secs(1))
        .await;
}

/// The family connected straight to `fake` (no gateway), pinned by fingerprint.
async fn family(fake: &FakePve) -> idlewatcher::providers::proxmox::ProxmoxFamily {
    idlewatcher::providers::proxmox::ProxmoxFamily::connect(
        &fake.config(Duration::from_millis(200)),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_follows_tasks_and_is_idempotent() {
    use idlewatcher::config::BackendConfig;
    use idlewatcher::providers::{BackendStatus, ProviderError, ProviderFamily};
    let fake = FakePve::start().await;
    fake.set_task_time(Duration::from_millis(150));
    fake.add_guest("pve1", 901, Some("10.0.0.9"));
    let family = family(&fake).await;
    let guest = |vmid| {
        family
            .driver(&BackendConfig::Proxmox {
                node: "pve1".into(),
                vmid,
            })
            .unwrap()
    };
    let ct = guest(901);
    assert_eq!(ct.describe(), "lxc/901 on pve1");
    assert_eq!(ct.status().await.unwrap(), BackendStatus::Stopped);

    // A start returns once the task ended: the guest is running then, not before.
    ct.start().await.unwrap();
    assert_eq!(fake.guest_status(901).as_deref(), Some("running"));
    assert!(
        fake.count("GET task") >= 2,
        "the task was followed: {:?}",
        fake.counts()
    );
    assert_eq!(ct.address().await.unwrap().to_string(), "10.0.0.9");
    // Already running: success, and no task.
    ct.start().await.unwrap();
    assert_eq!(fake.count("POST start"), 2);
    assert_eq!(calls_of(&fake, "vzstart", 901).len(), 1);

    // No live address: the static ip= of net0.
    fake.edit_guest(901, |g| {
        g.live_ip = None;
        g.static_ip = "10.0.0.99/24".into();
    });
    assert_eq!(ct.address().await.unwrap().to_string(), "10.0.0.99");

    ct.stop(None, Duration::from_secs(3)).await.unwrap();
    assert_eq!(fake.guest_status(901).as_deref(), Some("stopped"));
    assert_eq!(
        calls_of(&fake, "vzshutdown", 901),
        vec!["timeout=3&forceStop=1".to_string()]
    );
    // Not running: success for stop and kill alike.
    ct.stop(None, Duration::from_secs(3)).await.unwrap();
    ct.kill(None).await.unwrap();
    assert!(calls_of(&fake, "vzstop", 901).is_empty());

    // A failing task is the error, with PVE's text and the guest.
    fake.next_exit("vzstart", "startup for container '901' failed");
    let err = ct.start().await.unwrap_err().to_string();
    assert_eq!(
        err,
        "start lxc/901 on pve1: startup for container '901' failed"
    );

    // Pause is not a Proxmox operation, and says why.
    let err = ct.pause().await.unwrap_err().to_string();
    assert!(err.contains("experimental CRIU checkpoint"), "{err}");

    // A start of a missing vmid: PVE gives a UPID, then the task fails: "not found".
    let missing = guest(999);
    let err = missing.start().await.unwrap_err();
    assert!(matches!(err, ProviderError::NotFound { .. }), "{err}");
    assert_eq!(err.to_string(), "lxc/999 on pve1 not found");
    assert_eq!(calls_of(&fake, "vzstart", 999).len(), 1);
    assert_eq!(missing.status().await.unwrap(), BackendStatus::Missing);

    // An outage: API errors name the action and the guest.
    fake.set_down(true);
    let err = ct.status().await.unwrap_err().to_string();
    assert!(
        err.starts_with("read the status of lxc/901 on pve1: "),
        "{err}"
    );
    fake.set_down(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poller_resyncs_after_an_outage_and_backs_off() {
    use idlewatcher::config::BackendConfig;
    use idlewatcher::providers::{BackendEvent, BackendObserver, BackendStatus, ProviderFamily};
    struct Seen(std::sync::Mutex<Vec<BackendEvent>>);
    impl BackendObserver for Seen {
        fn observe(&self, event: BackendEvent) {
            self.0.lock().unwrap().push(event);
        }
    }
    let fake = FakePve::start().await;
    fake.add_guest("pve1", 950, None);
    let family = Arc::new(family(&fake).await);
    let seen = Arc::new(Seen(std::sync::Mutex::new(Vec::new())));
    family.watch(
        &BackendConfig::Proxmox {
            node: "pve1".into(),
            vmid: 950,
        },
        seen.clone(),
    );
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let running = Arc::clone(&family);
    let task = tokio::spawn(async move { running.run_events(shutdown).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        *seen.0.lock().unwrap(),
        vec![BackendEvent::Resync(BackendStatus::Stopped)]
    );
    fake.set_down(true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let polls = fake.count("GET resources");
    fake.edit_guest(950, |g| g.status = "running".into());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Backing off: 200 ms doubling gives at most 3 polls in 1.2 s, not 6.
    assert!(
        fake.count("GET resources") - polls <= 3,
        "{:?}",
        fake.counts()
    );
    fake.set_down(false);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert_eq!(
        seen.0.lock().unwrap().last(),
        Some(&BackendEvent::Resync(BackendStatus::Running)),
        "resynced after the outage"
    );
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dependencies_wake_first_and_events_name_the_guest() {
    common::init_tracing();
    let fake = FakePve::start().await;
    let app = guest_http(1001).await;
    let db = guest_http(1002).await;
    fake.add_guest("pve1", 1001, Some("127.0.0.1"));
    fake.add_guest("pve2", 1002, Some("127.0.0.1"));
    let db_route = route(1002, db.port, "").replace("node: pve1", "node: pve2");
    let gateway = Gateway::start(&config(
        &fake,
        "2s",
        &[
            route(
                1001,
                app.port,
                "      depends_on: [\"ct1002:service_healthy\"]\n",
            ),
            db_route,
        ],
    ))
    .await;
    let response = gateway
        .client()
        .get(gateway.url("ct1001.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", gateway.logs());
    assert_eq!(response.text().await.unwrap(), "lxc 1001");
    let starts: Vec<u32> = fake
        .power_calls()
        .into_iter()
        .filter(|(kind, _, _)| kind == "vzstart")
        .map(|(_, vmid, _)| vmid)
        .collect();
    assert_eq!(starts, vec![1002, 1001], "the dependency first");
    assert!(
        db.hits.load(Ordering::SeqCst) >= 1,
        "the dependency was probed healthy"
    );
    // The task of a guest on another node is followed on that node (from its UPID).
    assert_eq!(fake.guest_status(1002).as_deref(), Some("running"));
    let events = gateway
        .event_history("ct1001.test", "ready", Duration::from_secs(2))
        .await;
    let shown = serde_json::to_string(&events).unwrap();
    assert!(shown.contains("lxc/1001 on pve1"), "{shown}");
    assert!(
        !gateway.logs().contains(TOKEN_SECRET),
        "the secret is never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_docker_app_depends_on_a_proxmox_database() {
    common::init_tracing();
    let fake = FakePve::start().await;
    let db = guest_http(1003).await;
    fake.add_guest("pve1", 1003, Some("127.0.0.1"));
    let app = common::container::TestContainer::http("pve-dependent").await;
    let app_events = common::engine::EventCounter::new(&app.name);
    let routes = [
        format!(
            "    - name: app\n      hosts: [app.test]\n      docker: {{ container: {} }}\n      port: 80\n      depends_on: [\"ct1003:service_healthy\"]\n",
            app.name
        ),
        route(1003, db.port, ""),
    ];
    let gateway = Gateway::start(&config(&fake, "2s", &routes)).await;
    let response = gateway
        .client()
        .get(gateway.url("app.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", gateway.logs());
    assert_eq!(response.text().await.unwrap(), common::image::INDEX_BODY);
    assert_eq!(
        calls_of(&fake, "vzstart", 1003).len(),
        1,
        "the guest started once"
    );
    assert!(
        db.hits.load(Ordering::SeqCst) >= 1,
        "the guest was probed healthy first"
    );
    assert!(app_events.wait_for("start", Duration::from_secs(5)).await);
    assert_eq!(app_events.count("start"), 1);
    let events = gateway
        .event_history("app.test", "ready", Duration::from_secs(2))
        .await;
    let shown = serde_json::to_string(&events).unwrap();
    assert!(
        shown.contains("Dependency lxc/1003 on pve1 is up"),
        "the Docker route's events name the guest: {shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_cluster_view_never_undoes_the_gateways_own_start_or_stop() {
    common::init_tracing();
    let fake = FakePve::start().await;
    let http = guest_http(1101).await;
    fake.add_guest("pve1", 1101, Some("127.0.0.1"));
    // pvestatd's view lags: /cluster/resources answers a snapshot up to 1.5 s old.
    fake.set_resources_staleness(Duration::from_millis(1500));
    let gateway = Gateway::start(&config(
        &fake,
        "200ms",
        &[route(1101, http.port, "      idle_timeout: 3s\n")],
    ))
    .await;
    gateway
        .wait_state("ct1101.test", "napping", Duration::from_secs(5))
        .await;
    let response = gateway
        .client()
        .get(gateway.url("ct1101.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", gateway.logs());
    // The stale "stopped", then the late "running": the route stays ready throughout.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(gateway.status("ct1101.test").await["state"], "ready");
    }
    gateway
        .wait_state("ct1101.test", "napping", Duration::from_secs(6))
        .await;
    // The stale "running" after our own stop adopts nothing.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(gateway.status("ct1101.test").await["state"], "napping");
    }
    assert_eq!(calls_of(&fake, "vzstart", 1101).len(), 1);
    assert_eq!(calls_of(&fake, "vzshutdown", 1101).len(), 1);
}

//! Docker Swarm services behind one or two real gateways, and two gateways sharing one plain
//! Docker container, on the real engine: a single-node swarm the tests join or make on loopback
//! (`common::swarm`), services of the local test image with host networking.
//!
//! Figures (wake time, time to scale down, replica changes) are printed for `--nocapture`.
#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::container::TestContainer;
use common::engine::EventCounter;
use common::gateway::Gateway;
use common::image::INDEX_BODY;
use common::swarm::{unix_now, TestService, SWARM_PATIENCE};
use common::{eventually, init_tracing};
use idlewatcher::providers::docker::{connect, EngineLink};
use idlewatcher::providers::swarm::{BeforeWrite, SwarmService, LEASE_PREFIX};
use idlewatcher::providers::{Activity, Provider, ProviderError, SleepVerdict};

/// The idle clock's tick in these tests.
const TICK: Duration = Duration::from_millis(250);
/// The routes' idle timeout.
const IDLE: Duration = Duration::from_secs(3);
/// Another gateway's lease holds a service this much past its last traffic (idle_timeout, its
/// renewal period idle_timeout / 4, and 2 s for clocks): see `providers::swarm`.
const GRACE: Duration = Duration::from_millis(750 + 2000);
/// Engine round trips on a loaded machine, on top of any promise.
const SLACK: Duration = Duration::from_secs(3);
/// One request every this often while a test keeps traffic going.
const TRAFFIC_EVERY: Duration = Duration::from_millis(100);
/// How long a test keeps traffic going through one gateway.
const TRAFFIC_FOR: Duration = Duration::from_secs(15);

/// A gateway named `instance` with one route `app.test` in front of `backend` (route keys).
fn config(instance: &str, gateway_keys: &str, backend: &str) -> String {
    format!(
        "idlewatcher:\n  listen: [\"@LISTEN@\"]\n  instance: {instance}\n  tick: 250ms\n{gateway_keys}  \
         defaults:\n    idle_timeout: 3s\n    wake_timeout: 60s\n  routes:\n    - name: app\n      \
         hosts: [\"app.test\"]\n{backend}"
    )
}

/// The route keys for Swarm service `service`.
fn on_service(service: &TestService) -> String {
    format!(
        "      swarm: {{ service: {} }}\n      port: {}\n      health: {{ path: / }}\n",
        service.name, service.port
    )
}

/// The replica changes among the service's events, as (old, new), in order.
fn replica_changes(events: &EventCounter) -> Vec<(u64, u64)> {
    events
        .events()
        .iter()
        .filter_map(|event| {
            let old = event.attributes.get("replicas.old")?.parse().ok()?;
            let new = event.attributes.get("replicas.new")?.parse().ok()?;
            Some((old, new))
        })
        .collect()
}

/// When the service was last scaled to 0, on the engine's clock (as the wall clock).
fn scaled_down_at(events: &EventCounter) -> Option<SystemTime> {
    let event = events
        .events()
        .into_iter()
        .rev()
        .find(|event| event.attributes.get("replicas.new").map(String::as_str) == Some("0"))?;
    Some(UNIX_EPOCH + Duration::from_nanos(u64::try_from(event.time_nano).ok()?))
}

/// GET `app.test/` through `gateway`: its status and body.
async fn get(gateway: &Gateway) -> (u16, String) {
    let response = gateway
        .client()
        .get(gateway.url("app.test", "/"))
        .send()
        .await
        .expect("an answer");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Requests through `gateway` every [`TRAFFIC_EVERY`] for [`TRAFFIC_FOR`], each answered 200;
/// returns when the last one was answered.
async fn steady_traffic(gateway: &Gateway) -> SystemTime {
    let until = Instant::now() + TRAFFIC_FOR;
    let mut last = SystemTime::now();
    while Instant::now() < until {
        let (status, _) = get(gateway).await;
        assert_eq!(status, 200, "a request during steady traffic");
        last = SystemTime::now();
        tokio::time::sleep(TRAFFIC_EVERY).await;
    }
    last
}

/// Waits until the service's spec asks for `replicas`.
/// Waits for `service` to be at 0 replicas and for the engine's scale-down event; how long
/// after `since` that event came.
async fn scaled_to_zero_since(
    service: &TestService,
    events: &EventCounter,
    since: SystemTime,
) -> Duration {
    wait_replicas(service, 0, SWARM_PATIENCE).await;
    let down = eventually(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async { scaled_down_at(events).ok_or(()) },
    )
    .await
    .expect("a scale-down event");
    down.duration_since(since).unwrap_or_default()
}

async fn wait_replicas(service: &TestService, replicas: u64, timeout: Duration) {
    eventually(timeout, Duration::from_millis(100), || async {
        let now = service.replicas().await;
        if now == replicas {
            Ok(())
        } else {
            Err(now)
        }
    })
    .await
    .unwrap_or_else(|now| panic!("{} at {now} replicas, not {replicas}", service.name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_scales_a_service_at_zero_up_once_and_idleness_back_to_zero() {
    init_tracing();
    let service = TestService::create("swarm-one").await;
    let events = EventCounter::of("service", &service.name);
    let gateway = Gateway::start(&config("a", "", &on_service(&service))).await;

    let asked = Instant::now();
    let (status, body) = get(&gateway).await;
    let woke_in = asked.elapsed();
    assert_eq!(status, 200, "{}", gateway.logs());
    assert_eq!(body, INDEX_BODY, "served by the task");
    let answered = SystemTime::now();

    let asleep_after = scaled_to_zero_since(&service, &events, answered).await;
    let changes = replica_changes(&events);
    eprintln!("swarm one: woke in {woke_in:?}, scaled to 0 {asleep_after:?} after the answer, replica changes {changes:?}");
    assert_eq!(
        changes,
        vec![(0, 1), (1, 0)],
        "one scale-up, one scale-down"
    );
    assert!(
        asleep_after + TICK >= IDLE,
        "scaled down {asleep_after:?} after the last request, before idle_timeout"
    );
    assert!(
        asleep_after <= IDLE + 2 * TICK + SLACK,
        "scaled down {asleep_after:?} after the last request"
    );
    assert_eq!(
        service.label(&format!("{LEASE_PREFIX}a")).await,
        None,
        "the lease is dropped with the scale-down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_traffic_never_scales_down_what_another_serves() {
    init_tracing();
    let service = TestService::create("swarm-two").await;
    let events = EventCounter::of("service", &service.name);
    let backend = on_service(&service);
    let a = Gateway::start(&config("a", "", &backend)).await;
    let b = Gateway::start(&config("b", "", &backend)).await;

    let (status, _) = get(&a).await;
    assert_eq!(status, 200, "{}", a.logs());
    let last = steady_traffic(&a).await;
    assert_eq!(
        replica_changes(&events),
        vec![(0, 1)],
        "B changed the replicas while A served:\n{}",
        b.logs()
    );
    assert!(
        b.logs().contains("still in use"),
        "B never even tried to scale down:\n{}",
        b.logs()
    );

    let after = scaled_to_zero_since(&service, &events, last).await;
    let bound = IDLE + GRACE + 2 * TICK;
    eprintln!(
        "swarm two: {:?} of traffic through A; scaled to 0 {after:?} after it ended (promise {bound:?}); replica changes {:?}",
        TRAFFIC_FOR,
        replica_changes(&events)
    );
    assert_eq!(replica_changes(&events), vec![(0, 1), (1, 0)]);
    assert!(
        after <= bound + SLACK,
        "scaled down {after:?} after the traffic ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_requests_through_two_gateways_scale_up_once() {
    init_tracing();
    let service = TestService::create("swarm-burst").await;
    let events = EventCounter::of("service", &service.name);
    let backend = on_service(&service);
    let a = Gateway::start(&config("a", "", &backend)).await;
    let b = Gateway::start(&config("b", "", &backend)).await;

    let started = Instant::now();
    let through_a = a.burst("app.test", 100).await;
    let through_b = b.burst("app.test", 100).await;
    let mut statuses = through_a.await.unwrap();
    statuses.extend(through_b.await.unwrap());
    let all_in = started.elapsed();
    let answered = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!(
        answered,
        200,
        "statuses {statuses:?}\nA:\n{}\nB:\n{}",
        a.logs(),
        b.logs()
    );
    // Late events (a second scale-up would come right after the first).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let changes = replica_changes(&events);
    eprintln!("swarm burst: 200 requests answered in {all_in:?}; replica changes {changes:?}");
    assert_eq!(changes, vec![(0, 1)], "exactly one effective scale-up");
}

/// A hook that runs `change` on the service the first time only; counts its calls.
fn once(calls: &Arc<AtomicUsize>, service: &str, label: String) -> BeforeWrite {
    let calls = Arc::clone(calls);
    let service = service.to_string();
    Arc::new(move || {
        let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
        let (service, label) = (service.clone(), label.clone());
        Box::pin(async move {
            if first {
                common::engine::docker(&[
                    "service",
                    "update",
                    "--detach",
                    "--label-add",
                    &label,
                    &service,
                ])
                .await;
            }
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_between_read_and_write_is_read_again_and_decided_afresh() {
    init_tracing();
    let service = TestService::create("swarm-race").await;
    let docker = connect(None).await.expect("the engine");
    let link = Arc::new(EngineLink::new("the test engine".into()));
    link.set_up();
    let driver = |hook: Option<BeforeWrite>| {
        let plain = SwarmService::new(docker.clone(), Arc::clone(&link), &service.name, 1, "a");
        match hook {
            Some(hook) => plain.with_before_write(hook),
            None => plain,
        }
    };
    let activity = || Activity {
        last_seen: SystemTime::now(),
        idle_timeout: IDLE,
    };

    // Wake: one scale-up, with A's lease.
    driver(None).start().await.expect("scaled up");
    assert_eq!(service.replicas().await, 1);
    let tasks = service.running_task_ids().await;
    assert_eq!(tasks.len(), 1, "{tasks:?}");

    // A lease renewal is a label on the service: no task is redeployed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = service.label(&format!("{LEASE_PREFIX}a")).await;
    driver(None)
        .activity(activity())
        .await
        .expect("lease renewed");
    let after = service.label(&format!("{LEASE_PREFIX}a")).await;
    assert_ne!(before, after, "the lease moved");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        service.running_task_ids().await,
        tasks,
        "a lease write redeployed the task"
    );

    // Gateway B's lease lands between A's read and A's versioned scale-down: the write fails,
    // the service is read again, and B's lease now holds it.
    let calls = Arc::new(AtomicUsize::new(0));
    let racing = driver(Some(once(
        &calls,
        &service.name,
        format!("{LEASE_PREFIX}b={}", unix_now()),
    )));
    assert_eq!(
        racing.may_sleep(activity()).await.unwrap(),
        SleepVerdict::Now
    );
    match racing.stop(None, Duration::from_secs(2)).await {
        Err(ProviderError::InUse { reason, .. }) => assert!(reason.contains("\"b\""), "{reason}"),
        other => panic!("expected the service held by B, got {other:?}"),
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one write attempted, then refused on the re-read"
    );
    assert_eq!(service.replicas().await, 1, "not scaled down under B");

    // B's lease expires; an unrelated change lands in the window: retried, scaled down, and
    // the change kept (the whole spec is read again, never overwritten with a stale one).
    service
        .set_label(
            &format!("{LEASE_PREFIX}b"),
            &(unix_now() - 3600).to_string(),
        )
        .await;
    let calls = Arc::new(AtomicUsize::new(0));
    let racing = driver(Some(once(&calls, &service.name, "test.touched=yes".into())));
    assert_eq!(
        racing.may_sleep(activity()).await.unwrap(),
        SleepVerdict::Now
    );
    racing
        .stop(None, Duration::from_secs(2))
        .await
        .expect("scaled down after one conflict");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the first write conflicted"
    );
    assert_eq!(service.replicas().await, 0);
    assert_eq!(service.label("test.touched").await.as_deref(), Some("yes"));
    assert_eq!(service.label(&format!("{LEASE_PREFIX}a")).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_plain_docker_a_gateway_never_stops_a_container_another_serves() {
    init_tracing();
    let container = TestContainer::http("veto").await;
    let events = EventCounter::new(&container.name);
    let backend = format!(
        "      docker: {{ container: {} }}\n      port: 80\n",
        container.name
    );
    let veto = "  docker: { traffic_veto: 2048 }\n";
    let a = Gateway::start(&config("a", veto, &backend)).await;
    let b = Gateway::start(&config("b", veto, &backend)).await;

    let (status, _) = get(&a).await;
    assert_eq!(status, 200, "{}", a.logs());
    let last = steady_traffic(&a).await;
    assert_eq!(
        events.count("die"),
        0,
        "the container stopped under A's traffic: {:?}\nB:\n{}",
        events.actions(),
        b.logs()
    );
    assert!(
        b.logs().contains("still in use"),
        "B never even tried to stop it:\n{}",
        b.logs()
    );
    assert!(
        events.wait_for("die", SWARM_PATIENCE).await,
        "never stopped after the traffic ended"
    );
    let died = events
        .events()
        .into_iter()
        .find(|event| event.action == "die")
        .expect("a die event");
    let stopped = UNIX_EPOCH + Duration::from_nanos(u64::try_from(died.time_nano).unwrap_or(0));
    let after = stopped.duration_since(last).unwrap_or_default();
    eprintln!(
        "docker veto: {:?} of traffic through A, no stop; stopped {after:?} after it ended",
        TRAFFIC_FOR,
    );
    // Neither gateway stops it before an idle_timeout after the last request (B holds it that
    // long after it last saw the traffic).
    assert!(
        after + TICK >= IDLE,
        "stopped {after:?} after the last request"
    );
}

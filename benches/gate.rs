//! The request path of a ready route: what the gate adds to every proxied request.
//!
//! Run: `cargo bench --bench gate -- --warm-up-time 1 --measurement-time 3`
//!
//! - `gate/ready_route_10000_routes`: `IdleGate::check` on a real Pingora `Session` (an HTTP/1.1
//!   request read from an in-memory stream), for a ready route among 10,000 loaded routes, plus
//!   the drop of the context (the in-flight guard). Before criterion runs, `main` counts the heap
//!   allocations made by those calls, per request (budget: zero).
//! - `activity/mark`: `Watcher::mark_activity`, the idle clock's whole cost on the request path
//!   (budget: ≤ 10 ns).
//! - `activity/enter_and_leave`: taking and dropping the in-flight guard.
//! - `routes/by_host`: the Host lookup alone (mixed case and a port, as clients send it).
//!
//! Figures go to BENCHMARKS.md, "Request path (gate)".
#![allow(clippy::unwrap_used, unreachable_pub)] // A benchmark or example: a failed unwrap is a failed run.

mod common;

#[global_allocator]
static GLOBAL: common::CountingAllocator = common::CountingAllocator;

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use criterion::Criterion;
use idlewatcher::backend::{BackendSettings, Upstream, UpstreamTarget, Watcher};
use idlewatcher::config::{HealthCheck, StopMethod};
use idlewatcher::idle::IdleClock;
use idlewatcher::providers::{BackendStatus, Provider, ProviderError};
use idlewatcher::routes::{LiveRoutes, Route, RouteTable};
use idlewatcher::{GateContext, IdleGate, UnknownHost};
use pingora::proxy::Session;
use tokio::io::AsyncWriteExt;

const ROUTES: usize = 10_000;
const TARGET: usize = 5_000;

/// A backend that is always running: the bench only needs the target route to become ready.
struct AlwaysUp;

#[async_trait]
impl Provider for AlwaysUp {
    fn describe(&self) -> &str {
        "always-up backend"
    }
    async fn status(&self) -> Result<BackendStatus, ProviderError> {
        Ok(BackendStatus::Running)
    }
    async fn start(&self) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn stop(&self, _: Option<&str>, _: Duration) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn kill(&self, _: Option<&str>) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn pause(&self) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn unpause(&self) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn address(&self) -> Result<IpAddr, ProviderError> {
        Ok(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }
}

struct Setup {
    gate: IdleGate,
    watcher: Arc<Watcher>,
    table: Arc<LiveRoutes>,
    _listener: tokio::net::TcpListener,
}

/// 10,000 routes, each with its own backend; route `TARGET` is woken (its "port" is a real
/// listener, so the readiness probe passes).
async fn setup() -> Setup {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let clock = IdleClock::new(Duration::from_secs(1));
    let provider: Arc<dyn Provider> = Arc::new(AlwaysUp);
    let mut routes = Vec::with_capacity(ROUTES);
    let mut target = None;
    for i in 0..ROUTES {
        let upstream = Arc::new(Upstream::new(
            UpstreamTarget::BackendPort(port),
            HealthCheck::Tcp,
        ));
        let watcher = Watcher::new(
            i as u32,
            provider.clone(),
            BackendSettings {
                idle_ticks: 900,
                wake_timeout: Duration::from_secs(5),
                stop_method: StopMethod::Stop,
                stop_signal: None,
                stop_timeout: Duration::from_secs(10),
                retry_backoff: Duration::from_secs(1),
            },
            Vec::new(),
            vec![upstream.clone()],
            clock.clone(),
        );
        if i == TARGET {
            target = Some(watcher.clone());
        }
        let route = Route::new(format!("route{i}"), watcher, upstream, None, false, 10_000);
        routes.push((Arc::new(route), vec![format!("route{i}.bench")]));
    }
    let watcher = target.unwrap();
    let generation = watcher.wake().unwrap();
    watcher
        .wait_ready(generation, Instant::now() + Duration::from_secs(5))
        .await
        .unwrap();
    // Past the warm-up that follows a wake: the steady state of a ready route is measured.
    clock.set_now(1_000);
    assert!(!watcher.is_warming_up());
    let table = Arc::new(LiveRoutes::new(RouteTable::new(routes)));
    let gate = IdleGate::new(
        table.clone(),
        "/.idlewatcher/",
        clock,
        UnknownHost::NotFound,
    );
    Setup {
        gate,
        watcher,
        table,
        _listener: listener,
    }
}

/// Sessions that have read a typical request for the target route from memory.
async fn sessions(count: usize) -> Vec<Session> {
    let request = format!(
        "GET /api/items?page=2 HTTP/1.1\r\nHost: Route{TARGET}.bench:8080\r\n\
         User-Agent: bench\r\nAccept: application/json\r\n\r\n"
    );
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(request.as_bytes()).await.unwrap();
        std::mem::forget(client); // Keep the stream open for the session's lifetime.
        let mut session = Session::new_h1(Box::new(server));
        assert!(session.read_request().await.unwrap());
        out.push(session);
    }
    out
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let setup = runtime.block_on(setup());

    // Allocations made by the gate on a ready route (budget: zero per request). Counted over
    // batches of 1,000 and 2,000 requests: the difference is what each request costs, free of
    // anything done once per batch.
    let count_allocations = |requests: usize| {
        let mut batch = runtime.block_on(sessions(requests));
        let before = common::allocations();
        runtime.block_on(async {
            for session in &mut batch {
                let mut ctx = GateContext::default();
                assert!(!setup.gate.check(session, &mut ctx).await.unwrap());
                assert!(setup.gate.upstream(&ctx).is_some());
            }
        });
        common::allocations() - before
    };
    count_allocations(10); // Warm-up: per-thread state is set up once.
    let (small, large) = (count_allocations(1000), count_allocations(2000));
    println!(
        "gate on a ready route among {ROUTES} routes: {:.3} heap allocations per request \
         ({small} for 1,000 requests, {large} for 2,000)",
        large.saturating_sub(small) as f64 / 1000.0
    );

    let mut criterion = Criterion::default().configure_from_args();
    // The ready path only reads the session, so one session (warm, as right after Pingora
    // parsed it) can be checked over and over; the context (the in-flight guard) drops each time.
    let mut session = runtime.block_on(sessions(1)).pop().unwrap();
    criterion.bench_function("gate/ready_route_10000_routes", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let mut ctx = GateContext::default();
                black_box(setup.gate.check(&mut session, &mut ctx).await.unwrap());
                black_box(setup.gate.upstream(&ctx));
            })
        })
    });
    criterion.bench_function("gate/tokio_block_on_baseline", |b| {
        b.iter(|| runtime.block_on(async { black_box(()) }))
    });
    criterion.bench_function("activity/mark", |b| {
        b.iter(|| setup.watcher.mark_activity())
    });
    criterion.bench_function("activity/enter_and_leave", |b| {
        b.iter(|| black_box(setup.watcher.enter()))
    });
    criterion.bench_function("routes/by_host", |b| {
        b.iter(|| {
            black_box(
                setup
                    .table
                    .load()
                    .by_host(black_box("Route5000.Bench:8080"))
                    .is_some(),
            )
        })
    });
    criterion.final_summary();
}

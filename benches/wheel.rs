//! Benchmarks of the idle-timer wheel (`idlewatcher::idle::wheel`), and the same workload run with one
//! tokio task + `Sleep` per route and with tokio-util's `DelayQueue`, for comparison.
//!
//! Run (figures go to BENCHMARKS.md, "Idle timers (wheel)"):
//! `cargo bench --bench wheel -- --warm-up-time 1 --measurement-time 3`
//!
//! Before the criterion benches, `main` prints the live heap bytes per route of each approach,
//! measured with the counting global allocator of `benches/common` (live bytes after arming minus
//! before, / N).
#![allow(clippy::unwrap_used, unreachable_pub)] // A benchmark or example: a failed unwrap is a failed run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use idlewatcher::idle::wheel::{Expired, Tick, TimingWheel};
use tokio::task::JoinSet;
use tokio_util::time::DelayQueue;

mod common;

#[global_allocator]
static GLOBAL: common::CountingAllocator = common::CountingAllocator;

use common::live_bytes;

/// Idle timeouts of the workload: every route is due within 5 minutes (tick = 1 s).
const HORIZON: u64 = 300;

/// A tiny deterministic PRNG (xorshift64), so the benches need no `rand` crate.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// `n` deadlines in `1..=HORIZON` ticks (seconds), pseudo-random and reproducible.
fn workload_deadlines(n: usize) -> Vec<u64> {
    let mut rng = XorShift(0x1d1e_5eed);
    (0..n).map(|_| 1 + rng.next() % HORIZON).collect()
}

/// (a) The wheel: arm every route, then advance tick by tick through the 5 minutes.
/// `armed` is called once everything is armed (the memory probe); returns the expirations seen.
fn run_wheel(deadlines: &[u64], armed: &mut dyn FnMut()) -> usize {
    let mut wheel = TimingWheel::new();
    for (key, &deadline) in deadlines.iter().enumerate() {
        wheel.insert(key as u32, 0, deadline);
    }
    armed();
    let mut fired = Vec::new();
    let mut seen = 0;
    for now in 1..=HORIZON {
        fired.clear();
        wheel.advance(now, &mut fired);
        seen += fired.len();
        black_box(&fired);
    }
    seen
}

/// A current-thread runtime with paused time, so tokio's clock jumps straight to the next timer.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime for the comparison")
}

/// (b) The naive way: one task per route sleeping until its deadline, in a `JoinSet`.
fn run_tokio_tasks(deadlines: &[u64], armed: &mut dyn FnMut()) -> usize {
    paused_runtime().block_on(async {
        let start = tokio::time::Instant::now();
        let mut tasks = JoinSet::new();
        for (key, &deadline) in deadlines.iter().enumerate() {
            let at = start + Duration::from_secs(deadline);
            tasks.spawn(async move {
                tokio::time::sleep_until(at).await;
                key as u32
            });
        }
        // Half a tick: the runtime polls every task once (registering its timer) before time
        // can auto-advance, so this is the state "all armed".
        tokio::time::sleep(Duration::from_millis(500)).await;
        armed();
        let mut seen = 0;
        while let Some(key) = tasks.join_next().await {
            black_box(key.ok());
            seen += 1;
        }
        seen
    })
}

/// (c) tokio-util's `DelayQueue`: one queue, one entry per route, drained as they expire.
fn run_delay_queue(deadlines: &[u64], armed: &mut dyn FnMut()) -> usize {
    paused_runtime().block_on(async {
        let start = tokio::time::Instant::now();
        let mut queue = DelayQueue::new();
        for (key, &deadline) in deadlines.iter().enumerate() {
            queue.insert_at(key as u32, start + Duration::from_secs(deadline));
        }
        armed();
        let mut seen = 0;
        while let Some(expired) = std::future::poll_fn(|cx| queue.poll_expired(cx)).await {
            black_box(expired.into_inner());
            seen += 1;
        }
        seen
    })
}

type Workload = fn(&[u64], &mut dyn FnMut()) -> usize;

const CONTENDERS: [(&str, Workload); 3] = [
    ("wheel", run_wheel),
    ("tokio_task_per_route", run_tokio_tasks),
    ("delay_queue", run_delay_queue),
];

const ROUTES: [usize; 2] = [100_000, 1_000_000];

/// Prints live heap bytes per armed route for each contender, and the wheel's leftovers.
fn memory_report() {
    println!("memory per route (live heap after arming minus before, / N):");
    for n in ROUTES {
        let deadlines = workload_deadlines(n);
        for (name, run) in CONTENDERS {
            let before = live_bytes();
            let mut after = before;
            let started = Instant::now();
            let seen = run(&deadlines, &mut || after = live_bytes());
            assert_eq!(seen, n, "{name} lost expirations");
            let per_route = after.saturating_sub(before) as f64 / n as f64;
            println!(
                "  {name:>22} N={n:>9}: {per_route:7.1} B/route, {:7.1} MB total ({:?} per run)",
                after.saturating_sub(before) as f64 / 1e6,
                started.elapsed()
            );
        }
        // What an emptied wheel keeps (recycled slot buffers).
        let before = live_bytes();
        let mut wheel = TimingWheel::new();
        for (key, &deadline) in deadlines.iter().enumerate() {
            wheel.insert(key as u32, 0, deadline);
        }
        let mut fired = Vec::new();
        for now in 1..=HORIZON {
            fired.clear();
            wheel.advance(now, &mut fired);
        }
        drop(fired);
        println!(
            "  {:>22} N={n:>9}: {} bytes still held by the emptied wheel",
            "wheel",
            live_bytes().saturating_sub(before)
        );
    }
}

/// Insert cost per entry: 1,000,000 inserts into a fresh wheel, within 5 minutes or within a day.
fn bench_insert(c: &mut Criterion) {
    const N: usize = 1_000_000;
    let mut group = c.benchmark_group("wheel_insert");
    group.throughput(Throughput::Elements(N as u64));
    for (name, horizon) in [("within_5min", HORIZON), ("within_1day", 86_400)] {
        let mut rng = XorShift(42);
        let deadlines: Vec<Tick> = (0..N).map(|_| 1 + rng.next() % horizon).collect();
        group.bench_function(name, |b| {
            b.iter_batched(
                TimingWheel::new,
                |mut wheel| {
                    for (key, &deadline) in deadlines.iter().enumerate() {
                        wheel.insert(key as u32, 0, deadline);
                    }
                    wheel
                },
                criterion::BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// `advance` by one tick with `k` entries due in that tick (arming is not timed). Entries reach
/// their tick as they would in service: some straight from level 0, most cascaded from level 1.
fn bench_advance_due(c: &mut Criterion) {
    /// Ticks armed and then advanced per timed chunk: bounds memory, amortises `Instant::now`.
    const CHUNK: u64 = 64;
    let mut group = c.benchmark_group("wheel_advance_one_tick");
    for k in [0u32, 1, 100, 10_000] {
        group.bench_with_input(BenchmarkId::new("due", k), &k, |b, &k| {
            b.iter_custom(|iters| {
                let mut wheel = TimingWheel::new();
                let mut fired: Vec<Expired> = Vec::with_capacity(k as usize);
                let mut elapsed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let ticks = left.min(CHUNK);
                    let now = wheel.now();
                    for tick in now + 1..=now + ticks {
                        for key in 0..k {
                            wheel.insert(key, 0, tick);
                        }
                    }
                    let started = Instant::now();
                    for tick in now + 1..=now + ticks {
                        fired.clear();
                        wheel.advance(tick, &mut fired);
                    }
                    elapsed += started.elapsed();
                    debug_assert_eq!(fired.len(), k as usize);
                    left -= ticks;
                }
                elapsed
            })
        });
    }
    group.finish();
}

/// `advance` with 1,000,000 entries armed but none due: by one tick and by one hour.
fn bench_advance_idle(c: &mut Criterion) {
    const N: u32 = 1_000_000;
    /// Armed entries sit about 2^35 ticks ahead (top level), far beyond any run's advances.
    const FAR: Tick = 1 << 35;
    let armed = || {
        let mut wheel = TimingWheel::new();
        let mut rng = XorShift(7);
        for key in 0..N {
            wheel.insert(key, 0, FAR + rng.next() % HORIZON);
        }
        wheel
    };
    let mut group = c.benchmark_group("wheel_advance_none_due");
    for (name, step) in [("1M_armed_by_1_tick", 1), ("1M_armed_by_1_hour", 3600)] {
        let mut wheel = armed();
        let mut fired = Vec::new();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    // Steps left before the armed deadlines; when none, re-arm (untimed).
                    let room = (FAR - 1 - wheel.now()) / step;
                    if room == 0 {
                        wheel = armed();
                        continue;
                    }
                    let chunk = left.min(room);
                    let started = Instant::now();
                    for _ in 0..chunk {
                        wheel.advance(wheel.now() + step, &mut fired);
                    }
                    elapsed += started.elapsed();
                    left -= chunk;
                }
                assert!(fired.is_empty() && wheel.len() == N as usize);
                elapsed
            })
        });
    }
    let mut empty = TimingWheel::new();
    let mut fired = Vec::new();
    group.bench_function("empty_by_1_tick", |b| {
        b.iter(|| empty.advance(empty.now() + 1, &mut fired))
    });
    group.finish();
}

/// The whole workload (arm N routes within 5 minutes, run through all 300 ticks) three ways.
fn bench_workload(c: &mut Criterion) {
    let mut group = c.benchmark_group("idle_timers_5min");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    for n in ROUTES {
        let deadlines = workload_deadlines(n);
        group.throughput(Throughput::Elements(n as u64));
        for (name, run) in CONTENDERS {
            group.bench_with_input(BenchmarkId::new(name, n), &deadlines, |b, deadlines| {
                b.iter(|| run(deadlines, &mut || ()))
            });
        }
    }
    group.finish();
}

fn main() {
    let listing = std::env::args().any(|arg| arg == "--list");
    if !listing {
        memory_report();
    }
    let mut criterion = Criterion::default().configure_from_args();
    bench_insert(&mut criterion);
    bench_advance_due(&mut criterion);
    bench_advance_idle(&mut criterion);
    bench_workload(&mut criterion);
    criterion.final_summary();
}

//! The load client of `make bench` (driven by `scripts/bench.py`; usable by hand). Each
//! subcommand prints one JSON object on stdout; progress goes to stderr.
//!
//! ```text
//! loadgen create --image IMG (--name NAME | --prefix P --count N [--max-seconds S])
//!                [--concurrency 16] [--label K=V]… [--env K=V]…
//! loadgen remove --label K=V [--concurrency 16]
//! loadgen herd   --gateway ADDR --host H --count N --container C [--pid GATEWAY_PID] [--any-state true]
//! loadgen sse    --gateway ADDR --host H --count N --container C [--pid GATEWAY_PID]
//! loadgen cold   --gateway ADDR --host H --container C --method stop|pause [--wakes 20] [--port 80]
//! loadgen echo   --listen ADDR
//! loadgen splice --target ADDR --mode throughput|connect [--seconds 2] [--connections 8]
//! ```
//!
//! HTTP is spoken by hand over tokio sockets (HTTP/1.1, one request per connection,
//! `Connection: close`): nothing between the clock and the socket but a `write` and a `read`.
//! The Docker engine is reached with bollard (`DOCKER_HOST`, else the local socket).
//!
//! - `herd`: opens N connections to the gateway, then writes one `GET /` on each (the route's
//!   container is asleep); counts the answers by status, the engine's `start` events for the
//!   container in that window, and the gateway's extra memory (`VmHWM` after, with the peak reset
//!   by `/proc/PID/clear_refs` first, minus `VmRSS` before).
//! - `sse`: N subscribers on `{prefix}events`; once all have their stream, one held `GET /` wakes
//!   the route; times `ready` reaching every subscriber; RSS per subscriber.
//! - `cold`: for W wakes, alternately (1) the backend started (or unpaused) through the engine API
//!   and a tight connect loop on its address: T, with no gateway; (2) a first request through
//!   the gateway while a watcher measures, beside it, when the backend first accepts (`stop`:
//!   connect loop from the engine's `start` event on) or first answers (`pause`: a request sent to
//!   the frozen backend before the wake); the backend is put back to sleep by hand after each,
//!   and the gateway's status must say `napping` before the next request.
//! - `echo`: a TCP echo server (the stream benchmark's backend), until killed.
//! - `splice`: against a TCP echo server (directly, or through a splice): `throughput` keeps C
//!   connections writing 64 KiB blocks and reading them back, and counts echoed bytes per
//!   second; `connect` runs C loops of connect, 16 bytes there and back, close, and counts
//!   connections per second.
#![allow(clippy::unwrap_used, unreachable_pub)] // A benchmark or example: a failed unwrap is a failed run.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, ListContainersOptions, RemoveContainerOptions,
    StartContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use futures_util::{stream, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

type Error = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------------

struct Args {
    values: HashMap<String, Vec<String>>,
}

impl Args {
    fn parse(raw: &[String]) -> Self {
        let mut values: HashMap<String, Vec<String>> = HashMap::new();
        let mut iter = raw.iter();
        while let Some(key) = iter.next() {
            let Some(name) = key.strip_prefix("--") else {
                fail(&format!("unexpected argument {key:?}"));
            };
            let value = iter
                .next()
                .unwrap_or_else(|| fail(&format!("--{name} needs a value")));
            values
                .entry(name.to_string())
                .or_default()
                .push(value.clone());
        }
        Self { values }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    fn required(&self, name: &str) -> &str {
        self.get(name)
            .unwrap_or_else(|| fail(&format!("--{name} is required")))
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.values.get(name).cloned().unwrap_or_default()
    }

    fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.get(name) {
            Some(value) => value
                .parse()
                .unwrap_or_else(|_| fail(&format!("--{name}: {value:?} is not a number"))),
            None => default,
        }
    }

    fn address(&self, name: &str) -> SocketAddr {
        let value = self.required(name);
        value
            .parse()
            .unwrap_or_else(|_| fail(&format!("--{name}: {value:?} is not an ip:port")))
    }
}

fn fail(message: &str) -> ! {
    eprintln!("loadgen: {message}");
    std::process::exit(2)
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = raw.first().cloned() else {
        fail("usage: loadgen create|remove|herd|sse|cold --key value… (see the source's docs)");
    };
    let args = Args::parse(&raw[1..]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = runtime.block_on(async {
        match command.as_str() {
            "create" => create(&args).await,
            "remove" => remove(&args).await,
            "herd" => herd(&args).await,
            "sse" => sse(&args).await,
            "cold" => cold(&args).await,
            "echo" => echo(&args).await,
            "splice" => splice(&args).await,
            other => fail(&format!("unknown subcommand {other:?}")),
        }
    });
    match result {
        Ok(value) => println!("{value}"),
        Err(error) => {
            eprintln!("loadgen {command}: {error}");
            std::process::exit(1)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers: clocks, /proc, statistics, raw HTTP
// ---------------------------------------------------------------------------------------------

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the peak RSS (`VmHWM`) of a process to its current RSS (Linux ≥ 4.0).
fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Median, p90, p99, min, max of a sample (milliseconds in, milliseconds out).
fn summary(values: &[f64]) -> Value {
    if values.is_empty() {
        return json!(null);
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        let rank = (q * (sorted.len() - 1) as f64).round() as usize;
        sorted[rank.min(sorted.len() - 1)]
    };
    json!({
        "n": sorted.len(),
        "min": sorted[0],
        "median": at(0.5),
        "p90": at(0.9),
        "p99": at(0.99),
        "max": sorted[sorted.len() - 1],
        "mean": sorted.iter().sum::<f64>() / sorted.len() as f64,
    })
}

fn request_text(host: &str, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: idlewatcher-loadgen\r\n\
         Accept: */*\r\n{extra}Connection: close\r\n\r\n"
    )
}

/// The status code of a raw HTTP/1.x response, if its first line is complete.
fn status_of(response: &[u8]) -> Option<u16> {
    let line_end = response.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&response[..line_end]).ok()?;
    line.split(' ').nth(1)?.parse().ok()
}

/// Writes `request` on `stream` and reads the answer to the end (the server closes).
async fn exchange(stream: &mut TcpStream, request: &[u8]) -> Result<Vec<u8>, Error> {
    stream.write_all(request).await?;
    let mut response = Vec::with_capacity(1024);
    stream.read_to_end(&mut response).await?;
    Ok(response)
}

/// One `GET` on a fresh connection: status and body.
async fn get(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, Vec<u8>), Error> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let response = exchange(&mut stream, request_text(host, path, "").as_bytes()).await?;
    let status = status_of(&response).ok_or("no HTTP status line in the answer")?;
    let body_at = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(response.len());
    Ok((status, response[body_at..].to_vec()))
}

/// The route's `state` from its status endpoint.
async fn gateway_state(gateway: SocketAddr, host: &str) -> Result<String, Error> {
    let (status, body) = get(gateway, host, "/.idlewatcher/status").await?;
    if status != 200 {
        return Err(format!("status endpoint answered {status}").into());
    }
    let body = decode_chunked_if_needed(&body);
    let value: Value = serde_json::from_slice(&body)?;
    Ok(value["state"].as_str().unwrap_or("").to_string())
}

/// The status endpoint's body may come chunked; JSON starts at the first `{`.
fn decode_chunked_if_needed(body: &[u8]) -> Vec<u8> {
    let start = body.iter().position(|&b| b == b'{').unwrap_or(0);
    let end = body
        .iter()
        .rposition(|&b| b == b'}')
        .map(|p| p + 1)
        .unwrap_or(body.len());
    body[start..end.max(start)].to_vec()
}

/// Polls the status endpoint until the route is in `state`.
async fn wait_state(
    gateway: SocketAddr,
    host: &str,
    state: &str,
    timeout: Duration,
) -> Result<Duration, Error> {
    let started = Instant::now();
    loop {
        let now = gateway_state(gateway, host).await?;
        if now == state {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            return Err(
                format!("route {host} still {now:?}, not {state:?}, after {timeout:?}").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Docker
// ---------------------------------------------------------------------------------------------

async fn docker() -> Result<Docker, Error> {
    let docker = Docker::connect_with_defaults()?;
    Ok(docker.negotiate_version().await?)
}

fn since(at: f64) -> String {
    format!("{at:.9}")
}

/// The engine's events `actions` for `container` between two instants (a finished query).
async fn engine_events(
    docker: &Docker,
    container: &str,
    actions: &[&str],
    from: f64,
    to: f64,
) -> Result<Vec<(String, f64)>, Error> {
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        ("container".to_string(), vec![container.to_string()]),
        (
            "event".to_string(),
            actions.iter().map(|a| a.to_string()).collect(),
        ),
    ]);
    let options = EventsOptions {
        since: Some(since(from)),
        until: Some(since(to)),
        filters: Some(filters),
    };
    let mut events = docker.events(Some(options));
    let mut out = Vec::new();
    while let Some(event) = events.next().await {
        let event = event?;
        let at = event
            .time_nano
            .map(|n| n as f64 / 1e9)
            .or(event.time.map(|s| s as f64))
            .unwrap_or(0.0);
        out.push((event.action.unwrap_or_default(), at));
    }
    Ok(out)
}

async fn container_ip(docker: &Docker, container: &str) -> Result<IpAddr, Error> {
    let info = docker.inspect_container(container, None).await?;
    let networks = info
        .network_settings
        .and_then(|n| n.networks)
        .ok_or("the container has no network")?;
    let mut names: Vec<_> = networks.keys().cloned().collect();
    names.sort();
    for name in names {
        if let Some(ip) = networks[&name]
            .ip_address
            .as_deref()
            .filter(|ip| !ip.is_empty())
        {
            return Ok(ip.parse()?);
        }
    }
    Err("the container has no IP address (is it running?)".into())
}

async fn create(args: &Args) -> Result<Value, Error> {
    let docker = docker().await?;
    let image = args.required("image").to_string();
    // `--name N`: one container of that name; `--prefix P --count N`: P-0 … P-(N-1).
    let single = args.get("name").map(str::to_string);
    let prefix = match &single {
        Some(name) => name.clone(),
        None => args.required("prefix").to_string(),
    };
    let count: usize = if single.is_some() {
        1
    } else {
        args.number("count", 1)
    };
    let concurrency: usize = args.number("concurrency", 16);
    let mut labels = HashMap::new();
    for label in args.all("label") {
        let (key, value) = label.split_once('=').unwrap_or((label.as_str(), ""));
        labels.insert(key.to_string(), value.to_string());
    }
    let env = args.all("env");
    // Past this many seconds no new creation is started (the ones under way finish).
    let budget = Duration::from_secs_f64(args.number("max-seconds", f64::INFINITY).min(1e9));
    let started = Instant::now();
    let done = AtomicUsize::new(0);
    let results: Vec<Result<(), String>> = stream::iter(0..count)
        .take_while(|_| std::future::ready(started.elapsed() < budget))
        .map(|i| {
            let docker = docker.clone();
            let body = ContainerCreateBody {
                image: Some(image.clone()),
                labels: Some(labels.clone()),
                env: (!env.is_empty()).then(|| env.clone()),
                ..Default::default()
            };
            let name = if single.is_some() {
                prefix.clone()
            } else {
                format!("{prefix}-{i}")
            };
            let done = &done;
            async move {
                let options = CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                };
                let result = docker
                    .create_container(Some(options), body)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("{name}: {e}"));
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n % 1000 == 0 {
                    eprintln!(
                        "loadgen create: {n}/{count} in {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                }
                result
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let attempted = results.len();
    let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    let elapsed = started.elapsed();
    if !errors.is_empty() {
        return Err(format!(
            "{} of {count} creations failed, first: {}",
            errors.len(),
            errors[0]
        )
        .into());
    }
    Ok(json!({
        "requested": count,
        "created": attempted,
        "seconds": elapsed.as_secs_f64(),
        "per_second": attempted as f64 / elapsed.as_secs_f64(),
        "concurrency": concurrency,
    }))
}

async fn remove(args: &Args) -> Result<Value, Error> {
    let docker = docker().await?;
    let concurrency: usize = args.number("concurrency", 16);
    let labels = args.all("label");
    if labels.is_empty() {
        fail("remove needs at least one --label K=V (it removes every container bearing it)");
    }
    let started = Instant::now();
    let filters = HashMap::from([("label".to_string(), labels)]);
    let options = ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..Default::default()
    };
    let ids: Vec<String> = docker
        .list_containers(Some(options))
        .await?
        .into_iter()
        .filter_map(|c| c.id)
        .collect();
    let count = ids.len();
    let failures = AtomicUsize::new(0);
    stream::iter(ids)
        .for_each_concurrent(concurrency, |id| {
            let docker = docker.clone();
            let failures = &failures;
            async move {
                let options = RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                };
                if let Err(e) = docker.remove_container(&id, Some(options)).await {
                    if !e.to_string().contains("No such container") {
                        eprintln!("loadgen remove: {id}: {e}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
        .await;
    let elapsed = started.elapsed();
    Ok(json!({
        "removed": count - failures.load(Ordering::Relaxed),
        "failed": failures.load(Ordering::Relaxed),
        "seconds": elapsed.as_secs_f64(),
        "per_second": count as f64 / elapsed.as_secs_f64().max(1e-9),
    }))
}

// ---------------------------------------------------------------------------------------------
// Thundering herd
// ---------------------------------------------------------------------------------------------

/// Opens `count` connections to `addr`, at most `concurrency` handshakes at a time.
async fn connect_all(
    addr: SocketAddr,
    count: usize,
    concurrency: usize,
) -> Result<Vec<TcpStream>, Error> {
    let results: Vec<std::io::Result<TcpStream>> = stream::iter(0..count)
        .map(|_| async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(stream)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut streams = Vec::with_capacity(count);
    for result in results {
        streams.push(result?);
    }
    Ok(streams)
}

async fn herd(args: &Args) -> Result<Value, Error> {
    let gateway = args.address("gateway");
    let host = args.required("host").to_string();
    let path = args.get("path").unwrap_or("/").to_string();
    let count: usize = args.number("count", 10_000);
    let container = args.required("container").to_string();
    let pid: Option<u32> = args.get("pid").and_then(|p| p.parse().ok());
    let connect_concurrency: usize = args.number("connect-concurrency", 256);
    let docker = docker().await?;

    let state = gateway_state(gateway, &host).await?;
    if state != "napping" && args.get("any-state") != Some("true") {
        return Err(format!("route {host} is {state:?}, not napping").into());
    }
    let (rss_before, _) = pid.map(memory_kib).unwrap_or_default();
    let peak_reset = pid.map(reset_peak).unwrap_or(false);
    let window_start = unix_now();

    let connect_started = Instant::now();
    let streams = connect_all(gateway, count, connect_concurrency).await?;
    let connect_time = connect_started.elapsed();
    let (rss_connected, _) = pid.map(memory_kib).unwrap_or_default();

    let request = Arc::new(request_text(&host, &path, "").into_bytes());
    let origin = Instant::now();
    // The gateway's RSS every 10 ms while the herd runs.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = pid.map(|pid| {
        let sampling = Arc::clone(&sampling);
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while sampling.load(Ordering::Relaxed) {
                samples.push((origin.elapsed(), memory_kib(pid).0));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            samples
        })
    });
    let mut tasks = Vec::with_capacity(count);
    for mut stream in streams {
        let request = Arc::clone(&request);
        tasks.push(tokio::spawn(async move {
            let sent = origin.elapsed();
            let outcome = exchange(&mut stream, &request).await;
            let done = origin.elapsed();
            (sent, done, outcome.map(|r| status_of(&r).unwrap_or(0)))
        }));
    }
    let mut statuses: HashMap<String, usize> = HashMap::new();
    let mut errors: HashMap<String, usize> = HashMap::new();
    let mut last_sent = Duration::ZERO;
    let mut latencies = Vec::with_capacity(count);
    let mut first_done = Duration::MAX;
    let mut last_done = Duration::ZERO;
    for task in tasks {
        let (sent, done, outcome) = task.await?;
        last_sent = last_sent.max(sent);
        match outcome {
            Ok(status) => {
                *statuses.entry(status.to_string()).or_default() += 1;
                first_done = first_done.min(done);
                last_done = last_done.max(done);
                latencies.push(ms(done - sent));
            }
            Err(error) => *errors.entry(error.to_string()).or_default() += 1,
        }
    }
    let (rss_after, hwm_after) = pid.map(memory_kib).unwrap_or_default();
    sampling.store(false, Ordering::Relaxed);
    let samples = match sampler {
        Some(sampler) => sampler.await?,
        None => Vec::new(),
    };
    // Everything held, nothing released yet: the largest sample before the first answer.
    let rss_held = samples
        .iter()
        .filter(|(at, _)| *at < first_done)
        .map(|(_, rss)| *rss)
        .max()
        .unwrap_or(0);
    // Give the engine's event stream a moment, then count the starts in the window.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = engine_events(
        &docker,
        &container,
        &["start", "unpause"],
        window_start,
        unix_now(),
    )
    .await?;
    let starts = events.iter().filter(|(a, _)| a == "start").count();
    let unpauses = events.iter().filter(|(a, _)| a == "unpause").count();
    let answered: usize = statuses.values().sum();
    Ok(json!({
        "requests": count,
        "answered": answered,
        "statuses": statuses,
        "errors": errors,
        "engine_starts": starts,
        "engine_unpauses": unpauses,
        "connect_ms": ms(connect_time),
        "last_request_sent_ms": ms(last_sent),
        "first_response_ms": if first_done == Duration::MAX { json!(null) } else { json!(ms(first_done)) },
        "last_response_ms": ms(last_done),
        "all_held": last_sent < first_done,
        "latency_ms": summary(&latencies),
        "rss_before_kib": rss_before,
        "rss_connected_kib": rss_connected,
        "rss_held_kib": rss_held,
        "rss_after_kib": rss_after,
        "hwm_after_kib": hwm_after,
        "peak_reset": peak_reset,
        "extra_kib": hwm_after.saturating_sub(rss_before),
    }))
}

// ---------------------------------------------------------------------------------------------
// SSE fan-out
// ---------------------------------------------------------------------------------------------

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let from = from.min(haystack.len());
    haystack[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

async fn sse(args: &Args) -> Result<Value, Error> {
    let gateway = args.address("gateway");
    let host = args.required("host").to_string();
    let count: usize = args.number("count", 10_000);
    let container = args.required("container").to_string();
    let pid: Option<u32> = args.get("pid").and_then(|p| p.parse().ok());
    let connect_concurrency: usize = args.number("connect-concurrency", 256);
    let timeout = Duration::from_secs(args.number("timeout", 60));
    let docker = docker().await?;

    let state = gateway_state(gateway, &host).await?;
    if state != "napping" {
        return Err(format!("route {host} is {state:?}, not napping").into());
    }
    let (rss_before, _) = pid.map(memory_kib).unwrap_or_default();
    let window_start = unix_now();

    let subscribed = Arc::new(tokio::sync::Semaphore::new(0));
    let request = Arc::new(
        request_text(
            &host,
            "/.idlewatcher/events",
            "Accept: text/event-stream\r\nCache-Control: no-store\r\n",
        )
        .replace("Connection: close\r\n", "")
        .into_bytes(),
    );
    let origin = Instant::now();
    let limiter = Arc::new(Semaphore::new(connect_concurrency));
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let subscribed = Arc::clone(&subscribed);
        let request = Arc::clone(&request);
        let limiter = Arc::clone(&limiter);
        tasks.push(tokio::spawn(async move {
            let result: Result<(Duration, f64), String> = async {
                let permit = limiter.acquire().await.map_err(|e| e.to_string())?;
                let mut stream = TcpStream::connect(gateway)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                stream.set_nodelay(true).map_err(|e| e.to_string())?;
                stream
                    .write_all(&request)
                    .await
                    .map_err(|e| format!("write: {e}"))?;
                let mut buffer = Vec::with_capacity(2048);
                let mut chunk = [0u8; 2048];
                let mut told = false;
                let mut scanned = 0;
                let mut permit = Some(permit);
                loop {
                    let n = stream
                        .read(&mut chunk)
                        .await
                        .map_err(|e| format!("read: {e}"))?;
                    if n == 0 {
                        return Err("the stream ended before `ready`".into());
                    }
                    let at = origin.elapsed();
                    let wall = unix_now();
                    buffer.extend_from_slice(&chunk[..n]);
                    if !told && find(&buffer, b"retry:", 0).is_some() {
                        told = true;
                        drop(permit.take());
                        subscribed.add_permits(1);
                    }
                    if let Some(found) = find(&buffer, b"\"type\":\"ready\"", scanned) {
                        let _ = found;
                        return Ok((at, wall));
                    }
                    scanned = buffer.len().saturating_sub(16);
                }
            }
            .await;
            result
        }));
    }
    // Every subscriber has its stream (headers and `retry:` read).
    let all = tokio::time::timeout(timeout, subscribed.acquire_many(count as u32)).await;
    if all.is_err() {
        return Err(format!(
            "only {} of {count} subscribers got their stream within {timeout:?}",
            subscribed.available_permits()
        )
        .into());
    }
    let subscribe_time = origin.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_subscribed, _) = pid.map(memory_kib).unwrap_or_default();

    // Wake the route with one held request.
    let trigger_at = origin.elapsed();
    let trigger_wall = unix_now();
    let wake = tokio::spawn(async move {
        let result = get(gateway, &host, "/").await;
        (origin.elapsed(), result.map(|(status, _)| status))
    });
    let mut received = Vec::with_capacity(count);
    let mut errors: HashMap<String, usize> = HashMap::new();
    for task in tasks {
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(Ok((at, wall)))) => received.push((at, wall)),
            Ok(Ok(Err(error))) => *errors.entry(error).or_default() += 1,
            Ok(Err(error)) => *errors.entry(error.to_string()).or_default() += 1,
            Err(_) => {
                *errors
                    .entry("no `ready` within the timeout".into())
                    .or_default() += 1
            }
        }
    }
    let (held_done, held_status) = wake.await?;
    let events = engine_events(&docker, &container, &["start"], window_start, unix_now()).await?;
    let first = received.iter().map(|r| r.0).min();
    let last = received.iter().map(|r| r.0).max();
    let since_trigger: Vec<f64> = received.iter().map(|r| ms(r.0 - trigger_at)).collect();
    Ok(json!({
        "subscribers": count,
        "got_ready": received.len(),
        "errors": errors,
        "engine_starts": events.len(),
        "subscribe_ms": ms(subscribe_time),
        "trigger_unix": trigger_wall,
        "held_request_status": held_status.map_err(|e| e.to_string()).ok(),
        "held_request_ms": ms(held_done - trigger_at),
        "first_ready_ms": first.map(|f| ms(f - trigger_at)),
        "last_ready_ms": last.map(|l| ms(l - trigger_at)),
        "fanout_spread_ms": first.zip(last).map(|(f, l)| ms(l - f)),
        "ready_after_trigger_ms": summary(&since_trigger),
        "rss_before_kib": rss_before,
        "rss_subscribed_kib": rss_subscribed,
        "rss_per_subscriber_bytes": (rss_subscribed.saturating_sub(rss_before) as f64 * 1024.0) / count as f64,
    }))
}

// ---------------------------------------------------------------------------------------------
// Cold-start tax
// ---------------------------------------------------------------------------------------------

/// Connects to `addr` until it accepts (a refused or unreachable attempt is retried at once,
/// with a 100 µs pause).
async fn connect_loop(addr: SocketAddr, deadline: Instant) -> Result<TcpStream, Error> {
    loop {
        let attempt = tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr));
        if let Ok(Ok(stream)) = attempt.await {
            return Ok(stream);
        }
        if Instant::now() > deadline {
            return Err(format!("{addr} never accepted").into());
        }
        tokio::time::sleep(Duration::from_micros(100)).await;
    }
}

async fn sleep_backend(docker: &Docker, container: &str, method: &str) -> Result<(), Error> {
    match method {
        "pause" => docker.pause_container(container).await?,
        _ => {
            let options = StopContainerOptions {
                t: Some(2),
                ..Default::default()
            };
            docker.stop_container(container, Some(options)).await?
        }
    }
    Ok(())
}

async fn wake_backend(docker: &Docker, container: &str, method: &str) -> Result<(), Error> {
    match method {
        "pause" => docker.unpause_container(container).await?,
        _ => {
            docker
                .start_container(container, None::<StartContainerOptions>)
                .await?
        }
    }
    Ok(())
}

async fn cold(args: &Args) -> Result<Value, Error> {
    let gateway = args.address("gateway");
    let host = args.required("host").to_string();
    let container = args.required("container").to_string();
    let method = args.get("method").unwrap_or("stop").to_string();
    let wakes: usize = args.number("wakes", 20);
    let port: u16 = args.number("port", 80);
    let docker = docker().await?;
    let limit = Duration::from_secs(30);
    let probe_request = request_text("backend", "/", "");

    // Asleep to begin with: stopped (stop) or running then paused (pause).
    wait_state(gateway, &host, "napping", limit).await?;

    let mut direct_connect = Vec::new();
    let mut direct_http = Vec::new();
    let mut direct_api = Vec::new();
    let mut through_gateway = Vec::new();
    let mut tax_connect = Vec::new();
    let mut tax_http = Vec::new();
    let mut ready_to_served = Vec::new();
    let mut starts_per_wake = Vec::new();
    for wake in 0..wakes {
        // (1) Directly: engine call, then a tight connect loop on the backend's address.
        let started = Instant::now();
        wake_backend(&docker, &container, &method).await?;
        let api = started.elapsed();
        let ip = container_ip(&docker, &container).await?;
        let address = SocketAddr::new(ip, port);
        let mut stream = connect_loop(address, started + limit).await?;
        let t_connect = started.elapsed();
        let response = exchange(&mut stream, probe_request.as_bytes()).await?;
        let t_http = started.elapsed();
        if status_of(&response).is_none() {
            return Err("the backend answered no HTTP".into());
        }
        direct_api.push(ms(api));
        direct_connect.push(ms(t_connect));
        direct_http.push(ms(t_http));
        // The gateway adopts the backend started by hand; let it, then put it back to sleep.
        wait_state(gateway, &host, "ready", limit).await?;
        sleep_backend(&docker, &container, &method).await?;
        wait_state(gateway, &host, "napping", limit).await?;

        // (2) Through the gateway, with a watcher beside it.
        let window_start = unix_now();
        let watcher = {
            let docker = docker.clone();
            let container = container.clone();
            let method = method.clone();
            let probe_request = probe_request.clone();
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                if method == "pause" {
                    // The frozen backend's kernel accepts; the request is answered on thaw.
                    let ip = container_ip(&docker, &container).await?;
                    let mut stream = TcpStream::connect(SocketAddr::new(ip, port)).await?;
                    stream.write_all(probe_request.as_bytes()).await?;
                    let mut first = [0u8; 1];
                    stream.read_exact(&mut first).await?;
                    return Ok::<Instant, Error>(Instant::now());
                }
                // From the engine's `start` event on (the address exists from then), connect
                // until it accepts.
                let filters = HashMap::from([
                    ("type".to_string(), vec!["container".to_string()]),
                    ("container".to_string(), vec![container.clone()]),
                    ("event".to_string(), vec!["start".to_string()]),
                ]);
                let options = EventsOptions {
                    since: Some(since(window_start)),
                    until: None,
                    filters: Some(filters),
                };
                let mut events = docker.events(Some(options));
                match tokio::time::timeout(Duration::from_secs(30), events.next()).await {
                    Ok(Some(Ok(_))) => {}
                    _ => return Err("no start event".into()),
                }
                let ip = container_ip(&docker, &container).await?;
                connect_loop(SocketAddr::new(ip, port), deadline).await?;
                Ok(Instant::now())
            })
        };
        // Let the watcher subscribe (or, for pause, get its request into the frozen backend).
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sent = Instant::now();
        let (status, _) = get(gateway, &host, "/").await?;
        let answered = Instant::now();
        if status != 200 {
            return Err(format!("wake {wake}: the gateway answered {status}").into());
        }
        let seen = watcher.await??;
        let gateway_ms = ms(answered - sent);
        through_gateway.push(gateway_ms);
        tax_connect.push(gateway_ms - ms(t_connect));
        tax_http.push(gateway_ms - ms(t_http));
        ready_to_served.push(ms(answered.saturating_duration_since(seen)));
        wait_state(gateway, &host, "ready", limit).await?;
        sleep_backend(&docker, &container, &method).await?;
        wait_state(gateway, &host, "napping", limit).await?;
        let action = if method == "pause" {
            "unpause"
        } else {
            "start"
        };
        let starts = engine_events(&docker, &container, &[action], window_start, unix_now())
            .await?
            .len();
        starts_per_wake.push(starts);
        eprintln!(
            "loadgen cold {method}: wake {}/{wakes}: direct {:.1} ms (connect) / {:.1} ms (http), \
             gateway {gateway_ms:.1} ms, ready-to-served {:.1} ms",
            wake + 1,
            ms(t_connect),
            ms(t_http),
            ready_to_served.last().unwrap()
        );
    }
    let median = |v: &[f64]| summary(v)["median"].as_f64().unwrap_or(f64::NAN);
    Ok(json!({
        "method": method,
        "wakes": wakes,
        "direct_api_ms": summary(&direct_api),
        "direct_connect_ms": summary(&direct_connect),
        "direct_http_ms": summary(&direct_http),
        "gateway_ms": summary(&through_gateway),
        "tax_vs_connect_ms": summary(&tax_connect),
        "tax_vs_http_ms": summary(&tax_http),
        "median_gateway_minus_median_connect_ms": median(&through_gateway) - median(&direct_connect),
        "ready_to_served_ms": summary(&ready_to_served),
        "engine_calls_per_wake": starts_per_wake,
    }))
}

// ---------------------------------------------------------------------------------------------
// Streams: an echo backend and a splice load
// ---------------------------------------------------------------------------------------------

async fn echo(args: &Args) -> Result<Value, Error> {
    let listener = tokio::net::TcpListener::bind(args.address("listen")).await?;
    eprintln!("loadgen echo: listening on {}", listener.local_addr()?);
    loop {
        let (mut connection, _) = listener.accept().await?;
        let _ = connection.set_nodelay(true);
        tokio::spawn(async move {
            let (mut read, mut write) = connection.split();
            let _ = tokio::io::copy(&mut read, &mut write).await;
            let _ = write.shutdown().await;
        });
    }
}

async fn splice(args: &Args) -> Result<Value, Error> {
    let target = args.address("target");
    let seconds: f64 = args.number("seconds", 2.0);
    let connections: usize = args.number("connections", 8);
    let mode = args.required("mode").to_string();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut workers = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mode = mode.clone();
        workers.push(tokio::spawn(async move {
            match mode.as_str() {
                "throughput" => echo_throughput(target, deadline).await,
                _ => connect_rate(target, deadline).await,
            }
        }));
    }
    let mut total = 0u64;
    for worker in workers {
        total += worker.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(match mode.as_str() {
        "throughput" => json!({ "mode": mode, "bytes": total, "seconds": elapsed,
                                "mib_per_s": total as f64 / elapsed / 1048576.0 }),
        _ => json!({ "mode": mode, "connections": total, "seconds": elapsed,
                     "per_s": total as f64 / elapsed }),
    })
}

/// Writes 64 KiB blocks and reads them back until `deadline`; returns the bytes echoed.
async fn echo_throughput(target: SocketAddr, deadline: Instant) -> Result<u64, Error> {
    let socket = TcpStream::connect(target).await?;
    socket.set_nodelay(true)?;
    let (mut read, mut write) = socket.into_split();
    let block = vec![7u8; 64 * 1024];
    let writer = tokio::spawn(async move {
        while Instant::now() < deadline {
            write.write_all(&block).await?;
        }
        write.shutdown().await?;
        Ok::<(), std::io::Error>(())
    });
    let mut buffer = vec![0u8; 64 * 1024];
    let mut echoed = 0u64;
    loop {
        let n = read.read(&mut buffer).await?;
        if n == 0 {
            break;
        }
        if Instant::now() < deadline {
            echoed += n as u64;
        }
    }
    writer.await??;
    Ok(echoed)
}

/// Connect, 16 bytes there and back, close, until `deadline`; returns how many.
async fn connect_rate(target: SocketAddr, deadline: Instant) -> Result<u64, Error> {
    let mut done = 0u64;
    let mut back = [0u8; 16];
    while Instant::now() < deadline {
        let mut socket = TcpStream::connect(target).await?;
        socket.set_nodelay(true)?;
        socket.write_all(b"0123456789abcdef").await?;
        socket.read_exact(&mut back).await?;
        done += 1;
    }
    Ok(done)
}

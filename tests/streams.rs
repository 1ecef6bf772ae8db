//! Issue 11 acceptance: TCP and UDP stream routes, on the real Docker engine through the real
//! gateway binary, with a static echo server (see `common::echo`) as the backend.
#![allow(clippy::unwrap_used, unreachable_pub)] // A test: a failed unwrap is a failed test; helpers are shared.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::container::TestContainer;
use common::echo::echo_container;
use common::engine::EventCounter;
use common::gateway::{free_port, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// The port the echo server listens on in its container (TCP and UDP).
const ECHO_PORT: &str = "7000";
/// The idle clock's tick in these tests (the default).
const TICK: Duration = Duration::from_secs(1);
/// Engine round trips and polling on top of a promised delay.
const SLACK: Duration = Duration::from_millis(1500);

/// The gateway's log without its colours (field names and values are wrapped in escapes).
fn plain_logs(gateway: &Gateway) -> String {
    let logs = gateway.logs();
    let mut plain = String::with_capacity(logs.len());
    let mut chars = logs.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for end in chars.by_ref() {
                if end.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

fn loopback(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// A gateway with one route `name` over `container`, with `streams` and `extra` route keys
/// (each a line of YAML, without indentation).
async fn gateway(name: &str, container: &TestContainer, streams: &str, extra: &[&str]) -> Gateway {
    let mut text = format!(
        "idlewatcher:\n  listen: [\"@LISTEN@\"]\n  routes:\n    - name: {name}\n      docker: {{ container: {} }}\n      streams: {streams}\n",
        container.name
    );
    for line in extra {
        text.push_str(&format!("      {line}\n"));
    }
    Gateway::start(&text).await
}

/// Sends `line` and reads it back whole; the connection is then half-closed by the client and
/// must end (echoed FIN passed back).
async fn echo_once(mut socket: TcpStream, line: &[u8]) -> Vec<u8> {
    socket.write_all(line).await.unwrap();
    socket.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), socket.read_to_end(&mut back))
        .await
        .expect("the echo and the end of stream in time")
        .unwrap();
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_tcp_clients_wake_one_start_and_keep_their_first_bytes() {
    // The echo server binds 1 s after its start: every client's bytes are sent before it listens.
    let echo = echo_container(
        "tcp-500",
        &[("TCP_PORT", ECHO_PORT), ("BIND_DELAY_MS", "1000")],
    )
    .await;
    let port = free_port();
    let gateway = gateway(
        "echo",
        &echo,
        &format!("[{{ listen: \"127.0.0.1:{port}\", port: {ECHO_PORT} }}]"),
        &["stop_method: kill"],
    )
    .await;
    let events = EventCounter::new(&echo.name);
    let started = Instant::now();
    let clients: Vec<_> = (0..500)
        .map(|i| {
            tokio::spawn(async move {
                let socket = TcpStream::connect(loopback(port)).await.unwrap();
                let line = format!("client {i}: first bytes, sent at once\n");
                let back = echo_once(socket, line.as_bytes()).await;
                assert_eq!(String::from_utf8_lossy(&back), line, "client {i}");
            })
        })
        .collect();
    let mut served = 0;
    for client in clients {
        client.await.unwrap();
        served += 1;
    }
    let elapsed = started.elapsed();
    assert_eq!(served, 500);
    assert!(events.wait_for("start", Duration::from_secs(5)).await);
    // Late events would show up by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(events.count("start"), 1, "one engine start: {events:?}");
    println!("MEASURE streams: 500 TCP clients through one wake served in {elapsed:?}");
    let logs = plain_logs(&gateway);
    assert!(
        logs.contains("connection held: waking the backend"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_silent_connection_keeps_the_backend_awake_and_it_sleeps_after_close() {
    let idle = Duration::from_secs(2);
    let echo = echo_container("tcp-idle", &[("TCP_PORT", ECHO_PORT)]).await;
    let port = free_port();
    let _gateway = gateway(
        "echo",
        &echo,
        &format!("[{{ listen: \"127.0.0.1:{port}\", port: {ECHO_PORT} }}]"),
        &["stop_method: kill", "idle_timeout: 2s"],
    )
    .await;
    let mut socket = TcpStream::connect(loopback(port)).await.unwrap();
    socket.write_all(b"hello\n").await.unwrap();
    let mut back = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(30), socket.read_exact(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&back, b"hello\n");
    // Silent, open, for twice the idle timeout and more.
    tokio::time::sleep(idle * 2 + TICK).await;
    assert_eq!(
        echo.status().await,
        "running",
        "slept under an open connection"
    );
    // Still spliced; the client half-closes and gets the rest and the end of stream.
    let back = echo_once(socket, b"still there\n").await;
    assert_eq!(back, b"still there\n");
    let closed = Instant::now();
    tokio::time::sleep(idle - TICK).await;
    assert_eq!(echo.status().await, "running", "asleep before idle_timeout");
    let asleep = echo.wait_status("exited", idle + 2 * TICK + SLACK).await;
    println!(
        "MEASURE streams: TCP close → asleep {:?} (idle_timeout 2s, tick 1s)",
        asleep - closed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_listens_closes_held_clients_by_wake_timeout() {
    let wake_timeout = Duration::from_secs(2);
    // `sleep` never listens on anything.
    let silent = TestContainer::ignoring_sigterm("tcp-never").await;
    let port = free_port();
    let _gateway = gateway(
        "silent",
        &silent,
        &format!("[{{ listen: \"127.0.0.1:{port}\", port: {ECHO_PORT} }}]"),
        &["stop_method: kill", "wake_timeout: 2s"],
    )
    .await;
    let started = Instant::now();
    let mut socket = TcpStream::connect(loopback(port)).await.unwrap();
    socket.write_all(b"anyone?\n").await.unwrap();
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(
        wake_timeout + Duration::from_secs(1),
        socket.read(&mut buffer),
    )
    .await
    .expect("closed by wake_timeout + 1 s");
    let elapsed = started.elapsed();
    // A clean close (end of stream), nothing sent back.
    assert_eq!(read.unwrap(), 0);
    assert!(
        elapsed >= wake_timeout - Duration::from_millis(100),
        "{elapsed:?}"
    );
    println!("MEASURE streams: held client closed after {elapsed:?} (wake_timeout 2s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_sent_during_the_wake_come_back_in_order_and_overflow_is_counted() {
    // Binds 1 s after its start; ready 2 s after the start (UDP cannot be probed).
    let echo = echo_container("udp", &[("UDP_PORT", ECHO_PORT), ("BIND_DELAY_MS", "1000")]).await;
    let port = free_port();
    let gateway = gateway(
        "dns",
        &echo,
        &format!("[{{ listen: \"127.0.0.1:{port}\", port: {ECHO_PORT}, protocol: udp }}]"),
        &[
            "stop_method: kill",
            "ready_after: 2s",
            "idle_timeout: 2s",
            "udp_session_idle: 2s",
            "udp_buffer_datagrams: 100",
        ],
    )
    .await;
    let target = loopback(port);
    let mut clients = Vec::new();
    for _ in 0..10 {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(target).await.unwrap();
        clients.push(Arc::new(socket));
    }
    // 100 datagrams from 10 clients, interleaved, all while the backend wakes.
    let sent = Instant::now();
    for i in 0..10 {
        for (c, client) in clients.iter().enumerate() {
            client
                .send(format!("client {c} #{i}").as_bytes())
                .await
                .unwrap();
        }
    }
    // An eleventh client beyond the buffer's bound: dropped, and counted.
    let late = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    late.connect(target).await.unwrap();
    for i in 0..5 {
        late.send(format!("late #{i}").as_bytes()).await.unwrap();
    }
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "sent before the backend could be ready"
    );
    let receivers: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(c, client)| {
            let client = Arc::clone(client);
            tokio::spawn(async move {
                let mut buffer = [0u8; 256];
                for i in 0..10 {
                    let n = tokio::time::timeout(Duration::from_secs(30), client.recv(&mut buffer))
                        .await
                        .expect("echoed in time")
                        .unwrap();
                    assert_eq!(
                        std::str::from_utf8(&buffer[..n]).unwrap(),
                        format!("client {c} #{i}"),
                        "to the right client, in order"
                    );
                }
            })
        })
        .collect();
    for receiver in receivers {
        receiver.await.unwrap();
    }
    println!(
        "MEASURE streams: 100 buffered datagrams echoed {:?} after the first",
        sent.elapsed()
    );
    let mut buffer = [0u8; 256];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), late.recv(&mut buffer))
            .await
            .is_err(),
        "the overflow was dropped"
    );
    let logs = plain_logs(&gateway);
    assert!(logs.contains("udp buffer full"), "{logs}");
    assert!(logs.contains("replayed=100 dropped=5"), "{logs}");
    // Sessions expire after udp_session_idle; only then can the backend go idle and sleep.
    let quiet = Instant::now();
    let asleep = echo
        .wait_status("exited", Duration::from_secs(2 + 2) + 3 * TICK + SLACK)
        .await;
    let logs = plain_logs(&gateway);
    assert_eq!(
        logs.matches("udp session expired").count(),
        10,
        "each session expired: {logs}"
    );
    println!(
        "MEASURE streams: UDP quiet → asleep {:?} (session idle 2s + idle_timeout 2s)",
        asleep - quiet
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_open_splices_and_buffered_datagrams_exits_without_hanging() {
    let ready = echo_container("term-ready", &[("TCP_PORT", ECHO_PORT)]).await;
    // Never ready while the test runs: connections held, datagrams buffered.
    let slow = echo_container(
        "term-slow",
        &[
            ("TCP_PORT", ECHO_PORT),
            ("UDP_PORT", ECHO_PORT),
            ("BIND_DELAY_MS", "60000"),
        ],
    )
    .await;
    let (open_port, held_port, udp_port) = (free_port(), free_port(), free_port());
    let mut gateway = Gateway::start(&format!(
        "idlewatcher:
  listen: [\"@LISTEN@\"]
  routes:
    - name: ready
      docker: {{ container: {} }}
      stop_method: kill
      streams: [{{ listen: \"127.0.0.1:{open_port}\", port: {ECHO_PORT} }}]
    - name: slow
      docker: {{ container: {} }}
      stop_method: kill
      wake_timeout: 5m
      ready_after: 1s
      streams:
        - {{ listen: \"127.0.0.1:{held_port}\", port: {ECHO_PORT} }}
        - {{ listen: \"127.0.0.1:{udp_port}\", port: {ECHO_PORT}, protocol: udp }}
",
        ready.name, slow.name
    ))
    .await;
    let mut open = TcpStream::connect(loopback(open_port)).await.unwrap();
    open.write_all(b"spliced\n").await.unwrap();
    let mut back = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(30), open.read_exact(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    let mut held = TcpStream::connect(loopback(held_port)).await.unwrap();
    held.write_all(b"held\n").await.unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..10 {
        udp.send_to(format!("#{i}").as_bytes(), loopback(udp_port))
            .await
            .unwrap();
    }
    slow.wait_status("running", Duration::from_secs(10)).await;
    // The server keys of the test gateway: grace_period 0 s, graceful_shutdown_timeout 1 s.
    let took = gateway
        .terminate(Duration::from_secs(5))
        .await
        .expect("the gateway exits");
    println!("MEASURE streams: SIGTERM with an open splice, a held connection and buffered datagrams → exit in {took:?}");
    let mut rest = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), held.read(&mut rest))
        .await
        .expect("the held connection is closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

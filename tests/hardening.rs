//! Hardening at the edge, against the real binary on loopback: client deadlines, clients that
//! leave while held, requests Pingora refuses, short HTTP/1.0 requests, a backend killed while
//! the engine's events are lost, a listen address in use, pipelining, per-client caps.
#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use common::container::TestContainer;
use common::gateway::{binary, free_port, write_config, Gateway};
use common::muted_engine::MutedEngine;

/// The head deadline of these tests' gateways (short, so that the tests stay fast).
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// What the acceptance allows beyond the head deadline before a connection must be closed.
const SLACK: Duration = Duration::from_secs(2);

/// A gateway with one route `app.test` in front of `container`, the given `clients:` keys and
/// route keys (each line indented by six spaces).
fn config(container: &str, clients: &str, route: &str) -> String {
    format!(
        "idlewatcher:\n  listen: [\"@LISTEN@\"]\n  clients:\n    header_timeout: 2s\n{clients}  routes:\n    - name: app\n      hosts: [app.test]\n      docker: {{ container: {container} }}\n      port: 80\n{route}"
    )
}

/// Waits until the gateway closes `stream` (EOF or reset), reading and discarding whatever it
/// sends; how long that took. Panics after `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let wait = async {
        let mut buffer = [0u8; 1024];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, wait)
        .await
        .unwrap_or_else(|_| panic!("the connection was still open after {limit:?}"));
    started.elapsed()
}

/// Reads from `stream` until `whole` says the answer read so far is complete, or the gateway
/// closes; panics after 10 s.
async fn read_until(stream: &mut TcpStream, whole: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = async {
        while !whole(&answer) {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer within 10 s");
    answer
}

/// The first line of the gateway's answer to `request` sent on a fresh connection, and how long
/// it took.
async fn status_line(gateway: &Gateway, request: &[u8]) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(gateway.address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let answer = read_until(&mut stream, |answer| {
        answer.windows(2).any(|w| w == b"\r\n")
    })
    .await;
    let text = String::from_utf8_lossy(&answer);
    let line = text.lines().next().unwrap_or_default().to_string();
    (line, started.elapsed())
}

#[tokio::test]
async fn silent_half_head_and_slowloris_connections_are_closed_within_the_head_deadline() {
    let container = TestContainer::http("deadline").await;
    let gateway = Gateway::start(&config(&container.name, "", "")).await;
    let limit = HEADER_TIMEOUT + SLACK;

    let mut silent = TcpStream::connect(gateway.address).await.unwrap();
    let mut half = TcpStream::connect(gateway.address).await.unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n")
        .await
        .unwrap();
    let mut slow = TcpStream::connect(gateway.address).await.unwrap();
    let slowloris = tokio::spawn(async move {
        // One byte every 300 ms: each read is quick, the head never ends.
        let started = Instant::now();
        for byte in b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if slow.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        (closed_within(&mut slow, limit).await, started.elapsed())
    });
    let silent_took = closed_within(&mut silent, limit).await;
    let half_took = closed_within(&mut half, limit).await;
    let (_, slow_took) = slowloris.await.unwrap();
    eprintln!(
        "closed after: silent {silent_took:?}, half head {half_took:?}, slowloris {slow_took:?}"
    );
    assert!(
        silent_took >= HEADER_TIMEOUT - Duration::from_millis(200),
        "{silent_took:?}"
    );
    assert!(slow_took < limit, "slowloris lived {slow_took:?}");
    assert!(
        container.status().await != "running",
        "nothing was woken by heads that never ended"
    );
}

/// Raises this process's open-file limit to at least `wanted` (up to the hard limit).
fn raise_fd_limit(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    limit.rlim_cur
}

#[tokio::test]
async fn five_thousand_slow_connections_do_not_stop_a_normal_client() {
    const SLOW: usize = 5000;
    let available = raise_fd_limit(SLOW as u64 + 1000);
    assert!(
        available >= SLOW as u64 + 500,
        "open-file limit {available} too low"
    );
    let container = TestContainer::http("crowd").await;
    let gateway = Gateway::start(&config(&container.name, "", "")).await;

    let mut slow = Vec::with_capacity(SLOW);
    for i in 0..SLOW {
        let mut stream = TcpStream::connect(gateway.address).await.unwrap();
        // Silent ones and half heads, alternately.
        if i % 2 == 1 {
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Half: ")
                .await
                .unwrap();
        }
        slow.push(stream);
    }
    // Meanwhile a normal client is served.
    let started = Instant::now();
    let status = gateway.status("app.test").await;
    eprintln!(
        "{SLOW} slow connections open; status answered in {:?}",
        started.elapsed()
    );
    assert_eq!(status["route"], "app");

    // And every slow one is closed by the deadline.
    let deadline = HEADER_TIMEOUT + SLACK + Duration::from_secs(1);
    let closing = slow.into_iter().map(|mut stream| async move {
        closed_within(&mut stream, deadline).await;
    });
    futures_util::future::join_all(closing).await;
}

#[tokio::test]
async fn fire_and_forget_posts_to_a_waking_route_free_their_places_and_never_reach_the_backend() {
    const GONE: usize = 300;
    // Ready 4 s after it starts; busybox httpd -vv logs every request it gets.
    let container = TestContainer::with_cmd(
        "forget",
        &["sh", "-c", "sleep 4; exec httpd -f -vv -p 80 -h /www"],
    )
    .await;
    let gateway = Gateway::start(&config(
        &container.name,
        "",
        "      max_waiters: 300\n      wake_timeout: 30s\n",
    ))
    .await;

    // The first one wakes the backend; all of them leave right after sending.
    for _ in 0..GONE {
        let mut stream = TcpStream::connect(gateway.address).await.unwrap();
        stream
            .write_all(b"POST /gone HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\r\nhello")
            .await
            .unwrap();
        drop(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = gateway.status("app.test").await;
    assert_eq!(status["state"], "starting", "{status}");

    // A legitimate request is still held, then served.
    let answer = gateway
        .client()
        .post(gateway.url("app.test", "/index.html"))
        .body("kept")
        .send()
        .await
        .unwrap();
    let code = answer.status().as_u16();
    assert_ne!(code, 503, "{:?}", answer.text().await);

    let logs = container.logs().await;
    let reached = logs.matches("/gone").count();
    assert_eq!(
        reached, 0,
        "requests of departed clients reached the backend:\n{logs}"
    );
    assert!(
        logs.contains("/index.html"),
        "the kept request was served:\n{logs}"
    );
}

#[tokio::test]
async fn requests_pingora_refuses_are_answered_at_once_and_wake_nothing() {
    let container = TestContainer::http("refused").await;
    let gateway = Gateway::start(&config(&container.name, "", "")).await;
    let shapes: &[&[u8]] = &[
        b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"GET / HTTP/1.1\r\nHost: app.test\r\nHost: app.test\r\n\r\n",
        b"GET http://other.test/ HTTP/1.1\r\nHost: app.test\r\n\r\n",
        b"CONNECT app.test:80 HTTP/1.1\r\nHost: app.test:80\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        b"POST / HTTP/1.0\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1x\r\n\r\n",
    ];
    for shape in shapes {
        let (line, took) = status_line(&gateway, shape).await;
        eprintln!("{:?} → {line} in {took:?}", String::from_utf8_lossy(shape));
        assert!(
            line.starts_with("HTTP/1.1 400") || line.starts_with("HTTP/1.1 405"),
            "{line:?} for {:?}",
            String::from_utf8_lossy(shape)
        );
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
    let status = gateway.status("app.test").await;
    assert_eq!(status["state"], "napping", "{status}");
    assert_ne!(container.status().await, "running", "nothing was started");
}

#[tokio::test]
async fn a_short_http10_request_and_pipelined_requests_are_answered() {
    let container = TestContainer::http("short").await;
    let gateway = Gateway::start(&config(&container.name, "", "")).await;

    // 22 bytes, fewer than the HTTP/2 preface: answered at once (no route: 404).
    let (line, took) = status_line(&gateway, b"OPTIONS / HTTP/1.0\r\n\r\n").await;
    assert!(line.starts_with("HTTP/1."), "{line:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");

    // Two requests in one segment: both answered, in order.
    let mut stream = TcpStream::connect(gateway.address).await.unwrap();
    stream
        .write_all(
            b"GET /.idlewatcher/status HTTP/1.1\r\nHost: app.test\r\n\r\n\
              GET /.idlewatcher/style.css HTTP/1.1\r\nHost: app.test\r\n\r\n",
        )
        .await
        .unwrap();
    let answers = read_responses(&mut stream, 2).await;
    assert_eq!(answers[0].0, 200);
    assert!(
        answers[0].1.contains("\"route\""),
        "the status first: {answers:?}"
    );
    assert_eq!(answers[1].0, 200);
    assert!(
        !answers[1].1.contains("\"route\""),
        "then the style sheet: {answers:?}"
    );
}

/// Reads `count` responses framed by `Content-Length` from `stream`: (status, body) each.
async fn read_responses(stream: &mut TcpStream, count: usize) -> Vec<(u16, String)> {
    let mut raw = Vec::new();
    let read = async {
        loop {
            let mut answers = Vec::new();
            let mut rest = &raw[..];
            while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .and_then(|value| value.trim().parse().ok())
                    .unwrap_or(0);
                if rest.len() < end + 4 + length {
                    break;
                }
                let status = head[9..12].parse().unwrap();
                let body = String::from_utf8_lossy(&rest[end + 4..end + 4 + length]);
                answers.push((status, body.into_owned()));
                rest = &rest[end + 4 + length..];
            }
            if answers.len() >= count {
                return answers;
            }
            let mut buffer = [0u8; 4096];
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(n > 0, "closed after {} answers", answers.len());
            raw.extend_from_slice(&buffer[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the answers within 10 s")
}

#[tokio::test]
async fn a_container_killed_while_events_are_lost_is_noticed_by_the_next_request() {
    let container = TestContainer::http("unseen").await;
    let engine = MutedEngine::start().await;
    let text = format!(
        "idlewatcher:\n  listen: [\"@LISTEN@\"]\n  docker: {{ host: \"{}\" }}\n  routes:\n    - name: app\n      hosts: [app.test]\n      docker: {{ container: {} }}\n      port: 80\n",
        engine.host, container.name
    );
    let gateway = Gateway::start(&text).await;
    let client = gateway.client();
    let woke = client
        .get(gateway.url("app.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(woke.status(), 200);

    // Past the warm-up after the wake: the route is plainly ready.
    tokio::time::sleep(idlewatcher::backend::WARM_UP + Duration::from_millis(500)).await;
    engine.mute();
    container.kill("KILL").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = gateway.status("app.test").await;
    assert_eq!(
        status["state"], "ready",
        "the kill went unseen (events lost): {status}"
    );

    let started = Instant::now();
    let answer = client
        .get(gateway.url("app.test", "/"))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    let code = answer.status().as_u16();
    let body = answer.text().await.unwrap();
    eprintln!("answered {code} in {took:?}: {body}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("could not be reached"), "{body}");
    gateway
        .wait_state("app.test", "napping", Duration::from_secs(2))
        .await;
}

#[tokio::test]
async fn a_listen_address_in_use_fails_start_up_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let (_dir, path) = write_config(&format!(
        "idlewatcher:\n  listen: [\"127.0.0.1:{}\", \"{address}\"]\n",
        free_port()
    ));
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(binary())
            .arg("-c")
            .arg(&path)
            .output()
            .unwrap()
    });
    let output = tokio::time::timeout(Duration::from_secs(2), output)
        .await
        .expect("exited within 2 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!(
        "exited {:?} in {:?}: {stderr}",
        output.status,
        started.elapsed()
    );
    assert!(!output.status.success());
    assert!(stderr.contains(&address), "{stderr}");
    drop(taken);
}

#[tokio::test]
async fn connections_and_held_requests_are_capped_per_client_address() {
    let container = TestContainer::with_cmd("caps", &["sh", "-c", "sleep 3600"]).await;
    // A long head deadline: the fifth connection below must be closed by its cap, not by
    // that deadline, and a loaded machine may take a while to do it.
    let gateway = Gateway::start(
        &config(
            &container.name,
            "    max_connections_per_ip: 4\n    max_held_per_ip: 2\n",
            "      wake_timeout: 20s\n",
        )
        .replace("header_timeout: 2s", "header_timeout: 30s"),
    )
    .await;

    // Two requests held (the backend never becomes ready), the third gets 503 at once.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(gateway.address).await.unwrap();
        stream
            .write_all(b"GET /slow HTTP/1.1\r\nHost: app.test\r\n\r\n")
            .await
            .unwrap();
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Read to its end (`Connection: close`): the gateway has closed the connection, so its
    // place is given back before the three below connect.
    let mut third = TcpStream::connect(gateway.address).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), third.read_to_end(&mut answer))
        .await
        .expect("the 503 is answered and the connection closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    drop(third);

    // Three more connections from the same address: two fill the cap of 4, one is closed at
    // once. Which one depends on the order the gateway accepts them in, which a loaded machine
    // may change, so the first of the three to be closed is the one over the cap; the other two
    // stay open.
    let mut more = Vec::new();
    for _ in 0..3 {
        more.push(TcpStream::connect(gateway.address).await.unwrap());
    }
    let closings: Vec<_> = more
        .iter_mut()
        .map(|stream| Box::pin(closed_within(stream, Duration::from_secs(10))))
        .collect();
    let (_, over_the_cap, open) = futures_util::future::select_all(closings).await;
    for (index, stream) in open.into_iter().enumerate() {
        let still_open = tokio::time::timeout(Duration::from_millis(300), stream).await;
        assert!(
            still_open.is_err(),
            "connection {index} besides {over_the_cap} was closed too"
        );
    }

    // Another address (127.0.0.2 is loopback too) has its own places.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = socket.connect(gateway.address).await.unwrap();
    other
        .write_all(b"GET /.idlewatcher/status HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let (code, _) = common::http::read_one_response(&mut other).await;
    assert_eq!(code, 200);
}

/// Opens `/.idlewatcher/events` of `host` on a fresh connection: the answer's head and what
/// followed it (a stream's `retry:` line, or a refusal's whole body), the connection kept open.
async fn open_event_stream(gateway: &Gateway, host: &str) -> (String, TcpStream) {
    let mut stream = TcpStream::connect(gateway.address).await.unwrap();
    let request = format!(
        "GET /.idlewatcher/events HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let answer = read_until(&mut stream, |answer| {
        let text = String::from_utf8_lossy(answer).to_ascii_lowercase();
        let Some(end) = text.find("\r\n\r\n") else {
            return false;
        };
        let body = &text[end + 4..];
        let length = text[..end].lines().find_map(|line| {
            line.strip_prefix("content-length:")
                .and_then(|v| v.trim().parse::<usize>().ok())
        });
        match length {
            Some(length) => body.len() >= length,
            None => body.contains("\n\n"),
        }
    })
    .await;
    (String::from_utf8_lossy(&answer).into_owned(), stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_capped_per_client_and_per_route_and_a_closed_one_frees_its_place() {
    let container = TestContainer::http("sse-caps").await;
    let gateway = Gateway::start(&format!(
        "{}    - name: other\n      hosts: [other.test]\n      docker: {{ container: {} }}\n      port: 80\n",
        config(
            &container.name,
            "    max_event_streams_per_ip: 3\n    max_event_streams_per_route: 2\n",
            "",
        ),
        container.name,
    ))
    .await;

    // Two on `app`: served (by the early hold, on the bare connection) as the gate would.
    let (first, first_stream) = open_event_stream(&gateway, "app.test").await;
    let (second, _second_stream) = open_event_stream(&gateway, "app.test").await;
    for answer in [&first, &second] {
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let lower = answer.to_ascii_lowercase();
        assert!(
            lower.contains("content-type: text/event-stream"),
            "{answer}"
        );
        assert!(lower.contains("cache-control: no-store"), "{answer}");
        assert!(answer.contains("retry: 1000"), "{answer}");
        // Close-delimited: served on the bare connection, not through a Pingora session
        // (which would frame it chunked).
        assert!(lower.contains("connection: close"), "{answer}");
        assert!(!lower.contains("transfer-encoding"), "{answer}");
    }
    // A third on `app`: the route's cap (503, problem+json, Retry-After).
    let (third, _) = open_event_stream(&gateway, "app.test").await;
    assert!(third.starts_with("HTTP/1.1 503"), "{third}");
    assert!(
        third.contains("already has 2 event stream subscribers"),
        "{third}"
    );
    assert!(
        third.to_ascii_lowercase().contains("retry-after"),
        "{third}"
    );
    // One on `other`: the client's third stream, served.
    let (other, _other_stream) = open_event_stream(&gateway, "other.test").await;
    assert!(other.starts_with("HTTP/1.1 200"), "{other}");
    // A fourth from this client: its own cap (429).
    let (fourth, _) = open_event_stream(&gateway, "other.test").await;
    assert!(fourth.starts_with("HTTP/1.1 429"), "{fourth}");
    assert!(
        fourth.contains("already follows 3 event streams"),
        "{fourth}"
    );

    // A subscriber that leaves frees both its places.
    drop(first_stream);
    let reopened = common::eventually(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async {
            let (answer, stream) = open_event_stream(&gateway, "app.test").await;
            if answer.starts_with("HTTP/1.1 200") {
                Ok(stream)
            } else {
                Err(answer)
            }
        },
    )
    .await;
    assert!(
        reopened.is_ok(),
        "the place was not freed: {:?}",
        reopened.err()
    );
}

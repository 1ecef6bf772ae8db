//! A TCP and UDP echo server for the stream tests: a tiny Rust program (std only) compiled by
//! the test with `rustc` into a static executable and copied into a test container (`FROM
//! scratch`: no registry, no libc in the image).
//!
//! ```ignore
//! let echo = echo_container("tcp", &[("TCP_PORT", "7000"), ("BIND_DELAY_MS", "1000")]).await;
//! ```
//!
//! Environment of the server: `TCP_PORT` (echo every byte back; the write side is shut once the
//! client shut its own), `UDP_PORT` (every datagram back to its sender), `BIND_DELAY_MS` (bind
//! only this long after the start, so that clients talk to a backend that does not listen yet).

use std::path::PathBuf;

use tokio::sync::OnceCell;

use super::container::TestContainer;
use super::engine::docker;

/// Where the server is copied in the container (and what it runs).
pub const ECHO_PATH: &str = "/bin/echo-server";

/// The server's source.
const ECHO_SOURCE: &str = r#"
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, UdpSocket};
use std::time::Duration;

fn port(key: &str) -> Option<u16> {
    std::env::var(key).ok().and_then(|value| value.parse().ok())
}

fn main() {
    let delay = std::env::var("BIND_DELAY_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    std::thread::sleep(Duration::from_millis(delay));
    let mut servers = Vec::new();
    if let Some(port) = port("TCP_PORT") {
        let listener = TcpListener::bind(("0.0.0.0", port)).expect("tcp bind");
        eprintln!("echo: tcp on {port}");
        servers.push(std::thread::spawn(move || {
            for connection in listener.incoming() {
                let Ok(mut connection) = connection else { continue };
                std::thread::spawn(move || {
                    let mut buffer = vec![0u8; 65536];
                    loop {
                        match connection.read(&mut buffer) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if connection.write_all(&buffer[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = connection.shutdown(Shutdown::Write);
                });
            }
        }));
    }
    if let Some(port) = port("UDP_PORT") {
        let socket = UdpSocket::bind(("0.0.0.0", port)).expect("udp bind");
        eprintln!("echo: udp on {port}");
        servers.push(std::thread::spawn(move || {
            let mut buffer = vec![0u8; 65536];
            loop {
                if let Ok((n, from)) = socket.recv_from(&mut buffer) {
                    let _ = socket.send_to(&buffer[..n], from);
                }
            }
        }));
    }
    for server in servers {
        let _ = server.join();
    }
}
"#;

/// Compiles the echo server (once per process) and returns its path.
pub async fn echo_binary() -> &'static PathBuf {
    static BINARY: OnceCell<PathBuf> = OnceCell::const_new();
    BINARY
        .get_or_init(|| async {
            let dir = std::env::temp_dir().join(format!("iwt-echo-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("echo build directory");
            let source = dir.join("echo.rs");
            let binary = dir.join("echo-server");
            std::fs::write(&source, ECHO_SOURCE).expect("echo source written");
            let output = tokio::process::Command::new("rustc")
                .args([
                    "-O",
                    "-C",
                    "target-feature=+crt-static",
                    "--target",
                    "x86_64-unknown-linux-gnu",
                    "-o",
                ])
                .arg(&binary)
                .arg(&source)
                .output()
                .await
                .expect("rustc runs");
            assert!(
                output.status.success(),
                "compiling the echo server failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            binary
        })
        .await
}

/// A created (not started) test container running the echo server with `env`, killed at once
/// by a stop (SIGKILL: the server is PID 1 without a SIGTERM handler).
pub async fn echo_container(prefix: &str, env: &[(&str, &str)]) -> TestContainer {
    let binary = echo_binary().await;
    let mut builder = TestContainer::builder(prefix)
        .cmd(&[ECHO_PATH])
        .stop_signal("SIGKILL");
    for (key, value) in env {
        builder = builder.env(key, value);
    }
    let container = builder.create().await;
    let target = format!("{}:{ECHO_PATH}", container.name);
    docker(&["cp", binary.to_str().expect("utf-8 path"), &target]).await;
    container
}

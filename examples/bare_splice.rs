//! The stream baseline of `make bench`: the same TCP splice as idlewatcher's stream front
//! (a Pingora `ServerApp` on one listen address, connect to a fixed upstream, then
//! `copy_bidirectional` with the same 16 KiB buffers), without the gate (no route, no in-flight
//! guard, no activity marks, no background service).
//!
//! ```text
//! cargo run --release --example bare_splice -- -c server.yaml --listen 127.0.0.1:8082 --upstream 127.0.0.1:9001
//! ```
#![allow(clippy::unwrap_used, unreachable_pub)] // A benchmark or example: a failed unwrap is a failed run.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::configuration::Opt;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::listening::Service;
use tokio::net::TcpStream;

/// The same buffer per direction as idlewatcher's splice.
const BUFFER: usize = 16 * 1024;

struct BareSplice {
    upstream: SocketAddr,
}

#[async_trait]
impl ServerApp for BareSplice {
    async fn process_new(
        self: &Arc<Self>,
        mut client: Stream,
        _: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut upstream = TcpStream::connect(self.upstream).await.ok()?;
        let _ = upstream.set_nodelay(true);
        let _ =
            tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUFFER, BUFFER)
                .await;
        None
    }
}

/// Removes `--name VALUE` from `args` and parses the value.
fn take_address(args: &mut Vec<String>, name: &str) -> SocketAddr {
    let Some(at) = args.iter().position(|arg| arg == name) else {
        eprintln!("bare_splice: {name} ADDR is required (usage: bare_splice -c FILE --listen ADDR --upstream ADDR)");
        std::process::exit(2)
    };
    let value = args.get(at + 1).cloned().unwrap_or_default();
    args.drain(at..(at + 2).min(args.len()));
    value.parse().unwrap_or_else(|_| {
        eprintln!("bare_splice: {name}: {value:?} is not an ip:port");
        std::process::exit(2)
    })
}

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let listen = take_address(&mut args, "--listen");
    let upstream = take_address(&mut args, "--upstream");
    let opt = Opt::parse_from_args(args);
    let mut server = Server::new(Some(opt)).expect("a valid Pingora configuration");
    server.bootstrap();
    let mut service = Service::new("bare splice".to_string(), BareSplice { upstream });
    service.add_tcp(&listen.to_string());
    server.add_service(service);
    server.run_forever()
}

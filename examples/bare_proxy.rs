//! The warm-path baseline of `make bench`: a bare Pingora proxy with the same server settings as
//! the `idlewatcher` binary and no gate, sending every request to one fixed upstream.
//!
//! ```text
//! cargo run --release --example bare_proxy -- -c server.yaml --listen 127.0.0.1:8081 --upstream 127.0.0.1:9000
//! ```
//!
//! `-c` is a Pingora server configuration (`threads`, `upstream_keepalive_pool_size`…: the bench
//! writes the same keys it gives idlewatcher). What is the same as the bundled `IdleProxy`
//! (`src/proxy.rs`): one `http_proxy_service` on the listen address with h2c enabled, an
//! `HttpPeer` without TLS and with the same 5 s connect timeout. What is left out is the gate and
//! everything it needs (route table, in-flight guard, activity mark, background ticker).
//!
//! The listener uses the same L4 read buffer as idlewatcher's
//! ([`idlewatcher::http::proxy::LISTENER_READ_BUFFER`]); `--l4-read-buffer BYTES` sets another one
//! (e.g. Pingora's 64 KiB default, 65536) to measure what that buffer costs per connection.
#![allow(clippy::unwrap_used, unreachable_pub)] // A benchmark or example: a failed unwrap is a failed run.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::*;
use pingora::proxy::{http_proxy_service_with_name, ProxyHttp, Session};
use pingora::server::configuration::Opt;

/// The same connect timeout idlewatcher gives its upstreams.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

struct BareProxy {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for BareProxy {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.connection_timeout = Some(UPSTREAM_CONNECT_TIMEOUT);
        Ok(Box::new(peer))
    }
}

/// Removes `--name VALUE` from `args` and parses the value.
fn take_address(args: &mut Vec<String>, name: &str) -> SocketAddr {
    let Some(at) = args.iter().position(|arg| arg == name) else {
        eprintln!("bare_proxy: {name} ADDR is required (usage: bare_proxy -c FILE --listen ADDR --upstream ADDR)");
        std::process::exit(2)
    };
    let value = args.get(at + 1).cloned().unwrap_or_default();
    args.drain(at..(at + 2).min(args.len()));
    value.parse().unwrap_or_else(|_| {
        eprintln!("bare_proxy: {name}: {value:?} is not an ip:port");
        std::process::exit(2)
    })
}

/// Removes `--l4-read-buffer BYTES` from `args`, if there.
fn take_read_buffer(args: &mut Vec<String>) -> Option<usize> {
    let at = args.iter().position(|arg| arg == "--l4-read-buffer")?;
    let value = args.get(at + 1).cloned().unwrap_or_default();
    args.drain(at..(at + 2).min(args.len()));
    Some(value.parse().unwrap_or_else(|_| {
        eprintln!("bare_proxy: --l4-read-buffer: {value:?} is not a number of bytes");
        std::process::exit(2)
    }))
}

fn main() {
    // `--listen`, `--upstream` and `--l4-read-buffer` are ours; everything else is Pingora's
    // own flags (-c, -d…).
    let mut args: Vec<String> = std::env::args().collect();
    let listen = take_address(&mut args, "--listen");
    let upstream = take_address(&mut args, "--upstream");
    let read_buffer = take_read_buffer(&mut args);
    let opt = Opt::parse_from_args(args);

    let mut server = Server::new(Some(opt)).expect("a valid Pingora configuration");
    server.bootstrap();
    let mut proxy =
        http_proxy_service_with_name(&server.configuration, BareProxy { upstream }, "bare");
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    if let Some(app) = proxy.app_logic_mut() {
        app.server_options = Some(options);
    }
    let bytes = read_buffer.unwrap_or(idlewatcher::http::proxy::LISTENER_READ_BUFFER);
    proxy.add_listener(
        ListenerConfig::tcp(listen.to_string()).l4_buffer(L4BufferSettings::default().read(bytes)),
    );
    server.add_service(proxy);
    server.run_forever()
}

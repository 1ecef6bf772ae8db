//! Embedding idlewatcher's gate in a hand-written Pingora gateway.
//!
//! The gateway below has one always-on backend of its own (`--default-upstream`, every host that
//! no idlewatcher route claims) and lets idlewatcher handle the rest: sleeping routes are woken,
//! browsers see the loading page, and ready routes pass straight through.
//!
//! ```text
//! cargo run --release --example embed -- -c conf/idlewatcher.yaml --default-upstream 127.0.0.1:9000
//! ```
#![allow(clippy::unwrap_used, unreachable_pub)] // A benchmark or example: a failed unwrap is a failed run.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{http_proxy, ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::services::listening::Service;

use idlewatcher::http::EarlyHold;
use idlewatcher::{config, GateContext, IdleWatcher, UnknownHost};

/// The gateway's own per-request state, with idlewatcher's inside.
#[derive(Default)]
struct Ctx {
    idle: GateContext,
}

struct MyGateway {
    idle: Arc<IdleWatcher>,
    default_upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for MyGateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // Answered by idlewatcher (loading page, 503, status…): the request is done.
        if self.idle.gate(session, &mut ctx.idle).await? {
            return Ok(true);
        }
        // Your own filters (auth, rate limits…) go here.
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        if ctx.idle.route().is_some() {
            return self.idle.upstream_peer(&ctx.idle);
        }
        Ok(Box::new(HttpPeer::new(
            self.default_upstream,
            false,
            String::new(),
        )))
    }
}

fn main() {
    tracing_subscriber::fmt().init();
    // `--default-upstream ADDR` is ours; everything else is Pingora's own flags (-c, -d, -u, -t).
    let mut args: Vec<String> = std::env::args().collect();
    let mut default_upstream: SocketAddr = ([127, 0, 0, 1], 9000).into();
    if let Some(at) = args.iter().position(|arg| arg == "--default-upstream") {
        let value = args.get(at + 1).cloned().unwrap_or_default();
        default_upstream = value.parse().unwrap_or_else(|_| {
            eprintln!("--default-upstream: {value:?} is not an ip:port");
            std::process::exit(2)
        });
        args.drain(at..=at + 1);
    }
    let mut opt = Opt::parse_from_args(args);
    let path = opt
        .conf
        .take()
        .unwrap_or_else(|| "conf/idlewatcher.yaml".into());
    let config = config::load(path.as_ref()).unwrap_or_else(|errors| {
        eprintln!("{path}:\n{errors}");
        std::process::exit(1)
    });

    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let idle = runtime
        .block_on(IdleWatcher::from_config_with(
            &config.gateway,
            UnknownHost::PassThrough,
        ))
        .unwrap_or_else(|error| {
            eprintln!("{error}");
            std::process::exit(1)
        });
    drop(runtime);
    let idle = Arc::new(idle);

    let server_conf = ServerConf::from_yaml(&config.server_yaml).expect("validated server keys");
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();
    let gateway = http_proxy(
        &server.configuration,
        MyGateway {
            idle: Arc::clone(&idle),
            default_upstream,
        },
    );
    // Optional: requests for sleeping routes are held before Pingora reads them, at a fraction
    // of the memory of a held Pingora session (`idlewatcher::hold`).
    let mut proxy = Service::new(
        "gateway".to_string(),
        EarlyHold::new(Arc::clone(idle.idle_gate()), gateway),
    );
    for address in &config.gateway.listen {
        proxy.add_tcp(address);
    }
    server.add_service(proxy);
    for service in idle.background_services() {
        server.add_boxed_service(service);
    }
    server.run_forever()
}

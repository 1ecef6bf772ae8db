//! The bundled `ProxyHttp`: routes by Host through the gate, nothing else. This is what the
//! `idlewatcher` binary runs; `examples/embed.rs` shows the same gate inside another gateway.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::proxy::{http_proxy_service_with_name, HttpProxy, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::services::listening::Service;
use pingora::upstreams::peer::HttpPeer;
use pingora::Result;

use crate::gate::GateContext;
use crate::IdleWatcher;

/// A gateway whose every route is an idlewatcher route.
pub struct IdleProxy {
    idle: Arc<IdleWatcher>,
}

impl IdleProxy {
    /// A proxy over `idle`'s routes.
    pub fn new(idle: Arc<IdleWatcher>) -> Self {
        Self { idle }
    }

    /// The listening service: this proxy on every `listen` address, HTTP/1.1 and cleartext
    /// HTTP/2 (h2c).
    pub fn service(
        idle: Arc<IdleWatcher>,
        server: &Arc<ServerConf>,
        listen: &[String],
    ) -> Service<HttpProxy<IdleProxy>> {
        let mut service = http_proxy_service_with_name(server, Self::new(idle), "idlewatcher");
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        if let Some(proxy) = service.app_logic_mut() {
            proxy.server_options = Some(options);
        }
        for address in listen {
            service.add_tcp(address);
        }
        service
    }
}

#[async_trait]
impl ProxyHttp for IdleProxy {
    type CTX = GateContext;

    fn new_ctx(&self) -> GateContext {
        GateContext::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut GateContext) -> Result<bool> {
        self.idle.gate(session, ctx).await
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut GateContext,
    ) -> Result<Box<HttpPeer>> {
        self.idle.upstream_peer(ctx)
    }
}

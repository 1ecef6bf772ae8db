//! The bundled `ProxyHttp`: routes by Host through the gate, nothing else. This is what the
//! `idlewatcher` binary runs; `examples/embed.rs` shows the same gate inside another gateway.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::http::ResponseHeader;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::protocols::Digest;
use pingora::proxy::{http_proxy, FailToProxy, HttpProxy, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::services::listening::Service;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, Result};

use crate::http::body::failure_status;
use crate::http::{respond, EarlyHold, GateContext, IdleGate};

/// The listeners' L4 read buffer, in bytes. Pingora's default is 64 KiB per connection, mostly
/// to save read calls under TLS, where rustls has a record buffer of its own anyway (the HTTPS
/// listeners use this value too, [`tls::listener`](crate::http::tls::listener)); HTTP/1
/// request heads are read into Pingora's own 4 KiB buffer. Without it, a held request costs ≈ 8 kB less
/// resident memory (see BENCHMARKS.md, "thundering herd").
pub const LISTENER_READ_BUFFER: usize = 0;

/// A gateway whose every route is an idlewatcher route.
pub struct IdleProxy {
    gate: Arc<IdleGate>,
}

impl IdleProxy {
    /// A proxy over the routes of `gate` (from
    /// [`IdleWatcher::idle_gate`](crate::IdleWatcher::idle_gate)).
    pub fn new(gate: Arc<IdleGate>) -> Self {
        Self { gate }
    }

    /// The listening service: this proxy behind an [`EarlyHold`] on every `listen` address,
    /// HTTP/1.1 and cleartext HTTP/2 (h2c).
    pub fn service(
        gate: Arc<IdleGate>,
        server: &Arc<ServerConf>,
        listen: &[String],
    ) -> Service<EarlyHold<HttpProxy<IdleProxy>>> {
        let mut proxy = http_proxy(server, Self::new(Arc::clone(&gate)));
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        options.h2_idle_timeout = Some(gate.clients().limits.h2_idle_timeout);
        proxy.server_options = Some(options);
        let mut service = Service::new("idlewatcher".to_string(), EarlyHold::new(gate, proxy));
        for address in listen {
            service.add_listener(
                ListenerConfig::tcp(address.clone())
                    .l4_buffer(L4BufferSettings::default().read(LISTENER_READ_BUFFER)),
            );
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
        self.gate.check(session, ctx).await
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut GateContext,
    ) -> Result<()> {
        let len = body.as_ref().map_or(0, bytes::Bytes::len);
        ctx.body_received(len, &self.gate.clients().limits)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        error: &Error,
        ctx: &mut GateContext,
    ) -> FailToProxy {
        let code = failure_status(error);
        if session.response_written().is_some() {
            // Too late for an answer of our own; Pingora's does nothing either.
            let _ = session.respond_error(code).await;
        } else if code == 502 {
            // The backend did not answer: say which, and that its state is being checked.
            if let Some(route) = ctx.route() {
                let detail = format!("{} could not be reached: {error}", route.name);
                let _ = respond::problem(session, 502, Some(&route.name), &detail, None).await;
            } else {
                let _ = session.respond_error(502).await;
            }
        } else if code > 0 {
            let _ = session.respond_error(code).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut GateContext,
    ) -> Result<Box<HttpPeer>> {
        let delay = ctx.retry_delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.gate.upstream_peer(ctx)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut GateContext,
    ) -> Result<()> {
        ctx.upstream_responded();
        Ok(())
    }

    async fn connected_to_upstream(
        &self,
        session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&Digest>,
        ctx: &mut GateContext,
    ) -> Result<()> {
        ctx.connected_to_upstream(session, reused, fd);
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut GateContext,
        mut error: Box<Error>,
    ) -> Box<Error> {
        ctx.should_retry_connect(&mut error);
        error
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        error: Box<Error>,
        ctx: &mut GateContext,
        client_reused: bool,
    ) -> Box<Error> {
        let mut error = error.more_context(format!("Peer: {peer}"));
        if !ctx.should_retry(session, &mut error) {
            // Pingora's own policy: retry only what failed on a reused connection.
            if !session.req_header().method.is_idempotent()
                || session.as_ref().retry_buffer_truncated()
            {
                error.set_retry(false);
            } else {
                error.retry.decide_reuse(client_reused);
            }
        }
        error
    }
}

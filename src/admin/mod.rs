//! The admin listener: the operator's side of the gateway, on an address of its own (never one
//! of the public listeners), as a Pingora service of its own.
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text: the event metrics ([`crate::metrics`]) and, read at scrape time, each route's state, held requests and requests in flight ([`gauges`]) |
//! | `GET /api/routes` | every route with its backend, state and error, in full detail ([`listing`]) |
//! | `POST /api/routes/{name}/wake` | wakes the backend and answers once it is ready, or 503 with why ([`actions`]) |
//! | `POST /api/routes/{name}/sleep` | puts it to sleep; waits (bounded) for requests in flight, else 409 unless `?force=true` |
//! | `POST /api/reload` | reads the configuration file again and applies it ([`reload`]): 200 with the routes added, removed, changed and the keys that need a restart; 400 with every problem of an invalid file (nothing changes) |
//!
//! `/api/*` needs `Authorization: Bearer <token>` when a token is configured ([`auth`]); errors
//! are `application/problem+json`. Unlike the public endpoints, everything here is detailed:
//! backend names, addresses and the engines' error texts are what an operator needs.

mod actions;
pub mod auth;
mod gauges;
mod listing;
pub mod reload;

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;
use prometheus::Encoder;

use crate::http::respond::problem_body;
use crate::metrics::Metrics;
use crate::routes::LiveRoutes;
use actions::ActionError;

pub use auth::{AdminToken, TokenError};
pub use reload::{Reload, ReloadRefused};

/// Longest request body read (and thrown away): the API takes no bodies.
const MAX_BODY: usize = 64 * 1024;

/// The admin API: answers the requests of the table above.
pub struct AdminApi {
    routes: Arc<LiveRoutes>,
    metrics: Arc<Metrics>,
    token: Option<AdminToken>,
    reload: Option<Arc<dyn Reload>>,
}

impl AdminApi {
    /// The API over the live `routes` and their `metrics`; `/api/*` requires `token` if given.
    pub fn new(routes: Arc<LiveRoutes>, metrics: Arc<Metrics>, token: Option<AdminToken>) -> Self {
        Self {
            routes,
            metrics,
            token,
            reload: None,
        }
    }

    /// The same API with `POST /api/reload` served by `reload`.
    pub fn with_reload(mut self, reload: Arc<dyn Reload>) -> Self {
        self.reload = Some(reload);
        self
    }

    /// The Pingora service listening on `listen` (its own runtime, apart from the public
    /// listeners, so a flood of public traffic does not starve the operator).
    pub fn service(self, listen: &str) -> Service<AdminApi> {
        let mut service = Service::new("idlewatcher admin".to_string(), self);
        service.add_tcp(listen);
        service
    }

    async fn answer(&self, method: &Method, path: &str, query: &str) -> Response<Vec<u8>> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            (&Method::GET, ["metrics"]) => self.metrics_text(),
            (&Method::GET, ["api", "routes"]) => {
                let table = self.routes.snapshot();
                let rejected = self.routes.rejected();
                let mut entries: Vec<serde_json::Value> = Vec::new();
                for entry in listing::routes(&table) {
                    entries.push(serde_json::to_value(entry).unwrap_or_default());
                }
                for entry in listing::rejected(&rejected) {
                    entries.push(serde_json::to_value(entry).unwrap_or_default());
                }
                json(StatusCode::OK, &entries)
            }
            (&Method::POST, ["api", "routes", name, action @ ("wake" | "sleep")]) => {
                let table = self.routes.snapshot();
                let Some(route) = table.by_name(name) else {
                    let detail = format!("no route is named {name:?}");
                    return problem(StatusCode::NOT_FOUND, None, &detail);
                };
                let done = match *action {
                    "wake" => actions::wake(route).await,
                    _ => actions::sleep(route, force(query)).await,
                };
                match done {
                    Ok(()) => json(
                        StatusCode::OK,
                        &listing::entry(route, table.hosts_of(route)),
                    ),
                    Err(error) => action_failed(&route.name, action, &error),
                }
            }
            (&Method::POST, ["api", "reload"]) => reload::answer(self.reload.as_ref()).await,
            (
                _,
                ["metrics"]
                | ["api", "routes"]
                | ["api", "reload"]
                | ["api", "routes", _, "wake" | "sleep"],
            ) => problem(
                StatusCode::METHOD_NOT_ALLOWED,
                None,
                "this endpoint does not take that method",
            ),
            _ => problem(StatusCode::NOT_FOUND, None, "no such admin endpoint"),
        }
    }

    fn metrics_text(&self) -> Response<Vec<u8>> {
        let mut families = self.metrics.registry().gather();
        families.extend(gauges::gather(&self.routes.snapshot()));
        let mut body = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(error) = encoder.encode(&families, &mut body) {
            let detail = format!("could not encode the metrics: {error}");
            return problem(StatusCode::INTERNAL_SERVER_ERROR, None, &detail);
        }
        respond(StatusCode::OK, encoder.format_type(), body)
    }
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        // Drain a body if one came (none is expected), so the connection stays usable.
        let mut read = 0;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            read += chunk.len();
            if read > MAX_BODY {
                session.set_keepalive(None);
                break;
            }
        }
        let request = session.req_header();
        let path = request.uri.path().to_string();
        let query = request.uri.query().unwrap_or("").to_string();
        let method = request.method.clone();
        if path.starts_with("/api/") {
            if let Some(token) = &self.token {
                let header = request.headers.get(http::header::AUTHORIZATION);
                if !token.admits(header.map(|value| value.as_bytes())) {
                    let mut answer = problem(
                        StatusCode::UNAUTHORIZED,
                        None,
                        "this endpoint needs Authorization: Bearer <the admin token>",
                    );
                    answer.headers_mut().insert(
                        http::header::WWW_AUTHENTICATE,
                        http::HeaderValue::from_static("Bearer"),
                    );
                    return answer;
                }
            }
        }
        self.answer(&method, &path, &query).await
    }
}

/// The answer to a failed operator action: 503 + `Retry-After` for a failed wake, 409 for a
/// backend too busy to sleep, 502 when the provider failed the stop.
fn action_failed(route: &str, action: &str, error: &ActionError) -> Response<Vec<u8>> {
    let detail = format!("{route}: {action}: {error}");
    let (status, retry_after) = match error {
        ActionError::Wake(failure) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Some(failure.retry_after_secs()),
        ),
        ActionError::Busy { .. } | ActionError::StillWaking => (StatusCode::CONFLICT, None),
        ActionError::Sleep(_) => (StatusCode::BAD_GATEWAY, None),
    };
    let mut answer = problem(status, Some(route), &detail);
    if let Some(secs) = retry_after {
        answer
            .headers_mut()
            .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
    }
    answer
}

/// Whether the query says `force=true`.
fn force(query: &str) -> bool {
    query
        .split('&')
        .any(|pair| pair.eq_ignore_ascii_case("force=true") || pair == "force=1")
}

/// A JSON answer.
fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Vec<u8>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => respond(status, "application/json", body),
        Err(error) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            &format!("could not encode the answer: {error}"),
        ),
    }
}

/// An `application/problem+json` answer.
fn problem(status: StatusCode, route: Option<&str>, detail: &str) -> Response<Vec<u8>> {
    let body = problem_body(status.as_u16(), route, detail);
    respond(status, "application/problem+json", body)
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        headers.insert(http::header::CONTENT_TYPE, value);
    }
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    let length = response.body().len();
    response.headers_mut().insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(length),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::force;

    #[test]
    fn force_is_read_from_the_query() {
        assert!(force("force=true"));
        assert!(force("wait=5&force=1"));
        assert!(!force(""));
        assert!(!force("force=false"));
        assert!(!force("unforce=true"));
    }
}

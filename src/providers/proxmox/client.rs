//! A small client for the Proxmox VE REST API (`/api2/json`), independent of our configuration:
//! a base URL, an API token and a TLS configuration in, typed answers or a [`PveError`] out.
//!
//! PVE answers `{"data": …}`; failures carry their text in the HTTP reason phrase and/or in a
//! body `{"data":null,"errors":{param: text},"message":"…"}`. Both are decoded here, so callers
//! show PVE's own words ("CT 101 already running").

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Longest a single API request may take (power calls answer at once with a task id; the work
/// is followed through the task).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Connecting to the API.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed API call, with PVE's own explanation when it gave one.
#[derive(Debug, thiserror::Error)]
pub enum PveError {
    /// The API could not be reached (DNS, TCP, TLS — a pin mismatch shows here, with both
    /// fingerprints).
    #[error("cannot reach the PVE API at {url}: {message}")]
    Transport {
        /// The base URL.
        url: String,
        /// The whole chain of causes.
        message: String,
    },
    /// The API token was refused. Names the token id, never the secret.
    #[error("the PVE API refused API token {token_id}: {status} {message} (check token_id and the secret, and that the token is not expired)")]
    Auth {
        /// The token id.
        token_id: String,
        /// HTTP status.
        status: u16,
        /// PVE's text.
        message: String,
    },
    /// The token is valid but lacks a privilege.
    #[error("API token {token_id} lacks a privilege: {message} (it needs VM.PowerMgmt and VM.Audit on the guests)")]
    Forbidden {
        /// The token id.
        token_id: String,
        /// PVE's text.
        message: String,
    },
    /// PVE refused or failed the call.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// PVE's text (reason phrase, `message`, per-parameter `errors`).
        message: String,
    },
    /// The answer was not what the API reference describes.
    #[error("unexpected answer from {path}: {message}")]
    Decode {
        /// The API path.
        path: String,
        /// What did not fit.
        message: String,
    },
}

impl PveError {
    /// PVE's text for an API refusal (empty for other failures), for matching on the known
    /// messages ("already running", "does not exist").
    pub fn api_message(&self) -> &str {
        match self {
            PveError::Api { message, .. } => message,
            _ => "",
        }
    }
}

/// PVE's error body.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    errors: Option<serde_json::Map<String, serde_json::Value>>,
}

/// PVE's success body.
#[derive(Deserialize)]
struct DataBody<T> {
    data: T,
}

/// One PVE API endpoint with one API token. Cheap to clone (reqwest's pool is shared).
#[derive(Clone)]
pub struct PveClient {
    http: reqwest::Client,
    /// `https://host:port/api2/json`.
    api: String,
    base: String,
    token_id: String,
}

impl std::fmt::Debug for PveClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PveClient")
            .field("base", &self.base)
            .field("token_id", &self.token_id)
            .finish_non_exhaustive()
    }
}

impl PveClient {
    /// A client for the API at `base` (`https://host:port`) authenticating with the token
    /// `token_id` / `secret`, trusting the server as `tls` says.
    pub fn new(
        base: &str,
        token_id: &str,
        secret: &str,
        tls: rustls::ClientConfig,
    ) -> Result<Self, PveError> {
        let base = base.trim_end_matches('/').to_string();
        let transport = |message: String| PveError::Transport {
            url: base.clone(),
            message,
        };
        let mut auth = HeaderValue::from_str(&format!("PVEAPIToken={token_id}={secret}"))
            .map_err(|_| {
                transport(format!(
                    "API token {token_id}: the id or secret holds characters not allowed in an HTTP header"
                ))
            })?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .default_headers(headers)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| transport(chain(&e)))?;
        Ok(Self {
            http,
            api: format!("{base}/api2/json"),
            base,
            token_id: token_id.to_string(),
        })
    }

    /// The API's base URL, for messages.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path` (below `/api2/json`), decoding `data`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, PveError> {
        let request = self.http.get(format!("{}{path}", self.api));
        self.send(path, request).await
    }

    /// `POST path` with form parameters, decoding `data` (for power calls: the task's UPID).
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        form: &[(&str, String)],
    ) -> Result<T, PveError> {
        let body: Vec<String> = form
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let request = self
            .http
            .post(format!("{}{path}", self.api))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body.join("&"));
        self.send(path, request).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        path: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<T, PveError> {
        let response = request.send().await.map_err(|e| PveError::Transport {
            url: self.base.clone(),
            message: chain(&e),
        })?;
        let status = response.status();
        let reason = response
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .and_then(|r| std::str::from_utf8(r.as_bytes()).ok())
            .map(str::to_string)
            .or_else(|| status.canonical_reason().map(str::to_string))
            .unwrap_or_default();
        let bytes = response.bytes().await.map_err(|e| PveError::Transport {
            url: self.base.clone(),
            message: chain(&e),
        })?;
        if status.is_success() {
            return serde_json::from_slice::<DataBody<T>>(&bytes)
                .map(|body| body.data)
                .map_err(|e| PveError::Decode {
                    path: path.to_string(),
                    message: e.to_string(),
                });
        }
        let message = error_text(&reason, &bytes);
        Err(match status.as_u16() {
            401 => PveError::Auth {
                token_id: self.token_id.clone(),
                status: 401,
                message,
            },
            403 => PveError::Forbidden {
                token_id: self.token_id.clone(),
                message,
            },
            code => PveError::Api {
                status: code,
                message,
            },
        })
    }
}

/// PVE's explanation of a failure: the body's `message` and `errors` when present, else the
/// reason phrase (where PVE puts its text, e.g. `500 CT 101 already running`).
fn error_text(reason: &str, body: &[u8]) -> String {
    let mut text = String::new();
    if let Ok(body) = serde_json::from_slice::<ErrorBody>(body) {
        if let Some(message) = body.message {
            text = message.trim().to_string();
        }
        if let Some(errors) = body.errors {
            let details: Vec<String> = errors
                .iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => format!("{k}: {}", s.trim()),
                    other => format!("{k}: {other}"),
                })
                .collect();
            if !details.is_empty() {
                if !text.is_empty() {
                    text.push_str(" — ");
                }
                text.push_str(&details.join("; "));
            }
        }
    }
    if text.is_empty() {
        text = reason.trim().to_string();
    }
    text
}

/// Percent-encodes a path segment or form value (a UPID holds `:`, `@`, `!`).
pub(super) fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// An error and all its causes, `a: b: c` (reqwest hides a TLS failure's text in the chain).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let shown = cause.to_string();
        if !text.contains(&shown) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_prefers_the_body_and_lists_parameter_errors() {
        let body = br#"{"data":null,"errors":{"vmid":"value must be at least 100"},"message":"Parameter verification failed.\n"}"#;
        assert_eq!(
            error_text("Parameter verification failed.", body),
            "Parameter verification failed. — vmid: value must be at least 100"
        );
        assert_eq!(
            error_text("CT 101 already running", br#"{"data":null}"#),
            "CT 101 already running"
        );
    }

    #[test]
    fn upids_are_encoded_as_one_segment() {
        assert_eq!(
            encode("UPID:pve1:1:2:3:vzstart:101:root@pam!iw:"),
            "UPID%3Apve1%3A1%3A2%3A3%3Avzstart%3A101%3Aroot%40pam%21iw%3A"
        );
    }
}

//! `POST /api/reload`: the configuration file read again and applied without a restart. The
//! work is the assembly's (a layer above); the API sees it through [`Reload`].

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use serde::Serialize;

use crate::config::{ConfigDiff, ConfigError};

/// What reloads the configuration (the assembly's reloader); the admin API only calls it.
#[async_trait]
pub trait Reload: Send + Sync {
    /// Reads the file again, validates it whole and applies it, or changes nothing. Reloads are
    /// serialised: a second call waits for the first.
    async fn reload(&self) -> Result<ConfigDiff, ReloadRefused>;
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadRefused {
    /// The file is invalid: every problem, each with its line.
    #[error("the configuration file is invalid ({} error(s))", .0.len())]
    Invalid(Vec<ConfigError>),
    /// The gateway was not started from a file (an embedder's own configuration).
    #[error("reload is not available: the gateway was not started from a configuration file")]
    Unavailable,
    /// The file is valid but could not be applied (a provider family unreachable…).
    #[error("the configuration could not be applied: {0}")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// One configuration problem as the API lists it.
#[derive(Serialize)]
struct Problem<'a> {
    line: Option<usize>,
    column: Option<usize>,
    route: Option<&'a str>,
    key: &'a str,
    message: &'a str,
    /// The whole problem as the log shows it.
    text: String,
}

/// What a reload changed, as the API answers it.
#[derive(Serialize)]
struct Changed<'a> {
    added: &'a [String],
    removed: &'a [String],
    changed: &'a [String],
    restart_needed: &'a [String],
}

/// The answer to `POST /api/reload`: 200 with what changed, 400 with every problem of an
/// invalid file, 404 without a file, 500 when a valid file could not be applied.
pub(super) async fn answer(reload: Option<&Arc<dyn Reload>>) -> Response<Vec<u8>> {
    let Some(reload) = reload else {
        return super::problem(
            StatusCode::NOT_FOUND,
            None,
            &ReloadRefused::Unavailable.to_string(),
        );
    };
    match reload.reload().await {
        Ok(diff) => super::json(
            StatusCode::OK,
            &Changed {
                added: &diff.added,
                removed: &diff.removed,
                changed: &diff.changed,
                restart_needed: &diff.restart_needed,
            },
        ),
        Err(ReloadRefused::Invalid(errors)) => {
            let listed: Vec<Problem<'_>> = errors
                .iter()
                .map(|error| Problem {
                    line: error.line,
                    column: error.column,
                    route: error.route.as_deref(),
                    key: &error.key,
                    message: &error.message,
                    text: error.to_string(),
                })
                .collect();
            let body = serde_json::json!({
                "type": "about:blank",
                "title": "Bad Request",
                "status": 400,
                "detail": ReloadRefused::Invalid(errors.clone()).to_string(),
                "errors": listed,
            });
            let body = serde_json::to_vec_pretty(&body).unwrap_or_default();
            super::respond(StatusCode::BAD_REQUEST, "application/problem+json", body)
        }
        Err(refused @ ReloadRefused::Unavailable) => {
            super::problem(StatusCode::NOT_FOUND, None, &refused.to_string())
        }
        Err(refused @ ReloadRefused::Failed(_)) => super::problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            &refused.to_string(),
        ),
    }
}

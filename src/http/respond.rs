//! Answers the gateway writes itself (never proxied): framed, so keep-alive clients never hang.

use bytes::Bytes;
use pingora::http::{Method, ResponseHeader};
use pingora::proxy::Session;
use pingora::Result;
use serde::Serialize;

/// Writes a complete answer: status, headers, `Content-Length` and body (none for `HEAD`).
pub async fn send(
    session: &mut Session,
    status: u16,
    headers: &[(&'static str, &str)],
    body: Bytes,
) -> Result<()> {
    let mut response = ResponseHeader::build(status, Some(headers.len() + 1))?;
    for (name, value) in headers {
        response.insert_header(*name, *value)?;
    }
    response.set_content_length(body.len())?;
    let head_only = session.req_header().method == Method::HEAD;
    let end = head_only || body.is_empty();
    session
        .write_response_header(Box::new(response), end)
        .await?;
    if !end {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<&'a str>,
}

/// The body of an RFC 9457 `application/problem+json` answer (also the admin API's errors).
pub fn problem_body(status: u16, route: Option<&str>, detail: &str) -> Vec<u8> {
    let title = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason())
        .unwrap_or("Error");
    // Serializing a struct of strings cannot fail.
    serde_json::to_vec(&Problem {
        kind: "about:blank",
        title,
        status,
        detail,
        route,
    })
    .unwrap_or_default()
}

/// An RFC 9457 `application/problem+json` answer, with `Retry-After` when the client should
/// come back, and `Cache-Control: no-store` (a CDN must never keep a 503 of ours).
pub async fn problem(
    session: &mut Session,
    status: u16,
    route: Option<&str>,
    detail: &str,
    retry_after_secs: Option<u64>,
) -> Result<()> {
    let body = problem_body(status, route, detail);
    let retry_after = retry_after_secs.map(|secs| secs.to_string());
    let mut headers = vec![
        ("content-type", "application/problem+json"),
        ("cache-control", "no-store"),
    ];
    if let Some(secs) = retry_after.as_deref() {
        headers.push(("retry-after", secs));
    }
    send(session, status, &headers, Bytes::from(body)).await
}

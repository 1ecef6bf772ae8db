//! HTTP helpers shared by the tests: raw HTTP/1.1 on a socket (to see exactly what goes over the
//! wire), checks of the gateway's answers, request bodies, and a Server-Sent Events reader.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::image::INDEX_BODY;

/// How long a raw exchange may take before the test fails.
const RAW_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.x
// ---------------------------------------------------------------------------------------------

/// `GET path` over HTTP/1.0 (the server closes after answering); the whole response as text.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n");
    String::from_utf8_lossy(&send_raw(addr, request.as_bytes()).await).into_owned()
}

/// Connects to `addr`, sends `request` as is and reads until the server closes; the raw answer.
pub async fn send_raw(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request).await.expect("request sent");
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .expect("response read");
        response
    };
    tokio::time::timeout(RAW_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("no complete answer from {addr} within {RAW_TIMEOUT:?}"))
}

/// Connects to `addr`, sends `request` and reads one answer: up to the end of its
/// `Content-Length` body (none means an empty body), or until the server closes. The raw text.
pub async fn exchange(addr: SocketAddr, request: &str) -> String {
    let read = async {
        let mut socket = TcpStream::connect(addr).await.expect("connect");
        socket.write_all(request.as_bytes()).await.expect("sent");
        let mut answer = Vec::new();
        let mut buffer = [0u8; 8192];
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&answer);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if answer.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
            }
        }
        String::from_utf8_lossy(&answer).into_owned()
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| panic!("no answer from {addr} within 10 s"))
}

/// Reads one HTTP/1.1 response framed by `Content-Length` from `stream`: (status, body).
pub async fn read_one_response(stream: &mut TcpStream) -> (u16, String) {
    let mut raw = Vec::new();
    let read = async {
        loop {
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).await.expect("read from the gateway");
            assert!(n > 0, "the gateway closed the connection: {raw:?}");
            raw.extend_from_slice(&buf[..n]);
            let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or_else(|| panic!("a response without Content-Length: {head}"));
            if raw.len() >= end + 4 + length {
                let status = head[9..12].parse().expect("a status code");
                let body = String::from_utf8_lossy(&raw[end + 4..end + 4 + length]);
                return (status, body.into_owned());
            }
        }
    };
    tokio::time::timeout(RAW_TIMEOUT, read)
        .await
        .expect("a response within 30 s")
}

/// Reads a response head (through the blank line) byte by byte, leaving whatever follows (an
/// upgraded connection's data) unread. Panics after `timeout`.
pub async fn read_head(stream: &mut TcpStream, timeout: Duration) -> String {
    let read = async {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).await.expect("response head");
            head.push(byte[0]);
        }
        String::from_utf8_lossy(&head).into_owned()
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| panic!("no response head within {timeout:?}"))
}

/// Decodes a `Transfer-Encoding: chunked` body.
pub fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or_else(|| panic!("bad chunked body: {:?}", String::from_utf8_lossy(raw)));
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .unwrap_or_else(|e| panic!("bad chunk size {size_text:?}: {e}"));
        raw = &raw[line_end + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// Raw HTTP/1 answers on one connection, parsed.
#[derive(Debug)]
pub struct RawAnswers {
    /// Status lines of the interim (1xx) answers, in order.
    pub interim: Vec<String>,
    /// The final answer's status line.
    pub status_line: String,
    /// Its body, de-chunked.
    pub body: Vec<u8>,
}

/// Splits raw HTTP/1 response bytes into interim (1xx) answers and the final one.
pub fn parse_responses(mut raw: &[u8]) -> RawAnswers {
    let mut interim = Vec::new();
    loop {
        let head_end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("incomplete response: {:?}", String::from_utf8_lossy(raw)));
        let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
        raw = &raw[head_end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default().to_string();
        let code = status_line.split_whitespace().nth(1).unwrap_or_default();
        if code.starts_with('1') && code != "101" {
            interim.push(status_line);
            continue;
        }
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            dechunk(raw)
        } else if let Some(length) = header("content-length") {
            let length: usize = length.parse().expect("a numeric content-length");
            raw[..length.min(raw.len())].to_vec()
        } else {
            raw.to_vec()
        };
        return RawAnswers {
            interim,
            status_line,
            body,
        };
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

/// `n` pseudo-random bytes (xorshift64*, seeded from the clock: a different body every run).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut state = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
        | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// The MD5 of `data` in hex, as the test image's CGI computes it (through the host's `md5sum`).
pub async fn md5_hex(data: &[u8]) -> String {
    let mut child = tokio::process::Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("md5sum runs");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(data).await.expect("data written to md5sum");
    drop(stdin);
    let output = child.wait_with_output().await.expect("md5sum output");
    assert!(output.status.success(), "md5sum failed");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .expect("md5sum printed a sum")
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Checks of answers (reqwest)
// ---------------------------------------------------------------------------------------------

/// One GET that must be answered 200 with the test image's index page; otherwise says what came.
pub async fn expect_index(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<(), String> {
    let response = client
        .get(url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    match response.text().await {
        Ok(body) if status == 200 && body == INDEX_BODY => Ok(()),
        Ok(body) => Err(format!("{status}: {body}")),
        Err(e) => Err(format!("{status}, body error {e:?}")),
    }
}

/// Asserts `response` is an RFC 9457 problem (`application/problem+json`) with `status`, whose
/// JSON body repeats the status and has a `detail`. Returns the headers and the body.
pub async fn expect_problem(
    response: reqwest::Response,
    status: u16,
) -> (reqwest::header::HeaderMap, serde_json::Value) {
    let headers = response.headers().clone();
    let got = response.status().as_u16();
    let text = response.text().await.expect("a problem body");
    assert_eq!(got, status, "status; body: {text}");
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("application/problem+json"),
        "content-type {content_type:?}; body: {text}"
    );
    let body: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the problem body is not JSON ({e}): {text}"));
    assert_eq!(body["status"], status, "problem body: {body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "problem without a detail: {body}"
    );
    (headers, body)
}

/// The `Retry-After` header in seconds; panics when it is missing or not a number.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> u64 {
    let value = headers
        .get("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After header in {headers:?}"));
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("Retry-After {value:?} is not a number of seconds"))
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events
// ---------------------------------------------------------------------------------------------

/// One parsed SSE event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// Its `id:`.
    pub id: u64,
    /// Its `data:`, one JSON object.
    pub data: serde_json::Value,
}

impl SseEvent {
    /// The `type` field of the data.
    pub fn kind(&self) -> &str {
        self.data["type"].as_str().unwrap_or("")
    }
}

/// An open event stream (a `text/event-stream` response), parsed incrementally. Every event must
/// carry an `id:` and one JSON `data:` line.
pub struct SseStream {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
    /// A `retry:` field was seen.
    pub retry_seen: bool,
    /// How many comment lines (`: keepalive`) were seen.
    pub comments: usize,
}

impl SseStream {
    /// Reads the body of `response` as an event stream (its status and headers are not checked).
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            stream: response.bytes_stream().boxed(),
            buffer: String::new(),
            retry_seen: false,
            comments: 0,
        }
    }

    /// The next event, or `None` after `timeout` (or when the stream ends).
    pub async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut id = None;
                let mut data = None;
                for line in block.lines() {
                    if line.starts_with("retry:") {
                        self.retry_seen = true;
                    } else if line.starts_with(':') {
                        self.comments += 1;
                    } else if let Some(value) = line.strip_prefix("id: ") {
                        id = value.trim().parse().ok();
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(value).expect("data is one JSON object"));
                    }
                }
                match (id, data) {
                    (Some(id), Some(data)) => return Some(SseEvent { id, data }),
                    (None, Some(data)) => panic!("an event without id: {data}"),
                    _ => continue,
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.stream.next()).await;
            match chunk {
                Ok(Some(Ok(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// Every event up to and including the first of `kind`; panics if none comes in `timeout`.
    pub async fn until(&mut self, kind: &str, timeout: Duration) -> Vec<SseEvent> {
        let deadline = Instant::now() + timeout;
        let mut events = Vec::new();
        while let Some(event) = self
            .next(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            let done = event.kind() == kind;
            events.push(event);
            if done {
                return events;
            }
        }
        panic!("no {kind} event within {timeout:?}; got {events:?}");
    }
}

//! The first bytes of a connection, judged before Pingora sees them: HTTP/2 preface or HTTP/1,
//! a whole request head or not yet, and whether Pingora would refuse the request anyway.
//!
//! Pure functions over bytes (no I/O, no route table), so that they can be fuzzed
//! (`fuzz/fuzz_targets/`) and unit-tested. The [early hold](crate::http::early_hold) uses them
//! to decide, under the head deadline, what a new connection carries; a request Pingora would
//! reject (ambiguous framing, two `Host`s, an absolute-form target naming another host,
//! `CONNECT`) is never held — it goes to Pingora at once, which answers 400 (405 for `CONNECT`),
//! and nothing is woken.

use pingora::http::RequestHeader;
use pingora::protocols::http::authority::validate_request_authority;

/// The client preface of HTTP/2 over cleartext (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Headers parsed in a request head (more: the connection goes to Pingora, which takes more).
pub const MAX_HEADERS: usize = 64;

/// What the first bytes of a cleartext connection say about its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preface {
    /// Every byte so far matches the HTTP/2 preface, which is not complete yet.
    Partial,
    /// The whole HTTP/2 preface.
    Http2,
    /// A byte differs from the preface: HTTP/1 (decided at the first differing byte, so a
    /// short request such as `OPTIONS / HTTP/1.0` is never left waiting for 24 bytes).
    Http1,
}

/// Judges `bytes`, the first bytes of a connection, against the HTTP/2 preface.
pub fn h2c_preface(bytes: &[u8]) -> Preface {
    let n = bytes.len().min(H2_PREFACE.len());
    if bytes[..n] != H2_PREFACE[..n] {
        Preface::Http1
    } else if n == H2_PREFACE.len() {
        Preface::Http2
    } else {
        Preface::Partial
    }
}

/// An HTTP/1 request head as read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Head<'a> {
    /// Not a whole head yet.
    Incomplete,
    /// Not HTTP/1 at all, or more headers than [`MAX_HEADERS`]: Pingora decides.
    Unparsed,
    /// A whole head.
    Complete(ParsedHead<'a>),
}

/// A whole request head, with what the early hold needs to know about it.
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedHead<'a> {
    /// The method.
    pub method: &'a str,
    /// The request target as written (origin or absolute form).
    pub target: &'a str,
    /// The single `Host` header's value, if any.
    pub host: Option<&'a [u8]>,
    /// `Some(why)`: Pingora would refuse this request (400, or 405 for `CONNECT`).
    pub refused: Option<&'static str>,
    /// The request announces a body (a `Transfer-Encoding`, or a `Content-Length` other than 0).
    pub has_body: bool,
    /// The length of the head in bytes (what follows belongs to the body or a next request).
    pub len: usize,
}

/// Parses the request head at the start of `bytes`.
pub fn parse_head(bytes: &[u8]) -> Head<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Incomplete,
        Err(_) => return Head::Unparsed,
    };
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Head::Unparsed;
    };
    let mut host = None;
    let mut hosts = 0;
    let mut has_body = false;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = Some(header.value);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding")
            || (header.name.eq_ignore_ascii_case("content-length")
                && header.value.trim_ascii() != b"0")
        {
            has_body = true;
        }
    }
    let refused = if hosts > 1 {
        Some("more than one Host header")
    } else {
        refusal(&request)
    };
    Head::Complete(ParsedHead {
        method,
        target,
        host: if hosts == 1 { host } else { None },
        refused,
        has_body,
        len,
    })
}

/// The host a request is routed by: the authority of an absolute-form target
/// (`GET http://host/path`, and HTTP/2's `:authority`, which Pingora gives a scheme), else the
/// `Host` header. An authority-form target (`GET host:80`, meant for `CONNECT`) names no route:
/// the client's `Host` does, as the backend will see it.
pub fn routing_host<'a>(uri: &'a http::Uri, host: Option<&'a [u8]>) -> Option<&'a [u8]> {
    match (uri.scheme(), uri.host()) {
        (Some(_), Some(authority)) => Some(authority.as_bytes()),
        _ => host,
    }
}

/// The request of `head` as `http` parts (method, target, headers; no body), what the gate's
/// decisions look at. `raw` is the head's bytes (`&bytes[..head.len]`). `None` if a part is not
/// valid for the `http` crate (the request then goes to Pingora, which decides).
pub fn request_parts(head: &ParsedHead<'_>, raw: &[u8]) -> Option<http::request::Parts> {
    let uri: http::Uri = head.target.parse().ok()?;
    let mut parts = http::Request::builder()
        .method(head.method)
        .uri(uri)
        .body(())
        .ok()?
        .into_parts()
        .0;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    parsed.parse(raw).ok()?;
    for header in parsed.headers.iter() {
        let name = http::HeaderName::from_bytes(header.name.as_bytes()).ok()?;
        let value = http::HeaderValue::from_bytes(header.value).ok()?;
        parts.headers.append(name, value);
    }
    Some(parts)
}

/// Why Pingora would refuse `request` before any filter runs, if it would: `CONNECT`, an
/// authority that is ambiguous or differs from `Host` (Pingora's own check, called here),
/// conflicting or invalid `Content-Length`s, `Transfer-Encoding` on HTTP/1.0, or a final
/// transfer coding other than `chunked`.
fn refusal(request: &httparse::Request<'_, '_>) -> Option<&'static str> {
    let method = request.method?;
    if method == "CONNECT" {
        return Some("CONNECT is not proxied");
    }
    let mut header = RequestHeader::build(method, request.path?.as_bytes(), None).ok()?;
    for h in request.headers.iter() {
        if h.name.eq_ignore_ascii_case("host") {
            let value = http::HeaderValue::from_bytes(h.value).ok()?;
            if header.append_header(http::header::HOST, value).is_err() {
                return Some("invalid Host header");
            }
        }
    }
    if validate_request_authority(&header).is_err() {
        return Some("the request target's authority is ambiguous or differs from Host");
    }
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut length: Option<u64> = None;
    let mut length_invalid = false;
    for h in request.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            for part in h.value.split(|&b| b == b',') {
                match parse_digits(part.trim_ascii()) {
                    Some(n) if length.is_none_or(|seen| seen == n) => length = Some(n),
                    _ => length_invalid = true,
                }
            }
        }
    }
    match transfer_encoding {
        Some(_) if request.version == Some(0) => {
            Some("Transfer-Encoding is not allowed in HTTP/1.0")
        }
        Some(last) => {
            let token = last.rsplit(|&b| b == b',').next().unwrap_or(last);
            (!token.trim_ascii().eq_ignore_ascii_case(b"chunked"))
                .then_some("the final Transfer-Encoding is not chunked")
        }
        None => length_invalid.then_some("invalid or conflicting Content-Length"),
    }
}

/// A decimal number made of digits only (no sign, no spaces), without overflow.
fn parse_digits(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then_some(())
            .and_then(|()| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(head: &str) -> Option<&'static str> {
        match parse_head(head.as_bytes()) {
            Head::Complete(parsed) => parsed.refused,
            other => panic!("not complete: {other:?}"),
        }
    }

    #[test]
    fn the_h2c_preface_is_decided_at_the_first_differing_byte() {
        assert_eq!(h2c_preface(b"PRI * HT"), Preface::Partial);
        assert_eq!(h2c_preface(H2_PREFACE), Preface::Http2);
        assert_eq!(h2c_preface(b"O"), Preface::Http1);
        assert_eq!(h2c_preface(b"PRI / HTTP/1.1"), Preface::Http1);
        assert_eq!(h2c_preface(b"OPTIONS / HTTP/1.0\r\n\r\n"), Preface::Http1);
    }

    #[test]
    fn valid_heads_are_not_refused() {
        assert_eq!(refused("GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"), None);
        assert_eq!(
            refused("GET http://a.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n"),
            None
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5, 5\r\n\r\n"),
            None
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            None
        );
        assert_eq!(refused("OPTIONS / HTTP/1.0\r\n\r\n"), None);
    }

    #[test]
    fn what_pingora_refuses_is_refused() {
        for head in [
            "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5x\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: -5\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
            "GET http://b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
            "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(refused(head).is_some(), "{head:?}");
        }
    }

    #[test]
    fn only_an_absolute_form_target_routes_by_its_authority() {
        // Found by the `classify` fuzz target: `GET 2 HTTP/1.1` parses as authority-form, and
        // routing by it would pick another route than the Host the backend sees.
        let uri: http::Uri = "2".parse().unwrap();
        assert_eq!(routing_host(&uri, Some(b"a.test")), Some(&b"a.test"[..]));
        let uri: http::Uri = "a.test:80".parse().unwrap();
        assert_eq!(routing_host(&uri, Some(b"b.test")), Some(&b"b.test"[..]));
        let uri: http::Uri = "http://a.test/x".parse().unwrap();
        assert_eq!(routing_host(&uri, Some(b"a.test")), Some(&b"a.test"[..]));
        assert_eq!(routing_host(&uri, None), Some(&b"a.test"[..]));
        let uri: http::Uri = "/x".parse().unwrap();
        assert_eq!(routing_host(&uri, None), None);
    }

    #[test]
    fn empty_lines_before_the_request_line_are_skipped() {
        // Found by the `head` fuzz target (the invariant was wrong, not the parser): httparse,
        // like Pingora, ignores CRLFs before a request line (RFC 9112 §2.2).
        let Head::Complete(head) = parse_head(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n") else {
            panic!("complete");
        };
        assert_eq!(head.method, "GET");
        assert_eq!(head.len, 29);
    }

    #[test]
    fn heads_report_their_body_and_length() {
        let head = "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello";
        let Head::Complete(parsed) = parse_head(head.as_bytes()) else {
            panic!("complete");
        };
        assert!(parsed.has_body);
        assert_eq!(parsed.len, head.len() - 5);
        assert_eq!(parsed.host, Some(&b"a.test"[..]));
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHo"), Head::Incomplete);
        assert_eq!(parse_head(b"\x16\x03\x01"), Head::Unparsed);
    }
}

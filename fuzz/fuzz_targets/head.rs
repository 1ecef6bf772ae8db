//! The early hold's reading of a connection's first bytes: the h2c preface check and the
//! request-head parser, with their invariants.
#![no_main]

// The gateway's own classification module, compiled here by path.
#[allow(dead_code)]
#[path = "../../src/http/classify.rs"]
mod classify;

use classify::{h2c_preface, parse_head, Head, Preface, H2_PREFACE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match h2c_preface(data) {
        Preface::Http2 => assert!(data.starts_with(H2_PREFACE)),
        Preface::Partial => assert!(H2_PREFACE.starts_with(data) && data.len() < H2_PREFACE.len()),
        Preface::Http1 => assert!(!data.is_empty() && !data.starts_with(H2_PREFACE)),
    }
    if let Head::Complete(head) = parse_head(data) {
        assert!(head.len <= data.len());
        // Empty lines before the request line are skipped (as Pingora does).
        let start = data.iter().position(|b| !matches!(b, b'\r' | b'\n')).unwrap_or(0);
        assert!(data[start..].starts_with(head.method.as_bytes()));
        // A prefix of a whole head is never whole, unless it is the head itself.
        if head.len > 0 {
            assert!(!matches!(parse_head(&data[..head.len - 1]), Head::Complete(_)));
        }
    }
});

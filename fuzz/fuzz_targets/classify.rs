//! Request classification of the early hold: what Pingora would refuse, the request's parts and
//! whether it is a browser navigation, on arbitrary heads. Must never panic; whatever is not
//! refused has at most one Host, is routed by that Host (an absolute-form authority equals it),
//! and is not CONNECT.
#![no_main]

// The gateway's own modules, compiled here by path.
#[allow(dead_code)]
#[path = "../../src/http/classify.rs"]
mod classify;
#[allow(dead_code)]
#[path = "../../src/http/page.rs"]
mod page;

use classify::{parse_head, request_parts, Head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Head::Complete(head) = parse_head(data) else {
        return;
    };
    let Some(parts) = request_parts(&head, &data[..head.len]) else {
        return;
    };
    let _ = page::is_browser_navigation(&parts);
    if head.refused.is_none() {
        let hosts = parts.headers.get_all(http::header::HOST).iter().count();
        assert!(hosts <= 1, "{parts:?}");
        // A route is chosen by the Host the backend sees (an absolute-form authority must equal
        // it), whenever there is one.
        let header = parts.headers.get(http::header::HOST).map(|value| value.as_bytes());
        if let Some(host) = header {
            match (parts.uri.scheme(), parts.uri.authority()) {
                (Some(_), Some(authority)) => assert_eq!(authority.as_str().as_bytes(), host),
                _ => assert_eq!(classify::routing_host(&parts.uri, header), Some(host)),
            }
        }
        assert_ne!(parts.method, http::Method::CONNECT);
    }
});

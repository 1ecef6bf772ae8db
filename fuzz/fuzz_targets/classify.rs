//! Request classification of the early hold: what Pingora would refuse, the request's parts and
//! whether it is a browser navigation, on arbitrary heads. Must never panic; a refused request
//! is never one the gate would look at.
#![no_main]

use idlewatcher::http::classify::{parse_head, request_parts, Head};
use idlewatcher::http::page::is_browser_navigation;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Head::Complete(head) = parse_head(data) else {
        return;
    };
    let Some(parts) = request_parts(&head, &data[..head.len]) else {
        return;
    };
    let _ = is_browser_navigation(&parts);
    if head.refused.is_none() {
        // What Pingora accepts has at most one Host, and an absolute-form authority equal to it.
        let hosts = parts.headers.get_all(http::header::HOST).iter().count();
        assert!(hosts <= 1, "{parts:?}");
        if let (Some(authority), Some(host)) =
            (parts.uri.authority(), parts.headers.get(http::header::HOST))
        {
            assert_eq!(authority.as_str().as_bytes(), host.as_bytes(), "{parts:?}");
        }
        assert_ne!(parts.method, http::Method::CONNECT);
    }
});

//! The browser loading page: who gets it, and how it is rendered.
//!
//! Only browser *navigations* get the page (the README's rule, "What clients get"): `Sec-Fetch-Mode: navigate`, or,
//! from clients that send no `Sec-Fetch-*` headers, an `Accept` that lists `text/html` with a
//! non-zero quality. Never a non-GET request, an Upgrade, a fetch/XHR or a sub-resource: those
//! are held and proxied instead, so an API client never receives HTML with a 503 (let alone a 200
//! a CDN could cache).

use http::request::Parts;
use http::Method;

/// The page template (see `assets/README.md` for its contract).
pub const TEMPLATE: &str = include_str!("../../assets/loading.html");
/// The page's script, served at `{prefix}loading.js`.
pub const SCRIPT: &str = include_str!("../../assets/loading.js");
/// The page's style sheet, served at `{prefix}style.css`.
pub const STYLE: &str = include_str!("../../assets/style.css");
/// The page's content security policy: nothing but our own assets and event stream.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src data:";

/// Whether the request is a browser navigation that should see the loading page (a Pingora
/// `RequestHeader` dereferences to the `Parts` this takes).
pub fn is_browser_navigation(request: &Parts) -> bool {
    if request.method != Method::GET || is_upgrade(request) {
        return false;
    }
    let headers = &request.headers;
    if let Some(mode) = headers.get("sec-fetch-mode") {
        return mode.as_bytes().eq_ignore_ascii_case(b"navigate");
    }
    if headers.contains_key("sec-fetch-dest") || headers.contains_key("sec-fetch-site") {
        return false;
    }
    headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(accepts_html)
}

/// Whether one media range of an `Accept` header is `text/html` with quality above zero.
fn accepts_html(range: &str) -> bool {
    let mut parts = range.split(';');
    let media = parts.next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("text/html") {
        return false;
    }
    for parameter in parts {
        let Some((name, value)) = parameter.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("q") {
            return value
                .trim()
                .parse::<f32>()
                .map(|q| q > 0.0)
                .unwrap_or(false);
        }
    }
    true
}

/// Whether the request asks for a protocol upgrade (WebSocket and the like).
pub fn is_upgrade(request: &Parts) -> bool {
    let headers = &request.headers;
    headers.contains_key(http::header::UPGRADE)
        || headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Renders the page for `route`, in one pass over the template (a name containing a placeholder
/// is never expanded again), every value HTML-escaped.
pub fn render(route: &str, prefix: &str, retry_seconds: u64) -> String {
    let retry = retry_seconds.to_string();
    let mut page = String::with_capacity(TEMPLATE.len() + 2 * route.len() + 64);
    let mut rest = TEMPLATE;
    while let Some(start) = rest.find("{{") {
        page.push_str(&rest[..start]);
        let after = &rest[start..];
        let (value, length) = if after.starts_with("{{ROUTE}}") {
            (route, "{{ROUTE}}".len())
        } else if after.starts_with("{{PREFIX}}") {
            (prefix, "{{PREFIX}}".len())
        } else if after.starts_with("{{RETRY_SECONDS}}") {
            (retry.as_str(), "{{RETRY_SECONDS}}".len())
        } else {
            ("{{", 2)
        };
        escape_html_into(value, &mut page);
        rest = &after[length..];
    }
    page.push_str(rest);
    page
}

fn escape_html_into(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_route_names_stay_text() {
        let page = render(
            "</title><script>alert(\"x\")</script>{{PREFIX}}",
            "/.iw/",
            3,
        );
        assert!(!page.contains("<script>alert"));
        assert!(page.contains("&lt;/title&gt;&lt;script&gt;alert(&quot;x&quot;)"));
        assert!(
            page.contains("{{PREFIX}}"),
            "a placeholder in a name is not expanded"
        );
        assert!(page.contains("src=\"/.iw/loading.js\""));
        assert_eq!(page.matches("<script").count(), 1);
    }

    #[test]
    fn q_zero_is_refused() {
        assert!(accepts_html("text/html"));
        assert!(accepts_html(" text/html ;q=0.5"));
        assert!(!accepts_html("text/html;q=0"));
        assert!(!accepts_html("text/html; q=0.0"));
        assert!(!accepts_html("*/*"));
        assert!(!accepts_html("application/xhtml+xml"));
    }

    #[test]
    fn assets_fit_the_budget() {
        assert!(TEMPLATE.len() + SCRIPT.len() + STYLE.len() <= 16 * 1024);
    }
}

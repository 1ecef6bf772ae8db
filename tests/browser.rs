//! Issue 3 acceptance: the loading page in a real browser (headless Chromium through
//! chromedriver), against the real gateway and the real Docker engine.
#![allow(clippy::unwrap_used, unreachable_pub)] // A test: a failed unwrap is a failed test; helpers are shared.

mod common;

use std::time::{Duration, UNIX_EPOCH};

use common::browser::Browser;
use common::container::TestContainer;
use common::engine::EventCounter;
use common::gateway::{one_route, Gateway};
use common::image::INDEX_BODY;

/// The timestamp (ms since the epoch) of the newest `kind` event in the route's history.
async fn event_millis(gateway: &Gateway, host: &str, kind: &str) -> f64 {
    let history = gateway
        .event_history(host, kind, Duration::from_secs(2))
        .await;
    let event = history
        .iter()
        .rev()
        .find(|event| event["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} event in {history:?}"));
    let at = humantime::parse_rfc3339(event["timestamp"].as_str().expect("timestamp"))
        .expect("RFC 3339");
    at.duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
        * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loading_page_follows_the_wake_and_lands_on_the_backend_page() {
    // A backend that takes ~5 s to listen, so the page has something to show (and is still
    // the loading page when it is read, even when the browser is slow on a loaded machine).
    let container =
        TestContainer::with_cmd("page-ok", &["sh", "-c", "sleep 5; exec /bin/serve"]).await;
    let gateway = Gateway::start(&one_route("pageok", &container.name, "")).await;
    let browser = Browser::start().await;
    let url = gateway.url("pageok.test", "/");
    browser.client.goto(&url).await.expect("navigation");

    // The loading page, naming the route, listing the wake's start.
    assert_eq!(browser.text("#route-name").await.as_deref(), Some("pageok"));
    browser
        .wait_until(
            "return document.querySelector('#events li[data-type=\"starting\"]') !== null",
            Duration::from_secs(5),
            "the page lists `starting`",
        )
        .await;
    assert_eq!(
        browser
            .eval("return document.title")
            .await
            .as_str()
            .map(|t| t.contains("pageok")),
        Some(true)
    );

    // It lands on the backend's own page by itself.
    browser
        .wait_until(
            &format!(
                "return document.body !== null && document.body.innerText.includes({:?})",
                INDEX_BODY.trim()
            ),
            Duration::from_secs(30),
            "the browser lands on the backend's page",
        )
        .await;
    let shown = browser
        .eval(
            "const nav = performance.getEntriesByType('navigation')[0];\
             return performance.timeOrigin + nav.domContentLoadedEventEnd;",
        )
        .await
        .as_f64()
        .expect("navigation timing");
    let ready = event_millis(&gateway, "pageok.test", "ready").await;
    let delay = shown - ready;
    println!("MEASURE browser: `ready` event → backend page shown: {delay:.1} ms");
    assert!(delay >= 0.0, "the backend page cannot precede readiness");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_wake_shows_the_reason_and_retry_starts_a_new_wake() {
    // A backend whose process exits at once: every wake fails, quickly.
    let container = TestContainer::with_cmd("page-fail", &["sh", "-c", "exit 3"]).await;
    let engine = EventCounter::new(&container.name);
    let gateway = Gateway::start(&one_route(
        "pagefail",
        &container.name,
        "      wake_timeout: 10s\n      retry_backoff: 1s\n      show_details: true\n",
    ))
    .await;
    let browser = Browser::start().await;
    browser
        .client
        .goto(&gateway.url("pagefail.test", "/"))
        .await
        .expect("navigation");
    browser
        .wait_until(
            "const e = document.querySelector('#error');\
             return e !== null && !e.hidden && e.innerText.length > 0",
            Duration::from_secs(15),
            "the page shows the error",
        )
        .await;
    let reason = browser.text("#error").await.unwrap_or_default();
    assert!(
        reason.contains("exited while starting"),
        "the reason is shown: {reason:?}"
    );
    assert_eq!(
        browser
            .eval("const b = document.querySelector('#retry'); return b.tagName === 'BUTTON' && !b.hidden")
            .await,
        serde_json::json!(true),
        "a real, visible retry button"
    );
    assert!(
        engine
            .wait_for_count("start", 1, Duration::from_secs(5))
            .await
    );
    assert_eq!(engine.count("start"), 1);

    // After the backoff, the button starts a new wake: a second start reaches the engine.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let retry = browser
        .client
        .find(fantoccini::Locator::Css("#retry"))
        .await
        .expect("retry button");
    retry.click().await.expect("click");
    assert!(
        engine
            .wait_for_count("start", 2, Duration::from_secs(10))
            .await,
        "no new start after retry: {:?}",
        engine.actions()
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_route_name_is_shown_as_text() {
    let hostile = r#"<img src=x onerror="document.title='pwned'">"#;
    let config = format!(
        "idlewatcher:\n  listen: [\"@LISTEN@\"]\n  routes:\n    - name: '{hostile}'\n      hosts: [\"hostile.test\"]\n      docker: {{ container: idlewatcher-test-no-such-container }}\n      port: 80\n",
        hostile = hostile.replace('\'', "''")
    );
    let gateway = Gateway::start(&config).await;
    // On a 320 px wide phone screen, to check the layout too.
    let browser = Browser::start_narrow(320).await;
    browser
        .client
        .goto(&gateway.url("hostile.test", "/"))
        .await
        .expect("navigation");
    browser
        .wait_until(
            "return document.querySelector('#events li') !== null",
            Duration::from_secs(5),
            "events are listed",
        )
        .await;
    assert_eq!(browser.text("#route-name").await.as_deref(), Some(hostile));
    assert_eq!(
        browser
            .eval("return document.querySelectorAll('img').length")
            .await,
        serde_json::json!(0),
        "no element was injected"
    );
    let title = browser.eval("return document.title").await;
    assert_ne!(title, serde_json::json!("pwned"));
    assert!(
        title.as_str().is_some_and(|t| t.contains("<img")),
        "{title}"
    );
    // Readable at 320 px: the viewport is that wide and nothing scrolls sideways.
    assert_eq!(
        browser.eval("return window.innerWidth").await,
        serde_json::json!(320)
    );
    assert_eq!(
        browser
            .eval("return document.documentElement.scrollWidth <= window.innerWidth")
            .await,
        serde_json::json!(true),
        "the page scrolls sideways at 320 px"
    );
    // The error (the container does not exist) is announced and the button is reachable.
    browser
        .wait_until(
            "const e = document.querySelector('#error'); return e !== null && !e.hidden",
            Duration::from_secs(5),
            "the error is shown",
        )
        .await;
    assert_eq!(
        browser
            .eval("return document.querySelector('#error').getAttribute('role')")
            .await,
        serde_json::json!("alert")
    );
    browser.close().await;
}

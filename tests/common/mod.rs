//! Utilities shared by the integration tests (`mod common;` in a test file).
//!
//! Each integration test binary compiles this module on its own and uses only part of it, so
//! unused items are expected here rather than warned about.
#![allow(dead_code)]

pub mod browser;
pub mod docker;
pub mod gateway;
pub mod pve;

/// Sends the library's `tracing` output to the test harness (shown for failed tests, or with
/// `--nocapture`); level from `RUST_LOG`, default `info`. Safe to call from every test.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

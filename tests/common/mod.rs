//! Utilities shared by the integration tests (`mod common;` in a test file).
//!
//! Each integration test binary compiles this module on its own and uses only part of it, so
//! unused items are expected here rather than warned about.
#![allow(dead_code)]

pub mod docker;

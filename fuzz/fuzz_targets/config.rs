//! The configuration parser on arbitrary text: it must return a configuration or errors, never
//! panic, and displaying an error must not panic either.
#![no_main]

// The configuration module of the gateway itself, compiled here by path.
#[allow(dead_code, unused_imports)]
#[path = "../../src/config/mod.rs"]
mod config;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = config::parse(text) {
        for error in &errors.0 {
            let _ = error.to_string();
        }
    }
});

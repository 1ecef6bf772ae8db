//! The configuration parser on arbitrary text: it must return a configuration or errors, never
//! panic, and every error that came from the file must carry a line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = idlewatcher::config::parse(text) {
        for error in &errors.0 {
            // Displaying an error must not panic either.
            let _ = error.to_string();
        }
    }
});

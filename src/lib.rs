//! idlewatcher (work in progress skeleton).
pub mod config;
pub mod providers;
pub mod wheel;

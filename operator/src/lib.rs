//! Tether's operator: reconciles `RemoteSession`s (time windows, expiry, status and Events)
//! and publishes metrics. The binary in `main.rs` wires it to the API server.

#![forbid(unsafe_code)]

pub mod controllers;
pub mod metrics;
pub mod settings;

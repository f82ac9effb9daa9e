//! Tether's operator: reconciles `RemoteSession`s (time windows, expiry, consent, status and
//! Events), runs the credential authority (CA, token signing keys, revocations) and publishes
//! metrics. The binary in `main.rs` wires it to the API server.

#![forbid(unsafe_code)]

pub mod controllers;
pub mod credentials;
pub mod leader;
pub mod metrics;
pub mod notify;
pub mod recordings;
pub mod settings;

pub use tether_telemetry::error_chain;

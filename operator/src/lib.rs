//! Tether's operator: reconciles `RemoteSession`s (time windows, expiry, consent, status and
//! Events), runs the credential authority (CA, token signing keys, revocations) and publishes
//! metrics. The binary in `main.rs` wires it to the API server.

#![forbid(unsafe_code)]

pub mod controllers;
pub mod credentials;
pub mod metrics;
pub mod notify;
pub mod recordings;
pub mod settings;

/// An error with its chain of causes, `: `-separated, for logs.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

//! Telemetry shared by Tether's binaries: structured logs (plain or JSON), a Prometheus
//! registry, and the HTTP endpoint that serves `/metrics`, `/healthz` and `/readyz`.

#![forbid(unsafe_code)]

mod http;
mod logging;

pub use http::{Health, serve};
pub use logging::{BODY_LOGGING_TARGETS, LogFormat, LoggingArgs, init_logging};

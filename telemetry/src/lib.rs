//! Telemetry shared by Tether's binaries: structured logs (plain or JSON), a Prometheus
//! registry, the HTTP endpoint that serves `/metrics`, `/healthz` and `/readyz`, the
//! shutdown signal and error chains every binary prints, and (feature `kube`) kubeconfig
//! loading for the binaries that talk to Kubernetes.

#![forbid(unsafe_code)]

mod http;
#[cfg(feature = "kube")]
pub mod kubeconfig;
mod logging;
mod shutdown;

pub use http::{Health, serve};
pub use logging::{BODY_LOGGING_TARGETS, LogFormat, LoggingArgs, init_logging};
pub use shutdown::{SignalError, error_chain, shutdown_signal};

//! A real, local Kubernetes control plane for Tether's demo and tests.
//!
//! - [`build`] compiles etcd, kube-apiserver, kube-controller-manager and helm from the
//!   official Go modules and caches them per version, in the directory layout
//!   `KUBEBUILDER_ASSETS` uses, together with versitygw, the S3-compatible server that
//!   session-recording tests upload to.
//! - [`ControlPlane`] starts etcd, kube-apiserver (RBAC and admission on, its own CA) and
//!   optionally kube-controller-manager on free loopback ports, with users that authenticate
//!   by static token, and writes a kubeconfig.
//! - [`node`] adds a real node (containerd, runc, CNI, kubelet, kube-proxy) to run pods.
//! - [`shared`] gives every test in a test binary the same control plane, stopped and cleaned
//!   up when the binary exits, whatever way it exits.

pub mod assets;
pub mod build;
pub mod certs;
mod env;
pub mod node;
pub mod process;
pub mod shared;

pub use assets::Assets;
pub use env::{ControlPlane, Options, StartupTimes, User, default_users};

/// Kubernetes version of the local control plane (kube-apiserver, kube-controller-manager).
pub const KUBERNETES_VERSION: &str = "1.35.8";

/// etcd version, the 3.6 line that Kubernetes 1.35 is tested with.
pub const ETCD_VERSION: &str = "3.6.16";

/// Helm version used to lint, render and install the chart.
pub const HELM_VERSION: &str = "4.3.1";

/// versitygw version: the S3-compatible object store (posix backend) that tests upload session
/// recordings to, built from `github.com/versity/versitygw` like the control plane.
pub const VERSITYGW_VERSION: &str = "1.8.0";

/// Oldest Go toolchain that can build the pinned Kubernetes version.
pub const MIN_GO_VERSION: (u32, u32) = (1, 25);

/// Everything that can go wrong building or running the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system or process operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A binary could not be started.
    #[error("failed to start {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key could not be generated.
    #[error("failed to generate the {what}")]
    Pki {
        /// Which part of the PKI.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },
    /// The binaries have not been built yet.
    #[error(
        "{binary} not found in {searched}: run `cargo xtask controlplane` (or `cargo xtask test`, which builds it first)"
    )]
    MissingBinary {
        /// The binary that is missing.
        binary: String,
        /// Where it was looked for.
        searched: String,
    },
    /// No usable Go toolchain.
    #[error("{0}")]
    Go(String),
    /// A build command failed.
    #[error("failed to build {what}: `{command}` exited with {status}\n{output}")]
    Build {
        /// What was being built.
        what: String,
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The last lines of its output.
        output: String,
    },
    /// A component did not become ready in time or exited while starting.
    #[error("{component} {problem}; last log lines ({log}):\n{tail}")]
    Startup {
        /// The component (etcd, kube-apiserver, …).
        component: String,
        /// What went wrong.
        problem: String,
        /// Path of its log file.
        log: String,
        /// The end of its log.
        tail: String,
    },
    /// The Kubernetes client could not be configured or a request failed.
    #[error("{what}")]
    Kube {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

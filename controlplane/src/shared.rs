//! One control plane per test binary, started on first use and shared by every test in it.
//!
//! Tests each run in their own tokio runtime, so the shared value holds no client: each test
//! asks for its own with [`ControlPlane::client`]. The control plane lives until the test
//! binary exits; its watchdog then stops the processes and removes the directory, also when a
//! test panicked or the binary was killed.

use std::io::Write;
use std::sync::OnceLock;

use crate::{ControlPlane, Options};

static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

/// The shared control plane, started with default [`Options`] on first call.
///
/// # Panics
///
/// Panics (failing the calling test) with the start-up error, including the failing
/// component's log, if the control plane cannot start.
pub fn control_plane() -> &'static ControlPlane {
    let result = SHARED.get_or_init(|| {
        // Start on a thread of its own: the caller may already be inside a runtime.
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| format!("failed to start a runtime: {e}"))?;
                    let cp = runtime
                        .block_on(ControlPlane::start(Options::default()))
                        .map_err(|e| error_chain(&e))?;
                    // Written straight to stderr so it shows even when test output is captured.
                    let _ = writeln!(
                        std::io::stderr(),
                        "tether-controlplane: Kubernetes v{} ready at {} in {}; kubeconfig {}",
                        cp.version(),
                        cp.server(),
                        cp.startup(),
                        cp.kubeconfig().display()
                    );
                    Ok(cp)
                })
                .join()
                .unwrap_or_else(|_| Err("the control plane start-up thread panicked".into()))
        })
    });
    match result {
        Ok(cp) => cp,
        Err(e) => panic!("the local control plane did not start: {e}"),
    }
}

/// An error with its chain of causes, one per line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!("\n  caused by: {cause}"));
        source = cause.source();
    }
    text
}

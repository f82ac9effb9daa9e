//! The operator's controllers, one per kind, and the context they share.

pub mod assistance_request;
pub mod device_inventory;
pub mod enrollment;
pub mod policies;
pub mod relay;
pub mod remote_session;
pub mod retention;
pub mod session_schedule;
pub mod signers;
pub mod toolkit;

use std::sync::Arc;

use kube::Client;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use tether_crds::device::Device;
use tether_crds::remote_session::RemoteSession;

use crate::credentials::Credentials;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::settings::Settings;

/// How long a controller may take to finish after shutdown began (its reconciles in flight)
/// before it is stopped where it is.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `task` until it ends by itself or, once `shutdown` is cancelled, for at most `grace`
/// more. A controller is asked to shut down gracefully, but one whose watch keeps failing
/// (forbidden to a namespaced operator, an API server that went away) may never get to
/// notice: it must not keep the operator from stopping. Returns whether it finished by
/// itself.
pub async fn until_shutdown(
    name: &'static str,
    task: impl std::future::Future<Output = ()>,
    shutdown: tokio_util::sync::CancellationToken,
    grace: std::time::Duration,
) -> bool {
    tokio::pin!(task);
    tokio::select! {
        () = &mut task => return true,
        () = shutdown.cancelled() => {}
    }
    match tokio::time::timeout(grace, task).await {
        Ok(()) => true,
        Err(_) => {
            tracing::warn!(
                controller = name,
                grace = ?grace,
                "Stopped a controller that had not finished its shutdown"
            );
            false
        }
    }
}

/// Shared by every reconcile: the client, the one Event recorder, metrics, settings, the
/// credential authority and the Device cache.
pub struct Context {
    /// Client with the operator's identity.
    pub client: Client,
    /// Publishes Events as `tether-operator`.
    pub recorder: Recorder,
    /// The operator's metrics.
    pub metrics: Metrics,
    /// Operator-wide settings.
    pub settings: Settings,
    /// Issues and revokes credentials.
    pub credentials: Arc<Credentials>,
    /// Every Device the operator watches.
    pub devices: Store<Device>,
    /// Every RemoteSession the operator watches (the session controller's cache).
    pub sessions: Store<RemoteSession>,
    /// Whether `sessions` has listed every session once.
    pub sessions_synced: Arc<std::sync::atomic::AtomicBool>,
    /// The SessionPolicies in scope and the cluster-wide one.
    pub policies: policies::PolicyCache,
    /// Delivers request notifications, when email or a webhook is configured.
    pub notifier: Option<Notifier>,
    /// Whether the recording store answers (for sessions that must be recorded).
    pub recording_store: crate::recordings::StoreProbe,
    /// When this operator process started: transitions due before it are caught up, not
    /// late.
    pub started_at: jiff::Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn a_controller_that_ignores_shutdown_is_stopped_after_the_grace() {
        let shutdown = CancellationToken::new();
        let stuck = until_shutdown(
            "stuck",
            std::future::pending::<()>(),
            shutdown.clone(),
            Duration::from_millis(20),
        );
        let handle = tokio::spawn(stuck);
        shutdown.cancel();
        assert!(!handle.await.unwrap(), "stopped, not finished");
    }

    #[tokio::test]
    async fn a_controller_that_finishes_is_left_to_finish() {
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let graceful = async move {
            token.cancelled().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let handle = tokio::spawn(until_shutdown(
            "graceful",
            graceful,
            shutdown.clone(),
            Duration::from_secs(10),
        ));
        shutdown.cancel();
        assert!(handle.await.unwrap());
        // And one that ends on its own before any shutdown.
        assert!(
            until_shutdown(
                "done",
                async {},
                CancellationToken::new(),
                Duration::from_secs(1)
            )
            .await
        );
    }
}

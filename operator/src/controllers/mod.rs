//! The operator's controllers, one per kind, and the context they share.

pub mod remote_session;

use kube::Client;
use kube::runtime::events::Recorder;

use crate::metrics::Metrics;
use crate::settings::Settings;

/// Shared by every reconcile: the client, the one Event recorder, metrics and settings.
pub struct Context {
    /// Client with the operator's identity.
    pub client: Client,
    /// Publishes Events as `tether-operator`.
    pub recorder: Recorder,
    /// The operator's metrics.
    pub metrics: Metrics,
    /// Operator-wide settings.
    pub settings: Settings,
}

//! The operator's controllers, one per kind, and the context they share.

pub mod assistance_request;
pub mod device_inventory;
pub mod enrollment;
pub mod recordings_signer;
pub mod relay;
pub mod remote_session;
pub mod retention;
pub mod signing;
pub mod technician_signer;

use std::sync::Arc;

use kube::Client;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use tether_crds::device::Device;

use crate::credentials::Credentials;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::settings::Settings;

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
    /// Delivers request notifications, when email or a webhook is configured.
    pub notifier: Option<Notifier>,
    /// Whether the recording store answers (for sessions that must be recorded).
    pub recording_store: crate::recordings::StoreProbe,
    /// When this operator process started: transitions due before it are caught up, not
    /// late.
    pub started_at: jiff::Timestamp,
}

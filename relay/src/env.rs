//! What every connection handler shares: the relay's settings, what it trusts, its cluster
//! writer, its metrics, the shutdown signal and connection ids. Registries of agents and
//! sessions are separate handles ([`crate::devices`], [`crate::session`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::metrics::Metrics;
use crate::peers::PeerTls;
use crate::trust::TrustStore;

/// How the relay behaves.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This relay's name, reported on Devices and in logs.
    pub name: String,
    /// How long the user has to answer a consent prompt.
    pub consent_timeout: Duration,
    /// How long a client has for its first message.
    pub handshake_timeout: Duration,
    /// How long the agent has to join a channel.
    pub join_timeout: Duration,
    /// Ping period on control streams.
    pub ping_interval: Duration,
    /// Where sessions are recorded (`None`: recording is not configured).
    pub recording: Option<crate::recording::RecordingSetup>,
    /// The most technicians connected to one session at once.
    pub max_technicians: usize,
    /// Where other replicas reach this relay (`host:port`), recorded on the Devices whose
    /// agents are attached here; `None`: technicians are not forwarded here.
    pub peer_address: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            name: "tether-relay".into(),
            consent_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            join_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(10),
            recording: None,
            max_technicians: 8,
            peer_address: None,
        }
    }
}

/// The relay's shared environment.
pub struct Env {
    /// Settings.
    pub settings: Settings,
    /// What to trust.
    pub trust: TrustStore,
    /// The cluster writer (absent in pure tests).
    pub cluster: Option<Cluster>,
    /// Metrics.
    pub metrics: Metrics,
    /// Cancelled when the relay shuts down.
    pub shutdown: CancellationToken,
    /// Cancelled when the relay starts draining: agents without a live session here are told
    /// to connect to another replica, the others once their sessions here are over.
    pub draining: CancellationToken,
    /// The relay's certificate as a client of other replicas.
    pub peer_tls: PeerTls,
    next_id: AtomicU64,
}

impl Env {
    /// An environment for a relay about to start.
    pub fn new(
        settings: Settings,
        trust: TrustStore,
        cluster: Option<Cluster>,
        metrics: Metrics,
    ) -> Self {
        Self {
            settings,
            trust,
            cluster,
            metrics,
            shutdown: CancellationToken::new(),
            draining: CancellationToken::new(),
            peer_tls: PeerTls::default(),
            next_id: AtomicU64::new(1),
        }
    }

    /// A fresh id for a connection or channel.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

//! The relay: accepts connections on both transports, runs the handshake, and hands each
//! connection to its role — an agent ([`crate::agents`]), a technician
//! ([`crate::technicians`]) or an enrolling agent ([`crate::enroll`]). It owns every task it
//! starts, watches revocations, and shuts down by telling everyone why.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether_proto::message::{
    Control, Hello, HelloReply, PROTOCOL_VERSION, RefusalCode, Refused, Role, negotiate,
};
use tether_transport::{Connection, FrameReader, FrameWriter, Incoming, Listener, framed};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::agents::AgentLink;
use crate::cluster::Cluster;
use crate::metrics::Metrics;
use crate::sessions::SessionState;
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
        }
    }
}

/// Shared state of a running relay.
pub struct Relay {
    /// Settings.
    pub settings: Settings,
    /// What to trust.
    pub trust: TrustStore,
    /// The cluster writer (absent in pure tests).
    pub cluster: Option<Cluster>,
    /// Metrics.
    pub metrics: Metrics,
    /// Connected agents by (namespace, device).
    pub(crate) agents: Mutex<HashMap<(String, String), Arc<AgentLink>>>,
    /// Sessions with technicians joined, by uid.
    pub(crate) sessions: Mutex<HashMap<String, Arc<SessionState>>>,
    /// Cancelled when the relay shuts down.
    pub shutdown: CancellationToken,
    next_id: AtomicU64,
}

impl Relay {
    /// A relay with no connections yet.
    pub fn new(
        settings: Settings,
        trust: TrustStore,
        cluster: Option<Cluster>,
        metrics: Metrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            settings,
            trust,
            cluster,
            metrics,
            agents: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            next_id: AtomicU64::new(1),
        })
    }

    /// A fresh id for a connection or channel.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The connected agent of a device, if any.
    pub(crate) fn agent(&self, namespace: &str, device: &str) -> Option<Arc<AgentLink>> {
        self.agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(namespace.to_owned(), device.to_owned()))
            .cloned()
    }

    /// Number of connected agents.
    pub fn agent_count(&self) -> usize {
        self.agents.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Accepts connections until shutdown, then says goodbye to everyone and returns.
    pub async fn serve(self: &Arc<Self>, mut listener: Listener) {
        let mut connections = JoinSet::new();
        let mut revocations = self.trust.subscribe();
        loop {
            tokio::select! {
                incoming = listener.accept() => {
                    let Some(incoming) = incoming else { break };
                    let relay = self.clone();
                    connections.spawn(async move { relay.connection(incoming).await });
                }
                changed = revocations.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.end_revoked_sessions().await;
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                () = self.shutdown.cancelled() => break,
            }
        }
        info!(relay = %self.settings.name, "Shutting down the relay");
        self.shutdown.cancel();
        listener.close("relay shutting down");
        // Connection tasks say goodbye on cancellation; give them a moment.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        connections.shutdown().await;
        // Sessions outlive the relay (their parties reconnect to another one); their
        // recordings here end now, complete and readable.
        let live: Vec<Arc<SessionState>> = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for session in live {
            self.finish_recording(&session, "RelayShutdown").await;
        }
        listener.wait_idle().await;
    }

    /// Ends every live session whose tokens were revoked (terminated or deleted).
    async fn end_revoked_sessions(&self) {
        let revoked: Vec<Arc<SessionState>> = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| self.trust.is_revoked(&s.uid))
            .cloned()
            .collect();
        for session in revoked {
            info!(session = %session.name, namespace = %session.namespace, "Ended a revoked session");
            self.end_session(&session, "Terminated", None).await;
        }
    }

    async fn connection(self: Arc<Self>, incoming: Incoming) {
        let conn = match incoming.establish().await {
            Ok(conn) => conn,
            Err(e) => {
                debug!(error = %e, "Failed a connection handshake");
                self.metrics
                    .rejected
                    .with_label_values(&["handshake"])
                    .inc();
                return;
            }
        };
        let transport = conn.transport().as_str();
        let first = tokio::time::timeout(self.settings.handshake_timeout, conn.accept()).await;
        let Ok(Some(control)) = first else {
            conn.close("no control stream");
            return;
        };
        let (mut reader, mut writer) = framed(control);
        let hello =
            match tokio::time::timeout(self.settings.handshake_timeout, reader.message::<Hello>())
                .await
            {
                Ok(Ok(hello)) => hello,
                Ok(Err(e)) => {
                    self.refuse(
                        &mut writer,
                        RefusalCode::Malformed,
                        format!("expected a hello: {e}"),
                        "malformed",
                    )
                    .await;
                    close_soon(&conn, "malformed hello").await;
                    return;
                }
                Err(_) => {
                    self.refuse(
                        &mut writer,
                        RefusalCode::Malformed,
                        "no hello within the handshake timeout".into(),
                        "timeout",
                    )
                    .await;
                    close_soon(&conn, "handshake timeout").await;
                    return;
                }
            };
        let Some(_version) = negotiate(&hello.versions) else {
            self.refuse(
                &mut writer,
                RefusalCode::UnsupportedVersion,
                format!("this relay speaks protocol version {PROTOCOL_VERSION}, the client offered {:?}", hello.versions),
                "version",
            )
            .await;
            close_soon(&conn, "unsupported version").await;
            return;
        };
        let role = match hello.role {
            Role::Agent => "agent",
            Role::Technician => "technician",
            Role::Enroll => "enroll",
            Role::Auditor => "auditor",
        };
        self.metrics
            .connections
            .with_label_values(&[transport, role])
            .inc();
        let link = ControlLink { reader, writer };
        match hello.role {
            Role::Agent => crate::agents::run(self.clone(), conn, link, hello).await,
            Role::Technician => crate::technicians::run(self.clone(), conn, link, hello).await,
            Role::Enroll => crate::enroll::run(self.clone(), conn, link, hello).await,
            Role::Auditor => crate::auditors::run(self.clone(), conn, link, hello).await,
        }
    }

    /// Sends a refusal on a control stream and counts it.
    pub(crate) async fn refuse(
        &self,
        writer: &mut FrameWriter,
        code: RefusalCode,
        message: String,
        reason: &str,
    ) {
        self.metrics.rejected.with_label_values(&[reason]).inc();
        debug!(%message, reason, "Refused a connection");
        let _ = writer
            .message(&HelloReply::Refused(Refused { code, message }))
            .await;
        let _ = writer.finish().await;
    }
}

/// A connection's control stream, after the hello.
pub struct ControlLink {
    /// Reads control messages.
    pub reader: FrameReader,
    /// Writes control messages.
    pub writer: FrameWriter,
}

/// Writes control messages from a queue until it closes or `stop` fires; the queue lets many
/// tasks send on one stream.
pub(crate) async fn control_writer(
    mut writer: FrameWriter,
    mut queue: tokio::sync::mpsc::Receiver<Control>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            message = queue.recv() => {
                let Some(message) = message else { break };
                if let Err(e) = writer.message(&message).await {
                    debug!(error = %e, "Control stream closed");
                    break;
                }
            }
            () = stop.cancelled() => {
                // Drain what was queued before the stop (e.g. a final Ended or Goodbye).
                while let Ok(message) = queue.try_recv() {
                    let _ = writer.message(&message).await;
                }
                break;
            }
        }
    }
    let _ = writer.finish().await;
}

/// How long a peer gets to read a refusal, an end or a goodbye and close on its own.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// Closes a connection once the peer has read what was last sent: the peer closes on its own
/// after a refusal, an end or a goodbye; a peer that does not gets [`CLOSE_GRACE`]. (Closing
/// at once would discard control messages still in flight: the client would see a bare end
/// of stream instead of the reason.)
pub(crate) async fn close_soon(conn: &Connection, reason: &str) {
    let _ = tokio::time::timeout(CLOSE_GRACE, conn.closed()).await;
    conn.close(reason);
}

/// Logs a cluster write failure; the data plane never waits on the cluster.
pub(crate) fn cluster_warn(result: Result<(), crate::cluster::ClusterError>, what: &str) {
    if let Err(e) = result {
        warn!(error = %e, "Failed to {what}");
    }
}

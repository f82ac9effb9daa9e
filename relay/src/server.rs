//! The relay: accepts connections on both transports, runs the handshake, and hands each
//! connection to its role — an agent ([`crate::agents`]), a technician
//! ([`crate::technicians`]), an enrolling agent ([`crate::enroll`]) or an auditor
//! ([`crate::auditors`]). It owns every task it starts, ends revoked sessions, and shuts
//! down by telling everyone why.

use std::sync::Arc;
use std::time::Duration;

use tether_proto::message::{Hello, PROTOCOL_VERSION, RefusalCode, Role, negotiate};
use tether_transport::{Incoming, Listener, framed};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::agents::AgentDeps;
use crate::cluster::Cluster;
use crate::devices::Devices;
use crate::env::{Env, Settings};
use crate::link::{ControlLink, Refusal, refuse};
use crate::metrics::Metrics;
use crate::session::Sessions;
use crate::technicians::TechnicianDeps;
use crate::trust::TrustStore;

/// A running relay: its environment and its registries of agents and sessions.
pub struct Relay {
    env: Arc<Env>,
    devices: Devices,
    sessions: Sessions,
}

impl Relay {
    /// A relay with no connections yet.
    pub fn new(
        settings: Settings,
        trust: TrustStore,
        cluster: Option<Cluster>,
        metrics: Metrics,
    ) -> Arc<Self> {
        let env = Arc::new(Env::new(settings, trust, cluster, metrics));
        let devices = Devices::default();
        let sessions = Sessions::new(env.clone(), devices.clone());
        Arc::new(Self {
            env,
            devices,
            sessions,
        })
    }

    /// The relay's settings.
    pub fn settings(&self) -> &Settings {
        &self.env.settings
    }

    /// Cancelled when the relay shuts down; cancel it to shut the relay down.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.env.shutdown
    }

    /// The relay's certificate as a client of other replicas (set when it loads or rotates).
    pub fn peer_tls(&self) -> &crate::peers::PeerTls {
        &self.env.peer_tls
    }

    /// Number of connected agents.
    pub fn agent_count(&self) -> usize {
        self.devices.count()
    }

    /// Drains the relay before it stops: tells agents to connect to another replica, each once
    /// no technician sits in a session with its device here, and returns when every agent has
    /// left or `grace` is over (what is left then is cut off by the shutdown). Technicians
    /// keep being served meanwhile, and forwarded to where the agents went.
    pub async fn drain(&self, grace: Duration) {
        self.env.draining.cancel();
        let agents = self.devices.count();
        info!(agents, grace = ?grace, "Draining: agents are told to move once their sessions here are over");
        let deadline = tokio::time::Instant::now() + grace;
        let mut check = tokio::time::interval(Duration::from_millis(200));
        while self.devices.count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::select! {
                _ = check.tick() => {}
                () = self.env.shutdown.cancelled() => return,
            }
        }
        let left = self.devices.count();
        if left > 0 {
            info!(
                agents = left,
                "The drain's grace is over: the rest are cut off"
            );
        }
    }

    /// Accepts connections until shutdown, then says goodbye to everyone and returns.
    pub async fn serve(self: &Arc<Self>, mut listener: Listener) {
        let mut connections = JoinSet::new();
        let mut revocations = self.env.trust.subscribe();
        loop {
            tokio::select! {
                incoming = listener.accept() => {
                    let Some(incoming) = incoming else { break };
                    connections.spawn(self.clone().connection(incoming));
                }
                changed = revocations.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.sessions.end_revoked().await;
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                () = self.env.shutdown.cancelled() => break,
            }
        }
        info!(relay = %self.env.settings.name, "Shutting down the relay");
        self.env.shutdown.cancel();
        listener.close("relay shutting down");
        // Connection tasks say goodbye on cancellation; give them a moment.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        connections.shutdown().await;
        self.sessions.shutdown().await;
        listener.wait_idle().await;
    }

    async fn connection(self: Arc<Self>, incoming: Incoming) {
        let env = &self.env;
        let conn = match incoming.establish().await {
            Ok(conn) => conn,
            Err(e) => {
                debug!(error = %e, "Failed a connection handshake");
                env.metrics.rejected.with_label_values(&["handshake"]).inc();
                return;
            }
        };
        let transport = conn.transport().as_str();
        let first = tokio::time::timeout(env.settings.handshake_timeout, conn.accept()).await;
        let Ok(Some(control)) = first else {
            conn.close("no control stream");
            return;
        };
        let (mut reader, writer) = framed(control);
        writer.set_priority(tether_proto::message::CONTROL_PRIORITY);
        let hello =
            tokio::time::timeout(env.settings.handshake_timeout, reader.message::<Hello>()).await;
        let hello = match hello {
            Ok(Ok(hello)) => hello,
            Ok(Err(e)) => {
                let message = format!("expected a hello: {e}");
                let refusal = Refusal::new(RefusalCode::Malformed, message, "malformed");
                refuse(&conn, writer, &env.metrics, refusal).await;
                return;
            }
            Err(_) => {
                let message = "no hello within the handshake timeout";
                let refusal = Refusal::new(RefusalCode::Malformed, message, "timeout");
                refuse(&conn, writer, &env.metrics, refusal).await;
                return;
            }
        };
        if negotiate(&hello.versions).is_none() {
            let message = format!(
                "this relay speaks protocol version {PROTOCOL_VERSION}, the client offered {:?}",
                hello.versions
            );
            let refusal = Refusal::new(RefusalCode::UnsupportedVersion, message, "version");
            refuse(&conn, writer, &env.metrics, refusal).await;
            return;
        }
        let role = match hello.role {
            Role::Agent => "agent",
            Role::Technician => "technician",
            Role::Enroll => "enroll",
            Role::Auditor => "auditor",
        };
        env.metrics
            .connections
            .with_label_values(&[transport, role])
            .inc();
        let link = ControlLink { reader, writer };
        // Each role's future is boxed, so a connection holds only what its own role needs
        // (an idle agent's task would otherwise be the size of the largest role's).
        match hello.role {
            Role::Agent => {
                let deps = AgentDeps {
                    env: env.clone(),
                    devices: self.devices.clone(),
                    sessions: self.sessions.clone(),
                };
                Box::pin(crate::agents::run(deps, conn, link, hello)).await;
            }
            Role::Technician => {
                let deps = TechnicianDeps {
                    env: env.clone(),
                    devices: self.devices.clone(),
                    sessions: self.sessions.clone(),
                };
                Box::pin(crate::technicians::run(deps, conn, link, hello)).await;
            }
            Role::Enroll => Box::pin(crate::enroll::run(env.clone(), conn, link, hello)).await,
            Role::Auditor => Box::pin(crate::auditors::run(env.clone(), conn, link, hello)).await,
        }
    }
}

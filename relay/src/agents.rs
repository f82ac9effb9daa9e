//! Agent connections: authenticated by their client certificate (the identity the operator's
//! CA wrote at enrollment), registered by device, kept alive with pings, reported as Device
//! presence, and asked over their control stream for consent and for channel streams.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether_proto::message::{
    AgentInfo, Control, Hello, HelloReply, Join, PROTOCOL_VERSION, RefusalCode, Welcome,
};
use tether_proto::token::Claims;
use tether_transport::{Connection, FrameReader, FrameWriter, framed, tls::agent_identity};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::server::{ControlLink, Relay, close_soon, cluster_warn, control_writer};
use crate::sessions::SessionState;

/// A channel stream, framed, as the agent opened it.
pub type Framed = (FrameReader, FrameWriter);

/// A connected agent.
pub struct AgentLink {
    /// Connection id (distinguishes a reconnect from the old connection).
    pub id: u64,
    /// Device group.
    pub namespace: String,
    /// Device name.
    pub device: String,
    /// The connection.
    pub conn: Connection,
    /// Queue to the agent's control stream.
    pub control: mpsc::Sender<Control>,
    joins: Mutex<HashMap<u64, oneshot::Sender<Framed>>>,
    consents: Mutex<HashMap<String, oneshot::Sender<(bool, String)>>>,
    /// What the agent last reported.
    pub info: Mutex<AgentInfo>,
}

impl AgentLink {
    /// Asks the user for consent; `None` if no answer came in time.
    pub async fn ask_consent(
        &self,
        claims: &Claims,
        technician: &str,
        timeout: Duration,
    ) -> Option<(bool, String)> {
        let (tx, rx) = oneshot::channel();
        self.consents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(claims.session.uid.clone(), tx);
        let offer = Control::Offer {
            session: tether_proto::message::SessionInfo {
                uid: claims.session.uid.clone(),
                namespace: claims.session.namespace.clone(),
                name: claims.session.name.clone(),
                device: claims.session.device.clone(),
                ends_at: claims.session.ends_at,
                permissions: claims.session.permissions.clone(),
            },
            technician: technician.to_owned(),
            consent: true,
            reason: claims.session.reason.clone(),
            timeout_secs: timeout.as_secs() as u32,
        };
        if self.control.send(offer).await.is_err() {
            return None;
        }
        // A little beyond the user's time, for the answer to travel.
        let answer = tokio::time::timeout(timeout + Duration::from_secs(5), rx).await;
        self.consents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&claims.session.uid);
        answer.ok().and_then(Result::ok)
    }

    /// Asks the agent to open channel `id` and waits for its stream.
    pub async fn open_channel(&self, id: u64, open: Control, timeout: Duration) -> Option<Framed> {
        let (tx, rx) = oneshot::channel();
        self.joins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        if self.control.send(open).await.is_err() {
            return None;
        }
        let stream = tokio::time::timeout(timeout, rx)
            .await
            .ok()
            .and_then(Result::ok);
        self.joins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        stream
    }
}

/// Serves one agent connection until it ends or the relay shuts down.
pub async fn run(relay: Arc<Relay>, conn: Connection, link: ControlLink, hello: Hello) {
    let ControlLink {
        mut reader,
        mut writer,
    } = link;
    let identity = conn
        .peer_certificates()
        .and_then(|certs| certs.first().and_then(agent_identity));
    let Some((namespace, device)) = identity else {
        relay
            .refuse(
                &mut writer,
                RefusalCode::Unauthenticated,
                "agents must present the client certificate issued at enrollment".into(),
                "no_client_certificate",
            )
            .await;
        close_soon(&conn, "unauthenticated").await;
        return;
    };
    let info = hello.agent.clone().unwrap_or_default();
    if writer
        .message(&HelloReply::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            relay: relay.settings.name.clone(),
            session: None,
            certificate: None,
            ca_bundle: None,
        }))
        .await
        .is_err()
    {
        return;
    }

    let (control_tx, control_rx) = mpsc::channel(64);
    let stop = CancellationToken::new();
    let link = Arc::new(AgentLink {
        id: relay.next_id(),
        namespace: namespace.clone(),
        device: device.clone(),
        conn: conn.clone(),
        control: control_tx.clone(),
        joins: Mutex::new(HashMap::new()),
        consents: Mutex::new(HashMap::new()),
        info: Mutex::new(info.clone()),
    });
    let replaced = relay
        .agents
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((namespace.clone(), device.clone()), link.clone());
    if let Some(old) = replaced {
        old.conn
            .close("replaced by a newer connection of the same device");
    }
    relay.metrics.agents.set(relay.agent_count() as i64);
    info!(namespace = %namespace, device = %device, transport = conn.transport().as_str(), "Connected agent");
    if let Some(cluster) = &relay.cluster {
        cluster_warn(
            cluster
                .presence(&namespace, &device, true, Some(&info))
                .await,
            "record presence",
        );
    }

    let mut tasks = JoinSet::new();
    tasks.spawn(control_writer(writer, control_rx, stop.clone()));
    {
        // Channel streams the agent opens answer Open requests.
        let link = link.clone();
        let conn = conn.clone();
        tasks.spawn(async move {
            let mut joining = JoinSet::new();
            while let Some(stream) = conn.accept().await {
                let link = link.clone();
                joining.spawn(async move {
                    let (mut r, w) = framed(stream);
                    let Ok(Ok(join)) =
                        tokio::time::timeout(Duration::from_secs(10), r.message::<Join>()).await
                    else {
                        return;
                    };
                    let waiter = link
                        .joins
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&join.channel);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send((r, w));
                    }
                });
                while joining.try_join_next().is_some() {}
            }
        });
    }

    let mut ping = tokio::time::interval(relay.settings.ping_interval);
    let mut n = 0u64;
    let mut last_heard = tokio::time::Instant::now();
    let silence = relay.settings.ping_interval * 3;
    loop {
        tokio::select! {
            message = reader.message::<Control>() => {
                last_heard = tokio::time::Instant::now();
                match message {
                    Ok(message) => handle(&relay, &link, message).await,
                    Err(e) => {
                        debug!(namespace = %namespace, device = %device, error = %e, "Agent control stream ended");
                        break;
                    }
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > silence {
                    info!(namespace = %namespace, device = %device, "Dropped a silent agent");
                    break;
                }
                n += 1;
                let _ = control_tx.try_send(Control::Ping { n });
            }
            () = conn.closed() => break,
            () = relay.shutdown.cancelled() => {
                let _ = control_tx.send(Control::Goodbye { reason: "the relay is shutting down".into() }).await;
                break;
            }
        }
    }
    stop.cancel();
    close_soon(&conn, "closed").await;
    tasks.shutdown().await;

    let still_current = {
        let mut agents = relay.agents.lock().unwrap_or_else(|e| e.into_inner());
        let key = (namespace.clone(), device.clone());
        let current = agents.get(&key).is_some_and(|a| a.id == link.id);
        if current {
            agents.remove(&key);
        }
        current
    };
    relay.metrics.agents.set(relay.agent_count() as i64);
    info!(namespace = %namespace, device = %device, "Disconnected agent");
    // A reconnect already took over: it owns the presence now.
    if still_current && let Some(cluster) = &relay.cluster {
        cluster_warn(
            cluster.presence(&namespace, &device, false, None).await,
            "record presence",
        );
    }
}

async fn handle(relay: &Arc<Relay>, link: &Arc<AgentLink>, message: Control) {
    match message {
        Control::Consent {
            session_uid,
            granted,
            reason,
        } => {
            let waiter = link
                .consents
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&session_uid);
            if let Some(waiter) = waiter {
                let _ = waiter.send((granted, reason));
            }
        }
        Control::End {
            session_uid,
            reason,
        } => {
            let session: Option<Arc<SessionState>> = relay
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&session_uid)
                .cloned();
            if let Some(session) = session
                && session.namespace == link.namespace
                && session.device == link.device
            {
                info!(session = %session.name, namespace = %session.namespace, %reason, "The user ended the session");
                relay
                    .end_session(&session, "EndedByUser", Some("EndedByUser"))
                    .await;
            }
        }
        Control::Status(info) => {
            *link.info.lock().unwrap_or_else(|e| e.into_inner()) = info.clone();
            if let Some(cluster) = &relay.cluster {
                cluster_warn(
                    cluster
                        .presence(&link.namespace, &link.device, true, Some(&info))
                        .await,
                    "record presence",
                );
            }
        }
        Control::Ping { n } => {
            let _ = link.control.try_send(Control::Pong { n });
        }
        Control::Pong { .. } => {}
        other => debug!(message = ?other, "Ignored an unexpected message from an agent"),
    }
}

//! Agent connections: authenticated by their client certificate (the identity the operator's
//! CA wrote at enrollment), registered by device, kept alive with pings, reported as Device
//! presence, and asked over their control stream for consent and for channel streams.
//!
//! One connection per device: a second connection with a device's identity while the first
//! one is registered does not take over. The relay pings the registered connection; if it
//! answers within [`TAKEOVER_PROBE`] the newcomer is refused (a copied certificate cannot
//! steal a live device), and only a connection that is closed or silent is replaced (an agent
//! that reconnects after losing its network gets in without waiting for the old connection
//! to time out). Both outcomes are logged and counted in `tether_relay_agent_duplicates_total`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether_proto::message::{
    AgentInfo, Control, Hello, HelloReply, Join, PROTOCOL_VERSION, RefusalCode, Welcome,
};
use tether_proto::token::Claims;
use tether_transport::{Connection, FrameReader, FrameWriter, framed, tls::agent_identity};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::server::{ControlLink, Relay, close_soon, cluster_warn, control_writer};
use crate::sessions::SessionState;

/// A channel stream, framed, as the agent opened it.
pub type Framed = (FrameReader, FrameWriter);

/// How long a registered agent has to answer a ping before a second connection with its
/// identity may take its place. Agents answer pings at once; this covers a busy link.
pub const TAKEOVER_PROBE: Duration = Duration::from_secs(5);

/// The ping number of a takeover probe (regular pings count up from 1).
const PROBE_PING: u64 = 0;

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
    /// Woken whenever the agent sends anything (proof that it is alive).
    heard: Notify,
}

impl AgentLink {
    /// Whether the agent answers a ping within `timeout` (anything it sends counts).
    async fn answers(&self, timeout: Duration) -> bool {
        let heard = self.heard.notified();
        tokio::pin!(heard);
        // Registered before the ping goes out, so an answer cannot slip past.
        heard.as_mut().enable();
        let probe = async {
            if self
                .control
                .send(Control::Ping { n: PROBE_PING })
                .await
                .is_err()
            {
                return false;
            }
            tokio::select! {
                () = heard => true,
                () = self.conn.closed() => false,
            }
        };
        tokio::time::timeout(timeout, probe).await.unwrap_or(false)
    }

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
        heard: Notify::new(),
    });
    if let Claim::Live(existing) = claim(&relay, &link).await {
        warn!(
            namespace = %namespace,
            device = %device,
            connected = %existing.conn.remote_address(),
            refused = %conn.remote_address(),
            "Refused a second connection of a connected agent"
        );
        relay
            .metrics
            .agent_duplicates
            .with_label_values(&["refused"])
            .inc();
        relay
            .refuse(
                &mut writer,
                RefusalCode::Forbidden,
                format!(
                    "device {namespace}/{device} is already connected and answering; a second connection with its identity cannot take over while it answers"
                ),
                "device_already_connected",
            )
            .await;
        close_soon(&conn, "device already connected").await;
        return;
    }
    let welcomed = writer
        .message(&HelloReply::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            relay: relay.settings.name.clone(),
            session: None,
            certificate: None,
            ca_bundle: None,
        }))
        .await
        .is_ok();
    if !welcomed {
        unregister(&relay, &link).await;
        return;
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
                link.heard.notify_waiters();
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
    unregister(&relay, &link).await;
}

/// What became of a connection claiming a device's identity.
enum Claim {
    /// No other connection held the identity: registered.
    Registered,
    /// Registered in place of a connection that was closed or did not answer.
    Replaced,
    /// Another connection holds the identity and answers: not registered.
    Live(Arc<AgentLink>),
}

/// Registers `link` for its device unless a live connection holds the identity.
async fn claim(relay: &Arc<Relay>, link: &Arc<AgentLink>) -> Claim {
    let key = (link.namespace.clone(), link.device.clone());
    // A few rounds: another newcomer may win the place while this one probes.
    let mut rounds = 0;
    loop {
        let existing = {
            let mut agents = relay.agents.lock().unwrap_or_else(|e| e.into_inner());
            match agents.get(&key) {
                None => {
                    agents.insert(key, link.clone());
                    return Claim::Registered;
                }
                Some(existing) => existing.clone(),
            }
        };
        rounds += 1;
        if rounds > 3 || existing.answers(TAKEOVER_PROBE).await {
            return Claim::Live(existing);
        }
        let replaced = {
            let mut agents = relay.agents.lock().unwrap_or_else(|e| e.into_inner());
            let same = agents.get(&key).is_some_and(|a| a.id == existing.id);
            if same {
                agents.insert(key.clone(), link.clone());
            }
            same
        };
        if replaced {
            existing
                .conn
                .close("replaced: the device connected again and this connection did not answer");
            info!(
                namespace = %link.namespace,
                device = %link.device,
                replaced = %existing.conn.remote_address(),
                connected = %link.conn.remote_address(),
                "Replaced an agent connection that no longer answered"
            );
            relay
                .metrics
                .agent_duplicates
                .with_label_values(&["replaced"])
                .inc();
            return Claim::Replaced;
        }
    }
}

/// Removes `link` from the registry if it is still the device's connection, and records the
/// device as offline then (a newer connection owns the presence otherwise).
async fn unregister(relay: &Arc<Relay>, link: &Arc<AgentLink>) {
    let (namespace, device) = (&link.namespace, &link.device);
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
    if still_current && let Some(cluster) = &relay.cluster {
        cluster_warn(
            cluster.presence(namespace, device, false, None).await,
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
                info!(session = %session.name, namespace = %session.namespace, reason = %tether_proto::text::escape(&reason), "The user ended the session");
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

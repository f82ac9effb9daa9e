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

use std::sync::Arc;
use std::time::Duration;

use tether_proto::message::{
    Control, Hello, HelloReply, Join, PROTOCOL_VERSION, RefusalCode, Welcome,
};
use tether_transport::{Connection, framed, tls::agent_identity};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::devices::{AgentLink, Devices};
use crate::env::Env;
use crate::link::{
    ControlLink, ControlTx, Refusal, close_soon, cluster_warn, control_writer, refuse,
};
use crate::session::{EndReason, Sessions};

/// How long a registered agent has to answer a ping before a second connection with its
/// identity may take its place. Agents answer pings at once; this covers a busy link.
pub const TAKEOVER_PROBE: Duration = Duration::from_secs(5);

/// How often a draining relay looks whether an agent's sessions here are over.
const DRAIN_CHECK: Duration = Duration::from_secs(1);

/// What a draining relay tells its agents.
const MOVE: &str = "the relay is draining: connect to another replica";

/// How long an agent has to say which channel a stream it opened is for.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What an agent connection works with.
#[derive(Clone)]
pub struct AgentDeps {
    /// The relay's environment.
    pub env: Arc<Env>,
    /// Connected agents.
    pub devices: Devices,
    /// Live sessions.
    pub sessions: Sessions,
}

/// Serves one agent connection until it ends or the relay shuts down.
pub async fn run(deps: AgentDeps, conn: Connection, link: ControlLink, hello: Hello) {
    let ControlLink {
        mut reader,
        mut writer,
    } = link;
    let relay = &deps.env;
    let identity = conn
        .peer_certificates()
        .and_then(|certs| certs.first().and_then(agent_identity));
    let Some((namespace, device)) = identity else {
        let refusal = Refusal::new(
            RefusalCode::Unauthenticated,
            "agents must present the client certificate issued at enrollment",
            "no_client_certificate",
        );
        refuse(&conn, writer, &relay.metrics, refusal).await;
        return;
    };
    if relay.draining.is_cancelled() {
        let refusal = Refusal::new(RefusalCode::Unavailable, MOVE, "draining");
        refuse(&conn, writer, &relay.metrics, refusal).await;
        return;
    }
    let info = hello.agent.clone().unwrap_or_default();
    let (control_tx, control_rx) = ControlTx::channel(64);
    let stop = CancellationToken::new();
    let link = Arc::new(AgentLink::new(
        relay.next_id(),
        (namespace.clone(), device.clone()),
        conn.clone(),
        control_tx.clone(),
        info.clone(),
    ));
    if let Claim::Live(existing) = claim(&deps, &link).await {
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
        let refusal = Refusal::new(
            RefusalCode::Forbidden,
            format!(
                "device {namespace}/{device} is already connected and answering; a second connection with its identity cannot take over while it answers"
            ),
            "device_already_connected",
        );
        refuse(&conn, writer, &relay.metrics, refusal).await;
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
        unregister(&deps, &link).await;
        return;
    }
    relay.metrics.agents.set(deps.devices.count() as i64);
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
    // Channel streams the agent opens answer Open requests; accepted in this loop rather
    // than by a task of their own (an idle agent costs as few tasks as possible).
    let mut joining = JoinSet::new();
    let mut accepting = true;

    let mut ping = tokio::time::interval(relay.settings.ping_interval);
    let mut n = 0u64;
    let mut last_heard = tokio::time::Instant::now();
    let silence = relay.settings.ping_interval * 3;
    let mut draining = false;
    let mut drain_check = tokio::time::interval(DRAIN_CHECK);
    drain_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = reader.message::<Control>() => {
                last_heard = tokio::time::Instant::now();
                link.heard();
                match message {
                    Ok(message) => handle(&deps, &link, message).await,
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
            stream = conn.accept(), if accepting => match stream {
                Some(stream) => {
                    joining.spawn(join_channel(link.clone(), stream));
                }
                None => accepting = false,
            },
            Some(_) = joining.join_next(), if !joining.is_empty() => {}
            () = conn.closed() => break,
            () = relay.draining.cancelled(), if !draining => draining = true,
            _ = drain_check.tick(), if draining => {
                if !deps.sessions.in_use(&namespace, &device) {
                    info!(namespace = %namespace, device = %device, "Told an agent to move to another replica");
                    let _ = control_tx.send(Control::Goodbye { reason: MOVE.into() }).await;
                    break;
                }
            }
            () = relay.shutdown.cancelled() => {
                let _ = control_tx.send(Control::Goodbye { reason: "the relay is shutting down".into() }).await;
                break;
            }
        }
    }
    joining.shutdown().await;
    stop.cancel();
    close_soon(&conn, "closed").await;
    tasks.shutdown().await;
    unregister(&deps, &link).await;
}

/// Reads the join message of a stream the agent opened and hands the stream to the channel
/// that asked for it.
async fn join_channel(link: Arc<AgentLink>, stream: tether_transport::BiStream) {
    let (mut r, w) = framed(stream);
    let Ok(Ok(join)) = tokio::time::timeout(JOIN_TIMEOUT, r.message::<Join>()).await else {
        return;
    };
    link.joined(join.channel, (r, w));
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
async fn claim(deps: &AgentDeps, link: &Arc<AgentLink>) -> Claim {
    // A few rounds: another newcomer may win the place while this one probes.
    let mut rounds = 0;
    loop {
        let existing = match deps.devices.insert_if_vacant(link) {
            Ok(()) => return Claim::Registered,
            Err(existing) => existing,
        };
        rounds += 1;
        if rounds > 3 || existing.answers(TAKEOVER_PROBE).await {
            return Claim::Live(existing);
        }
        if deps.devices.replace(existing.id, link) {
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
            deps.env
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
async fn unregister(deps: &AgentDeps, link: &Arc<AgentLink>) {
    let relay = &deps.env;
    let (namespace, device) = (&link.namespace, &link.device);
    let still_current = deps.devices.remove(link);
    relay.metrics.agents.set(deps.devices.count() as i64);
    info!(namespace = %namespace, device = %device, "Disconnected agent");
    if still_current && let Some(cluster) = &relay.cluster {
        cluster_warn(
            cluster.presence(namespace, device, false, None).await,
            "record presence",
        );
    }
}

async fn handle(deps: &AgentDeps, link: &Arc<AgentLink>, message: Control) {
    let relay = &deps.env;
    // Only the agent of the session's own device speaks for its user.
    let own = |uid: &str| {
        deps.sessions
            .get(uid)
            .filter(|s| s.info.namespace == link.namespace && s.info.device == link.device)
    };
    match message {
        Control::Consent {
            session_uid,
            granted,
            reason,
        } => {
            if let Some(session) = own(&session_uid) {
                session.handle_consent(granted, &reason).await;
            }
        }
        Control::End {
            session_uid,
            reason,
        } => {
            if let Some(session) = own(&session_uid) {
                info!(session = %session.info.name, namespace = %session.info.namespace, reason = %tether_proto::text::escape(&reason), "The user ended the session");
                session.end(EndReason::EndedByUser).await;
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

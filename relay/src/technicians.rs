//! Technician connections: authenticated by a session token (signature, expiry, revocation),
//! joined to the session's agent once the user has consented, and served one channel per
//! stream, each permitted by the token and spliced to a stream the agent opens.

use std::sync::Arc;

use jiff::Timestamp;
use tether_proto::message::{
    Attach, AttachReply, Control, Hello, HelloReply, PROTOCOL_VERSION, RefusalCode, Refused,
    SessionInfo, Welcome,
};
use tether_proto::token::TokenError;
use tether_recording::events::What;
use tether_transport::{Connection, framed};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::server::{ControlLink, Relay, close_soon, control_writer};
use crate::splice::splice;
use crate::tap::Tap;

/// How long a technician's channels get to end after its connection did.
const CHANNEL_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

fn refusal_for(error: &TokenError) -> (RefusalCode, String) {
    match error {
        TokenError::Expired { .. } => (
            RefusalCode::SessionEnded,
            "the session token has expired; read the access Secret again".into(),
        ),
        TokenError::Revoked(_) => (RefusalCode::SessionEnded, "the session has ended".into()),
        TokenError::NotYetValid { .. } => (
            RefusalCode::Forbidden,
            "the session has not started yet".into(),
        ),
        other => (
            RefusalCode::Unauthenticated,
            format!("the session token was refused: {other}"),
        ),
    }
}

/// Serves one technician connection until it ends, the session ends or the relay stops.
pub async fn run(relay: Arc<Relay>, conn: Connection, link: ControlLink, hello: Hello) {
    let ControlLink {
        mut reader,
        mut writer,
    } = link;
    let Some(token) = hello.token.as_deref() else {
        relay
            .refuse(
                &mut writer,
                RefusalCode::Unauthenticated,
                "a session token is required".into(),
                "no_token",
            )
            .await;
        close_soon(&conn, "unauthenticated").await;
        return;
    };
    let now = Timestamp::now().as_second();
    let claims = match relay.trust.authorize(token, now, None) {
        Ok(claims) => claims,
        Err(e) => {
            let (code, message) = refusal_for(&e);
            relay.refuse(&mut writer, code, message, e.reason()).await;
            close_soon(&conn, "refused").await;
            return;
        }
    };
    if now >= claims.session.ends_at {
        relay
            .refuse(
                &mut writer,
                RefusalCode::SessionEnded,
                "the session has ended".into(),
                "session_ended",
            )
            .await;
        close_soon(&conn, "refused").await;
        return;
    }
    let (namespace, device) = (
        claims.session.namespace.clone(),
        claims.session.device.clone(),
    );
    let Some(agent) = relay.agent(&namespace, &device) else {
        relay
            .refuse(
                &mut writer,
                RefusalCode::DeviceOffline,
                format!("device {device} is not connected to the relay; is its agent running?"),
                "device_offline",
            )
            .await;
        close_soon(&conn, "device offline").await;
        return;
    };
    let technician = hello
        .technician
        .clone()
        .unwrap_or_else(|| "a technician".into());
    let session = relay.session(&claims);
    if let Err(message) = relay
        .ensure_recording(&session, claims.session.recording)
        .await
    {
        relay
            .refuse(
                &mut writer,
                RefusalCode::Unavailable,
                message,
                "recording_unavailable",
            )
            .await;
        close_soon(&conn, "recording unavailable").await;
        return;
    }
    if let Err(reason) = relay
        .ensure_consent(&session, &agent, &technician, &claims)
        .await
    {
        relay
            .refuse(
                &mut writer,
                RefusalCode::ConsentDenied,
                format!("the user did not allow the session ({reason})"),
                "consent_denied",
            )
            .await;
        close_soon(&conn, "consent denied").await;
        return;
    }
    let welcome = HelloReply::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        relay: relay.settings.name.clone(),
        session: Some(SessionInfo {
            uid: claims.session.uid.clone(),
            namespace: namespace.clone(),
            name: claims.session.name.clone(),
            device: device.clone(),
            ends_at: claims.session.ends_at,
            permissions: claims.session.permissions.clone(),
        }),
        certificate: None,
        ca_bundle: None,
    });
    if writer.message(&welcome).await.is_err() {
        return;
    }
    info!(session = %session.name, namespace = %namespace, %technician, transport = conn.transport().as_str(), "Joined a technician to a session");
    if let Some(recorder) = session.recording.recorder() {
        recorder.technician(&technician).await;
        recorder
            .event(What::TechnicianJoined {
                technician: technician.clone(),
                transport: conn.transport().as_str().to_owned(),
            })
            .await;
    }

    let (control_tx, control_rx) = mpsc::channel(64);
    session
        .technicians
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(control_tx.clone());
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    tasks.spawn(control_writer(writer, control_rx, stop.clone()));
    {
        let relay = relay.clone();
        let conn = conn.clone();
        let session = session.clone();
        let claims = claims.clone();
        let technician = technician.clone();
        tasks.spawn(async move {
            let mut channels = JoinSet::new();
            while let Some(stream) = conn.accept().await {
                let relay = relay.clone();
                let session = session.clone();
                let claims = claims.clone();
                let technician = technician.clone();
                channels.spawn(async move {
                    let (mut r, mut w) = framed(stream);
                    let Ok(attach) = r.message::<Attach>().await else {
                        return;
                    };
                    let refuse =
                        |code, message: String| AttachReply::Refused(Refused { code, message });
                    if !attach.kind.allowed_by(&claims.session.permissions) {
                        relay
                            .metrics
                            .rejected
                            .with_label_values(&["channel_forbidden"])
                            .inc();
                        let _ = w
                            .message(&refuse(
                                RefusalCode::Forbidden,
                                format!(
                                    "the session does not allow the {} channel",
                                    attach.kind.as_str()
                                ),
                            ))
                            .await;
                        return;
                    }
                    let Some(agent) = relay.agent(&session.namespace, &session.device) else {
                        let _ = w
                            .message(&refuse(
                                RefusalCode::DeviceOffline,
                                "the device disconnected".into(),
                            ))
                            .await;
                        return;
                    };
                    let id = relay.next_id();
                    let open = Control::Open {
                        channel: id,
                        session_uid: session.uid.clone(),
                        attach: attach.clone(),
                        technician: technician.clone(),
                    };
                    let Some(agent_stream) = agent
                        .open_channel(id, open, relay.settings.join_timeout)
                        .await
                    else {
                        relay
                            .metrics
                            .rejected
                            .with_label_values(&["channel_unavailable"])
                            .inc();
                        let _ = w
                            .message(&refuse(
                                RefusalCode::Unavailable,
                                "the agent did not open the channel".into(),
                            ))
                            .await;
                        return;
                    };
                    if w.message(&AttachReply::Attached { channel: id })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let tap = match session.recording.recorder() {
                        Some(recorder) => Some(Tap::open(recorder, id, &technician, &attach).await),
                        None => None,
                    };
                    splice(
                        (r, w),
                        agent_stream,
                        attach.kind,
                        session.ended.clone(),
                        &relay.metrics,
                        tap,
                    )
                    .await;
                });
                while channels.try_join_next().is_some() {}
            }
            // The connection is gone: its streams fail at once, so each channel ends on its
            // own and its recording is closed properly. Bounded, in case one does not.
            let _ = tokio::time::timeout(CHANNEL_DRAIN, async {
                while channels.join_next().await.is_some() {}
            })
            .await;
            channels.shutdown().await;
        });
    }

    loop {
        tokio::select! {
            message = reader.message::<Control>() => match message {
                Ok(Control::End { reason, .. }) => {
                    info!(session = %session.name, namespace = %namespace, %reason, "A technician ended the session");
                    relay.end_session(&session, "EndedByTechnician", Some("EndedByTechnician")).await;
                    break;
                }
                Ok(Control::Ping { n }) => {
                    let _ = control_tx.try_send(Control::Pong { n });
                }
                Ok(_) => {}
                Err(e) => {
                    debug!(error = %e, "Technician control stream ended");
                    break;
                }
            },
            () = session.ended.cancelled() => break,
            () = conn.closed() => break,
            () = relay.shutdown.cancelled() => {
                let _ = control_tx.send(Control::Goodbye { reason: "the relay is shutting down".into() }).await;
                break;
            }
        }
    }
    stop.cancel();
    session
        .record(What::TechnicianLeft {
            technician: technician.clone(),
        })
        .await;
    session
        .technicians
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|t| !t.same_channel(&control_tx));
    close_soon(&conn, "session over").await;
    let _ = tokio::time::timeout(CHANNEL_DRAIN, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.shutdown().await;
}

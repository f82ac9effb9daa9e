//! Technician connections: authenticated by a session token (signature, expiry, revocation),
//! joined to the session's agent once the user has consented, and served one channel per
//! stream, each permitted by the token and spliced to a stream the agent opens.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use rustls::pki_types::CertificateDer;
use tether_proto::message::{
    Attach, AttachReply, Control, Hello, HelloReply, PROTOCOL_VERSION, RefusalCode, Refused,
    SessionInfo, Welcome,
};
use tether_proto::text::escape;
use tether_proto::token::TokenError;
use tether_recording::events::What;
use tether_transport::tls::{TechnicianCertificate, technician_certificate};
use tether_transport::{Connection, framed};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::server::{ControlLink, Relay, close_soon, control_writer};
use crate::splice::splice;
use crate::tap::Tap;

/// How long a technician's channels get to end after its connection did.
const CHANNEL_DRAIN: Duration = Duration::from_secs(5);

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

/// Why a technician connection is refused: the code and sentence the client sees, and the
/// low-cardinality reason counted in `tether_relay_rejected_total`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The code sent to the client.
    pub code: RefusalCode,
    /// The sentence sent to the client.
    pub message: String,
    /// The metric label.
    pub reason: &'static str,
}

impl Refusal {
    fn new(code: RefusalCode, message: impl Into<String>, reason: &'static str) -> Self {
        Self {
            code,
            message: message.into(),
            reason,
        }
    }
}

/// Who a technician is and what they may do, as the cluster vouched for it: the verified
/// certificate and the grant token it carries.
#[derive(Clone, Debug)]
pub struct Admitted {
    /// The grant.
    pub claims: tether_proto::token::Claims,
    /// The certificate.
    pub certificate: TechnicianCertificate,
}

/// Admits a technician at `now` (Unix seconds) from the client certificate the TLS layer
/// verified: it must be a technician certificate whose grant the operator signed for the same
/// user and session, not expired or revoked, for a session not yet over. Nothing the client
/// says about itself is used.
pub fn admit(
    trust: &crate::trust::TrustStore,
    certificate: Option<&CertificateDer<'_>>,
    now: i64,
) -> Result<Admitted, Refusal> {
    let Some(certificate) = certificate.and_then(technician_certificate) else {
        return Err(Refusal::new(
            RefusalCode::Unauthenticated,
            "technicians must present a technician certificate (kubectl tether obtains one with a CertificateSigningRequest for signer tether.dev/technician)",
            "no_technician_certificate",
        ));
    };
    if certificate.not_after <= now {
        return Err(Refusal::new(
            RefusalCode::Unauthenticated,
            "the technician certificate has expired",
            "certificate_expired",
        ));
    }
    let claims = trust
        .authorize(&certificate.grant, now, None)
        .map_err(|e| {
            let (code, message) = refusal_for(&e);
            Refusal::new(code, message, e.reason())
        })?;
    let bound = claims.technician.as_deref() == Some(certificate.user.as_str())
        && claims.session.namespace == certificate.namespace
        && claims.session.name == certificate.session;
    if !bound {
        return Err(Refusal::new(
            RefusalCode::Unauthenticated,
            "the certificate's grant was not issued for this technician and session",
            "grant_mismatch",
        ));
    }
    if now >= claims.session.ends_at {
        return Err(Refusal::new(
            RefusalCode::SessionEnded,
            "the session has ended",
            "session_ended",
        ));
    }
    Ok(Admitted {
        claims,
        certificate,
    })
}

/// Checks a renewed certificate chain (PEM) at `now`: issued by the cluster's CA, for the same
/// key, technician and session as the connection's, with a valid grant for the same session.
/// Returns the new expiry.
pub fn renew(
    trust: &crate::trust::TrustStore,
    current: &TechnicianCertificate,
    claims: &tether_proto::token::Claims,
    chain: &str,
    now: i64,
) -> Result<i64, String> {
    let leaf = tether_transport::tls::verify_client_chain(&trust.ca_bundle(), chain, now)
        .map_err(|e| format!("the certificate does not verify: {e}"))?;
    let renewed = admit(trust, Some(&leaf), now).map_err(|r| r.message)?;
    if renewed.certificate.public_key != current.public_key {
        return Err("the renewed certificate is for another key".into());
    }
    if renewed.certificate.user != current.user || renewed.claims.session.uid != claims.session.uid
    {
        return Err("the renewed certificate is for another technician or session".into());
    }
    Ok(renewed.certificate.not_after)
}

/// Serves one technician connection until it ends, the session ends or the relay stops.
pub async fn run(relay: Arc<Relay>, conn: Connection, link: ControlLink, hello: Hello) {
    let ControlLink {
        mut reader,
        mut writer,
    } = link;
    let now = Timestamp::now().as_second();
    let peer = conn.peer_certificates().and_then(|c| c.into_iter().next());
    let Admitted {
        claims,
        certificate,
    } = match admit(&relay.trust, peer.as_ref(), now) {
        Ok(admitted) => admitted,
        Err(refusal) => {
            if hello.token.is_some() && peer.is_none() {
                debug!("Refused a technician presenting a bare session token");
            }
            relay
                .refuse(&mut writer, refusal.code, refusal.message, refusal.reason)
                .await;
            close_soon(&conn, "refused").await;
            return;
        }
    };
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
    // The name the cluster vouched for; escaped wherever it is shown.
    let technician = certificate.user.clone();
    let session = relay.session(&claims);
    let Some(seat) = session.take_seat(relay.settings.max_technicians) else {
        relay
            .refuse(
                &mut writer,
                RefusalCode::Unavailable,
                format!(
                    "the session already has {} technicians connected, the most one session takes",
                    relay.settings.max_technicians
                ),
                "too_many_technicians",
            )
            .await;
        close_soon(&conn, "session full").await;
        return;
    };
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
    info!(session = %session.name, namespace = %namespace, technician = %escape(&technician), transport = conn.transport().as_str(), "Joined a technician to a session");
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

    // The connection lasts as long as the technician's certificate, renewed while connected.
    let mut expires_at = certificate.not_after;
    loop {
        let left = Duration::from_secs(
            u64::try_from(expires_at - Timestamp::now().as_second()).unwrap_or(0),
        );
        tokio::select! {
            message = reader.message::<Control>() => match message {
                Ok(Control::Renew { certificate: chain }) => {
                    let now = Timestamp::now().as_second();
                    match renew(&relay.trust, &certificate, &claims, &chain, now) {
                        Ok(renewed) => {
                            expires_at = renewed;
                            debug!(session = %session.name, technician = %escape(&technician), expires_at, "Renewed a technician's certificate");
                            let _ = control_tx.try_send(Control::Renewed { expires_at });
                        }
                        Err(why) => {
                            relay.metrics.rejected.with_label_values(&["renewal_refused"]).inc();
                            warn!(session = %session.name, technician = %escape(&technician), reason = %why, "Refused a technician certificate renewal");
                        }
                    }
                }
                Ok(Control::End { reason, .. }) => {
                    info!(session = %session.name, namespace = %namespace, technician = %escape(&technician), reason = %escape(&reason), "A technician ended the session");
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
            () = tokio::time::sleep(left) => {
                info!(session = %session.name, technician = %escape(&technician), "Closed a technician connection whose certificate expired");
                relay.metrics.rejected.with_label_values(&["certificate_expired"]).inc();
                let _ = control_tx.send(Control::Goodbye { reason: "your technician certificate expired without renewal; connect again".into() }).await;
                break;
            }
            () = session.ended.cancelled() => break,
            () = conn.closed() => break,
            () = relay.shutdown.cancelled() => {
                let _ = control_tx.send(Control::Goodbye { reason: "the relay is shutting down".into() }).await;
                break;
            }
        }
    }
    drop(seat);
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

#[cfg(test)]
#[path = "technicians_tests.rs"]
mod tests;

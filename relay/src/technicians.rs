//! Technician connections: authenticated by a session token (signature, expiry, revocation),
//! joined to the session's agent once the user has consented, and served one channel per
//! stream, each permitted by the token and spliced to a stream the agent opens.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use rustls::pki_types::CertificateDer;
use tether_proto::message::{
    Attach, AttachReply, ChannelKind, Control, Hello, HelloReply, PROTOCOL_VERSION, Participant,
    RefusalCode, Refused, SessionInfo, Welcome,
};
use tether_proto::text::escape;
use tether_proto::token::{Claims, TokenError};
use tether_recording::events::What;
use tether_transport::tls::{TechnicianCertificate, technician_certificate};
use tether_transport::{Connection, FrameReader, FrameWriter, framed};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use tether_crds::contract::signers;

use crate::desktop::DesktopFilter;
use crate::devices::Devices;
use crate::env::Env;
use crate::link::{ControlLink, ControlTx, Refusal, close_soon, control_writer, refuse};
use crate::peers;
use crate::session::machine::SeatRefusal;
use crate::session::{EndReason, SessionHandle, Sessions};
use crate::splice::splice;
use crate::tap::Tap;

/// How long a technician's channels get to end after its connection did.
const CHANNEL_DRAIN: Duration = Duration::from_secs(5);

/// What a technician connection works with.
#[derive(Clone)]
pub struct TechnicianDeps {
    /// The relay's environment.
    pub env: Arc<Env>,
    /// Connected agents.
    pub devices: Devices,
    /// Live sessions.
    pub sessions: Sessions,
}

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

/// Who a technician is and what they may do, as the cluster vouched for it: the verified
/// certificate and the grant token it carries.
#[derive(Clone, Debug)]
pub struct Admitted {
    /// The grant.
    pub claims: Claims,
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
            format!(
                "technicians must present a technician certificate (kubectl tether obtains one with a CertificateSigningRequest for signer {})",
                signers::TECHNICIAN
            ),
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

/// The technician certificate a connection presents: its own client certificate, or, on a
/// connection a relay replica made to forward a technician, the chain it forwarded (verified
/// here, against this relay's CA bundle). Only relays may forward.
fn presented_certificate(
    env: &Env,
    conn: &Connection,
    hello: &Hello,
    now: i64,
) -> Result<Option<CertificateDer<'static>>, Refusal> {
    let own = conn.peer_certificates().and_then(|c| c.into_iter().next());
    let Some(forwarded) = &hello.forwarded else {
        return Ok(own);
    };
    if !own.as_ref().is_some_and(|c| peers::is_relay(c)) {
        return Err(Refusal::new(
            RefusalCode::Unauthenticated,
            "only relays forward technicians",
            "forwarded_by_non_relay",
        ));
    }
    tether_transport::tls::verify_client_chain(&env.trust.ca_bundle(), &forwarded.certificate, now)
        .map(Some)
        .map_err(|e| {
            Refusal::new(
                RefusalCode::Unauthenticated,
                format!("the forwarded technician certificate does not verify: {e}"),
                "forwarded_certificate_invalid",
            )
        })
}

/// Checks a renewed certificate chain (PEM) at `now`: issued by the cluster's CA, for the same
/// key, technician and session as the connection's, with a valid grant for the same session.
/// Returns the new expiry.
pub fn renew(
    trust: &crate::trust::TrustStore,
    current: &TechnicianCertificate,
    claims: &Claims,
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
pub async fn run(deps: TechnicianDeps, conn: Connection, link: ControlLink, hello: Hello) {
    let ControlLink { reader, writer } = link;
    let now = Timestamp::now().as_second();
    let peer = match presented_certificate(&deps.env, &conn, &hello, now) {
        Ok(peer) => peer,
        Err(refusal) => {
            refuse(&conn, writer, &deps.env.metrics, refusal).await;
            return;
        }
    };
    let admitted = match admit(&deps.env.trust, peer.as_ref(), now) {
        Ok(admitted) => admitted,
        Err(refusal) => {
            if hello.token.is_some() && peer.is_none() {
                debug!("Refused a technician presenting a bare session token");
            }
            refuse(&conn, writer, &deps.env.metrics, refusal).await;
            return;
        }
    };
    // A device attached to another replica: the technician is carried there (once).
    let session = &admitted.claims.session;
    if hello.forwarded.is_none()
        && deps
            .devices
            .get(&session.namespace, &session.device)
            .is_none()
        && let Some(to) = peers::locate(&deps.env, &session.namespace, &session.device).await
    {
        let chain = conn
            .peer_certificates()
            .map(|c| peers::pem_chain(&c))
            .unwrap_or_default();
        let link = ControlLink { reader, writer };
        peers::forward(&deps.env, conn, link, hello, chain, to).await;
        return;
    }
    // The name the cluster vouched for; escaped wherever it is shown.
    let technician = admitted.certificate.user.clone();
    let (session, seat) = match join(&deps, &admitted, &technician).await {
        Ok(joined) => joined,
        Err(refusal) => {
            refuse(&conn, writer, &deps.env.metrics, refusal).await;
            return;
        }
    };
    let Some(writer) = welcome(&deps.env, &session, &admitted.claims, writer).await else {
        return;
    };
    info!(session = %session.info.name, namespace = %session.info.namespace, technician = %escape(&technician), transport = conn.transport().as_str(), "Joined a technician to a session");
    if let Some(recorder) = session.recording.recorder() {
        recorder.technician(&technician).await;
        recorder
            .event(What::TechnicianJoined {
                technician: technician.clone(),
                transport: conn.transport().as_str().to_owned(),
            })
            .await;
    }

    let (control_tx, control_rx) = ControlTx::channel(64);
    session.add_technician(
        control_tx.clone(),
        Participant {
            name: technician.clone(),
            desktop: admitted.claims.session.permissions.desktop,
            joined_at: Timestamp::now().as_second(),
        },
    );
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    tasks.spawn(control_writer(writer, control_rx, stop.clone()));
    tasks.spawn(channels(
        deps.clone(),
        conn.clone(),
        session.clone(),
        admitted.claims.clone(),
        technician.clone(),
    ));
    control(&deps, &conn, &session, &admitted, reader, &control_tx).await;

    drop(seat);
    stop.cancel();
    session
        .record(What::TechnicianLeft {
            technician: technician.clone(),
        })
        .await;
    session.remove_technician(&control_tx);
    close_soon(&conn, "session over").await;
    let _ = tokio::time::timeout(CHANNEL_DRAIN, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.shutdown().await;
}

/// Seats an admitted technician in the session: the device must be connected, a seat free,
/// the recording running if the session must be recorded, and the user must agree.
async fn join(
    deps: &TechnicianDeps,
    admitted: &Admitted,
    technician: &str,
) -> Result<(Arc<SessionHandle>, crate::session::registry::Seat), Refusal> {
    let claims = &admitted.claims;
    let device = &claims.session.device;
    let Some(_agent) = deps.devices.get(&claims.session.namespace, device) else {
        return Err(Refusal::new(
            RefusalCode::DeviceOffline,
            format!("device {device} is not connected to the relay; is its agent running?"),
            "device_offline",
        ));
    };
    let session = deps.sessions.get_or_create(claims);
    let seat = session.take_seat(technician).map_err(|refusal| match refusal {
        SeatRefusal::Full { max } => Refusal::new(
            RefusalCode::Unavailable,
            format!("the session already has {max} technicians connected, the most one session takes"),
            "too_many_technicians",
        ),
        SeatRefusal::Ended => {
            Refusal::new(RefusalCode::SessionEnded, "the session has ended", "session_ended")
        }
    })?;
    session
        .ensure_recording(claims.session.recording)
        .await
        .map_err(|message| {
            Refusal::new(RefusalCode::Unavailable, message, "recording_unavailable")
        })?;
    session.consent(technician).await.map_err(|reason| {
        Refusal::new(
            RefusalCode::ConsentDenied,
            format!("the user did not allow the session ({reason})"),
            "consent_denied",
        )
    })?;
    Ok((session, seat))
}

/// Tells the technician they are in, with what their grant allows.
async fn welcome(
    env: &Env,
    session: &SessionHandle,
    claims: &Claims,
    mut writer: FrameWriter,
) -> Option<FrameWriter> {
    // What this technician may do, from their own grant: technicians of one session may have
    // different rights (one controls the desktop, one watches).
    let info = SessionInfo {
        permissions: claims.session.permissions.clone(),
        ..session.info.clone()
    };
    let welcome = HelloReply::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        relay: env.settings.name.clone(),
        session: Some(info),
        certificate: None,
        ca_bundle: None,
    });
    writer.message(&welcome).await.ok()?;
    Some(writer)
}

/// Serves the technician's control stream: renewals, the end of the session, pings; closes
/// the connection when its certificate runs out unrenewed.
async fn control(
    deps: &TechnicianDeps,
    conn: &Connection,
    session: &SessionHandle,
    admitted: &Admitted,
    mut reader: FrameReader,
    control_tx: &ControlTx,
) {
    let relay = &deps.env;
    let technician = escape(&admitted.certificate.user);
    let name = &session.info.name;
    let mut expires_at = admitted.certificate.not_after;
    loop {
        let left = Duration::from_secs(
            u64::try_from(expires_at - Timestamp::now().as_second()).unwrap_or(0),
        );
        tokio::select! {
            message = reader.message::<Control>() => match message {
                Ok(Control::Renew { certificate: chain }) => {
                    let now = Timestamp::now().as_second();
                    match renew(&relay.trust, &admitted.certificate, &admitted.claims, &chain, now) {
                        Ok(renewed) => {
                            expires_at = renewed;
                            debug!(session = %name, %technician, expires_at, "Renewed a technician's certificate");
                            let _ = control_tx.try_send(Control::Renewed { expires_at });
                        }
                        Err(why) => {
                            relay.metrics.rejected.with_label_values(&["renewal_refused"]).inc();
                            warn!(session = %name, %technician, reason = %why, "Refused a technician certificate renewal");
                        }
                    }
                }
                Ok(Control::End { reason, .. }) => {
                    info!(session = %name, namespace = %session.info.namespace, %technician, reason = %escape(&reason), "A technician ended the session");
                    session.end(EndReason::EndedByTechnician).await;
                    return;
                }
                Ok(Control::Ping { n }) => {
                    let _ = control_tx.try_send(Control::Pong { n });
                }
                Ok(_) => {}
                Err(e) => {
                    debug!(error = %e, "Technician control stream ended");
                    return;
                }
            },
            () = tokio::time::sleep(left) => {
                info!(session = %name, %technician, "Closed a technician connection whose certificate expired");
                relay.metrics.rejected.with_label_values(&["certificate_expired"]).inc();
                let _ = control_tx.send(Control::Goodbye { reason: "your technician certificate expired without renewal; connect again".into() }).await;
                return;
            }
            () = session.ended.cancelled() => return,
            () = conn.closed() => return,
            () = relay.shutdown.cancelled() => {
                let _ = control_tx.send(Control::Goodbye { reason: "the relay is shutting down".into() }).await;
                return;
            }
        }
    }
}

/// Accepts the technician's channel streams until the connection ends, each served by
/// [`channel`]; then gives the channels a moment to end on their own.
async fn channels(
    deps: TechnicianDeps,
    conn: Connection,
    session: Arc<SessionHandle>,
    claims: Claims,
    technician: String,
) {
    let mut channels = JoinSet::new();
    while let Some(stream) = conn.accept().await {
        channels.spawn(channel(
            deps.clone(),
            framed(stream),
            session.clone(),
            claims.clone(),
            technician.clone(),
        ));
        while channels.try_join_next().is_some() {}
    }
    // The connection is gone: its streams fail at once, so each channel ends on its own and
    // its recording is closed properly. Bounded, in case one does not.
    let _ = tokio::time::timeout(CHANNEL_DRAIN, async {
        while channels.join_next().await.is_some() {}
    })
    .await;
    channels.shutdown().await;
}

/// One channel: permitted by the grant, opened by the agent, then spliced (and recorded).
async fn channel(
    deps: TechnicianDeps,
    (mut r, mut w): (FrameReader, FrameWriter),
    session: Arc<SessionHandle>,
    claims: Claims,
    technician: String,
) {
    let relay = &deps.env;
    let Ok(attach) = r.message::<Attach>().await else {
        return;
    };
    let refused = |code, message: String, counted: Option<&'static str>| {
        if let Some(reason) = counted {
            relay.metrics.rejected.with_label_values(&[reason]).inc();
        }
        AttachReply::Refused(Refused { code, message })
    };
    if !attach.kind.allowed_by(&claims.session.permissions) {
        let message = format!(
            "the session does not allow the {} channel",
            attach.kind.as_str()
        );
        let _ = w
            .message(&refused(
                RefusalCode::Forbidden,
                message,
                Some("channel_forbidden"),
            ))
            .await;
        return;
    }
    let Some(agent) = deps
        .devices
        .get(&session.info.namespace, &session.info.device)
    else {
        let message = "the device disconnected".to_owned();
        let _ = w
            .message(&refused(RefusalCode::DeviceOffline, message, None))
            .await;
        return;
    };
    let id = relay.next_id();
    let open = Control::Open {
        channel: id,
        session_uid: session.info.uid.clone(),
        attach: attach.clone(),
        technician: technician.clone(),
        permissions: Some(claims.session.permissions.clone()),
    };
    let Some(agent_stream) = agent
        .open_channel(id, open, relay.settings.join_timeout)
        .await
    else {
        let message = "the agent did not open the channel".to_owned();
        let _ = w
            .message(&refused(
                RefusalCode::Unavailable,
                message,
                Some("channel_unavailable"),
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
    let _recorded = session.recording.channel();
    let tap = match session.recording.recorder() {
        Some(recorder) => Some(
            Tap::open(
                recorder,
                id,
                &technician,
                &attach,
                claims.session.record_keystrokes,
            )
            .await,
        ),
        None => None,
    };
    splice(
        (r, w),
        agent_stream,
        attach.kind,
        session.ended.clone(),
        &relay.metrics,
        tap,
        (attach.kind == ChannelKind::Desktop)
            .then(|| DesktopFilter::new(&claims.session.permissions, &relay.metrics)),
    )
    .await;
}

#[cfg(test)]
#[path = "technicians_tests.rs"]
mod tests;

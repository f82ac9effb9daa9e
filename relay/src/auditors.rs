//! Auditor connections: reading recordings without ever holding storage credentials. An
//! auditor presents a short-lived client certificate the operator issued after checking its
//! RBAC (`get` on `remotesessions/recording`); the certificate's URI SAN scopes it to a
//! namespace, or one session. Each stream carries one request: list the manifests, or read one
//! object as data frames.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tether_proto::frame::Frame;
use tether_proto::message::{
    AuditRequest, AuditResponse, Hello, HelloReply, PROTOCOL_VERSION, RefusalCode, Welcome,
};
use tether_recording::{SessionRef, Storage, catalog};
use tether_transport::tls::{recordings_scope, subject_and_expiry};
use tether_transport::{Connection, FrameReader, FrameWriter, framed};
use tokio::task::JoinSet;
use tracing::{debug, info};

use crate::env::Env;
use crate::link::{ControlLink, Refusal, close_soon, refuse};

/// Largest data frame an object is sent in.
const CHUNK: usize = 256 * 1024;

/// What an auditor may read: a namespace, or one session in it.
#[derive(Clone, Debug)]
struct Scope {
    namespace: String,
    session: Option<String>,
    /// Who (the certificate's common name: the requester's user name), for the audit trail.
    auditor: String,
}

impl Scope {
    fn allows(&self, session: Option<&str>) -> Result<(), String> {
        match (&self.session, session) {
            (None, _) => Ok(()),
            (Some(allowed), Some(asked)) if allowed == asked => Ok(()),
            (Some(allowed), asked) => Err(format!(
                "your certificate is for the recordings of session {allowed} only, not {}",
                asked.unwrap_or("the whole namespace")
            )),
        }
    }
}

/// Serves one auditor connection until it closes or the relay shuts down.
pub async fn run(relay: Arc<Env>, conn: Connection, link: ControlLink, hello: Hello) {
    let ControlLink {
        mut reader,
        mut writer,
    } = link;
    let certificate = conn.peer_certificates().and_then(|c| c.into_iter().next());
    let scope = certificate.as_ref().and_then(recordings_scope);
    let (auditor, expires) = certificate
        .as_ref()
        .and_then(subject_and_expiry)
        .unwrap_or_default();
    let Some((namespace, session)) = scope else {
        refuse(&conn, writer, &relay.metrics, Refusal::new(RefusalCode::Unauthenticated, format!("auditors must present a recordings certificate (kubectl tether obtains one with a CertificateSigningRequest for signer {})", tether_crds::contract::signers::RECORDINGS), "no_auditor_certificate")).await;
        return;
    };
    let Some(storage) = relay.settings.recording.as_ref().map(|r| r.storage.clone()) else {
        refuse(
            &conn,
            writer,
            &relay.metrics,
            Refusal::new(
                RefusalCode::Unavailable,
                "this relay has no recording store configured",
                "recording_not_configured",
            ),
        )
        .await;
        return;
    };
    let scope = Scope {
        namespace,
        session,
        auditor,
    };
    let welcome = HelloReply::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        relay: relay.settings.name.clone(),
        session: None,
        certificate: None,
        ca_bundle: None,
    });
    if writer.message(&welcome).await.is_err() {
        return;
    }
    info!(auditor = %scope.auditor, namespace = %scope.namespace, session = ?scope.session, client = %hello.client, "An auditor connected");
    // The certificate is short-lived; so is what it opens.
    let expired = async {
        let left = expires.saturating_sub(jiff::Timestamp::now().as_second());
        tokio::time::sleep(Duration::from_secs(u64::try_from(left).unwrap_or(0))).await;
    };
    tokio::pin!(expired);
    let mut requests = JoinSet::new();
    loop {
        tokio::select! {
            () = &mut expired => {
                info!(auditor = %scope.auditor, "Closed an auditor connection whose certificate expired");
                break;
            }
            stream = conn.accept() => {
                let Some(stream) = stream else { break };
                let (r, w) = framed(stream);
                requests.spawn(serve(storage.clone(), scope.clone(), r, w));
            }
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
            message = reader.next() => {
                if !matches!(message, Ok(Some(_))) {
                    break;
                }
            }
            () = relay.shutdown.cancelled() => break,
        }
    }
    requests.shutdown().await;
    close_soon(&conn, "auditor done").await;
}

async fn serve(storage: Storage, scope: Scope, mut reader: FrameReader, mut writer: FrameWriter) {
    let request = match reader.message::<AuditRequest>().await {
        Ok(r) => r,
        Err(e) => {
            debug!(error = %e, "Ignored a malformed audit request");
            return;
        }
    };
    if let Err(message) = answer(&storage, &scope, request, &mut writer).await {
        let _ = writer.message(&AuditResponse::Error { message }).await;
    }
    let _ = writer.finish().await;
}

async fn answer(
    storage: &Storage,
    scope: &Scope,
    request: AuditRequest,
    writer: &mut FrameWriter,
) -> Result<(), String> {
    match request {
        AuditRequest::List { session } => {
            scope.allows(session.as_deref())?;
            info!(auditor = %scope.auditor, namespace = %scope.namespace, session = ?session, "An auditor listed recordings");
            let session = session.or_else(|| scope.session.clone());
            let manifests = catalog::list(storage, &scope.namespace, session.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            let manifests = manifests
                .iter()
                .filter_map(|m| serde_json::to_value(m).ok())
                .collect();
            writer
                .message(&AuditResponse::Recordings { manifests })
                .await
                .map_err(|e| e.to_string())
        }
        AuditRequest::Read {
            session,
            uid,
            object,
        } => {
            scope.allows(Some(&session))?;
            info!(auditor = %scope.auditor, namespace = %scope.namespace, %session, %object, "An auditor read a recording");
            let reference = SessionRef {
                namespace: scope.namespace.clone(),
                name: session,
                uid,
            };
            let (size, mut stream) =
                catalog::open(storage, &reference, &object)
                    .await
                    .map_err(|e| {
                        if e.is_not_found() {
                            format!("no object {object} in the recordings of {}", reference.name)
                        } else {
                            e.to_string()
                        }
                    })?;
            writer
                .message(&AuditResponse::Sending { size })
                .await
                .map_err(|e| e.to_string())?;
            while let Some(chunk) = stream.next().await {
                // Once bytes are flowing an error can only end the stream early; the client
                // sees fewer bytes than announced and a checksum that does not match.
                let Ok(mut chunk) = chunk else { return Ok(()) };
                while !chunk.is_empty() {
                    let part = chunk.split_to(chunk.len().min(CHUNK));
                    if writer.send(&Frame::data(part)).await.is_err() {
                        return Ok(());
                    }
                }
            }
            let _ = writer.send(&Frame::end_of_data()).await;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(session: Option<&str>) -> Scope {
        Scope {
            namespace: "helpdesk".into(),
            session: session.map(str::to_owned),
            auditor: "dave".into(),
        }
    }

    #[test]
    fn a_session_certificate_reads_that_session_only() {
        let one = scope(Some("printer"));
        assert_eq!(one.allows(Some("printer")), Ok(()));
        let other = one.allows(Some("vpn")).unwrap_err();
        assert!(other.contains("session printer only, not vpn"), "{other}");
        let all = one.allows(None).unwrap_err();
        assert!(all.contains("not the whole namespace"), "{all}");
        // A namespace certificate reads any session of its namespace.
        let namespace = scope(None);
        assert_eq!(namespace.allows(Some("vpn")), Ok(()));
        assert_eq!(namespace.allows(None), Ok(()));
    }
}

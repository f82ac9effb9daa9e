//! Enrollment: an agent without a certificate presents its device group's bootstrap token
//! and a CSR; the relay files a CertificateSigningRequest for the `tether.dev/agent` signer
//! carrying a digest of the token (never the token: the relay cannot read the group's
//! Secret), and waits for the operator's decision. The operator checks the token, its expiry
//! and uses, and that the device name is not enrolled already; the relay hands back the
//! certificate with the CA bundle, or the operator's reason. The agent never talks to the
//! Kubernetes API.

use std::sync::Arc;
use std::time::Duration;

use tether_proto::message::{Hello, HelloReply, PROTOCOL_VERSION, RefusalCode, Welcome};
use tether_transport::Connection;
use tracing::{info, warn};

use crate::cluster::Enrollment;
use crate::env::Env;
use crate::link::{ControlLink, Refusal, close_soon, refuse};

/// How long an enrolling agent waits for the operator's decision.
const DECISION_WAIT: Duration = Duration::from_secs(30);

/// Enrollments this relay takes to the cluster at once. Every attempt, even with a wrong
/// token, becomes a CertificateSigningRequest (only the operator can judge the token), so
/// anyone who can reach the relay could otherwise fill the API server with them.
static IN_FLIGHT: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(8);

/// How long a refused token keeps its place among [`IN_FLIGHT`] after the refusal was sent:
/// guessing is slowed to a few attempts per second per relay, while the agent hears at once.
const REFUSAL_HOLD: Duration = Duration::from_secs(1);

pub use tether_crds::device::token_digest;

/// How the relay answers the agent, and counts it, for an operator's denial `reason`.
pub fn refusal_for(reason: &str) -> (RefusalCode, &'static str) {
    match reason {
        "BadBootstrapToken" | "NoBootstrapToken" => {
            (RefusalCode::Unauthenticated, "bad_bootstrap_token")
        }
        "BootstrapTokenExpired" => (RefusalCode::Unauthenticated, "expired_bootstrap_token"),
        "BootstrapTokenUsedUp" => (RefusalCode::Unauthenticated, "used_up_bootstrap_token"),
        "InvalidEnrollmentSecret" => (RefusalCode::Unavailable, "invalid_enrollment_secret"),
        "AlreadyEnrolled" => (RefusalCode::Forbidden, "already_enrolled"),
        _ => (RefusalCode::Forbidden, "enroll_denied"),
    }
}

/// A message from the cluster made safe to show on a terminal: control characters escaped,
/// at most 1 KiB. (A denial's message can be written by anyone allowed to deny requests.)
pub fn displayable(message: &str) -> String {
    let mut out = String::new();
    for c in message.chars() {
        if out.len() >= 1024 {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

pub use tether_crds::contract::valid_name;

/// Serves one enrollment.
pub async fn run(relay: Arc<Env>, conn: Connection, link: ControlLink, hello: Hello) {
    let ControlLink { mut writer, .. } = link;
    let Some(request) = hello.enroll else {
        refuse(
            &conn,
            writer,
            &relay.metrics,
            Refusal::new(
                RefusalCode::Malformed,
                "an enrollment needs a request",
                "malformed",
            ),
        )
        .await;
        return;
    };
    if !valid_name(&request.namespace) || !valid_name(&request.device) {
        refuse(&conn, writer, &relay.metrics, Refusal::new(RefusalCode::Malformed, format!(
                    "{:?}/{:?} is not a valid namespace and device name (lower-case letters, digits, '-' and '.')",
                    request.namespace, request.device
                ), "malformed")).await;
        return;
    }
    let Some(cluster) = &relay.cluster else {
        refuse(
            &conn,
            writer,
            &relay.metrics,
            Refusal::new(
                RefusalCode::Unavailable,
                "this relay cannot enroll devices",
                "unavailable",
            ),
        )
        .await;
        return;
    };
    if tether_crds::device::bootstrap_token(&request.bootstrap_token).is_empty() {
        refuse(
            &conn,
            writer,
            &relay.metrics,
            Refusal::new(
                RefusalCode::Unauthenticated,
                "an enrollment needs a bootstrap token",
                "bad_bootstrap_token",
            ),
        )
        .await;
        return;
    }
    let Ok(_permit) = IN_FLIGHT.try_acquire() else {
        refuse(
            &conn,
            writer,
            &relay.metrics,
            Refusal::new(
                RefusalCode::Unavailable,
                "the relay is busy with other enrollments; try again in a few seconds",
                "enroll_busy",
            ),
        )
        .await;
        return;
    };
    let decision = cluster
        .sign_agent_csr(
            &request.namespace,
            &request.device,
            &request.bootstrap_token,
            &request.csr,
            DECISION_WAIT,
        )
        .await;
    let certificate = match decision {
        Ok(Enrollment::Signed(cert)) => cert,
        Ok(Enrollment::Denied { reason, message }) => {
            let (code, label) = refusal_for(&reason);
            warn!(namespace = %request.namespace, device = %request.device, reason = %displayable(&reason), "Refused an enrollment");
            let refusal = Refusal::new(code, displayable(&message), label);
            refuse(&conn, writer, &relay.metrics, refusal).await;
            if code == RefusalCode::Unauthenticated {
                tokio::time::sleep(REFUSAL_HOLD).await;
            }
            return;
        }
        Err(e) => {
            refuse(
                &conn,
                writer,
                &relay.metrics,
                Refusal::new(
                    RefusalCode::Unavailable,
                    format!("enrollment is unavailable: {e}: {}", source_of(&e)),
                    "enroll_failed",
                ),
            )
            .await;
            return;
        }
    };
    info!(namespace = %request.namespace, device = %request.device, "Enrolled a device");
    let _ = writer
        .message(&HelloReply::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            relay: relay.settings.name.clone(),
            session: None,
            certificate: Some(certificate),
            ca_bundle: Some(relay.trust.ca_bundle()),
        }))
        .await;
    let _ = writer.finish().await;
    close_soon(&conn, "enrolled").await;
}

/// The cause under a cluster error, for the agent's message.
fn source_of(e: &crate::cluster::ClusterError) -> String {
    std::error::Error::source(e)
        .map(|s| displayable(&s.to_string()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::{displayable, refusal_for, token_digest, valid_name};
    use tether_proto::message::RefusalCode;

    #[test]
    fn token_digests_bind_the_request_and_ignore_a_trailing_newline() {
        // sha256("tether-agent-a-b-1\nsecret"), the same vector as the operator's test.
        let digest = token_digest("tether-agent-a-b-1", "secret");
        assert_eq!(
            digest,
            "b6c9fc6173d724367c4f793426ca502f48f1b9f38031cd3bb2f2f114f3e09c21"
        );
        assert_eq!(digest, token_digest("tether-agent-a-b-1", "secret\n"));
        assert_ne!(digest, token_digest("tether-agent-a-b-2", "secret"));
        assert_ne!(digest, token_digest("tether-agent-a-b-1", "secreT"));
        assert_eq!(digest.len(), 64);
    }

    #[test]
    fn denials_map_to_refusals() {
        assert_eq!(
            refusal_for("AlreadyEnrolled"),
            (RefusalCode::Forbidden, "already_enrolled")
        );
        assert_eq!(
            refusal_for("BadBootstrapToken").0,
            RefusalCode::Unauthenticated
        );
        assert_eq!(
            refusal_for("BootstrapTokenExpired").1,
            "expired_bootstrap_token"
        );
        assert_eq!(refusal_for("anything else").1, "enroll_denied");
    }

    #[test]
    fn messages_shown_to_the_agent_are_escaped_and_bounded() {
        assert_eq!(displayable("a\x1b[2Jb\nc"), "a\\u{1b}[2Jb\\nc");
        assert!(displayable(&"x".repeat(5000)).len() < 1100);
    }

    #[test]
    fn names() {
        for good in ["kiosk-7", "a", "laptop.floor-2"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "Kiosk", "-a", "a-", "a/b", "a b", &"x".repeat(64)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}

//! Enrollment: an agent without a certificate presents its device group's bootstrap token
//! and a CSR; the relay checks the token and asks the operator (a CertificateSigningRequest
//! for the `tether.dev/agent` signer) for the client certificate, which it hands back with the
//! CA bundle. The agent never talks to the Kubernetes API.

use std::sync::Arc;
use std::time::Duration;

use tether_proto::message::{Hello, HelloReply, PROTOCOL_VERSION, RefusalCode, Welcome};
use tether_transport::Connection;
use tracing::info;

use crate::server::{ControlLink, Relay, close_soon};

/// Whether `name` is a valid Kubernetes object name (DNS-1123 subdomain, ≤ 63 here).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

/// Serves one enrollment.
pub async fn run(relay: Arc<Relay>, conn: Connection, link: ControlLink, hello: Hello) {
    let ControlLink { mut writer, .. } = link;
    let Some(request) = hello.enroll else {
        relay
            .refuse(
                &mut writer,
                RefusalCode::Malformed,
                "an enrollment needs a request".into(),
                "malformed",
            )
            .await;
        close_soon(&conn, "malformed").await;
        return;
    };
    if !valid_name(&request.namespace) || !valid_name(&request.device) {
        relay
            .refuse(
                &mut writer,
                RefusalCode::Malformed,
                format!(
                    "{:?}/{:?} is not a valid namespace and device name (lower-case letters, digits, '-' and '.')",
                    request.namespace, request.device
                ),
                "malformed",
            )
            .await;
        close_soon(&conn, "malformed").await;
        return;
    }
    let Some(cluster) = &relay.cluster else {
        relay
            .refuse(
                &mut writer,
                RefusalCode::Unavailable,
                "this relay cannot enroll devices".into(),
                "unavailable",
            )
            .await;
        close_soon(&conn, "unavailable").await;
        return;
    };
    match cluster
        .check_bootstrap_token(&request.namespace, &request.bootstrap_token)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            relay
                .refuse(
                    &mut writer,
                    RefusalCode::Unauthenticated,
                    format!(
                        "the bootstrap token is not valid for device group {}",
                        request.namespace
                    ),
                    "bad_bootstrap_token",
                )
                .await;
            close_soon(&conn, "unauthenticated").await;
            return;
        }
        Err(e) => {
            relay
                .refuse(
                    &mut writer,
                    RefusalCode::Unavailable,
                    format!("enrollment is unavailable: {e}"),
                    "unavailable",
                )
                .await;
            close_soon(&conn, "unavailable").await;
            return;
        }
    }
    let certificate = match cluster
        .sign_agent_csr(
            &request.namespace,
            &request.device,
            &request.csr,
            Duration::from_secs(30),
        )
        .await
    {
        Ok(cert) => cert,
        Err(e) => {
            relay
                .refuse(
                    &mut writer,
                    RefusalCode::Unavailable,
                    e.to_string(),
                    "enroll_failed",
                )
                .await;
            close_soon(&conn, "enrollment failed").await;
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

#[cfg(test)]
mod tests {
    use super::valid_name;

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

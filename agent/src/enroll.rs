//! Enrollment: a fresh key and CSR, sent with the device group's bootstrap token to the relay
//! (which has the operator's CA sign it); the certificate, key and CA bundle are stored in the
//! state directory. The subject in the CSR is ignored by the CA: identity comes from the
//! enrollment.
//!
//! The operator decides: a wrong, expired or used-up token, or a device name that is already
//! enrolled (unless an administrator allowed it to enroll again), is refused with its reason,
//! which is shown as the relay sent it, control characters escaped.

use std::time::Duration;

use anyhow::{Context, bail};
use rcgen::{CertificateParams, KeyPair};
use tether_proto::message::{EnrollRequest, Hello, HelloReply, PROTOCOL_VERSION, Role};
use tether_transport::{Dial, Prefer, framed, tls};

use crate::state::{Identity, State};

/// Enrolls the device and writes its credentials.
pub async fn enroll(
    state: &State,
    relay: &str,
    ca: &str,
    namespace: &str,
    device: &str,
    token: &str,
    proxy: Option<String>,
) -> anyhow::Result<()> {
    // Surrounding whitespace (a token file's trailing newline) is not part of the token; the
    // operator compares the Secret's value the same way.
    let token = token.trim();
    if token.is_empty() {
        bail!("the bootstrap token is empty");
    }
    let key = KeyPair::generate().context("failed to generate a key")?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, device);
    let csr = params
        .serialize_request(&key)
        .context("failed to create the CSR")?
        .pem()?;
    let dial = Dial {
        relay: relay.to_owned(),
        tls: tls::client_config(ca, None)?,
        prefer: Prefer::Auto,
        quic_timeout: Duration::from_secs(3),
        proxy,
    };
    let conn = dial.connect().await?;
    let (mut reader, mut writer) = framed(conn.open().await?);
    writer
        .message(&Hello {
            versions: vec![PROTOCOL_VERSION],
            role: Role::Enroll,
            token: None,
            agent: None,
            enroll: Some(EnrollRequest {
                namespace: namespace.to_owned(),
                device: device.to_owned(),
                bootstrap_token: token.to_owned(),
                csr,
            }),
            client: format!("tether-agent/{}", env!("CARGO_PKG_VERSION")),
            technician: None,
            forwarded: None,
        })
        .await?;
    let reply = tokio::time::timeout(Duration::from_secs(60), reader.message::<HelloReply>())
        .await
        .context("the relay did not answer the enrollment within 60s")??;
    conn.close("enrolled");
    match reply {
        HelloReply::Welcome(w) => {
            let (Some(cert), Some(bundle)) = (w.certificate, w.ca_bundle) else {
                bail!("the relay accepted the enrollment but sent no certificate");
            };
            state.save(
                &Identity {
                    namespace: namespace.to_owned(),
                    device: device.to_owned(),
                    relay: relay.to_owned(),
                },
                &cert,
                &key.serialize_pem(),
                &bundle,
            )
        }
        HelloReply::Refused(r) => bail!("enrollment refused: {}", escape_controls(&r.message)),
    }
}

/// `text` with control characters (terminal escapes, newlines) escaped.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape_controls;

    #[test]
    fn refusals_cannot_drive_the_terminal() {
        assert_eq!(escape_controls("no\x1b[2J\nway"), "no\\u{1b}[2J\\nway");
        assert_eq!(escape_controls("device kiosks/k7"), "device kiosks/k7");
    }
}

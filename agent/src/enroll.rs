//! Enrollment: a fresh key and CSR, sent with the device group's bootstrap token to the relay
//! (which has the operator's CA sign it); the certificate, key and CA bundle are stored in the
//! state directory. The subject in the CSR is ignored by the CA: identity comes from the
//! enrollment.

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
        HelloReply::Refused(r) => bail!("enrollment refused: {}", r.message),
    }
}

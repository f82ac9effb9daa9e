//! Short-lived client certificates from the cluster: the CLI generates a key, files a
//! CertificateSigningRequest for one of Tether's signers (`tether.dev/technician` to join a
//! session, `tether.dev/recordings` to read recordings), and waits for the operator to sign
//! it. The API server stamps the request with the caller's identity and the operator decides
//! by RBAC, so the certificate says who the caller is; the key never leaves this process.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::api::{Api, ObjectMeta, PostParams};
use rcgen::{CertificateParams, KeyPair};
use tether_crds::contract::csr_annotations;

use crate::client::explain;

/// How long the operator has to sign a request.
const SIGN_TIMEOUT: Duration = Duration::from_secs(30);

/// A certificate the operator issued, with its key.
pub struct Issued {
    /// The leaf certificate, PEM.
    pub cert: String,
    /// The private key, PEM.
    pub key: String,
    /// The CA bundle the relay's certificate chains to, PEM.
    pub ca: String,
    /// The relay to present it to, as the operator named it.
    pub relay: Option<String>,
}

/// What to ask for.
pub struct Ask<'a> {
    /// The signer.
    pub signer: &'a str,
    /// Short name for the request's name (`tether-<kind>-…`).
    pub kind: &'a str,
    /// The namespace it is for.
    pub namespace: &'a str,
    /// One RemoteSession, if the signer scopes to one.
    pub session: Option<&'a str>,
    /// What to say when the caller may not file requests.
    pub role_hint: &'a str,
}

/// A fresh key for certificates of this process (renewals reuse it).
pub fn new_key() -> Result<KeyPair> {
    KeyPair::generate().context("failed to generate a key")
}

/// Files a request for `key` and waits until the operator signs or denies it.
pub async fn request(client: &kube::Client, ask: &Ask<'_>, key: &KeyPair) -> Result<Issued> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("tether-{}", ask.kind));
    let csr_pem = params.serialize_request(key)?.pem()?;
    let name = format!("tether-{}-{:016x}", ask.kind, rand::random::<u64>());
    let mut annotations = BTreeMap::from([(
        csr_annotations::NAMESPACE.to_owned(),
        ask.namespace.to_owned(),
    )]);
    if let Some(session) = ask.session {
        annotations.insert(csr_annotations::SESSION.into(), session.to_owned());
    }
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: k8s_openapi::ByteString(csr_pem.into_bytes()),
            signer_name: ask.signer.into(),
            usages: Some(vec!["client auth".into(), "digital signature".into()]),
            // The shortest the API server accepts; the operator may issue shorter.
            expiration_seconds: Some(900),
            ..Default::default()
        },
        status: None,
    };
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    api.create(&PostParams::default(), &csr)
        .await
        .map_err(|e| explain(e, ask.role_hint))?;
    let deadline = tokio::time::Instant::now() + SIGN_TIMEOUT;
    // The operator signs within tens of milliseconds: ask again soon, then back off. (A
    // watch would need `watch` on every CertificateSigningRequest, which would show a
    // technician everyone else's requests.)
    let mut wait = Duration::from_millis(20);
    loop {
        let current = api
            .get(&name)
            .await
            .map_err(|e| explain(e, &format!("read CertificateSigningRequest {name}")))?;
        if let Some(status) = &current.status {
            if let Some(denied) = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "Denied" || c.type_ == "Failed")
            {
                bail!(
                    "{}",
                    tether_proto::text::escape(&denied.message.clone().unwrap_or_default())
                );
            }
            let relay = current
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(csr_annotations::RELAY).cloned());
            if let Some(cert) = status.certificate.as_ref().filter(|c| !c.0.is_empty()) {
                let chain = String::from_utf8(cert.0.clone())
                    .context("the issued certificate is not PEM")?;
                return split_chain(&chain, key.serialize_pem(), relay);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "CertificateSigningRequest {name} was not signed within {}s; is tether-operator running?",
                SIGN_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(200));
    }
}

/// The leaf certificate and the CA bundle after it.
pub fn split_chain(chain: &str, key: String, relay: Option<String>) -> Result<Issued> {
    const END: &str = "-----END CERTIFICATE-----";
    let blocks: Vec<String> = chain
        .split_inclusive(END)
        .map(str::trim)
        .filter(|b| b.contains("BEGIN CERTIFICATE"))
        .map(|b| format!("{b}\n"))
        .collect();
    let Some((leaf, cas)) = blocks.split_first() else {
        bail!("the issued certificate is empty");
    };
    if cas.is_empty() {
        bail!("the issued certificate does not include the CA that signs the relay's");
    }
    Ok(Issued {
        cert: leaf.clone(),
        key,
        ca: cas.concat(),
        relay,
    })
}

/// A certificate's expiry (Unix seconds).
pub fn not_after(cert_pem: &str) -> Option<i64> {
    let der = tether_transport::tls::certs(cert_pem, "certificate")
        .ok()?
        .into_iter()
        .next()?;
    tether_transport::tls::subject_and_expiry(&der).map(|(_, at)| at)
}

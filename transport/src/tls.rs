//! TLS configuration shared by QUIC and TLS over TCP: ALPN `tether/1`, the ring crypto
//! provider, server certificates from PEM, clients trusting Tether's CA bundle, and optional
//! client certificates (agents, technicians and auditors present one; enrolling agents do not).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tether_proto::message::ALPN;

/// A TLS configuration problem.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// PEM input did not contain what was expected.
    #[error("invalid PEM ({what}): {message}")]
    Pem {
        /// What was being read.
        what: &'static str,
        /// Why it failed.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("invalid TLS configuration")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built.
    #[error("invalid client certificate trust: {0}")]
    Verifier(String),
}

/// The crypto provider every Tether endpoint uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Certificates from PEM.
pub fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            message: "no certificate found".into(),
        });
    }
    Ok(certs)
}

/// A private key from PEM.
pub fn key(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem {
        what,
        message: e.to_string(),
    })
}

/// Roots from a PEM bundle.
pub fn roots(bundle: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(bundle, "CA bundle")? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// The relay's server configuration: its certificate chain and key, and client certificates
/// verified against `client_ca_bundle` when presented (never required at the TLS layer: the
/// protocol decides per role).
pub fn server_config(
    cert_chain_pem: &str,
    key_pem: &str,
    client_ca_bundle: &str,
) -> Result<ServerConfig, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(client_ca_bundle)?), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs(cert_chain_pem, "server certificate")?,
            key(key_pem, "server key")?,
        )?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// A client configuration trusting `ca_bundle`, optionally presenting a client certificate.
pub fn client_config(
    ca_bundle: &str,
    identity: Option<(&str, &str)>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_bundle)?);
    let mut config = match identity {
        Some((cert_pem, key_pem)) => builder.with_client_auth_cert(
            certs(cert_pem, "client certificate")?,
            key(key_pem, "client key")?,
        )?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The identity in an agent's client certificate: `(namespace, device)` from its URI SAN
/// `tether://device/<namespace>/<device>`, which the operator's CA writes from enrollment.
/// Only call this on a certificate the TLS layer has verified.
pub fn agent_identity(cert: &CertificateDer<'_>) -> Option<(String, String)> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => {
            let rest = uri.strip_prefix("tether://device/")?;
            let (namespace, device) = rest.split_once('/')?;
            (!namespace.is_empty() && !device.is_empty() && !device.contains('/'))
                .then(|| (namespace.to_owned(), device.to_owned()))
        }
        _ => None,
    })
}

/// The scope in an auditor's client certificate: `(namespace, session)` from its URI SAN
/// `tether://recordings/<namespace>` or `tether://recordings/<namespace>/<session>`, which the
/// operator writes after checking the requester's RBAC. Only call this on a certificate the
/// TLS layer has verified.
pub fn recordings_scope(cert: &CertificateDer<'_>) -> Option<(String, Option<String>)> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => {
            let rest = uri.strip_prefix("tether://recordings/")?;
            let (namespace, session) = match rest.split_once('/') {
                Some((ns, session)) => (ns, Some(session)),
                None => (rest, None),
            };
            let valid =
                !namespace.is_empty() && session.is_none_or(|s| !s.is_empty() && !s.contains('/'));
            valid.then(|| (namespace.to_owned(), session.map(str::to_owned)))
        }
        _ => None,
    })
}

/// A verified client certificate's subject common name and expiry (Unix seconds), for logs and
/// for closing a connection when its certificate runs out.
pub fn subject_and_expiry(cert: &CertificateDer<'_>) -> Option<(String, i64)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    Some((cn, parsed.validity().not_after.timestamp()))
}

/// Whether a verified certificate has the URI SAN `uri` exactly. Only call this on a
/// certificate the TLS layer has verified.
pub fn has_uri(cert: &CertificateDer<'_>, uri: &str) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return false;
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return false;
    };
    san.value
        .general_names
        .iter()
        .any(|name| matches!(name, GeneralName::URI(u) if *u == uri))
}

/// URI SAN prefix naming the session a technician certificate is for:
/// `tether://technician/<namespace>/<session>`.
pub const TECHNICIAN_URI: &str = "tether://technician/";
/// URI SAN prefix carrying a technician certificate's grant: `tether://grant/<token>`, the
/// session token the operator minted for this technician alone.
pub const GRANT_URI: &str = "tether://grant/";

/// What a technician certificate says: who (the Kubernetes user the operator checked), for
/// which session, with which grant, until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TechnicianCertificate {
    /// The technician: the certificate's common name.
    pub user: String,
    /// The session's namespace.
    pub namespace: String,
    /// The session's name.
    pub session: String,
    /// The session token the certificate carries.
    pub grant: String,
    /// Expiry (Unix seconds).
    pub not_after: i64,
    /// The certified public key (DER SubjectPublicKeyInfo), to check that a renewal is for the
    /// same key as the connection.
    pub public_key: Vec<u8>,
}

impl std::fmt::Display for TechnicianCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "technician certificate of {} for {}/{}",
            tether_proto::text::escape(&self.user),
            self.namespace,
            self.session
        )
    }
}

/// Reads a technician certificate (`None` if it is not one). Only call this on a certificate
/// the TLS layer, or [`verify_client_chain`], has verified.
pub fn technician_certificate(cert: &CertificateDer<'_>) -> Option<TechnicianCertificate> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut scope = None;
    let mut grant = None;
    for name in &san.value.general_names {
        if let GeneralName::URI(uri) = name {
            if let Some(rest) = uri.strip_prefix(TECHNICIAN_URI) {
                let (namespace, session) = rest.split_once('/')?;
                if namespace.is_empty() || session.is_empty() || session.contains('/') {
                    return None;
                }
                scope = Some((namespace.to_owned(), session.to_owned()));
            } else if let Some(token) = uri.strip_prefix(GRANT_URI) {
                grant = Some(token.to_owned());
            }
        }
    }
    let (namespace, session) = scope?;
    let user = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())?
        .to_owned();
    Some(TechnicianCertificate {
        user,
        namespace,
        session,
        grant: grant?,
        not_after: parsed.validity().not_after.timestamp(),
        public_key: parsed.public_key().raw.to_vec(),
    })
}

/// Verifies a client certificate chain (PEM, leaf first) against `ca_bundle` at `now` (Unix
/// seconds), as the TLS layer does for a handshake, and returns the leaf.
pub fn verify_client_chain(
    ca_bundle: &str,
    chain_pem: &str,
    now: i64,
) -> Result<CertificateDer<'static>, TlsError> {
    use rustls::pki_types::UnixTime;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_bundle)?), provider())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut chain = certs(chain_pem, "client certificate")?.into_iter();
    let leaf = chain.next().ok_or_else(|| TlsError::Pem {
        what: "client certificate",
        message: "no certificate found".into(),
    })?;
    let intermediates: Vec<_> = chain.collect();
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(now).unwrap_or(0),
    ));
    verifier.verify_client_cert(&leaf, &intermediates, at)?;
    Ok(leaf)
}

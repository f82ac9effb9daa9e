//! The certificate authority: a CA key and certificate created on first start, rotated before
//! it expires with overlap, and the certificates it issues (relay serving certificates, agent
//! client certificates). Pure: callers pass the time and persist the state.
//!
//! Rotation keeps every CA certificate that has not expired in the trust bundle, and no issued
//! certificate outlives its CA, so a certificate issued just before a rotation keeps working
//! until it expires.

use std::net::IpAddr;
use std::time::Duration;

use jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};

/// How long certificates live and when the CA rotates.
#[derive(Clone, Debug)]
pub struct CaSettings {
    /// Lifetime of a CA certificate.
    pub ca_validity: Duration,
    /// Rotate the CA when less than this is left.
    pub rotate_before: Duration,
}

impl Default for CaSettings {
    fn default() -> Self {
        Self {
            ca_validity: Duration::from_secs(365 * 24 * 3600),
            rotate_before: Duration::from_secs(120 * 24 * 3600),
        }
    }
}

/// One CA generation.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CaGeneration {
    /// Certificate, PEM.
    pub cert: String,
    /// Private key, PEM; dropped once the generation is superseded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Start of validity (Unix seconds).
    pub not_before: i64,
    /// End of validity (Unix seconds).
    pub not_after: i64,
}

impl std::fmt::Debug for CaGeneration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaGeneration")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("has_key", &self.key.is_some())
            .finish()
    }
}

/// The persisted state of the CA: the signing generation and the older ones still trusted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Authority {
    /// The generation that signs new certificates.
    pub current: CaGeneration,
    /// Earlier generations, still trusted until they expire.
    #[serde(default)]
    pub previous: Vec<CaGeneration>,
}

/// A freshly issued certificate and its key.
#[derive(Clone)]
pub struct Issued {
    /// Certificate, PEM.
    pub cert: String,
    /// Private key, PEM (empty when the key stayed with the requester, as with a CSR).
    pub key: String,
    /// End of validity (Unix seconds).
    pub not_after: i64,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// What [`Authority::plan`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaPlan {
    /// Nothing to do until this time (Unix seconds).
    KeepUntil(i64),
    /// Rotate now.
    Rotate,
}

/// A failure in the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// rcgen refused to build or sign something.
    #[error("failed to {what}")]
    Certificate {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },
    /// The stored state has no signing key.
    #[error("the CA's current generation has no private key")]
    NoKey,
    /// A time could not be represented.
    #[error("time {0} is out of range for a certificate")]
    Time(i64),
    /// A certificate signing request was refused.
    #[error("refused the certificate signing request: {0}")]
    Csr(String),
}

fn cert_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> CaError {
    move |source| CaError::Certificate { what, source }
}

fn offset(t: i64) -> Result<time::OffsetDateTime, CaError> {
    time::OffsetDateTime::from_unix_timestamp(t).map_err(|_| CaError::Time(t))
}

fn serial() -> SerialNumber {
    let bytes: [u8; 16] = rand::random();
    // Positive, non-zero serial numbers.
    let mut bytes = bytes.to_vec();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn new_generation(now: i64, settings: &CaSettings) -> Result<CaGeneration, CaError> {
    let key = KeyPair::generate().map_err(cert_err("generate a CA key"))?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(cert_err("build CA parameters"))?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Tether");
    name.push(DnType::CommonName, format!("Tether CA {now}"));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // Backdate a little for clocks that run behind.
    let not_before = now - 300;
    let not_after = now + settings.ca_validity.as_secs() as i64;
    params.not_before = offset(not_before)?;
    params.not_after = offset(not_after)?;
    params.serial_number = Some(serial());
    let cert = params
        .self_signed(&key)
        .map_err(cert_err("self-sign the CA"))?;
    Ok(CaGeneration {
        cert: cert.pem(),
        key: Some(key.serialize_pem()),
        not_before,
        not_after,
    })
}

impl Authority {
    /// Creates a new CA valid from `now`.
    pub fn create(now: i64, settings: &CaSettings) -> Result<Self, CaError> {
        Ok(Self {
            current: new_generation(now, settings)?,
            previous: Vec::new(),
        })
    }

    /// Decides whether to rotate at `now`.
    pub fn plan(&self, now: i64, settings: &CaSettings) -> CaPlan {
        let rotate_at = self.current.not_after - settings.rotate_before.as_secs() as i64;
        if now >= rotate_at {
            CaPlan::Rotate
        } else {
            CaPlan::KeepUntil(rotate_at)
        }
    }

    /// Starts a new generation; the current one stays trusted (without its key) until it
    /// expires. Expired generations are dropped.
    pub fn rotate(&mut self, now: i64, settings: &CaSettings) -> Result<(), CaError> {
        let next = new_generation(now, settings)?;
        let mut old = std::mem::replace(&mut self.current, next);
        old.key = None;
        self.previous.insert(0, old);
        self.prune(now);
        Ok(())
    }

    /// Drops generations that have expired.
    pub fn prune(&mut self, now: i64) {
        self.previous.retain(|g| g.not_after > now);
    }

    /// Every CA certificate still trusted, newest first, as one PEM bundle.
    pub fn trust_bundle(&self) -> String {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|g| g.cert.trim_end().to_owned() + "\n")
            .collect()
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, CaError> {
        let key_pem = self.current.key.as_deref().ok_or(CaError::NoKey)?;
        let key = KeyPair::from_pem(key_pem).map_err(cert_err("load the CA key"))?;
        Issuer::from_ca_cert_pem(&self.current.cert, key)
            .map_err(cert_err("load the CA certificate"))
    }

    fn leaf_window(&self, now: i64, validity: Duration) -> (i64, i64) {
        let not_after = (now + validity.as_secs() as i64).min(self.current.not_after);
        (now - 300, not_after)
    }

    /// Issues a relay's certificate for `dns_names` and `ips`, valid for `validity` but never
    /// past the CA's own expiry: a serving certificate that is also a client certificate with
    /// the URI SAN [`tether_crds::contract::relay_certificate::PEER_URI`], so that relays forwarding a
    /// technician to the replica its device is attached to know each other.
    pub fn issue_server(
        &self,
        common_name: &str,
        dns_names: &[String],
        ips: &[IpAddr],
        validity: Duration,
        now: i64,
    ) -> Result<Issued, CaError> {
        let issuer = self.issuer()?;
        let key = KeyPair::generate().map_err(cert_err("generate a key"))?;
        let mut params = CertificateParams::new(dns_names.to_vec())
            .map_err(cert_err("build certificate parameters"))?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.subject_alt_names.push(SanType::URI(
            tether_crds::contract::relay_certificate::PEER_URI
                .try_into()
                .map_err(cert_err("name the relay peer"))?,
        ));
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Tether");
        name.push(DnType::CommonName, common_name);
        params.distinguished_name = name;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let (not_before, not_after) = self.leaf_window(now, validity);
        params.not_before = offset(not_before)?;
        params.not_after = offset(not_after)?;
        params.serial_number = Some(serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(cert_err("sign a serving certificate"))?;
        Ok(Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
            not_after,
        })
    }

    /// Signs an agent's certificate signing request as a client certificate for device
    /// `device` in `namespace` (CN = device, O = namespace, URI SAN
    /// `tether://device/<namespace>/<device>`). Whatever subject the CSR asks for is replaced:
    /// the identity comes from enrollment, not from the requester.
    pub fn sign_client_csr(
        &self,
        csr_pem: &str,
        namespace: &str,
        device: &str,
        validity: Duration,
        now: i64,
    ) -> Result<Issued, CaError> {
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, namespace);
        name.push(DnType::CommonName, device);
        self.sign_csr(
            csr_pem,
            name,
            vec![format!("tether://device/{namespace}/{device}")],
            validity,
            now,
        )
    }

    /// Signs a technician's certificate signing request as a client certificate for joining
    /// one session: CN = the Kubernetes user the operator checked, URI SANs
    /// `tether://technician/<namespace>/<session>` and `tether://grant/<token>` (the session
    /// token minted for this technician, which the relay verifies). The CSR's own subject is
    /// replaced.
    #[allow(clippy::too_many_arguments)]
    pub fn sign_technician_csr(
        &self,
        csr_pem: &str,
        user: &str,
        namespace: &str,
        session: &str,
        grant: &str,
        validity: Duration,
        now: i64,
    ) -> Result<Issued, CaError> {
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Tether technicians");
        name.push(DnType::CommonName, user);
        self.sign_csr(
            csr_pem,
            name,
            vec![
                format!("tether://technician/{namespace}/{session}"),
                format!("tether://grant/{grant}"),
            ],
            validity,
            now,
        )
    }

    /// Signs an auditor's certificate signing request as a client certificate for reading
    /// recordings (CN = the Kubernetes user the operator checked, URI SAN
    /// `tether://recordings/<namespace>` or `tether://recordings/<namespace>/<session>`, the
    /// scope the relay enforces). The CSR's own subject is replaced.
    pub fn sign_recordings_csr(
        &self,
        csr_pem: &str,
        user: &str,
        namespace: &str,
        session: Option<&str>,
        validity: Duration,
        now: i64,
    ) -> Result<Issued, CaError> {
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Tether auditors");
        name.push(DnType::CommonName, user);
        let uri = match session {
            Some(session) => format!("tether://recordings/{namespace}/{session}"),
            None => format!("tether://recordings/{namespace}"),
        };
        self.sign_csr(csr_pem, name, vec![uri], validity, now)
    }

    /// Signs a CSR's public key as a client certificate with `subject` and these URI SANs.
    fn sign_csr(
        &self,
        csr_pem: &str,
        subject: DistinguishedName,
        uris: Vec<String>,
        validity: Duration,
        now: i64,
    ) -> Result<Issued, CaError> {
        let issuer = self.issuer()?;
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::Csr(e.to_string()))?;
        csr.params.distinguished_name = subject;
        csr.params.subject_alt_names = uris
            .into_iter()
            .map(|uri| {
                uri.try_into()
                    .map(SanType::URI)
                    .map_err(|e: rcgen::Error| CaError::Csr(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        csr.params.is_ca = IsCa::ExplicitNoCa;
        csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (not_before, not_after) = self.leaf_window(now, validity);
        csr.params.not_before = offset(not_before)?;
        csr.params.not_after = offset(not_after)?;
        csr.params.serial_number = Some(serial());
        csr.params.use_authority_key_identifier_extension = true;
        let cert = csr
            .signed_by(&issuer)
            .map_err(cert_err("sign a client certificate"))?;
        Ok(Issued {
            cert: cert.pem(),
            key: String::new(),
            not_after,
        })
    }
}

/// Current Unix time in seconds.
pub fn unix_now() -> i64 {
    Timestamp::now().as_second()
}

#[cfg(test)]
#[path = "ca_tests.rs"]
mod tests;

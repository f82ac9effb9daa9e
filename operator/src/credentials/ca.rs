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

    /// Issues a TLS serving certificate for `dns_names` and `ips` (e.g. a relay), valid for
    /// `validity` but never past the CA's own expiry.
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
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Tether");
        name.push(DnType::CommonName, common_name);
        params.distinguished_name = name;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
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
mod tests {
    use super::*;
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::server::WebPkiClientVerifier;
    use std::sync::Arc;

    const DAY: i64 = 24 * 3600;
    const T0: i64 = 1_800_000_000;

    fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
        rustls_pemfile_certs(pem)
    }

    fn rustls_pemfile_certs(pem: &str) -> Vec<CertificateDer<'static>> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    fn roots(bundle: &str) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        for der in ders(bundle) {
            roots.add(der).unwrap();
        }
        Arc::new(roots)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn verify_server(bundle: &str, cert: &str, host: &str, at: i64) -> Result<(), rustls::Error> {
        let verifier = WebPkiServerVerifier::builder_with_provider(roots(bundle), provider())
            .build()
            .unwrap();
        let leaf = ders(cert).remove(0);
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from(host.to_owned()).unwrap(),
                &[],
                UnixTime::since_unix_epoch(std::time::Duration::from_secs(at as u64)),
            )
            .map(|_| ())
    }

    fn verify_client(bundle: &str, cert: &str, at: i64) -> Result<(), rustls::Error> {
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(bundle), provider())
            .build()
            .unwrap();
        let leaf = ders(cert).remove(0);
        verifier
            .verify_client_cert(
                &leaf,
                &[],
                UnixTime::since_unix_epoch(std::time::Duration::from_secs(at as u64)),
            )
            .map(|_| ())
    }

    fn settings() -> CaSettings {
        CaSettings {
            ca_validity: Duration::from_secs(90 * DAY as u64),
            rotate_before: Duration::from_secs(30 * DAY as u64),
        }
    }

    #[test]
    fn issues_serving_certificates_that_verify() {
        let ca = Authority::create(T0, &settings()).unwrap();
        let relay = ca
            .issue_server(
                "tether-relay",
                &["relay.tether-system.svc".into()],
                &["127.0.0.1".parse().unwrap()],
                Duration::from_secs(30 * DAY as u64),
                T0,
            )
            .unwrap();
        let bundle = ca.trust_bundle();
        verify_server(&bundle, &relay.cert, "relay.tether-system.svc", T0 + 10).unwrap();
        verify_server(&bundle, &relay.cert, "127.0.0.1", T0 + 10).unwrap();
        assert!(verify_server(&bundle, &relay.cert, "evil.example", T0 + 10).is_err());
        assert!(
            verify_server(&bundle, &relay.cert, "127.0.0.1", T0 + 31 * DAY).is_err(),
            "expired"
        );
        // A serving certificate is not a client certificate.
        assert!(verify_client(&bundle, &relay.cert, T0 + 10).is_err());
    }

    #[test]
    fn signs_agent_csrs_with_the_enrolled_identity() {
        let ca = Authority::create(T0, &settings()).unwrap();
        let agent_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["i-am-the-admin".into()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "admin");
        let csr = params.serialize_request(&agent_key).unwrap().pem().unwrap();
        let issued = ca
            .sign_client_csr(
                &csr,
                "kiosks",
                "kiosk-7",
                Duration::from_secs(7 * DAY as u64),
                T0,
            )
            .unwrap();
        verify_client(&ca.trust_bundle(), &issued.cert, T0 + 10).unwrap();
        let (_, cert) = x509_parser::pem::parse_x509_pem(issued.cert.as_bytes()).unwrap();
        let cert = cert.parse_x509().unwrap();
        let subject = cert.subject().to_string();
        assert!(
            subject.contains("CN=kiosk-7") && subject.contains("O=kiosks"),
            "{subject}"
        );
        assert!(
            !subject.contains("admin"),
            "the CSR's subject is not trusted: {subject}"
        );
        assert!(
            ca.sign_client_csr("garbage", "ns", "d", Duration::from_secs(60), T0)
                .is_err()
        );
    }

    #[test]
    fn signs_auditor_csrs_scoped_to_a_namespace_or_session() {
        let ca = Authority::create(T0, &settings()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["tether://recordings/everything".into()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "root");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let issued = ca
            .sign_recordings_csr(
                &csr,
                "dave",
                "helpdesk",
                Some("printer"),
                Duration::from_secs(900),
                T0,
            )
            .unwrap();
        assert_eq!(issued.not_after, T0 + 900);
        verify_client(&ca.trust_bundle(), &issued.cert, T0 + 10).unwrap();
        assert!(
            verify_client(&ca.trust_bundle(), &issued.cert, T0 + 901).is_err(),
            "short-lived"
        );
        let (_, cert) = x509_parser::pem::parse_x509_pem(issued.cert.as_bytes()).unwrap();
        let cert = cert.parse_x509().unwrap();
        assert!(cert.subject().to_string().contains("CN=dave"));
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(sans, vec!["URI(tether://recordings/helpdesk/printer)"]);
        let whole = ca
            .sign_recordings_csr(&csr, "dave", "helpdesk", None, Duration::from_secs(900), T0)
            .unwrap();
        assert!(!whole.cert.is_empty());
    }

    /// Made by `openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes
    /// -subj /CN=ignored`, as docs/operations/recording.md shows auditors.
    const OPENSSL_EC_CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----\nMIHNMHQCAQAwEjEQMA4GA1UEAwwHaWdub3JlZDBZMBMGByqGSM49AgEGCCqGSM49\nAwEHA0IABOrYb5mw8S0yPngN9Y9zdK2xUODLFyGYlgtC3hWJb3c4tGsdg1J/WkWM\nm1wk9blzF+aH8JYpivIS0uS5xPh3XRWgADAKBggqhkjOPQQDAgNJADBGAiEAuXAC\nmpL50VGjNoYPBGuERqzDVfYJ65OrzKy6ud9Qh9sCIQCPKDfLeJMQlmRHLxSMXGwW\nBKjrgb/yZWW7H3BxByZISw==\n-----END CERTIFICATE REQUEST-----";

    /// Made by `openssl req -new -newkey rsa:2048 -nodes -subj /CN=ignored`.
    const OPENSSL_RSA_CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----\nMIICVzCCAT8CAQAwEjEQMA4GA1UEAwwHaWdub3JlZDCCASIwDQYJKoZIhvcNAQEB\nBQADggEPADCCAQoCggEBALKYvHVRHGehbnAbnn86Wi9QUs0P1lM7mSdtvuJ7EjYz\n2Hbu7dcbx959IYLsqh5WLtj0gFCBkV2R1zApeAg1n6cGSUPlu8Fnt5dAhQNcnjM5\nhxnu7WBmHWkuOvvfIcn2lKS45I+DNCbDq3MYgIp2IzR70epC6Vyjb60ZTdzqvbIH\nG+UQxNsZcGi7vPTbHjHm2U4s1MPhFMXxXp1b9nwzOAca8ZuSY6hessC/95OKlL7a\ndPyMVcLRXxqx7sEdCCFsY8oDSIbGu0mfboBumSzL827Xspm+5WzHKBoy0m3/IpsD\npzaYWpHEip+OQjflqbdkcLmc6Lu/gESzPMQv7FKnSVECAwEAAaAAMA0GCSqGSIb3\nDQEBCwUAA4IBAQAw8trqL2FHetF4kBEmXCxy/8QU9jDwcbepkmJxtFVx5jUYVLJf\nbG+7WnFurZ4wBCT8Dn2eRntFsDlrES0b3ZmXT9bGtECQ5LAEo8XVtRsBejObo08P\nW9xP7ZkyT6SQ1j3Hm/zCyPuB60NBejeGh5nbj54jkreHeGv7f0ZGzBLCsKWLAztl\nAAtscyjM5CPUX0kZb7RuFemPjOXkhix3QuQrHoUE0l0LUAGuy8+gb5FL/BpZs5hI\nM0dKeZXpr7f9ZeZEJ+Yjhnqr7TBtCLGd65TB62BZ8U6mUMsXs3STFAAyYIdBjQHX\nPM3el3fB4p1do0XKNMfKVWZ6zAsDa9cqu57g\n-----END CERTIFICATE REQUEST-----";

    #[test]
    fn signs_csrs_made_by_openssl() {
        let ca = Authority::create(T0, &settings()).unwrap();
        for csr in [OPENSSL_EC_CSR, OPENSSL_RSA_CSR] {
            let issued = ca
                .sign_recordings_csr(csr, "dave", "kiosks", None, Duration::from_secs(600), T0)
                .unwrap();
            verify_client(&ca.trust_bundle(), &issued.cert, T0 + 10).unwrap();
        }
    }

    #[test]
    fn rotation_overlaps_so_old_certificates_keep_working() {
        let s = settings();
        let mut ca = Authority::create(T0, &s).unwrap();
        assert_eq!(ca.plan(T0, &s), CaPlan::KeepUntil(T0 + 60 * DAY));
        let old_relay = ca
            .issue_server(
                "relay",
                &["relay".into()],
                &[],
                Duration::from_secs(80 * DAY as u64),
                T0 + 59 * DAY,
            )
            .unwrap();
        // Never outlives the CA.
        assert_eq!(old_relay.not_after, T0 + 90 * DAY);

        assert_eq!(ca.plan(T0 + 60 * DAY, &s), CaPlan::Rotate);
        ca.rotate(T0 + 60 * DAY, &s).unwrap();
        assert_eq!(ca.previous.len(), 1);
        assert!(ca.previous[0].key.is_none(), "superseded keys are not kept");
        let bundle = ca.trust_bundle();
        assert_eq!(ders(&bundle).len(), 2);
        // Issued by the old CA, verified with the new bundle: still fine.
        verify_server(&bundle, &old_relay.cert, "relay", T0 + 61 * DAY).unwrap();
        // New certificates come from the new CA and verify too.
        let new_relay = ca
            .issue_server(
                "relay",
                &["relay".into()],
                &[],
                Duration::from_secs(30 * DAY as u64),
                T0 + 61 * DAY,
            )
            .unwrap();
        verify_server(&bundle, &new_relay.cert, "relay", T0 + 62 * DAY).unwrap();
        // The new certificate does not verify against the old CA alone.
        let old_only = ca.previous[0].cert.clone();
        assert!(verify_server(&old_only, &new_relay.cert, "relay", T0 + 62 * DAY).is_err());

        // Once the old CA has expired it leaves the bundle at the next rotation.
        ca.rotate(T0 + 120 * DAY, &s).unwrap();
        assert_eq!(
            ca.previous.len(),
            1,
            "the expired first generation was pruned"
        );
    }

    #[test]
    fn state_round_trips_and_hides_keys_in_debug() {
        let ca = Authority::create(T0, &settings()).unwrap();
        let json = serde_json::to_string(&ca).unwrap();
        let back: Authority = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ca);
        let debug = format!("{ca:?}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    }
}

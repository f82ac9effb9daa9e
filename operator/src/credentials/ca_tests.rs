//! Tests of the certificate authority: serving certificates, agent and auditor CSRs, rotation and state.

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
    // The relay's certificate is also its client certificate towards other replicas (the
    // peer URI it carries is checked end to end in tests/tests/relay_peers.rs).
    assert!(verify_client(&bundle, &relay.cert, T0 + 10).is_ok());
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
    let mut params = CertificateParams::new(vec!["tether://recordings/everything".into()]).unwrap();
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

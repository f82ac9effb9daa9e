//! Unit tests of technician admission and certificate renewal, with a CA and token keys made
//! for each test.

use super::*;
use std::collections::BTreeMap;
use tether_proto::token::{
    Claims, DesktopPermission, Permissions, SessionClaims, SigningKey, Technicians,
};

const NOW: i64 = 1_800_000_000;

struct Ca {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

fn new_ca() -> Ca {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    let cert = params.self_signed(&key).unwrap();
    Ca { key, cert }
}

fn grant(key: &SigningKey, technician: Option<&str>, name: &str, ends_at: i64) -> String {
    let mut claims = Claims::new(
        SessionClaims {
            uid: format!("uid-{name}"),
            namespace: "ns".into(),
            name: name.into(),
            device: "d".into(),
            ends_at,
            technicians: Technicians::default(),
            permissions: Permissions {
                desktop: DesktopPermission::None,
                shell: true,
                files: true,
                chat: true,
                processes: true,
                clipboard: Default::default(),
            },
            consent: false,
            consent_timeout: None,
            ticket: None,
            reason: None,
            recording: Default::default(),
            record_keystrokes: false,
        },
        "j".into(),
        NOW,
        NOW,
    );
    if let Some(t) = technician {
        claims = claims.for_technician(t, "j2".into(), NOW, NOW + 600);
    }
    key.mint(&claims).unwrap()
}

/// A technician certificate from `ca` for `user` and `ns/session`, carrying `token`.
fn cert(
    ca: &Ca,
    key: &rcgen::KeyPair,
    user: &str,
    session: &str,
    token: &str,
    not_after: i64,
) -> CertificateDer<'static> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, user);
    params.subject_alt_names = vec![
        rcgen::SanType::URI(
            format!("tether://technician/ns/{session}")
                .try_into()
                .unwrap(),
        ),
        rcgen::SanType::URI(format!("tether://grant/{token}").try_into().unwrap()),
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = time_at(NOW - 60);
    params.not_after = time_at(not_after);
    let issuer = rcgen::Issuer::from_ca_cert_der(ca.cert.der(), &ca.key).unwrap();
    params.signed_by(key, &issuer).unwrap().der().clone()
}

fn time_at(t: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t).unwrap()
}

fn store(key: &SigningKey, ca: &Ca, revoked: &[&str]) -> crate::trust::TrustStore {
    let store = crate::trust::TrustStore::new();
    let keys = serde_json::to_string(&vec![key.verifying_key()]).unwrap();
    store.load_trust(&BTreeMap::from([
        ("token-keys.json".into(), keys),
        ("ca-bundle.crt".into(), ca.cert.pem()),
    ]));
    store.load_revocations(
        &revoked
            .iter()
            .map(|u| ((*u).to_owned(), NOW.to_string()))
            .collect(),
    );
    store
}

#[test]
fn a_technician_is_admitted_by_certificate_only() {
    let (ca, key) = (new_ca(), SigningKey::generate("k").unwrap());
    let trust = store(&key, &ca, &[]);
    let me = rcgen::KeyPair::generate().unwrap();
    let token = grant(&key, Some("carol"), "fix", NOW + 3600);
    let good = cert(&ca, &me, "carol", "fix", &token, NOW + 600);

    let admitted = admit(&trust, Some(&good), NOW).unwrap();
    assert_eq!(admitted.certificate.user, "carol");
    assert_eq!(admitted.claims.session.name, "fix");

    // No certificate: refused, whatever else the client sent.
    let none = admit(&trust, None, NOW).unwrap_err();
    assert_eq!(
        (none.code, none.reason),
        (RefusalCode::Unauthenticated, "no_technician_certificate")
    );
    // A grant minted for someone else, inside a certificate naming carol.
    let bob = grant(&key, Some("bob"), "fix", NOW + 3600);
    let swapped = admit(
        &trust,
        Some(&cert(&ca, &me, "carol", "fix", &bob, NOW + 600)),
        NOW,
    )
    .unwrap_err();
    assert_eq!(swapped.reason, "grant_mismatch");
    // A session's plain token (the access Secret's) is no technician grant.
    let plain = grant(&key, None, "fix", NOW + 3600);
    let bare = admit(
        &trust,
        Some(&cert(&ca, &me, "carol", "fix", &plain, NOW + 600)),
        NOW,
    )
    .unwrap_err();
    assert_eq!(bare.reason, "grant_mismatch");
    // A grant for another session than the certificate names.
    let other = grant(&key, Some("carol"), "other", NOW + 3600);
    let moved = admit(
        &trust,
        Some(&cert(&ca, &me, "carol", "fix", &other, NOW + 600)),
        NOW,
    )
    .unwrap_err();
    assert_eq!(moved.reason, "grant_mismatch");
    // A grant signed by a key the cluster never published.
    let rogue = SigningKey::generate("k").unwrap();
    let forged = grant(&rogue, Some("carol"), "fix", NOW + 3600);
    let forged = admit(
        &trust,
        Some(&cert(&ca, &me, "carol", "fix", &forged, NOW + 600)),
        NOW,
    )
    .unwrap_err();
    assert_eq!(forged.reason, "bad_signature");
}

#[test]
fn expired_revoked_and_ended_sessions_are_refused_with_their_reason() {
    let (ca, key) = (new_ca(), SigningKey::generate("k").unwrap());
    let me = rcgen::KeyPair::generate().unwrap();
    let token = grant(&key, Some("carol"), "fix", NOW + 3600);
    let good = cert(&ca, &me, "carol", "fix", &token, NOW + 600);
    assert!(admit(&store(&key, &ca, &[]), Some(&good), NOW).is_ok());

    let revoked = admit(&store(&key, &ca, &["uid-fix"]), Some(&good), NOW).unwrap_err();
    assert_eq!(
        (revoked.code, revoked.message.as_str()),
        (RefusalCode::SessionEnded, "the session has ended")
    );
    let expired = admit(&store(&key, &ca, &[]), Some(&good), NOW + 601).unwrap_err();
    assert_eq!(expired.reason, "certificate_expired");
    let short = grant(&key, Some("carol"), "short", NOW + 10);
    let ended = cert(&ca, &me, "carol", "short", &short, NOW + 10);
    let refusal = admit(&store(&key, &ca, &[]), Some(&ended), NOW + 10).unwrap_err();
    assert_eq!(refusal.code, RefusalCode::Unauthenticated, "{refusal:?}");
}

#[test]
fn renewals_keep_the_key_the_technician_and_the_session() {
    let (ca, key) = (new_ca(), SigningKey::generate("k").unwrap());
    let trust = store(&key, &ca, &[]);
    let me = rcgen::KeyPair::generate().unwrap();
    let token = grant(&key, Some("carol"), "fix", NOW + 3600);
    let first = admit(
        &trust,
        Some(&cert(&ca, &me, "carol", "fix", &token, NOW + 60)),
        NOW,
    )
    .unwrap();
    let pem = |der: &CertificateDer<'_>| {
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64_lines(der.as_ref())
        )
    };
    let later = NOW + 30;
    let renewed = cert(&ca, &me, "carol", "fix", &token, NOW + 600);
    assert_eq!(
        renew(
            &trust,
            &first.certificate,
            &first.claims,
            &pem(&renewed),
            later
        ),
        Ok(NOW + 600)
    );
    let other_key = rcgen::KeyPair::generate().unwrap();
    let stolen = cert(&ca, &other_key, "carol", "fix", &token, NOW + 600);
    assert!(
        renew(
            &trust,
            &first.certificate,
            &first.claims,
            &pem(&stolen),
            later
        )
        .unwrap_err()
        .contains("another key")
    );
    let bob = grant(&key, Some("bob"), "fix", NOW + 3600);
    let someone = cert(&ca, &me, "bob", "fix", &bob, NOW + 600);
    assert!(
        renew(
            &trust,
            &first.certificate,
            &first.claims,
            &pem(&someone),
            later
        )
        .unwrap_err()
        .contains("another technician")
    );
    // Not from the cluster's CA.
    let rogue = new_ca();
    let outside = cert(&rogue, &me, "carol", "fix", &token, NOW + 600);
    assert!(
        renew(
            &trust,
            &first.certificate,
            &first.claims,
            &pem(&outside),
            later
        )
        .unwrap_err()
        .contains("does not verify")
    );
}

fn base64_lines(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    b64.as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

//! Tests of session tokens: minting, verification in virtual time, tampering, key rotation and revocations.

use super::*;

const NOW: i64 = 1_800_000_000;

fn session(uid: &str) -> SessionClaims {
    SessionClaims {
        uid: uid.into(),
        namespace: "helpdesk".into(),
        name: "printer".into(),
        device: "laptop-1".into(),
        ends_at: NOW + 3_600,
        technicians: Technicians {
            users: vec!["carol".into()],
            groups: vec![],
        },
        permissions: Permissions {
            desktop: DesktopPermission::ViewOnly,
            shell: true,
            files: true,
            chat: true,
            processes: false,
            clipboard: Default::default(),
        },
        consent: true,
        consent_timeout: None,
        ticket: None,
        reason: None,
        recording: Default::default(),
        record_keystrokes: false,
    }
}

#[test]
fn a_grant_is_minted_as_planned_and_never_past_the_end() {
    let c = Claims::granted(session("u"), "j".into(), NOW, NOW + 60, NOW + 600);
    assert_eq!((c.iat, c.nbf, c.exp), (NOW, NOW + 60, NOW + 600));
    let c = Claims::granted(session("u"), "j".into(), NOW, NOW, NOW + 7_200);
    assert_eq!(c.exp, NOW + 3_600, "capped at the session's end");
    let c = Claims::granted(session("u"), "j".into(), NOW, NOW + 5_000, NOW + 600);
    assert_eq!(c.nbf, c.exp, "never valid from after it expires");
    assert_eq!(
        Claims::new(session("u"), "j".into(), NOW, NOW).exp,
        expiry(NOW, NOW + 3_600)
    );
    assert_eq!(expiry(NOW, NOW + 3_600), NOW + 900);
    assert_eq!(expiry(NOW, NOW + 60), NOW + 60);
    assert_eq!(expiry(i64::MAX - 1, i64::MAX), i64::MAX);
}

fn minted(key: &SigningKey, uid: &str, now: i64) -> (String, Claims) {
    let claims = Claims::new(session(uid), format!("jti-{now}"), now, now);
    (key.mint(&claims).unwrap(), claims)
}

fn verifier(keys: &[&SigningKey]) -> Verifier {
    Verifier::new(keys.iter().map(|k| k.verifying_key()), DEFAULT_LEEWAY)
}

#[test]
fn a_fresh_token_verifies_with_its_claims() {
    let key = SigningKey::generate("k1").unwrap();
    let (token, claims) = minted(&key, "uid-1", NOW);
    let got = verifier(&[&key])
        .verify(&token, NOW + 1, Some("uid-1"))
        .unwrap();
    assert_eq!(got, claims);
    assert_eq!(got.exp, NOW + 900);
    assert_eq!(got.sub, "remotesession:helpdesk/printer");
    assert_eq!(got.session.permissions.desktop, DesktopPermission::ViewOnly);
}

#[test]
fn expiry_is_fifteen_minutes_but_never_past_the_session_end() {
    let claims = Claims::new(session("u"), "j".into(), NOW, NOW);
    assert_eq!(claims.exp, NOW + 900);
    let claims = Claims::new(session("u"), "j".into(), NOW + 3_000, NOW);
    assert_eq!(claims.exp, NOW + 3_600, "capped at the session end");
}

#[test]
fn expired_tokens_are_refused_after_the_leeway() {
    let key = SigningKey::generate("k1").unwrap();
    let (token, claims) = minted(&key, "uid-1", NOW);
    let v = verifier(&[&key]);
    assert!(
        v.verify(&token, claims.exp + 30, None).is_ok(),
        "inside the leeway"
    );
    let err = v.verify(&token, claims.exp + 31, None).unwrap_err();
    assert_eq!(
        err,
        TokenError::Expired {
            exp: claims.exp,
            now: claims.exp + 31
        }
    );
    assert_eq!(err.reason(), "expired");
}

#[test]
fn not_yet_valid_tokens_are_refused_before_the_leeway() {
    let key = SigningKey::generate("k1").unwrap();
    let claims = Claims::new(session("u"), "j".into(), NOW, NOW + 600);
    let token = key.mint(&claims).unwrap();
    let v = verifier(&[&key]);
    assert!(matches!(
        v.verify(&token, NOW, None),
        Err(TokenError::NotYetValid { nbf, .. }) if nbf == NOW + 600
    ));
    assert!(
        v.verify(&token, NOW + 570, None).is_ok(),
        "clock skew tolerated"
    );
}

#[test]
fn a_token_for_another_session_is_refused() {
    let key = SigningKey::generate("k1").unwrap();
    let (token, _) = minted(&key, "uid-1", NOW);
    let err = verifier(&[&key])
        .verify(&token, NOW, Some("uid-2"))
        .unwrap_err();
    assert_eq!(err.reason(), "wrong_session");
}

#[test]
fn tampered_tokens_are_refused() {
    let key = SigningKey::generate("k1").unwrap();
    let (token, _) = minted(&key, "uid-1", NOW);
    let v = verifier(&[&key]);
    // Swap the payload for one granting more, keeping header and signature.
    let mut parts: Vec<&str> = token.split('.').collect();
    let mut forged = Claims::new(session("uid-1"), "j".into(), NOW, NOW);
    forged.session.permissions.desktop = DesktopPermission::Control;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&forged).unwrap());
    parts[1] = &payload;
    let tampered = parts.join(".");
    assert_eq!(
        v.verify(&tampered, NOW, None),
        Err(TokenError::BadSignature)
    );
    // A flipped signature byte.
    let mut bytes = token.clone().into_bytes();
    let last = bytes.len() - 2;
    bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(bytes).unwrap();
    assert!(v.verify(&flipped, NOW, None).is_err());
}

#[test]
fn a_token_from_an_unknown_or_wrong_key_is_refused() {
    let key = SigningKey::generate("k1").unwrap();
    let other = SigningKey::generate("k2").unwrap();
    let (token, _) = minted(&other, "uid-1", NOW);
    assert_eq!(
        verifier(&[&key]).verify(&token, NOW, None),
        Err(TokenError::UnknownKey("k2".into()))
    );
    // Same kid, different key material: the signature fails.
    let impostor = SigningKey::generate("k1").unwrap();
    let (token, _) = minted(&impostor, "uid-1", NOW);
    assert_eq!(
        verifier(&[&key]).verify(&token, NOW, None),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn rotation_keeps_old_tokens_valid_while_both_keys_are_trusted() {
    let old = SigningKey::generate("k1").unwrap();
    let new = SigningKey::generate("k2").unwrap();
    let (old_token, _) = minted(&old, "uid-1", NOW);
    let (new_token, _) = minted(&new, "uid-1", NOW);
    let overlap = verifier(&[&old, &new]);
    assert!(overlap.verify(&old_token, NOW, None).is_ok());
    assert!(overlap.verify(&new_token, NOW, None).is_ok());
    let retired = verifier(&[&new]);
    assert!(retired.verify(&new_token, NOW, None).is_ok());
    assert_eq!(
        retired.verify(&old_token, NOW, None),
        Err(TokenError::UnknownKey("k1".into()))
    );
}

#[test]
fn keys_round_trip_through_pkcs8() {
    let key = SigningKey::generate("k1").unwrap();
    let loaded = SigningKey::from_pkcs8("k1", key.pkcs8()).unwrap();
    let (token, _) = minted(&loaded, "uid-1", NOW);
    assert!(verifier(&[&key]).verify(&token, NOW, None).is_ok());
    assert!(SigningKey::from_pkcs8("k", b"not a key").is_err());
    assert!(!format!("{key:?}").contains(&format!("{:?}", key.pkcs8())));
}

#[test]
fn garbage_is_refused_without_panicking() {
    let key = SigningKey::generate("k1").unwrap();
    let v = verifier(&[&key]);
    for junk in [
        "",
        ".",
        "..",
        "a.b.c",
        "eyJhbGciOiJub25lIn0.e30.",
        &"x".repeat(MAX_TOKEN_LEN + 1),
    ] {
        assert!(
            matches!(v.verify(junk, NOW, None), Err(TokenError::Malformed(_))),
            "{junk:.20}"
        );
    }
    // An unsigned ("none") or HMAC token is refused whatever it claims.
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &Claims::new(session("u"), "j".into(), NOW, NOW),
        &EncodingKey::from_secret(b"k1"),
    );
    if let Ok(hs) = hs {
        assert!(v.verify(&hs, NOW, None).is_err());
    }
    // Malformed published keys are ignored rather than trusted.
    let bad = Verifier::new(
        [VerifyingKey {
            kid: "x".into(),
            public: "not base64!".into(),
        }],
        DEFAULT_LEEWAY,
    );
    assert_eq!(bad.key_count(), 0);
}

#[test]
fn revoked_sessions_are_refused_and_pruned() {
    let key = SigningKey::generate("k1").unwrap();
    let (token, _) = minted(&key, "uid-1", NOW);
    let v = verifier(&[&key]);
    let mut revs = Revocations::default();
    assert!(verify_not_revoked(&v, &revs, &token, NOW, None).is_ok());
    revs.revoke("uid-1", NOW + 10);
    assert_eq!(
        verify_not_revoked(&v, &revs, &token, NOW + 11, None),
        Err(TokenError::Revoked("uid-1".into()))
    );
    let data = revs.to_data();
    assert_eq!(Revocations::from_data(&data), revs);
    revs.revoke("uid-2", NOW + 1_000);
    assert_eq!(revs.prune(NOW + 500), vec!["uid-1".to_owned()]);
    assert!(!revs.is_revoked("uid-1"));
    assert!(revs.is_revoked("uid-2"));
}

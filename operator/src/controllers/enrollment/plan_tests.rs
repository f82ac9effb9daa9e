//! Tests of the agent signer's decisions: tokens, who may ask for which names, expiry and use counts.

use super::*;

const RELAY: &str = "system:serviceaccount:tether-system:tether-relay";
const NAME: &str = "tether-agent-kiosks-k7-00000001";

fn now() -> Timestamp {
    "2030-06-01T12:00:00Z".parse().unwrap_or_default()
}

fn secret(token: &str, annotations: &[(&str, &str)]) -> TokenSecret {
    TokenSecret {
        token: Some(token.as_bytes().to_vec()),
        annotations: annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        resource_version: "7".into(),
    }
}

fn decide_with(
    presented: &str,
    secret: Option<&TokenSecret>,
    device: Option<&DeviceRecord>,
) -> Decision {
    let digest = token_digest(NAME, presented);
    let request = Request {
        name: NAME,
        requester: RELAY,
        namespace: "kiosks",
        device: "k7",
        token_digest: Some(&digest),
    };
    decide(RELAY, &request, secret, device, now())
}

fn reason(decision: &Decision) -> &'static str {
    match decision {
        Decision::Deny(d) => d.reason,
        Decision::Admit(_) => "Admitted",
    }
}

#[test]
fn digest_matches_the_relays_vector() {
    // The relay's `token_digest` test pins the same value.
    assert_eq!(
        token_digest("tether-agent-a-b-1", "secret"),
        "b6c9fc6173d724367c4f793426ca502f48f1b9f38031cd3bb2f2f114f3e09c21"
    );
}

#[test]
fn a_matching_token_enrolls_a_new_name_and_is_counted() {
    let s = secret("s3cret", &[]);
    assert_eq!(
        decide_with("s3cret", Some(&s), None),
        Decision::Admit(Admission {
            count: Some(UseCount {
                uses: 1,
                token: token_fingerprint("s3cret"),
                resource_version: "7".into()
            }),
            device: DeviceStep::Create,
        })
    );
}

#[test]
fn tokens_are_compared_without_surrounding_whitespace() {
    // `kubectl create secret --from-file=token` keeps the file's trailing newline.
    let s = secret("s3cret\n", &[]);
    assert_eq!(reason(&decide_with("s3cret", Some(&s), None)), "Admitted");
    assert_eq!(
        reason(&decide_with("s3cret\n", Some(&secret("s3cret", &[])), None)),
        "Admitted"
    );
    assert_eq!(
        reason(&decide_with("s3cre", Some(&s), None)),
        "BadBootstrapToken"
    );
}

#[test]
fn wrong_missing_or_empty_tokens_are_refused_alike() {
    let s = secret("s3cret", &[]);
    let d = decide_with("guess", Some(&s), None);
    assert_eq!(reason(&d), "BadBootstrapToken");
    let Decision::Deny(denial) = d else {
        unreachable!()
    };
    assert_eq!(
        denial.message,
        "the bootstrap token is not valid for device group kiosks"
    );
    assert_eq!(reason(&decide_with("", None, None)), "NoBootstrapToken");
    assert_eq!(
        reason(&decide_with("", Some(&secret("\n", &[])), None)),
        "NoBootstrapToken"
    );
    let binary = TokenSecret {
        token: Some(vec![0xff, 0xfe]),
        ..TokenSecret::default()
    };
    assert_eq!(
        reason(&decide_with("x", Some(&binary), None)),
        "NoBootstrapToken"
    );
    // No digest at all.
    let request = Request {
        name: NAME,
        requester: RELAY,
        namespace: "kiosks",
        device: "k7",
        token_digest: None,
    };
    assert_eq!(
        reason(&decide(RELAY, &request, Some(&s), None, now())),
        "BadBootstrapToken"
    );
    // A digest bound to another request does not carry over.
    let other = token_digest("tether-agent-kiosks-k7-00000002", "s3cret");
    let request = Request {
        token_digest: Some(&other),
        ..request
    };
    assert_eq!(
        reason(&decide(RELAY, &request, Some(&s), None, now())),
        "BadBootstrapToken"
    );
}

#[test]
fn only_the_relay_may_ask_and_only_for_valid_names() {
    let s = secret("s3cret", &[]);
    let digest = token_digest(NAME, "s3cret");
    let request = Request {
        name: NAME,
        requester: "mallory",
        namespace: "kiosks",
        device: "k7",
        token_digest: Some(&digest),
    };
    assert_eq!(
        reason(&decide(RELAY, &request, Some(&s), None, now())),
        "NotFromRelay"
    );
    let request = Request {
        requester: RELAY,
        device: "../x",
        ..request
    };
    assert_eq!(
        reason(&decide(RELAY, &request, Some(&s), None, now())),
        "InvalidIdentity"
    );
}

#[test]
fn expired_tokens_are_refused_until_a_new_expiry() {
    let past = secret(
        "s3cret",
        &[(TOKEN_EXPIRES_AT_ANNOTATION, "2030-06-01T12:00:00Z")],
    );
    assert_eq!(
        reason(&decide_with("s3cret", Some(&past), None)),
        "BootstrapTokenExpired"
    );
    let future = secret(
        "s3cret",
        &[(TOKEN_EXPIRES_AT_ANNOTATION, "2030-06-01T12:00:01Z")],
    );
    assert_eq!(
        reason(&decide_with("s3cret", Some(&future), None)),
        "Admitted"
    );
    // Expiry is only told to holders of the token.
    assert_eq!(
        reason(&decide_with("guess", Some(&past), None)),
        "BadBootstrapToken"
    );
    let bad = secret(
        "s3cret",
        &[(TOKEN_EXPIRES_AT_ANNOTATION, "next tuesday\x1b[2J")],
    );
    let d = decide_with("s3cret", Some(&bad), None);
    assert_eq!(reason(&d), "InvalidEnrollmentSecret");
    let Decision::Deny(denial) = d else {
        unreachable!()
    };
    assert!(!denial.message.contains('\x1b'), "{}", denial.message);
}

#[test]
fn tokens_run_out_per_token_and_retries_are_not_counted_twice() {
    let fp = token_fingerprint("s3cret");
    let used = secret(
        "s3cret",
        &[
            (TOKEN_MAX_USES_ANNOTATION, "2"),
            (TOKEN_USES_ANNOTATION, "2"),
            (TOKEN_USES_OF_ANNOTATION, &fp),
            (TOKEN_LAST_USE_ANNOTATION, "tether-agent-kiosks-other-1"),
        ],
    );
    assert_eq!(
        reason(&decide_with("s3cret", Some(&used), None)),
        "BootstrapTokenUsedUp"
    );
    // The request that took the last use, retried, goes through without a new count.
    let mine = secret(
        "s3cret",
        &[
            (TOKEN_MAX_USES_ANNOTATION, "2"),
            (TOKEN_USES_ANNOTATION, "2"),
            (TOKEN_USES_OF_ANNOTATION, &fp),
            (TOKEN_LAST_USE_ANNOTATION, NAME),
        ],
    );
    assert_eq!(
        decide_with("s3cret", Some(&mine), None),
        Decision::Admit(Admission {
            count: None,
            device: DeviceStep::Create
        })
    );
    // A new token starts a new count.
    let rotated = secret(
        "n3w",
        &[
            (TOKEN_MAX_USES_ANNOTATION, "2"),
            (TOKEN_USES_ANNOTATION, "2"),
            (TOKEN_USES_OF_ANNOTATION, &fp),
        ],
    );
    let Decision::Admit(admission) = decide_with("n3w", Some(&rotated), None) else {
        unreachable!("a new token enrolls")
    };
    assert_eq!(admission.count.map(|c| c.uses), Some(1));
    // Limits the operator cannot read refuse rather than allow.
    let bad = secret("s3cret", &[(TOKEN_MAX_USES_ANNOTATION, "-1")]);
    assert_eq!(
        reason(&decide_with("s3cret", Some(&bad), None)),
        "InvalidEnrollmentSecret"
    );
    let garbled = secret(
        "s3cret",
        &[
            (TOKEN_MAX_USES_ANNOTATION, "5"),
            (TOKEN_USES_ANNOTATION, "lots"),
            (TOKEN_USES_OF_ANNOTATION, &fp),
        ],
    );
    assert_eq!(
        reason(&decide_with("s3cret", Some(&garbled), None)),
        "BootstrapTokenUsedUp"
    );
    let zero = secret("s3cret", &[(TOKEN_MAX_USES_ANNOTATION, "0")]);
    assert_eq!(
        reason(&decide_with("s3cret", Some(&zero), None)),
        "BootstrapTokenUsedUp"
    );
}

#[test]
fn an_enrolled_name_enrolls_again_only_once_allowed() {
    let s = secret("s3cret", &[]);
    let enrolled = DeviceRecord {
        enrolled: true,
        allow_reenrollment: false,
        enrollment_request: Some("tether-agent-kiosks-k7-0000000f".into()),
        resource_version: "42".into(),
    };
    let d = decide_with("s3cret", Some(&s), Some(&enrolled));
    assert_eq!(reason(&d), "AlreadyEnrolled");
    let Decision::Deny(denial) = d else {
        unreachable!()
    };
    assert!(
        denial.message.contains("allowReenrollment"),
        "{}",
        denial.message
    );
    // A bad token learns nothing about the name.
    assert_eq!(
        reason(&decide_with("guess", Some(&s), Some(&enrolled))),
        "BadBootstrapToken"
    );

    let allowed = DeviceRecord {
        allow_reenrollment: true,
        ..enrolled.clone()
    };
    let Decision::Admit(admission) = decide_with("s3cret", Some(&s), Some(&allowed)) else {
        unreachable!("allowed")
    };
    assert_eq!(
        admission.device,
        DeviceStep::Claim {
            resource_version: "42".into(),
            reset_allowance: true
        }
    );

    // A Device created ahead of enrollment (or re-created after a deletion) is free.
    let precreated = DeviceRecord {
        enrolled: false,
        resource_version: "3".into(),
        ..DeviceRecord::default()
    };
    let Decision::Admit(admission) = decide_with("s3cret", Some(&s), Some(&precreated)) else {
        unreachable!("free")
    };
    assert_eq!(
        admission.device,
        DeviceStep::Claim {
            resource_version: "3".into(),
            reset_allowance: false
        }
    );

    // This request's own claim, retried.
    let claimed = DeviceRecord {
        enrollment_request: Some(NAME.into()),
        ..enrolled
    };
    let Decision::Admit(admission) = decide_with("s3cret", Some(&s), Some(&claimed)) else {
        unreachable!("its own claim")
    };
    assert_eq!(admission.device, DeviceStep::Claimed);
}

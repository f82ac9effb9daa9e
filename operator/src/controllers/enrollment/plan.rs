//! The decisions of the `tether.dev/agent` signer, as a pure function of what was observed
//! and the current time: whether an agent certificate request is from the relay, carries the
//! digest of the device group's bootstrap token, whether that token has expired or is used up,
//! and whether the device name is free to enroll (never enrolled, or an administrator allowed
//! it once more). No I/O happens here.
//!
//! Guarantees: a name enrolls once per allowance (`spec.allowReenrollment`, or a deleted
//! Device); a token enrolls at most `tether.dev/max-uses` devices, counted per token, and none
//! after `tether.dev/expires-at`; a request retried after a partial apply is neither counted
//! twice nor refused as its own re-enrollment (the Secret and the Device name the request
//! they were last changed for). Tokens are compared as `tether-agent enroll` reads them:
//! surrounding whitespace is not part of a token.

use std::collections::BTreeMap;

use jiff::Timestamp;
use tether_crds::device::{
    TOKEN_EXPIRES_AT_ANNOTATION, TOKEN_LAST_USE_ANNOTATION, TOKEN_MAX_USES_ANNOTATION,
    TOKEN_USES_ANNOTATION, TOKEN_USES_OF_ANNOTATION, bootstrap_token,
};

use super::valid_name;

/// An agent certificate request, as the relay filed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The CertificateSigningRequest's name (the token digest is bound to it).
    pub name: &'a str,
    /// Who filed it (`spec.username`, stamped by the API server).
    pub requester: &'a str,
    /// The device group.
    pub namespace: &'a str,
    /// The device name.
    pub device: &'a str,
    /// The hex digest of the presented token, as the relay computed it.
    pub token_digest: Option<&'a str>,
}

/// The device group's enrollment Secret.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenSecret {
    /// The `token` key's bytes.
    pub token: Option<Vec<u8>>,
    /// The Secret's annotations.
    pub annotations: BTreeMap<String, String>,
    /// For the optimistic lock of the use count.
    pub resource_version: String,
}

/// The Device of the requested name, if it exists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Whether it records an enrollment (`status.enrolledAt`, or an enrollment request).
    pub enrolled: bool,
    /// `spec.allowReenrollment`.
    pub allow_reenrollment: bool,
    /// The request that last enrolled it.
    pub enrollment_request: Option<String>,
    /// For the optimistic lock of the claim.
    pub resource_version: String,
}

/// A refusal: the CSR's `Denied` condition and what the agent is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// Condition reason, e.g. `AlreadyEnrolled`.
    pub reason: &'static str,
    /// A sentence for the person enrolling the device.
    pub message: String,
}

/// The use of the token to record on the Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UseCount {
    /// The new count.
    pub uses: u64,
    /// Fingerprint of the token counted.
    pub token: String,
    /// The Secret's resourceVersion that was observed.
    pub resource_version: String,
}

/// What to do with the Device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceStep {
    /// It does not exist: create it (fails if another enrollment created it meanwhile).
    Create,
    /// It exists: record this request on it, and consume the allowance if `reset_allowance`
    /// (fails if the Device changed meanwhile).
    Claim {
        /// The Device's resourceVersion that was observed.
        resource_version: String,
        /// Whether `spec.allowReenrollment` is set back to false.
        reset_allowance: bool,
    },
    /// This request already claimed it (a retry).
    Claimed,
}

/// What to do after a successful check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// The use to count, unless this request was counted already.
    pub count: Option<UseCount>,
    /// The Device step.
    pub device: DeviceStep,
}

/// The signer's decision about one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Deny the request.
    Deny(Denial),
    /// Count, claim, then sign.
    Admit(Admission),
}

fn deny(reason: &'static str, message: String) -> Decision {
    Decision::Deny(Denial { reason, message })
}

/// SHA-256 of `parts`, concatenated.
pub fn sha256(parts: &[&[u8]]) -> Vec<u8> {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    for part in parts {
        hash.update(part);
    }
    hash.finalize().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub use tether_crds::device::token_digest;

/// A short fingerprint of a token, recorded next to its use count: a rotated token starts a
/// new count. (It cannot reveal the token: the Secret holding it holds the token itself.)
pub fn token_fingerprint(token: &str) -> String {
    hex(&sha256(&[
        b"tether.dev/uses\n",
        bootstrap_token(token).as_bytes(),
    ]))[..16]
        .to_owned()
}

/// Equality in time independent of where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Decides one request.
pub fn decide(
    relay_identity: &str,
    request: &Request<'_>,
    secret: Option<&TokenSecret>,
    device: Option<&DeviceRecord>,
    now: Timestamp,
) -> Decision {
    let Request {
        name,
        requester,
        namespace,
        device: device_name,
        token_digest: presented,
    } = *request;
    if requester != relay_identity {
        return deny(
            "NotFromRelay",
            format!(
                "only the relay ({relay_identity}) may request agent certificates, not {requester:?}"
            ),
        );
    }
    if !valid_name(namespace) || !valid_name(device_name) {
        return deny(
            "InvalidIdentity",
            format!("invalid device identity {namespace:?}/{device_name:?}"),
        );
    }
    let not_valid = || format!("the bootstrap token is not valid for device group {namespace}");
    // A Secret whose token is missing, empty or not text matches no agent's token file.
    let Some(secret) = secret else {
        return deny("NoBootstrapToken", not_valid());
    };
    let Some(token) = secret
        .token
        .as_deref()
        .and_then(|t| std::str::from_utf8(t).ok())
        .filter(|t| !bootstrap_token(t).is_empty())
    else {
        return deny("NoBootstrapToken", not_valid());
    };
    let expected = token_digest(name, token);
    let matches = presented.is_some_and(|p| constant_time_eq(p.as_bytes(), expected.as_bytes()));
    if !matches {
        return deny("BadBootstrapToken", not_valid());
    }

    // Only a holder of the token learns about its limits.
    let annotation = |key: &str| secret.annotations.get(key).map(String::as_str);
    if let Some(raw) = annotation(TOKEN_EXPIRES_AT_ANNOTATION) {
        match raw.trim().parse::<Timestamp>() {
            Ok(expires) if now >= expires => {
                return deny(
                    "BootstrapTokenExpired",
                    format!("the bootstrap token of device group {namespace} expired at {expires}"),
                );
            }
            Ok(_) => {}
            Err(_) => {
                return deny(
                    "InvalidEnrollmentSecret",
                    format!(
                        "the enrollment Secret of device group {namespace} has an invalid {TOKEN_EXPIRES_AT_ANNOTATION} ({:?}, expected an RFC 3339 time): no device enrolls until an administrator fixes it",
                        raw.escape_debug().to_string()
                    ),
                );
            }
        }
    }
    let max_uses = match annotation(TOKEN_MAX_USES_ANNOTATION).map(|m| m.trim().parse::<u64>()) {
        None => None,
        Some(Ok(max)) => Some(max),
        Some(Err(_)) => {
            return deny(
                "InvalidEnrollmentSecret",
                format!(
                    "the enrollment Secret of device group {namespace} has an invalid {TOKEN_MAX_USES_ANNOTATION} (expected a whole number): no device enrolls until an administrator fixes it"
                ),
            );
        }
    };
    let fingerprint = token_fingerprint(token);
    let same_token = annotation(TOKEN_USES_OF_ANNOTATION) == Some(fingerprint.as_str());
    // A count this operator did not write (or that belongs to another token) starts over;
    // an unreadable one counts as used up rather than as zero.
    let uses = if same_token {
        annotation(TOKEN_USES_ANNOTATION)
            .map(|u| u.trim().parse::<u64>().unwrap_or(u64::MAX))
            .unwrap_or(0)
    } else {
        0
    };
    let counted = same_token && annotation(TOKEN_LAST_USE_ANNOTATION) == Some(name);
    if !counted
        && let Some(max) = max_uses
        && uses >= max
    {
        return deny(
            "BootstrapTokenUsedUp",
            format!(
                "the bootstrap token of device group {namespace} has enrolled {} devices, its limit ({TOKEN_MAX_USES_ANNOTATION}); an administrator can raise the limit or issue a new token",
                uses.min(max)
            ),
        );
    }

    let device_step = match device {
        None => DeviceStep::Create,
        Some(d) if d.enrollment_request.as_deref() == Some(name) => DeviceStep::Claimed,
        Some(d) if d.enrolled && !d.allow_reenrollment => {
            return deny(
                "AlreadyEnrolled",
                format!(
                    "device {namespace}/{device_name} is already enrolled; to enroll it again, an administrator allows it once with `kubectl -n {namespace} patch device {device_name} --type merge -p '{{\"spec\":{{\"allowReenrollment\":true}}}}'` or deletes the Device"
                ),
            );
        }
        Some(d) => DeviceStep::Claim {
            resource_version: d.resource_version.clone(),
            reset_allowance: d.allow_reenrollment,
        },
    };
    Decision::Admit(Admission {
        count: (!counted).then(|| UseCount {
            uses: uses.saturating_add(1),
            token: fingerprint,
            resource_version: secret.resource_version.clone(),
        }),
        device: device_step,
    })
}

#[cfg(test)]
mod tests {
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
}

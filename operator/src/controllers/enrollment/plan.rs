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
#[path = "plan_tests.rs"]
mod tests;

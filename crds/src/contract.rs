//! The contract between the operator and the relay (and the CLI, which reads what both
//! write): condition types and reasons the relay writes on a RemoteSession, signer names, the
//! session access Secret's name, keys, labels and annotations, name validation, and the
//! conversions between API enums and the token's enums.
//!
//! Every string here is written by one side and read by the other; each is defined once so
//! the two cannot drift apart.

use tether_proto::token;

use crate::remote_session::{DesktopAccess, RecordingPolicy};

/// Condition types the relay writes on a RemoteSession (the operator only reads them).
pub mod condition_types {
    /// The session's recording: `True` while recording, `False` with one of
    /// [`super::reasons::NOT_CONFIGURED`], [`super::reasons::STORAGE_UNAVAILABLE`] or
    /// [`super::reasons::RECORDING_FAILED`].
    pub const RECORDING: &str = "Recording";
    /// The user's consent: `True` given, `False` refused or timed out.
    pub const CONSENTED: &str = "Consented";
    /// `True` once a party (user or technician) ended the session, or its recording failed.
    pub const ENDED: &str = "Ended";
}

/// Reasons of the conditions the relay writes, and of the ends it reports.
pub mod reasons {
    /// `Recording=True`: the relay is recording the session.
    pub const RECORDING: &str = "Recording";
    /// `Recording=False`: the relay has no recording store configured.
    pub const NOT_CONFIGURED: &str = "NotConfigured";
    /// `Recording=False`: the recording could not start because the store did not answer.
    pub const STORAGE_UNAVAILABLE: &str = "StorageUnavailable";
    /// `Recording=False` and `Ended=True`: a recording failed while the session ran; a
    /// session that must be recorded fails rather than completes.
    pub const RECORDING_FAILED: &str = "RecordingFailed";
    /// `Ended=True`: the technician ended the session.
    pub const ENDED_BY_TECHNICIAN: &str = "EndedByTechnician";
    /// `Ended=True`: the user on the device ended the session.
    pub const ENDED_BY_USER: &str = "EndedByUser";
    /// The reason a session ends with when the user refused consent (`Consented=False`
    /// carries the agent's own reason, e.g. [`CONSENT_REFUSED`]).
    pub const CONSENT_DENIED: &str = "ConsentDenied";
    /// `Consented=False`: the user said no.
    pub const CONSENT_REFUSED: &str = "ConsentRefused";
    /// `Consented=False`: nobody answered the consent prompt in time.
    pub const CONSENT_TIMED_OUT: &str = "ConsentTimedOut";

    /// Reasons of `Recording=False` saying that a recording could not start (as opposed to
    /// [`RECORDING_FAILED`], a recording that failed while it ran).
    pub const RECORDING_NOT_STARTED: [&str; 2] = [STORAGE_UNAVAILABLE, NOT_CONFIGURED];
}

/// Names of the certificate signers the operator serves.
pub mod signers {
    /// Technician client certificates for joining one session.
    pub const TECHNICIAN: &str = "tether.dev/technician";
    /// Agent client certificates, requested by the relay when a device enrolls.
    pub const AGENT: &str = "tether.dev/agent";
    /// Auditor client certificates for reading recordings.
    pub const RECORDINGS: &str = "tether.dev/recordings";
}

/// The relay's certificate (Secret `tether-relay-tls`), shared by every replica.
pub mod relay_certificate {
    /// URI SAN of a relay's certificate, which is also a client certificate: what a relay
    /// forwarding a technician to the replica its device is attached to is known by.
    pub const PEER_URI: &str = "tether://relay";
    /// Annotation on the Secret: what the certificate is for, so that one issued for less
    /// (serving only, before relays forwarded to each other) is replaced.
    pub const PROFILE_ANNOTATION: &str = "tether.dev/profile";
    /// The current profile: serving, and a peer's client certificate.
    pub const PROFILE: &str = "serve+peer";
}

/// Annotations on the CertificateSigningRequests of the technician and recordings signers.
pub mod csr_annotations {
    /// The namespace the certificate is for (required).
    pub const NAMESPACE: &str = "tether.dev/namespace";
    /// The one RemoteSession the certificate is for.
    pub const SESSION: &str = "tether.dev/session";
    /// Written by the operator: the relay address to connect to with the certificate.
    pub const RELAY: &str = "tether.dev/relay";
}

/// The Secret the operator writes for each live session, holding its token.
pub mod access_secret {
    /// Data key: the session token (a JWT).
    pub const TOKEN: &str = "token";
    /// Data key: `<namespace>/<name>` of the session.
    pub const SESSION: &str = "session";
    /// Data key: the session's Device.
    pub const DEVICE: &str = "device";
    /// Data key: when the token expires (RFC 3339).
    pub const EXPIRES_AT: &str = "expiresAt";
    /// Data key: when the session ends (RFC 3339).
    pub const ENDS_AT: &str = "endsAt";
    /// Data key: the relay's address, when the operator knows it.
    pub const RELAY: &str = "relay";
    /// Data key: the CA bundle to trust for the relay's certificate.
    pub const CA: &str = "ca.crt";
    /// The Secret's `type`.
    pub const TYPE: &str = "tether.dev/session-access";
    /// Value of the `app.kubernetes.io/component` label on every access Secret.
    pub const COMPONENT: &str = "session-access";
    /// Label selector matching every access Secret.
    pub const SELECTOR: &str = "app.kubernetes.io/component=session-access";
    /// Label naming the session an access Secret belongs to.
    pub const SESSION_LABEL: &str = "tether.dev/session";
    /// Annotation: when its token expires (RFC 3339).
    pub const TOKEN_EXPIRES_AT: &str = "tether.dev/token-expires-at";
    /// Annotation: the id (`kid`) of the key that signed its token.
    pub const TOKEN_KEY: &str = "tether.dev/token-key";
    /// Annotation: the session's `metadata.generation` its token was minted from.
    pub const SESSION_GENERATION: &str = "tether.dev/session-generation";

    /// Name of the access Secret of the session named `session`.
    pub fn name(session: &str) -> String {
        format!("{session}-access")
    }
}

/// What the operator publishes in its namespace for relays and agents to trust.
pub mod trust {
    /// ConfigMap with the public trust material.
    pub const CONFIGMAP: &str = "tether-trust";
    /// Its key: the CA bundle (PEM).
    pub const CA_BUNDLE: &str = "ca-bundle.crt";
    /// Its key: the token verifying keys (JSON).
    pub const TOKEN_KEYS: &str = "token-keys.json";
    /// ConfigMap listing revoked session uids, each mapped to when it was revoked.
    pub const REVOCATIONS_CONFIGMAP: &str = "tether-revocations";
    /// Secret holding the certificate authority.
    pub const CA_SECRET: &str = "tether-ca";
    /// Secret holding the token signing keys.
    pub const KEYS_SECRET: &str = "tether-token-keys";
    /// Annotation on [`CA_SECRET`] or [`KEYS_SECRET`], set by an administrator: a value not
    /// yet in [`ROTATED`] asks for that credential to be rotated now.
    pub const ROTATE: &str = "tether.dev/rotate";
    /// Annotation the operator sets on the Secret it rotated on request: the value of
    /// [`ROTATE`] it acted on.
    pub const ROTATED: &str = "tether.dev/rotated-for";
    /// Annotation on [`CONFIGMAP`]: the last CA rotation request whose result is published.
    pub const CA_PUBLISHED_FOR: &str = "tether.dev/ca-published-for";
    /// Annotation on [`CONFIGMAP`]: the last token-key rotation request whose result is
    /// published.
    pub const TOKEN_KEYS_PUBLISHED_FOR: &str = "tether.dev/token-keys-published-for";
}

/// Standard labels on what Tether's components create.
pub mod labels {
    /// `app.kubernetes.io/managed-by`.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// `app.kubernetes.io/component`.
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    /// `app.kubernetes.io/name`.
    pub const NAME: &str = "app.kubernetes.io/name";
    /// `app.kubernetes.io/part-of`.
    pub const PART_OF: &str = "app.kubernetes.io/part-of";
    /// The value of `managed-by` on what the operator creates.
    pub const OPERATOR: &str = "tether-operator";
}

/// Whether `name` is a valid namespace or Device name as the relay and the operator accept
/// it: a DNS-1123 subdomain of at most 63 characters (lowercase letters, digits, `-` and
/// `.`, starting and ending with a letter or digit), so it is also a valid label value.
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            bytes.len() <= 63
                && bytes.iter().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.'
                })
                && first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
        }
        _ => false,
    }
}

impl From<RecordingPolicy> for token::RecordingPolicy {
    fn from(policy: RecordingPolicy) -> Self {
        match policy {
            RecordingPolicy::Disabled => Self::Disabled,
            RecordingPolicy::Enabled => Self::Enabled,
            RecordingPolicy::Required => Self::Required,
        }
    }
}

impl From<token::RecordingPolicy> for RecordingPolicy {
    fn from(policy: token::RecordingPolicy) -> Self {
        match policy {
            token::RecordingPolicy::Disabled => Self::Disabled,
            token::RecordingPolicy::Enabled => Self::Enabled,
            token::RecordingPolicy::Required => Self::Required,
        }
    }
}

impl From<DesktopAccess> for token::DesktopPermission {
    fn from(access: DesktopAccess) -> Self {
        match access {
            DesktopAccess::Control => Self::Control,
            DesktopAccess::ViewOnly => Self::ViewOnly,
            DesktopAccess::Disabled => Self::None,
        }
    }
}

impl From<token::DesktopPermission> for DesktopAccess {
    fn from(permission: token::DesktopPermission) -> Self {
        match permission {
            token::DesktopPermission::Control => Self::Control,
            token::DesktopPermission::ViewOnly => Self::ViewOnly,
            token::DesktopPermission::None => Self::Disabled,
        }
    }
}

impl From<crate::remote_session::ClipboardAccess> for token::Clipboard {
    fn from(c: crate::remote_session::ClipboardAccess) -> Self {
        Self {
            to_device: c.to_device,
            from_device: c.from_device,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dns_1123() {
        for good in ["a", "reception-laptop", "a.b", "x1", &"a".repeat(63)] {
            assert!(valid_name(good), "{good:?} is valid");
        }
        for bad in [
            "",
            "-a",
            "a-",
            ".a",
            "A",
            "a_b",
            "a b",
            "ä",
            "../x",
            &"a".repeat(64),
        ] {
            assert!(!valid_name(bad), "{bad:?} is invalid");
        }
    }

    #[test]
    fn enums_round_trip() {
        for p in [
            RecordingPolicy::Disabled,
            RecordingPolicy::Enabled,
            RecordingPolicy::Required,
        ] {
            assert_eq!(RecordingPolicy::from(token::RecordingPolicy::from(p)), p);
        }
        for d in [
            DesktopAccess::Control,
            DesktopAccess::ViewOnly,
            DesktopAccess::Disabled,
        ] {
            assert_eq!(DesktopAccess::from(token::DesktopPermission::from(d)), d);
        }
    }

    /// The API and the token default differently on purpose: a session that says nothing is
    /// recorded (`Enabled`), while a token that says nothing was minted without a recording
    /// decision and is read as `Disabled` (every token the operator mints names its policy).
    #[test]
    fn defaults_differ_deliberately() {
        assert_eq!(RecordingPolicy::default(), RecordingPolicy::Enabled);
        assert_eq!(
            token::RecordingPolicy::default(),
            token::RecordingPolicy::Disabled
        );
    }

    #[test]
    fn access_secret_is_named_after_its_session() {
        assert_eq!(access_secret::name("printer-help"), "printer-help-access");
        assert!(access_secret::SELECTOR.ends_with(access_secret::COMPONENT));
        assert!(access_secret::SELECTOR.starts_with(labels::COMPONENT));
    }
}

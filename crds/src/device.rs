//! `Device`: an enrolled endpoint (laptop, server, kiosk) that runs `tether-agent`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Secret, in each device group's namespace, holding the group's bootstrap token (key
/// [`ENROLLMENT_TOKEN_KEY`]). Only the operator and administrators read it.
pub const ENROLLMENT_SECRET: &str = "tether-enrollment";

/// Key of the bootstrap token in [`ENROLLMENT_SECRET`].
pub const ENROLLMENT_TOKEN_KEY: &str = "token";

/// Annotation on [`ENROLLMENT_SECRET`], set by administrators: the RFC 3339 time after which
/// the token no longer enrolls devices.
pub const TOKEN_EXPIRES_AT_ANNOTATION: &str = "tether.dev/expires-at";

/// Annotation on [`ENROLLMENT_SECRET`], set by administrators: how many devices the token may
/// enroll.
pub const TOKEN_MAX_USES_ANNOTATION: &str = "tether.dev/max-uses";

/// Annotation on [`ENROLLMENT_SECRET`], kept by the operator: how many devices the current
/// token has enrolled.
pub const TOKEN_USES_ANNOTATION: &str = "tether.dev/uses";

/// Annotation on [`ENROLLMENT_SECRET`], kept by the operator: a fingerprint of the token that
/// [`TOKEN_USES_ANNOTATION`] counts for, so that a new token starts from zero.
pub const TOKEN_USES_OF_ANNOTATION: &str = "tether.dev/uses-of";

/// Annotation on [`ENROLLMENT_SECRET`], kept by the operator: the last enrollment request
/// counted, so that a retried request is not counted twice.
pub const TOKEN_LAST_USE_ANNOTATION: &str = "tether.dev/last-enrollment";

/// Annotation on a Device, kept by the operator: the CertificateSigningRequest that enrolled it.
pub const ENROLLMENT_REQUEST_ANNOTATION: &str = "tether.dev/enrollment-request";

/// Annotation on an agent CertificateSigningRequest: the device group (namespace).
pub const CSR_NAMESPACE_ANNOTATION: &str = "tether.dev/namespace";

/// Annotation on an agent CertificateSigningRequest: the device name.
pub const CSR_DEVICE_ANNOTATION: &str = "tether.dev/device";

/// Annotation on an agent CertificateSigningRequest: the hex SHA-256 of the request's name, a
/// newline and the presented bootstrap token (never the token itself); the operator compares
/// it with the same digest of the Secret's token.
pub const CSR_TOKEN_DIGEST_ANNOTATION: &str = "tether.dev/bootstrap-token-sha256";

/// A bootstrap token as compared: surrounding whitespace (a trailing newline in a token file
/// or in a Secret made from one) is not part of it. `tether-agent enroll` reads its token
/// file the same way.
pub fn bootstrap_token(raw: &str) -> &str {
    raw.trim()
}

/// The digest of a bootstrap token that an agent CertificateSigningRequest carries (the
/// relay writes it, the operator checks it): hex SHA-256 of the request's name, a newline,
/// and the token as compared ([`bootstrap_token`]). Binding it to the request's name means
/// the same token gives a different digest on every request, so nothing can be precomputed
/// and requests cannot be matched with each other.
pub fn token_digest(request_name: &str, token: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(request_name.as_bytes());
    hash.update(b"\n");
    hash.update(bootstrap_token(token).as_bytes());
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// An enrolled endpoint. Its namespace is its device group: RBAC and policy apply per
/// namespace. The agent on the device keeps `status` current; `spec` is what administrators set.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "tether.dev",
    version = "v1alpha1",
    kind = "Device",
    plural = "devices",
    shortname = "dev",
    category = "tether",
    namespaced,
    status = "DeviceStatus",
    printcolumn = r#"{"name":"Presence","type":"string","jsonPath":".status.presence"}"#,
    printcolumn = r#"{"name":"Hostname","type":"string","jsonPath":".status.hostname"}"#,
    printcolumn = r#"{"name":"OS","type":"string","jsonPath":".status.os"}"#,
    printcolumn = r#"{"name":"Agent","type":"string","jsonPath":".status.agentVersion"}"#,
    printcolumn = r#"{"name":"Offline Since","type":"date","jsonPath":".status.offlineSince"}"#,
    printcolumn = r#"{"name":"Last Seen","type":"date","jsonPath":".status.lastSeen","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSpec {
    /// Friendly name shown to technicians, e.g. "Reception kiosk 2".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,

    /// Free-form notes about the device: location, owner, purpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// Whether sessions on this device are refused. A disabled device keeps its enrollment.
    #[serde(default)]
    pub disabled: bool,

    /// Whether the device may enroll once more, replacing its identity (for example a
    /// reinstalled laptop). A device name enrolls once; an administrator sets this to let the
    /// next enrollment of the name through, and the operator sets it back to false when it is
    /// used. Deleting the Device has the same effect.
    #[serde(default)]
    pub allow_reenrollment: bool,
}

/// Whether the device's agent is connected.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Presence {
    /// The agent holds a connection to a relay.
    Online,
    /// The agent is not connected.
    Offline,
}

/// What the agent last reported about the device.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// Whether the agent is connected: `Online` or `Offline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<Presence>,

    /// When the relay last recorded the agent's presence: when it connected, or when it went
    /// offline. It is not refreshed while the agent stays connected (`presence: Online` says
    /// the agent is heard from now), so it is only an age while `Offline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,

    /// Since when the agent has been offline; absent while it is `Online`. `hostname`, `os`
    /// and `agentVersion` keep the values last reported, as of this time. Kept by the
    /// operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_since: Option<Time>,

    /// When the device enrolled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolled_at: Option<Time>,

    /// Version of `tether-agent` running on the device (the last one reported while it is
    /// offline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,

    /// Operating system name and version (the last reported while the device is offline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,

    /// The device's host name (the last reported while the device is offline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,

    /// Users logged on to the device; decides the mode of `Dynamic` sessions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logged_on_users: Vec<String>,

    /// The agent cannot tell who is logged on (`loggedOnUsers` means nothing then): `Dynamic`
    /// sessions on this device run interactive, asking for consent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub logged_on_users_unknown: bool,

    /// The relay the agent is attached to (its replica's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,

    /// Where the other relay replicas reach that relay (`host:port`), to forward a technician
    /// who reached one of them to the replica the agent is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_address: Option<String>,

    /// Latest observations of the device's state, one per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::bootstrap_token;

    #[test]
    fn tokens_ignore_surrounding_whitespace() {
        assert_eq!(bootstrap_token("abc\n"), "abc");
        assert_eq!(bootstrap_token(" abc\r\n"), "abc");
        assert_eq!(bootstrap_token("a b"), "a b");
        assert_eq!(bootstrap_token("\n"), "");
    }
}

//! `Device`: an enrolled endpoint (laptop, server, kiosk) that runs `tether-agent`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
    printcolumn = r#"{"name":"Last Seen","type":"date","jsonPath":".status.lastSeen"}"#,
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

    /// When the agent was last heard from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,

    /// When the device enrolled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolled_at: Option<Time>,

    /// Version of `tether-agent` running on the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,

    /// Operating system name and version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,

    /// The device's host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,

    /// Users logged on to the device; decides the mode of `Dynamic` sessions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logged_on_users: Vec<String>,

    /// The relay the agent is attached to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,

    /// Latest observations of the device's state, one per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

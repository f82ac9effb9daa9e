//! `AssistanceRequest`: a request for help that, once approved, becomes a `RemoteSession`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::GoDuration;
use crate::remote_session::{Features, RecordingPolicy, SessionMode};

/// A request for remote assistance on a device, with a reason and a preferred time.
///
/// Approval lives in `status` (as for CertificateSigningRequest), so the spec a GitOps tool
/// applied never changes when someone approves it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tether.dev",
    version = "v1alpha1",
    kind = "AssistanceRequest",
    plural = "assistancerequests",
    shortname = "areq",
    category = "tether",
    namespaced,
    status = "AssistanceRequestStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Device","type":"string","jsonPath":".spec.device"}"#,
    printcolumn = r#"{"name":"Requester","type":"string","jsonPath":".spec.requester.name"}"#,
    printcolumn = r#"{"name":"Session","type":"string","jsonPath":".status.session"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AssistanceRequestSpec {
    /// Name of the Device, in this namespace, that needs assistance.
    #[schemars(length(min = 1, max = 253))]
    pub device: String,

    /// Who asks for help.
    pub requester: Requester,

    /// What the problem is, in the requester's words. Shown to approvers and technicians.
    #[schemars(length(min = 1, max = 2048))]
    pub reason: String,

    /// When the requester would like help. Omit it for "as soon as possible".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_window: Option<PreferredWindow>,

    /// Who may connect once the request is approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<Assignee>,

    /// Whether the request can be used for more than one session. A one-time request is done
    /// when its session ends; a reusable one goes back to `Inactive` and can be approved again.
    #[serde(default)]
    pub reusable: bool,

    /// The session created when the request is approved.
    #[serde(default)]
    pub session_template: SessionTemplate,

    /// Incident or ticket identifier in an external ITSM tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub ticket: Option<String>,
}

/// The person who asks for help.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Requester {
    /// The requester's full name.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,

    /// The requester's account on the device or in the directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub account: Option<String>,

    /// Where notifications about the request are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 320), regex(pattern = r"^[^@\s]+@[^@\s]+$"))]
    pub email: Option<String>,
}

/// A window in which the requester would like assistance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.end) || self.end > self.start", "message": "preferredWindow.end must be after preferredWindow.start"},
]))]
pub struct PreferredWindow {
    /// Earliest time to start (RFC 3339).
    pub start: Time,
    /// Latest time the session may run until (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Time>,
}

/// Users and groups assigned to the request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Assignee {
    /// Kubernetes user names assigned to help.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub users: Vec<String>,
    /// Kubernetes groups whose members may help.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub groups: Vec<String>,
}

/// The session created from an approved request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionTemplate {
    /// Consent mode of the session.
    #[serde(default)]
    pub mode: SessionMode,

    /// Session length in Go duration syntax (`30m`, `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "duration(self) > duration('0s')", "message": "duration must be positive"},
        {"rule": "duration(self) <= duration('24h')", "message": "duration must be at most 24h"},
    ]))]
    pub duration: Option<GoDuration>,

    /// Channels the technician may use.
    #[serde(default)]
    pub features: Features,

    /// Recording policy of the session.
    #[serde(default)]
    pub recording: RecordingPolicy,
}

/// Where a request is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum RequestPhase {
    /// Waiting for an approver.
    Pending,
    /// Approved; the session is being created.
    Approved,
    /// Refused by an approver.
    Denied,
    /// Nobody decided before the approval timeout.
    ApprovalExpired,
    /// The session exists and waits for its start time.
    Scheduled,
    /// The session has started (waiting for connection or running).
    InProgress,
    /// A reusable request whose last session ended; it can be approved again.
    Inactive,
    /// A one-time request whose session ended.
    Completed,
    /// The request could not be carried out, for the reason in `status.message`.
    Failed,
}

/// An approver's decision.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Decision {
    /// The request may go ahead.
    Approved,
    /// The request is refused.
    Denied,
}

/// Who decided a request, when and why.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// `Approved` or `Denied`.
    pub decision: Decision,
    /// The Kubernetes user who decided; the API server checks it is the caller.
    pub approver: String,
    /// When the decision was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<Time>,
    /// Why, in the approver's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
}

/// The approval and progress of a request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssistanceRequestStatus {
    /// Where the request is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RequestPhase>,

    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The decision on the current round of approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,

    /// Name of the RemoteSession created for the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,

    /// Latest observations (`Approved`, `Denied`, …), one per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Human-readable explanation of the current phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

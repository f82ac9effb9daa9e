//! `AssistanceRequest`: a request for help that, once approved, becomes a `RemoteSession`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::GoDuration;
use crate::remote_session::{Features, RecordingPolicy, SessionMode};

/// Annotations on an AssistanceRequest.
pub mod annotations {
    /// The Kubernetes user who created the request. Required on creation and checked by the
    /// admission policy to equal the caller, so self-approval can be refused.
    pub const REQUESTED_BY: &str = "tether.dev/requested-by";
    /// Set (to any new value, e.g. a timestamp) to request a reusable request again.
    pub const REQUEST_AGAIN: &str = "tether.dev/request-again";
}

/// Condition types on an AssistanceRequest.
pub mod condition_types {
    /// `True` once approved (for `kubectl wait --for=condition=Approved`).
    pub const APPROVED: &str = "Approved";
    /// `True` once denied.
    pub const DENIED: &str = "Denied";
    /// Whether the last change was delivered by email and webhook.
    pub const NOTIFIED: &str = "Notified";
}

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
    printcolumn = r#"{"name":"Approver","type":"string","jsonPath":".status.approval.approver"}"#,
    printcolumn = r#"{"name":"Session","type":"string","jsonPath":".status.session"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = kube::core::Rule::new(format!(
        "size(self.metadata.name) <= {}",
        crate::limits::REQUEST_NAME_MAX
    ))
    .message(kube::core::Message::Message(format!(
        "AssistanceRequest names are at most {} characters: its sessions are named <request>-<round>",
        crate::limits::REQUEST_NAME_MAX
    )))
    .reason(kube::core::Reason::FieldValueInvalid),
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": crate::limits::token_budget_rule("assignee"),
        "message": format!(
            "reason, ticket and assignee users and groups together must fit in {} bytes: they are carried in the session token",
            crate::limits::TOKEN_TEXT_BUDGET
        ),
    },
]))]
pub struct AssistanceRequestSpec {
    /// Name of the Device, in this namespace, that needs assistance (a DNS label). Cannot be
    /// changed.
    #[schemars(length(min = 1, max = 63))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "device cannot be changed; create a new request"},
        {"rule": crate::limits::DNS_LABEL_RULE, "message": "device must be the name of a Device in this namespace: lowercase letters, digits and '-', at most 63 characters"},
    ]))]
    pub device: String,

    /// Who asks for help.
    pub requester: Requester,

    /// What the problem is, in the requester's words. Shown to approvers and technicians, and
    /// to the user when consent is asked. At most 1024 characters; newlines and tabs are the
    /// only control characters allowed.
    #[schemars(length(min = 1, max = 1024), extend("x-kubernetes-validations" = [
        {"rule": crate::limits::TEXT_RULE, "message": "reason must not contain control characters other than newline and tab"},
    ]))]
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
    #[schemars(length(max = 256), extend("x-kubernetes-validations" = [
        {"rule": crate::limits::SINGLE_LINE_RULE, "message": "ticket must not contain control characters"},
    ]))]
    pub ticket: Option<String>,
}

/// The person who asks for help.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Requester {
    /// The requester's full name.
    #[schemars(length(min = 1, max = 256), extend("x-kubernetes-validations" = [
        {"rule": crate::limits::SINGLE_LINE_RULE, "message": "requester.name must not contain control characters"},
    ]))]
    pub name: String,

    /// The requester's account on the device or in the directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), extend("x-kubernetes-validations" = [
        {"rule": crate::limits::SINGLE_LINE_RULE, "message": "requester.account must not contain control characters"},
    ]))]
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
    {"rule": crate::limits::window_rule(), "message": "preferredWindow.end must be after preferredWindow.start"},
]))]
pub struct PreferredWindow {
    /// Earliest time to start, in RFC 3339 with an uppercase `T` and `Z` or an offset
    /// (`2030-01-31T09:00:00Z`).
    #[schemars(schema_with = "crate::limits::time")]
    pub start: Time,
    /// Latest time the session may run until, in the same form as `start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::limits::time")]
    pub end: Option<Time>,
}

/// Users and groups assigned to the request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Assignee {
    /// Kubernetes user names assigned to help; they may connect to the session (at most 16,
    /// each at most 128 characters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::limits::subjects")]
    pub users: Vec<String>,
    /// Kubernetes groups whose members may help and connect (at most 16, each at most 128
    /// characters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::limits::subjects")]
    pub groups: Vec<String>,
    /// Where the assignees are notified of every change to the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(length(max = 320), regex(pattern = r"^[^@\s]+@[^@\s]+$"))
    )]
    pub emails: Vec<String>,
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
        // Only well-formed durations reach `duration()`: the pattern refuses the rest with
        // its own message, without a CEL conversion error beside it.
        {"rule": "!self.matches('^[-+]?(0|(([0-9]+([.][0-9]*)?|[.][0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$') || duration(self) > duration('0s')", "message": "duration must be positive"},
        {"rule": "!self.matches('^[-+]?(0|(([0-9]+([.][0-9]*)?|[.][0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$') || duration(self) <= duration('24h')", "message": "duration must be at most 24h"},
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
    /// The session's window is open; waiting for the device and the user's consent.
    WaitingForConnection,
    /// The session is active.
    InProgress,
    /// A reusable request whose last session ended; it can be requested again.
    Inactive,
    /// A one-time request whose session ran and ended normally.
    Completed,
    /// A one-time request whose session reached the end of its window.
    Expired,
    /// A one-time request whose session was terminated by an administrator.
    Closed,
    /// The request could not be carried out, for the reason in `status.message`.
    Failed,
}

impl RequestPhase {
    /// Whether the request is waiting for, or running, a session round.
    pub fn is_active_round(self) -> bool {
        matches!(
            self,
            Self::Pending
                | Self::Approved
                | Self::Scheduled
                | Self::WaitingForConnection
                | Self::InProgress
        )
    }

    /// The phase as written in `status.phase`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Approved => "Approved",
            Self::Denied => "Denied",
            Self::ApprovalExpired => "ApprovalExpired",
            Self::Scheduled => "Scheduled",
            Self::WaitingForConnection => "WaitingForConnection",
            Self::InProgress => "InProgress",
            Self::Inactive => "Inactive",
            Self::Completed => "Completed",
            Self::Expired => "Expired",
            Self::Closed => "Closed",
            Self::Failed => "Failed",
        }
    }
}

impl std::fmt::Display for RequestPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// The round this decision is for (`status.round` when it was made).
    #[schemars(range(min = 1))]
    pub round: i64,
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

/// What approving a round takes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRule {
    /// How many distinct people must approve.
    #[schemars(range(min = 1, max = 5))]
    pub required: u32,
    /// When set, only members of these groups may approve.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::limits::subjects")]
    pub groups: Vec<String>,
    /// The SessionPolicies (`namespace/name`) the rule comes from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub policies: Vec<String>,
}

/// One finished round of a reusable request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoundRecord {
    /// Round number, from 1.
    pub round: i64,
    /// How the round ended (`Completed`, `Expired`, `Closed`, `Denied`, …).
    pub outcome: RequestPhase,
    /// The decision of the round, if one was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// The approvals of a round that needed more than one approver.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub approvals: Vec<Approval>,
    /// The session of the round, if one was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// When the round ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Time>,
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

    /// The current round of the request, from 1; a reusable request starts a new round each
    /// time it is requested again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<i64>,

    /// When the current round was requested; the approval timeout counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<Time>,

    /// When the current round expires if nobody decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_deadline: Option<Time>,

    /// The decision on the current round. Written by the approver (`kubectl tether approve`
    /// or `deny`); the API server checks who may write it and that it is never changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,

    /// What approving the current round takes, from the namespace's SessionPolicies: written
    /// by the operator while the round waits for approvers, and left out when one approval by
    /// anyone allowed to approve is enough. The API server checks approvals against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_rule: Option<ApprovalRule>,

    /// The approvals of a round that needs more than one approver: `kubectl tether approve`
    /// adds the caller's, and the API server checks it names the caller, is for the current
    /// round, is the caller's first, and that nothing else in the list changed. The round is
    /// approved once enough distinct people approved; a denial (`status.approval`) by any
    /// one of them ends it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub approvals: Vec<Approval>,

    /// Earlier rounds of a reusable request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RoundRecord>,

    /// Notification state: the last change notified by email and webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notified: Option<String>,

    /// The last `tether.dev/request-again` annotation value acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_again_seen: Option<String>,

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

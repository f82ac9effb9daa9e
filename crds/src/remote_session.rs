//! `RemoteSession`: one time-boxed assistance session on one Device.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::GoDuration;
pub use crate::technicians::{SessionTechnicians, Technicians};

/// Condition types on a RemoteSession, and who writes them.
pub mod condition_types {
    /// Written by the operator: `True` while technicians can use the session.
    pub const READY: &str = "Ready";
    /// Written by the operator: `True` from two minutes before the session ends.
    pub const EXPIRING_SOON: &str = "ExpiringSoon";
    /// Written by the operator from the Device's presence: `True` while the agent is
    /// connected to a relay.
    pub const AGENT_CONNECTED: &str = "AgentConnected";
    /// Written by the operator when the session's window opens: `True` once every
    /// SessionPolicy's business hours and concurrency limits let it start (it then keeps its
    /// place until it ends), `False` while a rule holds it back, the reason naming the rule.
    pub const ADMITTED: &str = "Admitted";
    /// Written by the relay (see [`crate::contract::condition_types`]).
    pub use crate::contract::condition_types::{CONSENTED, ENDED, RECORDING};
}

/// Annotations on a RemoteSession.
pub mod annotations {
    /// Set by `kubectl tether terminate` to the user asking to end the session; the
    /// admission policy checks it is the caller and that the caller may `terminate`.
    pub const TERMINATED_BY: &str = "tether.dev/terminated-by";
    /// Optional reason given with a termination.
    pub const TERMINATION_REASON: &str = "tether.dev/termination-reason";
}

/// Default session length when `duration` is omitted.
pub const DEFAULT_DURATION: &str = "30m";

/// Longest duration the schema accepts; the operator may enforce a lower cluster-wide maximum.
pub const SCHEMA_MAX_DURATION: &str = "24h";

/// A time-boxed, recorded, consented remote-assistance session on one Device.
///
/// The session is scheduled (or instant), waits for its relay, agent and the user's consent,
/// runs for its duration and then ends; everything about it is recorded in `status`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tether.dev",
    version = "v1alpha1",
    kind = "RemoteSession",
    plural = "remotesessions",
    shortname = "rsess",
    category = "tether",
    namespaced,
    status = "RemoteSessionStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Device","type":"string","jsonPath":".spec.device"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".status.effectiveMode"}"#,
    printcolumn = r#"{"name":"Start","type":"string","jsonPath":".status.scheduledStart"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.expiresAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = kube::core::Rule::new(format!(
        "size(self.metadata.name) <= {}",
        crate::limits::SESSION_NAME_MAX
    ))
    .message(kube::core::Message::Message(format!(
        "RemoteSession names are at most {} characters: the name is a label value and names the \
         session's access Secret",
        crate::limits::SESSION_NAME_MAX
    )))
    .reason(kube::core::Reason::FieldValueInvalid),
    validation = kube::core::Rule::new(frozen(
        "(self.spec.duration == oldSelf.spec.duration \
         || duration(self.spec.duration) == duration(oldSelf.spec.duration)) \
         && has(self.spec.startTime) == has(oldSelf.spec.startTime) \
         && (!has(self.spec.startTime) || self.spec.startTime == oldSelf.spec.startTime)"
    ))
    .message("startTime and duration can only be changed while the session is Scheduled")
    .reason(kube::core::Reason::FieldValueForbidden)
    .field_path(".spec"),
    validation = kube::core::Rule::new(frozen("self.spec.device == oldSelf.spec.device"))
        .message(frozen_message("device"))
        .reason(kube::core::Reason::FieldValueForbidden)
        .field_path(".spec.device"),
    validation = kube::core::Rule::new(frozen("self.spec.mode == oldSelf.spec.mode"))
        .message(frozen_message("mode"))
        .reason(kube::core::Reason::FieldValueForbidden)
        .field_path(".spec.mode"),
    validation = kube::core::Rule::new(frozen(
        "self.spec.features == oldSelf.spec.features"
    ))
    .message(frozen_message("features"))
    .reason(kube::core::Reason::FieldValueForbidden)
    .field_path(".spec.features"),
    validation = kube::core::Rule::new(frozen(
        "self.spec.recording == oldSelf.spec.recording"
    ))
    .message(frozen_message("recording"))
    .reason(kube::core::Reason::FieldValueForbidden)
    .field_path(".spec.recording"),
    validation = kube::core::Rule::new(frozen(&same_optional("technicians")))
        .message(frozen_message("technicians"))
        .reason(kube::core::Reason::FieldValueForbidden)
        .field_path(".spec.technicians"),
    validation = kube::core::Rule::new(frozen(&same_optional("reason")))
        .message(frozen_message("reason"))
        .reason(kube::core::Reason::FieldValueForbidden)
        .field_path(".spec.reason"),
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": crate::limits::token_budget_rule("technicians"),
        "message": format!(
            "reason, ticket and technicians together must fit in {} bytes: they are carried in the session token",
            crate::limits::TOKEN_TEXT_BUDGET
        ),
    },
]))]
pub struct RemoteSessionSpec {
    /// Name of the Device, in this namespace, that the session connects to (a DNS label).
    /// Can be changed only while the session is `Scheduled`.
    #[schemars(length(min = 1, max = 63), extend("x-kubernetes-validations" = [
        {"rule": crate::limits::DNS_LABEL_RULE, "message": DEVICE_MESSAGE},
    ]))]
    pub device: String,

    /// How the user on the device takes part: `Interactive` asks the logged-on user for
    /// consent, `Unattended` needs no consent (servers, kiosks), `Dynamic` is interactive when a
    /// user is logged on and unattended otherwise. Can be changed only while the session is
    /// `Scheduled`.
    #[serde(default)]
    pub mode: SessionMode,

    /// When the session may start, in RFC 3339 with an uppercase `T` and `Z` or an offset
    /// (`2030-01-31T09:00:00Z`, `2030-01-31T10:00:00+01:00`). Omit it for an instant session,
    /// which starts as soon as it is created. Can be changed only while the session is
    /// `Scheduled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::limits::time")]
    pub start_time: Option<Time>,

    /// How long the session may last, in Go duration syntax (`30m`, `1h30m`). It is counted
    /// from `startTime`, or from the session's creation for an instant session; time spent
    /// waiting for the agent or for consent counts. At most 24h; the operator may enforce a
    /// lower cluster-wide maximum. Can be changed only while the session is `Scheduled`.
    #[serde(default = "default_duration")]
    #[schemars(default = "default_duration", extend("x-kubernetes-validations" = [
        // Only well-formed durations reach `duration()`: the pattern refuses the rest with
        // its own message, without a CEL conversion error beside it.
        {"rule": "!self.matches('^[-+]?(0|(([0-9]+([.][0-9]*)?|[.][0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$') || duration(self) > duration('0s')", "message": "duration must be positive"},
        {"rule": "!self.matches('^[-+]?(0|(([0-9]+([.][0-9]*)?|[.][0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$') || duration(self) <= duration('24h')", "message": "duration must be at most 24h"},
    ]))]
    pub duration: GoDuration,

    /// What the technician may use during the session. Can be changed only while the session
    /// is `Scheduled`.
    #[serde(default)]
    pub features: Features,

    /// Whether the session is recorded: `Disabled`, `Enabled` (a recording failure is reported
    /// but the session continues) or `Required` (the session cannot run without a working
    /// recording). Can be changed only while the session is `Scheduled`.
    #[serde(default)]
    pub recording: RecordingPolicy,

    /// Who may connect as technician. Empty means anyone allowed by RBAC to read the session's
    /// access Secret. Can be changed only while the session is `Scheduled`.
    #[serde(default, skip_serializing_if = "SessionTechnicians::is_unset")]
    pub technicians: SessionTechnicians,

    /// Name of the AssistanceRequest, in this namespace, that this session was created from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 50), extend("x-kubernetes-validations" = [
        {"rule": crate::limits::DNS_SUBDOMAIN_RULE, "message": "assistanceRequest must be the name of an AssistanceRequest in this namespace"},
    ]))]
    pub assistance_request: Option<String>,

    /// Incident or ticket identifier in an external ITSM tool, for the audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), extend("x-kubernetes-validations" = [
        {"rule": crate::limits::SINGLE_LINE_RULE, "message": "ticket must not contain control characters"},
    ]))]
    pub ticket: Option<String>,

    /// Why the session exists, shown to the user when consent is asked. At most 1024
    /// characters; newlines and tabs are the only control characters allowed. Can be changed
    /// only while the session is `Scheduled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), extend("x-kubernetes-validations" = [
        {"rule": crate::limits::TEXT_RULE, "message": "reason must not contain control characters other than newline and tab"},
    ]))]
    pub reason: Option<String>,
}

/// Message of the rule on `spec.device`.
const DEVICE_MESSAGE: &str = "device must be the name of a Device in this namespace: lowercase letters, digits and '-', at most 63 characters";

/// A root rule that lets `same` (the field unchanged) be false only while the session is new
/// or `Scheduled`: the token, the consent mode and the status are derived from the field once
/// the window opens.
fn frozen(same: &str) -> String {
    format!(
        "!has(oldSelf.status) || !has(oldSelf.status.phase) || oldSelf.status.phase == 'Scheduled' || ({same})"
    )
}

/// Message of a [`frozen`] rule.
fn frozen_message(field: &str) -> kube::core::Message {
    kube::core::Message::Message(format!(
        "{field} can only be changed while the session is Scheduled: the session's credentials and consent were derived from it; create a new RemoteSession"
    ))
}

/// CEL: an optional spec field is equally absent, or equal, in the old and the new object.
fn same_optional(field: &str) -> String {
    format!(
        "has(self.spec.{field}) == has(oldSelf.spec.{field}) && (!has(self.spec.{field}) || self.spec.{field} == oldSelf.spec.{field})"
    )
}

fn default_duration() -> GoDuration {
    GoDuration::from_std(std::time::Duration::from_secs(30 * 60))
}

/// How the user on the device takes part in a session.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SessionMode {
    /// The logged-on user must consent before the session becomes active.
    #[default]
    Interactive,
    /// No consent is asked: for servers and kiosks with nobody in front of them.
    Unattended,
    /// Interactive when a user is logged on to the device, unattended otherwise.
    Dynamic,
}

/// The mode a session actually runs in once `Dynamic` has been resolved.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum EffectiveMode {
    /// The logged-on user was asked for consent.
    Interactive,
    /// No consent was asked.
    Unattended,
}

/// Desktop access granted to the technician.
///
/// (`Disabled` rather than `Off`: YAML 1.1 parsers, kubectl's among them, read a bare `Off`
/// as the boolean false.)
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DesktopAccess {
    /// View and control: keyboard and mouse input reach the device.
    #[default]
    Control,
    /// View only: the relay drops all input from the technician.
    ViewOnly,
    /// No desktop channel.
    Disabled,
}

/// Recording policy of a session.
///
/// (`Disabled`/`Enabled` rather than `Off`/`On`: YAML 1.1 parsers, kubectl's among them, read
/// a bare `On` or `Off` as a boolean.)
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RecordingPolicy {
    /// Nothing is recorded.
    Disabled,
    /// Every channel is recorded; if recording fails the session continues and reports it.
    #[default]
    Enabled,
    /// Every channel is recorded, and the session cannot start or continue without it.
    Required,
}

/// The channels a technician may open during the session.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Features {
    /// Desktop view and control: `Control`, `ViewOnly` or `Disabled`.
    #[serde(default)]
    pub desktop: DesktopAccess,
    /// A shell (PTY) on the device.
    #[serde(default = "yes")]
    pub shell: bool,
    /// The file manager: browse, transfer, rename, delete, zip, find.
    #[serde(default = "yes")]
    pub files: bool,
    /// Chat with the user, including sending files.
    #[serde(default = "yes")]
    pub chat: bool,
    /// The process list, with the right to end processes.
    #[serde(default = "yes")]
    pub processes: bool,
    /// The desktop's clipboard, per direction; off unless allowed here. Transfers appear in
    /// the session's event log with their size and SHA-256, never their content.
    #[serde(default, skip_serializing_if = "ClipboardAccess::is_none")]
    pub clipboard: ClipboardAccess,
    /// Keep the desktop's keystrokes in the session's recording. Off (the default), the
    /// recording shows that keys were pressed but not which, so passwords typed on the
    /// desktop are never stored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub record_keystrokes: bool,
}

/// Which way the desktop's clipboard may travel.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClipboardAccess {
    /// Technician → device: text the technician copies can be pasted on the device.
    #[serde(default)]
    pub to_device: bool,
    /// Device → technician: text copied on the device reaches the technician.
    #[serde(default)]
    pub from_device: bool,
}

impl ClipboardAccess {
    /// Neither direction.
    pub fn is_none(&self) -> bool {
        !self.to_device && !self.from_device
    }
}

fn yes() -> bool {
    true
}

impl Default for Features {
    fn default() -> Self {
        Self {
            desktop: DesktopAccess::default(),
            shell: true,
            files: true,
            chat: true,
            processes: true,
            clipboard: ClipboardAccess::default(),
            record_keystrokes: false,
        }
    }
}

/// Where a session is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum SessionPhase {
    /// Waiting for its start time.
    Scheduled,
    /// Started; waiting for the relay, the agent, the user's consent, or a SessionPolicy's
    /// business hours or concurrency limit.
    Pending,
    /// Running: technicians can connect.
    Active,
    /// Ended normally before its expiry (a party ended it).
    Completed,
    /// Reached the end of its duration.
    Expired,
    /// Ended early by an administrator or by deletion.
    Terminated,
    /// The user refused consent, consent timed out, or a SessionPolicy refused it (outside
    /// business hours, over a concurrency limit).
    Denied,
    /// Could not run, for the reason in `status.reason`.
    Failed,
}

impl SessionPhase {
    /// Every phase, in lifecycle order.
    pub const ALL: [SessionPhase; 8] = [
        Self::Scheduled,
        Self::Pending,
        Self::Active,
        Self::Completed,
        Self::Expired,
        Self::Terminated,
        Self::Denied,
        Self::Failed,
    ];

    /// Whether the phase is final: a session in it never changes phase again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Expired | Self::Terminated | Self::Denied | Self::Failed
        )
    }

    /// The phase as written in `status.phase`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "Scheduled",
            Self::Pending => "Pending",
            Self::Active => "Active",
            Self::Completed => "Completed",
            Self::Expired => "Expired",
            Self::Terminated => "Terminated",
            Self::Denied => "Denied",
            Self::Failed => "Failed",
        }
    }
}

impl std::fmt::Display for SessionPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the operator last observed and decided about a session.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteSessionStatus {
    /// Where the session is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SessionPhase>,

    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Latest observations of the session's state, one per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// When the session's window opens: `spec.startTime`, or the creation time of an instant
    /// session. The duration is counted from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_start: Option<Time>,

    /// When the session's window closes: `scheduledStart` plus the duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,

    /// When the session became active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,

    /// When the session reached its terminal phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Time>,

    /// The mode the session runs in once `Dynamic` is resolved: `Interactive` or `Unattended`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_mode: Option<EffectiveMode>,

    /// Machine-readable reason for the current phase, in CamelCase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,

    /// Human-readable explanation of the current phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// The session's access credentials: where they are and until when they work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessStatus>,

    /// Address of the relay serving the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,

    /// The session's recording as stored, written by the relay recording it. Auditors read
    /// the recording itself with `kubectl tether recordings`, `play` and `export`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<RecordingStatus>,
}

/// A session's recording in object storage: every recording the session has (one per relay
/// that served it), summed up, with each object's size and checksum.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordingStatus {
    /// `Recording` while it is being written, `Complete` once finished, `Recovered` when a
    /// relay stopped without finishing it and its uploads were completed afterwards (what was
    /// not flushed before the stop is missing), or `Failed`.
    pub state: String,
    /// Where the recording is: the store's URL and key prefix (never credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Total size of the objects, in bytes.
    #[serde(default)]
    pub bytes: i64,
    /// How long was recorded, in seconds (from the first recording's start to the last one's
    /// end, or until now while recording).
    #[serde(default)]
    pub duration_seconds: i64,
    /// When recording started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When recording ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Time>,
    /// Why recording failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The recorded objects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub objects: Vec<RecordingObject>,
}

/// One object of a session's recording.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordingObject {
    /// Object name within the session's recordings (`<recording>.<kind>[-<channel>].<ext>`).
    pub name: String,
    /// `events` (JSON lines: connections, consent, files, chat, processes, end), `shell`
    /// (asciicast v2) or `desktop`.
    pub kind: String,
    /// Size in bytes.
    #[serde(default)]
    pub bytes: i64,
    /// SHA-256 of the object (hex), once it is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// The session's access credentials as last issued.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessStatus {
    /// Name of the Secret, in this namespace, holding the session token; technicians need
    /// RBAC to read it.
    pub secret_name: String,
    /// When the current token stops being accepted for new connections (it is re-issued
    /// before then while the session lives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_at: Option<Time>,
    /// When the credentials were revoked (the session ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Time>,
}

#[cfg(test)]
#[path = "remote_session_tests.rs"]
mod tests;

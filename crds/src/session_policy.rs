//! `SessionPolicy`: what sessions in one namespace (a device group) may do.
//!
//! The API server enforces a policy itself, through the chart's ValidatingAdmissionPolicy that
//! takes SessionPolicies as its parameter: every SessionPolicy in a RemoteSession's namespace
//! applies to it, and so does the cluster-wide policy (the SessionPolicy named
//! [`CLUSTER_POLICY`] in Tether's own namespace), so a namespace's policies can only narrow
//! what the cluster allows. A session is checked when it is created and whenever its spec
//! changes; a policy changed later applies to new sessions, not to running ones.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::business_hours::{BusinessHours, Enforcement};
use crate::duration::GoDuration;
use crate::remote_session::{DesktopAccess, RecordingPolicy, SessionMode, Technicians};

/// The name of the cluster-wide SessionPolicy, in the namespace Tether is installed in.
pub const CLUSTER_POLICY: &str = "default";

/// What sessions in this namespace may do: which modes, the most each feature may be, the
/// least recording, the longest duration, and who may use the admin tools. A field left out
/// sets no limit. Enforced by the API server when a RemoteSession is created or its spec
/// changes; refusals name the policy and the rule.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "tether.dev",
    version = "v1alpha1",
    kind = "SessionPolicy",
    plural = "sessionpolicies",
    shortname = "spol",
    category = "tether",
    namespaced,
    printcolumn = r#"{"name":"Modes","type":"string","jsonPath":".spec.modes"}"#,
    printcolumn = r#"{"name":"Desktop","type":"string","jsonPath":".spec.features.desktop"}"#,
    printcolumn = r#"{"name":"Recording","type":"string","jsonPath":".spec.recording"}"#,
    printcolumn = r#"{"name":"Max-Duration","type":"string","jsonPath":".spec.maxDuration"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SessionPolicySpec {
    /// The modes sessions may use (`Interactive`, `Unattended`, `Dynamic`); left out, all
    /// three. `[Interactive]` makes every session ask the user for consent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 3))]
    pub modes: Option<Vec<SessionMode>>,
    /// The most each feature may be. A feature set to `false` here may not be enabled by a
    /// session; `desktop` is the most desktop access (`Control` > `ViewOnly` > `Disabled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<FeatureLimits>,
    /// The least recording sessions may ask for (`Disabled` < `Enabled` < `Required`):
    /// `Required` for servers, say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<RecordingPolicy>,
    /// The longest session (Go duration syntax, e.g. `2h`). The cluster's maximum applies
    /// as well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<GoDuration>,
    /// How long the user has to answer a consent prompt (Go duration syntax, e.g. `30s`);
    /// the relay's own timeout applies when it is shorter. Carried in the credentials issued
    /// after the policy is in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_timeout: Option<GoDuration>,
    /// Who may use the admin tools (the shell and the process list). When set, a session that
    /// enables either must name its technicians, and only these users and groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_tools: Option<Technicians>,
    /// When sessions may start: weekly windows in an IANA time zone. Checked by the operator
    /// when a session's window opens; a session that has started is not cut off when the
    /// hours close.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business_hours: Option<BusinessHours>,
    /// How many sessions may run at once. Checked by the operator when a session's window
    /// opens: a session holds its place from then until it ends (whether or not anyone has
    /// joined yet); finished sessions never count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    /// How many people must approve an AssistanceRequest in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<Approvals>,
}

/// The most sessions that may run at once; a limit left out sets no limit.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Concurrency {
    /// The most sessions of the namespace that may run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub per_namespace: Option<u32>,
    /// The most sessions of one Device that may run at once (`1`: one at a time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub per_device: Option<u32>,
    /// What happens to a session over a limit: `Hold` (the default) keeps it `Pending`, in
    /// the order sessions were created, until another ends; `Refuse` denies it.
    #[serde(default)]
    pub when_full: Enforcement,
}

/// Who must approve an AssistanceRequest before its session is created.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approvals {
    /// How many distinct people must approve (1–5). A denial by any one of them ends the
    /// request; the requester never counts.
    #[schemars(range(min = 1, max = 5))]
    pub required: u32,
    /// When set, only members of these Kubernetes groups may approve.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::limits::subjects")]
    pub groups: Vec<String>,
}

/// The most each feature of a session may be; a field left out sets no limit.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureLimits {
    /// The most desktop access: `Control`, `ViewOnly` or `Disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desktop: Option<DesktopAccess>,
    /// Whether sessions may have a shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<bool>,
    /// Whether sessions may use the file manager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<bool>,
    /// Whether sessions may have chat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<bool>,
    /// Whether sessions may see and end processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<bool>,
    /// Whether the desktop's clipboard may travel technician → device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clipboard_to_device: Option<bool>,
    /// Whether the desktop's clipboard may travel device → technician.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clipboard_from_device: Option<bool>,
    /// Whether recordings may keep the desktop's keystrokes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_keystrokes: Option<bool>,
}

/// The SessionPolicy CRD. No field is `nullable`, so the API server drops a `null` instead
/// of storing it: the admission policy's rules test fields with `has()`, and a stored null
/// would make every rule that reads it an error (and so refuse every session).
pub fn crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.remove("nullable");
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut crd = SessionPolicy::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version.schema.as_mut() {
            schema.open_api_v3_schema = schema.open_api_v3_schema.take().map(|props| {
                let mut value = serde_json::to_value(&props).unwrap_or_default();
                strip(&mut value);
                serde_json::from_value(value).unwrap_or(props)
            });
        }
    }
    crd
}

/// How much desktop access `access` gives, for comparisons (`Control` is the most).
pub fn desktop_rank(access: DesktopAccess) -> u8 {
    match access {
        DesktopAccess::Disabled => 0,
        DesktopAccess::ViewOnly => 1,
        DesktopAccess::Control => 2,
    }
}

/// How much `policy` records, for comparisons (`Required` is the most).
pub fn recording_rank(policy: RecordingPolicy) -> u8 {
    match policy {
        RecordingPolicy::Disabled => 0,
        RecordingPolicy::Enabled => 1,
        RecordingPolicy::Required => 2,
    }
}

/// Both limits on one feature switch: allowed only where both allow it.
fn both(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x && y),
        (x, None) => x,
        (None, y) => y,
    }
}

impl FeatureLimits {
    /// The limits of both: what a session must meet to pass both.
    pub fn narrowed(&self, other: &Self) -> Self {
        Self {
            desktop: match (self.desktop, other.desktop) {
                (Some(a), Some(b)) => Some(if desktop_rank(a) <= desktop_rank(b) {
                    a
                } else {
                    b
                }),
                (a, None) => a,
                (None, b) => b,
            },
            shell: both(self.shell, other.shell),
            files: both(self.files, other.files),
            chat: both(self.chat, other.chat),
            processes: both(self.processes, other.processes),
            clipboard_to_device: both(self.clipboard_to_device, other.clipboard_to_device),
            clipboard_from_device: both(self.clipboard_from_device, other.clipboard_from_device),
            record_keystrokes: both(self.record_keystrokes, other.record_keystrokes),
        }
    }
}

impl SessionPolicySpec {
    /// The policy a session must meet to pass both `self` and `other`: the admission policy
    /// checks every applicable SessionPolicy, so the effective policy of a namespace is all of
    /// them narrowed together. (Admin tools listed by both: only users and groups both list.)
    pub fn narrowed(&self, other: &Self) -> Self {
        Self {
            modes: match (&self.modes, &other.modes) {
                (Some(a), Some(b)) => Some(a.iter().filter(|m| b.contains(m)).copied().collect()),
                (a, None) => a.clone(),
                (None, b) => b.clone(),
            },
            features: match (&self.features, &other.features) {
                (Some(a), Some(b)) => Some(a.narrowed(b)),
                (a, None) => *a,
                (None, b) => *b,
            },
            recording: match (self.recording, other.recording) {
                (Some(a), Some(b)) => Some(if recording_rank(a) >= recording_rank(b) {
                    a
                } else {
                    b
                }),
                (a, None) => a,
                (None, b) => b,
            },
            max_duration: shorter(&self.max_duration, &other.max_duration),
            admin_tools: match (&self.admin_tools, &other.admin_tools) {
                (Some(a), Some(b)) => Some(Technicians {
                    users: a
                        .users
                        .iter()
                        .filter(|u| b.users.contains(u))
                        .cloned()
                        .collect(),
                    groups: a
                        .groups
                        .iter()
                        .filter(|g| b.groups.contains(g))
                        .cloned()
                        .collect(),
                }),
                (a, None) => a.clone(),
                (None, b) => b.clone(),
            },
            consent_timeout: shorter(&self.consent_timeout, &other.consent_timeout),
            // Each policy's hours apply on their own (the operator checks every policy, and
            // `kubectl tether policy` lists them): they do not combine into one set.
            business_hours: self
                .business_hours
                .clone()
                .or_else(|| other.business_hours.clone()),
            concurrency: match (&self.concurrency, &other.concurrency) {
                (Some(a), Some(b)) => Some(Concurrency {
                    per_namespace: min_some(a.per_namespace, b.per_namespace),
                    per_device: min_some(a.per_device, b.per_device),
                    when_full: if a.when_full == Enforcement::Refuse {
                        a.when_full
                    } else {
                        b.when_full
                    },
                }),
                (a, None) => a.clone(),
                (None, b) => b.clone(),
            },
            approvals: match (&self.approvals, &other.approvals) {
                (Some(a), Some(b)) => Some(Approvals {
                    required: a.required.max(b.required),
                    groups: match (a.groups.is_empty(), b.groups.is_empty()) {
                        (false, false) => a
                            .groups
                            .iter()
                            .filter(|g| b.groups.contains(g))
                            .cloned()
                            .collect(),
                        (false, true) => a.groups.clone(),
                        _ => b.groups.clone(),
                    },
                }),
                (a, None) => a.clone(),
                (None, b) => b.clone(),
            },
        }
    }
}

/// The shorter of two optional durations; one left out sets no limit.
fn shorter(a: &Option<GoDuration>, b: &Option<GoDuration>) -> Option<GoDuration> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if x.as_std() <= y.as_std() { x } else { y }.clone()),
        (x, None) => x.clone(),
        (None, y) => y.clone(),
    }
}

/// The smaller of two optional limits; a limit left out sets none.
fn min_some(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

    use super::*;

    fn policy(yaml: &str) -> SessionPolicySpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn narrowing_keeps_the_stricter_limit_of_each_rule() {
        let cluster = policy(
            "modes: [Interactive, Dynamic]\nrecording: Enabled\nmaxDuration: 8h\nfeatures: {desktop: Control, shell: true}\n",
        );
        let group = policy(
            "modes: [Interactive, Unattended]\nrecording: Required\nmaxDuration: 2h\nfeatures: {desktop: ViewOnly, processes: false}\nadminTools: {groups: [seniors]}\n",
        );
        let both = cluster.narrowed(&group);
        assert_eq!(both.modes, Some(vec![SessionMode::Interactive]));
        assert_eq!(both.recording, Some(RecordingPolicy::Required));
        assert_eq!(both.max_duration.as_ref().unwrap().as_str(), "2h");
        let features = both.features.unwrap();
        assert_eq!(features.desktop, Some(DesktopAccess::ViewOnly));
        assert_eq!(features.shell, Some(true));
        assert_eq!(features.processes, Some(false));
        assert_eq!(features.files, None);
        assert_eq!(both.admin_tools.clone().unwrap().groups, vec!["seniors"]);
        // Narrowing is symmetric and nothing narrows an empty policy's limits away.
        assert_eq!(group.narrowed(&cluster), both);
        assert_eq!(SessionPolicySpec::default().narrowed(&group), group);
    }

    #[test]
    fn narrowing_takes_the_lowest_limits_and_the_most_approvers() {
        let cluster = policy(
            "concurrency: {perNamespace: 10, perDevice: 2}\napprovals: {required: 1, groups: [leads, security]}\n",
        );
        let group = policy(
            "concurrency: {perDevice: 1, whenFull: Refuse}\napprovals: {required: 2, groups: [security, ops]}\n",
        );
        let both = cluster.narrowed(&group);
        let c = both.concurrency.unwrap();
        assert_eq!((c.per_namespace, c.per_device), (Some(10), Some(1)));
        assert_eq!(c.when_full, Enforcement::Refuse);
        let a = both.approvals.unwrap();
        assert_eq!((a.required, a.groups), (2, vec!["security".to_owned()]));
    }
}

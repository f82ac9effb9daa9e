//! Who may connect to a session as technician: users and groups, and who of them may only
//! watch its desktop.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Users and groups allowed to connect as technician.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Technicians {
    /// Kubernetes user names allowed to connect (at most 16, each at most 128 characters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::limits::subjects")]
    pub users: Vec<String>,
    /// Kubernetes groups whose members may connect (at most 16, each at most 128 characters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::limits::subjects")]
    pub groups: Vec<String>,
}

impl Technicians {
    /// Whether neither users nor groups are listed.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty()
    }

    /// Whether `user`, or one of `groups`, is listed.
    pub fn names(&self, user: &str, groups: &[String]) -> bool {
        self.users.iter().any(|u| u == user) || self.groups.iter().any(|g| groups.contains(g))
    }
}

/// Who may connect to a session as technician, and who of them may only watch its desktop.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionTechnicians {
    /// Kubernetes user names allowed to connect (at most 16, each at most 128 characters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::limits::subjects")]
    pub users: Vec<String>,
    /// Kubernetes groups whose members may connect (at most 16, each at most 128 characters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::limits::subjects")]
    pub groups: Vec<String>,
    /// Technicians who may only watch the desktop (e.g. a senior joining a junior's session, a
    /// trainee): whoever this names gets the desktop view-only and no clipboard to the device,
    /// whatever `features` allows; their other features are unchanged. It only restricts: it
    /// lets nobody connect who `users` and `groups` do not already let in.
    #[serde(default, skip_serializing_if = "Technicians::is_empty")]
    pub view_only: Technicians,
}

impl SessionTechnicians {
    /// Whether neither users nor groups may connect by name (anyone RBAC allows may).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty()
    }

    /// Whether nothing at all is set.
    pub fn is_unset(&self) -> bool {
        self.is_empty() && self.view_only.is_empty()
    }

    /// Whether `user` (with `groups`) may connect: listed, or nobody is.
    pub fn admits(&self, user: &str, groups: &[String]) -> bool {
        self.is_empty()
            || self.users.iter().any(|u| u == user)
            || self.groups.iter().any(|g| groups.contains(g))
    }

    /// Whether `user` (with `groups`) may only watch the desktop.
    pub fn watches_only(&self, user: &str, groups: &[String]) -> bool {
        self.view_only.names(user, groups)
    }
}

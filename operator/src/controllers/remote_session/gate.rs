//! The policy gate a session passes once, when its window opens: the business hours and the
//! concurrency limits of every SessionPolicy that applies to it — rules the API server cannot
//! check at admission because they depend on the time and on other sessions. Pure: it takes
//! the policies, the namespace's other sessions and `now`.
//!
//! A session that passed holds its place (`Admitted` is `True`) until it ends, so a session is
//! never cut off by a rule later: the gate decides only whether it may start. Sessions held
//! for a limit are let in in the order they were created: each waits for every session ahead
//! of it that could start now, even one not reconciled yet, so two sessions racing for the
//! last place never both get it; one waiting for a busy Device does not hold up the others.

use jiff::Timestamp;
use tether_crds::SessionPolicySpec;
use tether_crds::business_hours::{Enforcement, Openness};
use tether_crds::conditions;
use tether_crds::remote_session::{RemoteSession, SessionPhase, condition_types as ct};

/// Reasons the gate writes on the `Admitted` condition (and the session's status when held).
pub mod reasons {
    /// Outside every business-hours window of a policy.
    pub const OUTSIDE_BUSINESS_HOURS: &str = "OutsideBusinessHours";
    /// The namespace runs as many sessions as a policy allows.
    pub const NAMESPACE_LIMIT: &str = "NamespaceSessionLimit";
    /// The Device runs as many sessions as a policy allows.
    pub const DEVICE_LIMIT: &str = "DeviceSessionLimit";
    /// A policy cannot be evaluated (e.g. an unknown time zone): nothing starts until it is
    /// fixed.
    pub const INVALID_POLICY: &str = "InvalidPolicy";
    /// The operator has not read the SessionPolicies yet.
    pub const POLICIES_NOT_LOADED: &str = "PoliciesNotLoaded";
    /// Every rule lets the session start.
    pub const ADMITTED: &str = "PolicyAllows";
}

/// One SessionPolicy that applies to a session.
#[derive(Clone, Copy, Debug)]
pub struct Applicable<'a> {
    /// `namespace/name`, as messages name it.
    pub name: &'a str,
    /// Its rules.
    pub spec: &'a SessionPolicySpec,
}

/// What the gate says about a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It may start.
    Admit,
    /// It waits; `until` is when to look again without being woken (the next business-hours
    /// opening), if known.
    Hold {
        /// The `Admitted` condition's reason.
        reason: &'static str,
        /// Which policy and rule, and until when.
        message: String,
        /// When the rule may let it in by itself.
        until: Option<Timestamp>,
    },
    /// It is denied.
    Refuse {
        /// The reason.
        reason: &'static str,
        /// Which policy and rule.
        message: String,
    },
}

/// Whether `session` already passed the gate (or predates it: it holds credentials).
pub fn admitted(session: &RemoteSession) -> bool {
    let Some(status) = session.status.as_ref() else {
        return false;
    };
    conditions::is_true(&status.conditions, ct::ADMITTED) || status.access.is_some()
}

fn terminal(session: &RemoteSession) -> bool {
    session
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(SessionPhase::is_terminal)
}

/// Whether `session` ended or is going away: it holds no place any more.
pub fn ended(session: &RemoteSession) -> bool {
    terminal(session) || session.metadata.deletion_timestamp.is_some()
}

/// The reason `session` is held for, if it is.
pub fn held_for(session: &RemoteSession) -> Option<&str> {
    let status = session.status.as_ref()?;
    conditions::find(&status.conditions, ct::ADMITTED)
        .filter(|c| c.status == "False")
        .map(|c| c.reason.as_str())
}

/// Whether `session` is waiting at the gate: alive, not admitted and held (or not judged yet).
pub fn waiting(session: &RemoteSession) -> bool {
    !ended(session) && !admitted(session)
}

/// Creation order: who was first in line.
fn order(session: &RemoteSession) -> (Option<Timestamp>, &str) {
    (
        session.metadata.creation_timestamp.as_ref().map(|t| t.0),
        session.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// Whether `session`'s own window has opened by `now`.
fn window_open(session: &RemoteSession, now: Timestamp) -> bool {
    let start = session
        .spec
        .start_time
        .as_ref()
        .or(session.metadata.creation_timestamp.as_ref())
        .map(|t| t.0);
    start.is_some_and(|s| s <= now)
}

/// Counts toward a limit: admitted and not ended, or waiting ahead of `session` (created
/// earlier, its window open) and able to start now. One waiting for a Device that is full of
/// running sessions cannot start before one of them ends (which wakes everyone waiting), so
/// it keeps no place; any other may be admitted a moment later, before this cache knows, so
/// it keeps its place and two sessions never both take the last one.
fn counts(
    peer: &RemoteSession,
    session: &RemoteSession,
    now: Timestamp,
    device_full: &dyn Fn(&str) -> bool,
) -> bool {
    if peer.metadata.name == session.metadata.name || ended(peer) {
        return false;
    }
    admitted(peer)
        || (window_open(peer, now)
            && order(peer) < order(session)
            && (peer.spec.device == session.spec.device || !device_full(&peer.spec.device)))
}

fn name(session: &RemoteSession) -> &str {
    session.metadata.name.as_deref().unwrap_or_default()
}

/// Decides whether `session`, whose window is open, may start now. `policies` are those that
/// apply to it (`None`: not loaded yet), `peers` the other sessions of its namespace.
pub fn gate<'a>(
    session: &RemoteSession,
    policies: Option<&[Applicable<'_>]>,
    peers: impl Iterator<Item = &'a RemoteSession> + Clone,
    now: Timestamp,
) -> Verdict {
    let Some(policies) = policies else {
        return Verdict::Hold {
            reason: reasons::POLICIES_NOT_LOADED,
            message: "waiting for the operator to read the SessionPolicies".into(),
            until: None,
        };
    };
    let decide = |enforcement: Enforcement, reason: &'static str, message: String, until| {
        match enforcement {
            Enforcement::Hold => Verdict::Hold {
                reason,
                message,
                until,
            },
            Enforcement::Refuse => Verdict::Refuse { reason, message },
        }
    };
    for policy in policies {
        let Some(hours) = &policy.spec.business_hours else {
            continue;
        };
        match hours.check(now) {
            Ok(Openness::Open { .. }) => {}
            Ok(Openness::Closed { opens }) => {
                let next = opens
                    .map(|t| format!("; the next window opens at {t}"))
                    .unwrap_or_else(|| "; no window opens in the coming week".into());
                return decide(
                    hours.outside,
                    reasons::OUTSIDE_BUSINESS_HOURS,
                    format!(
                        "SessionPolicy {}, rule businessHours: outside business hours ({}){next}",
                        policy.name,
                        tether_proto::text::escape_short(&hours.describe(), 512)
                    ),
                    opens,
                );
            }
            Err(err) => {
                return Verdict::Hold {
                    reason: reasons::INVALID_POLICY,
                    message: format!(
                        "SessionPolicy {}, rule businessHours: {}; no session starts until it is fixed",
                        policy.name,
                        tether_proto::text::escape_short(&err.to_string(), 256)
                    ),
                    until: None,
                };
            }
        }
    }
    // The lowest limit per Device, and how many sessions run on each: a Device at its limit
    // admits nobody until one of them ends.
    let per_device = policies
        .iter()
        .filter_map(|p| p.spec.concurrency.as_ref()?.per_device)
        .min();
    let mut running_on: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    if per_device.is_some() {
        for p in peers
            .clone()
            .filter(|p| admitted(p) && !ended(p) && p.metadata.name != session.metadata.name)
        {
            *running_on.entry(p.spec.device.as_str()).or_default() += 1;
        }
    }
    let device_full = |device: &str| {
        per_device.is_some_and(|max| running_on.get(device).copied().unwrap_or(0) >= max as usize)
    };
    for policy in policies {
        let Some(limits) = &policy.spec.concurrency else {
            continue;
        };
        if let Some(max) = limits.per_namespace {
            let running = peers
                .clone()
                .filter(|p| counts(p, session, now, &device_full))
                .count();
            if running >= max as usize {
                return decide(
                    limits.when_full,
                    reasons::NAMESPACE_LIMIT,
                    format!(
                        "SessionPolicy {}, rule concurrency.perNamespace: {running} sessions of the namespace run or wait ahead of this one (at most {max} at once)",
                        policy.name
                    ),
                    None,
                );
            }
        }
        if let Some(max) = limits.per_device {
            // Those ahead are named: the ones running, and any about to be.
            let ahead: Vec<&str> = peers
                .clone()
                .filter(|p| p.spec.device == session.spec.device)
                .filter(|p| counts(p, session, now, &device_full))
                .map(name)
                .collect();
            let running = ahead.len();
            if running >= max as usize {
                let running_now = format!(" ({})", ahead[..running.min(5)].join(", "));
                return decide(
                    limits.when_full,
                    reasons::DEVICE_LIMIT,
                    format!(
                        "SessionPolicy {}, rule concurrency.perDevice: Device {} has {running} sessions running or waiting ahead of this one, at most {max} at once{running_now}",
                        policy.name, session.spec.device
                    ),
                    None,
                );
            }
        }
    }
    Verdict::Admit
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;

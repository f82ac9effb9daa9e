//! The decisions for one AssistanceRequest, as a pure function of the request, its current
//! session and the time: its status, whether to create its session, its Events, its
//! notification and when to look again.
//!
//! A request lives in rounds. Each round is requested (`Pending`), decided by an approver
//! (`Approved`/`Denied`) or times out (`ApprovalExpired`), and an approved round follows its
//! RemoteSession (`Scheduled` → `WaitingForConnection` → `InProgress` → an ending). A reusable
//! request then goes `Inactive` and can be requested again, which starts the next round.

use std::time::Duration;
use tether_proto::text::escape;

use jiff::{SignedDuration, Timestamp};
use tether_crds::assistance_request::{
    Approval, ApprovalRule, AssistanceRequest, AssistanceRequestStatus, Decision, RequestPhase,
    RoundRecord, annotations, condition_types as ct,
};
use tether_crds::conditions::{ConditionStatus, NewCondition, set_condition};
use tether_crds::remote_session::{RemoteSession, RemoteSessionSpec};

pub use super::approvals::{
    approval_rule, approvers, current_approval, current_approvals, stale_approval, stale_approvals,
};
pub use super::session::session_spec;
use super::session::{finish, follow};
use crate::controllers::remote_session::plan::second_time;
pub use crate::controllers::toolkit::PlannedEvent;

/// Settings of the request controller.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long a request waits for a decision.
    pub approval_timeout: Duration,
    /// The longest session the cluster allows (`--max-session-duration`): a request for a
    /// longer one cannot be approved.
    pub max_session_duration: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            approval_timeout: Duration::from_secs(3600),
            max_session_duration: Duration::from_secs(8 * 3600),
        }
    }
}

/// Condition type: whether the request can be approved now (its Device exists and its
/// session fits the cluster's limits). While it is `False` the request stays `Pending`, and
/// the admission policy refuses an approval (a denial is always allowed).
pub const APPROVABLE: &str = "Approvable";

/// What the reconciler saw.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    /// The request.
    pub request: &'a AssistanceRequest,
    /// The session of the current round, if it exists.
    pub session: Option<&'a RemoteSession>,
    /// Whether the request's Device exists in its namespace.
    pub device_exists: bool,
    /// The current time.
    pub now: Timestamp,
    /// What approving takes in the request's namespace, from its SessionPolicies; `None`
    /// until the operator has read them (nothing can be approved until then).
    pub approval_rule: Option<&'a Result<ApprovalRule, String>>,
}

/// Whether to create the round's session.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionAction {
    /// Nothing to create.
    Keep,
    /// Create the session `name` with `spec`, owned by the request.
    Create {
        /// Session name.
        name: String,
        /// Session spec.
        spec: Box<RemoteSessionSpec>,
    },
}

/// A notification of the request's current state, for email and webhook.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    /// Identifies the change; delivered once per key.
    pub key: String,
    /// Email recipients (requester and assignees).
    pub recipients: Vec<String>,
    /// Email subject.
    pub subject: String,
    /// Email body (plain text).
    pub body: String,
    /// Webhook JSON payload.
    pub payload: serde_json::Value,
}

/// The reconciler's decisions.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The status the request should have.
    pub status: AssistanceRequestStatus,
    /// Events to publish.
    pub events: Vec<PlannedEvent>,
    /// The session to create.
    pub session: SessionAction,
    /// The notification due, if the request changed since the last one.
    pub notice: Option<Notice>,
    /// When to look again (the approval deadline), or never.
    pub requeue_after: Option<Duration>,
}

/// Name of the session of `round` of `request`.
pub fn session_name(request: &str, round: i64) -> String {
    format!("{request}-{round}")
}

/// Whether a session can carry `name`. The schema keeps request names short enough for any
/// realistic round; a request stored before that rule fails with the reason instead of
/// retrying a creation the API server refuses.
pub(super) fn fits(name: &str) -> Result<(), String> {
    if name.len() > tether_crds::limits::SESSION_NAME_MAX {
        return Err(format!(
            "the session name {name} would be longer than {} characters; create a request with a shorter name",
            tether_crds::limits::SESSION_NAME_MAX
        ));
    }
    Ok(())
}

pub(super) fn event(warning: bool, reason: &'static str, note: String) -> PlannedEvent {
    PlannedEvent {
        warning,
        reason,
        note,
    }
}

/// Decides the request's status, session, events, notification and wake-up.
pub fn plan(observed: Observed<'_>, settings: &Settings) -> Plan {
    let request = observed.request;
    let now = observed.now;
    let name = request.metadata.name.clone().unwrap_or_default();
    let annotations = request.metadata.annotations.clone().unwrap_or_default();
    let timeout = SignedDuration::try_from(settings.approval_timeout).unwrap_or_default();
    let mut status = request.status.clone().unwrap_or_default();
    let mut events = Vec::new();
    if let (Some(seen), Some(now_gen)) = (status.observed_generation, request.metadata.generation)
        && seen != now_gen
    {
        events.push(event(
            false,
            "Updated",
            format!("The request was edited (generation {now_gen})"),
        ));
    }
    status.observed_generation = request.metadata.generation;
    let mut session_action = SessionAction::Keep;
    let mut requeue = None;

    // A new request starts its first round.
    if status.phase.is_none() {
        let requested = request
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(second_time(now), |t| t.clone());
        start_round(&mut status, 1, requested.0, timeout);
        events.push(event(
            false,
            "Requested",
            format!(
                "{} asked for help on {}: {}",
                escape(&request.spec.requester.name),
                request.spec.device,
                escape(&request.spec.reason)
            ),
        ));
    }
    let phase = status.phase.unwrap_or(RequestPhase::Pending);
    let round = status.round.unwrap_or(1);

    // Requested again?
    if let Some(again) = annotations.get(annotations::REQUEST_AGAIN)
        && status.request_again_seen.as_deref() != Some(again.as_str())
    {
        status.request_again_seen = Some(again.clone());
        if request.spec.reusable && !phase.is_active_round() {
            if phase != RequestPhase::Inactive {
                // The round ended without running (denied, expired, failed): keep its record.
                status.history.push(RoundRecord {
                    round,
                    outcome: phase,
                    approval: current_approval(&status),
                    approvals: current_approvals(&status),
                    session: status.session.clone(),
                    ended_at: Some(second_time(now)),
                });
            }
            start_round(&mut status, round + 1, now, timeout);
            status
                .conditions
                .retain(|c| c.type_ != ct::APPROVED && c.type_ != ct::DENIED);
            events.push(event(
                false,
                "RequestedAgain",
                format!("Round {} requested", round + 1),
            ));
        } else {
            events.push(event(
                true,
                "RequestAgainIgnored",
                if request.spec.reusable {
                    format!("The request is {phase}; it can be requested again once its round ends")
                } else {
                    "Only reusable requests can be requested again".to_owned()
                },
            ));
        }
    }

    let phase = status.phase.unwrap_or(RequestPhase::Pending);
    let round = status.round.unwrap_or(1);
    let approval = current_approval(&status);
    // A round that waits for a decision says whether it can be approved; one that cannot is
    // held, even if an approval got in (a Device deleted after the check, no admission).
    let rule = observed.approval_rule.and_then(|r| r.as_ref().ok());
    let required = rule.map_or(1, |r| r.required.max(1)) as usize;
    let blocked = if phase == RequestPhase::Pending {
        // The rule is part of what approvers are checked against: it is written while the
        // round waits, and only when one approval by anyone allowed is not enough.
        status.approval_rule = rule
            .filter(|r| r.required > 1 || !r.groups.is_empty())
            .cloned();
        let blocked = approvable(request, observed.device_exists, settings)
            .and_then(|()| match observed.approval_rule {
                None => Err((
                    "PoliciesNotLoaded",
                    "the operator has not read the namespace's SessionPolicies yet".to_owned(),
                )),
                Some(Err(why)) => Err(("InvalidPolicy", why.clone())),
                Some(Ok(_)) => Ok(()),
            })
            .err();
        let (value, reason, message) = match &blocked {
            Some((reason, message)) => (false, *reason, message.clone()),
            None => (
                true,
                "Approvable",
                "the Device exists and the session fits the cluster's limits".to_owned(),
            ),
        };
        set(
            &mut status,
            APPROVABLE,
            value,
            reason,
            message,
            request,
            now,
        );
        blocked
    } else {
        None
    };
    let approvers = approvers(request, &status);
    let next = match phase {
        RequestPhase::Pending => match approval.as_ref().map(|a| a.decision) {
            Some(Decision::Denied) => Some(RequestPhase::Denied),
            _ if approvers.len() >= required && blocked.is_none() => Some(RequestPhase::Approved),
            _ => {
                let deadline = status.approval_deadline.as_ref().map_or(now, |t| t.0);
                if now >= deadline {
                    Some(RequestPhase::ApprovalExpired)
                } else {
                    requeue = Some(deadline);
                    if let Some((_, why)) = &blocked {
                        let held = format!("held: it cannot be approved, because {why}");
                        if status.message.as_deref() != Some(held.as_str()) {
                            events.push(event(true, "Held", capitalise(&held)));
                        }
                        status.message = Some(held);
                    } else if !approvers.is_empty() {
                        let so_far = format!(
                            "approved by {} of {required} required approvers ({}); waiting for {} more",
                            approvers.len(),
                            escape(&approvers.join(", ")),
                            required - approvers.len()
                        );
                        if status.message.as_deref() != Some(so_far.as_str()) {
                            events.push(event(false, "ApprovalAdded", capitalise(&so_far)));
                        }
                        status.message = Some(so_far);
                    } else if status
                        .message
                        .as_deref()
                        .is_some_and(|m| m.starts_with("held: "))
                    {
                        status.message = Some("waiting for an approver".into());
                    }
                    None
                }
            }
        },
        _ => None,
    };
    if let Some(next) = next {
        status.phase = Some(next);
        match (next, &approval) {
            (RequestPhase::Approved, _) => {
                let msg = match &approval {
                    Some(a) if required == 1 && a.decision == Decision::Approved => {
                        decided_message("approved", a)
                    }
                    _ => format!("approved by {}", escape(&approvers.join(", "))),
                };
                set(
                    &mut status,
                    ct::APPROVED,
                    true,
                    "Approved",
                    msg.clone(),
                    request,
                    now,
                );
                status.message = Some(msg.clone());
                events.push(event(false, "Approved", capitalise(&msg)));
            }
            (RequestPhase::Denied, Some(a)) => {
                let msg = decided_message("denied", a);
                set(
                    &mut status,
                    ct::DENIED,
                    true,
                    "Denied",
                    msg.clone(),
                    request,
                    now,
                );
                status.message = Some(msg.clone());
                events.push(event(true, "Denied", capitalise(&msg)));
            }
            (RequestPhase::ApprovalExpired, _) => {
                let msg = format!(
                    "nobody decided within {}",
                    tether_crds::duration::format_go(settings.approval_timeout)
                );
                status.message = Some(msg.clone());
                events.push(event(true, "ApprovalExpired", capitalise(&msg)));
            }
            _ => {}
        }
    }

    // An approved round runs its session.
    let phase = status.phase.unwrap_or(RequestPhase::Pending);
    if matches!(
        phase,
        RequestPhase::Approved
            | RequestPhase::Scheduled
            | RequestPhase::WaitingForConnection
            | RequestPhase::InProgress
    ) {
        let expected = session_name(&name, round);
        match observed.session {
            Some(session) => follow(&mut status, &mut events, request, session, now),
            None if status.session.as_deref() == Some(expected.as_str()) => {
                let msg = format!("session {expected} was deleted before it ended");
                finish(
                    &mut status,
                    &mut events,
                    request,
                    RequestPhase::Failed,
                    msg,
                    now,
                );
            }
            None => match fits(&expected).and_then(|()| session_spec(request, now)) {
                Ok(spec) => {
                    status.session = Some(expected.clone());
                    session_action = SessionAction::Create {
                        name: expected.clone(),
                        spec: Box::new(spec),
                    };
                    events.push(event(
                        false,
                        "SessionCreated",
                        format!("Created RemoteSession {expected}"),
                    ));
                }
                Err(msg) => finish(
                    &mut status,
                    &mut events,
                    request,
                    RequestPhase::Failed,
                    msg,
                    now,
                ),
            },
        }
    }

    // Events describe changes; a notification goes out for each new state.
    let notice = notice(request, &status);
    Plan {
        requeue_after: requeue
            .map(|at| Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)),
        status,
        events,
        session: session_action,
        notice,
    }
}

/// Whether the request can be approved: `Err((reason, why))` names what stands in the way.
pub fn approvable(
    request: &AssistanceRequest,
    device_exists: bool,
    settings: &Settings,
) -> Result<(), (&'static str, String)> {
    let namespace = request.metadata.namespace.as_deref().unwrap_or_default();
    if !device_exists {
        return Err((
            "DeviceNotFound",
            format!(
                "Device {} does not exist in namespace {namespace}",
                request.spec.device
            ),
        ));
    }
    if let Some(duration) = &request.spec.session_template.duration
        && duration.as_std() > settings.max_session_duration
    {
        return Err((
            "DurationExceedsMaximum",
            format!(
                "sessionTemplate.duration {duration} exceeds the cluster maximum of {}",
                tether_crds::duration::format_go(settings.max_session_duration)
            ),
        ));
    }
    Ok(())
}

fn start_round(
    status: &mut AssistanceRequestStatus,
    round: i64,
    at: Timestamp,
    timeout: SignedDuration,
) {
    status.round = Some(round);
    status.phase = Some(RequestPhase::Pending);
    status.requested_at = Some(second_time(at));
    status.approval_deadline = Some(second_time(at + timeout));
    status.session = None;
    status.message = Some("waiting for an approver".into());
}

pub(super) fn decided_message(verb: &str, a: &Approval) -> String {
    match &a.reason {
        Some(reason) if !reason.is_empty() => format!("{verb} by {}: {reason}", a.approver),
        _ => format!("{verb} by {}", a.approver),
    }
}

pub(super) fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

pub(super) fn set(
    status: &mut AssistanceRequestStatus,
    type_: &str,
    value: bool,
    reason: &str,
    message: String,
    request: &AssistanceRequest,
    now: Timestamp,
) {
    set_condition(
        &mut status.conditions,
        NewCondition {
            type_,
            status: ConditionStatus::from(value),
            reason,
            message,
        },
        request.metadata.generation,
        second_time(now),
    );
}

/// The notification for the request's current state, unless it was already delivered.
fn notice(request: &AssistanceRequest, status: &AssistanceRequestStatus) -> Option<Notice> {
    let phase = status.phase?;
    let key = format!(
        "{}/{}/{}",
        status.round.unwrap_or(1),
        phase,
        request.metadata.generation.unwrap_or(0)
    );
    if status.notified.as_deref() == Some(key.as_str()) {
        return None;
    }
    let spec = &request.spec;
    let namespace = request.metadata.namespace.clone().unwrap_or_default();
    let name = request.metadata.name.clone().unwrap_or_default();
    let mut recipients: Vec<String> = spec.requester.email.iter().cloned().collect();
    if let Some(assignee) = &spec.assignee {
        recipients.extend(assignee.emails.iter().cloned());
    }
    recipients.dedup();
    let approval = current_approval(status);
    let subject = format!("[Tether] Assistance request {name}: {phase}");
    let mut body = format!(
        "Assistance request {namespace}/{name} is now {phase}.\n\n\
         Requester: {}{}\nDevice:    {}\nReason:    {}\n",
        escape(&spec.requester.name),
        spec.requester
            .email
            .as_ref()
            .map(|e| format!(" <{}>", escape(e)))
            .unwrap_or_default(),
        spec.device,
        escape(&spec.reason),
    );
    if let Some(message) = &status.message {
        body.push_str(&format!("Status:    {message}\n"));
    }
    if let Some(a) = &approval {
        body.push_str(&format!(
            "Decision:  {:?} by {}{}\n",
            a.decision,
            a.approver,
            a.reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ));
    }
    if let Some(session) = &status.session {
        body.push_str(&format!("Session:   {session}\n"));
    }
    body.push_str(&format!(
        "\nkubectl tether describe {name} -n {namespace}\n"
    ));
    let payload = serde_json::json!({
        "kind": "AssistanceRequest",
        "namespace": namespace,
        "name": name,
        "uid": request.metadata.uid,
        "round": status.round,
        "phase": phase,
        "message": status.message,
        "device": spec.device,
        "requester": spec.requester,
        "reason": spec.reason,
        "approval": approval,
        "session": status.session,
    });
    Some(Notice {
        key,
        recipients,
        subject,
        body,
        payload,
    })
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;

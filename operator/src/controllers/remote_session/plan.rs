//! The decisions for one RemoteSession, as a pure function of what was observed and the
//! current time: the status it should have, what to do with its credentials and finalizer,
//! the Events to publish and when to look again. No I/O happens here, so every transition is
//! tested with virtual time (see `plan_tests.rs`). The decision for a live session (device,
//! consent, recording, credentials, countdown) is in [`super::live`].

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tether_crds::conditions::{self, ConditionStatus, NewCondition, set_condition};
use tether_crds::device::Device;
use tether_crds::remote_session::{
    RemoteSession, RemoteSessionStatus, SessionPhase, annotations, condition_types as ct,
};

use super::gate::Verdict;
use super::live::decide;
pub use crate::controllers::toolkit::PlannedEvent;

/// Finalizer that guarantees credentials are revoked before a session disappears.
pub const FINALIZER: &str = "tether.dev/revoke-credentials";

/// Condition the relay writes about the session's recording. Never written (nor removed) by
/// the operator.
pub const RECORDING_CONDITION: &str = tether_crds::contract::condition_types::RECORDING;

pub use tether_crds::contract::reasons::{RECORDING_FAILED, RECORDING_NOT_STARTED};

/// Operator-wide settings that shape every session's plan.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The longest session the cluster allows.
    pub max_duration: Duration,
    /// How long before the end the session is flagged as expiring soon.
    pub expiry_warning: Duration,
    /// Re-issue a token when less than this is left of it.
    pub token_refresh_before: Duration,
    /// Relay address handed to technicians, when known.
    pub relay_address: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_duration: Duration::from_secs(8 * 3600),
            expiry_warning: Duration::from_secs(120),
            token_refresh_before: Duration::from_secs(5 * 60),
            relay_address: None,
        }
    }
}

/// The session's access Secret as observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessState {
    /// When its token expires.
    pub expires_at: Timestamp,
    /// The session's `metadata.generation` the token was minted from.
    pub generation: Option<i64>,
}

/// What the reconciler saw.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    /// The session as read from the API server.
    pub session: &'a RemoteSession,
    /// Its Device, if it exists.
    pub device: Option<&'a Device>,
    /// Its access Secret, if it exists.
    pub access: Option<AccessState>,
    /// The current time.
    pub now: Timestamp,
    /// Why the recording store cannot record now, when the session must be recorded and
    /// the store was checked.
    pub store_unavailable: Option<&'a str>,
    /// What the SessionPolicies' business hours and concurrency limits say about starting
    /// the session now ([`super::gate`]); used only until the session is admitted.
    pub policy_gate: Verdict,
    /// The shortest consent timeout of the SessionPolicies that apply, if any sets one.
    pub consent_timeout: Option<Duration>,
}

/// A phase change, with the time it was due, for lateness metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The phase entered.
    pub to: SessionPhase,
    /// When the transition was due, for transitions driven by the clock.
    pub due: Option<Timestamp>,
}

/// Everything a new session token grants, decided by the plan: the apply stage mints exactly
/// this, and the relay's deadline is `ends_at` as the plan computed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// When the token starts to be valid (the window's start).
    pub not_before: Timestamp,
    /// When the session ends: the relay closes it then, whatever happens.
    pub ends_at: Timestamp,
    /// When the token stops being accepted for new connections
    /// ([`tether_proto::token::expiry`]: a while after minting, never after `ends_at`).
    pub expires_at: Timestamp,
    /// Whether the user on the device must consent before anyone joins (an interactive
    /// session, or a dynamic one whose mode is not decided yet).
    pub consent: bool,
    /// How long the user has to answer, from the SessionPolicies (the relay's own timeout
    /// applies when shorter or when this is `None`).
    pub consent_timeout: Option<Duration>,
}

/// What to do with the access Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessAction {
    /// Leave it as it is.
    Keep,
    /// Issue a new token (first issue or refresh) with this grant.
    Mint(Grant),
    /// Delete it.
    Delete,
}

/// What to do with the finalizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinalizerAction {
    /// Nothing.
    Keep,
    /// Add it (before any credential exists).
    Add,
    /// Remove it (after credentials are revoked).
    Remove,
}

/// The reconciler's decisions.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The status the session should have.
    pub status: RemoteSessionStatus,
    /// Events to publish.
    pub events: Vec<PlannedEvent>,
    /// The phase change made, if any.
    pub transition: Option<Transition>,
    /// When to reconcile again: the next time-window boundary, warning or token refresh.
    pub requeue_after: Option<Duration>,
    /// The access Secret.
    pub access: AccessAction,
    /// Whether to publish a revocation of the session's tokens.
    pub revoke: bool,
    /// The finalizer.
    pub finalizer: FinalizerAction,
}

/// The time window of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// When it opens: `startTime`, or the creation time of an instant session.
    pub start: Timestamp,
    /// When it closes: `start` plus the duration.
    pub end: Timestamp,
}

/// Why a session's window cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// The duration is longer than the cluster allows.
    #[error("duration {duration} exceeds the cluster maximum of {maximum}")]
    TooLong {
        /// The session's duration, as written.
        duration: String,
        /// The cluster maximum.
        maximum: String,
    },
    /// The object has no creation time (it was never stored by the API server).
    #[error("the session has no creationTimestamp")]
    NotPersisted,
    /// The window does not fit in the representable time range.
    #[error("the session window is out of range")]
    OutOfRange,
}

impl WindowError {
    /// CamelCase reason for status and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLong { .. } => "DurationExceedsMaximum",
            Self::NotPersisted | Self::OutOfRange => "InvalidWindow",
        }
    }
}

/// Computes a session's window from its spec, anchored as documented on the API: the
/// duration counts from `startTime`, or from creation for an instant session.
pub fn window(session: &RemoteSession, settings: &Settings) -> Result<Window, WindowError> {
    let duration = session.spec.duration.as_std();
    if duration > settings.max_duration {
        return Err(WindowError::TooLong {
            duration: session.spec.duration.to_string(),
            maximum: tether_crds::duration::format_go(settings.max_duration),
        });
    }
    let start = match &session.spec.start_time {
        Some(t) => t.0,
        None => {
            session
                .metadata
                .creation_timestamp
                .as_ref()
                .ok_or(WindowError::NotPersisted)?
                .0
        }
    };
    let span = SignedDuration::try_from(duration).map_err(|_| WindowError::OutOfRange)?;
    let end = start
        .checked_add(span)
        .map_err(|_| WindowError::OutOfRange)?;
    Ok(Window { start, end })
}

/// How a phase was reached, for status and Events.
pub(super) struct Outcome {
    phase: SessionPhase,
    reason: String,
    message: String,
    due: Option<Timestamp>,
}

impl Outcome {
    pub(super) fn new(
        phase: SessionPhase,
        reason: &str,
        message: String,
        due: Option<Timestamp>,
    ) -> Self {
        Self {
            phase,
            reason: reason.to_owned(),
            message,
            due,
        }
    }
}

/// Decides the session's status, credentials, finalizer, events and next wake-up.
pub fn plan(observed: Observed<'_>, settings: &Settings) -> Plan {
    let session = observed.session;
    let now = observed.now;
    let current = session.status.clone().unwrap_or_default();
    let generation = session.metadata.generation;
    let has_finalizer = session
        .metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == FINALIZER);
    let deleting = session.metadata.deletion_timestamp.is_some();

    let mut status = current.clone();
    let mut events = Vec::new();
    let mut requeue: Option<Timestamp> = None;
    let mut access = AccessAction::Keep;

    let terminal_before = current.phase.is_some_and(SessionPhase::is_terminal);
    let outcome: Option<Outcome> = if terminal_before {
        None
    } else if deleting {
        // A deleted session ends now, whatever it was doing.
        status.observed_generation = generation;
        Some(Outcome::new(
            SessionPhase::Terminated,
            "Deleted",
            "the RemoteSession was deleted".into(),
            None,
        ))
    } else {
        status.observed_generation = generation;
        Some(decide(
            &observed,
            settings,
            &mut status,
            &mut events,
            &mut requeue,
            &mut access,
        ))
    };

    let mut transition = None;
    if let Some(outcome) = outcome {
        if current.phase != Some(outcome.phase) {
            transition = Some(Transition {
                to: outcome.phase,
                due: outcome.due,
            });
            events.push(phase_event(&outcome, &status));
            if outcome.phase == SessionPhase::Active && status.started_at.is_none() {
                status.started_at = Some(second_time(now));
            }
            if outcome.phase.is_terminal() {
                status.ended_at = Some(match (outcome.phase, outcome.due) {
                    (SessionPhase::Expired, Some(due)) => Time(due),
                    _ => second_time(now),
                });
            }
        }
        status.phase = Some(outcome.phase);
        status.reason = Some(outcome.reason.clone());
        status.message = Some(outcome.message.clone());
        set_condition(
            &mut status.conditions,
            NewCondition {
                type_: ct::READY,
                status: ConditionStatus::from(outcome.phase == SessionPhase::Active),
                reason: &outcome.reason,
                message: outcome.message,
            },
            generation,
            second_time(now),
        );
    }

    // Ended sessions (whether just now or earlier) hold no credentials and no finalizer.
    let ended = status.phase.is_some_and(SessionPhase::is_terminal);
    let mut revoke = false;
    let finalizer;
    if ended || deleting {
        requeue = None;
        access = if observed.access.is_some() {
            AccessAction::Delete
        } else {
            AccessAction::Keep
        };
        if let Some(a) = status.access.as_mut()
            && a.revoked_at.is_none()
        {
            a.revoked_at = Some(second_time(now));
            revoke = true;
            events.push(PlannedEvent {
                warning: false,
                reason: "AccessRevoked",
                note: format!(
                    "Revoked the session's credentials (Secret {})",
                    a.secret_name
                ),
            });
        }
        if ended
            && status
                .conditions
                .iter()
                .any(|c| c.type_ == ct::EXPIRING_SOON)
        {
            status.conditions.retain(|c| c.type_ != ct::EXPIRING_SOON);
        }
        finalizer = if has_finalizer {
            FinalizerAction::Remove
        } else {
            FinalizerAction::Keep
        };
    } else {
        finalizer = if has_finalizer {
            FinalizerAction::Keep
        } else {
            FinalizerAction::Add
        };
    }
    if terminal_before
        && access == AccessAction::Keep
        && !revoke
        && finalizer == FinalizerAction::Keep
    {
        // Nothing at all to do for a finished session.
        status = current.clone();
    }

    Plan {
        status,
        events,
        transition,
        requeue_after: requeue.map(|at| until(now, at)),
        access,
        revoke,
        finalizer,
    }
}

/// The session's recording is still said to be `Recording` (by the relay, in
/// `status.recording`) although the session ended because the recording failed: the relay
/// could not finish the recording's manifest in a store that failed. Returns the sentence to
/// record as `status.recording.message` when `status.recording.state` must become `Failed`.
pub fn stale_recording(status: &RemoteSessionStatus) -> Option<String> {
    let recording = status.recording.as_ref()?;
    if recording.state != tether_crds::contract::reasons::RECORDING
        || !status.phase.is_some_and(SessionPhase::is_terminal)
    {
        return None;
    }
    let relay_says = conditions::find(&status.conditions, RECORDING_CONDITION)
        .filter(|c| c.status == "False" && c.reason == RECORDING_FAILED);
    let failed_for_it = status.reason.as_deref() == Some(RECORDING_FAILED);
    if relay_says.is_none() && !failed_for_it {
        return None;
    }
    Some(
        relay_says
            .map(|c| c.message.clone())
            .filter(|m| !m.is_empty())
            .or_else(|| status.message.clone().filter(|m| !m.is_empty()))
            .unwrap_or_else(|| "the recording failed before it was finished".to_owned()),
    )
}

/// Who asked to end the session, and why: the `terminated-by` annotation, when it names
/// someone. The admission policy checks exactly that value (the caller, holding the
/// `terminate` verb) whenever the annotation appears or changes, and refuses an empty one; an
/// empty value that got in some other way names nobody and ends nothing.
pub fn termination(session: &RemoteSession) -> Option<(&str, Option<&str>)> {
    let annotations = session.metadata.annotations.as_ref()?;
    let by = annotations
        .get(annotations::TERMINATED_BY)
        .filter(|by| !by.is_empty())?;
    let reason = annotations
        .get(annotations::TERMINATION_REASON)
        .map(String::as_str)
        .filter(|r| !r.is_empty());
    Some((by, reason))
}

fn phase_event(outcome: &Outcome, status: &RemoteSessionStatus) -> PlannedEvent {
    let (warning, reason, note) = match outcome.phase {
        SessionPhase::Scheduled => (
            false,
            "Scheduled",
            format!(
                "Session scheduled from {} until {}",
                status
                    .scheduled_start
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_default(),
                status
                    .expires_at
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_default()
            ),
        ),
        SessionPhase::Pending => (
            false,
            "WindowOpened",
            format!(
                "Session window opened; it closes at {}",
                status
                    .expires_at
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_default()
            ),
        ),
        SessionPhase::Active => (false, "Active", "Session is active".to_owned()),
        SessionPhase::Completed => (
            false,
            "Completed",
            format!("Session completed: {}", outcome.message),
        ),
        SessionPhase::Expired => (
            false,
            "Expired",
            format!("Session expired: {}", outcome.message),
        ),
        SessionPhase::Terminated => (true, "Terminated", format!("Session {}", outcome.message)),
        SessionPhase::Denied => (
            true,
            "Denied",
            format!("Session denied: {}", outcome.message),
        ),
        SessionPhase::Failed => (
            true,
            "Failed",
            format!("Session failed: {}", outcome.message),
        ),
    };
    PlannedEvent {
        warning,
        reason,
        note,
    }
}

/// Kubernetes `Time` has second precision: truncate so values round-trip unchanged.
pub fn second_time(t: Timestamp) -> Time {
    Time(second_floor(t))
}

fn second_floor(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// Time from `now` until `at`, never negative.
fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;

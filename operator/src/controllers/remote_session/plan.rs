//! The decisions for one RemoteSession, as a pure function of what was observed and the
//! current time: the status it should have, what to do with its credentials and finalizer,
//! the Events to publish and when to look again. No I/O happens here, so every transition is
//! tested with virtual time (see `tests.rs`).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tether_crds::conditions::{self, ConditionStatus, NewCondition, set_condition};
use tether_crds::device::Device;
use tether_crds::remote_session::{
    AccessStatus, EffectiveMode, RecordingPolicy, RemoteSession, RemoteSessionStatus, SessionMode,
    SessionPhase, annotations, condition_types as ct,
};
use tether_proto::text::escape_short;

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
#[derive(Clone, Copy, Debug)]
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
}

/// How soon a session waiting for its recording store is looked at again.
const STORE_RECHECK: jiff::SignedDuration = jiff::SignedDuration::from_secs(10);

pub use crate::controllers::toolkit::PlannedEvent;

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
struct Outcome {
    phase: SessionPhase,
    reason: String,
    message: String,
    due: Option<Timestamp>,
}

impl Outcome {
    fn new(phase: SessionPhase, reason: &str, message: String, due: Option<Timestamp>) -> Self {
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

/// The phase decision for a live session, updating window, mode, warning and access fields.
fn decide(
    observed: &Observed<'_>,
    settings: &Settings,
    status: &mut RemoteSessionStatus,
    events: &mut Vec<PlannedEvent>,
    requeue: &mut Option<Timestamp>,
    access: &mut AccessAction,
) -> Outcome {
    let session = observed.session;
    let now = observed.now;
    let window = match window(session, settings) {
        Ok(w) => w,
        Err(err) => {
            return Outcome::new(SessionPhase::Failed, err.reason(), err.to_string(), None);
        }
    };
    status.scheduled_start = Some(Time(window.start));
    status.expires_at = Some(Time(window.end));
    if let Some(mode) = fixed_mode(session.spec.mode) {
        status.effective_mode = Some(mode);
    }

    if let Some((by, reason)) = termination(session) {
        let reason = reason
            .map(|r| format!(": {}", escape_short(r, 256)))
            .unwrap_or_default();
        return Outcome::new(
            SessionPhase::Terminated,
            "TerminatedByUser",
            format!("terminated by {}{reason}", escape_short(by, 128)),
            None,
        );
    }
    if now < window.start {
        *requeue = Some(window.start);
        return Outcome::new(
            SessionPhase::Scheduled,
            "Scheduled",
            format!("waiting for the window to open at {}", window.start),
            None,
        );
    }
    if now >= window.end {
        return Outcome::new(
            SessionPhase::Expired,
            "Expired",
            format!(
                "the session reached the end of its {} window at {}",
                session.spec.duration, window.end
            ),
            Some(window.end),
        );
    }

    // The window is open.
    let namespace = session.metadata.namespace.clone().unwrap_or_default();
    let Some(device) = observed.device else {
        return Outcome::new(
            SessionPhase::Failed,
            "DeviceNotFound",
            format!(
                "Device {} does not exist in namespace {namespace}",
                session.spec.device
            ),
            None,
        );
    };
    if device.spec.disabled {
        return Outcome::new(
            SessionPhase::Failed,
            "DeviceDisabled",
            format!("Device {} is disabled", session.spec.device),
            None,
        );
    }
    if status.effective_mode.is_none() {
        // Unknown is not nobody: a device that cannot tell who is logged on asks.
        let users = device
            .status
            .as_ref()
            .filter(|s| !s.logged_on_users_unknown)
            .map(|s| s.logged_on_users.clone());
        let (mode, note) = match &users {
            None => (
                EffectiveMode::Interactive,
                "Dynamic session runs interactive: the device cannot tell who is logged on, so the user is asked".to_owned(),
            ),
            Some(users) if users.is_empty() => (
                EffectiveMode::Unattended,
                "Dynamic session runs unattended: nobody is logged on to the device".to_owned(),
            ),
            Some(users) => (
                EffectiveMode::Interactive,
                format!(
                    "Dynamic session runs interactive: {} logged on",
                    tether_proto::text::escape(&users.join(", "))
                ),
            ),
        };
        status.effective_mode = Some(mode);
        events.push(PlannedEvent {
            warning: false,
            reason: "ModeResolved",
            note,
        });
    }
    let mode = status.effective_mode.unwrap_or(EffectiveMode::Interactive);
    let conds = &status.conditions;
    if let Some(ended) = conditions::find(conds, ct::ENDED).filter(|c| c.status == "True") {
        // A session that must be recorded and could not be did not complete: it failed.
        if ended.reason == RECORDING_FAILED {
            return Outcome::new(
                SessionPhase::Failed,
                RECORDING_FAILED,
                non_empty(
                    &ended.message,
                    "the session must be recorded and its recording failed",
                ),
                None,
            );
        }
        return Outcome::new(
            SessionPhase::Completed,
            &ended.reason,
            non_empty(&ended.message, "a party ended the session"),
            None,
        );
    }
    if mode == EffectiveMode::Interactive
        && let Some(refused) =
            conditions::find(conds, ct::CONSENTED).filter(|c| c.status == "False")
    {
        return Outcome::new(
            SessionPhase::Denied,
            &refused.reason,
            non_empty(&refused.message, "the user did not consent"),
            None,
        );
    }

    // Credentials: issue, and re-issue before they run out, while the session lives.
    let secret_name = format!(
        "{}-access",
        session.metadata.name.clone().unwrap_or_default()
    );
    let refresh = SignedDuration::try_from(settings.token_refresh_before).unwrap_or_default();
    let mint = match observed.access {
        None => true,
        // Minted from another spec: the session changed between the token and the first
        // phase written (later, the schema keeps what the token carries fixed).
        Some(a) if a.generation != session.metadata.generation => true,
        // A token capped at the session's end cannot get any better.
        Some(a) => a.expires_at < window.end && now >= a.expires_at - refresh,
    };
    let token_expires = if mint {
        let expires_at = token_expiry(now, window.end);
        *access = AccessAction::Mint(Grant {
            not_before: window.start,
            ends_at: window.end,
            expires_at,
            consent: mode == EffectiveMode::Interactive,
        });
        if status.access.is_none() {
            events.push(PlannedEvent {
                warning: false,
                reason: "AccessIssued",
                note: format!("Issued the session's credentials in Secret {secret_name}"),
            });
        }
        expires_at
    } else {
        observed.access.map_or(window.end, |a| a.expires_at)
    };
    status.access = Some(AccessStatus {
        secret_name,
        token_expires_at: Some(Time(token_expires)),
        revoked_at: None,
    });
    status.relay = settings.relay_address.clone();
    let next_refresh = (token_expires < window.end).then(|| token_expires - refresh);

    // The countdown warning.
    let warn_at =
        window.end - SignedDuration::try_from(settings.expiry_warning).unwrap_or_default();
    if now >= warn_at {
        let already = conditions::is_true(&status.conditions, ct::EXPIRING_SOON);
        set_condition(
            &mut status.conditions,
            NewCondition {
                type_: ct::EXPIRING_SOON,
                status: ConditionStatus::True,
                reason: "EndingSoon",
                message: format!("the session ends at {}", window.end),
            },
            session.metadata.generation,
            second_time(now),
        );
        if !already {
            events.push(PlannedEvent {
                warning: true,
                reason: "ExpiringSoon",
                note: format!("Session ends at {}", window.end),
            });
        }
    }
    *requeue = [
        Some(window.end),
        (now < warn_at).then_some(warn_at),
        next_refresh,
    ]
    .into_iter()
    .flatten()
    .min();

    // The device's presence (reported by the relay on the Device) says whether its agent is
    // connected; recorded as a condition so `kubectl describe` shows it with the session.
    let connected = device
        .status
        .as_ref()
        .and_then(|s| s.presence)
        .is_some_and(|p| p == tether_crds::device::Presence::Online);
    set_condition(
        &mut status.conditions,
        NewCondition {
            type_: ct::AGENT_CONNECTED,
            status: ConditionStatus::from(connected),
            reason: if connected { "Online" } else { "Offline" },
            message: if connected {
                format!("the agent of {} is connected", session.spec.device)
            } else {
                format!("the agent of {} is not connected", session.spec.device)
            },
        },
        session.metadata.generation,
        second_time(now),
    );
    let consented =
        mode == EffectiveMode::Unattended || conditions::is_true(&status.conditions, ct::CONSENTED);
    // What stands in the way of a session that must be recorded, as the relay reported it.
    let recording_blocked = (session.spec.recording == RecordingPolicy::Required)
        .then(|| {
            conditions::find(&status.conditions, RECORDING_CONDITION)
                .filter(|c| c.status == "False")
        })
        .flatten()
        .map(|c| non_empty(&c.message, "its recording is not available"))
        .or_else(|| {
            (session.spec.recording == RecordingPolicy::Required)
                .then(|| observed.store_unavailable.map(str::to_owned))
                .flatten()
        });
    let pending = |reason: &str, message: String, due: Option<Timestamp>| {
        let message = match &recording_blocked {
            Some(blocked) => format!("{message}; the session must be recorded, but {blocked}"),
            None => message,
        };
        Outcome::new(SessionPhase::Pending, reason, message, due)
    };
    let was_active = status.phase == Some(SessionPhase::Active);
    // An Active session stays Active through the operator's own store checks (they are not
    // made once it is Active), but not when the relay reports that it could not start the
    // recording: then nobody has joined (a session that must be recorded admits nobody
    // unrecorded), and technicians cannot join until the store answers.
    let relay_cannot_start = session.spec.recording == RecordingPolicy::Required
        && conditions::find(&status.conditions, RECORDING_CONDITION).is_some_and(|c| {
            c.status == "False" && RECORDING_NOT_STARTED.contains(&c.reason.as_str())
        });
    if connected
        && consented
        && (!was_active || relay_cannot_start)
        && let Some(blocked) = &recording_blocked
    {
        // Fail closed: a session that must be recorded is not Active while the relay cannot
        // record it. (One whose recording fails while it runs is ended by the relay.) The
        // store is checked again soon; the relay's reports also wake the operator.
        let recheck = now + STORE_RECHECK;
        *requeue = Some(requeue.map_or(recheck, |r| r.min(recheck)));
        Outcome::new(
            SessionPhase::Pending,
            "WaitingForRecording",
            format!("the agent is connected, but the session must be recorded and {blocked}"),
            None,
        )
    } else if connected && consented {
        Outcome::new(
            SessionPhase::Active,
            "Connected",
            "the agent is connected; technicians can join".into(),
            None,
        )
    } else if connected {
        pending(
            "WaitingForConsent",
            "the agent is connected and asked the user for consent".into(),
            None,
        )
    } else {
        pending(
            "WaitingForAgent",
            format!(
                "the window is open until {}; waiting for the device's agent",
                window.end
            ),
            Some(window.start),
        )
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

fn fixed_mode(mode: SessionMode) -> Option<EffectiveMode> {
    match mode {
        SessionMode::Interactive => Some(EffectiveMode::Interactive),
        SessionMode::Unattended => Some(EffectiveMode::Unattended),
        SessionMode::Dynamic => None,
    }
}

fn non_empty(text: &str, fallback: &str) -> String {
    if text.is_empty() {
        fallback.to_owned()
    } else {
        text.to_owned()
    }
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

/// When a token minted at `now` for a session ending at `end` expires, in whole seconds.
fn token_expiry(now: Timestamp, end: Timestamp) -> Timestamp {
    let expiry = tether_proto::token::expiry(now.as_second(), end.as_second());
    Timestamp::from_second(expiry).unwrap_or(end)
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

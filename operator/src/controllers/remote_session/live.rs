//! The decision for a live session, whose window is not closed: termination, schedule and
//! expiry, the Device, the effective mode and consent, the recording a session must have,
//! the credentials to issue (the whole [`Grant`]) and the countdown warning. Pure, like the
//! rest of the plan.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tether_crds::conditions::{self, ConditionStatus, NewCondition, set_condition};
use tether_crds::remote_session::{
    AccessStatus, EffectiveMode, RecordingPolicy, RemoteSessionStatus, SessionMode, SessionPhase,
    condition_types as ct,
};
use tether_proto::text::escape_short;

use super::gate::{self, Verdict};
use super::plan::{
    AccessAction, Grant, Observed, Outcome, PlannedEvent, RECORDING_CONDITION, RECORDING_FAILED,
    RECORDING_NOT_STARTED, Settings, second_time, termination, window,
};

/// How soon a session waiting for its recording store is looked at again.
const STORE_RECHECK: jiff::SignedDuration = jiff::SignedDuration::from_secs(10);

/// The phase decision for a live session, updating window, mode, warning and access fields.
pub(super) fn decide(
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
    if !gate::admitted(session) {
        // Business hours and concurrency: decided once, when the window opens.
        let (phase, reason, message) = match &observed.policy_gate {
            Verdict::Admit => (
                None,
                gate::reasons::ADMITTED,
                "every SessionPolicy lets the session start".to_owned(),
            ),
            Verdict::Hold {
                reason, message, ..
            } => (Some(SessionPhase::Pending), *reason, message.clone()),
            Verdict::Refuse { reason, message } => {
                (Some(SessionPhase::Denied), *reason, message.clone())
            }
        };
        let held_before = gate::held_for(session).map(str::to_owned);
        set_condition(
            &mut status.conditions,
            NewCondition {
                type_: ct::ADMITTED,
                status: ConditionStatus::from(phase.is_none()),
                reason,
                message: message.clone(),
            },
            session.metadata.generation,
            second_time(now),
        );
        match phase {
            None => {
                if held_before.is_some() {
                    events.push(PlannedEvent {
                        warning: false,
                        reason: "Admitted",
                        note: "Session admitted: every SessionPolicy lets it start".into(),
                    });
                }
            }
            Some(phase) => {
                if phase == SessionPhase::Pending {
                    if held_before.as_deref() != Some(reason) {
                        events.push(PlannedEvent {
                            warning: false,
                            reason: "HeldByPolicy",
                            note: format!("Session held: {message}"),
                        });
                    }
                    let until = match &observed.policy_gate {
                        Verdict::Hold { until, .. } => *until,
                        _ => None,
                    };
                    *requeue = [until, Some(window.end)].into_iter().flatten().min();
                }
                return Outcome::new(phase, reason, message, None);
            }
        }
    }
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
            consent_timeout: observed.consent_timeout,
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

/// When a token minted at `now` for a session ending at `end` expires, in whole seconds.
fn token_expiry(now: Timestamp, end: Timestamp) -> Timestamp {
    let expiry = tether_proto::token::expiry(now.as_second(), end.as_second());
    Timestamp::from_second(expiry).unwrap_or(end)
}

//! The decisions for one RemoteSession, as a pure function of what was observed and the
//! current time: the status it should have, the Events to publish and when to look again.
//! No I/O happens here, so every transition is tested with virtual time.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tether_crds::conditions::{ConditionStatus, NewCondition, set_condition};
use tether_crds::remote_session::{RemoteSession, RemoteSessionStatus, SessionPhase};

/// Condition type that is `True` while technicians can use the session.
pub const READY: &str = "Ready";

/// Operator-wide settings that shape every session's plan.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The longest session the cluster allows.
    pub max_duration: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_duration: Duration::from_secs(8 * 3600),
        }
    }
}

/// What the reconciler saw.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    /// The session as read from the API server.
    pub session: &'a RemoteSession,
    /// The current time.
    pub now: Timestamp,
}

/// An Event to publish about the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Whether it is a `Warning` (else `Normal`).
    pub warning: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Human-readable note.
    pub note: String,
}

/// A phase change, with the time it was due, for lateness metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The phase entered.
    pub to: SessionPhase,
    /// When the transition was due (None for transitions not tied to a time).
    pub due: Option<Timestamp>,
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
    /// When to reconcile again: exactly at the next time-window boundary, or never.
    pub requeue_after: Option<Duration>,
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

/// Decides the session's status, events and next wake-up.
pub fn plan(observed: Observed<'_>, settings: &Settings) -> Plan {
    let session = observed.session;
    let now = observed.now;
    let current = session.status.clone().unwrap_or_default();
    let generation = session.metadata.generation;

    // Terminal phases are final: nothing a re-applied manifest does can revive the session.
    if current.phase.is_some_and(SessionPhase::is_terminal) {
        return Plan {
            status: current,
            events: Vec::new(),
            transition: None,
            requeue_after: None,
        };
    }

    let mut status = current.clone();
    status.observed_generation = generation;
    let mut events = Vec::new();

    let window = match window(session, settings) {
        Ok(w) => w,
        Err(err) => {
            status.phase = Some(SessionPhase::Failed);
            status.reason = Some(err.reason().to_owned());
            status.message = Some(err.to_string());
            status.ended_at = Some(second_time(now));
            set_ready(
                &mut status,
                false,
                err.reason(),
                err.to_string(),
                generation,
                now,
            );
            events.push(PlannedEvent {
                warning: true,
                reason: "Failed",
                note: format!("RemoteSession failed: {err}"),
            });
            return finish(current, status, events, None, None);
        }
    };
    status.scheduled_start = Some(Time(window.start));
    status.expires_at = Some(Time(window.end));

    let (phase, due, requeue) = if now < window.start {
        (SessionPhase::Scheduled, None, Some(window.start))
    } else if now >= window.end {
        (SessionPhase::Expired, Some(window.end), None)
    } else {
        let phase = match current.phase {
            Some(SessionPhase::Active) => SessionPhase::Active,
            _ => SessionPhase::Pending,
        };
        (phase, Some(window.start), Some(window.end))
    };

    if current.phase != Some(phase) {
        match phase {
            SessionPhase::Scheduled => {
                status.reason = Some("Scheduled".into());
                status.message = Some(format!(
                    "waiting for the window to open at {}",
                    window.start
                ));
                events.push(PlannedEvent {
                    warning: false,
                    reason: "Scheduled",
                    note: format!(
                        "Session scheduled from {} until {}",
                        window.start, window.end
                    ),
                });
            }
            SessionPhase::Pending => {
                status.reason = Some("WaitingForAgent".into());
                status.message = Some(
                    "the window is open; waiting for the device's agent and the user's consent"
                        .into(),
                );
                events.push(PlannedEvent {
                    warning: false,
                    reason: "WindowOpened",
                    note: format!("Session window opened; it closes at {}", window.end),
                });
            }
            SessionPhase::Expired => {
                status.reason = Some("Expired".into());
                status.message = Some(format!(
                    "the session reached the end of its {} window at {}",
                    session.spec.duration, window.end
                ));
                status.ended_at = Some(Time(window.end));
                events.push(PlannedEvent {
                    warning: false,
                    reason: "Expired",
                    note: format!("Session expired at {}", window.end),
                });
            }
            _ => {}
        }
    }
    let ready = phase == SessionPhase::Active;
    let reason = status.reason.clone().unwrap_or_else(|| phase.to_string());
    let message = status.message.clone().unwrap_or_default();
    set_ready(&mut status, ready, &reason, message, generation, now);
    status.phase = Some(phase);

    let requeue_after = requeue.map(|at| until(now, at));
    let transition = (current.phase != Some(phase)).then_some(Transition { to: phase, due });
    finish(current, status, events, transition, requeue_after)
}

fn finish(
    current: RemoteSessionStatus,
    status: RemoteSessionStatus,
    events: Vec<PlannedEvent>,
    transition: Option<Transition>,
    requeue_after: Option<Duration>,
) -> Plan {
    // A phase change always carries its transition; otherwise there is none.
    let transition = transition.or_else(|| {
        (current.phase != status.phase)
            .then(|| status.phase.map(|to| Transition { to, due: None }))
            .flatten()
    });
    Plan {
        status,
        events,
        transition,
        requeue_after,
    }
}

fn set_ready(
    status: &mut RemoteSessionStatus,
    ready: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) {
    set_condition(
        &mut status.conditions,
        NewCondition {
            type_: READY,
            status: ConditionStatus::from(ready),
            reason,
            message,
        },
        generation,
        second_time(now),
    );
}

/// Kubernetes `Time` has second precision: truncate so values round-trip unchanged.
fn second_time(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

/// Time from `now` until `at`, never negative.
fn until(now: Timestamp, at: Timestamp) -> Duration {
    let d = at.duration_since(now);
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;
    use tether_crds::remote_session::RemoteSessionSpec;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn session(start: Option<&str>, duration: &str, created: &str) -> RemoteSession {
        let spec: RemoteSessionSpec = serde_json::from_value(serde_json::json!({
            "device": "laptop-1",
            "startTime": start,
            "duration": duration,
        }))
        .unwrap();
        let mut s = RemoteSession::new("s1", spec);
        s.metadata = ObjectMeta {
            name: Some("s1".into()),
            namespace: Some("ns".into()),
            generation: Some(3),
            creation_timestamp: Some(Time(ts(created))),
            ..Default::default()
        };
        s
    }

    fn with_status(mut s: RemoteSession, status: RemoteSessionStatus) -> RemoteSession {
        s.status = Some(status);
        s
    }

    fn plan_at(s: &RemoteSession, now: &str) -> Plan {
        plan(
            Observed {
                session: s,
                now: ts(now),
            },
            &Settings::default(),
        )
    }

    #[test]
    fn future_start_is_scheduled_and_requeues_at_the_start() {
        let s = session(Some("2026-01-01T10:00:00Z"), "30m", "2026-01-01T09:00:00Z");
        let p = plan_at(&s, "2026-01-01T09:59:30Z");
        assert_eq!(p.status.phase, Some(SessionPhase::Scheduled));
        assert_eq!(p.status.observed_generation, Some(3));
        assert_eq!(
            p.status.scheduled_start,
            Some(Time(ts("2026-01-01T10:00:00Z")))
        );
        assert_eq!(p.status.expires_at, Some(Time(ts("2026-01-01T10:30:00Z"))));
        assert_eq!(p.requeue_after, Some(Duration::from_secs(30)));
        assert_eq!(p.events.len(), 1);
        assert_eq!(p.events[0].reason, "Scheduled");
        assert_eq!(
            p.transition,
            Some(Transition {
                to: SessionPhase::Scheduled,
                due: None
            })
        );
    }

    #[test]
    fn start_equal_to_now_is_pending() {
        let s = session(Some("2026-01-01T10:00:00Z"), "30m", "2026-01-01T09:00:00Z");
        let p = plan_at(&s, "2026-01-01T10:00:00Z");
        assert_eq!(p.status.phase, Some(SessionPhase::Pending));
        assert_eq!(p.requeue_after, Some(Duration::from_secs(1800)));
        assert_eq!(p.transition.unwrap().due, Some(ts("2026-01-01T10:00:00Z")));
    }

    #[test]
    fn instant_session_counts_from_creation_with_default_duration() {
        let spec: RemoteSessionSpec =
            serde_json::from_value(serde_json::json!({"device": "kiosk"})).unwrap();
        let mut s = RemoteSession::new("s1", spec);
        s.metadata.creation_timestamp = Some(Time(ts("2026-01-01T10:00:00Z")));
        s.metadata.generation = Some(1);
        let p = plan_at(&s, "2026-01-01T10:00:01Z");
        assert_eq!(p.status.phase, Some(SessionPhase::Pending));
        assert_eq!(
            p.status.scheduled_start,
            Some(Time(ts("2026-01-01T10:00:00Z")))
        );
        assert_eq!(p.status.expires_at, Some(Time(ts("2026-01-01T10:30:00Z"))));
        assert_eq!(p.requeue_after, Some(Duration::from_secs(1799)));
    }

    #[test]
    fn past_window_expires_with_end_time_and_no_requeue() {
        let s = session(Some("2026-01-01T10:00:00Z"), "30m", "2026-01-01T09:00:00Z");
        let p = plan_at(&s, "2026-01-01T10:30:00Z");
        assert_eq!(p.status.phase, Some(SessionPhase::Expired));
        assert_eq!(p.status.ended_at, Some(Time(ts("2026-01-01T10:30:00Z"))));
        assert_eq!(p.status.reason.as_deref(), Some("Expired"));
        assert_eq!(p.requeue_after, None);
    }

    #[test]
    fn terminal_phase_is_final_even_if_the_window_reopens() {
        // A GitOps tool re-applies the original manifest: the spec is unchanged, the status
        // is terminal, and the session stays ended.
        let s = session(Some("2026-01-01T10:00:00Z"), "30m", "2026-01-01T09:00:00Z");
        let ended = plan_at(&s, "2026-01-01T11:00:00Z").status;
        let s = with_status(s, ended.clone());
        let p = plan_at(&s, "2026-01-01T10:10:00Z");
        assert_eq!(p.status, ended);
        assert!(p.events.is_empty());
        assert_eq!(p.requeue_after, None);
        assert_eq!(p.transition, None);
    }

    #[test]
    fn replanning_without_change_is_idempotent() {
        let s = session(Some("2026-01-01T10:00:00Z"), "30m", "2026-01-01T09:00:00Z");
        let first = plan_at(&s, "2026-01-01T10:05:00Z");
        let s = with_status(s, first.status.clone());
        let second = plan_at(&s, "2026-01-01T10:06:00Z");
        assert_eq!(second.status, first.status);
        assert!(second.events.is_empty());
        assert_eq!(second.transition, None);
        assert_eq!(second.requeue_after, Some(Duration::from_secs(24 * 60)));
    }

    #[test]
    fn duration_exactly_at_maximum_is_allowed_and_above_fails() {
        let settings = Settings {
            max_duration: Duration::from_secs(3600),
        };
        let ok = session(None, "1h", "2026-01-01T10:00:00Z");
        let p = plan(
            Observed {
                session: &ok,
                now: ts("2026-01-01T10:00:00Z"),
            },
            &settings,
        );
        assert_eq!(p.status.phase, Some(SessionPhase::Pending));

        let too_long = session(None, "61m", "2026-01-01T10:00:00Z");
        let p = plan(
            Observed {
                session: &too_long,
                now: ts("2026-01-01T10:00:00Z"),
            },
            &settings,
        );
        assert_eq!(p.status.phase, Some(SessionPhase::Failed));
        assert_eq!(p.status.reason.as_deref(), Some("DurationExceedsMaximum"));
        assert_eq!(
            p.status.message.as_deref(),
            Some("duration 61m exceeds the cluster maximum of 1h")
        );
        assert!(p.events[0].warning);
        assert_eq!(p.requeue_after, None);
    }

    #[test]
    fn ready_condition_tracks_phase_and_generation() {
        let s = session(Some("2026-01-01T10:00:00Z"), "30m", "2026-01-01T09:00:00Z");
        let p = plan_at(&s, "2026-01-01T09:00:00Z");
        let ready = &p.status.conditions[0];
        assert_eq!(ready.type_, READY);
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, "Scheduled");
        assert_eq!(ready.observed_generation, Some(3));
    }
}

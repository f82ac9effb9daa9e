//! The decisions for one SessionSchedule, as a pure function of the schedule, its sessions and
//! the current time: which run is due, whether it starts (the missed-run rule and the
//! concurrency policy), which sessions end or go, the status, the Events and when to look
//! again. No I/O happens here, so every rule is tested in virtual time (`plan_tests.rs`).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tether_crds::conditions::{ConditionStatus, NewCondition, set_condition};
use tether_crds::remote_session::{RemoteSession, RemoteSessionSpec, SessionPhase, annotations};
use tether_crds::session_schedule::{
    ConcurrencyPolicy, SessionSchedule, SessionScheduleStatus, condition_types as ct,
};

use super::cron::{self, Cron};
pub use crate::controllers::toolkit::PlannedEvent;

/// How many missed runs an Event counts before it says "more than".
pub const MISSED_COUNT_CAP: usize = 100;

/// What the reconciler saw.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    /// The schedule as read from the API server.
    pub schedule: &'a SessionSchedule,
    /// The sessions it owns.
    pub sessions: &'a [RemoteSession],
    /// The current time.
    pub now: Timestamp,
}

/// A session to create for a run.
#[derive(Clone, Debug, PartialEq)]
pub struct NewSession {
    /// Its name, derived from the run time alone.
    pub name: String,
    /// The run it is for.
    pub run: Timestamp,
    /// Its spec: the template, starting at the run time.
    pub spec: RemoteSessionSpec,
}

/// The reconciler's decisions.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The status the schedule should have.
    pub status: SessionScheduleStatus,
    /// The session to create, if a run starts now.
    pub create: Option<NewSession>,
    /// Sessions to terminate (concurrency policy `Replace`), with the reason to give.
    pub terminate: Vec<(String, String)>,
    /// Ended sessions beyond the history limits, to delete.
    pub delete: Vec<String>,
    /// Events to publish.
    pub events: Vec<PlannedEvent>,
    /// When to reconcile again: the next run.
    pub requeue_after: Option<Duration>,
}

/// The name of the session of the run at `run`: `<schedule>-<Unix minutes>`, the same for
/// every retry, so a run never creates two sessions.
pub fn session_name(schedule: &str, run: Timestamp) -> String {
    format!("{schedule}-{}", run.as_second().div_euclid(60))
}

/// How a session of the schedule stands, for concurrency and history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standing {
    Active,
    Succeeded,
    Failed,
}

fn standing(session: &RemoteSession) -> Standing {
    match session.status.as_ref().and_then(|s| s.phase) {
        Some(SessionPhase::Completed | SessionPhase::Expired) => Standing::Succeeded,
        Some(SessionPhase::Terminated | SessionPhase::Denied | SessionPhase::Failed) => {
            Standing::Failed
        }
        Some(SessionPhase::Scheduled | SessionPhase::Pending | SessionPhase::Active) | None => {
            Standing::Active
        }
    }
}

/// When a session ended, for ordering the history: its end, else its start, else creation.
fn ended(session: &RemoteSession) -> Option<Timestamp> {
    let status = session.status.as_ref();
    status
        .and_then(|s| s.ended_at.as_ref())
        .or(session.spec.start_time.as_ref())
        .or(session.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
}

/// The ended sessions of one standing beyond `limit`, oldest first out.
fn beyond_limit(sessions: &[&RemoteSession], limit: i32) -> Vec<String> {
    let mut ended_sessions: Vec<&&RemoteSession> = sessions.iter().collect();
    ended_sessions.sort_by_key(|s| std::cmp::Reverse((ended(s), s.metadata.name.clone())));
    ended_sessions
        .into_iter()
        .skip(usize::try_from(limit).unwrap_or(0))
        .filter_map(|s| s.metadata.name.clone())
        .collect()
}

fn event(warning: bool, reason: &'static str, note: String) -> PlannedEvent {
    PlannedEvent {
        warning,
        reason,
        note,
    }
}

/// Kubernetes `Time` has second precision: truncate so values round-trip unchanged.
fn second_time(t: Timestamp) -> Time {
    crate::controllers::remote_session::plan::second_time(t)
}

/// Time from `now` until `at`, never negative.
fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// What a run does, once it is due.
enum Run {
    /// Its session exists already (an earlier reconcile created it).
    Done,
    /// It is skipped, with this Event.
    Skipped(PlannedEvent),
    /// It starts, terminating these sessions first.
    Starts(Vec<String>),
}

/// Decides whether the due run at `run` starts: the missed-run rule, then the concurrency
/// policy.
fn decide(
    schedule: &SessionSchedule,
    run: Timestamp,
    name: &str,
    active: &[&RemoteSession],
    all: &[RemoteSession],
    now: Timestamp,
) -> Run {
    let spec = &schedule.spec;
    if all.iter().any(|s| s.metadata.name.as_deref() == Some(name)) {
        return Run::Done;
    }
    let late = now.duration_since(run);
    if let Some(deadline) = spec.starting_deadline_seconds
        && late > SignedDuration::from_secs(deadline)
    {
        return Run::Skipped(event(
            true,
            "MissedRun",
            format!(
                "Skipped the run at {run}: it is {}s late, more than startingDeadlineSeconds ({deadline})",
                late.as_secs()
            ),
        ));
    }
    let window_end = SignedDuration::try_from(spec.session_template.duration.as_std())
        .ok()
        .and_then(|d| run.checked_add(d).ok());
    if let Some(end) = window_end
        && end <= now
    {
        return Run::Skipped(event(
            true,
            "MissedRun",
            format!("Skipped the run at {run}: its session's window closed at {end}"),
        ));
    }
    if active.is_empty() {
        return Run::Starts(Vec::new());
    }
    let names = active
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect::<Vec<_>>();
    match spec.concurrency_policy {
        ConcurrencyPolicy::Allow => Run::Starts(Vec::new()),
        ConcurrencyPolicy::Forbid => Run::Skipped(event(
            false,
            "RunSkipped",
            format!(
                "Skipped the run at {run}: RemoteSession {} has not ended (concurrencyPolicy Forbid)",
                names.join(", ")
            ),
        )),
        ConcurrencyPolicy::Replace => Run::Starts(
            active
                .iter()
                .filter(|s| {
                    // Already being ended: the termination stands as it is.
                    !s.metadata
                        .annotations
                        .as_ref()
                        .is_some_and(|a| a.contains_key(annotations::TERMINATED_BY))
                })
                .filter_map(|s| s.metadata.name.clone())
                .collect(),
        ),
    }
}

/// Decides the schedule's sessions, status, Events and next wake-up.
pub fn plan(observed: Observed<'_>) -> Plan {
    let Observed {
        schedule,
        sessions,
        now,
    } = observed;
    let spec = &schedule.spec;
    let name = schedule.metadata.name.clone().unwrap_or_default();
    let generation = schedule.metadata.generation;
    let current = schedule.status.clone().unwrap_or_default();
    let mut status = current.clone();
    status.observed_generation = generation;
    let mut events = Vec::new();

    // Sessions being deleted are gone already, for concurrency and for history.
    let live: Vec<&RemoteSession> = sessions
        .iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .collect();
    let of = |wanted: Standing| -> Vec<&RemoteSession> {
        live.iter()
            .copied()
            .filter(|s| standing(s) == wanted)
            .collect()
    };
    let (active, succeeded, failed) = (
        of(Standing::Active),
        of(Standing::Succeeded),
        of(Standing::Failed),
    );

    let mut delete = beyond_limit(&succeeded, spec.successful_sessions_history_limit);
    delete.extend(beyond_limit(&failed, spec.failed_sessions_history_limit));
    for gone in &delete {
        events.push(event(
            false,
            "SessionDeleted",
            format!("Deleted RemoteSession {gone}: beyond the schedule's history limits"),
        ));
    }
    if let Some(latest) = succeeded
        .iter()
        .filter_map(|s| s.status.as_ref()?.ended_at.as_ref().map(|t| t.0))
        .max()
        && current
            .last_successful_time
            .as_ref()
            .is_none_or(|t| t.0 < latest)
    {
        status.last_successful_time = Some(second_time(latest));
    }

    let mut plan = Plan {
        status,
        create: None,
        terminate: Vec::new(),
        delete,
        events,
        requeue_after: None,
    };
    let mut active_names: Vec<String> = active
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();

    // The schedule must be readable: the schema checks its shape, this its values.
    let parsed = Cron::parse(&spec.schedule)
        .map_err(|e| {
            (
                "InvalidSchedule",
                format!("schedule {:?}: {e}", spec.schedule),
            )
        })
        .and_then(|c| {
            cron::time_zone(&spec.time_zone)
                .map(|tz| (c, tz))
                .map_err(|e| ("InvalidTimeZone", e.to_string()))
        })
        .and_then(|(c, tz)| match c.next_after(now, &tz) {
            Some(_) => Ok((c, tz)),
            None => Err((
                "InvalidSchedule",
                format!("schedule {:?} never runs", spec.schedule),
            )),
        });
    let (cron, tz) = match parsed {
        Ok(parsed) => parsed,
        Err((reason, message)) => {
            let was_invalid = tether_crds::conditions::is_true(&current.conditions, ct::INVALID);
            if !was_invalid {
                plan.events.push(event(
                    true,
                    reason,
                    format!("The schedule cannot run: {message}"),
                ));
            }
            conditions(
                &mut plan.status,
                generation,
                now,
                Some((reason, &message)),
                (
                    ConditionStatus::False,
                    reason,
                    format!("the schedule cannot run: {message}"),
                ),
            );
            plan.status.next_schedule_time = None;
            active_names.sort();
            plan.status.active = active_names;
            return plan;
        }
    };

    if spec.suspend {
        conditions(
            &mut plan.status,
            generation,
            now,
            None,
            (
                ConditionStatus::False,
                "Suspended",
                "runs are suspended (spec.suspend)".into(),
            ),
        );
        plan.status.next_schedule_time = None;
        active_names.sort();
        plan.status.active = active_names;
        return plan;
    }

    // The run due now: the latest since the last one dealt with (or since the schedule was
    // created). Only the latest of several missed runs is ever considered.
    let earliest = current
        .last_schedule_time
        .as_ref()
        .or(schedule.metadata.creation_timestamp.as_ref())
        .map_or(now, |t| t.0);
    let mut ready = (ConditionStatus::True, "Scheduled", String::new());
    // A refusal of the last run's session stands until the next run.
    if let Some(c) = tether_crds::conditions::find(&current.conditions, ct::READY)
        && c.reason == SESSION_REFUSED
    {
        ready = (ConditionStatus::False, SESSION_REFUSED, c.message.clone());
    }
    if let Some(run) = cron.latest_between(earliest, now, &tz) {
        let missed = cron.count_between(earliest, run, &tz, MISSED_COUNT_CAP);
        if missed > 0 {
            let count = if missed >= MISSED_COUNT_CAP {
                format!("more than {MISSED_COUNT_CAP} runs")
            } else if missed == 1 {
                "1 run".to_owned()
            } else {
                format!("{missed} runs")
            };
            plan.events.push(event(
                true,
                "MissedRun",
                format!("Skipped {count} missed before the run at {run}: only the most recent missed run may start"),
            ));
        }
        plan.status.last_schedule_time = Some(second_time(run));
        let session = session_name(&name, run);
        match decide(schedule, run, &session, &active, sessions, now) {
            Run::Done => {}
            Run::Skipped(skipped) => plan.events.push(skipped),
            Run::Starts(replaced) => {
                for old in replaced {
                    plan.events.push(event(
                        false,
                        "SessionReplaced",
                        format!("Terminating RemoteSession {old}: replaced by the run at {run} (concurrencyPolicy Replace)"),
                    ));
                    plan.terminate
                        .push((old, format!("replaced by the schedule's run at {run}")));
                }
                let mut spec = spec.session_template.clone();
                spec.start_time = Some(second_time(run));
                spec.assistance_request = None;
                active_names.push(session.clone());
                ready = (ConditionStatus::True, "Scheduled", String::new());
                plan.create = Some(NewSession {
                    name: session,
                    run,
                    spec,
                });
            }
        }
    }

    let next = cron.next_after(now, &tz);
    plan.status.next_schedule_time = next.map(second_time);
    plan.requeue_after = next.map(|at| until(now, at));
    if ready.0 == ConditionStatus::True {
        ready.2 = match next {
            Some(at) => format!("next run at {}", at.to_zoned(tz.clone())),
            None => "no further runs".into(),
        };
    }
    conditions(&mut plan.status, generation, now, None, ready);
    active_names.sort();
    active_names.dedup();
    plan.status.active = active_names;
    plan
}

/// Reason of `Ready=False` after the API server refused a run's session.
pub const SESSION_REFUSED: &str = "SessionRefused";

/// Sets `Invalid` (from `invalid`, when the spec cannot be read) and `Ready`.
fn conditions(
    status: &mut SessionScheduleStatus,
    generation: Option<i64>,
    now: Timestamp,
    invalid: Option<(&str, &str)>,
    ready: (ConditionStatus, &str, String),
) {
    let (invalid_status, invalid_reason, invalid_message) = match invalid {
        Some((reason, message)) => (ConditionStatus::True, reason, message.to_owned()),
        None => (
            ConditionStatus::False,
            "Valid",
            "the schedule and the time zone are valid".to_owned(),
        ),
    };
    set_condition(
        &mut status.conditions,
        NewCondition {
            type_: ct::INVALID,
            status: invalid_status,
            reason: invalid_reason,
            message: invalid_message,
        },
        generation,
        second_time(now),
    );
    set_condition(
        &mut status.conditions,
        NewCondition {
            type_: ct::READY,
            status: ready.0,
            reason: ready.1,
            message: ready.2,
        },
        generation,
        second_time(now),
    );
}

/// The status after the API server refused the run's session: `Ready=False` with its reason
/// until the next run.
pub fn refused(status: &mut SessionScheduleStatus, session: &str, refusal: &str, now: Timestamp) {
    let generation = status.observed_generation;
    status.active.retain(|a| a != session);
    set_condition(
        &mut status.conditions,
        NewCondition {
            type_: ct::READY,
            status: ConditionStatus::False,
            reason: SESSION_REFUSED,
            message: format!("the cluster refused RemoteSession {session}: {refusal}"),
        },
        generation,
        second_time(now),
    );
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;

//! What a request makes of its round's RemoteSession: the spec it creates the session with,
//! and the session's phases it follows until the round ends.

use std::time::Duration;

use jiff::Timestamp;
use tether_crds::assistance_request::{
    AssistanceRequest, AssistanceRequestStatus, RequestPhase, RoundRecord,
};
use tether_crds::remote_session::{
    RemoteSession, RemoteSessionSpec, SessionPhase, SessionTechnicians,
};

use super::plan::{PlannedEvent, capitalise, current_approval, event};
use crate::controllers::remote_session::plan::second_time;

/// Follows the round's session: its phase becomes the request's.
pub(super) fn follow(
    status: &mut AssistanceRequestStatus,
    events: &mut Vec<PlannedEvent>,
    request: &AssistanceRequest,
    session: &RemoteSession,
    now: Timestamp,
) {
    let st = session.status.clone().unwrap_or_default();
    let message = st.message.clone().unwrap_or_default();
    let (phase, note) = match st.phase {
        // Not reconciled yet: nothing to follow.
        None => return,
        Some(SessionPhase::Scheduled) => (
            RequestPhase::Scheduled,
            format!(
                "Session scheduled to start at {}",
                st.scheduled_start
                    .map(|t| t.0.to_string())
                    .unwrap_or_default()
            ),
        ),
        Some(SessionPhase::Pending) => (
            RequestPhase::WaitingForConnection,
            "Waiting for the device to connect and the user to consent".to_owned(),
        ),
        Some(SessionPhase::Active) => (RequestPhase::InProgress, "Session in progress".to_owned()),
        Some(SessionPhase::Completed) => {
            return finish(
                status,
                events,
                request,
                RequestPhase::Completed,
                format!("the session completed: {message}"),
                now,
            );
        }
        Some(SessionPhase::Expired) => {
            return finish(
                status,
                events,
                request,
                RequestPhase::Expired,
                format!("the session expired: {message}"),
                now,
            );
        }
        Some(SessionPhase::Terminated) => {
            return finish(
                status,
                events,
                request,
                RequestPhase::Closed,
                format!("the session was {message}"),
                now,
            );
        }
        Some(SessionPhase::Denied) => {
            return finish(
                status,
                events,
                request,
                RequestPhase::Failed,
                format!("the user did not consent: {message}"),
                now,
            );
        }
        Some(SessionPhase::Failed) => {
            return finish(
                status,
                events,
                request,
                RequestPhase::Failed,
                format!("the session failed: {message}"),
                now,
            );
        }
    };
    if status.phase != Some(phase) {
        status.phase = Some(phase);
        status.message = Some(note.clone());
        events.push(event(false, phase_reason(phase), note));
    }
}

pub(super) fn phase_reason(phase: RequestPhase) -> &'static str {
    match phase {
        RequestPhase::Scheduled => "Scheduled",
        RequestPhase::WaitingForConnection => "WaitingForConnection",
        RequestPhase::InProgress => "InProgress",
        RequestPhase::Completed => "Completed",
        RequestPhase::Expired => "Expired",
        RequestPhase::Closed => "Closed",
        RequestPhase::Inactive => "Inactive",
        RequestPhase::Failed => "Failed",
        RequestPhase::Pending => "Pending",
        RequestPhase::Approved => "Approved",
        RequestPhase::Denied => "Denied",
        RequestPhase::ApprovalExpired => "ApprovalExpired",
    }
}

/// Ends the round: a one-time request takes the outcome as its final phase; a reusable one
/// records it in its history and goes `Inactive`.
pub(super) fn finish(
    status: &mut AssistanceRequestStatus,
    events: &mut Vec<PlannedEvent>,
    request: &AssistanceRequest,
    outcome: RequestPhase,
    message: String,
    now: Timestamp,
) {
    let final_phase = if request.spec.reusable {
        status.history.push(RoundRecord {
            round: status.round.unwrap_or(1),
            outcome,
            approval: current_approval(status),
            approvals: super::plan::current_approvals(status),
            session: status.session.clone(),
            ended_at: Some(second_time(now)),
        });
        RequestPhase::Inactive
    } else {
        outcome
    };
    let warning = matches!(outcome, RequestPhase::Failed);
    status.phase = Some(final_phase);
    status.message = Some(message.clone());
    events.push(event(warning, phase_reason(outcome), capitalise(&message)));
    if final_phase == RequestPhase::Inactive {
        events.push(event(
            false,
            "Inactive",
            "The request can be requested again (kubectl tether request --again)".into(),
        ));
    }
}

/// The session an approved request asks for: the template, the preferred window (or as soon
/// as possible), the assignees as technicians. Refused when the window has already closed.
pub fn session_spec(
    request: &AssistanceRequest,
    now: Timestamp,
) -> Result<RemoteSessionSpec, String> {
    let spec = &request.spec;
    let template = &spec.session_template;
    let mut start_time = None;
    if let Some(window) = &spec.preferred_window {
        if let Some(end) = &window.end
            && end.0 <= now
        {
            return Err(format!(
                "the preferred window closed at {} before the session could start",
                end.0
            ));
        }
        if window.start.0 > now {
            start_time = Some(window.start.clone());
        }
    }
    let duration = template
        .duration
        .clone()
        .unwrap_or_else(|| tether_crds::GoDuration::from_std(Duration::from_secs(30 * 60)));
    let assignee = spec.assignee.clone().unwrap_or_default();
    Ok(RemoteSessionSpec {
        device: spec.device.clone(),
        mode: template.mode,
        start_time,
        duration,
        features: template.features.clone(),
        recording: template.recording,
        technicians: SessionTechnicians {
            users: assignee.users,
            groups: assignee.groups,
            view_only: Default::default(),
        },
        assistance_request: request.metadata.name.clone(),
        ticket: spec.ticket.clone(),
        reason: Some(spec.reason.clone()),
    })
}

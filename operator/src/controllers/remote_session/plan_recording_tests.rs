//! Virtual-time tests of sessions that are recorded: a recording that must exist, one that
//! failed, a store that does not answer, and what the relay reports.

use super::*;

#[test]
fn a_required_recording_that_failed_fails_the_session() {
    let mut w = World::new(session_with(serde_json::json!({
        "device": "laptop-1", "startTime": START, "duration": "30m",
        "mode": "Unattended", "recording": "Required",
    })));
    w.step(ts(START));
    w.connect();
    w.relay_says(
        RECORDING_CONDITION,
        true,
        "Recording",
        "recording to s3://r",
    );
    assert_eq!(
        w.step(at(START, 5)).status.phase,
        Some(SessionPhase::Active)
    );
    let message = "the session was ended because it must be recorded and recording failed: \
                   the store refused a part";
    w.relay_says(
        RECORDING_CONDITION,
        false,
        RECORDING_FAILED,
        "recording failed: the store refused a part",
    );
    w.relay_says(ct::ENDED, true, RECORDING_FAILED, message);
    let p = w.step(at(START, 60));
    assert_eq!(p.status.phase, Some(SessionPhase::Failed));
    assert_eq!(p.status.reason.as_deref(), Some(RECORDING_FAILED));
    assert_eq!(p.status.message.as_deref(), Some(message));
    assert!(p.revoke);
    assert_eq!(p.finalizer, FinalizerAction::Remove);
    let failed = p.events.iter().find(|e| e.reason == "Failed").unwrap();
    assert!(
        failed.warning && failed.note.contains("recording failed"),
        "{failed:?}"
    );
    // The relay's condition is left as the relay wrote it.
    let recording = conditions::find(&p.status.conditions, RECORDING_CONDITION).unwrap();
    assert_eq!(recording.reason, RECORDING_FAILED);

    // Without a message the phase still explains itself.
    let mut w = World::new(scheduled());
    w.step(ts(START));
    w.relay_reports(ct::ENDED, true, RECORDING_FAILED);
    let p = w.step(at(START, 60));
    assert_eq!(p.status.phase, Some(SessionPhase::Failed));
    assert!(p.status.message.unwrap().contains("must be recorded"));
}

#[test]
fn a_pending_session_that_must_be_recorded_says_why_it_cannot_start() {
    let required = || {
        session_with(serde_json::json!({
            "device": "laptop-1", "startTime": START, "duration": "30m", "recording": "Required",
        }))
    };
    let unavailable = "the recording store is unavailable: connection refused";
    let mut w = World::new(required());
    w.step(ts(START));
    w.relay_says(
        RECORDING_CONDITION,
        false,
        "StorageUnavailable",
        unavailable,
    );
    let p = w.step(at(START, 5));
    assert_eq!(p.status.phase, Some(SessionPhase::Pending));
    assert_eq!(p.status.reason.as_deref(), Some("WaitingForAgent"));
    let message = p.status.message.clone().unwrap();
    assert!(
        message.contains("must be recorded, but the recording store is unavailable"),
        "{message}"
    );
    let ready = conditions::find(&p.status.conditions, ct::READY).unwrap();
    assert_eq!(ready.message, message);

    w.connect();
    let p = w.step(at(START, 10));
    assert_eq!(p.status.reason.as_deref(), Some("WaitingForConsent"));
    assert!(p.status.message.unwrap().contains(unavailable));

    // Once recording works the message is the plain one again.
    w.relay_says(
        RECORDING_CONDITION,
        true,
        "Recording",
        "recording to s3://r",
    );
    let p = w.step(at(START, 15));
    assert_eq!(
        p.status.message.as_deref(),
        Some("the agent is connected and asked the user for consent")
    );

    // Consent given, but no recording: a Required session does not become Active.
    w.relay_says(
        RECORDING_CONDITION,
        false,
        "StorageUnavailable",
        unavailable,
    );
    w.relay_reports(ct::CONSENTED, true, "UserConsented");
    let p = w.step(at(START, 20));
    assert_eq!(p.status.phase, Some(SessionPhase::Pending));
    assert_eq!(p.status.reason.as_deref(), Some("WaitingForRecording"));
    assert!(p.status.message.unwrap().contains(unavailable));
    w.relay_says(
        RECORDING_CONDITION,
        true,
        "Recording",
        "recording to s3://r",
    );
    let p = w.step(at(START, 25));
    assert_eq!(p.status.phase, Some(SessionPhase::Active));
    // Once Active it stays so until the relay ends it (RecordingFailed fails it).
    w.relay_says(
        RECORDING_CONDITION,
        false,
        RECORDING_FAILED,
        "recording failed: x",
    );
    assert_eq!(
        w.step(at(START, 30)).status.phase,
        Some(SessionPhase::Active)
    );

    // Only `Required` sessions wait on their recording.
    let mut w = World::new(scheduled());
    w.step(ts(START));
    w.relay_says(
        RECORDING_CONDITION,
        false,
        "NotConfigured",
        "no recording store",
    );
    let p = w.step(at(START, 5));
    assert!(!p.status.message.unwrap().contains("recording"));
}

#[test]
fn an_unattended_session_that_must_be_recorded_waits_for_its_store() {
    let mut w = World::new(session_with(serde_json::json!({
        "device": "laptop-1", "startTime": START, "duration": "30m",
        "mode": "Unattended", "recording": "Required",
    })));
    w.step(ts(START));
    w.connect();
    // No technician has tried yet, so the relay has said nothing: the operator's own check
    // of the store keeps the session from going Active.
    w.store_unavailable = Some("the recording store is unavailable: connection refused".into());
    let p = w.step(at(START, 5));
    assert_eq!(p.status.phase, Some(SessionPhase::Pending));
    assert_eq!(p.status.reason.as_deref(), Some("WaitingForRecording"));
    assert!(
        p.status.message.unwrap().contains("connection refused"),
        "the reason is shown"
    );
    assert!(
        p.requeue_after
            .is_some_and(|d| d <= std::time::Duration::from_secs(10)),
        "the store is checked again soon: {:?}",
        p.requeue_after
    );
    w.store_unavailable = None;
    assert_eq!(
        w.step(at(START, 15)).status.phase,
        Some(SessionPhase::Active)
    );
}

#[test]
fn an_active_session_that_must_be_recorded_waits_again_when_the_relay_cannot_record() {
    let mut w = World::new(session_with(serde_json::json!({
        "device": "laptop-1", "startTime": START, "duration": "30m",
        "mode": "Unattended", "recording": "Required",
    })));
    w.step(ts(START));
    w.connect();
    // The operator's own check of the store passed: Active, technicians may try to join.
    let p = w.step(at(START, 5));
    assert_eq!(p.status.phase, Some(SessionPhase::Active));
    assert_eq!(
        p.status.message.as_deref(),
        Some("the agent is connected; technicians can join")
    );

    // The relay could not start the recording when a technician joined: nobody is in, and
    // nobody can join, so the session says so instead of "technicians can join".
    let unavailable = "the recording store is unavailable: disk full";
    w.relay_says(
        RECORDING_CONDITION,
        false,
        "StorageUnavailable",
        unavailable,
    );
    let p = w.step(at(START, 10));
    assert_eq!(p.status.phase, Some(SessionPhase::Pending));
    assert_eq!(p.status.reason.as_deref(), Some("WaitingForRecording"));
    let message = p.status.message.clone().unwrap();
    assert!(
        message.contains("must be recorded") && message.contains(unavailable),
        "{message}"
    );
    assert!(!message.contains("technicians can join"), "{message}");
    let ready = conditions::find(&p.status.conditions, ct::READY).unwrap();
    assert_eq!(ready.status, "False");
    assert!(
        p.requeue_after
            .is_some_and(|r| r <= Duration::from_secs(10))
    );
    // Credentials stay: the session is still live.
    assert!(!p.revoke);

    // The next join starts the recording: Active again.
    w.relay_says(
        RECORDING_CONDITION,
        true,
        "Recording",
        "recording to s3://r",
    );
    let p = w.step(at(START, 20));
    assert_eq!(p.status.phase, Some(SessionPhase::Active));

    // Positive control: a session that is only `Enabled` stays Active without its recording.
    let mut w = World::new(session_with(serde_json::json!({
        "device": "laptop-1", "startTime": START, "duration": "30m",
        "mode": "Unattended", "recording": "Enabled",
    })));
    w.step(ts(START));
    w.connect();
    w.step(at(START, 5));
    w.relay_says(
        RECORDING_CONDITION,
        false,
        "StorageUnavailable",
        unavailable,
    );
    assert_eq!(
        w.step(at(START, 10)).status.phase,
        Some(SessionPhase::Active)
    );
}

#[test]
fn a_recording_left_recording_by_a_failed_store_is_marked_failed() {
    use tether_crds::remote_session::RecordingStatus;
    let mut w = World::new(session_with(serde_json::json!({
        "device": "laptop-1", "startTime": START, "duration": "30m",
        "mode": "Unattended", "recording": "Required",
    })));
    w.step(ts(START));
    w.connect();
    w.relay_says(
        RECORDING_CONDITION,
        true,
        "Recording",
        "recording to file:///r",
    );
    let p = w.step(at(START, 5));
    assert_eq!(p.status.phase, Some(SessionPhase::Active));
    // The relay published the recording while it ran.
    w.session.status.as_mut().unwrap().recording = Some(RecordingStatus {
        state: "Recording".into(),
        ..Default::default()
    });
    assert_eq!(stale_recording(w.session.status.as_ref().unwrap()), None);

    // The store fails: the relay ends the session, but cannot finish the manifest.
    w.relay_says(
        RECORDING_CONDITION,
        false,
        RECORDING_FAILED,
        "recording failed: the store refused a part",
    );
    w.relay_says(ct::ENDED, true, RECORDING_FAILED, "ended: recording failed");
    let p = w.step(at(START, 60));
    assert_eq!(p.status.phase, Some(SessionPhase::Failed));
    assert_eq!(
        stale_recording(&p.status).as_deref(),
        Some("recording failed: the store refused a part")
    );
    // Later reconciles of the finished session still see it (the relay may write it again).
    let p = w.step(at(START, 120));
    assert!(stale_recording(&p.status).is_some());

    // Once marked, or finished by the relay, there is nothing to do.
    let mut done = p.status.clone();
    done.recording.as_mut().unwrap().state = "Failed".into();
    assert_eq!(stale_recording(&done), None);
    done.recording.as_mut().unwrap().state = "Recovered".into();
    assert_eq!(stale_recording(&done), None);

    // Positive control: a session that completed normally keeps the relay's state.
    let mut completed = p.status.clone();
    completed.phase = Some(SessionPhase::Completed);
    completed.reason = Some("EndedByUser".into());
    completed
        .conditions
        .retain(|c| c.type_ != RECORDING_CONDITION);
    assert_eq!(stale_recording(&completed), None);
}

//! The session machine in virtual time: countdown and end, consent one prompt at a time,
//! seats, reported ends, clock skew and revocation racing expiry.

use super::*;

fn at(s: &str) -> Timestamp {
    s.parse().expect("a timestamp")
}

const START: &str = "2026-12-04T10:00:00Z";

fn config(minutes: i64, consent: bool) -> Config {
    Config {
        ends_at: at(START) + SignedDuration::from_mins(minutes),
        consent_required: consent,
        consent_timeout: Duration::from_secs(60),
        max_technicians: 2,
    }
}

fn drain(m: &mut Machine) -> Vec<Output> {
    std::iter::from_fn(|| m.poll_output()).collect()
}

/// Runs the machine from timeout to timeout until `until`, collecting what it says.
fn run_until(m: &mut Machine, until: Timestamp) -> Vec<(Timestamp, Output)> {
    let mut seen = Vec::new();
    while let Some(next) = m.next_timeout() {
        if next > until {
            break;
        }
        m.handle_timeout(next);
        seen.extend(drain(m).into_iter().map(|o| (next, o)));
    }
    seen
}

#[test]
fn a_session_counts_down_then_ends_at_its_end() {
    let mut m = Machine::new(config(30, false), at(START));
    assert!(drain(&mut m).is_empty());
    assert_eq!(m.next_timeout(), Some(at("2026-12-04T10:28:00Z")));
    let seen = run_until(&mut m, at("2026-12-04T11:00:00Z"));
    let marks: Vec<i64> = seen
        .iter()
        .filter_map(|(_, o)| match o {
            Output::Countdown { seconds_left } => Some(*seconds_left),
            _ => None,
        })
        .collect();
    assert_eq!(marks, COUNTDOWN.to_vec());
    for (when, output) in &seen {
        if let Output::Countdown { seconds_left } = output {
            assert_eq!(seconds_until(*when, m.ends_at()), *seconds_left);
        }
    }
    let last = seen.last().expect("an end");
    assert_eq!(
        last,
        &(
            at("2026-12-04T10:30:00Z"),
            Output::Ended {
                reason: EndReason::Expired
            }
        )
    );
    // Expiry is the operator's own decision: no Ended condition is written for it.
    assert!(!seen.iter().any(|(_, o)| matches!(o, Output::Conditions(_))));
    assert_eq!(m.next_timeout(), None);
    assert_eq!(m.ended(), Some(EndReason::Expired));
}

#[test]
fn a_session_joined_in_its_last_two_minutes_says_so_at_once_and_never_twice() {
    let now = at("2026-12-04T10:28:30Z");
    let mut m = Machine::new(config(30, false), now);
    let seen = run_until(&mut m, at("2026-12-04T10:31:00Z"));
    assert_eq!(seen[0], (now, Output::Countdown { seconds_left: 90 }));
    let marks: Vec<i64> = seen
        .iter()
        .filter_map(|(_, o)| match o {
            Output::Countdown { seconds_left } => Some(*seconds_left),
            _ => None,
        })
        .collect();
    assert_eq!(marks, vec![90, 60, 30, 10, 5, 4, 3, 2, 1]);

    // Exactly on a mark: that mark, once.
    let now = at("2026-12-04T10:29:00Z");
    let mut m = Machine::new(config(30, false), now);
    m.handle_timeout(now);
    assert_eq!(drain(&mut m), vec![Output::Countdown { seconds_left: 60 }]);

    // Between marks with a fraction of a second: the seconds left, not silence until 30.
    let now = at("2026-12-04T10:29:00.5Z");
    let mut m = Machine::new(config(30, false), now);
    m.handle_timeout(now);
    assert_eq!(drain(&mut m), vec![Output::Countdown { seconds_left: 60 }]);
}

#[test]
fn a_session_whose_end_has_passed_ends_at_once() {
    let now = at("2026-12-04T10:45:00Z");
    let mut m = Machine::new(config(30, false), now);
    assert!(m.next_timeout().is_some_and(|t| t <= now));
    m.handle_timeout(now);
    assert_eq!(
        drain(&mut m),
        vec![Output::Ended {
            reason: EndReason::Expired
        }]
    );
    assert_eq!(m.take_seat(), Err(SeatRefusal::Ended));
}

#[test]
fn waking_late_ends_without_a_burst_of_stale_countdown() {
    let mut m = Machine::new(config(30, false), at(START));
    // The host slept through the whole countdown (suspended VM, clock stepped forward).
    m.handle_timeout(at("2026-12-04T10:35:00Z"));
    assert_eq!(
        drain(&mut m),
        vec![Output::Ended {
            reason: EndReason::Expired
        }]
    );
}

#[test]
fn waking_early_or_with_the_clock_stepped_back_fires_nothing_before_its_time() {
    let mut m = Machine::new(config(30, false), at(START));
    let first = m.next_timeout().expect("a timer");
    // A sleep that returned early, or a wall clock that stepped back an hour.
    m.handle_timeout(first - SignedDuration::from_secs(1));
    m.handle_timeout(at("2026-12-04T09:00:00Z"));
    assert!(drain(&mut m).is_empty());
    assert_eq!(m.next_timeout(), Some(first));
    m.handle_timeout(first);
    assert_eq!(drain(&mut m), vec![Output::Countdown { seconds_left: 120 }]);
}

#[test]
fn revocation_racing_expiry_ends_the_session_once_whichever_comes_first() {
    let end = at("2026-12-04T10:30:00Z");
    // Revoked in the very second the session expires, before the timer is handled.
    let mut m = Machine::new(config(30, false), at(START));
    run_until(&mut m, end - SignedDuration::from_secs(1));
    m.end(EndReason::Terminated);
    m.handle_timeout(end);
    let outputs = drain(&mut m);
    let ends: Vec<_> = outputs
        .iter()
        .filter(|o| matches!(o, Output::Ended { .. }))
        .collect();
    assert_eq!(
        ends,
        vec![&Output::Ended {
            reason: EndReason::Terminated
        }]
    );

    // Expired first, then the operator's revocation arrives.
    let mut m = Machine::new(config(30, false), at(START));
    run_until(&mut m, end);
    m.end(EndReason::Terminated);
    assert!(drain(&mut m).is_empty());
    assert_eq!(m.ended(), Some(EndReason::Expired));
}

#[test]
fn seats_are_bounded_and_given_back() {
    let mut m = Machine::new(config(30, false), at(START));
    assert_eq!(m.take_seat(), Ok(()));
    assert_eq!(m.take_seat(), Ok(()));
    assert_eq!(m.take_seat(), Err(SeatRefusal::Full { max: 2 }));
    m.leave_seat("carol");
    assert_eq!(m.take_seat(), Ok(()));
    m.leave_seat("a");
    m.leave_seat("b");
    m.leave_seat("c");
    assert_eq!(m.seats(), 0);
}

#[test]
fn without_consent_everyone_is_granted_until_the_end() {
    let mut m = Machine::new(config(30, false), at(START));
    assert_eq!(m.request_consent("carol", at(START)), Consent::Granted);
    assert!(drain(&mut m).is_empty());
    m.end(EndReason::EndedByTechnician);
    assert_eq!(
        m.request_consent("carol", at(START)),
        Consent::Denied("the session ended".into())
    );
}

#[test]
fn consent_is_asked_one_technician_at_a_time_and_remembered() {
    let now = at(START);
    let mut m = Machine::new(config(30, true), now);
    assert_eq!(m.request_consent("carol", now), Consent::Asking);
    assert_eq!(m.request_consent("bob", now), Consent::Queued);
    assert_eq!(
        drain(&mut m),
        vec![Output::Ask {
            technician: "carol".into(),
            timeout: Duration::from_secs(60)
        }]
    );
    m.handle_consent(true, "UserAllowed", now + SignedDuration::from_secs(3));
    let outputs = drain(&mut m);
    assert_eq!(
        outputs[0],
        Output::Answered {
            technician: "carol".into(),
            granted: true,
            reason: "UserAllowed".into()
        }
    );
    let Output::Conditions(c) = &outputs[1] else {
        panic!("expected conditions, got {outputs:?}");
    };
    assert_eq!(
        c[condition::CONSENTED].message,
        "the user allowed carol to join"
    );
    assert_eq!(
        outputs[2],
        Output::Ask {
            technician: "bob".into(),
            timeout: Duration::from_secs(60)
        }
    );
    // A later refusal refuses only that technician; the session goes on.
    m.handle_consent(false, "UserDenied", now + SignedDuration::from_secs(5));
    assert_eq!(m.consent("bob"), Consent::Denied("UserDenied".into()));
    assert_eq!(m.consent("carol"), Consent::Granted);
    assert_eq!(m.ended(), None);
    let outputs = drain(&mut m);
    assert!(
        !outputs.iter().any(|o| matches!(o, Output::Conditions(_))),
        "{outputs:?}"
    );
    // Reconnecting asks nobody again.
    assert_eq!(m.request_consent("carol", now), Consent::Granted);
    assert_eq!(
        m.request_consent("bob", now),
        Consent::Denied("UserDenied".into())
    );
    assert!(drain(&mut m).is_empty());
}

#[test]
fn the_first_refusal_ends_the_session_and_says_why() {
    let now = at(START);
    let mut m = Machine::new(config(30, true), now);
    m.request_consent("mallory\u{1b}[2J", now);
    m.request_consent("bob", now);
    drain(&mut m);
    m.handle_consent(false, "UserDenied", now);
    let outputs = drain(&mut m);
    assert!(outputs.contains(&Output::Ended {
        reason: EndReason::ConsentDenied
    }));
    let conditions = m.conditions();
    let consented = &conditions[condition::CONSENTED];
    assert!(!consented.status);
    assert_eq!(consented.reason, "UserDenied");
    assert!(
        !consented.message.contains('\u{1b}'),
        "{}",
        consented.message
    );
    // ConsentDenied is reported in Consented, not in Ended.
    assert!(!conditions.contains_key(condition::ENDED));
    assert_eq!(
        m.consent("mallory\u{1b}[2J"),
        Consent::Denied("UserDenied".into())
    );
    assert_eq!(
        m.consent("bob"),
        Consent::Denied("the session ended".into())
    );
    assert_eq!(m.next_timeout(), None);
}

#[test]
fn an_unanswered_prompt_times_out_and_the_next_one_is_asked() {
    let now = at(START);
    let mut m = Machine::new(config(30, true), now);
    m.request_consent("carol", now);
    m.handle_consent(true, "UserAllowed", now);
    m.request_consent("bob", now);
    m.request_consent("dave", now);
    drain(&mut m);
    // The user's 60 s plus the answer's travel time.
    assert_eq!(m.next_timeout(), Some(now + SignedDuration::from_secs(65)));
    m.handle_timeout(now + SignedDuration::from_secs(64));
    assert_eq!(m.consent("bob"), Consent::Asking);
    m.handle_timeout(now + SignedDuration::from_secs(65));
    assert_eq!(m.consent("bob"), Consent::Denied(CONSENT_TIMED_OUT.into()));
    assert_eq!(m.consent("dave"), Consent::Asking);
    let outputs = drain(&mut m);
    assert!(outputs.contains(&Output::Ask {
        technician: "dave".into(),
        timeout: Duration::from_secs(60)
    }));
}

#[test]
fn a_stray_answer_is_ignored_and_a_queued_technician_who_leaves_is_not_asked() {
    let now = at(START);
    let mut m = Machine::new(config(30, true), now);
    m.handle_consent(true, "UserAllowed", now);
    assert!(drain(&mut m).is_empty());
    m.request_consent("carol", now);
    m.request_consent("bob", now);
    m.leave_seat("bob");
    drain(&mut m);
    m.handle_consent(true, "UserAllowed", now);
    let outputs = drain(&mut m);
    assert!(
        !outputs.iter().any(|o| matches!(o, Output::Ask { .. })),
        "{outputs:?}"
    );
    assert_eq!(m.consent("bob"), Consent::Queued);
}

#[test]
fn a_recording_failure_is_quoted_when_it_ends_the_session() {
    let mut m = Machine::new(config(30, false), at(START));
    m.set_condition(
        condition::RECORDING,
        true,
        "Recording",
        "recording to file:///r",
    );
    m.set_condition(
        condition::RECORDING,
        false,
        "RecordingFailed",
        "recording failed: the store refused a part",
    );
    m.end(EndReason::RecordingFailed);
    let ended = &m.conditions()[condition::ENDED];
    assert_eq!(ended.reason, "RecordingFailed");
    assert_eq!(
        ended.message,
        "the session was ended because it must be recorded and recording failed: the store refused a part"
    );
    let outputs = drain(&mut m);
    // Told to the parties before the condition is written.
    let told = outputs
        .iter()
        .position(|o| matches!(o, Output::Ended { .. }));
    let written = outputs
        .iter()
        .rposition(|o| matches!(o, Output::Conditions(_)));
    assert!(told < written, "{outputs:?}");
}

#[test]
fn an_end_by_a_party_is_reported_and_an_unchanged_condition_is_not_rewritten() {
    let mut m = Machine::new(config(30, false), at(START));
    m.set_condition(condition::RECORDING, true, "Recording", "recording");
    m.set_condition(condition::RECORDING, true, "Recording", "recording");
    assert_eq!(drain(&mut m).len(), 1);
    m.end(EndReason::EndedByUser);
    assert_eq!(
        m.conditions()[condition::ENDED].message,
        "the session was ended: EndedByUser"
    );
}

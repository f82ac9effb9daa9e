//! Virtual-time tests of the grant a plan mints: its times, its consent, and when a token is
//! issued again.

use super::*;

#[test]
fn tokens_are_refreshed_before_they_run_out_but_not_past_the_end() {
    let mut w = World::new(scheduled());
    w.step(ts(START));
    // Four minutes left on the token: re-issue.
    let p = w.step(at(START, 11 * 60));
    assert!(matches!(p.access, AccessAction::Mint(_)));
    assert!(p.events.is_empty(), "a refresh is not news: {:?}", p.events);
    assert_eq!(
        p.status.access.unwrap().token_expires_at,
        Some(Time(at(START, 26 * 60)))
    );
    // Near the end the token is capped at the session end: no more refreshes.
    let p = w.step(at(START, 21 * 60));
    assert_eq!(
        p.status.access.clone().unwrap().token_expires_at,
        Some(Time(ts(END)))
    );
    let p = w.step(at(START, 27 * 60));
    assert_eq!(p.access, AccessAction::Keep);
    assert_eq!(
        p.requeue_after,
        Some(Duration::from_secs(60)),
        "wakes for the warning"
    );
}

#[test]
fn a_token_minted_from_an_older_spec_is_issued_again() {
    let mut w = World::new(scheduled());
    let first = w.step(ts(START));
    assert!(matches!(first.access, AccessAction::Mint(_)));
    assert_eq!(w.step(at(START, 1)).access, AccessAction::Keep);
    // The spec changed after the token was minted: the token follows it.
    w.session.metadata.generation = Some(4);
    assert!(matches!(w.step(at(START, 2)).access, AccessAction::Mint(_)));
    assert_eq!(w.step(at(START, 3)).access, AccessAction::Keep);
}

/// The grant a plan mints, when it mints one.
fn grant_of(p: &Plan) -> Grant {
    match p.access {
        AccessAction::Mint(grant) => grant,
        other => panic!("expected a token to be minted, got {other:?}"),
    }
}

#[test]
fn the_grant_is_what_the_status_says() {
    let mut w = World::new(scheduled());
    let p = w.step(at(START, 7));
    let grant = grant_of(&p);
    let access = p.status.access.clone().unwrap();
    assert_eq!(Some(Time(grant.ends_at)), p.status.expires_at);
    assert_eq!(Some(Time(grant.not_before)), p.status.scheduled_start);
    assert_eq!(access.token_expires_at, Some(Time(grant.expires_at)));
    assert_eq!(grant.expires_at, at(START, 7 + 900));
}

#[test]
fn a_grant_near_the_end_expires_with_the_session() {
    let mut w = World::new(scheduled());
    let grant = grant_of(&w.step(at(END, -60)));
    assert_eq!(grant.expires_at, ts(END));
    assert_eq!(grant.ends_at, ts(END));
}

#[test]
fn consent_is_part_of_the_grant() {
    let interactive = World::new(scheduled()).step(ts(START));
    assert!(grant_of(&interactive).consent);

    let unattended = session_with(serde_json::json!({
        "device": "laptop-1", "startTime": START, "duration": "30m", "mode": "Unattended"
    }));
    assert!(!grant_of(&World::new(unattended).step(ts(START))).consent);

    // A dynamic session decides its mode at the start, in the plan that mints the token.
    let dynamic = || {
        session_with(serde_json::json!({
            "device": "laptop-1", "startTime": START, "duration": "30m", "mode": "Dynamic"
        }))
    };
    let mut nobody = World::new(dynamic());
    nobody.device = Some(device(&[]));
    assert!(!grant_of(&nobody.step(ts(START))).consent);
    let someone = World::new(dynamic());
    assert!(grant_of(&someone.plan(ts(START))).consent);
}

#[test]
fn the_grant_carries_the_policies_consent_timeout() {
    let mut w = World::new(scheduled());
    w.consent_timeout = Some(Duration::from_secs(30));
    let grant = grant_of(&w.step(ts(START)));
    assert!(grant.consent);
    assert_eq!(grant.consent_timeout, Some(Duration::from_secs(30)));
}

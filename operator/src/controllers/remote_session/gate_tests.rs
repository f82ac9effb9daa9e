//! The policy gate in virtual time: business hours in two zones and across a DST change,
//! concurrency per namespace and per device, the line of waiting sessions, and failing closed.

use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::ObjectMeta;
use tether_crds::remote_session::{AccessStatus, RemoteSessionSpec, RemoteSessionStatus};

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn policy(yaml: &str) -> SessionPolicySpec {
    serde_yaml::from_str(yaml).unwrap()
}

/// A session on `device`, created at `created` (its window opens then).
fn session(name: &str, device: &str, created: &str) -> RemoteSession {
    let spec: RemoteSessionSpec =
        serde_json::from_value(serde_json::json!({"device": device, "duration": "1h"})).unwrap();
    let mut s = RemoteSession::new(name, spec);
    s.metadata = ObjectMeta {
        name: Some(name.into()),
        namespace: Some("helpdesk".into()),
        creation_timestamp: Some(Time(ts(created))),
        ..Default::default()
    };
    s
}

fn with_condition(mut s: RemoteSession, status: &str, reason: &str) -> RemoteSession {
    let st = s.status.get_or_insert_with(RemoteSessionStatus::default);
    st.conditions.push(Condition {
        type_: ct::ADMITTED.into(),
        status: status.into(),
        reason: reason.into(),
        message: String::new(),
        last_transition_time: Time(ts("2026-12-07T09:00:00Z")),
        observed_generation: None,
    });
    s
}

fn admitted_one(s: RemoteSession) -> RemoteSession {
    let mut s = with_condition(s, "True", reasons::ADMITTED);
    s.status.as_mut().unwrap().phase = Some(SessionPhase::Active);
    s
}

fn ended_one(s: RemoteSession) -> RemoteSession {
    let mut s = admitted_one(s);
    s.status.as_mut().unwrap().phase = Some(SessionPhase::Completed);
    s
}

fn judge(
    s: &RemoteSession,
    policies: &[(&str, &SessionPolicySpec)],
    peers: &[RemoteSession],
    now: &str,
) -> Verdict {
    let applicable: Vec<Applicable<'_>> = policies
        .iter()
        .map(|(name, spec)| Applicable { name, spec })
        .collect();
    gate(s, Some(&applicable), peers.iter(), ts(now))
}

const MADRID_OFFICE: &str = "businessHours:\n  timeZone: Europe/Madrid\n  windows: [{days: [Mon, Tue, Wed, Thu, Fri], start: '08:00', end: '18:00'}]\n";

#[test]
fn outside_business_hours_a_session_is_held_until_the_next_window_opens() {
    let p = policy(MADRID_OFFICE);
    // Saturday 2026-03-28, CET; the next window is Monday 08:00 CEST (after the change).
    let s = session("late", "laptop-1", "2026-03-28T10:00:00Z");
    match judge(&s, &[("helpdesk/office", &p)], &[], "2026-03-28T10:00:00Z") {
        Verdict::Hold {
            reason,
            message,
            until,
        } => {
            assert_eq!(reason, reasons::OUTSIDE_BUSINESS_HOURS);
            assert_eq!(until, Some(ts("2026-03-30T06:00:00Z")));
            assert!(
                message.starts_with("SessionPolicy helpdesk/office, rule businessHours: outside business hours (Mon,Tue,Wed,Thu,Fri 08:00–18:00 Europe/Madrid)"),
                "{message}"
            );
        }
        other => panic!("held, not {other:?}"),
    }
    // At the opening (Monday 08:00 local) it may start.
    assert_eq!(
        judge(&s, &[("helpdesk/office", &p)], &[], "2026-03-30T06:00:00Z"),
        Verdict::Admit
    );
}

#[test]
fn every_policy_s_hours_apply_and_refuse_denies_instead_of_holding() {
    let madrid = policy(MADRID_OFFICE);
    let new_york = policy(
        "businessHours:\n  timeZone: America/New_York\n  windows: [{days: [Mon, Tue, Wed, Thu, Fri], start: '08:00', end: '18:00'}]\n  outside: Refuse\n",
    );
    let s = session("s", "laptop-1", "2026-12-08T09:00:00Z");
    // Tuesday 10:00 in Madrid, 04:00 in New York: the cluster's Madrid hours are open, the
    // group's New York hours are not, and that group refuses.
    match judge(
        &s,
        &[
            ("tether-system/default", &madrid),
            ("helpdesk/us", &new_york),
        ],
        &[],
        "2026-12-08T09:00:00Z",
    ) {
        Verdict::Refuse { reason, message } => {
            assert_eq!(reason, reasons::OUTSIDE_BUSINESS_HOURS);
            assert!(
                message.starts_with("SessionPolicy helpdesk/us, rule businessHours"),
                "{message}"
            );
        }
        other => panic!("refused, not {other:?}"),
    }
    // 14:00 UTC: 15:00 in Madrid, 09:00 in New York; both open.
    assert_eq!(
        judge(
            &s,
            &[
                ("tether-system/default", &madrid),
                ("helpdesk/us", &new_york)
            ],
            &[],
            "2026-12-08T14:00:00Z"
        ),
        Verdict::Admit
    );
}

#[test]
fn a_policy_that_cannot_be_evaluated_or_is_not_loaded_holds_every_session() {
    let broken = policy(
        "businessHours:\n  timeZone: Atlantis/Capital\n  windows: [{days: [Mon], start: '08:00', end: '18:00'}]\n  outside: Refuse\n",
    );
    let s = session("s", "laptop-1", "2026-12-08T09:00:00Z");
    match judge(
        &s,
        &[("helpdesk/broken", &broken)],
        &[],
        "2026-12-08T09:00:00Z",
    ) {
        Verdict::Hold {
            reason,
            message,
            until,
        } => {
            assert_eq!(reason, reasons::INVALID_POLICY);
            assert_eq!(until, None);
            assert!(
                message.contains("unknown time zone \"Atlantis/Capital\""),
                "{message}"
            );
        }
        other => panic!("held, not {other:?}"),
    }
    assert!(matches!(
        gate(&s, None, std::iter::empty(), ts("2026-12-08T09:00:00Z")),
        Verdict::Hold {
            reason: reasons::POLICIES_NOT_LOADED,
            ..
        }
    ));
    // No policy at all: nothing to hold it.
    assert_eq!(judge(&s, &[], &[], "2026-12-08T09:00:00Z"), Verdict::Admit);
}

#[test]
fn the_namespace_limit_holds_the_next_session_until_one_ends() {
    let p = policy("concurrency: {perNamespace: 2}\n");
    let running = [
        admitted_one(session("a", "laptop-1", "2026-12-08T09:00:00Z")),
        admitted_one(session("b", "laptop-2", "2026-12-08T09:01:00Z")),
    ];
    let c = session("c", "laptop-3", "2026-12-08T09:02:00Z");
    match judge(
        &c,
        &[("helpdesk/limits", &p)],
        &running,
        "2026-12-08T09:02:00Z",
    ) {
        Verdict::Hold {
            reason,
            message,
            until,
        } => {
            assert_eq!(reason, reasons::NAMESPACE_LIMIT);
            assert_eq!(
                until, None,
                "woken by the end of another session, not by the clock"
            );
            assert!(
                message.contains("rule concurrency.perNamespace: 2 sessions"),
                "{message}"
            );
        }
        other => panic!("held, not {other:?}"),
    }
    let one_ended = [running[0].clone(), ended_one(running[1].clone())];
    assert_eq!(
        judge(
            &c,
            &[("helpdesk/limits", &p)],
            &one_ended,
            "2026-12-08T09:05:00Z"
        ),
        Verdict::Admit
    );
    // A session of a former version, holding credentials, holds its place too.
    let mut legacy = session("old", "laptop-4", "2026-12-08T08:00:00Z");
    legacy.status = Some(RemoteSessionStatus {
        phase: Some(SessionPhase::Active),
        access: Some(AccessStatus {
            secret_name: "old-access".into(),
            token_expires_at: None,
            revoked_at: None,
        }),
        ..Default::default()
    });
    let with_legacy = [one_ended[0].clone(), legacy];
    assert!(matches!(
        judge(
            &c,
            &[("helpdesk/limits", &p)],
            &with_legacy,
            "2026-12-08T09:05:00Z"
        ),
        Verdict::Hold { .. }
    ));
}

#[test]
fn two_sessions_racing_for_the_last_place_are_let_in_in_creation_order() {
    let p = policy("concurrency: {perNamespace: 1}\n");
    // Neither has been judged: each sees the other with no Admitted condition.
    let first = session("first", "laptop-1", "2026-12-08T09:00:00Z");
    let second = session("second", "laptop-2", "2026-12-08T09:00:01Z");
    let both = [first.clone(), second.clone()];
    let now = "2026-12-08T09:00:02Z";
    assert_eq!(
        judge(&first, &[("helpdesk/limits", &p)], &both, now),
        Verdict::Admit
    );
    assert!(matches!(
        judge(&second, &[("helpdesk/limits", &p)], &both, now),
        Verdict::Hold {
            reason: reasons::NAMESPACE_LIMIT,
            ..
        }
    ));
    // Same creation second: the name decides, the same way for both.
    let twin = session("a-twin", "laptop-3", "2026-12-08T09:00:00Z");
    let three = [first.clone(), twin.clone()];
    assert_eq!(
        judge(&twin, &[("helpdesk/limits", &p)], &three, now),
        Verdict::Admit
    );
    assert!(matches!(
        judge(&first, &[("helpdesk/limits", &p)], &three, now),
        Verdict::Hold { .. }
    ));
    // Held for another rule, the first is still ahead in line: it may be let in any moment.
    let held_first = with_condition(first.clone(), "False", reasons::DEVICE_LIMIT);
    assert!(matches!(
        judge(
            &second,
            &[("helpdesk/limits", &p)],
            &[held_first, second.clone()],
            now
        ),
        Verdict::Hold { .. }
    ));
    // A session whose window has not opened is not in line.
    let mut later = session("later", "laptop-4", "2026-12-08T08:00:00Z");
    later.spec.start_time = Some(Time(ts("2026-12-08T12:00:00Z")));
    assert_eq!(
        judge(&second, &[("helpdesk/limits", &p)], &[later], now),
        Verdict::Admit
    );
}

#[test]
fn the_device_limit_counts_only_that_device_and_does_not_block_other_devices() {
    let p = policy("concurrency: {perNamespace: 3, perDevice: 1}\n");
    let busy = admitted_one(session("a", "laptop-1", "2026-12-08T09:00:00Z"));
    // b waits for laptop-1, held for the device limit.
    let b = with_condition(
        session("b", "laptop-1", "2026-12-08T09:01:00Z"),
        "False",
        reasons::DEVICE_LIMIT,
    );
    let peers = [busy.clone(), b.clone()];
    match judge(&b, &[("helpdesk/one", &p)], &peers, "2026-12-08T09:02:00Z") {
        Verdict::Hold {
            reason, message, ..
        } => {
            assert_eq!(reason, reasons::DEVICE_LIMIT);
            assert!(
                message.contains("Device laptop-1 has 1 sessions"),
                "{message}"
            );
            assert!(message.ends_with("at most 1 at once (a)"), "{message}");
        }
        other => panic!("held, not {other:?}"),
    }
    // c, on another device and created after b, is not stuck behind b's device while the
    // namespace has room for both.
    let c = session("c", "laptop-2", "2026-12-08T09:01:30Z");
    assert_eq!(
        judge(
            &c,
            &[("helpdesk/one", &p)],
            &[busy, b.clone(), c.clone()],
            "2026-12-08T09:02:00Z"
        ),
        Verdict::Admit
    );
    // With room for two in the namespace, b (stuck behind a on laptop-1) keeps no place
    // from c. With room for one, once a ended, b could start at any moment: c waits behind
    // it rather than both taking the one place.
    let two = policy("concurrency: {perNamespace: 2, perDevice: 1}\n");
    let busy = admitted_one(session("a", "laptop-1", "2026-12-08T09:00:00Z"));
    let now = "2026-12-08T09:02:00Z";
    assert_eq!(
        judge(
            &c,
            &[("helpdesk/two", &two)],
            &[busy.clone(), b.clone()],
            now
        ),
        Verdict::Admit
    );
    let one = policy("concurrency: {perNamespace: 1, perDevice: 1}\n");
    assert!(matches!(
        judge(
            &c,
            &[("helpdesk/one", &one)],
            &[ended_one(busy), b.clone()],
            now
        ),
        Verdict::Hold {
            reason: reasons::NAMESPACE_LIMIT,
            ..
        }
    ));
    // Refuse instead of hold.
    let strict = policy("concurrency: {perDevice: 1, whenFull: Refuse}\n");
    let peers = [admitted_one(session(
        "a",
        "laptop-1",
        "2026-12-08T09:00:00Z",
    ))];
    assert!(matches!(
        judge(
            &b,
            &[("helpdesk/strict", &strict)],
            &peers,
            "2026-12-08T09:02:00Z"
        ),
        Verdict::Refuse {
            reason: reasons::DEVICE_LIMIT,
            ..
        }
    ));
}

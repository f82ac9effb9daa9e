//! Virtual-time tests of the schedule's runs (daylight-saving changes in two zones) and of
//! every decision of its plan: the run due, the missed-run rule, the concurrency policies, the
//! history limits, invalid and suspended schedules.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::ObjectMeta;
use tether_crds::remote_session::{RemoteSessionStatus, SessionPhase, annotations};
use tether_crds::session_schedule::SessionScheduleSpec;

use super::*;
use crate::controllers::session_schedule::cron::{Cron, time_zone};

fn ts(text: &str) -> Timestamp {
    text.parse().unwrap()
}

/// The runs of `schedule` in `zone` strictly after `after`, `n` of them.
fn runs(schedule: &str, zone: &str, after: &str, n: usize) -> Vec<String> {
    let cron = Cron::parse(schedule).unwrap();
    let tz = time_zone(zone).unwrap();
    let mut t = ts(after);
    (0..n)
        .map(|_| {
            t = cron.next_after(t, &tz).unwrap();
            t.to_string()
        })
        .collect()
}

#[test]
fn a_daily_run_in_the_skipped_hour_starts_as_late_after_the_change_and_once_in_the_repeated_one() {
    // Madrid skips 02:00–03:00 CET on 31 March 2030 and repeats 02:00–03:00 on 27 October.
    assert_eq!(
        runs("30 2 * * *", "Europe/Madrid", "2030-03-30T00:00:00Z", 3),
        [
            "2030-03-30T01:30:00Z", // 02:30 CET
            "2030-03-31T01:30:00Z", // 03:30 CEST: 02:30 does not exist that night
            "2030-04-01T00:30:00Z", // 02:30 CEST
        ]
    );
    assert_eq!(
        runs("30 2 * * *", "Europe/Madrid", "2030-10-26T12:00:00Z", 2),
        [
            "2030-10-27T00:30:00Z", // 02:30 CEST, the first 02:30 only
            "2030-10-28T01:30:00Z", // 02:30 CET
        ]
    );
    // New York skips 02:00–03:00 EST on 10 March 2030 and repeats 01:00–02:00 on 3 November.
    assert_eq!(
        runs("30 2 * * *", "America/New_York", "2030-03-09T12:00:00Z", 2),
        ["2030-03-10T07:30:00Z", "2030-03-11T06:30:00Z"] // 03:30 EDT, then 02:30 EDT
    );
    assert_eq!(
        runs("30 1 * * *", "America/New_York", "2030-11-02T12:00:00Z", 2),
        ["2030-11-03T05:30:00Z", "2030-11-04T06:30:00Z"] // 01:30 EDT once, then 01:30 EST
    );
}

#[test]
fn a_schedule_that_runs_every_hour_keeps_real_time_through_the_repeated_hour() {
    assert_eq!(
        runs("*/30 * * * *", "Europe/Madrid", "2030-10-27T00:00:00Z", 4),
        [
            "2030-10-27T00:30:00Z", // 02:30 CEST
            "2030-10-27T01:00:00Z", // 02:00 CET, the second time
            "2030-10-27T01:30:00Z", // 02:30 CET
            "2030-10-27T02:00:00Z", // 03:00 CET
        ]
    );
    // And through the skipped one: no run is lost or doubled.
    assert_eq!(
        runs("0 * * * *", "America/New_York", "2030-03-10T05:30:00Z", 3),
        [
            "2030-03-10T06:00:00Z", // 01:00 EST
            "2030-03-10T07:00:00Z", // 03:00 EDT (02:00 does not exist and maps here too)
            "2030-03-10T08:00:00Z", // 04:00 EDT
        ]
    );
}

#[test]
fn weekdays_follow_the_local_date_across_a_change() {
    // Friday 09:00 EST, then Monday 09:00 EDT: an hour earlier in UTC.
    assert_eq!(
        runs(
            "0 9 * * MON-FRI",
            "America/New_York",
            "2030-03-08T12:00:00Z",
            2
        ),
        ["2030-03-08T14:00:00Z", "2030-03-11T13:00:00Z"]
    );
    // Either day field may match when both are restricted; `*/n` counts as `*`.
    assert_eq!(
        runs("0 0 13 * FRI", "UTC", "2030-09-01T00:00:00Z", 3),
        [
            "2030-09-06T00:00:00Z",
            "2030-09-13T00:00:00Z",
            "2030-09-20T00:00:00Z"
        ]
    );
    assert_eq!(
        runs("0 12 */10 * SUN", "UTC", "2030-08-31T00:00:00Z", 2),
        ["2030-09-01T12:00:00Z", "2030-12-01T12:00:00Z"] // days 1, 11, 21, 31 that are Sundays
    );
}

#[test]
fn bad_schedules_say_what_is_wrong() {
    for (bad, want) in [
        ("61 * * * *", "minute 61 is out of range 0-59"),
        ("* 24 * * *", "hour 24 is out of range 0-23"),
        ("* * 0 * *", "day of month 0 is out of range 1-31"),
        ("* * * FOO *", "month \"FOO\" is not a number or a name"),
        ("* * * * 8", "day of week 8 is out of range 0-7"),
        ("*/0 * * * *", "minute step \"0\" is not a positive number"),
        ("5-1 * * * *", "minute range 5-1 runs backwards"),
        ("* * * *", "expected 5 fields"),
        ("@reboot", "unknown macro @reboot"),
    ] {
        let err = Cron::parse(bad).unwrap_err().to_string();
        assert!(err.contains(want), "{bad}: {err}");
    }
    assert_eq!(Cron::parse("@daily"), Cron::parse("0 0 * * *"));
    assert_eq!(Cron::parse("0 0 * * 7"), Cron::parse("0 0 * * SUN"));
    assert!(time_zone("Mars/Olympus_Mons").is_err());
    // 30 February never comes.
    let never = Cron::parse("0 0 30 2 *").unwrap();
    assert_eq!(
        never.next_after(ts("2030-01-01T00:00:00Z"), &time_zone("UTC").unwrap()),
        None
    );
}

// The plan.

const CREATED: &str = "2030-06-01T08:00:00Z";

fn schedule(spec: &str, last_schedule: Option<&str>) -> SessionSchedule {
    let spec: SessionScheduleSpec = serde_yaml::from_str(spec).unwrap();
    let mut s = SessionSchedule::new("patching", spec);
    s.metadata.namespace = Some("servers".into());
    s.metadata.uid = Some("uid-1".into());
    s.metadata.generation = Some(1);
    s.metadata.creation_timestamp = Some(Time(ts(CREATED)));
    s.status = last_schedule.map(|t| SessionScheduleStatus {
        last_schedule_time: Some(Time(ts(t))),
        ..Default::default()
    });
    s
}

const HOURLY: &str = "schedule: '0 * * * *'\ntimeZone: Europe/Madrid\nsessionTemplate:\n  device: db-1\n  duration: 30m\n";

fn session(name: &str, phase: Option<SessionPhase>, ended: Option<&str>) -> RemoteSession {
    let mut s = RemoteSession::new(
        name,
        serde_yaml::from_str("device: db-1\nduration: 30m\n").unwrap(),
    );
    s.metadata = ObjectMeta {
        name: Some(name.into()),
        owner_references: Some(vec![OwnerReference {
            uid: "uid-1".into(),
            controller: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    };
    s.status = Some(RemoteSessionStatus {
        phase,
        ended_at: ended.map(|t| Time(ts(t))),
        ..Default::default()
    });
    s
}

fn plan_at(schedule: &SessionSchedule, sessions: &[RemoteSession], now: &str) -> Plan {
    plan(Observed {
        schedule,
        sessions,
        now: ts(now),
    })
}

fn reasons(plan: &Plan) -> Vec<&'static str> {
    plan.events.iter().map(|e| e.reason).collect()
}

fn condition<'a>(
    plan: &'a Plan,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    tether_crds::conditions::find(&plan.status.conditions, type_).unwrap()
}

#[test]
fn before_the_first_run_nothing_starts_and_the_operator_wakes_exactly_at_it() {
    let s = schedule(HOURLY, None);
    let plan = plan_at(&s, &[], "2030-06-01T08:20:30Z");
    assert_eq!(plan.create, None);
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(39 * 60 + 30)));
    assert_eq!(
        plan.status.next_schedule_time,
        Some(Time(ts("2030-06-01T09:00:00Z")))
    );
    let ready = condition(&plan, ct::READY);
    assert_eq!(ready.status, "True");
    assert_eq!(
        ready.message,
        "next run at 2030-06-01T11:00:00+02:00[Europe/Madrid]"
    );
    assert_eq!(condition(&plan, ct::INVALID).status, "False");
}

#[test]
fn a_due_run_creates_its_session_at_the_run_time_and_a_retry_creates_nothing_more() {
    let s = schedule(HOURLY, None);
    let plan = plan_at(&s, &[], "2030-06-01T09:00:00.004Z");
    let new = plan.create.clone().unwrap();
    let minutes = ts("2030-06-01T09:00:00Z").as_second() / 60;
    assert_eq!(new.name, format!("patching-{minutes}"));
    assert_eq!(new.spec.start_time, Some(Time(ts("2030-06-01T09:00:00Z"))));
    assert_eq!(new.spec.device, "db-1");
    assert_eq!(plan.status.active, vec![new.name.clone()]);
    assert_eq!(
        plan.status.last_schedule_time,
        Some(Time(ts("2030-06-01T09:00:00Z")))
    );
    // Woken a little before 10:00 (timers are not exact): nothing yet, wake at 10:00.
    assert_eq!(plan.requeue_after, Some(Duration::from_millis(3_599_996)));

    // The status write was lost: the next reconcile finds the session and creates nothing.
    let existing = session(&new.name, Some(SessionPhase::Pending), None);
    let retry = plan_at(&s, &[existing], "2030-06-01T09:00:02Z");
    assert_eq!(retry.create, None);
    assert_eq!(
        retry.status.last_schedule_time,
        plan.status.last_schedule_time
    );
    assert_eq!(retry.status.active, vec![new.name]);
    assert!(reasons(&retry).is_empty(), "{:?}", retry.events);
}

#[test]
fn after_an_outage_only_the_most_recent_missed_run_starts() {
    // Down from 09:00 to 11:20: the 10:00 and 11:00 runs were missed (and 09:00 was done).
    let s = schedule(HOURLY, Some("2030-06-01T09:00:00Z"));
    let plan = plan_at(&s, &[], "2030-06-01T11:20:00Z");
    let new = plan.create.clone().unwrap();
    assert_eq!(new.run, ts("2030-06-01T11:00:00Z"));
    // The window still counts from the run time: 10 minutes of the 30 are left.
    assert_eq!(new.spec.start_time, Some(Time(ts("2030-06-01T11:00:00Z"))));
    assert_eq!(reasons(&plan), ["MissedRun"]);
    assert!(
        plan.events[0]
            .note
            .contains("Skipped 1 run missed before the run at 2030-06-01T11:00:00Z")
    );

    // Its window has closed: skipped too, and not looked at again.
    let plan = plan_at(&s, &[], "2030-06-01T11:45:00Z");
    assert_eq!(plan.create, None);
    assert_eq!(reasons(&plan), ["MissedRun", "MissedRun"]);
    assert!(
        plan.events[1]
            .note
            .contains("its session's window closed at 2030-06-01T11:30:00Z")
    );
    assert_eq!(
        plan.status.last_schedule_time,
        Some(Time(ts("2030-06-01T11:00:00Z")))
    );
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(15 * 60)));

    // With startingDeadlineSeconds: at most that late.
    let deadline = schedule(
        &format!("{HOURLY}startingDeadlineSeconds: 300\n"),
        Some("2030-06-01T11:00:00Z"),
    );
    let late = plan_at(&deadline, &[], "2030-06-01T12:06:00Z");
    assert_eq!(late.create, None);
    assert!(
        late.events[0]
            .note
            .contains("it is 360s late, more than startingDeadlineSeconds (300)")
    );
    let in_time = plan_at(&deadline, &[], "2030-06-01T12:04:59Z");
    assert_eq!(in_time.create.unwrap().run, ts("2030-06-01T12:00:00Z"));

    // A year-long outage of a minutely schedule: still only one run, and a bounded count.
    let minutely = schedule(
        "schedule: '* * * * *'\nsessionTemplate:\n  device: db-1\n",
        Some("2029-06-01T00:00:00Z"),
    );
    let plan = plan_at(&minutely, &[], "2030-06-01T12:00:30Z");
    assert_eq!(plan.create.unwrap().run, ts("2030-06-01T12:00:00Z"));
    assert!(plan.events[0].note.contains("more than 100 runs"));
}

#[test]
fn forbid_skips_a_run_while_a_session_lives_allow_starts_beside_it_replace_ends_it() {
    let running = session("patching-1", Some(SessionPhase::Active), None);
    let forbid = schedule(HOURLY, Some("2030-06-01T09:00:00Z"));
    let plan = plan_at(
        &forbid,
        std::slice::from_ref(&running),
        "2030-06-01T10:00:01Z",
    );
    assert_eq!(plan.create, None);
    assert_eq!(reasons(&plan), ["RunSkipped"]);
    assert!(
        plan.events[0]
            .note
            .contains("RemoteSession patching-1 has not ended (concurrencyPolicy Forbid)")
    );
    assert_eq!(plan.status.active, ["patching-1"]);
    // The skipped run is done with: it does not start when the session ends.
    assert_eq!(
        plan.status.last_schedule_time,
        Some(Time(ts("2030-06-01T10:00:00Z")))
    );

    let allow = schedule(
        &format!("{HOURLY}concurrencyPolicy: Allow\n"),
        Some("2030-06-01T09:00:00Z"),
    );
    let plan = plan_at(
        &allow,
        std::slice::from_ref(&running),
        "2030-06-01T10:00:01Z",
    );
    let new = plan.create.unwrap();
    assert!(plan.terminate.is_empty());
    assert_eq!(plan.status.active, vec!["patching-1".to_owned(), new.name]);

    let replace = schedule(
        &format!("{HOURLY}concurrencyPolicy: Replace\n"),
        Some("2030-06-01T09:00:00Z"),
    );
    let mut ending = session("patching-0", Some(SessionPhase::Pending), None);
    ending.metadata.annotations =
        Some([(annotations::TERMINATED_BY.to_owned(), "admin".to_owned())].into());
    let plan = plan_at(&replace, &[running, ending], "2030-06-01T10:00:01Z");
    assert!(plan.create.is_some());
    assert_eq!(
        plan.terminate,
        [(
            "patching-1".to_owned(),
            "replaced by the schedule's run at 2030-06-01T10:00:00Z".to_owned()
        )],
        "a session already being ended is left to end"
    );
    assert_eq!(reasons(&plan), ["SessionReplaced"]);
}

#[test]
fn ended_sessions_beyond_the_history_limits_are_deleted_oldest_first() {
    let s = schedule(
        &format!("{HOURLY}successfulSessionsHistoryLimit: 2\nfailedSessionsHistoryLimit: 1\n"),
        Some("2030-06-01T09:00:00Z"),
    );
    let sessions = [
        session(
            "ok-1",
            Some(SessionPhase::Expired),
            Some("2030-06-01T01:30:00Z"),
        ),
        session(
            "ok-2",
            Some(SessionPhase::Completed),
            Some("2030-06-01T02:10:00Z"),
        ),
        session(
            "ok-3",
            Some(SessionPhase::Expired),
            Some("2030-06-01T03:30:00Z"),
        ),
        session(
            "bad-1",
            Some(SessionPhase::Failed),
            Some("2030-06-01T04:00:00Z"),
        ),
        session(
            "bad-2",
            Some(SessionPhase::Terminated),
            Some("2030-06-01T05:00:00Z"),
        ),
        session(
            "bad-3",
            Some(SessionPhase::Denied),
            Some("2030-06-01T06:00:00Z"),
        ),
        session("live", Some(SessionPhase::Active), None),
        session("new", None, None),
    ];
    let plan = plan_at(&s, &sessions, "2030-06-01T09:10:00Z");
    assert_eq!(plan.delete, ["ok-1", "bad-2", "bad-1"]);
    assert_eq!(
        plan.status.last_successful_time,
        Some(Time(ts("2030-06-01T03:30:00Z")))
    );
    assert_eq!(plan.status.active, ["live", "new"]);
    assert_eq!(
        reasons(&plan),
        ["SessionDeleted", "SessionDeleted", "SessionDeleted"]
    );

    // A session being deleted is out of the history already.
    let mut sessions = sessions;
    sessions[0].metadata.deletion_timestamp = Some(Time(ts("2030-06-01T09:09:00Z")));
    let plan = plan_at(&s, &sessions, "2030-06-01T09:10:00Z");
    assert_eq!(plan.delete, ["bad-2", "bad-1"]);
}

#[test]
fn an_invalid_schedule_or_zone_is_reported_once_and_waits_for_a_change() {
    for (spec, reason, message) in [
        (
            "schedule: '61 * * * *'\nsessionTemplate:\n  device: db-1\n",
            "InvalidSchedule",
            "schedule \"61 * * * *\": minute 61 is out of range 0-59",
        ),
        (
            "schedule: '0 0 30 2 *'\nsessionTemplate:\n  device: db-1\n",
            "InvalidSchedule",
            "schedule \"0 0 30 2 *\" never runs",
        ),
        (
            "schedule: '@daily'\ntimeZone: Mars/Olympus_Mons\nsessionTemplate:\n  device: db-1\n",
            "InvalidTimeZone",
            "time zone \"Mars/Olympus_Mons\" is not in the time zone database",
        ),
    ] {
        let mut s = schedule(spec, None);
        let plan = plan_at(&s, &[], "2030-06-02T00:00:00Z");
        assert_eq!(plan.create, None);
        assert_eq!(plan.requeue_after, None);
        let invalid = condition(&plan, ct::INVALID);
        assert_eq!(
            (invalid.status.as_str(), invalid.reason.as_str()),
            ("True", reason)
        );
        assert!(invalid.message.contains(message), "{}", invalid.message);
        assert_eq!(condition(&plan, ct::READY).status, "False");
        assert_eq!(reasons(&plan), [reason]);
        // Reported once: the next reconcile publishes nothing new.
        s.status = Some(plan.status.clone());
        let again = plan_at(&s, &[], "2030-06-02T00:01:00Z");
        assert!(again.events.is_empty());
        assert_eq!(again.status.conditions, plan.status.conditions);
    }
}

#[test]
fn a_suspended_schedule_starts_nothing_and_resumes_by_the_missed_run_rule() {
    let suspended = schedule(
        &format!("{HOURLY}suspend: true\n"),
        Some("2030-06-01T09:00:00Z"),
    );
    let plan = plan_at(&suspended, &[], "2030-06-01T12:10:00Z");
    assert_eq!(plan.create, None);
    assert_eq!(plan.requeue_after, None);
    assert_eq!(plan.status.next_schedule_time, None);
    assert_eq!(condition(&plan, ct::READY).reason, "Suspended");
    // Resumed at 12:10: the 12:00 run's window is still open.
    let resumed = schedule(HOURLY, Some("2030-06-01T09:00:00Z"));
    let plan = plan_at(&resumed, &[], "2030-06-01T12:10:00Z");
    assert_eq!(plan.create.unwrap().run, ts("2030-06-01T12:00:00Z"));
}

#[test]
fn a_refused_session_holds_ready_false_until_the_next_run_starts_one() {
    let s = schedule(HOURLY, None);
    let mut plan = plan_at(&s, &[], "2030-06-01T09:00:01Z");
    let name = plan.create.clone().unwrap().name;
    refused(
        &mut plan.status,
        &name,
        "spec.duration 30m exceeds the cluster maximum",
        ts("2030-06-01T09:00:01Z"),
    );
    assert!(plan.status.active.is_empty());
    let mut s = s;
    s.status = Some(plan.status.clone());
    let later = plan_at(&s, &[], "2030-06-01T09:30:00Z");
    let ready = condition(&later, ct::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", SESSION_REFUSED)
    );
    assert!(ready.message.contains("exceeds the cluster maximum"));
    let next = plan_at(&s, &[], "2030-06-01T10:00:00Z");
    assert!(next.create.is_some());
    assert_eq!(condition(&next, ct::READY).status, "True");
}

#[test]
fn the_longest_schedule_name_leaves_room_for_any_run_time_in_its_sessions_names() {
    use tether_crds::limits::{SCHEDULE_NAME_MAX, SESSION_NAME_MAX};
    let longest = "s".repeat(SCHEDULE_NAME_MAX);
    let last = ts("2999-12-31T23:59:00Z");
    let name = session_name(&longest, last);
    assert!(
        name.len() <= SESSION_NAME_MAX,
        "{name} is {} characters",
        name.len()
    );
    // Deterministic per run time, different for the next minute.
    assert_eq!(session_name("s", last), session_name("s", last));
    assert_ne!(
        session_name("s", last),
        session_name("s", ts("2999-12-31T23:58:00Z"))
    );
}

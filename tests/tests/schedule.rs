//! SessionSchedules against a real API server and a real operator process: a schedule every
//! minute stamps sessions that start on the minute, one per run, and keeps its history limit;
//! a `Replace` schedule ends its running session (through the admission-checked termination
//! annotation, naming the operator) when the next run starts; the API server refuses a
//! schedule that is not cron, and the operator reports what the schema cannot check.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use tether_crds::RemoteSession;
use tether_crds::remote_session::SessionPhase;
use tether_crds::session_schedule::{SCHEDULE_LABEL, SessionSchedule, condition_types as ct};
use tether_e2e::lifecycle::{Env, event_reasons, setup, wait_phase};
use tether_e2e::{OPERATOR_USER, PATIENCE, TEST_MANAGER, control_plane, eventually, kubectl_apply};

/// Long enough for the next minute boundary on a busy machine.
const NEXT_RUN: Duration = Duration::from_secs(90);

fn manifest(name: &str, spec: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "SessionSchedule",
        "metadata": {"name": name},
        "spec": spec,
    })
}

async fn apply(env: &Env, name: &str, spec: serde_json::Value) -> Result<SessionSchedule, String> {
    Api::<SessionSchedule>::namespaced(env.admin.clone(), &env.ns)
        .patch(
            name,
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(&manifest(name, spec)),
        )
        .await
        .map_err(|e| e.to_string())
}

/// The sessions of schedule `name`, oldest run first.
async fn sessions_of(env: &Env, name: &str) -> Vec<RemoteSession> {
    let mut list = env
        .sessions
        .list(&ListParams::default().labels(&format!("{SCHEDULE_LABEL}={name}")))
        .await
        .unwrap()
        .items;
    list.sort_by_key(|s| s.spec.start_time.clone().map(|t| t.0));
    list
}

/// Waits until `check` holds for schedule `name`, and returns it.
async fn wait_schedule(
    env: &Env,
    name: &str,
    what: &str,
    check: impl Fn(&SessionSchedule) -> bool,
) -> SessionSchedule {
    let api: Api<SessionSchedule> = Api::namespaced(env.admin.clone(), &env.ns);
    eventually(&format!("{name}: {what}"), PATIENCE, || {
        let api = api.clone();
        let check = &check;
        async move { api.get(name).await.ok().filter(|s| check(s)) }
    })
    .await
}

fn condition<'a>(
    schedule: &'a SessionSchedule,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    tether_crds::conditions::find(&schedule.status.as_ref()?.conditions, type_)
}

/// Waits until schedule `name` has a session for the run at `run`, and returns it.
async fn wait_run(env: &Env, name: &str, run: i64) -> RemoteSession {
    let session = format!("{name}-{}", run / 60);
    eventually(&format!("{session} is created"), NEXT_RUN, || async {
        env.sessions.get_opt(&session).await.unwrap()
    })
    .await
}

fn start_of(session: &RemoteSession) -> i64 {
    session.spec.start_time.as_ref().unwrap().0.as_second()
}

#[tokio::test]
async fn a_schedule_every_minute_stamps_sessions_on_the_minute_and_keeps_its_history() {
    let env = setup("schedule").await;

    // What the API server refuses, and what the operator reports.
    let err = apply(
        &env,
        "prose",
        serde_json::json!({"schedule": "every minute", "sessionTemplate": {"device": "laptop"}}),
    )
    .await
    .unwrap_err();
    assert!(err.contains("schedule must be five cron fields"), "{err}");
    // The template has no startTime (each run's time is the session's): kubectl says so.
    let out = kubectl_apply(
        control_plane(),
        "admin",
        &env.ns,
        "apiVersion: tether.dev/v1alpha1\nkind: SessionSchedule\nmetadata:\n  name: with-start\nspec:\n  schedule: '@daily'\n  sessionTemplate:\n    device: laptop\n    startTime: '2030-01-01T00:00:00Z'\n",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown field \"spec.sessionTemplate.startTime\""),
        "{err}"
    );
    for (name, spec, reason, message) in [
        (
            "minute-61",
            serde_json::json!({"schedule": "61 * * * *", "sessionTemplate": {"device": "laptop"}}),
            "InvalidSchedule",
            "minute 61 is out of range 0-59",
        ),
        (
            "on-mars",
            serde_json::json!({"schedule": "@daily", "timeZone": "Mars/Olympus_Mons", "sessionTemplate": {"device": "laptop"}}),
            "InvalidTimeZone",
            "time zone \"Mars/Olympus_Mons\" is not in the time zone database",
        ),
    ] {
        apply(&env, name, spec).await.unwrap();
        let invalid = wait_schedule(&env, name, "Invalid", |s| {
            condition(s, ct::INVALID).is_some_and(|c| c.status == "True")
        })
        .await;
        let c = condition(&invalid, ct::INVALID).unwrap();
        assert_eq!(c.reason, reason);
        assert!(c.message.contains(message), "{}", c.message);
        assert_eq!(condition(&invalid, ct::READY).unwrap().status, "False");
    }

    // Every minute in Madrid: sessions of 5 s, keeping one that succeeded. Beside it, a
    // schedule whose 10-minute sessions are replaced by the next run.
    let template = |device: &str, duration: &str| serde_json::json!({"device": device, "mode": "Unattended", "duration": duration, "recording": "Disabled"});
    let minutely = apply(
        &env,
        "minutely",
        serde_json::json!({
            "schedule": "* * * * *",
            "timeZone": "Europe/Madrid",
            "sessionTemplate": template("laptop", "5s"),
            "successfulSessionsHistoryLimit": 1,
        }),
    )
    .await
    .unwrap();
    let replacing = apply(
        &env,
        "replacing",
        serde_json::json!({
            "schedule": "* * * * *",
            "concurrencyPolicy": "Replace",
            "sessionTemplate": template("kiosk", "10m"),
        }),
    )
    .await
    .unwrap();
    let created = minutely
        .metadata
        .creation_timestamp
        .as_ref()
        .unwrap()
        .0
        .as_second();
    let first_run = (created / 60 + 1) * 60;
    let ready = wait_schedule(&env, "minutely", "Ready", |s| {
        condition(s, ct::READY).is_some_and(|c| c.status == "True")
    })
    .await;
    assert_eq!(
        ready
            .status
            .unwrap()
            .next_schedule_time
            .unwrap()
            .0
            .as_second(),
        first_run
    );

    // The first run: on the minute, named after it, labelled and owned by the schedule.
    let first = wait_run(&env, "minutely", first_run).await;
    assert_eq!(start_of(&first), first_run);
    let lag = first
        .metadata
        .creation_timestamp
        .as_ref()
        .unwrap()
        .0
        .as_second()
        - first_run;
    eprintln!("the first session was created {lag}s after its run time");
    assert!((0..=10).contains(&lag), "created {lag}s after its run");
    let owner = &first.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.uid, minutely.metadata.uid.clone().unwrap());
    assert_eq!(owner.controller, Some(true));
    assert_eq!(first.spec.device, "laptop");
    let first_name = first.metadata.name.clone().unwrap();
    wait_phase(&env, &first_name, SessionPhase::Expired).await;
    let after_first = wait_schedule(&env, "minutely", "the first session has succeeded", |s| {
        s.status
            .as_ref()
            .is_some_and(|st| st.last_successful_time.is_some() && st.active.is_empty())
    })
    .await;
    let status = after_first.status.unwrap();
    assert_eq!(status.last_schedule_time.unwrap().0.as_second(), first_run);
    assert_eq!(
        status.next_schedule_time.unwrap().0.as_second(),
        first_run + 60
    );

    // The Replace schedule's first session is waiting for its agent.
    let replaced = wait_run(&env, "replacing", first_run).await;
    let replaced_name = replaced.metadata.name.clone().unwrap();
    assert_eq!(
        replacing.metadata.uid,
        Some(replaced.metadata.owner_references.unwrap()[0].uid.clone())
    );
    wait_phase(&env, &replaced_name, SessionPhase::Pending).await;

    // The next minute: a second session, and the first one (the older success) is deleted.
    let second = wait_run(&env, "minutely", first_run + 60).await;
    assert_eq!(start_of(&second), first_run + 60);
    let second_name = second.metadata.name.clone().unwrap();
    wait_phase(&env, &second_name, SessionPhase::Expired).await;
    eventually(
        "the older session is deleted (history limit 1)",
        PATIENCE,
        || async {
            let names: Vec<String> = sessions_of(&env, "minutely")
                .await
                .into_iter()
                .filter_map(|s| s.metadata.name)
                .collect();
            (names == [second_name.clone()]).then_some(())
        },
    )
    .await;
    // (Events of one reason form one series, so each reason is listed once.)
    eventually(
        "the schedule's Events say what it did",
        PATIENCE,
        || async {
            let reasons = event_reasons(&env, "minutely").await;
            (reasons.contains(&"SessionCreated".to_owned())
                && reasons.contains(&"SessionDeleted".to_owned()))
            .then_some(())
        },
    )
    .await;

    // The Replace schedule ended its first session as the operator, and started the next.
    let ended = wait_phase(&env, &replaced_name, SessionPhase::Terminated).await;
    let message = ended.status.unwrap().message.unwrap_or_default();
    assert!(
        message.contains(&format!("terminated by {OPERATOR_USER}"))
            && message.contains("replaced by the schedule's run at"),
        "{message}"
    );
    let successor = wait_run(&env, "replacing", first_run + 60).await;
    assert_ne!(
        successor.metadata.name.as_deref(),
        Some(replaced_name.as_str())
    );
    let now = Timestamp::now().as_second();
    eprintln!(
        "the test's runs were at {first_run} and {}; now {now}",
        first_run + 60
    );
}

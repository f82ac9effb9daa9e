//! The SessionPolicy rules the operator enforces itself, against a real API server and a real
//! operator process: business hours hold a session until a real window opens (and refuse one
//! outside them when the policy says so), and concurrency limits per Device and per namespace
//! hold the next session until one ends, in the order sessions were created.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use std::time::Duration;

use jiff::{Timestamp, ToSpan};
use kube::api::{Api, Patch, PatchParams};
use tether_crds::remote_session::{RemoteSession, SessionPhase, condition_types as ct};
use tether_crds::{Device, SessionPolicy};
use tether_e2e::lifecycle::{
    Env, access_secret, apply, event_reasons, setup, tether_cli, wait_phase,
};
use tether_e2e::{PATIENCE, TEST_MANAGER, eventually};

/// Applies SessionPolicy `name` with `spec` in the test's namespace.
async fn policy(env: &Env, name: &str, spec: serde_json::Value) {
    let api: Api<SessionPolicy> = Api::namespaced(env.admin.clone(), &env.ns);
    let manifest = serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "SessionPolicy",
        "metadata": {"name": name}, "spec": spec,
    });
    api.patch(
        name,
        &PatchParams::apply(TEST_MANAGER),
        &Patch::Apply(&manifest),
    )
    .await
    .unwrap();
}

/// The session's `Admitted` condition as (status, reason, message), once it has one that
/// `want` accepts.
async fn admitted(
    env: &Env,
    name: &str,
    timeout: Duration,
    want: impl Fn(&str, &str) -> bool,
) -> (String, String, String, Timestamp) {
    let found = tokio::time::timeout(
        timeout,
        eventually(
            &format!("{name}'s Admitted condition"),
            timeout * 2,
            || async {
                let s: RemoteSession = env.sessions.get(name).await.ok()?;
                let c = s
                    .status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == ct::ADMITTED)?;
                want(&c.status, &c.reason).then_some((
                    c.status,
                    c.reason,
                    c.message,
                    c.last_transition_time.0,
                ))
            },
        ),
    )
    .await;
    match found {
        Ok(found) => found,
        Err(_) => {
            // Say what the session and the operator were doing.
            let status = env.sessions.get(name).await.map(|s| s.status);
            panic!(
                "timed out after {timeout:?} waiting for {name}'s Admitted condition; it is {status:?}\noperator:\n{}",
                env.operator.process.log_tail(60)
            );
        }
    }
}

fn held(reason: &'static str) -> impl Fn(&str, &str) -> bool {
    move |status, r| status == "False" && r == reason
}

fn let_in(status: &str, _: &str) -> bool {
    status == "True"
}

/// `HH:MM` in UTC.
fn clock(t: Timestamp) -> String {
    t.strftime("%H:%M").to_string()
}

#[tokio::test]
async fn business_hours_hold_a_session_until_the_window_opens_and_refuse_outside_them() {
    let env = setup("hours").await;
    // A window that opens at the next minute boundary (or the one after, if that is too
    // close to create the session before it) and lasts three minutes, every day, in UTC.
    let now = Timestamp::now();
    let minute = now.as_second() - now.as_second().rem_euclid(60);
    let mut opens = Timestamp::from_second(minute + 60).unwrap();
    if opens.duration_since(now).as_secs() < 15 {
        opens += 60.seconds();
    }
    let every_day = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    policy(
        &env,
        "office",
        serde_json::json!({"businessHours": {
            "timeZone": "UTC",
            "windows": [{"days": every_day, "start": clock(opens), "end": clock(opens + 3.minutes())}],
        }}),
    )
    .await;
    apply(
        &env,
        "early",
        serde_json::json!({"device": "laptop", "duration": "30m"}),
    )
    .await;

    let (_, _, message, _) = admitted(&env, "early", PATIENCE, held("OutsideBusinessHours")).await;
    assert!(
        message.starts_with(&format!(
            "SessionPolicy {}/office, rule businessHours: outside business hours",
            env.ns
        )),
        "{message}"
    );
    assert!(
        message.contains(&format!("the next window opens at {opens}")),
        "{message}"
    );
    let pending = wait_phase(&env, "early", SessionPhase::Pending).await;
    assert_eq!(
        pending.status.as_ref().unwrap().reason.as_deref(),
        Some("OutsideBusinessHours")
    );
    assert!(
        access_secret(&env, "early").await.is_none(),
        "no credentials while held"
    );
    assert!(
        event_reasons(&env, "early")
            .await
            .contains(&"HeldByPolicy".to_owned())
    );

    // The window opens: admitted on time (conditions have second precision), credentials
    // issued, nothing else in its way.
    let (_, _, _, at) = admitted(&env, "early", Duration::from_secs(150), let_in).await;
    assert!(
        at >= opens,
        "admitted at {at}, before the window opened at {opens}"
    );
    eventually("the access Secret exists", PATIENCE, || {
        access_secret(&env, "early")
    })
    .await;
    let waiting = eventually("early waits for its agent", PATIENCE, || async {
        let s = env.sessions.get("early").await.ok()?;
        (s.status.as_ref()?.reason.as_deref() == Some("WaitingForAgent")).then_some(s)
    })
    .await;
    assert_eq!(waiting.status.unwrap().phase, Some(SessionPhase::Pending));
    assert!(
        event_reasons(&env, "early")
            .await
            .contains(&"Admitted".to_owned())
    );

    // A policy that refuses sessions outside its hours (only on a day that is not today)
    // denies new ones, naming itself; the session admitted earlier is left alone.
    let tomorrow = (Timestamp::now() + 24.hours()).strftime("%a").to_string();
    policy(
        &env,
        "office",
        serde_json::json!({"businessHours": {
            "timeZone": "UTC",
            "windows": [{"days": [tomorrow], "start": "00:00", "end": "00:01"}],
            "outside": "Refuse",
        }}),
    )
    .await;
    // The operator learns of the change through its watch: a session it judged before then
    // is admitted (the old window is open), so try again until one meets the new policy.
    let denied = 'attempts: {
        for attempt in 1..=5 {
            let name = format!("late-{attempt}");
            apply(
                &env,
                &name,
                serde_json::json!({"device": "kiosk", "duration": "30m"}),
            )
            .await;
            let (status, _, _, _) = admitted(&env, &name, PATIENCE, |_, _| true).await;
            if status == "False" {
                break 'attempts wait_phase(&env, &name, SessionPhase::Denied).await;
            }
        }
        panic!("the policy change never reached the operator");
    };
    let status = denied.status.unwrap();
    assert_eq!(status.phase, Some(SessionPhase::Denied));
    assert_eq!(status.reason.as_deref(), Some("OutsideBusinessHours"));
    assert!(
        status.message.as_deref().unwrap().starts_with(&format!(
            "SessionPolicy {}/office, rule businessHours",
            env.ns
        )),
        "{:?}",
        status.message
    );
    let early = env.sessions.get("early").await.unwrap();
    assert_eq!(early.status.unwrap().phase, Some(SessionPhase::Pending));
}

#[tokio::test]
async fn concurrency_limits_hold_the_next_session_until_one_ends() {
    let env = setup("limits").await;
    let devices: Api<Device> = Api::namespaced(env.admin.clone(), &env.ns);
    let desk = serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Device",
        "metadata": {"name": "desk"}, "spec": {},
    });
    devices
        .patch(
            "desk",
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(&desk),
        )
        .await
        .unwrap();
    // A policy stored before a session applies to it: the operator reads the policies
    // afresh when a session's window opens.
    policy(
        &env,
        "limits",
        serde_json::json!({"concurrency": {"perNamespace": 2, "perDevice": 1}}),
    )
    .await;
    apply(
        &env,
        "a",
        serde_json::json!({"device": "laptop", "duration": "30m"}),
    )
    .await;
    admitted(&env, "a", PATIENCE, let_in).await;
    let session = |device: &str| serde_json::json!({"device": device, "duration": "30m"});
    apply(&env, "b", session("laptop")).await;
    let (_, _, message, _) = admitted(&env, "b", PATIENCE, held("DeviceSessionLimit")).await;
    assert!(
        message.contains("rule concurrency.perDevice: Device laptop has 1 sessions"),
        "{message}"
    );
    assert!(message.ends_with("at most 1 at once (a)"), "{message}");
    // c, on another device, fits in the namespace; d then finds the namespace full (a and c
    // run, b waits ahead of it).
    apply(&env, "c", session("kiosk")).await;
    admitted(&env, "c", PATIENCE, let_in).await;
    apply(&env, "d", session("desk")).await;
    let (_, _, message, _) = admitted(&env, "d", PATIENCE, held("NamespaceSessionLimit")).await;
    assert!(
        message.contains("rule concurrency.perNamespace"),
        "{message}"
    );
    assert!(access_secret(&env, "b").await.is_none());
    assert!(access_secret(&env, "d").await.is_none());

    // a ends: b, first in line, takes its place; d still waits (c and b run).
    let out = tether_cli("admin", &env.ns, &["terminate", "a", "--no-wait"]);
    assert!(out.status.success(), "{out:?}");
    admitted(&env, "b", PATIENCE, let_in).await;
    eventually("the access Secret of b exists", PATIENCE, || {
        access_secret(&env, "b")
    })
    .await;
    let d = env.sessions.get("d").await.unwrap();
    let d_admitted = d
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == ct::ADMITTED)
        .unwrap();
    assert_eq!(d_admitted.status, "False", "d waits while c and b run");

    // c ends: d starts.
    let out = tether_cli("admin", &env.ns, &["terminate", "c", "--no-wait"]);
    assert!(out.status.success(), "{out:?}");
    admitted(&env, "d", PATIENCE, let_in).await;

    // With whenFull: Refuse, a session over a limit is denied instead.
    policy(
        &env,
        "limits",
        serde_json::json!({"concurrency": {"perNamespace": 2, "perDevice": 1, "whenFull": "Refuse"}}),
    )
    .await;
    // b and d run: the namespace is full. Judged before the operator saw the change, e is
    // held; the change wakes it and it is judged again.
    apply(&env, "e", session("kiosk")).await;
    let denied = wait_phase(&env, "e", SessionPhase::Denied).await;
    let status = denied.status.unwrap();
    assert_eq!(status.reason.as_deref(), Some("NamespaceSessionLimit"));
    assert!(
        status.message.as_deref().unwrap().starts_with(&format!(
            "SessionPolicy {}/limits, rule concurrency.perNamespace",
            env.ns
        )),
        "{:?}",
        status.message
    );
}

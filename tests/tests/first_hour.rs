//! What a new user trips over in the first hour, against a real API server and real
//! processes: requests the cluster cannot carry out are refused or held before approval, a
//! requester asks again for their own reusable request, a device's inventory outlives its
//! disconnection, a session that must be recorded says when it cannot be, lateness is not
//! blamed on the operator for what happened before it ran, and the notifications metric is
//! there from the start. Operating it (SIGTERM, rotations) is in `operations.rs`.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use kube::api::{Api, Patch, PatchParams};
use tether_crds::assistance_request::RequestPhase;
use tether_crds::remote_session::SessionPhase;
use tether_crds::{AssistanceRequest, Device, RemoteSession};
use tether_e2e::output::{fails, ok};
use tether_e2e::requests::{Env, tether};
use tether_e2e::{
    Operator, PATIENCE, TEST_MANAGER, control_plane, eventually, kubectl, kubectl_ok,
};

/// The chart's parts these tests need, with its default values (8h maximum session).
const TEMPLATES: &[&str] = &[
    "templates/operator-rbac.yaml",
    "templates/relay-rbac.yaml",
    "templates/admission-policies.yaml",
    "templates/user-roles.yaml",
];

/// A namespace with the chart's roles bound (alice and dave request, bob approves), the
/// Device `laptop`, and the operator watching it.
async fn setup(prefix: &str) -> Env {
    tether_e2e::requests::setup(
        prefix,
        TEMPLATES,
        &[],
        &[
            ("requesters", "tether-requester", "--group=requesters"),
            ("approvers", "tether-approver", "--group=approvers"),
            ("dave-requests", "tether-requester", "--user=dave"),
        ],
        &[],
    )
    .await
}

async fn wait_request<F>(env: &Env, name: &str, what: &str, check: F) -> AssistanceRequest
where
    F: Fn(&AssistanceRequest) -> bool,
{
    let api: Api<AssistanceRequest> = Api::namespaced(env.admin.clone(), &env.ns);
    eventually(&format!("{name} {what}"), PATIENCE, || {
        let api = api.clone();
        let check = &check;
        async move {
            let r = api.get(name).await.ok()?;
            check(&r).then_some(r)
        }
    })
    .await
}

fn phase(r: &AssistanceRequest) -> Option<RequestPhase> {
    r.status.as_ref().and_then(|s| s.phase)
}

fn approvable(r: &AssistanceRequest) -> Option<(String, String)> {
    r.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Approvable")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

async fn metric(operator: &Operator, line_start: &str) -> Option<f64> {
    let (_, body) = operator.get("/metrics").await.ok()?;
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn requests_the_cluster_cannot_carry_out_are_refused_or_held_before_approval() {
    let env = setup("fh-hold").await;

    // Longer than the cluster maximum: refused by the API server, with the reason.
    let err = fails(tether(
        &env,
        "alice",
        &[
            "request",
            "laptop",
            "--name",
            "long",
            "--reason",
            "x",
            "--duration",
            "9h",
        ],
    ));
    assert!(
        err.contains("spec.sessionTemplate.duration 9h exceeds the cluster maximum of 8h"),
        "{err}"
    );
    // Positive control: the maximum itself is accepted, approvable, and approved.
    ok(tether(
        &env,
        "alice",
        &[
            "request",
            "laptop",
            "--name",
            "full",
            "--reason",
            "x",
            "--duration",
            "8h",
        ],
    ));
    wait_request(&env, "full", "is approvable", |r| {
        approvable(r) == Some(("True".into(), "Approvable".into()))
    })
    .await;
    ok(tether(&env, "bob", &["approve", "full"]));
    wait_request(&env, "full", "created its session", |r| {
        r.status.as_ref().and_then(|s| s.session.as_deref()) == Some("full-1")
    })
    .await;

    // A Device that does not exist: accepted (the API server cannot know), held Pending with
    // the reason, and approving it is refused by the API server.
    ok(tether(
        &env,
        "alice",
        &[
            "request",
            "no-such-laptop",
            "--name",
            "ghost",
            "--reason",
            "x",
        ],
    ));
    let held = wait_request(&env, "ghost", "is held", |r| {
        approvable(r) == Some(("False".into(), "DeviceNotFound".into()))
    })
    .await;
    assert_eq!(phase(&held), Some(RequestPhase::Pending));
    let message = held.status.unwrap().message.unwrap();
    assert!(
        message.contains("held") && message.contains("Device no-such-laptop does not exist"),
        "{message}"
    );
    let err = fails(tether(&env, "bob", &["approve", "ghost"]));
    assert!(
        err.contains("cannot be approved now")
            && err.contains("Device no-such-laptop does not exist"),
        "{err}"
    );
    // Denying it is always possible.
    ok(tether(
        &env,
        "bob",
        &["deny", "ghost", "--reason", "no such laptop"],
    ));
    wait_request(&env, "ghost", "is Denied", |r| {
        phase(r) == Some(RequestPhase::Denied)
    })
    .await;

    // Once the Device exists, a held request can be approved.
    ok(tether(
        &env,
        "alice",
        &[
            "request",
            "later-laptop",
            "--name",
            "early",
            "--reason",
            "x",
        ],
    ));
    wait_request(&env, "early", "is held", |r| {
        approvable(r).is_some_and(|(s, _)| s == "False")
    })
    .await;
    let device = serde_json::json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Device", "metadata": {"name": "later-laptop"}});
    Api::<Device>::namespaced(env.admin.clone(), &env.ns)
        .patch(
            "later-laptop",
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(&device),
        )
        .await
        .unwrap();
    let ready = wait_request(&env, "early", "is approvable", |r| {
        approvable(r).is_some_and(|(s, _)| s == "True")
    })
    .await;
    assert_eq!(
        ready.status.unwrap().message.as_deref(),
        Some("waiting for an approver")
    );
    ok(tether(&env, "bob", &["approve", "early"]));
    wait_request(&env, "early", "is approved", |r| {
        r.status.as_ref().and_then(|s| s.session.as_deref()) == Some("early-1")
    })
    .await;
}

#[tokio::test]
async fn a_requester_starts_the_next_round_of_their_own_request_and_nothing_else() {
    let env = setup("fh-again").await;
    let cp = control_plane();
    ok(tether(
        &env,
        "alice",
        &[
            "request",
            "laptop",
            "--name",
            "weekly",
            "--reason",
            "weekly check",
            "--reusable",
        ],
    ));
    wait_request(&env, "weekly", "is Pending", |r| {
        phase(r) == Some(RequestPhase::Pending)
    })
    .await;
    ok(tether(&env, "bob", &["approve", "weekly"]));
    wait_request(&env, "weekly", "has its session", |r| {
        r.status.as_ref().and_then(|s| s.session.as_deref()) == Some("weekly-1")
    })
    .await;
    ok(tether(&env, "admin", &["terminate", "weekly-1"]));
    wait_request(&env, "weekly", "is Inactive", |r| {
        phase(r) == Some(RequestPhase::Inactive)
    })
    .await;

    // Another requester may not start alice's next round: refused with the reason.
    let err = fails(tether(&env, "dave", &["request", "--again", "weekly"]));
    assert!(
        err.contains("may not request AssistanceRequest weekly again: only its requester (alice)"),
        "{err}"
    );
    // alice may not change anything else with her patch right.
    let out = kubectl(
        cp,
        "alice",
        &[
            "patch",
            "assistancerequest",
            "weekly",
            "-n",
            &env.ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"reason":"something else"}}"#,
        ],
    );
    let err = fails(out);
    assert!(
        err.contains("may only request AssistanceRequest weekly again")
            && err.contains("RBAC verb \"update\""),
        "{err}"
    );
    let out = kubectl(
        cp,
        "alice",
        &[
            "annotate",
            "assistancerequest",
            "weekly",
            "-n",
            &env.ns,
            "tether.dev/request-again=1",
            "example.com/other=x",
        ],
    );
    assert!(
        fails(out).contains("may only request AssistanceRequest weekly again"),
        "another annotation with it is refused"
    );
    // bob, who may not patch requests at all, is refused by RBAC.
    let err = fails(tether(&env, "bob", &["request", "--again", "weekly"]));
    assert!(
        err.contains("forbidden") || err.contains("may not"),
        "{err}"
    );

    // Positive control: alice starts the next round herself.
    let out = ok(tether(&env, "alice", &["request", "--again", "weekly"]));
    assert!(out.contains("requested again"), "{out}");
    let again = wait_request(&env, "weekly", "is in round 2", |r| {
        r.status.as_ref().and_then(|s| s.round) == Some(2)
            && phase(r) == Some(RequestPhase::Pending)
    })
    .await;
    assert_eq!(again.spec.reason, "weekly check");
    // The previous round's approver is gone from status (kept in the history), so neither
    // kubectl's column nor the plugin's list shows it for the new round.
    let cleared = wait_request(&env, "weekly", "dropped round 1's decision", |r| {
        r.status.as_ref().is_some_and(|s| s.approval.is_none())
    })
    .await;
    let history = cleared.status.unwrap().history;
    assert_eq!(
        history[0].approval.as_ref().map(|a| a.approver.as_str()),
        Some("bob")
    );
    let list = ok(tether(&env, "alice", &["list"]));
    let row = list.lines().find(|l| l.starts_with("weekly")).unwrap();
    assert!(!row.contains("bob"), "{list}");
    // And bob may approve the new round.
    ok(tether(&env, "bob", &["approve", "weekly"]));
    wait_request(&env, "weekly", "has its second session", |r| {
        r.status.as_ref().and_then(|s| s.session.as_deref()) == Some("weekly-2")
    })
    .await;
    let list = ok(tether(&env, "alice", &["list"]));
    let row = list.lines().find(|l| l.starts_with("weekly")).unwrap();
    assert!(row.contains("bob"), "{list}");
}

#[tokio::test]
async fn a_devices_inventory_outlives_its_disconnection() {
    let env = setup("fh-inventory").await;
    let api: Api<Device> = Api::namespaced(env.admin.clone(), &env.ns);
    // The relay (its own field manager) reports the agent connected, with what it says.
    let relay = PatchParams::apply("tether-relay").force();
    let report = |status: serde_json::Value| serde_json::json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Device", "status": status});
    api.patch_status(
        "laptop",
        &relay,
        &Patch::Apply(&report(serde_json::json!({
            "presence": "Online", "lastSeen": "2026-01-01T09:00:00Z", "relay": "relay-0",
            "hostname": "reception", "os": "Linux 6.8", "agentVersion": "0.1.0",
        }))),
    )
    .await
    .unwrap();
    // While it is connected the plugin says it is seen now, however long ago it connected.
    let list = ok(tether(&env, "alice", &["list", "devices"]));
    let row = list
        .lines()
        .find(|l| l.starts_with("laptop"))
        .unwrap()
        .to_owned();
    assert!(row.contains("Online") && row.contains(" now"), "{list}");
    eventually("the operator co-owns the report", PATIENCE, || {
        let api = api.clone();
        async move {
            let d = api.get("laptop").await.ok()?;
            let ours = d
                .metadata
                .managed_fields?
                .into_iter()
                .find(|m| m.manager.as_deref() == Some("tether-operator/device-inventory"))?;
            ours.fields_v1?
                .0
                .to_string()
                .contains("f:hostname")
                .then_some(())
        }
    })
    .await;

    // The agent disconnects: the relay reports Offline without the agent's report.
    api.patch_status(
        "laptop",
        &relay,
        &Patch::Apply(&report(serde_json::json!({
            "presence": "Offline", "lastSeen": "2026-01-01T10:00:00Z", "relay": "relay-0",
        }))),
    )
    .await
    .unwrap();
    let offline = eventually("offlineSince is set", PATIENCE, || {
        let api = api.clone();
        async move {
            let d = api.get("laptop").await.ok()?;
            d.status.as_ref()?.offline_since.is_some().then_some(d)
        }
    })
    .await;
    let st = offline.status.unwrap();
    assert_eq!(st.hostname.as_deref(), Some("reception"));
    assert_eq!(st.os.as_deref(), Some("Linux 6.8"));
    assert_eq!(st.agent_version.as_deref(), Some("0.1.0"));
    assert_eq!(
        st.offline_since.unwrap().0.to_string(),
        "2026-01-01T10:00:00Z"
    );
    let wide = kubectl_ok(control_plane(), "alice", &["get", "devices", "-n", &env.ns]);
    assert!(
        wide.contains("OFFLINE SINCE") && !wide.contains("LAST SEEN"),
        "{wide}"
    );
    let list = ok(tether(&env, "alice", &["list", "devices"]));
    let row = list.lines().find(|l| l.starts_with("laptop")).unwrap();
    assert!(
        row.contains("Offline") && row.contains("reception") && row.contains(" ago"),
        "{list}"
    );

    // Back online with a new report: the new values win, offlineSince goes.
    api.patch_status(
        "laptop",
        &relay,
        &Patch::Apply(&report(serde_json::json!({
            "presence": "Online", "lastSeen": "2026-01-01T11:00:00Z", "relay": "relay-0",
            "hostname": "reception-2", "os": "Linux 6.9", "agentVersion": "0.2.0",
        }))),
    )
    .await
    .unwrap();
    let back = eventually("the device is back online", PATIENCE, || {
        let api = api.clone();
        async move {
            let d = api.get("laptop").await.ok()?;
            let st = d.status.as_ref()?;
            (st.offline_since.is_none() && st.hostname.as_deref() == Some("reception-2"))
                .then_some(d)
        }
    })
    .await;
    assert_eq!(back.status.unwrap().agent_version.as_deref(), Some("0.2.0"));
}

#[tokio::test]
async fn a_recording_the_store_failed_is_marked_failed_and_catch_up_is_not_lateness() {
    let env = setup("fh-recording").await;
    let api: Api<RemoteSession> = Api::namespaced(env.admin.clone(), &env.ns);
    let pp = PatchParams::apply(TEST_MANAGER);
    let session = |name: &str, spec: serde_json::Value| serde_json::json!({"apiVersion": "tether.dev/v1alpha1", "kind": "RemoteSession", "metadata": {"name": name}, "spec": spec});

    // The notifications metric is there before any notification.
    let delivered = metric(
        &env.operator,
        r#"tether_operator_notifications_total{channel="email",result="delivered"}"#,
    )
    .await;
    assert_eq!(delivered, Some(0.0));

    // A session created with a window in 2020: it is caught up with, not 6 years late.
    api.patch(
        "old",
        &pp,
        &Patch::Apply(&session(
            "old",
            serde_json::json!({"device": "laptop", "startTime": "2020-01-01T00:00:00Z", "duration": "30m"}),
        )),
    )
    .await
    .unwrap();
    eventually("the old session expired", PATIENCE, || {
        let api = api.clone();
        async move {
            let s = api.get("old").await.ok()?;
            (s.status?.phase == Some(SessionPhase::Expired)).then_some(())
        }
    })
    .await;
    let caught_up = metric(
        &env.operator,
        r#"tether_operator_transitions_caught_up_total{phase="Expired"}"#,
    )
    .await;
    assert_eq!(caught_up, Some(1.0));
    let late = metric(
        &env.operator,
        r#"tether_operator_transition_lateness_seconds_count{phase="Expired"}"#,
    )
    .await;
    assert_eq!(
        late.unwrap_or(0.0),
        0.0,
        "no lateness sample for a catch-up"
    );

    // A session that must be recorded, whose recording failed while it ran: the relay ends
    // it but cannot finish the recording in the failed store.
    api.patch(
        "audited",
        &pp,
        &Patch::Apply(&session(
            "audited",
            serde_json::json!({"device": "laptop", "mode": "Unattended", "recording": "Required"}),
        )),
    )
    .await
    .unwrap();
    let relay = PatchParams::apply("tether-relay").force();
    let conditions = serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "RemoteSession",
        "status": {"conditions": [
            {"type": "Recording", "status": "False", "reason": "RecordingFailed",
             "message": "recording failed: the store refused a part",
             "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "Ended", "status": "True", "reason": "RecordingFailed",
             "message": "the session was ended because it must be recorded and recording failed",
             "lastTransitionTime": "2026-01-01T00:00:00Z"},
        ]},
    });
    let recording = serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "RemoteSession",
        "status": {"recording": {"state": "Recording", "location": "file:///r", "bytes": 10}},
    });
    api.patch_status(
        "audited",
        &PatchParams::apply("tether-relay/recording").force(),
        &Patch::Apply(&recording),
    )
    .await
    .unwrap();
    api.patch_status("audited", &relay, &Patch::Apply(&conditions))
        .await
        .unwrap();
    let failed = eventually("the recording is marked failed", PATIENCE, || {
        let api = api.clone();
        async move {
            let st = api.get("audited").await.ok()?.status?;
            (st.phase == Some(SessionPhase::Failed) && st.recording.as_ref()?.state == "Failed")
                .then_some(st)
        }
    })
    .await;
    let recording = failed.recording.unwrap();
    assert_eq!(
        recording.message.as_deref(),
        Some("recording failed: the store refused a part")
    );
    // What the relay wrote otherwise stays.
    assert_eq!(recording.location.as_deref(), Some("file:///r"));
    assert_eq!(recording.bytes, 10);
}

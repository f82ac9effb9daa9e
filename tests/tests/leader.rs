//! Leader election between real `tether-operator` processes on one Lease in `tether-system`,
//! with the RBAC the chart grants: exactly one leads and reconciles, a killed leader is
//! replaced once its Lease expires, a terminated one hands over at once, and one whose Lease
//! is taken stops and exits non-zero; a session whose leader dies before its window opens
//! goes through every transition exactly once.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tether_crds::RemoteSession;
use tether_crds::remote_session::SessionPhase;
use tether_e2e::lifecycle::{assert_window_transitions_once, events_about, in_secs};
use tether_e2e::{
    OPERATOR_USER, Operator, PATIENCE, SYSTEM_NAMESPACE, TEST_MANAGER, control_plane, eventually,
    install_chart_templates, install_crds, kubectl_apply,
};

/// The Lease holder, `None` when the Lease is missing or free.
async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases
        .get_opt(name)
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

/// `tether_operator_leader` of an operator, `None` if it cannot be read.
async fn leader_gauge(op: &Operator) -> Option<i64> {
    let (code, body) = op.get("/metrics").await.ok()?;
    (code == 200).then_some(())?;
    body.lines()
        .find_map(|l| l.strip_prefix("tether_operator_leader "))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until an operator's metrics show a RemoteSession reconcile (observed after the
/// status write, so not at once).
async fn eventually_reconciled(op: &Operator, what: &str) {
    eventually(what, PATIENCE, || async {
        reconciled(op).await.then_some(())
    })
    .await;
}

/// Whether an operator's metrics show any RemoteSession reconcile.
async fn reconciled(op: &Operator) -> bool {
    let (_, body) = op.get("/metrics").await.unwrap();
    body.lines().any(|l| {
        l.starts_with("tether_operator_reconcile_duration_seconds_count")
            && l.contains("remotesession")
            && !l.ends_with(" 0")
    })
}

/// Creates a RemoteSession for `laptop-1` and waits until some operator wrote its status.
async fn session_gets_status(admin: &Client, ns: &str, name: &str) {
    let api: Api<RemoteSession> = Api::namespaced(admin.clone(), ns);
    let session: RemoteSession = serde_json::from_value(serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "RemoteSession",
        "metadata": {"name": name},
        "spec": {"device": "laptop-1"},
    }))
    .unwrap();
    api.patch(
        name,
        &PatchParams::apply(TEST_MANAGER),
        &Patch::Apply(&session),
    )
    .await
    .unwrap();
    eventually(
        &format!("RemoteSession {name} has a status phase"),
        PATIENCE,
        || async { api.get(name).await.ok()?.status?.phase },
    )
    .await;
}

/// A namespace with a Device, the chart's operator RBAC, and the Lease API.
async fn setup(prefix: &str) -> (Client, String, Api<Lease>) {
    let cp = control_plane();
    let admin = cp.client("admin").await.unwrap();
    install_crds(&admin).await.unwrap();
    install_chart_templates(&["templates/operator-rbac.yaml"], &[]);
    let ns = cp.namespace(prefix).await.unwrap();
    let device = kubectl_apply(
        cp,
        "admin",
        &ns,
        "apiVersion: tether.dev/v1alpha1\nkind: Device\nmetadata:\n  name: laptop-1\n",
    );
    assert!(
        device.status.success(),
        "{}",
        String::from_utf8_lossy(&device.stderr)
    );
    let leases = Api::namespaced(admin.clone(), SYSTEM_NAMESPACE);
    (admin, ns, leases)
}

/// Starts operators `a` and `b` on Lease `lease` and returns (leader, standby) once one
/// holds it and says so in its metrics.
async fn two_candidates(
    ns: &str,
    lease: &str,
    timing: &[&str],
    leases: &Api<Lease>,
) -> (Operator, Operator) {
    let cp = control_plane();
    let id = format!("--leader-election-id={lease}");
    let mut args = vec!["--leader-election=true", id.as_str()];
    args.extend_from_slice(timing);
    let a_name = format!("{ns}-a");
    let b_name = format!("{ns}-b");
    // Both become ready: the leader once its caches synced, the standby once it read the Lease.
    let a = Operator::start_named(cp, OPERATOR_USER, ns, &a_name, &args).await;
    let b = Operator::start_named(cp, OPERATOR_USER, ns, &b_name, &args).await;
    let leader = eventually("one operator holds the Lease", PATIENCE, || async {
        holder(leases, lease).await
    })
    .await;
    let (leader, standby) = if leader == a_name {
        (a, b)
    } else {
        assert_eq!(leader, b_name, "the holder is one of the two operators");
        (b, a)
    };
    eventually("the leader reports leading", PATIENCE, || async {
        (leader_gauge(&leader).await? == 1).then_some(())
    })
    .await;
    assert_eq!(
        leader_gauge(&standby).await,
        Some(0),
        "the standby reports standing by"
    );
    (leader, standby)
}

#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_takes_over_a_killed_leader() {
    let (admin, ns, leases) = setup("leader").await;
    let lease = format!("e2e-{ns}");
    // Short timing so the takeover after SIGKILL (one lease duration) is quick.
    let timing = [
        "--leader-election-lease-duration=4s",
        "--leader-election-renew-deadline=3s",
        "--leader-election-retry-period=500ms",
    ];
    let (mut leader, mut standby) = two_candidates(&ns, &lease, &timing, &leases).await;
    let leader_name = leader.process.name().to_owned();
    let standby_name = standby.process.name().to_owned();

    session_gets_status(&admin, &ns, "first").await;
    eventually_reconciled(&leader, "the leader reconciled the session").await;
    assert!(
        !reconciled(&standby).await,
        "the standby reconciled nothing:\n{}",
        standby.process.log_tail(20)
    );
    assert_eq!(
        standby.get("/readyz").await.unwrap().0,
        200,
        "a standby is ready"
    );
    assert_eq!(
        standby.get("/healthz").await.unwrap().0,
        200,
        "a standby is healthy"
    );
    assert_eq!(
        holder(&leases, &lease).await.as_deref(),
        Some(leader_name.as_str())
    );

    // A crash: no release, so the standby waits for the Lease to expire (4 s).
    let killed = Instant::now();
    leader.process.kill();
    eventually("the standby takes the Lease", PATIENCE, || async {
        (holder(&leases, &lease).await? == standby_name).then_some(())
    })
    .await;
    println!("takeover after SIGKILL: {:?}", killed.elapsed());
    eventually("the new leader reports leading", PATIENCE, || async {
        (leader_gauge(&standby).await? == 1).then_some(())
    })
    .await;
    session_gets_status(&admin, &ns, "second").await;
    eventually_reconciled(&standby, "the new leader reconciled").await;

    // SIGTERM: the leader stops its controllers, then frees the Lease before it exits.
    let status = standby.process.terminate(PATIENCE);
    assert_eq!(status, "exit status: 0", "{}", standby.process.log_tail(20));
    assert_eq!(
        holder(&leases, &lease).await,
        None,
        "the Lease is free right after a graceful exit"
    );
    assert!(
        standby
            .process
            .log_tail(40)
            .contains("Released the leader Lease"),
        "{}",
        standby.process.log_tail(40)
    );
}

#[tokio::test]
async fn a_terminated_leader_hands_over_before_its_lease_would_expire() {
    let (admin, ns, leases) = setup("leader-handover").await;
    let lease = format!("e2e-{ns}");
    // A lease duration far longer than the wait below: only a release lets the standby in.
    let timing = [
        "--leader-election-lease-duration=120s",
        "--leader-election-renew-deadline=60s",
        "--leader-election-retry-period=500ms",
    ];
    let (mut leader, standby) = two_candidates(&ns, &lease, &timing, &leases).await;
    let standby_name = standby.process.name().to_owned();
    let terminated = Instant::now();
    let status = leader.process.terminate(PATIENCE);
    assert_eq!(status, "exit status: 0", "{}", leader.process.log_tail(20));
    eventually(
        "the standby takes the released Lease",
        Duration::from_secs(60),
        || async { (holder(&leases, &lease).await? == standby_name).then_some(()) },
    )
    .await;
    println!("takeover after SIGTERM: {:?}", terminated.elapsed());
    session_gets_status(&admin, &ns, "after-handover").await;
    eventually_reconciled(&standby, "the new leader reconciled").await;
}

#[tokio::test]
async fn a_leader_whose_lease_is_taken_stops_and_exits_non_zero() {
    let (_admin, ns, leases) = setup("leader-lost").await;
    let lease = format!("e2e-{ns}");
    let cp = control_plane();
    let id = format!("--leader-election-id={lease}");
    let name = format!("{ns}-only");
    let mut op = Operator::start_named(
        cp,
        OPERATOR_USER,
        &ns,
        &name,
        &[
            "--leader-election=true",
            &id,
            "--leader-election-lease-duration=4s",
            "--leader-election-renew-deadline=3s",
            "--leader-election-retry-period=500ms",
        ],
    )
    .await;
    eventually("the operator leads", PATIENCE, || async {
        (holder(&leases, &lease).await? == name).then_some(())
    })
    .await;
    // Another process (here: the test) writes itself in as the holder.
    // Retried: a renewal between the read and the write is a conflict.
    eventually("the test takes the Lease", PATIENCE, || async {
        let mut taken = leases.get(&lease).await.ok()?;
        let spec = taken.spec.as_mut()?;
        spec.holder_identity = Some("intruder".into());
        spec.lease_duration_seconds = Some(3600);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        leases
            .replace(&lease, &PostParams::default(), &taken)
            .await
            .ok()
    })
    .await;
    let status = eventually("the operator exits", PATIENCE, || {
        let status = op.process.exited();
        async move { status }
    })
    .await;
    assert_ne!(
        status, "exit status: 0",
        "losing the Lease is a failure exit"
    );
    assert!(
        op.process.log_tail(20).contains("stopped leading"),
        "{}",
        op.process.log_tail(20)
    );
    assert_eq!(holder(&leases, &lease).await.as_deref(), Some("intruder"));
}

/// The leader is killed (no release) while a session waits for its window, with the chart's
/// default timing: the standby takes the Lease once it expires, opens the window late by
/// the takeover, expires the session on time, and every transition happens exactly once
/// (a new leader starts from the objects, not from memory, and must not redo what the old
/// one did).
#[tokio::test]
async fn a_session_goes_through_every_transition_once_across_the_leaders_death() {
    let (admin, ns, leases) = setup("leader-session").await;
    let lease = format!("e2e-{ns}");
    // The chart's defaults (values.yaml operator.leaderElection).
    let timing = [
        "--leader-election-lease-duration=12s",
        "--leader-election-renew-deadline=8s",
        "--leader-election-retry-period=2s",
    ];
    let (mut leader, standby) = two_candidates(&ns, &lease, &timing, &leases).await;
    let standby_name = standby.process.name().to_owned();
    let api: Api<RemoteSession> = Api::namespaced(admin.clone(), &ns);
    let start = in_secs(8);
    let session: RemoteSession = serde_json::from_value(serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "RemoteSession",
        "metadata": {"name": "window"},
        "spec": {"device": "laptop-1", "startTime": start, "duration": "30s"},
    }))
    .unwrap();
    api.patch(
        "window",
        &PatchParams::apply(TEST_MANAGER),
        &Patch::Apply(&session),
    )
    .await
    .unwrap();
    let phase = |want: SessionPhase| {
        let api = api.clone();
        async move {
            let s = api.get("window").await.ok()?;
            (s.status.as_ref()?.phase? == want).then_some(s)
        }
    };
    eventually("the leader schedules the session", PATIENCE, || {
        phase(SessionPhase::Scheduled)
    })
    .await;

    let killed = Instant::now();
    leader.process.kill();
    eventually("the standby takes the Lease", PATIENCE, || async {
        (holder(&leases, &lease).await? == standby_name).then_some(())
    })
    .await;
    let takeover = killed.elapsed();
    let expired = eventually(
        "the new leader expires the session",
        Duration::from_secs(120),
        || phase(SessionPhase::Expired),
    )
    .await;

    let status = expired.status.unwrap();
    let expires_at = status.expires_at.unwrap().0;
    assert_eq!(status.ended_at.map(|t| t.0), Some(expires_at));
    let events = events_about(&admin, &ns, "window").await;
    let reasons: Vec<String> = events.iter().map(|(r, _)| r.clone()).collect();
    assert_window_transitions_once(&reasons);
    let at = |reason: &str| {
        events
            .iter()
            .find(|(r, _)| r == reason)
            .and_then(|(_, t)| *t)
            .unwrap()
    };
    let start: jiff::Timestamp = start.parse().unwrap();
    let opened_late = at("WindowOpened").duration_since(start);
    let expired_late = at("Expired").duration_since(expires_at);
    println!(
        "leader killed: Lease taken after {takeover:?}; window opened {opened_late:#} after \
         its start (during the takeover); Expired {expired_late:#} after expiresAt"
    );
    assert!(
        expired_late <= jiff::SignedDuration::from_secs(1),
        "Expired {expired_late:#} after expiresAt"
    );
}

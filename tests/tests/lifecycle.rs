//! The life of a RemoteSession against a real API server and a real operator process, with
//! windows of a few seconds: scheduling, opening, expiry on time, credentials issued and
//! revoked, termination and deletion, restarts of the operator, GitOps re-applies, dynamic
//! mode and consent as reported by the relay.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use tether_crds::remote_session::SessionPhase;
use tether_crds::{Device, RemoteSession};
use tether_e2e::{
    OPERATOR_USER, Operator, PATIENCE, SYSTEM_NAMESPACE, TEST_MANAGER, control_plane, eventually,
    install_chart_templates, install_crds, kubectl, kubectl_ok, workspace_bin,
};
use tether_proto::token::{
    DEFAULT_LEEWAY, Revocations, TokenError, Verifier, VerifyingKey, verify_not_revoked,
};

/// The cluster maximum the tests install (admission policy and operator).
const MAX: &str = "1h";

struct Env {
    admin: kube::Client,
    ns: String,
    sessions: Api<RemoteSession>,
    operator: Operator,
}

async fn setup(prefix: &str) -> Env {
    let cp = control_plane();
    let admin = cp.client("admin").await.unwrap();
    install_crds(&admin).await.unwrap();
    install_chart_templates(
        &[
            "templates/operator-rbac.yaml",
            "templates/admission-policies.yaml",
        ],
        &[&format!("operator.maxSessionDuration={MAX}")],
    );
    let ns = cp.namespace(prefix).await.unwrap();
    let devices: Api<Device> = Api::namespaced(admin.clone(), &ns);
    for name in ["laptop", "kiosk"] {
        let device = serde_json::json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "Device",
            "metadata": {"name": name}, "spec": {},
        });
        devices
            .patch(
                name,
                &PatchParams::apply(TEST_MANAGER),
                &Patch::Apply(&device),
            )
            .await
            .unwrap();
    }
    let operator = Operator::start(
        cp,
        OPERATOR_USER,
        &ns,
        &[&format!("--max-session-duration={MAX}")],
    )
    .await;
    Env {
        sessions: Api::namespaced(admin.clone(), &ns),
        admin,
        ns,
        operator,
    }
}

/// A session manifest as a GitOps tool would apply it.
fn manifest(name: &str, spec: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "RemoteSession",
        "metadata": {"name": name},
        "spec": spec,
    })
}

async fn apply(env: &Env, name: &str, spec: serde_json::Value) -> RemoteSession {
    env.sessions
        .patch(
            name,
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(&manifest(name, spec)),
        )
        .await
        .unwrap()
}

/// `now + secs`, whole seconds, RFC 3339.
fn in_secs(secs: i64) -> String {
    Timestamp::from_second(Timestamp::now().as_second() + secs)
        .unwrap()
        .to_string()
}

async fn wait_phase(env: &Env, name: &str, phase: SessionPhase) -> RemoteSession {
    let api = env.sessions.clone();
    eventually(&format!("{name} is {phase}"), PATIENCE, || {
        let api = api.clone();
        async move {
            let s = api.get(name).await.ok()?;
            (s.status.as_ref()?.phase == Some(phase)).then_some(s)
        }
    })
    .await
}

async fn access_secret(env: &Env, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(env.admin.clone(), &env.ns)
        .get_opt(&format!("{name}-access"))
        .await
        .unwrap()
}

fn secret_text(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

/// A verifier built from what the operator publishes, as a relay would build it.
async fn published_verifier(env: &Env) -> (Verifier, Revocations) {
    let cms: Api<ConfigMap> = Api::namespaced(env.admin.clone(), SYSTEM_NAMESPACE);
    let trust = cms.get("tether-trust").await.unwrap().data.unwrap();
    let keys: Vec<VerifyingKey> = serde_json::from_str(&trust["token-keys.json"]).unwrap();
    assert!(trust["ca-bundle.crt"].contains("BEGIN CERTIFICATE"));
    let revoked = cms
        .get("tether-revocations")
        .await
        .unwrap()
        .data
        .unwrap_or_default();
    (
        Verifier::new(keys, DEFAULT_LEEWAY),
        Revocations::from_data(&revoked),
    )
}

async fn event_reasons(env: &Env, name: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(env.admin.clone(), &env.ns);
    let mut list: Vec<Event> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect();
    list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    list.into_iter().filter_map(|e| e.reason).collect()
}

fn count(reasons: &[String], reason: &str) -> usize {
    reasons.iter().filter(|r| *r == reason).count()
}

#[tokio::test]
async fn scheduled_session_opens_issues_credentials_and_expires_on_time() {
    let env = setup("expiry").await;
    apply(&env, "maint", serde_json::json!({"device": "laptop", "startTime": in_secs(3), "duration": "5s", "technicians": {"users": ["carol"]}})).await;
    let scheduled = wait_phase(&env, "maint", SessionPhase::Scheduled).await;
    assert!(
        access_secret(&env, "maint").await.is_none(),
        "no credentials before the window"
    );
    assert_eq!(
        scheduled.metadata.finalizers.as_deref(),
        Some(&["tether.dev/revoke-credentials".to_owned()][..])
    );

    // The window opens: credentials are issued, signed with a published key.
    let pending = wait_phase(&env, "maint", SessionPhase::Pending).await;
    let status = pending.status.clone().unwrap();
    let access = status.access.clone().unwrap();
    assert_eq!(access.secret_name, "maint-access");
    let secret = eventually("the access Secret exists", PATIENCE, || {
        access_secret(&env, "maint")
    })
    .await;
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.uid, pending.metadata.uid.clone().unwrap());
    assert_eq!(owner.controller, Some(true));
    let token = secret_text(&secret, "token");
    let (verifier, _) = published_verifier(&env).await;
    let now = Timestamp::now().as_second();
    let claims = verifier
        .verify(&token, now, pending.metadata.uid.as_deref())
        .unwrap();
    assert_eq!(claims.session.name, "maint");
    assert_eq!(claims.session.device, "laptop");
    assert_eq!(claims.session.technicians.users, vec!["carol".to_owned()]);
    let expires_at = status.expires_at.clone().unwrap().0;
    assert_eq!(claims.session.ends_at, expires_at.as_second());
    assert!(claims.exp <= expires_at.as_second());

    // Expiry: on time, credentials deleted, revocation published, finalizer released.
    let expired = wait_phase(&env, "maint", SessionPhase::Expired).await;
    let st = expired.status.clone().unwrap();
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    let lateness = ready.last_transition_time.0.duration_since(expires_at);
    eprintln!("Expired written {lateness:?} after expiresAt (second precision)");
    assert!(
        lateness <= SignedDuration::from_secs(1),
        "Expired written {lateness:?} after expiresAt"
    );
    assert_eq!(st.ended_at.map(|t| t.0), Some(expires_at));
    assert!(st.access.unwrap().revoked_at.is_some());
    eventually("the access Secret is deleted", PATIENCE, || async {
        access_secret(&env, "maint").await.is_none().then_some(())
    })
    .await;
    let finalizers = env.sessions.get("maint").await.unwrap().metadata.finalizers;
    assert!(finalizers.unwrap_or_default().is_empty());

    // The token is refused everywhere from now on, even if someone kept a copy.
    let (verifier, revocations) = published_verifier(&env).await;
    let err = verify_not_revoked(&verifier, &revocations, &token, now, None).unwrap_err();
    assert_eq!(
        err,
        TokenError::Revoked(expired.metadata.uid.clone().unwrap())
    );

    let reasons = event_reasons(&env, "maint").await;
    for reason in [
        "Scheduled",
        "AccessIssued",
        "WindowOpened",
        "ExpiringSoon",
        "Expired",
        "AccessRevoked",
    ] {
        assert_eq!(count(&reasons, reason), 1, "{reason} in {reasons:?}");
    }
    let (_, metrics) = env.operator.get("/metrics").await.unwrap();
    assert!(
        metrics.contains("tether_operator_transition_lateness_seconds_count{phase=\"Expired\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn reschedule_is_accepted_only_while_scheduled() {
    let env = setup("resched").await;
    apply(
        &env,
        "later",
        serde_json::json!({"device": "laptop", "startTime": in_secs(3600), "duration": "30m"}),
    )
    .await;
    wait_phase(&env, "later", SessionPhase::Scheduled).await;
    let moved = in_secs(7200);
    apply(
        &env,
        "later",
        serde_json::json!({"device": "laptop", "startTime": moved, "duration": "45m"}),
    )
    .await;
    let api = env.sessions.clone();
    eventually("the operator follows the new window", PATIENCE, || {
        let api = api.clone();
        let moved = moved.clone();
        async move {
            let s = api.get("later").await.ok()?.status?;
            (s.scheduled_start?.0.to_string() == moved).then_some(())
        }
    })
    .await;

    apply(
        &env,
        "now",
        serde_json::json!({"device": "laptop", "duration": "30m"}),
    )
    .await;
    wait_phase(&env, "now", SessionPhase::Pending).await;
    let err = env
        .sessions
        .patch(
            "now",
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(manifest(
                "now",
                serde_json::json!({"device": "laptop", "duration": "45m"}),
            )),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("can only be changed while the session is Scheduled"),
        "{err}"
    );
}

#[tokio::test]
async fn instant_session_defaults_and_the_cluster_maximum() {
    let env = setup("instant").await;
    let created = apply(&env, "quick", serde_json::json!({"device": "laptop"})).await;
    let pending = wait_phase(&env, "quick", SessionPhase::Pending).await;
    let st = pending.status.unwrap();
    let created_at = created.metadata.creation_timestamp.unwrap().0;
    assert_eq!(st.scheduled_start.unwrap().0, created_at);
    assert_eq!(
        st.expires_at.unwrap().0,
        created_at + SignedDuration::from_mins(30)
    );

    // Exactly the maximum is fine; over it the API server refuses with the reason.
    apply(
        &env,
        "hour",
        serde_json::json!({"device": "laptop", "duration": "1h"}),
    )
    .await;
    let err = env
        .sessions
        .patch(
            "long",
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(manifest(
                "long",
                serde_json::json!({"device": "laptop", "duration": "2h"}),
            )),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spec.duration 2h exceeds the cluster maximum of 1h"),
        "{err}"
    );
}

fn tether_cli(user: &str, ns: &str, args: &[&str]) -> std::process::Output {
    let cp = control_plane();
    std::process::Command::new(workspace_bin("kubectl-tether"))
        .arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .arg(format!("--context={user}"))
        .args(["-n", ns])
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn terminate_and_delete_mid_session_revoke_everything() {
    let env = setup("terminate").await;
    let cp = control_plane();
    apply(&env, "oops", serde_json::json!({"device": "laptop"})).await;
    let live = wait_phase(&env, "oops", SessionPhase::Pending).await;
    eventually("credentials are issued", PATIENCE, || {
        access_secret(&env, "oops")
    })
    .await;

    // alice may patch sessions but lacks the `terminate` verb: the API server refuses.
    kubectl_ok(
        cp,
        "admin",
        &[
            "create",
            "role",
            "patcher",
            "-n",
            &env.ns,
            "--verb=get,patch",
            "--resource=remotesessions.tether.dev",
        ],
    );
    kubectl_ok(
        cp,
        "admin",
        &[
            "create",
            "rolebinding",
            "alice-patcher",
            "-n",
            &env.ns,
            "--role=patcher",
            "--user=alice",
        ],
    );
    let out = tether_cli("alice", &env.ns, &["terminate", "oops"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("RBAC verb \"terminate\" on remotesessions.tether.dev is missing"),
        "{stderr}"
    );
    // Nor can she put someone else's name on a termination.
    let forged = kubectl(
        cp,
        "alice",
        &[
            "annotate",
            "-n",
            &env.ns,
            "remotesession",
            "oops",
            "tether.dev/terminated-by=admin",
        ],
    );
    assert!(!forged.status.success());
    assert!(String::from_utf8_lossy(&forged.stderr).contains("must name the caller (alice)"));

    // The admin terminates with a reason; the CLI waits until the operator has ended it.
    let out = tether_cli(
        "admin",
        &env.ns,
        &["terminate", "oops", "--reason", "wrong device"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("terminated"));
    let ended = env.sessions.get("oops").await.unwrap();
    let st = ended.status.unwrap();
    assert_eq!(st.phase, Some(SessionPhase::Terminated));
    assert_eq!(
        st.message.as_deref(),
        Some("terminated by admin: wrong device")
    );
    eventually("the access Secret is deleted", PATIENCE, || async {
        access_secret(&env, "oops").await.is_none().then_some(())
    })
    .await;
    let (_, revocations) = published_verifier(&env).await;
    assert!(revocations.is_revoked(live.metadata.uid.as_deref().unwrap()));
    // Already ended: a clear error, not a second termination.
    let out = tether_cli("admin", &env.ns, &["terminate", "oops"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("has already ended (Terminated)"));
    let out = tether_cli("admin", &env.ns, &["terminate", "nosuch"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("RemoteSession nosuch not found"));

    // A user granted `terminate` can end sessions too.
    kubectl_ok(
        cp,
        "admin",
        &[
            "create",
            "role",
            "terminator",
            "-n",
            &env.ns,
            "--verb=get,patch,terminate",
            "--resource=remotesessions.tether.dev",
        ],
    );
    kubectl_ok(
        cp,
        "admin",
        &[
            "create",
            "rolebinding",
            "bob-terminator",
            "-n",
            &env.ns,
            "--role=terminator",
            "--user=bob",
        ],
    );
    apply(&env, "second", serde_json::json!({"device": "laptop"})).await;
    wait_phase(&env, "second", SessionPhase::Pending).await;
    let out = tether_cli("bob", &env.ns, &["terminate", "second"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Deleting a live session ends it: credentials revoked, then the object goes.
    apply(&env, "gone", serde_json::json!({"device": "laptop"})).await;
    let live = wait_phase(&env, "gone", SessionPhase::Pending).await;
    eventually("credentials are issued", PATIENCE, || {
        access_secret(&env, "gone")
    })
    .await;
    env.sessions
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the session is gone", PATIENCE, || async {
        env.sessions
            .get_opt("gone")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(access_secret(&env, "gone").await.is_none());
    let (_, revocations) = published_verifier(&env).await;
    assert!(revocations.is_revoked(live.metadata.uid.as_deref().unwrap()));
}

#[tokio::test]
async fn operator_restarts_miss_and_repeat_nothing() {
    let mut env = setup("restart").await;
    let start = in_secs(4);
    apply(
        &env,
        "steady",
        serde_json::json!({"device": "laptop", "startTime": start, "duration": "6s"}),
    )
    .await;
    wait_phase(&env, "steady", SessionPhase::Scheduled).await;

    // Down across the window's opening.
    env.operator.process.kill();
    let opens: Timestamp = start.parse().unwrap();
    wait_until(opens + SignedDuration::from_secs(1)).await;
    let cp = control_plane();
    env.operator = Operator::start(
        cp,
        OPERATOR_USER,
        &env.ns,
        &[&format!("--max-session-duration={MAX}")],
    )
    .await;
    wait_phase(&env, "steady", SessionPhase::Pending).await;
    eventually("credentials are issued", PATIENCE, || {
        access_secret(&env, "steady")
    })
    .await;

    // Killed again mid-session (once it has said the window opened: a kill between writing
    // a transition and publishing its Event loses that Event) and back before the end.
    eventually("the opening is announced", PATIENCE, || async {
        event_reasons(&env, "steady")
            .await
            .contains(&"WindowOpened".to_owned())
            .then_some(())
    })
    .await;
    env.operator.process.kill();
    env.operator = Operator::start(
        cp,
        OPERATOR_USER,
        &env.ns,
        &[&format!("--max-session-duration={MAX}")],
    )
    .await;
    wait_phase(&env, "steady", SessionPhase::Expired).await;
    eventually("the access Secret is deleted", PATIENCE, || async {
        access_secret(&env, "steady").await.is_none().then_some(())
    })
    .await;

    let reasons = eventually("every Event is recorded", PATIENCE, || async {
        let r = event_reasons(&env, "steady").await;
        r.contains(&"AccessRevoked".to_owned()).then_some(r)
    })
    .await;
    for reason in [
        "Scheduled",
        "WindowOpened",
        "AccessIssued",
        "Expired",
        "AccessRevoked",
    ] {
        assert_eq!(
            count(&reasons, reason),
            1,
            "{reason} should appear exactly once in {reasons:?}"
        );
    }
}

async fn wait_until(t: Timestamp) {
    let left = t.duration_since(Timestamp::now());
    if let Ok(left) = Duration::try_from(left) {
        tokio::time::sleep(left).await;
    }
}

#[tokio::test]
async fn reapplying_a_finished_session_does_not_revive_it() {
    let env = setup("reapply").await;
    let spec = serde_json::json!({"device": "laptop", "duration": "2s"});
    apply(&env, "brief", spec.clone()).await;
    let ended = wait_phase(&env, "brief", SessionPhase::Expired).await;
    eventually("the finalizer is released", PATIENCE, || async {
        let s = env.sessions.get("brief").await.ok()?;
        s.metadata
            .finalizers
            .unwrap_or_default()
            .is_empty()
            .then_some(())
    })
    .await;
    let reconciles = |body: &str| -> u64 {
        body.lines()
            .find(|l| l.starts_with("tether_operator_reconcile_duration_seconds_count{controller=\"remotesession\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let before = reconciles(&env.operator.get("/metrics").await.unwrap().1);

    // The GitOps tool applies the original manifest again, plus a label (so the object really
    // changes and the operator must look at it).
    let mut again = manifest("brief", spec);
    again["metadata"]["labels"] = serde_json::json!({"synced-by": "gitops"});
    env.sessions
        .patch(
            "brief",
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(&again),
        )
        .await
        .unwrap();
    eventually(
        "the operator reconciled the re-applied session",
        PATIENCE,
        || async {
            let after = reconciles(&env.operator.get("/metrics").await.ok()?.1);
            (after > before).then_some(())
        },
    )
    .await;
    let now = env.sessions.get("brief").await.unwrap();
    assert_eq!(
        now.status, ended.status,
        "status of a finished session never changes"
    );
    assert!(
        access_secret(&env, "brief").await.is_none(),
        "no new credentials"
    );
}

async fn relay_reports(env: &Env, name: &str, conditions: &[(&str, &str, &str)]) {
    let now = Timestamp::from_second(Timestamp::now().as_second())
        .unwrap()
        .to_string();
    let conditions: Vec<serde_json::Value> = conditions
        .iter()
        .map(|(t, s, r)| serde_json::json!({"type": t, "status": s, "reason": r, "message": "", "lastTransitionTime": now}))
        .collect();
    let patch = serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "RemoteSession",
        "status": {"conditions": conditions},
    });
    env.sessions
        .patch_status(
            name,
            &PatchParams::apply("tether-relay"),
            &Patch::Apply(&patch),
        )
        .await
        .unwrap();
}

/// What the relay reports about a device: its presence and who is logged on.
async fn device_reports(env: &Env, device: &str, online: bool, users: &[&str]) {
    let api: Api<Device> = Api::namespaced(env.admin.clone(), &env.ns);
    let patch = serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Device",
        "status": {"presence": if online { "Online" } else { "Offline" }, "loggedOnUsers": users},
    });
    api.patch_status(
        device,
        &PatchParams::apply("tether-agent-test"),
        &Patch::Apply(&patch),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn dynamic_mode_and_consent_decide_the_session() {
    let env = setup("dynamic").await;
    device_reports(&env, "laptop", false, &["dana"]).await;
    device_reports(&env, "kiosk", false, &[]).await;

    // Nobody at the kiosk: unattended, active as soon as the agent is connected.
    apply(
        &env,
        "kiosk-fix",
        serde_json::json!({"device": "kiosk", "mode": "Dynamic"}),
    )
    .await;
    let s = wait_phase(&env, "kiosk-fix", SessionPhase::Pending).await;
    assert_eq!(
        format!("{:?}", s.status.unwrap().effective_mode),
        "Some(Unattended)"
    );
    device_reports(&env, "kiosk", true, &[]).await;
    let active = wait_phase(&env, "kiosk-fix", SessionPhase::Active).await;
    let st = active.status.unwrap();
    assert!(st.started_at.is_some());
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );

    // Dana is logged on: interactive, and her refusal denies the session.
    apply(
        &env,
        "laptop-fix",
        serde_json::json!({"device": "laptop", "mode": "Dynamic"}),
    )
    .await;
    let s = wait_phase(&env, "laptop-fix", SessionPhase::Pending).await;
    assert_eq!(
        format!("{:?}", s.status.unwrap().effective_mode),
        "Some(Interactive)"
    );
    device_reports(&env, "laptop", true, &["dana"]).await;
    let api = env.sessions.clone();
    eventually("waiting for consent", PATIENCE, || {
        let api = api.clone();
        async move {
            let st = api.get("laptop-fix").await.ok()?.status?;
            (st.reason.as_deref() == Some("WaitingForConsent")).then_some(())
        }
    })
    .await;
    relay_reports(
        &env,
        "laptop-fix",
        &[("Consented", "False", "ConsentRefused")],
    )
    .await;
    let denied = wait_phase(&env, "laptop-fix", SessionPhase::Denied).await;
    assert_eq!(
        denied.status.unwrap().reason.as_deref(),
        Some("ConsentRefused")
    );
    eventually("the access Secret is deleted", PATIENCE, || async {
        access_secret(&env, "laptop-fix")
            .await
            .is_none()
            .then_some(())
    })
    .await;

    // A session on a device that does not exist fails with a clear reason.
    apply(
        &env,
        "ghost",
        serde_json::json!({"device": "no-such-device"}),
    )
    .await;
    let failed = wait_phase(&env, "ghost", SessionPhase::Failed).await;
    let st = failed.status.unwrap();
    assert_eq!(st.reason.as_deref(), Some("DeviceNotFound"));
    assert_eq!(
        st.message.unwrap(),
        format!(
            "Device no-such-device does not exist in namespace {}",
            env.ns
        )
    );
}

#[tokio::test]
async fn a_deleted_access_secret_is_issued_again() {
    let env = setup("reissue").await;
    apply(&env, "keep", serde_json::json!({"device": "laptop"})).await;
    wait_phase(&env, "keep", SessionPhase::Pending).await;
    let first = eventually("credentials are issued", PATIENCE, || {
        access_secret(&env, "keep")
    })
    .await;
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), &env.ns);
    secrets
        .delete("keep-access", &DeleteParams::default())
        .await
        .unwrap();
    let second = eventually("credentials are issued again", PATIENCE, || async {
        access_secret(&env, "keep")
            .await
            .filter(|s| s.metadata.uid != first.metadata.uid)
    })
    .await;
    assert_ne!(secret_text(&first, "token"), secret_text(&second, "token"));
}

#[tokio::test]
async fn credentials_rotate_with_overlap() {
    let cp = control_plane();
    let admin = cp.client("admin").await.unwrap();
    install_crds(&admin).await.unwrap();
    let ns = cp.namespace("rotation").await.unwrap();
    // Its own credential namespace and very short lifetimes: the CA rotates every few
    // seconds (a third of 9s before expiry) and the signing key every 3s.
    let _operator = Operator::start(
        cp,
        "admin",
        &ns,
        &[
            &format!("--namespace={ns}"),
            "--ca-validity=9s",
            "--token-key-rotation=3s",
        ],
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns);
    let first_keys: Vec<VerifyingKey> =
        eventually("the trust ConfigMap is published", PATIENCE, || async {
            let data = cms.get("tether-trust").await.ok()?.data?;
            serde_json::from_str(&data["token-keys.json"]).ok()
        })
        .await;
    let first_ca = secrets.get("tether-ca").await.unwrap();
    let first_ca_pem = String::from_utf8(first_ca.data.unwrap()["ca.crt"].0.clone()).unwrap();

    // Keys: the first key keeps being published after newer ones take over.
    let keys: Vec<VerifyingKey> = eventually("two newer signing keys exist", PATIENCE, || async {
        let data = cms.get("tether-trust").await.ok()?.data?;
        let keys: Vec<VerifyingKey> = serde_json::from_str(&data["token-keys.json"]).ok()?;
        (keys.len() >= 3).then_some(keys)
    })
    .await;
    assert!(
        keys.iter().any(|k| k.kid == first_keys[0].kid),
        "the retired key is still trusted"
    );
    assert_ne!(keys[0].kid, first_keys[0].kid, "a new key signs");

    // CA: the new bundle holds the new CA and the old one, whose certificates stay valid.
    let bundle = eventually("the CA rotated", PATIENCE, || async {
        let data = cms.get("tether-trust").await.ok()?.data?;
        let bundle = data["ca-bundle.crt"].clone();
        (bundle.matches("BEGIN CERTIFICATE").count() >= 2).then_some(bundle)
    })
    .await;
    assert!(
        bundle.contains(first_ca_pem.trim()),
        "the previous CA stays trusted until it expires"
    );
    let rotated = secrets.get("tether-ca").await.unwrap();
    let current = String::from_utf8(rotated.data.unwrap()["ca.crt"].0.clone()).unwrap();
    assert_ne!(current, first_ca_pem);
}

#[tokio::test]
async fn a_relay_learns_a_termination_within_a_second() {
    let env = setup("revoke").await;
    apply(&env, "live", serde_json::json!({"device": "laptop"})).await;
    let live = wait_phase(&env, "live", SessionPhase::Pending).await;
    let uid = live.metadata.uid.clone().unwrap();
    let secret = eventually("credentials are issued", PATIENCE, || {
        access_secret(&env, "live")
    })
    .await;
    let token = secret_text(&secret, "token");

    // The relay's trust store, watching what the operator publishes.
    let store = tether_relay::trust::TrustStore::new();
    let watching = tokio::spawn(
        store
            .clone()
            .watch(env.admin.clone(), SYSTEM_NAMESPACE.to_owned()),
    );
    eventually("the relay loaded its trust material", PATIENCE, || async {
        store.is_ready().then_some(())
    })
    .await;
    store
        .authorize(&token, Timestamp::now().as_second(), Some(&uid))
        .unwrap();

    let mut changes = store.subscribe();
    let asked = std::time::Instant::now();
    let patch =
        serde_json::json!({"metadata": {"annotations": {"tether.dev/terminated-by": "admin"}}});
    env.sessions
        .patch("live", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    while !store.is_revoked(&uid) {
        tokio::time::timeout(PATIENCE, changes.changed())
            .await
            .unwrap()
            .unwrap();
    }
    let took = asked.elapsed();
    eprintln!("relay learned the termination {took:?} after it was requested");
    assert!(took <= Duration::from_secs(1), "took {took:?}");
    let err = store
        .authorize(&token, Timestamp::now().as_second(), Some(&uid))
        .unwrap_err();
    assert_eq!(err, TokenError::Revoked(uid));
    watching.abort();
}

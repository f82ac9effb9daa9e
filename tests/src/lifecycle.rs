//! A namespace for the life of a RemoteSession: its Devices and the operator, applying sessions
//! as a GitOps tool would, and reading back what the operator wrote (phases, access Secrets,
//! published keys and revocations, Events).

#![allow(clippy::unwrap_used)] // Test support fails loudly on any unexpected error.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use tether_crds::remote_session::SessionPhase;
use tether_crds::{Device, RemoteSession};
use tether_proto::token::{DEFAULT_LEEWAY, Revocations, Verifier, VerifyingKey};

use crate::{
    OPERATOR_USER, Operator, PATIENCE, SYSTEM_NAMESPACE, TEST_MANAGER, control_plane, eventually,
    install_chart_templates, install_crds, workspace_bin,
};

/// The cluster maximum the tests install (admission policy and operator).
pub const MAX: &str = "1h";

/// A namespace with the Devices `laptop` and `kiosk`, watched by the operator.
pub struct Env {
    /// The cluster administrator.
    pub admin: kube::Client,
    /// The test's namespace.
    pub ns: String,
    /// RemoteSessions in `ns`, as the administrator.
    pub sessions: Api<RemoteSession>,
    /// The operator, watching `ns`.
    pub operator: Operator,
}

/// Installs the CRDs, the operator's RBAC and the admission policies with [`MAX`] as the
/// cluster maximum, creates a namespace named after `prefix` with its Devices, and starts the
/// operator.
pub async fn setup(prefix: &str) -> Env {
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
    admission_in_force(&Api::namespaced(admin.clone(), &ns)).await;
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
pub fn manifest(name: &str, spec: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "RemoteSession",
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// Applies RemoteSession `name` with `spec`, as a GitOps tool would.
pub async fn apply(env: &Env, name: &str, spec: serde_json::Value) -> RemoteSession {
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
pub fn in_secs(secs: i64) -> String {
    Timestamp::from_second(Timestamp::now().as_second() + secs)
        .unwrap()
        .to_string()
}

/// Waits until RemoteSession `name` is in `phase`, and returns it.
pub async fn wait_phase(env: &Env, name: &str, phase: SessionPhase) -> RemoteSession {
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

/// The session's access Secret, if there is one.
pub async fn access_secret(env: &Env, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(env.admin.clone(), &env.ns)
        .get_opt(&format!("{name}-access"))
        .await
        .unwrap()
}

/// The text under `key` in `secret`.
pub fn secret_text(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

/// A verifier built from what the operator publishes, as a relay would build it.
pub async fn published_verifier(env: &Env) -> (Verifier, Revocations) {
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

/// The reasons of the Events about `name`, oldest first.
pub async fn event_reasons(env: &Env, name: &str) -> Vec<String> {
    events_about(&env.admin, &env.ns, name)
        .await
        .into_iter()
        .map(|(reason, _)| reason)
        .collect()
}

/// The Events about `name` in `ns` as (reason, when), oldest first.
pub async fn events_about(
    admin: &kube::Client,
    ns: &str,
    name: &str,
) -> Vec<(String, Option<Timestamp>)> {
    let events: Api<Event> = Api::namespaced(admin.clone(), ns);
    let mut list: Vec<Event> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect();
    list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    list.into_iter()
        .filter_map(|e| Some((e.reason?, e.event_time.map(|t| t.0))))
        .collect()
}

/// The Events of a scheduled session's life without a technician, each written once.
pub const WINDOW_TRANSITIONS: [&str; 6] = [
    "Scheduled",
    "AccessIssued",
    "WindowOpened",
    "ExpiringSoon",
    "Expired",
    "AccessRevoked",
];

/// Asserts that each of [`WINDOW_TRANSITIONS`] is among `reasons` exactly once.
pub fn assert_window_transitions_once(reasons: &[String]) {
    for reason in WINDOW_TRANSITIONS {
        assert_eq!(count(reasons, reason), 1, "{reason} in {reasons:?}");
    }
}

/// How often `reason` occurs in `reasons`.
pub fn count(reasons: &[String], reason: &str) -> usize {
    reasons.iter().filter(|r| *r == reason).count()
}

/// The plugin run directly (not through kubectl) as `user` in `ns`.
pub fn tether_cli(user: &str, ns: &str, args: &[&str]) -> std::process::Output {
    let cp = control_plane();
    std::process::Command::new(workspace_bin("kubectl-tether"))
        .arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .arg(format!("--context={user}"))
        .args(["-n", ns])
        .args(args)
        .output()
        .unwrap()
}

/// Returns at `t` (at once if it has passed).
pub async fn wait_until(t: Timestamp) {
    let left = t.duration_since(Timestamp::now());
    if let Ok(left) = Duration::try_from(left) {
        tokio::time::sleep(left).await;
    }
}

/// Writes `conditions` (type, status, reason) to the session's status as the relay does.
pub async fn relay_reports(env: &Env, name: &str, conditions: &[(&str, &str, &str)]) {
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
pub async fn device_reports(env: &Env, device: &str, online: bool, users: &[&str]) {
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

/// Waits until the API server enforces the admission policies just installed: it applies a
/// policy only once its informer has seen it, so a session over [`MAX`] is tried as a dry run
/// (nothing is created) until it is refused.
async fn admission_in_force(sessions: &Api<RemoteSession>) {
    let mut params = PatchParams::apply(TEST_MANAGER);
    params.dry_run = true;
    let over = manifest(
        "admission-probe",
        serde_json::json!({"device": "laptop", "duration": "2h"}),
    );
    eventually("the admission policies are in force", PATIENCE, || {
        let (sessions, params, over) = (sessions.clone(), params.clone(), over.clone());
        async move {
            match sessions
                .patch("admission-probe", &params, &Patch::Apply(&over))
                .await
            {
                Err(e) if e.to_string().contains("exceeds the cluster maximum") => Some(()),
                _ => None,
            }
        }
    })
    .await;
}

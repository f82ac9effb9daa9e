//! `tether-operator` as a real process, with exactly the RBAC the Helm chart grants it: it
//! writes status by server-side apply, publishes Events and metrics, and shuts down cleanly.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use tether_crds::RemoteSession;
use tether_crds::remote_session::SessionPhase;
use tether_e2e::{
    OPERATOR_USER, Operator, PATIENCE, TEST_MANAGER, control_plane, eventually,
    install_chart_templates, install_crds, kubectl_apply,
};

async fn session_phase(api: &Api<RemoteSession>, name: &str) -> Option<SessionPhase> {
    api.get(name).await.ok()?.status?.phase
}

#[tokio::test]
async fn operator_sets_status_publishes_events_and_metrics() {
    let cp = control_plane();
    let admin = cp.client("admin").await.unwrap();
    install_crds(&admin).await.unwrap();
    install_chart_templates(&["templates/operator-rbac.yaml"], &[]);
    let ns = cp.namespace("operator").await.unwrap();
    let devices = kubectl_apply(
        cp,
        "admin",
        &ns,
        "apiVersion: tether.dev/v1alpha1\nkind: Device\nmetadata:\n  name: laptop-1\n---\napiVersion: tether.dev/v1alpha1\nkind: Device\nmetadata:\n  name: server-7\n",
    );
    assert!(
        devices.status.success(),
        "{}",
        String::from_utf8_lossy(&devices.stderr)
    );
    let mut operator = Operator::start(cp, OPERATOR_USER, &ns, &[]).await;

    let api: Api<RemoteSession> = Api::namespaced(admin.clone(), &ns);
    let instant: RemoteSession = serde_json::from_value(serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "RemoteSession",
        "metadata": {"name": "now"},
        "spec": {"device": "laptop-1"},
    }))
    .unwrap();
    let scheduled: RemoteSession = serde_json::from_value(serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "RemoteSession",
        "metadata": {"name": "later"},
        "spec": {"device": "server-7", "startTime": "2099-01-01T00:00:00Z", "duration": "1h", "mode": "Unattended"},
    }))
    .unwrap();
    let pp = PatchParams::apply(TEST_MANAGER);
    let created = api
        .patch("now", &pp, &Patch::Apply(&instant))
        .await
        .unwrap();
    api.patch("later", &pp, &Patch::Apply(&scheduled))
        .await
        .unwrap();

    // Status is written promptly (watch-driven, not polled) and records the generation.
    let status = eventually("the instant session is Pending", PATIENCE, || async {
        let s = api.get("now").await.ok()?;
        (s.status.as_ref()?.phase == Some(SessionPhase::Pending)).then_some(s)
    })
    .await;
    let created_at = created.metadata.creation_timestamp.unwrap().0;
    let st = status.status.unwrap();
    assert_eq!(st.observed_generation, status.metadata.generation);
    let ready = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap_or_else(|| panic!("no Ready condition in {:#?}", st.conditions));
    let reaction = ready.last_transition_time.0.duration_since(created_at);
    eprintln!("operator wrote status {reaction:?} after creation (second precision)");
    assert!(
        reaction <= jiff::SignedDuration::from_secs(1),
        "status was written {reaction:?} after creation, expected within a second"
    );
    assert_eq!(ready.status, "False");
    assert_eq!(st.scheduled_start.as_ref().map(|t| t.0), Some(created_at));
    assert_eq!(
        st.expires_at.map(|t| t.0),
        Some(created_at + jiff::SignedDuration::from_mins(30))
    );

    eventually("the future session is Scheduled", PATIENCE, || {
        let api = api.clone();
        async move {
            (session_phase(&api, "later").await == Some(SessionPhase::Scheduled)).then_some(())
        }
    })
    .await;

    // The status fields belong to the operator's field manager (server-side apply).
    let managed = api
        .get("now")
        .await
        .unwrap()
        .metadata
        .managed_fields
        .unwrap();
    assert!(
        managed.iter().any(
            |m| m.manager.as_deref() == Some("tether-operator/remotesession")
                && m.subresource.as_deref() == Some("status")
                && m.operation.as_deref() == Some("Apply")
        ),
        "{managed:#?}"
    );

    // Events are published for each session.
    let events: Api<Event> = Api::namespaced(admin.clone(), &ns);
    let reasons = eventually("Events are published", PATIENCE, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        let reasons: Vec<String> = list.items.iter().filter_map(|e| e.reason.clone()).collect();
        (reasons.contains(&"WindowOpened".to_owned()) && reasons.contains(&"Scheduled".to_owned()))
            .then_some(reasons)
    })
    .await;
    assert!(!reasons.is_empty());

    // Metrics count sessions by phase; health endpoints answer.
    let metrics = eventually("metrics show both sessions", PATIENCE, || async {
        let (code, body) = operator.get("/metrics").await.ok()?;
        (code == 200
            && body.contains("tether_operator_sessions{phase=\"Pending\"} 1")
            && body.contains("tether_operator_sessions{phase=\"Scheduled\"} 1"))
        .then_some(body)
    })
    .await;
    assert!(metrics.contains("# HELP tether_operator_reconcile_duration_seconds"));
    assert!(
        metrics.contains("tether_operator_transition_lateness_seconds_count{phase=\"Pending\"} 1"),
        "{metrics}"
    );
    assert_eq!(operator.get("/healthz").await.unwrap().0, 200);
    assert_eq!(operator.get("/readyz").await.unwrap().0, 200);

    // SIGTERM: a graceful, successful exit.
    let status = operator.process.terminate(Duration::from_secs(30));
    assert_eq!(
        status,
        "exit status: 0",
        "{}",
        operator.process.log_tail(20)
    );
    let log = operator.process.log_tail(5);
    assert!(log.contains("Stopped tether-operator"), "{log}");
}

#[tokio::test]
async fn operator_provisions_the_relay_workload() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
    let cp = control_plane();
    let admin = cp.client("admin").await.unwrap();
    install_crds(&admin).await.unwrap();
    install_chart_templates(&["templates/operator-rbac.yaml"], &[]);
    let ns = cp.namespace("provision").await.unwrap();
    // Its own namespace for the operator's objects, so no other test's operator shares them.
    let _operator = Operator::start(
        cp,
        "admin",
        &ns,
        &[
            &format!("--namespace={ns}"),
            "--relay-address=relay.example.com:443",
            "--relay-image=registry.example.com/tether-relay:1.0",
            "--relay-port=443",
            "--recording-store=file:///var/lib/tether/recordings",
            "--recording-claim-name=tether-recordings",
            "--recording-option=colour=blue",
            "--recording-credentials-secret=recording-credentials",
            "--recording-part-size=6291456",
            "--recording-flush-interval=750ms",
        ],
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    let deployment = eventually("the relay Deployment exists", PATIENCE, || {
        let deployments = deployments.clone();
        async move { deployments.get_opt("tether-relay").await.ok().flatten() }
    })
    .await;
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("tether-relay"));
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("registry.example.com/tether-relay:1.0")
    );
    // The file:// store's directory is the claim, mounted where the URL says.
    let volume = &pod.volumes.as_ref().unwrap()[0];
    assert_eq!(
        volume
            .persistent_volume_claim
            .as_ref()
            .map(|c| c.claim_name.as_str()),
        Some("tether-recordings")
    );
    let mount = &pod.containers[0].volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (mount.name.as_str(), mount.mount_path.as_str()),
        (volume.name.as_str(), "/var/lib/tether/recordings")
    );
    // The operator applies its objects one after another: wait for each.
    let services: Api<Service> = Api::namespaced(admin.clone(), &ns);
    let service = eventually("the relay Service exists", PATIENCE, || {
        let services = services.clone();
        async move { services.get_opt("tether-relay").await.ok().flatten() }
    })
    .await;
    let protocols: Vec<String> = service
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .map(|p| format!("{}/{}", p.port, p.protocol.unwrap_or_default()))
        .collect();
    assert_eq!(protocols, vec!["443/UDP", "443/TCP"]);
    let configs: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns);
    let config = eventually("the relay ConfigMap exists", PATIENCE, || {
        let configs = configs.clone();
        async move { configs.get_opt("tether-relay").await.ok().flatten() }
    })
    .await;
    let data = config.data.unwrap();
    assert_eq!(data["advertise"], "relay.example.com:443");
    // The relay records where the operator was told to, with the same options; the
    // credentials stay in their Secret, which the relay reads itself.
    assert_eq!(data["recordingStore"], "file:///var/lib/tether/recordings");
    assert_eq!(data["recordingOptions"], r#"{"colour":"blue"}"#);
    assert_eq!(data["recordingCredentialsSecret"], "recording-credentials");
    assert_eq!(data["recordingPartSize"], "6291456");
    assert_eq!(data["recordingFlushInterval"], "750ms");
    let secrets: Api<Secret> = Api::namespaced(admin, &ns);
    let secret = eventually("the relay serving certificate exists", PATIENCE, || {
        let secrets = secrets.clone();
        async move { secrets.get_opt("tether-relay-tls").await.ok().flatten() }
    })
    .await;
    let names = secret.metadata.annotations.unwrap()["tether.dev/names"].clone();
    assert!(
        names.contains("relay.example.com") && names.contains(&format!("tether-relay.{ns}.svc")),
        "{names}"
    );
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
}

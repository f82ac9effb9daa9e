//! The operator's side of session recordings, with the real operator process and exactly the
//! RBAC the chart grants it: what the relay reports about a recording decides the session's
//! phase; retention deletes old recordings from a real store (a `file://` directory, and a
//! real S3 server with credentials from a Secret) but never held or live ones; legal hold
//! follows a label and outlives the RemoteSession; and the chart wires all of it. Auditors'
//! certificates are in `auditors.rs`.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use tether_crds::RemoteSession;
use tether_crds::remote_session::SessionPhase;
use tether_e2e::s3::S3Server;
use tether_e2e::{
    OPERATOR_USER, Operator, PATIENCE, SYSTEM_NAMESPACE, TEST_MANAGER, control_plane, eventually,
    install_chart_templates, install_crds,
};
use tether_recording::catalog::{self, StoredSession};
use tether_recording::{Recorder, RecorderSettings, SessionRef, Storage, StoreConfig};

const LEGAL_HOLD: &str = "tether.dev/legal-hold";

/// Creates a RemoteSession and returns its uid.
async fn create_session(
    api: &Api<RemoteSession>,
    name: &str,
    device: &str,
    extra_spec: serde_json::Value,
    labels: serde_json::Value,
) -> String {
    let mut spec = serde_json::json!({"device": device});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        spec.extend(extra.clone());
    }
    let session: RemoteSession = serde_json::from_value(serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "RemoteSession",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }))
    .unwrap();
    let created = api
        .patch(
            name,
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(&session),
        )
        .await
        .unwrap();
    created.metadata.uid.unwrap()
}

async fn wait_phase(api: &Api<RemoteSession>, name: &str, phase: SessionPhase) -> RemoteSession {
    eventually(&format!("{name} is {phase:?}"), PATIENCE, || async {
        let s = api.get(name).await.ok()?;
        (s.status.as_ref()?.phase == Some(phase)).then_some(s)
    })
    .await
}

/// Records a short session into `storage`, as a relay would.
async fn record(storage: &Storage, namespace: &str, name: &str, uid: &str) -> SessionRef {
    let session = SessionRef {
        namespace: namespace.into(),
        name: name.into(),
        uid: uid.into(),
    };
    let recorder = Recorder::start(
        storage.clone(),
        RecorderSettings::default(),
        session.clone(),
        "laptop-1".into(),
    )
    .await
    .unwrap();
    recorder.technician("carol").await;
    let manifest = recorder.finish("Completed").await;
    assert_eq!(manifest.state.as_str(), "Complete", "{manifest:?}");
    session
}

async fn stored(storage: &Storage, session: &SessionRef) -> Option<StoredSession> {
    catalog::sessions(storage)
        .await
        .unwrap()
        .into_iter()
        .find(|s| &s.session == session)
}

/// A counter or gauge of the operator's metrics.
async fn metric(operator: &Operator, name: &str) -> u64 {
    let (_, body) = operator.get("/metrics").await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until the operator has run `n` more retention sweeps, so anything it would do to the
/// store has had its chance.
async fn sweeps_pass(operator: &Operator, n: u64) {
    let start = metric(operator, "tether_operator_recording_sweeps_total").await;
    eventually(&format!("{n} more retention sweeps"), PATIENCE, || async {
        (metric(operator, "tether_operator_recording_sweeps_total").await >= start + n)
            .then_some(())
    })
    .await;
}

async fn event_reasons(admin: &kube::Client, ns: &str, session: &str) -> Vec<String> {
    Api::<Event>::namespaced(admin.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(session))
        .filter_map(|e| e.reason)
        .collect()
}

fn file_store(dir: &std::path::Path) -> (String, Storage) {
    let url = format!("file://{}", dir.display());
    let storage = Storage::open(&StoreConfig::new(url.clone())).unwrap();
    (url, storage)
}

#[tokio::test]
async fn the_relays_recording_reports_decide_the_phase() {
    let cp = control_plane();
    let admin = cp.client("admin").await.unwrap();
    install_crds(&admin).await.unwrap();
    install_chart_templates(&["templates/operator-rbac.yaml"], &[]);
    let ns = cp.namespace("recording-phase").await.unwrap();
    let _operator = Operator::start(cp, OPERATOR_USER, &ns, &[]).await;
    let devices: Api<tether_crds::Device> = Api::namespaced(admin.clone(), &ns);
    devices
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "apiVersion": "tether.dev/v1alpha1", "kind": "Device",
                "metadata": {"name": "laptop-1"}, "spec": {},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let api: Api<RemoteSession> = Api::namespaced(admin.clone(), &ns);
    create_session(
        &api,
        "must-record",
        "laptop-1",
        serde_json::json!({"recording": "Required", "mode": "Unattended"}),
        serde_json::json!({}),
    )
    .await;
    wait_phase(&api, "must-record", SessionPhase::Pending).await;

    // The relay (its own field manager) reports that the store is down.
    let relay = PatchParams::apply("tether-relay").force();
    let report = |conditions: serde_json::Value| {
        serde_json::json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "RemoteSession",
            "status": {"conditions": conditions},
        })
    };
    let unavailable = serde_json::json!({
        "type": "Recording", "status": "False", "reason": "StorageUnavailable",
        "message": "the recording store is unavailable: connection refused",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    });
    api.patch_status(
        "must-record",
        &relay,
        &Patch::Apply(&report(serde_json::json!([unavailable]))),
    )
    .await
    .unwrap();
    let pending = eventually(
        "the Pending message names the recording",
        PATIENCE,
        || async {
            let s = api.get("must-record").await.ok()?;
            let st = s.status?;
            st.message
                .filter(|m| m.contains("must be recorded, but the recording store is unavailable"))
                .map(|_| st.conditions)
        },
    )
    .await;
    // The operator wrote its status and left the relay's condition alone.
    assert!(
        pending.iter().any(|c| c.type_ == "Recording"),
        "{pending:#?}"
    );

    // The recording fails for good: the relay ends the session.
    let ended = serde_json::json!({
        "type": "Ended", "status": "True", "reason": "RecordingFailed",
        "message": "the session was ended because it must be recorded and recording failed: disk full",
        "lastTransitionTime": "2026-01-01T00:01:00Z",
    });
    api.patch_status(
        "must-record",
        &relay,
        &Patch::Apply(&report(serde_json::json!([unavailable, ended]))),
    )
    .await
    .unwrap();
    let failed = wait_phase(&api, "must-record", SessionPhase::Failed).await;
    let st = failed.status.unwrap();
    assert_eq!(st.reason.as_deref(), Some("RecordingFailed"));
    assert!(
        st.message.as_deref().unwrap().contains("disk full"),
        "{st:#?}"
    );
    let recording = st.conditions.iter().find(|c| c.type_ == "Recording");
    assert_eq!(
        recording.map(|c| c.reason.as_str()),
        Some("StorageUnavailable"),
        "{st:#?}"
    );
    let managed = failed.metadata.managed_fields.unwrap_or_default();
    let operator_fields = managed
        .iter()
        .find(|m| m.manager.as_deref() == Some("tether-operator/remotesession"))
        .and_then(|m| m.fields_v1.as_ref())
        .map(|f| f.0.to_string())
        .unwrap_or_default();
    assert!(
        operator_fields.contains(r#"\"type\":\"Ready\""#)
            && !operator_fields.contains(r#"\"type\":\"Recording\""#),
        "the operator owns Ready, never the relay's Recording: {operator_fields}"
    );
}

#[tokio::test]
async fn retention_deletes_old_recordings_but_never_held_or_live_ones() {
    let cp = control_plane();
    let admin = cp.client("admin").await.unwrap();
    install_crds(&admin).await.unwrap();
    install_chart_templates(&["templates/operator-rbac.yaml"], &[]);
    let ns = cp.namespace("retention").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (url, storage) = file_store(dir.path());
    let devices: Api<tether_crds::Device> = Api::namespaced(admin.clone(), &ns);
    devices
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "apiVersion": "tether.dev/v1alpha1", "kind": "Device",
                "metadata": {"name": "laptop-1"}, "spec": {},
            }))
            .unwrap(),
        )
        .await
        .unwrap();

    // Sessions first (their uids name their recordings): two end at once (their Device does
    // not exist), one is held, one stays Pending.
    let api: Api<RemoteSession> = Api::namespaced(admin.clone(), &ns);
    let none = serde_json::json!({});
    let ended_uid = create_session(&api, "ended", "gone", none.clone(), none.clone()).await;
    let held_uid = create_session(
        &api,
        "held",
        "gone",
        none.clone(),
        serde_json::json!({LEGAL_HOLD: "true"}),
    )
    .await;
    let live_uid = create_session(&api, "live", "laptop-1", none.clone(), none.clone()).await;
    let ended = record(&storage, &ns, "ended", &ended_uid).await;
    let held = record(&storage, &ns, "held", &held_uid).await;
    let live = record(&storage, &ns, "live", &live_uid).await;
    // A recording of an earlier session of the same name (another uid) is not "ended"'s.
    let earlier = record(&storage, &ns, "ended", "an-earlier-uid").await;

    let operator = Operator::start(
        cp,
        OPERATOR_USER,
        &ns,
        &[
            &format!("--recording-store={url}"),
            "--recording-retention=1s",
            "--recording-sweep-interval=1s",
        ],
    )
    .await;
    assert_eq!(operator.recordings_dir(), None);
    wait_phase(&api, "ended", SessionPhase::Failed).await;
    wait_phase(&api, "held", SessionPhase::Failed).await;
    wait_phase(&api, "live", SessionPhase::Pending).await;

    eventually(
        "old recordings of ended sessions are deleted",
        PATIENCE,
        || async {
            (stored(&storage, &ended).await.is_none() && stored(&storage, &earlier).await.is_none())
                .then_some(())
        },
    )
    .await;
    eventually("the held session's marker is written", PATIENCE, || async {
        stored(&storage, &held).await.filter(|s| s.held)
    })
    .await;
    sweeps_pass(&operator, 2).await;
    assert!(
        stored(&storage, &held).await.is_some_and(|s| s.held),
        "a held recording stays"
    );
    assert!(
        stored(&storage, &live).await.is_some(),
        "a live session's recording stays, however old"
    );
    assert_eq!(
        metric(&operator, "tether_operator_recordings_deleted_total").await,
        2
    );
    assert_eq!(
        metric(&operator, "tether_operator_recordings_held").await,
        1
    );
    assert_eq!(
        metric(&operator, "tether_operator_recording_sweep_errors_total").await,
        0
    );
    let reasons = eventually("the deletion is an Event", PATIENCE, || async {
        let r = event_reasons(&admin, &ns, "ended").await;
        r.contains(&"RecordingDeleted".to_owned()).then_some(r)
    })
    .await;
    assert!(!reasons.is_empty());
    eventually("the hold is an Event", PATIENCE, || async {
        event_reasons(&admin, &ns, "held")
            .await
            .contains(&"LegalHoldSet".to_owned())
            .then_some(())
    })
    .await;

    // Removing the label lifts the hold; the recording then follows the retention.
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": {LEGAL_HOLD: null}}})),
    )
    .await
    .unwrap();
    eventually("the released recording is deleted", PATIENCE, || async {
        stored(&storage, &held).await.is_none().then_some(())
    })
    .await;
    // Long past its retention, the recording goes at once (the marker with it).
    eventually(
        "the deletion after the release is an Event",
        PATIENCE,
        || async {
            event_reasons(&admin, &ns, "held")
                .await
                .contains(&"RecordingDeleted".to_owned())
                .then_some(())
        },
    )
    .await;
    assert!(stored(&storage, &live).await.is_some());
}

#[tokio::test]
async fn a_legal_hold_outlives_the_session_in_s3() {
    let cp = control_plane();
    let admin = cp.client("admin").await.unwrap();
    install_crds(&admin).await.unwrap();
    install_chart_templates(&["templates/operator-rbac.yaml"], &[]);
    let ns = cp.namespace("legal-hold").await.unwrap();
    let s3 = S3Server::start().await;
    let url = format!("s3://{}/{ns}", s3.bucket());
    let options = [
        ("endpoint", s3.endpoint()),
        ("region", s3.region().to_owned()),
        ("allow_http", "true".to_owned()),
        ("virtual_hosted_style_request", "false".to_owned()),
    ];
    let mut config = StoreConfig::new(url.clone())
        .option("access_key_id", s3.access_key())
        .option("secret_access_key", s3.secret_key());
    for (k, v) in &options {
        config = config.option(*k, v.clone());
    }
    let storage = Storage::open(&config).unwrap();

    // The credentials live in a Secret in the operator's namespace, nowhere else.
    let secret_name = format!("{ns}-s3");
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), SYSTEM_NAMESPACE);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": secret_name},
                "stringData": {"access_key_id": s3.access_key(), "secret_access_key": s3.secret_key()},
            }))
            .unwrap(),
        )
        .await
        .unwrap();

    let mut args = vec![
        format!("--recording-store={url}"),
        format!("--recording-credentials-secret={secret_name}"),
        "--recording-retention=1s".to_owned(),
        "--recording-sweep-interval=1s".to_owned(),
    ];
    args.extend(
        options
            .iter()
            .map(|(k, v)| format!("--recording-option={k}={v}")),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let operator = Operator::start(cp, OPERATOR_USER, &ns, &args).await;

    let api: Api<RemoteSession> = Api::namespaced(admin.clone(), &ns);
    let none = serde_json::json!({});
    let held_uid = create_session(
        &api,
        "evidence",
        "gone",
        none.clone(),
        serde_json::json!({LEGAL_HOLD: "true"}),
    )
    .await;
    let plain_uid = create_session(&api, "routine", "gone", none.clone(), none.clone()).await;
    wait_phase(&api, "evidence", SessionPhase::Failed).await;
    wait_phase(&api, "routine", SessionPhase::Failed).await;
    let held = record(&storage, &ns, "evidence", &held_uid).await;
    let plain = record(&storage, &ns, "routine", &plain_uid).await;

    eventually("the held session's marker is written", PATIENCE, || async {
        stored(&storage, &held).await.filter(|s| s.held)
    })
    .await;
    // Both sessions are deleted from the cluster: the hold stays with the recording.
    for name in ["evidence", "routine"] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    eventually("the sessions are gone", PATIENCE, || async {
        (api.get_opt("evidence").await.ok()?.is_none()
            && api.get_opt("routine").await.ok()?.is_none())
        .then_some(())
    })
    .await;
    eventually("the unheld recording is deleted", PATIENCE, || async {
        stored(&storage, &plain).await.is_none().then_some(())
    })
    .await;
    sweeps_pass(&operator, 2).await;
    let kept = stored(&storage, &held).await;
    assert!(
        kept.as_ref().is_some_and(|s| s.held && s.keys.len() > 1),
        "the held recording outlives its session: {kept:?}"
    );
    assert_eq!(
        metric(&operator, "tether_operator_recording_sweep_errors_total").await,
        0,
        "{}",
        operator.process.log_tail(30)
    );
    let log = operator.process.log_tail(200);
    assert!(
        !log.contains(s3.secret_key()),
        "the secret key must never be logged"
    );
    secrets
        .delete(&secret_name, &DeleteParams::default())
        .await
        .unwrap();
}

#[test]
fn the_chart_configures_recording_for_the_operator_and_relay() {
    let rendered = tether_e2e::helm_template(
        &[
            "templates/operator-deployment.yaml",
            "templates/relay-rbac.yaml",
            "templates/user-roles.yaml",
            "templates/operator-rbac.yaml",
        ],
        &[
            "recording.store.url=file:///var/lib/tether/recordings",
            "recording.store.claimName=tether-recordings",
            "recording.store.credentialsSecret=recording-credentials",
            "recording.store.options.endpoint=http://minio:9000",
            "recording.store.options.allow_http=true",
            "recording.retention=720h",
        ],
    );
    let docs: Vec<serde_yaml::Value> = rendered
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str::<serde_yaml::Value>(d).ok())
        .filter(|d| !d.is_null())
        .collect();
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in:\n{rendered}"))
    };
    let pod = &find("Deployment", "tether-operator")["spec"]["template"]["spec"];
    let env: std::collections::BTreeMap<String, String> = pod["containers"][0]["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect();
    assert_eq!(
        env["TETHER_RECORDING_STORE"],
        "file:///var/lib/tether/recordings"
    );
    assert_eq!(
        env["TETHER_RECORDING_OPTIONS"],
        "allow_http=true,endpoint=http://minio:9000"
    );
    assert_eq!(
        env["TETHER_RECORDING_CREDENTIALS_SECRET"],
        "recording-credentials"
    );
    assert_eq!(env["TETHER_RECORDING_CLAIM_NAME"], "tether-recordings");
    assert_eq!(env["TETHER_RECORDING_PART_SIZE"], "5242880");
    assert_eq!(env["TETHER_RECORDING_FLUSH_INTERVAL"], "2s");
    assert_eq!(env["TETHER_RECORDING_RETENTION"], "720h");
    assert_eq!(env["TETHER_RECORDING_SWEEP_INTERVAL"], "1h");
    // Retention reaches a file:// store through the same claim the relay mounts.
    assert_eq!(
        pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "tether-recordings"
    );
    assert_eq!(
        pod["containers"][0]["volumeMounts"][0]["mountPath"],
        "/var/lib/tether/recordings"
    );
    // The relay may read the credentials Secret, and only that one besides its own.
    let relay = serde_yaml::to_string(&find("Role", "tether-relay")["rules"]).unwrap();
    assert!(relay.contains("recording-credentials"), "{relay}");
    // The auditor role and the admin role read recordings.
    for role in ["tether-auditor", "tether-admin"] {
        let rules = serde_yaml::to_string(&find("ClusterRole", role)["rules"]).unwrap();
        assert!(
            rules.contains("remotesessions/recording"),
            "{role}: {rules}"
        );
    }
    assert!(
        serde_yaml::to_string(&find("ClusterRole", "tether-viewer")["rules"])
            .unwrap()
            .contains("recording")
            .eq(&false),
        "viewers do not read recordings"
    );
    let operator = serde_yaml::to_string(&find("ClusterRole", "tether-operator")["rules"]).unwrap();
    assert!(
        operator.contains("tether.dev/recordings") && operator.contains("subjectaccessreviews"),
        "{operator}"
    );

    // Without a store nothing about recording is set but the defaults.
    let plain = tether_e2e::helm_template(&["templates/operator-deployment.yaml"], &[]);
    assert!(!plain.contains("TETHER_RECORDING_STORE"), "{plain}");
    assert!(!plain.contains("persistentVolumeClaim"), "{plain}");
}

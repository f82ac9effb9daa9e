//! Enrollment and device identity end to end, with real processes: the operator decides every
//! enrollment (the relay, running with the chart's role, cannot read bootstrap tokens), a
//! device name enrolls once unless an administrator allows it again, tokens expire and run
//! out, and a second agent with a device's certificate cannot take over a live connection.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use tether_crds::remote_session::SessionPhase;
use tether_crds::{Device, RemoteSession};
use tether_e2e::dataplane::{
    Agent, Cluster, RELAY_USER, enroll_device, kubectl_tether, random_token, set_bootstrap_token,
};
use tether_e2e::{OPERATOR_USER, PATIENCE, TEST_MANAGER, control_plane, eventually, kubectl};

/// The `Denied` condition (reason, message) of every agent certificate request for
/// `namespace`/`device`.
async fn denials(namespace: &str, device: &str) -> Vec<(String, String)> {
    let admin = control_plane().client("admin").await.unwrap();
    let csrs: Api<CertificateSigningRequest> = Api::all(admin);
    let list = csrs
        .list(&ListParams::default().fields("spec.signerName=tether.dev/agent"))
        .await
        .unwrap();
    list.items
        .iter()
        .filter(|c| {
            let a = c.metadata.annotations.clone().unwrap_or_default();
            a.get("tether.dev/namespace").map(String::as_str) == Some(namespace)
                && a.get("tether.dev/device").map(String::as_str) == Some(device)
        })
        .flat_map(|c| c.status.iter().flat_map(|s| s.conditions.iter().flatten()))
        .filter(|c| c.type_ == "Denied")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// Asserts an enrollment failed with `message` from the operator, the same reason on the
/// request's `Denied` condition, and the relay's refusal counted under `label`.
async fn assert_refused(
    cluster: &Cluster,
    attempt: &tether_e2e::dataplane::Enrollment,
    device: &str,
    reason: &str,
    message: &str,
    label: &str,
) {
    assert!(!attempt.succeeded(), "enrolled {device} unexpectedly");
    let stderr = attempt.stderr();
    assert!(
        stderr.contains(&format!("enrollment refused: {message}")),
        "{stderr}"
    );
    let denied = denials(&cluster.namespace, device).await;
    assert!(
        denied
            .iter()
            .any(|(r, m)| r == reason && m.contains(message)),
        "{denied:?}"
    );
    let metrics = cluster.relay.metrics().await;
    assert!(
        metrics.contains(&format!(
            "tether_relay_rejected_total{{reason=\"{label}\"}}"
        )),
        "{metrics}"
    );
}

fn assert_enrolled(attempt: &tether_e2e::dataplane::Enrollment, device: &str) {
    assert!(
        attempt.succeeded(),
        "{device} did not enroll: {}",
        attempt.stderr()
    );
    let identity = std::fs::read_to_string(attempt.state.join("identity.json")).unwrap();
    assert!(identity.contains(&format!("\"{device}\"")), "{identity}");
}

async fn device(cluster: &Cluster, name: &str) -> Option<Device> {
    let admin = control_plane().client("admin").await.unwrap();
    Api::<Device>::namespaced(admin, &cluster.namespace)
        .get_opt(name)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_device_name_enrolls_once_unless_an_administrator_allows_it_again() {
    let cluster = Cluster::start("enroll-once", &[]).await;
    let (ns, port) = (cluster.namespace.clone(), cluster.relay.port);
    let token = random_token();
    set_bootstrap_token(&ns, &token, &[]).await;

    let first = enroll_device(&ns, "kiosk", port, &token).await;
    assert_enrolled(&first, "kiosk");
    let enrolled = device(&cluster, "kiosk").await.unwrap();
    assert!(enrolled.status.unwrap().enrolled_at.is_some());

    // The same name again, with the same valid token: refused, with the way out.
    let again = enroll_device(&ns, "kiosk", port, &token).await;
    assert_refused(
        &cluster,
        &again,
        "kiosk",
        "AlreadyEnrolled",
        &format!("device {ns}/kiosk is already enrolled"),
        "already_enrolled",
    )
    .await;
    assert!(again.stderr().contains("allowReenrollment"));
    // Positive control: the same token enrolls a new name.
    assert_enrolled(
        &enroll_device(&ns, "kiosk-2", port, &token).await,
        "kiosk-2",
    );

    // An administrator allows one more enrollment of the name.
    let admin = control_plane().client("admin").await.unwrap();
    let devices: Api<Device> = Api::namespaced(admin, &ns);
    devices
        .patch(
            "kiosk",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"allowReenrollment": true}})),
        )
        .await
        .unwrap();
    assert!(devices.get("kiosk").await.unwrap().spec.allow_reenrollment);
    assert_enrolled(&enroll_device(&ns, "kiosk", port, &token).await, "kiosk");
    assert!(
        !devices.get("kiosk").await.unwrap().spec.allow_reenrollment,
        "the allowance is used up"
    );
    let once_more = enroll_device(&ns, "kiosk", port, &token).await;
    assert_refused(
        &cluster,
        &once_more,
        "kiosk",
        "AlreadyEnrolled",
        &format!("device {ns}/kiosk is already enrolled"),
        "already_enrolled",
    )
    .await;

    // Deleting the Device frees the name too.
    devices
        .delete("kiosk", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the Device is gone", PATIENCE, || {
        let devices = devices.clone();
        async move { devices.get_opt("kiosk").await.ok()?.is_none().then_some(()) }
    })
    .await;
    assert_enrolled(&enroll_device(&ns, "kiosk", port, &token).await, "kiosk");
}

#[tokio::test]
async fn bootstrap_tokens_expire_run_out_and_match_as_the_agent_reads_them() {
    let cluster = Cluster::start("tokens", &[]).await;
    let (ns, port) = (cluster.namespace.clone(), cluster.relay.port);
    let not_valid = format!("the bootstrap token is not valid for device group {ns}");

    // A Secret made from a token file keeps its trailing newline; so may the agent's file.
    let token = random_token();
    set_bootstrap_token(&ns, &format!("{token}\n"), &[]).await;
    assert_enrolled(&enroll_device(&ns, "plain", port, &token).await, "plain");
    assert_enrolled(
        &enroll_device(&ns, "newline", port, &format!("{token}\n")).await,
        "newline",
    );
    // A wrong token is refused by the operator, whose reason the agent shows.
    let wrong = enroll_device(&ns, "guess", port, &random_token()).await;
    assert_refused(
        &cluster,
        &wrong,
        "guess",
        "BadBootstrapToken",
        &not_valid,
        "bad_bootstrap_token",
    )
    .await;

    // Expired, then extended.
    let hour = SignedDuration::from_hours(1);
    let past = (Timestamp::now() - hour).to_string();
    set_bootstrap_token(&ns, &token, &[("tether.dev/expires-at", &past)]).await;
    let late = enroll_device(&ns, "late", port, &token).await;
    assert_refused(
        &cluster,
        &late,
        "late",
        "BootstrapTokenExpired",
        &format!("the bootstrap token of device group {ns} expired at"),
        "expired_bootstrap_token",
    )
    .await;
    let future = (Timestamp::now() + hour).to_string();
    set_bootstrap_token(&ns, &token, &[("tether.dev/expires-at", &future)]).await;
    assert_enrolled(&enroll_device(&ns, "late", port, &token).await, "late");

    // Two uses, then no more: counted by the operator on the Secret.
    let limited = random_token();
    set_bootstrap_token(&ns, &limited, &[("tether.dev/max-uses", "2")]).await;
    assert_enrolled(&enroll_device(&ns, "first", port, &limited).await, "first");
    assert_enrolled(
        &enroll_device(&ns, "second", port, &limited).await,
        "second",
    );
    let third = enroll_device(&ns, "third", port, &limited).await;
    assert_refused(
        &cluster,
        &third,
        "third",
        "BootstrapTokenUsedUp",
        &format!("the bootstrap token of device group {ns} has enrolled 2 devices"),
        "used_up_bootstrap_token",
    )
    .await;
    let admin = control_plane().client("admin").await.unwrap();
    let secret = Api::<Secret>::namespaced(admin, &ns)
        .get("tether-enrollment")
        .await
        .unwrap();
    assert_eq!(
        secret.metadata.annotations.unwrap()["tether.dev/uses"],
        "2",
        "uses are counted on the Secret"
    );
    // Positive control: a fresh token with the same limit enrolls the same name.
    let fresh = random_token();
    set_bootstrap_token(&ns, &fresh, &[("tether.dev/max-uses", "2")]).await;
    assert_enrolled(&enroll_device(&ns, "third", port, &fresh).await, "third");

    // All of the above ran with the relay holding the chart's role, which cannot read the
    // Secret; only the operator's can.
    let cp = control_plane();
    let can = |user: &str| {
        let out = kubectl(
            cp,
            "admin",
            &[
                "auth",
                "can-i",
                "get",
                "secrets/tether-enrollment",
                "-n",
                &ns,
                &format!("--as={user}"),
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(can(RELAY_USER), "no");
    assert_eq!(can(OPERATOR_USER), "yes");
}

/// `kubectl tether files SESSION ls /home` as a technician: the listing, or the error.
fn listing(ns: &str, session: &str) -> Result<String, String> {
    let out = kubectl_tether(ns, "carol", &["files", session, "ls", "/home"], None);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn metric(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_second_agent_with_a_devices_identity_does_not_take_over() {
    let cluster = Cluster::start("impostor", &[]).await;
    let ns = cluster.namespace.clone();
    let mut original =
        Agent::enroll_and_run(&ns, "kiosk", cluster.relay.port, &["--consent=never"]).await;
    std::fs::write(original.home.join("original.txt"), "the real kiosk").unwrap();
    let admin = control_plane().client("admin").await.unwrap();
    let sessions: Api<RemoteSession> = Api::namespaced(admin, &ns);
    let obj = serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "RemoteSession",
        "metadata": {"name": "fix"},
        "spec": {"device": "kiosk", "mode": "Unattended"},
    });
    sessions
        .patch(
            "fix",
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap();
    eventually("the session is Active", PATIENCE, || {
        let sessions = sessions.clone();
        async move {
            let s = sessions.get("fix").await.ok()?;
            (s.status?.phase == Some(SessionPhase::Active)).then_some(())
        }
    })
    .await;
    eventually("the original agent serves files", PATIENCE, || async {
        listing(&ns, "fix")
            .ok()?
            .contains("original.txt")
            .then_some(())
    })
    .await;

    // A second process with a copy of the certificate and key, while the original is live.
    let impostor = original.copy_of_identity("kiosk", &["--consent=never"]);
    std::fs::write(impostor.home.join("impostor.txt"), "not the kiosk").unwrap();
    let series = "tether_relay_agent_duplicates_total{outcome=\"refused\"}";
    eventually(
        "the relay refused the second connection",
        PATIENCE,
        || async {
            let log = std::fs::read_to_string(impostor.process.log_path()).unwrap_or_default();
            let refused = log.contains(&format!(
                "device {ns}/kiosk is already connected and answering"
            ));
            (refused && metric(&cluster.relay.metrics().await, series) >= 1).then_some(())
        },
    )
    .await;
    // Every listing still comes from the original.
    for _ in 0..6 {
        let files = listing(&ns, "fix").unwrap();
        assert!(files.contains("original.txt"), "{files}");
        assert!(!files.contains("impostor.txt"), "{files}");
    }
    let metrics = cluster.relay.metrics().await;
    assert!(metrics.contains("tether_relay_agents 1"), "{metrics}");
    assert!(
        metrics.contains("# HELP tether_relay_agent_duplicates_total"),
        "{metrics}"
    );

    // Once the original is gone (killed: no goodbye), the other connection is accepted.
    original.process.kill();
    eventually(
        "the second agent took over from the dead one",
        PATIENCE + Duration::from_secs(30),
        || async {
            listing(&ns, "fix")
                .ok()?
                .contains("impostor.txt")
                .then_some(())
        },
    )
    .await;
}

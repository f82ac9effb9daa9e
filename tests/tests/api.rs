//! Tether's API against a real kube-apiserver: CRDs install and explain themselves, the schema
//! and CEL rules refuse bad specs with clear messages, reschedules are only allowed while a
//! session is Scheduled, and RBAC decides who may create sessions.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use kube::api::{Api, Patch, PatchParams};
use tether_crds::RemoteSession;
use tether_e2e::{
    PATIENCE, TEST_MANAGER, control_plane, eventually, install_crds, kubectl, kubectl_apply,
    kubectl_err, kubectl_ok,
};

async fn setup(prefix: &str) -> (kube::Client, String) {
    let cp = control_plane();
    let admin = cp.client("admin").await.unwrap();
    install_crds(&admin).await.unwrap();
    let ns = cp.namespace(prefix).await.unwrap();
    (admin, ns)
}

fn session_yaml(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: tether.dev/v1alpha1\nkind: RemoteSession\nmetadata:\n  name: {name}\nspec:\n  device: laptop-042\n{extra}"
    )
}

#[tokio::test]
async fn crds_install_and_explain_their_fields() {
    let (_admin, _ns) = setup("explain").await;
    let cp = control_plane();
    // The API server publishes a new CRD's OpenAPI schema shortly after it is established.
    let out = eventually("kubectl explain knows RemoteSession", PATIENCE, || async {
        let out = kubectl(cp, "admin", &["explain", "remotesession.spec"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await;
    assert!(
        out.contains("Name of the Device, in this namespace"),
        "{out}"
    );
    assert!(out.contains("startTime"), "{out}");
    let out = kubectl_ok(cp, "admin", &["explain", "remotesession.spec.duration"]);
    assert!(out.contains("Go duration syntax"), "{out}");
    let out = kubectl_ok(
        cp,
        "admin",
        &["explain", "assistancerequest.spec.requester"],
    );
    assert!(
        out.contains("Where notifications about the request are sent"),
        "{out}"
    );
    let out = kubectl_ok(cp, "admin", &["explain", "device.status"]);
    assert!(out.contains("Users logged on to the device"), "{out}");

    // The category lists every kind at once; short names resolve.
    kubectl_ok(cp, "admin", &["get", "tether", "-A"]);
    kubectl_ok(cp, "admin", &["get", "rsess,areq,dev", "-A"]);
}

#[tokio::test]
async fn bad_specs_are_refused_with_clear_messages() {
    let (_admin, ns) = setup("badspec").await;
    let cp = control_plane();
    let cases = [
        ("negative", "  duration: -5m\n", "duration must be positive"),
        ("zero", "  duration: 0s\n", "duration must be positive"),
        (
            "toolong",
            "  duration: 25h\n",
            "duration must be at most 24h",
        ),
        ("words", "  duration: half an hour\n", "spec.duration"),
        ("badtime", "  startTime: tomorrow\n", "spec.startTime"),
        (
            "badmode",
            "  mode: Sometimes\n",
            "supported values: \"Interactive\", \"Unattended\", \"Dynamic\"",
        ),
    ];
    for (name, extra, expected) in cases {
        let out = kubectl_apply(cp, "admin", &ns, &session_yaml(name, extra));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{name}: accepted but should be refused"
        );
        assert!(
            stderr.contains(expected),
            "{name}: expected {expected:?} in: {stderr}"
        );
    }

    // Missing device.
    let out = kubectl_apply(
        cp,
        "admin",
        &ns,
        "apiVersion: tether.dev/v1alpha1\nkind: RemoteSession\nmetadata:\n  name: nodevice\nspec:\n  duration: 30m\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("spec.device: Required value"), "{stderr}");

    // Nothing was created by the refused requests.
    let listed = kubectl_ok(
        cp,
        "admin",
        &["get", "remotesessions", "-n", &ns, "-o", "name"],
    );
    assert!(listed.trim().is_empty(), "refused sessions exist: {listed}");

    // Defaults are applied by the API server for a minimal valid session.
    let out = kubectl_apply(cp, "admin", &ns, &session_yaml("minimal", ""));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let duration = kubectl_ok(
        cp,
        "admin",
        &[
            "get",
            "rsess",
            "minimal",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.duration} {.spec.mode} {.spec.recording} {.spec.features.desktop}",
        ],
    );
    assert_eq!(duration, "30m Interactive Enabled Control");
}

async fn set_phase(api: &Api<RemoteSession>, name: &str, phase: &str) {
    let status = serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "RemoteSession",
        "status": {"phase": phase},
    });
    api.patch_status(
        name,
        &PatchParams::apply("tether-e2e-status").force(),
        &Patch::Apply(&status),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn reschedule_only_while_scheduled() {
    let (admin, ns) = setup("resched").await;
    let api: Api<RemoteSession> = Api::namespaced(admin, &ns);
    let session: RemoteSession = serde_yaml::from_str(&session_yaml(
        "maint",
        "  startTime: \"2030-01-01T10:00:00Z\"\n  duration: 1h\n",
    ))
    .unwrap();
    // Created by server-side apply, as a GitOps tool would.
    api.patch(
        "maint",
        &PatchParams::apply(TEST_MANAGER),
        &Patch::Apply(&session),
    )
    .await
    .unwrap();

    let reschedule = |start: &str, duration: &str| {
        serde_json::json!({
            "apiVersion": "tether.dev/v1alpha1",
            "kind": "RemoteSession",
            "metadata": {"name": "maint"},
            "spec": {"device": "laptop-042", "startTime": start, "duration": duration},
        })
    };
    let pp = PatchParams::apply(TEST_MANAGER);

    // While Scheduled: accepted.
    set_phase(&api, "maint", "Scheduled").await;
    api.patch(
        "maint",
        &pp,
        &Patch::Apply(reschedule("2030-01-02T10:00:00Z", "1h")),
    )
    .await
    .expect("a Scheduled session can be rescheduled");

    // Once Active: start time and duration are frozen.
    set_phase(&api, "maint", "Active").await;
    for (start, duration) in [
        ("2030-01-03T10:00:00Z", "1h"),
        ("2030-01-02T10:00:00Z", "2h"),
    ] {
        let err = api
            .patch("maint", &pp, &Patch::Apply(reschedule(start, duration)))
            .await
            .expect_err("an Active session cannot be rescheduled");
        let text = err.to_string();
        assert!(
            text.contains(
                "startTime and duration can only be changed while the session is Scheduled"
            ),
            "{text}"
        );
    }
    // Writing the same duration differently is not a change.
    api.patch(
        "maint",
        &pp,
        &Patch::Apply(reschedule("2030-01-02T10:00:00Z", "60m")),
    )
    .await
    .expect("an equal duration is not a reschedule");
    // Other fields stay editable.
    let mut other = reschedule("2030-01-02T10:00:00Z", "60m");
    other["spec"]["ticket"] = "INC-1234".into();
    api.patch("maint", &pp, &Patch::Apply(other))
        .await
        .expect("the ticket can change while Active");
    let stored = api.get("maint").await.unwrap();
    assert_eq!(stored.spec.duration.as_std().as_secs(), 3600);
    assert_eq!(stored.spec.ticket.as_deref(), Some("INC-1234"));
}

#[tokio::test]
async fn rbac_decides_who_may_create_sessions() {
    let (_admin, ns) = setup("rbac").await;
    let cp = control_plane();
    let yaml = session_yaml("by-alice", "");
    let err = {
        let out = kubectl_apply(cp, "alice", &ns, &yaml);
        assert!(!out.status.success(), "alice must not create sessions");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(err.contains("forbidden"), "{err}");
    assert!(err.contains("User \"alice\" cannot"), "{err}");

    let err = kubectl_err(cp, "bob", &["get", "remotesessions", "-n", &ns]);
    assert!(err.contains("forbidden"), "{err}");

    let out = kubectl_apply(cp, "admin", &ns, &yaml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Grant alice's group create through a Role: now she can.
    kubectl_ok(
        cp,
        "admin",
        &[
            "create",
            "role",
            "session-creator",
            "-n",
            &ns,
            "--verb=create,get,patch",
            "--resource=remotesessions.tether.dev",
        ],
    );
    kubectl_ok(
        cp,
        "admin",
        &[
            "create",
            "rolebinding",
            "requesters",
            "-n",
            &ns,
            "--role=session-creator",
            "--group=requesters",
        ],
    );
    let out = kubectl_apply(cp, "alice", &ns, &session_yaml("by-alice-2", ""));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // bob is in another group and still cannot.
    let out = kubectl_apply(cp, "bob", &ns, &session_yaml("by-bob", ""));
    assert!(!out.status.success());
}

#[tokio::test]
async fn examples_are_valid() {
    let (_admin, ns) = setup("examples").await;
    let cp = control_plane();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let out = kubectl_ok(
        cp,
        "admin",
        &["apply", "--dry-run=server", "-n", &ns, "-f", dir],
    );
    for name in [
        "printer-help",
        "db-patching",
        "reception-laptop",
        "vpn-broken",
        "weekly-patching",
    ] {
        assert!(out.contains(name), "{name} missing from: {out}");
    }
}

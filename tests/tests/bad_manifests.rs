//! Bad manifests against the real API server, and what gets in anyway.
//!
//! Every file under `tests/manifests/bad/` says in its header who applies it, what the API
//! server answers (`message:`, a substring of the refusal; `absent:`, a substring it must not
//! contain) and its positive control (a good
//! manifest the same user may apply, or the same change while the session is `Scheduled`).
//! Files under `tests/manifests/legacy/` are objects stored before the schema was strict: they
//! are forced in through a CRD without the rules, the strict CRD is put back, and the operator
//! and `kubectl tether list -A` must go on working around them.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use std::path::{Path, PathBuf};
use std::process::Output;

use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use tether_crds::RemoteSession;
use tether_crds::decode::api_resource;
use tether_crds::remote_session::SessionPhase;
use tether_e2e::output::stderr;
use tether_e2e::{
    OPERATOR_USER, Operator, PATIENCE, TEST_MANAGER, control_plane, eventually,
    install_chart_templates, install_crds, kubectl, kubectl_apply, kubectl_ok, workspace_bin,
};
use tokio::sync::RwLock;

/// Tests that need the strict CRDs hold this for reading; the test that swaps in lenient CRDs
/// holds it for writing.
static CRDS: RwLock<()> = RwLock::const_new(());

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests")
}

/// One manifest of the corpus and what its header says about it.
#[derive(Debug)]
struct Case {
    file: String,
    user: String,
    message: String,
    absent: Option<String>,
    phase: Option<String>,
    control: String,
    control_user: Option<String>,
    expect: String,
    body: String,
}

fn corpus(dir: &str) -> Vec<Case> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let body = std::fs::read_to_string(&path).unwrap();
            let field = |key: &str| {
                body.lines()
                    .take_while(|l| l.starts_with('#'))
                    .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
                    .map(str::to_owned)
            };
            Case {
                file: path.file_name().unwrap().to_string_lossy().into_owned(),
                user: field("user").unwrap_or_else(|| "admin".into()),
                message: field("message").unwrap_or_default(),
                absent: field("absent"),
                phase: field("phase"),
                control: field("control").unwrap_or_default(),
                control_user: field("control-user"),
                expect: field("expect").unwrap_or_default(),
                body,
            }
        })
        .collect()
}

fn good(name: &str) -> String {
    std::fs::read_to_string(manifests().join("good").join(name)).unwrap()
}

/// The chart's admission policies and user roles, with the test users bound cluster-wide:
/// alice may request, carol may edit (but not terminate), dave is a Tether admin.
async fn setup() -> kube::Client {
    let cp = control_plane();
    let admin = cp.client("admin").await.unwrap();
    install_crds(&admin).await.unwrap();
    install_chart_templates(
        &[
            "templates/operator-rbac.yaml",
            "templates/admission-policies.yaml",
            "templates/user-roles.yaml",
        ],
        &[],
    );
    for (user, role) in [
        ("alice", "tether-requester"),
        ("carol", "tether-editor"),
        ("dave", "tether-admin"),
    ] {
        let binding = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": format!("bad-manifests-{user}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        });
        Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(admin.clone())
            .patch(
                &format!("bad-manifests-{user}"),
                &PatchParams::apply(TEST_MANAGER).force(),
                &Patch::Apply(&binding),
            )
            .await
            .unwrap();
    }
    admin
}

async fn set_phase(admin: &kube::Client, ns: &str, name: &str, phase: &str) {
    let status = serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "RemoteSession",
        "status": {"phase": phase},
    });
    Api::<RemoteSession>::namespaced(admin.clone(), ns)
        .patch_status(
            name,
            &PatchParams::apply("tether-e2e-status").force(),
            &Patch::Apply(&status),
        )
        .await
        .unwrap();
}

/// Applies `yaml` as `user`, expecting a refusal, and returns it. Retries while the refusal
/// is RBAC's (a fresh role binding is authorized a moment later), never on anything else.
async fn refusal(user: &str, ns: &str, yaml: &str, what: &str) -> String {
    let cp = control_plane();
    eventually(what, PATIENCE, || async {
        let out = kubectl_apply(cp, user, ns, yaml);
        assert!(
            !out.status.success(),
            "{what}: accepted\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let err = stderr(&out);
        let rbac = err.contains(&format!("User \"{user}\" cannot"));
        (!rbac).then_some(err)
    })
    .await
}

/// Waits until the admission policies are in force (the API server loads them a moment after
/// they are created): a request naming someone else as its requester is refused.
async fn admission_in_force(ns: &str) {
    let cp = control_plane();
    let yaml = good("request.yaml").replace("requested-by: alice", "requested-by: bob");
    eventually("the admission policies are in force", PATIENCE, || async {
        let out = kubectl(
            cp,
            "alice",
            &[
                "apply",
                "--dry-run=server",
                "-n",
                ns,
                "-f",
                &write_temp(&yaml),
            ],
        );
        stderr(&out)
            .contains("must be your own user name")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn every_bad_manifest_is_refused_with_its_reason_and_its_control_accepted() {
    let _strict = CRDS.read().await;
    let admin = setup().await;
    let cp = control_plane();
    let cases = corpus("bad");
    assert!(cases.len() >= 30, "the corpus is there: {}", cases.len());
    let mut failures = Vec::new();
    admission_in_force(&cp.namespace("policies").await.unwrap()).await;
    for case in &cases {
        assert_eq!(case.expect, "refused", "{}", case.file);
        assert!(!case.message.is_empty(), "{} names no message", case.file);
        let ns = cp.namespace("bad").await.unwrap();
        if let Some(phase) = &case.phase {
            let out = kubectl_apply(cp, "admin", &ns, &good("session.yaml"));
            assert!(out.status.success(), "{}: {}", case.file, stderr(&out));
            set_phase(&admin, &ns, "good-session", phase).await;
        }

        // Refused, for the reason the header names (the refusal comes from the API server).
        let err = refusal(
            &case.user,
            &ns,
            &case.body,
            &format!("{} is refused", case.file),
        )
        .await;
        if !err.contains(&case.message) {
            failures.push(format!(
                "{}: expected {:?} in the refusal:\n{err}",
                case.file, case.message
            ));
        }
        if let Some(absent) = case.absent.as_deref().filter(|a| err.contains(a)) {
            failures.push(format!(
                "{}: the refusal should not say {absent:?}:\n{err}",
                case.file
            ));
        }

        // Positive control.
        let control_user = case.control_user.as_deref().unwrap_or(&case.user);
        let control = if case.control == "same-while-scheduled" {
            set_phase(&admin, &ns, "good-session", "Scheduled").await;
            case.body.clone()
        } else {
            good(&case.control)
        };
        let out = kubectl_apply(cp, control_user, &ns, &control);
        if !out.status.success() {
            failures.push(format!(
                "{}: the control {} by {control_user} was refused:\n{}",
                case.file,
                case.control,
                stderr(&out)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A copy of the strict CRD without the rules a bad object breaks: what an older Tether
/// installed.
fn lenient(mut crd: CustomResourceDefinition) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for key in [
                    "pattern",
                    "x-kubernetes-validations",
                    "maxLength",
                    "maxItems",
                    "format",
                ] {
                    map.remove(key);
                }
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    crd.metadata.managed_fields = None;
    let mut value = serde_json::to_value(&crd).unwrap();
    strip(&mut value["spec"]["versions"]);
    value
}

/// Creates every legacy object through lenient CRDs, then puts the strict CRDs back; returns
/// the files with their expectations.
async fn force_in_legacy_objects(admin: &kube::Client, ns: &str) -> Vec<Case> {
    let cp = control_plane();
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for crd in tether_crds::crds() {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(
            &name,
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(&lenient(crd)),
        )
        .await
        .unwrap();
    }
    let cases = corpus("legacy");
    for case in &cases {
        eventually(
            &format!("{} is stored through the lenient CRD", case.file),
            PATIENCE,
            || async {
                let out = kubectl_apply(cp, "admin", ns, &case.body);
                if !out.status.success() {
                    eprintln!("{}: {}", case.file, stderr(&out));
                }
                out.status.success().then_some(())
            },
        )
        .await;
        // Status, where the manifest has one, goes through the status subresource.
        let value: serde_json::Value = serde_yaml::from_str(&case.body).unwrap();
        if let Some(status) = value.get("status") {
            let kind = value["kind"].as_str().unwrap();
            let resource = match kind {
                "Device" => api_resource::<tether_crds::Device>(),
                "RemoteSession" => api_resource::<RemoteSession>(),
                _ => api_resource::<tether_crds::AssistanceRequest>(),
            };
            let api: Api<DynamicObject> = Api::namespaced_with(admin.clone(), ns, &resource);
            let patch = serde_json::json!({
                "apiVersion": value["apiVersion"], "kind": kind, "status": status,
            });
            api.patch_status(
                value["metadata"]["name"].as_str().unwrap(),
                &PatchParams::apply("tether-e2e-status").force(),
                &Patch::Apply(&patch),
            )
            .await
            .unwrap();
        }
    }
    install_crds(admin).await.unwrap();
    // The strict schema is back in force once the same objects are refused again (those whose
    // fault is in their spec: a create ignores status).
    for case in cases.iter().filter(|c| !c.body.contains("\nstatus:")) {
        eventually(
            &format!("the strict CRD refuses {} again", case.file),
            PATIENCE,
            || async {
                let renamed = case.body.replace("name: legacy-", "name: again-");
                let out = kubectl(
                    cp,
                    "admin",
                    &[
                        "apply",
                        "--dry-run=server",
                        "-n",
                        ns,
                        "-f",
                        &write_temp(&renamed),
                    ],
                );
                (!out.status.success()).then_some(())
            },
        )
        .await;
    }
    cases
}

fn write_temp(body: &str) -> String {
    let file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .unwrap()
        .into_temp_path()
        .keep()
        .unwrap();
    std::fs::write(&file, body).unwrap();
    file.display().to_string()
}

fn tether(user: &str, ns: &str, args: &[&str]) -> Output {
    let cp = control_plane();
    let bin_dir = workspace_bin("kubectl-tether")
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    std::process::Command::new("kubectl")
        .arg("tether")
        .args(["--context", user, "-n", ns])
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", cp.kubeconfig())
        .output()
        .unwrap()
}

#[tokio::test]
async fn objects_stored_before_the_strict_schema_stop_neither_the_operator_nor_the_cli() {
    let cp = control_plane();
    let admin = {
        let _swap = CRDS.write().await;
        let admin = setup().await;
        let ns = cp.namespace("legacy").await.unwrap();
        let cases = force_in_legacy_objects(&admin, &ns).await;
        (admin, ns, cases)
    };
    let (admin, ns, cases) = admin;
    let _strict = CRDS.read().await;

    // A Device and a short session next to the bad objects: the operator must expire it.
    let out = kubectl_apply(cp, "admin", &ns, &good("device.yaml"));
    assert!(out.status.success(), "{}", stderr(&out));
    let short = "apiVersion: tether.dev/v1alpha1\nkind: RemoteSession\nmetadata:\n  name: short\nspec:\n  device: laptop-042\n  duration: 5s\n  mode: Unattended\n";
    let out = kubectl_apply(cp, "admin", &ns, short);
    assert!(out.status.success(), "{}", stderr(&out));

    // A fresh operator finishes its first list (it becomes ready) and does its work.
    let mut operator = Operator::start(cp, OPERATOR_USER, &ns, &[]).await;
    let sessions: Api<RemoteSession> = Api::namespaced(admin.clone(), &ns);
    eventually("the short session expires", PATIENCE, || async {
        let s = sessions.get("short").await.ok()?;
        (s.status?.phase? == SessionPhase::Expired).then_some(())
    })
    .await;
    // The readable legacy session is reconciled like any other (its window is in 2030).
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let phase = sessions
            .get("legacy-lowercase-t")
            .await
            .ok()
            .and_then(|s| s.status?.phase);
        if phase == Some(SessionPhase::Scheduled) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the readable legacy session is {phase:?}, not Scheduled:\n{}",
            operator.process.log_tail(30)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Each unreadable object is named in a Warning Event and in the operator's log.
    let events: Api<Event> = Api::namespaced(admin.clone(), &ns);
    for case in cases.iter().filter(|c| c.expect == "unreadable") {
        let value: serde_json::Value = serde_yaml::from_str(&case.body).unwrap();
        let name = value["metadata"]["name"].as_str().unwrap().to_owned();
        let note = eventually(
            &format!("an Unreadable Event names {name}"),
            PATIENCE,
            || async {
                events
                    .list(&ListParams::default())
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .find(|e| {
                        e.reason.as_deref() == Some("Unreadable")
                            && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                                == Some(name.as_str())
                    })
                    .and_then(|e| e.note)
            },
        )
        .await;
        assert!(note.contains("cannot read this"), "{note}");
        assert!(
            operator.process.log_tail(400).contains(&name),
            "the operator's log names {name}"
        );
    }

    // The CLI lists around them, in the namespace and cluster-wide, and names them.
    for args in [
        &["list", "sessions", "-A"][..],
        &["list", "sessions"],
        &["list", "requests"],
        &["list", "requests", "-A"],
    ] {
        let out = tether("admin", &ns, args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let err = stderr(&out);
        assert!(out.status.success(), "{args:?}: {err}");
        if args[1] == "sessions" {
            assert!(stdout.contains("short"), "{args:?}: {stdout}");
            assert!(stdout.contains("legacy-lowercase-t"), "{args:?}: {stdout}");
            assert!(err.contains("legacy-ten-digits"), "{args:?}: {err}");
            assert!(err.contains("legacy-year-9999"), "{args:?}: {err}");
        } else {
            assert!(err.contains("legacy-request"), "{args:?}: {err}");
        }
    }
    // One of them asked for by name: the reason, and a failure.
    let out = tether("admin", &ns, &["get", "legacy-ten-digits"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("RemoteSession") && err.contains("legacy-ten-digits cannot be read"),
        "{err}"
    );
    let out = tether("admin", &ns, &["describe", "short"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Nothing is stuck: every legacy object can be deleted.
    for case in &cases {
        let value: serde_json::Value = serde_yaml::from_str(&case.body).unwrap();
        let kind = value["kind"].as_str().unwrap().to_lowercase();
        let name = value["metadata"]["name"].as_str().unwrap();
        kubectl_ok(
            cp,
            "admin",
            &[
                "delete",
                &format!("{kind}s.tether.dev"),
                name,
                "-n",
                &ns,
                "--wait=true",
                "--timeout=60s",
            ],
        );
    }
    assert!(
        operator.process.exited().is_none(),
        "the operator is still running:\n{}",
        operator.process.log_tail(40)
    );
}

//! Operating Tether in the first hour, against real API servers and real processes: a
//! namespaced operator whose certificate-request watches are forbidden still stops on SIGTERM,
//! and a shell stays connected, and file transfers work, while the CA and the token signing
//! key rotate on request.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use tether_crds::RemoteSession;
use tether_crds::remote_session::SessionPhase;
use tether_e2e::dataplane::kubectl_tether;
use tether_e2e::output::ok;
use tether_e2e::{Operator, PATIENCE, TEST_MANAGER, control_plane, eventually};

#[tokio::test]
async fn a_namespaced_operator_without_certificate_watches_stops_on_sigterm() {
    // A control plane of its own: this operator's identity is bound only inside namespaces,
    // so every cluster-scoped watch it makes (certificate requests) is forbidden.
    const USER: &str = "system:serviceaccount:tether-system:namespaced-operator";
    let mut options = tether_controlplane::Options {
        controller_manager: false,
        ..Default::default()
    };
    options.users.push((
        USER.to_owned(),
        vec![
            "system:serviceaccounts".to_owned(),
            "system:serviceaccounts:tether-system".to_owned(),
        ],
    ));
    let cp = tether_e2e::ControlPlane::start(options).await.unwrap();
    let admin = |args: &[&str]| {
        let out = cp.kubectl("admin").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/generated");
    admin(&["apply", "--server-side", "-f", crds]);
    admin(&[
        "wait",
        "--for=condition=Established",
        "crd",
        "--all",
        "--timeout=60s",
    ]);
    admin(&["create", "namespace", "tether-system"]);
    admin(&["create", "namespace", "helpdesk"]);
    let rbac = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        rbac.path(),
        tether_e2e::helm_template(&["templates/operator-rbac.yaml"], &[]),
    )
    .unwrap();
    admin(&["apply", "-f", &rbac.path().display().to_string()]);
    for (ns, role) in [
        ("helpdesk", "--clusterrole=tether-operator"),
        ("tether-system", "--clusterrole=tether-operator"),
        ("tether-system", "--role=tether-operator"),
    ] {
        let name = format!(
            "namespaced-{}",
            role.trim_start_matches("--").replace('=', "-")
        );
        admin(&[
            "create",
            "rolebinding",
            &name,
            "-n",
            ns,
            role,
            &format!("--user={USER}"),
        ]);
    }
    let can = cp
        .kubectl("admin")
        .args([
            "auth",
            "can-i",
            "watch",
            "certificatesigningrequests.certificates.k8s.io",
            &format!("--as={USER}"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&can.stdout).trim(),
        "no",
        "the operator must not be allowed to watch certificate requests"
    );

    let mut operator = Operator::start(&cp, USER, "helpdesk", &[]).await;
    eventually(
        "the operator was refused its certificate request watches",
        PATIENCE,
        || {
            let log = operator.process.log_tail(400);
            async move {
                (log.contains("certificatesigningrequests") && log.contains("forbidden"))
                    .then_some(())
            }
        },
    )
    .await;
    // Positive control: while it runs, the operator does its work in its namespace.
    let sessions: Api<RemoteSession> =
        Api::namespaced(cp.client("admin").await.unwrap(), "helpdesk");
    let session = serde_json::json!({"apiVersion": "tether.dev/v1alpha1", "kind": "RemoteSession",
        "metadata": {"name": "later"},
        "spec": {"device": "laptop", "startTime": "2099-01-01T00:00:00Z", "duration": "1h"}});
    sessions
        .patch(
            "later",
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(&session),
        )
        .await
        .unwrap();
    eventually("the operator reconciled a session", PATIENCE, || {
        let sessions = sessions.clone();
        async move {
            let phase = sessions.get("later").await.ok()?.status?.phase?;
            (phase == SessionPhase::Scheduled).then_some(())
        }
    })
    .await;
    assert!(operator.process.exited().is_none());
    let status = std::process::Command::new("kill")
        .args(["-TERM", &operator.process.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // It stops (generously bounded: this is no speed test), saying it stopped.
    let code = eventually(
        "the operator exited after SIGTERM",
        Duration::from_secs(90),
        || {
            let exited = operator.process.exited();
            async move { exited }
        },
    )
    .await;
    let log = operator.process.log_tail(60);
    assert!(
        code.contains("exit status: 0") && log.contains("Stopped tether-operator"),
        "{code}\n{log}"
    );
}

/// The certificates in PEM `text`.
fn certificates(text: &str) -> usize {
    text.matches("BEGIN CERTIFICATE").count()
}

/// `kubectl tether shell` as `user`, kept running with its input and output piped: lines it
/// prints arrive on the returned channel.
fn open_shell(
    ns: &str,
    user: &str,
    args: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let cp = control_plane();
    let bin_dir = tether_e2e::workspace_bin("kubectl-tether")
        .parent()
        .unwrap()
        .to_path_buf();
    let mut child = std::process::Command::new("kubectl")
        .arg("tether")
        .args(["--context", user, "-n", ns, "shell"])
        .args(args)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("KUBECONFIG", cp.kubeconfig())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

async fn next_line(lines: &std::sync::mpsc::Receiver<String>, want: &str) {
    eventually(&format!("the shell printed {want:?}"), PATIENCE, || {
        let got = lines.try_recv().ok().filter(|l| l.contains(want));
        async move { got.map(|_| ()) }
    })
    .await;
}

#[tokio::test]
async fn a_shell_and_file_transfers_survive_rotating_the_ca_and_the_token_keys() {
    use std::io::Write;
    use tether_e2e::dataplane::{Agent, Cluster};
    let cluster = Cluster::start("fh-rotate", &[]).await;
    let ns = cluster.namespace.clone();
    let agent =
        Agent::enroll_and_run(&ns, "server", cluster.relay.port, &["--consent=never"]).await;
    let admin = control_plane().client("admin").await.unwrap();
    cluster
        .apply_session(
            "maint",
            serde_json::json!({"device": "server", "mode": "Unattended"}),
        )
        .await;
    cluster.wait_phase("maint", SessionPhase::Active).await;
    let trust: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(admin.clone(), tether_e2e::SYSTEM_NAMESPACE);
    let published = |key: &'static str| {
        let trust = trust.clone();
        async move {
            trust
                .get("tether-trust")
                .await
                .ok()
                .and_then(|cm| cm.data?.get(key).cloned())
                .unwrap_or_default()
        }
    };
    let cas_before = certificates(&published("ca-bundle.crt").await);
    let keys_before: Vec<serde_json::Value> =
        serde_json::from_str(&published("token-keys.json").await).unwrap();

    // A shell that stays connected through both rotations.
    let (mut shell, lines) = open_shell(
        &ns,
        "carol",
        &[
            "maint",
            "--",
            "sh",
            "-c",
            "read a; echo \"got $a\"; read b; echo \"got $b\"",
        ],
    );
    let mut input = shell.stdin.take().unwrap();
    writeln!(input, "one").unwrap();
    next_line(&lines, "got one").await;
    let copy = |file: &str| {
        let local = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(local.path(), file).unwrap();
        let target = format!("maint:/home/{file}");
        kubectl_tether(
            &ns,
            "carol",
            &["cp", local.path().to_str().unwrap(), &target],
            None,
        )
    };

    // How often the relay has loaded the published trust material.
    let loads = |relay: &tether_e2e::ManagedProcess| {
        relay
            .log_tail(100_000)
            .matches("Loaded trust material")
            .count()
    };
    let relay_loaded_since = |before: usize| {
        let relay = &cluster.relay.process;
        eventually(
            "the relay loaded the new trust material",
            PATIENCE,
            move || {
                let now = loads(relay);
                async move { (now > before).then_some(()) }
            },
        )
    };

    // The CA: a technician certificate from the new CA is accepted by the relay.
    let before = loads(&cluster.relay.process);
    let out = ok(kubectl_tether(&ns, "admin", &["rotate", "ca"], None));
    assert!(out.contains("Rotated the certificate authority"), "{out}");
    let bundle = published("ca-bundle.crt").await;
    assert_eq!(
        certificates(&bundle),
        cas_before + 1,
        "the old CA stays trusted"
    );
    relay_loaded_since(before).await;
    ok(copy("after-ca.txt"));
    assert_eq!(
        std::fs::read_to_string(agent.home.join("after-ca.txt")).unwrap(),
        "after-ca.txt"
    );

    // The token key: a grant signed with the new key (the session's access Secret is issued
    // again) is accepted by the relay.
    let before = loads(&cluster.relay.process);
    let out = ok(kubectl_tether(
        &ns,
        "admin",
        &["rotate", "token-keys"],
        None,
    ));
    assert!(out.contains("Rotated the token signing key"), "{out}");
    let keys: Vec<serde_json::Value> =
        serde_json::from_str(&published("token-keys.json").await).unwrap();
    assert_eq!(
        keys.len(),
        keys_before.len() + 1,
        "the old key stays published"
    );
    relay_loaded_since(before).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(admin.clone(), &ns);
    let old_uid = secrets.get("maint-access").await.unwrap().metadata.uid;
    secrets
        .delete("maint-access", &Default::default())
        .await
        .unwrap();
    eventually("the grant is issued again", PATIENCE, || {
        let secrets = secrets.clone();
        let old_uid = old_uid.clone();
        async move {
            let s = secrets.get_opt("maint-access").await.ok()??;
            (s.metadata.uid != old_uid).then_some(())
        }
    })
    .await;
    ok(copy("after-keys.txt"));
    assert_eq!(
        std::fs::read_to_string(agent.home.join("after-keys.txt")).unwrap(),
        "after-keys.txt"
    );

    // The shell opened before both rotations is still the same live session.
    writeln!(input, "two").unwrap();
    drop(input);
    next_line(&lines, "got two").await;
    let status = eventually("the shell exited", PATIENCE, || {
        let status = shell.try_wait().ok().flatten();
        async move { status }
    })
    .await;
    assert!(status.success(), "{status}");
    cluster.wait_phase("maint", SessionPhase::Active).await;
}

//! The whole data plane as real processes on loopback: the operator (provisioning the relay's
//! certificate and signing agent enrollments), the relay (configured from those objects, as its
//! ServiceAccount), and an enrolled agent for a Device.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams};
use tether_controlplane::process::ManagedProcess;

use crate::{
    OPERATOR_USER, Operator, PATIENCE, SYSTEM_NAMESPACE, TEST_MANAGER, control_plane, eventually,
    free_port, install_chart_templates, install_crds, workspace_bin,
};

/// The relay's identity (its ServiceAccount).
pub const RELAY_USER: &str = "system:serviceaccount:tether-system:tether-relay";

/// A running relay.
pub struct Relay {
    /// The process.
    pub process: ManagedProcess,
    /// Its QUIC and TLS port on 127.0.0.1.
    pub port: u16,
    /// Its metrics port.
    pub metrics_port: u16,
    extra: Vec<String>,
}

impl Relay {
    /// Starts the relay on `port` and waits until it is ready.
    pub async fn start(port: u16, extra: &[&str]) -> Self {
        let cp = control_plane();
        let metrics_port = free_port();
        let mut cmd = Command::new(workspace_bin("tether-relay"));
        cmd.arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
            .arg(format!("--context={RELAY_USER}"))
            .arg(format!("--namespace={SYSTEM_NAMESPACE}"))
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
            .arg("--log-filter=info,tether_relay=debug")
            .args(extra);
        // A name of its own (kept across restarts): relays recover the uploads they left
        // behind by name, and the tests of one binary run several relays at once.
        if !extra.iter().any(|a| a.starts_with("--name")) {
            cmd.arg(format!("--name=relay-{port}"));
        }
        let process = cp
            .spawn(&format!("relay-{port}"), cmd)
            .expect("the relay starts");
        let mut relay = Self {
            process,
            port,
            metrics_port,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        relay.wait_ready().await;
        relay
    }

    async fn wait_ready(&mut self) {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.process.exited() {
                panic!(
                    "tether-relay exited ({status}):\n{}",
                    self.process.log_tail(40)
                );
            }
            if let Ok((200, _)) = crate::http_get(self.metrics_port, "/readyz").await {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "tether-relay not ready:\n{}",
                self.process.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the relay (SIGKILL when `crash`) and starts it again on the same port.
    pub async fn restart(self, crash: bool) -> Self {
        let Self {
            mut process,
            port,
            extra,
            ..
        } = self;
        if crash {
            process.kill();
        } else {
            process.terminate(Duration::from_secs(20));
        }
        drop(process);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        Self::start(port, &extra).await
    }

    /// The relay's metrics text.
    pub async fn metrics(&self) -> String {
        crate::http_get(self.metrics_port, "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    }
}

/// An enrolled, running agent.
pub struct Agent {
    /// The process.
    pub process: ManagedProcess,
    /// Its state directory.
    pub state: PathBuf,
    /// The file-manager root (`/home` for technicians).
    pub home: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Enrolls `device` in `namespace` through the relay with the group's bootstrap token, then
    /// runs the agent with `extra` flags (consent provider, users, transport…).
    pub async fn enroll_and_run(
        namespace: &str,
        device: &str,
        relay_port: u16,
        extra: &[&str],
    ) -> Self {
        let token = random_token();
        set_bootstrap_token(namespace, &token, &[]).await;
        let enrollment = enroll_device(namespace, device, relay_port, &token).await;
        Self::run_enrolled(enrollment, device, extra)
    }

    fn spawn(state: &Path, home: &Path, device: &str, extra: &[&str]) -> ManagedProcess {
        let mut cmd = Command::new(workspace_bin("tether-agent"));
        cmd.arg("--state-dir")
            .arg(state)
            .arg("--log-filter=info,tether_agent=debug")
            .arg("run")
            .arg(format!("--files-root=home={}", home.display()))
            .args(extra);
        control_plane()
            .spawn(&format!("agent-{device}-{}", rand_u128() % 100_000), cmd)
            .expect("the agent starts")
    }

    /// Runs `tether-agent` user commands (`end`, `say`, `send-file`) against this agent's state.
    pub fn user(&self, args: &[&str]) -> std::process::Output {
        Command::new(workspace_bin("tether-agent"))
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .output()
            .expect("tether-agent runs")
    }
}

pub(crate) fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let a = h.finish() as u128;
    let mut h2 = std::collections::hash_map::RandomState::new().build_hasher();
    h2.write_u128(a);
    (a << 64) | h2.finish() as u128
}

/// A fresh random bootstrap token.
pub fn random_token() -> String {
    format!("{:032x}", rand_u128())
}

/// Makes `token` (exactly as given, e.g. with a trailing newline) the bootstrap token of
/// device group `namespace`, with `annotations` such as `tether.dev/expires-at` or
/// `tether.dev/max-uses` (those the tests set before and leave out now are removed; the
/// operator's own annotations stay).
pub async fn set_bootstrap_token(namespace: &str, token: &str, annotations: &[(&str, &str)]) {
    let admin = control_plane().client("admin").await.expect("admin client");
    let annotations: serde_json::Map<String, serde_json::Value> = annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
        .collect();
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "tether-enrollment", "annotations": annotations},
        "stringData": {"token": token},
    });
    Api::<Secret>::namespaced(admin, namespace)
        .patch(
            "tether-enrollment",
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .expect("the enrollment Secret");
}

/// One run of `tether-agent enroll`, successful or not, with its own state directory.
pub struct Enrollment {
    /// What `tether-agent enroll` printed and returned.
    pub output: std::process::Output,
    /// The state directory it wrote (on success).
    pub state: PathBuf,
    dir: tempfile::TempDir,
}

impl Enrollment {
    /// Whether the enrollment succeeded.
    pub fn succeeded(&self) -> bool {
        self.output.status.success()
    }

    /// What the agent printed on stderr.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
}

/// Runs `tether-agent enroll` for `device` in `namespace` through the relay on `relay_port`,
/// with a token file holding exactly `token`, into a fresh state directory.
pub async fn enroll_device(
    namespace: &str,
    device: &str,
    relay_port: u16,
    token: &str,
) -> Enrollment {
    let admin = control_plane().client("admin").await.expect("admin client");
    let trust = Api::<ConfigMap>::namespaced(admin, SYSTEM_NAMESPACE)
        .get("tether-trust")
        .await
        .expect("the trust ConfigMap")
        .data
        .unwrap_or_default();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let state = dir.path().join("state");
    std::fs::write(dir.path().join("ca.crt"), &trust["ca-bundle.crt"]).expect("write CA");
    std::fs::write(dir.path().join("token"), token).expect("write token");
    let output = Command::new(workspace_bin("tether-agent"))
        .arg("--state-dir")
        .arg(&state)
        .args([
            "enroll",
            "--relay",
            &format!("127.0.0.1:{relay_port}"),
            "--namespace",
            namespace,
            "--device",
            device,
        ])
        .arg("--ca-file")
        .arg(dir.path().join("ca.crt"))
        .arg("--token-file")
        .arg(dir.path().join("token"))
        .output()
        .expect("tether-agent runs");
    Enrollment { output, state, dir }
}

impl Agent {
    /// Runs an agent from a successful [`Enrollment`] with `extra` flags.
    pub fn run_enrolled(enrollment: Enrollment, device: &str, extra: &[&str]) -> Self {
        assert!(
            enrollment.succeeded(),
            "enrollment failed: {}",
            enrollment.stderr()
        );
        let home = enrollment.dir.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        let process = Self::spawn(&enrollment.state, &home, device, extra);
        Self {
            process,
            state: enrollment.state,
            home,
            _dir: enrollment.dir,
        }
    }

    /// A second agent process with a copy of this agent's identity (certificate, key, CA
    /// bundle), its own state directory and an empty home, running with `extra` flags.
    pub fn copy_of_identity(&self, device: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let state = dir.path().join("state");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&state).expect("state");
        std::fs::create_dir_all(&home).expect("home");
        for file in ["identity.json", "tls.crt", "tls.key", "ca.crt"] {
            std::fs::copy(self.state.join(file), state.join(file)).expect("copy the identity");
        }
        let process = Self::spawn(&state, &home, device, extra);
        Self {
            process,
            state,
            home,
            _dir: dir,
        }
    }
}

/// Operator and relay for one test namespace; the relay listens on `relay_port`.
pub struct Cluster {
    /// The operator.
    pub operator: Operator,
    /// The relay.
    pub relay: Relay,
    /// The test namespace (device group).
    pub namespace: String,
}

impl Cluster {
    /// Applies RemoteSession `name` with `spec` in the test namespace, as the administrator.
    pub async fn apply_session(&self, name: &str, spec: serde_json::Value) {
        let admin = control_plane().client("admin").await.expect("admin client");
        let api: Api<tether_crds::RemoteSession> = Api::namespaced(admin, &self.namespace);
        let obj = serde_json::json!({"apiVersion": "tether.dev/v1alpha1", "kind": "RemoteSession", "metadata": {"name": name}, "spec": spec});
        api.patch(name, &PatchParams::apply(TEST_MANAGER), &Patch::Apply(&obj))
            .await
            .expect("the RemoteSession is applied");
    }

    /// Waits until RemoteSession `name` is in `phase`, and returns it.
    pub async fn wait_phase(
        &self,
        name: &str,
        phase: tether_crds::remote_session::SessionPhase,
    ) -> tether_crds::RemoteSession {
        let admin = control_plane().client("admin").await.expect("admin client");
        let api: Api<tether_crds::RemoteSession> = Api::namespaced(admin, &self.namespace);
        eventually(&format!("{name} is {phase}"), PATIENCE, || {
            let api = api.clone();
            async move {
                let s = api.get(name).await.ok()?;
                (s.status.as_ref()?.phase == Some(phase)).then_some(s)
            }
        })
        .await
    }
}

impl Cluster {
    /// Installs what is needed and starts the operator and the relay. The relay records to
    /// the operator's store unless `relay_extra` names one.
    pub async fn start(prefix: &str, relay_extra: &[&str]) -> Self {
        Self::start_with(prefix, &[], relay_extra).await
    }

    /// [`Cluster::start`], but the relay reads its recording store from the settings the
    /// operator provisioned, as in production (only safe in a test binary of its own: every
    /// operator of a binary writes those settings).
    pub async fn start_reading_store_settings(prefix: &str) -> Self {
        Self::launch(prefix, &[], &[], false).await
    }

    /// [`Cluster::start`], with extra flags for the operator too.
    pub async fn start_with(prefix: &str, operator_extra: &[&str], relay_extra: &[&str]) -> Self {
        Self::launch(prefix, operator_extra, relay_extra, true).await
    }

    /// Starts everything; `own_store`: the relay records to the operator's store (unless
    /// `relay_extra` names one).
    async fn launch(
        prefix: &str,
        operator_extra: &[&str],
        relay_extra: &[&str],
        own_store: bool,
    ) -> Self {
        let cp = control_plane();
        let admin = cp.client("admin").await.expect("admin client");
        install_crds(&admin).await.expect("CRDs");
        install_chart_templates(
            &[
                "templates/operator-rbac.yaml",
                "templates/relay-rbac.yaml",
                "templates/admission-policies.yaml",
                "templates/user-roles.yaml",
            ],
            &[],
        );
        let namespace = cp.namespace(prefix).await.expect("namespace");
        crate::kubectl_ok(
            cp,
            "admin",
            &[
                "create",
                "rolebinding",
                "technicians",
                "-n",
                &namespace,
                "--clusterrole=tether-technician",
                "--group=technicians",
            ],
        );
        // Technicians file their certificate requests (cluster-scoped) with this role.
        crate::kubectl_apply(
            cp,
            "admin",
            "default",
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: e2e-certificate-requesters\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: tether-certificate-requester\nsubjects:\n- apiGroup: rbac.authorization.k8s.io\n  kind: Group\n  name: technicians\n- apiGroup: rbac.authorization.k8s.io\n  kind: Group\n  name: approvers\n- apiGroup: rbac.authorization.k8s.io\n  kind: Group\n  name: requesters\n",
        );
        let port = free_port();
        let relay_address = format!("--relay-address=127.0.0.1:{port}");
        let mut operator_args = vec![relay_address.as_str(), "--consent-timeout=20s"];
        operator_args.extend_from_slice(operator_extra);
        let operator = Operator::start(cp, OPERATOR_USER, &namespace, &operator_args).await;
        // The relay needs the certificate the operator provisions for it.
        let secrets: Api<Secret> =
            Api::namespaced(cp.client("admin").await.expect("client"), SYSTEM_NAMESPACE);
        eventually(
            "the operator provisioned the relay certificate",
            PATIENCE,
            || {
                let secrets = secrets.clone();
                async move {
                    let s = secrets.get_opt("tether-relay-tls").await.ok()??;
                    let names = s.metadata.annotations?.get("tether.dev/names")?.clone();
                    names.contains("127.0.0.1").then_some(())
                }
            },
        )
        .await;
        // The relay's settings (ConfigMap `tether-relay`) are shared by every operator of the
        // test binary, each with a temporary store of its own that goes when its test ends:
        // a relay that read another test's settings would lose its recordings with that
        // directory. So the relay records to its own operator's store, named on its command
        // line, unless the test chose a store or wants the settings read
        // ([`Cluster::start_reading_store_settings`]).
        let store_flag = operator
            .recordings_dir()
            .filter(|_| {
                !relay_extra
                    .iter()
                    .any(|a| a.starts_with("--recording-store"))
            })
            .filter(|_| own_store)
            .map(|dir| format!("--recording-store=file://{}", dir.display()));
        let mut relay_args = relay_extra.to_vec();
        relay_args.extend(store_flag.as_deref());
        let relay = Relay::start(port, &relay_args).await;
        Self {
            operator,
            relay,
            namespace,
        }
    }
}

/// Lets `user` connect to sessions in `ns` as a technician (binds `tether-technician`), beside
/// the `technicians` group every cluster of these tests binds.
pub fn bind_technician(ns: &str, user: &str) {
    crate::kubectl_ok(
        crate::control_plane(),
        "admin",
        &[
            "create",
            "rolebinding",
            &format!("{user}-technician"),
            "-n",
            ns,
            "--clusterrole=tether-technician",
            &format!("--user={user}"),
        ],
    );
}

/// `kubectl tether --context USER -n NS ARGS…` through the real kubectl, with the built
/// plugin first on `PATH`, ready to run.
pub fn kubectl_tether_command(ns: &str, user: &str, args: &[&str]) -> Command {
    let cp = control_plane();
    let bin_dir = workspace_bin("kubectl-tether")
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("kubectl");
    command
        .arg("tether")
        .args(["--context", user, "-n", ns])
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", cp.kubeconfig());
    command
}

/// Runs `kubectl tether …` as `user` in `ns` through the real kubectl, with the built plugin
/// first on `PATH` and `stdin` as its input.
pub fn kubectl_tether(
    ns: &str,
    user: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = kubectl_tether_command(ns, user, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    // Dropping the pipe closes the plugin's input.
    if let Some(mut input) = child.stdin.take()
        && let Some(data) = stdin
    {
        input.write_all(data).expect("kubectl reads its input");
    }
    child.wait_with_output().expect("kubectl finishes")
}

/// `kubectl tether …` as `user` in `ns` through the real kubectl, with no input.
pub fn tether(ns: &str, user: &str, args: &[&str]) -> std::process::Output {
    kubectl_tether(ns, user, args, None)
}

/// Applies RemoteSession `name` with `spec` in the cluster's namespace, as the admin.
pub async fn session(cluster: &Cluster, name: &str, spec: serde_json::Value) {
    cluster.apply_session(name, spec).await;
}

/// Waits until RemoteSession `name` is in `phase`, and returns it.
pub async fn wait_phase(
    cluster: &Cluster,
    name: &str,
    phase: tether_crds::remote_session::SessionPhase,
) -> tether_crds::RemoteSession {
    cluster.wait_phase(name, phase).await
}

/// Waits until Device `device` is `Online` (or `Offline`), for at most `patience`.
pub async fn wait_presence(
    cluster: &Cluster,
    device: &str,
    online: bool,
    patience: Duration,
) -> tether_crds::Device {
    let admin = control_plane().client("admin").await.expect("admin client");
    let api: Api<tether_crds::Device> = Api::namespaced(admin, &cluster.namespace);
    let want = if online { "Online" } else { "Offline" };
    eventually(&format!("{device} is {want}"), patience, || {
        let api = api.clone();
        async move {
            let d = api.get(device).await.ok()?;
            let presence = d.status.as_ref()?.presence?;
            (format!("{presence:?}") == want).then_some(d)
        }
    })
    .await
}

//! Helpers for Tether's end-to-end tests: the shared local control plane, CRD installation,
//! Tether's binaries as real processes, `kubectl` as the test users, and waiting on
//! conditions with generous timeouts instead of fixed sleeps.

#![forbid(unsafe_code)]

pub mod browser;
pub mod dataplane;
pub mod desktop;
pub mod lifecycle;
pub mod output;
pub mod pixels;
pub mod recording;
pub mod requests;
pub mod s3;
pub mod sinks;
pub mod technician;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::Api;
pub use tether_controlplane::process::ManagedProcess;
pub use tether_controlplane::shared::control_plane;
pub use tether_controlplane::{ControlPlane, User};

/// How long a test waits for something that should happen "soon" on a busy 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Field manager the tests use when they act as an administrator.
pub const TEST_MANAGER: &str = "tether-e2e";

/// Applies Tether's committed CRD YAML the way users do (`kubectl apply --server-side -f
/// crds/generated`) and waits until every CRD is established.
pub async fn install_crds(client: &Client) -> Result<()> {
    let cp = control_plane();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/generated");
    let out = kubectl(
        cp,
        "admin",
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            TEST_MANAGER,
            "-f",
            dir,
        ],
    );
    if !out.status.success() {
        bail!(
            "failed to apply the CRDs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in tether_crds::crds() {
        let name = crd.metadata.name.clone().context("CRD without a name")?;
        let api = api.clone();
        eventually(&format!("CRD {name} is established"), PATIENCE, || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let crd = api.get(&name).await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            }
        })
        .await;
    }
    Ok(())
}

/// The chart's namespace in tests, and the operator's own namespace.
pub const SYSTEM_NAMESPACE: &str = "tether-system";

/// The identity the chart gives the operator (its ServiceAccount in `tether-system`).
pub const OPERATOR_USER: &str = "system:serviceaccount:tether-system:tether-operator";

/// Renders chart templates with `helm template` (release `tether` in `tether-system`).
pub fn helm_template(templates: &[&str], set: &[&str]) -> String {
    let helm = tether_controlplane::Assets::from_env()
        .require("helm")
        .expect("helm is built by `cargo xtask controlplane`");
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/tether");
    let mut cmd = Command::new(helm);
    cmd.args(["template", "tether", chart, "--namespace", SYSTEM_NAMESPACE]);
    for t in templates {
        cmd.args(["--show-only", t]);
    }
    for s in set {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("helm runs");
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Installs parts of the chart exactly as `helm template` renders them, e.g. the operator's
/// RBAC and the admission policies, into the shared control plane (idempotent).
pub fn install_chart_templates(templates: &[&str], set: &[&str]) {
    use std::io::Write;
    let cp = control_plane();
    let rendered = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {SYSTEM_NAMESPACE}\n---\n{}",
        helm_template(templates, set)
    );
    let mut child = cp
        .kubectl("admin")
        .args([
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            TEST_MANAGER,
            "-f",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(rendered.as_bytes())
        .expect("kubectl reads stdin");
    let out = child.wait_with_output().expect("kubectl finishes");
    assert!(
        out.status.success(),
        "applying chart templates failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `check` every 50 ms until it returns `Some`, and panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Path of one of the workspace's binaries (built by `cargo xtask test` before the tests).
pub fn workspace_bin(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps; binaries in target/<profile>.
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --workspace --bins` first (`cargo xtask test` does this)",
        path.display()
    );
    path
}

/// Runs `kubectl` as `user` with `args`, returning its output.
pub fn kubectl(cp: &ControlPlane, user: &str, args: &[&str]) -> Output {
    cp.kubectl(user)
        .args(args)
        .output()
        .expect("kubectl runs (it is preinstalled on PATH)")
}

/// Runs `kubectl` as `user` and returns stdout, failing the test with stderr if it fails.
pub fn kubectl_ok(cp: &ControlPlane, user: &str, args: &[&str]) -> String {
    let out = kubectl(cp, user, args);
    assert!(
        out.status.success(),
        "kubectl {} as {user} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `kubectl` as `user`, expects it to fail, and returns stderr.
pub fn kubectl_err(cp: &ControlPlane, user: &str, args: &[&str]) -> String {
    let out = kubectl(cp, user, args);
    assert!(
        !out.status.success(),
        "kubectl {} as {user} unexpectedly succeeded: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `kubectl apply -f -` with `yaml` on stdin as `user`.
pub fn kubectl_apply(cp: &ControlPlane, user: &str, namespace: &str, yaml: &str) -> Output {
    use std::io::Write;
    let mut child = cp
        .kubectl(user)
        .args(["apply", "-n", namespace, "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(yaml.as_bytes())
        .expect("kubectl reads stdin");
    child.wait_with_output().expect("kubectl finishes")
}

/// A free loopback port (free a moment ago), chosen below the kernel's ephemeral range.
///
/// A port is handed to a child process some time after it was found free; a port from the
/// ephemeral range (what binding port 0 returns) can be taken meanwhile by any outgoing
/// connection on the machine — the API server's clients make many — and the child then fails
/// with "address already in use". Outgoing connections never use ports below the range, so a
/// random free port there stays free unless another test picks the same one.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const FLOOR: u16 = 10_000;
    if low > FLOOR + 1_000 {
        let random = std::collections::hash_map::RandomState::new();
        for attempt in 0u64..200 {
            let mut h = random.build_hasher();
            h.write_u64(attempt);
            let port = FLOOR + (h.finish() % u64::from(low - FLOOR)) as u16;
            let free = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
            if free {
                return port;
            }
        }
    }
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `tether-operator` running as a real process against the control plane.
pub struct Operator {
    /// The process.
    pub process: ManagedProcess,
    /// Where its metrics and health endpoint listens.
    pub metrics_port: u16,
    /// The `file://` recording store given to the operator (and so to every relay it
    /// provisions) unless the test chose its own; removed when the operator is dropped,
    /// after the process (fields drop in declaration order).
    recordings: Option<tempfile::TempDir>,
}

impl Operator {
    /// Starts the operator as `user`, watching `namespace`, and waits until `/readyz` is OK.
    ///
    /// Unless `extra` names a `--recording-store`, the operator records to a temporary
    /// `file://` directory of its own ([`Operator::recordings_dir`]), so every relay it
    /// configures records sessions as in production.
    ///
    /// Leader election is off unless `extra` has a `--leader-election…` flag: many tests run
    /// operators at once, each for its own namespace but all in `tether-system`, where one
    /// shared Lease would let only one of them work.
    pub async fn start(cp: &ControlPlane, user: &str, namespace: &str, extra: &[&str]) -> Self {
        Self::start_named(cp, user, namespace, &format!("operator-{namespace}"), extra).await
    }

    /// [`Operator::start`] with the log (and, when leader election is on, the `POD_NAME` and
    /// so the Lease holder identity) called `name`, for several operators in one test.
    pub async fn start_named(
        cp: &ControlPlane,
        user: &str,
        namespace: &str,
        name: &str,
        extra: &[&str],
    ) -> Self {
        let metrics_port = free_port();
        let mut cmd = Command::new(workspace_bin("tether-operator"));
        cmd.arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
            .arg(format!("--context={user}"))
            .arg(format!("--watch-namespace={namespace}"))
            .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
            .arg("--log-filter=info,tether_operator=debug")
            .args(extra);
        if extra.iter().any(|a| a.starts_with("--leader-election")) {
            cmd.env("POD_NAME", name);
        } else {
            cmd.arg("--leader-election=false");
        }
        let chosen = extra.iter().any(|a| a.starts_with("--recording-store"));
        let recordings = (!chosen).then(|| {
            let dir = tempfile::Builder::new()
                .prefix("tether-recordings-")
                .tempdir()
                .expect("a temporary recordings directory");
            cmd.arg(format!("--recording-store=file://{}", dir.path().display()));
            dir
        });
        let process = cp.spawn(name, cmd).expect("the operator starts");
        let mut op = Self {
            process,
            metrics_port,
            recordings,
        };
        op.wait_ready().await;
        op
    }

    /// The temporary `file://` recording store the operator was given, unless the test chose
    /// its own `--recording-store`.
    pub fn recordings_dir(&self) -> Option<&std::path::Path> {
        self.recordings.as_ref().map(tempfile::TempDir::path)
    }

    /// Waits until `/readyz` answers OK, failing with the operator's log if it exits.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.process.exited() {
                panic!(
                    "tether-operator exited ({status}) before it was ready:\n{}",
                    self.process.log_tail(40)
                );
            }
            if let Ok((200, _)) = self.get("/readyz").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tether-operator was not ready after {PATIENCE:?}:\n{}",
                self.process.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GETs a path of the metrics endpoint; returns the status code and body.
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.metrics_port, path).await
    }
}

/// A minimal HTTP/1.1 GET against 127.0.0.1:`port` (the telemetry endpoints).
pub async fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("malformed HTTP response")?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        bail!("chunked responses are not supported by this helper");
    }
    Ok((code, body.to_owned()))
}

//! Tether's whole path for one desktop, as in production and the end-to-end tests: a local
//! control plane with the chart's CRDs, RBAC and policies, the release operator and relay as
//! their ServiceAccounts, an agent enrolled with a bootstrap token serving the Xvfb display,
//! two `Control` desktop sessions on it, one recorded to the local store and one not, and
//! `kubectl tether vnc` for each as the technician `carol`, whose one-time password the
//! measuring viewer answers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tether_controlplane::process::ManagedProcess;
use tether_controlplane::{Assets, ControlPlane};

use super::scene::Xvfb;
use crate::crdgen::workspace_root;

const OPERATOR_USER: &str = "system:serviceaccount:tether-system:tether-operator";
const RELAY_USER: &str = "system:serviceaccount:tether-system:tether-relay";
const SYSTEM_NAMESPACE: &str = "tether-system";
/// The RemoteSessions the benchmark opens: not recorded, and recorded.
const SESSION: &str = "desk-bench";
const RECORDED_SESSION: &str = "desk-bench-recorded";
/// The Device.
const DEVICE: &str = "bench-desktop";
/// How long a component has to become ready.
const PATIENCE: Duration = Duration::from_secs(120);

/// The release binaries' directory.
pub fn release_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("release")
}

/// Builds the release binaries the benchmarks run: agent, relay, CLI and operator.
pub(crate) fn build_release() -> Result<()> {
    crate::test::cargo(&[
        "build",
        "--release",
        "-p",
        "tether-agent",
        "-p",
        "tether-relay",
        "-p",
        "tether-cli",
        "-p",
        "tether-operator",
    ])
}

/// `kubectl tether vnc` for one session: where the viewer connects.
pub struct Endpoint {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its one-time password.
    pub password: String,
    /// The process.
    pub cli: ManagedProcess,
}

/// Tether's processes for the desktop sessions, and where the viewer connects.
pub struct Stack {
    /// The session with recording `Disabled`.
    pub plain: Endpoint,
    /// The session with recording `Enabled`.
    pub recorded: Endpoint,
    /// The local store's root, where the relay writes recordings.
    pub recordings: PathBuf,
    /// The agent.
    pub agent: ManagedProcess,
    /// The relay.
    pub relay: ManagedProcess,
    /// The operator, kept running.
    _operator: ManagedProcess,
    _dir: tempfile::TempDir,
}

impl Stack {
    /// Starts everything and waits until `kubectl tether vnc` listens.
    pub async fn start(cp: &ControlPlane, assets: &Assets, x: &Xvfb) -> Result<Self> {
        let bin = release_dir();
        let dir = tempfile::Builder::new()
            .prefix("tether-deskbench-")
            .tempdir()?;
        install_chart(cp, assets, dir.path())?;
        let ns = cp.namespace("deskbench").await?;
        bind_technicians(cp, &ns)?;
        let relay_port = free_port()?;
        let recordings = dir.path().join("recordings");
        let operator = start_operator(
            cp,
            &bin,
            &ns,
            relay_port,
            &[&format!(
                "--recording-store=file://{}",
                recordings.display()
            )],
        )
        .await?;
        let (relay, _) = start_relay(cp, &bin, relay_port, "relay-deskbench", &[]).await?;
        let display = format!("--display={}", x.display);
        let agent = enroll_and_run(
            cp,
            &bin,
            &ns,
            DEVICE,
            relay_port,
            &[&display, "--consent=never"],
            dir.path(),
        )
        .await?;
        let plain = open(cp, &bin, &ns, SESSION, "Disabled").await?;
        let recorded = open(cp, &bin, &ns, RECORDED_SESSION, "Enabled").await?;
        Ok(Self {
            plain,
            recorded,
            recordings,
            agent,
            relay,
            _operator: operator,
            _dir: dir,
        })
    }
}

/// Lets the group `technicians` (carol) connect to sessions in `ns` and ask for certificates.
pub(crate) fn bind_technicians(cp: &ControlPlane, ns: &str) -> Result<()> {
    kubectl(
        cp,
        &[
            "create",
            "rolebinding",
            "technicians",
            "-n",
            ns,
            "--clusterrole=tether-technician",
            "--group=technicians",
        ],
    )?;
    kubectl(
        cp,
        &[
            "create",
            "clusterrolebinding",
            &format!("{ns}-certificates"),
            "--clusterrole=tether-certificate-requester",
            "--group=technicians",
        ],
    )?;
    Ok(())
}

/// Starts the release operator for `ns`, handing out the relay at `relay_port`, and waits
/// until it has provisioned the relay's certificate.
pub(crate) async fn start_operator(
    cp: &ControlPlane,
    bin: &Path,
    ns: &str,
    relay_port: u16,
    extra: &[&str],
) -> Result<ManagedProcess> {
    let metrics = free_port()?;
    let mut cmd = Command::new(bin.join("tether-operator"));
    cmd.arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .arg(format!("--context={OPERATOR_USER}"))
        .arg(format!("--watch-namespace={ns}"))
        .arg(format!("--metrics-addr=127.0.0.1:{metrics}"))
        .arg(format!("--relay-address=127.0.0.1:{relay_port}"))
        .args(extra);
    let mut operator = cp.spawn("tether-operator", cmd)?;
    wait_ready(&mut operator, metrics).await?;
    wait_until("the operator provisioned the relay's certificate", || {
        kubectl(
            cp,
            &["get", "secret", "tether-relay-tls", "-n", SYSTEM_NAMESPACE],
        )
        .ok()
    })
    .await?;
    Ok(operator)
}

/// Starts a release relay named `name` on `port` and waits until it is ready; returns it and
/// its metrics port.
pub(crate) async fn start_relay(
    cp: &ControlPlane,
    bin: &Path,
    port: u16,
    name: &str,
    extra: &[&str],
) -> Result<(ManagedProcess, u16)> {
    let metrics = free_port()?;
    let mut cmd = Command::new(bin.join("tether-relay"));
    cmd.arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .arg(format!("--context={RELAY_USER}"))
        .arg(format!("--namespace={SYSTEM_NAMESPACE}"))
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--metrics-addr=127.0.0.1:{metrics}"))
        .arg(format!("--name={name}"))
        .args(extra);
    let mut relay = cp.spawn(name, cmd)?;
    wait_ready(&mut relay, metrics).await?;
    Ok((relay, metrics))
}

/// Opens the desktop session `name` with `recording`, waits until it is Active, and starts
/// `kubectl tether vnc` for it.
async fn open(
    cp: &ControlPlane,
    bin: &Path,
    ns: &str,
    name: &str,
    recording: &str,
) -> Result<Endpoint> {
    apply(
        cp,
        ns,
        &format!(
            "apiVersion: tether.dev/v1alpha1\nkind: RemoteSession\nmetadata:\n  name: {name}\nspec:\n  device: {DEVICE}\n  mode: Unattended\n  duration: 2h\n  reason: desktop benchmark\n  recording: {recording}\n  features:\n    desktop: Control\n"
        ),
    )?;
    wait_until(&format!("the session {name} is Active"), || {
        let phase = kubectl(
            cp,
            &[
                "get",
                "remotesession",
                name,
                "-n",
                ns,
                "-o",
                "jsonpath={.status.phase}",
            ],
        )
        .ok()?;
        (phase == "Active").then_some(())
    })
    .await?;

    let mut cmd = Command::new(bin.join("kubectl-tether"));
    cmd.env("KUBECONFIG", cp.kubeconfig())
        .args(["--context", "carol", "-n", ns, "vnc", name]);
    let mut cli = cp.spawn(&format!("kubectl-tether-vnc-{name}"), cmd)?;
    let found = wait_until("kubectl tether vnc listens", || {
        let log = std::fs::read_to_string(cli.log_path()).ok()?;
        let port = log.lines().find_map(|l| {
            l.split("127.0.0.1:")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u16>()
                .ok()
        })?;
        let password = log
            .lines()
            .find_map(|l| l.split("one-time password: ").nth(1))?
            .trim()
            .to_owned();
        Some((port, password))
    })
    .await;
    let (port, password) = match (found, cli.exited()) {
        (Ok(found), None) => found,
        (_, Some(status)) => bail!(
            "kubectl tether vnc exited ({status}):\n{}",
            cli.log_tail(20)
        ),
        (Err(e), None) => return Err(e.context(cli.log_tail(20))),
    };
    Ok(Endpoint {
        port,
        password,
        cli,
    })
}

/// The chart's CRDs, RBAC and admission policies as `helm template` renders them.
pub(crate) fn install_chart(cp: &ControlPlane, assets: &Assets, dir: &Path) -> Result<()> {
    let rendered = Command::new(assets.require("helm")?)
        .args(["template", "tether"])
        .arg(workspace_root().join("charts/tether"))
        .args(["--namespace", SYSTEM_NAMESPACE])
        .args(["--set", "operator.replicas=0"])
        .output()
        .context("failed to run helm template")?;
    if !rendered.status.success() {
        bail!(
            "helm template failed: {}",
            String::from_utf8_lossy(&rendered.stderr)
        );
    }
    let file = dir.join("chart.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {SYSTEM_NAMESPACE}\n---\n{}",
            String::from_utf8_lossy(&rendered.stdout)
        ),
    )?;
    let file = file.to_string_lossy().into_owned();
    kubectl(cp, &["apply", "--server-side", "-f", &file])?;
    Ok(())
}

/// Enrolls Device `device` through the relay at `relay_port` with a fresh bootstrap token and
/// runs its agent with `run_args`.
pub(crate) async fn enroll_and_run(
    cp: &ControlPlane,
    bin: &Path,
    ns: &str,
    device: &str,
    relay_port: u16,
    run_args: &[&str],
    dir: &Path,
) -> Result<ManagedProcess> {
    let token = random_hex();
    kubectl(
        cp,
        &[
            "create",
            "secret",
            "generic",
            "tether-enrollment",
            "-n",
            ns,
            &format!("--from-literal=token={token}"),
        ],
    )?;
    let ca = kubectl(
        cp,
        &[
            "get",
            "configmap",
            "tether-trust",
            "-n",
            SYSTEM_NAMESPACE,
            "-o",
            "jsonpath={.data.ca-bundle\\.crt}",
        ],
    )?;
    let name = device;
    let device = dir.join(name);
    let home = device.join("home");
    std::fs::create_dir_all(&home)?;
    std::fs::write(device.join("ca.crt"), ca)?;
    std::fs::write(device.join("token"), &token)?;
    let state = device.join("state");
    let out = Command::new(bin.join("tether-agent"))
        .arg("--state-dir")
        .arg(&state)
        .args(["enroll", "--relay", &format!("127.0.0.1:{relay_port}")])
        .args(["--namespace", ns, "--device", name])
        .arg("--ca-file")
        .arg(device.join("ca.crt"))
        .arg("--token-file")
        .arg(device.join("token"))
        .output()
        .context("failed to run tether-agent enroll")?;
    if !out.status.success() {
        bail!(
            "tether-agent enroll failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut cmd = Command::new(bin.join("tether-agent"));
    cmd.arg("--state-dir")
        .arg(&state)
        .arg("run")
        .arg(format!("--files-root=home={}", home.display()))
        .args(run_args);
    let mut agent = cp.spawn(&format!("tether-agent-{name}"), cmd)?;
    let online = wait_until("the Device is Online", || {
        let presence = kubectl(
            cp,
            &[
                "get",
                "device",
                name,
                "-n",
                ns,
                "-o",
                "jsonpath={.status.presence}",
            ],
        )
        .ok()?;
        (presence == "Online").then_some(())
    })
    .await;
    if let Some(status) = agent.exited() {
        bail!("tether-agent exited ({status}):\n{}", agent.log_tail(20));
    }
    online.map_err(|e| e.context(agent.log_tail(20)))?;
    Ok(agent)
}

/// Runs kubectl as the administrator; its stdout, or its stderr as the error.
pub(crate) fn kubectl(cp: &ControlPlane, args: &[&str]) -> Result<String> {
    let out = cp
        .kubectl("admin")
        .args(args)
        .output()
        .context("failed to run kubectl")?;
    if !out.status.success() {
        bail!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn apply(cp: &ControlPlane, ns: &str, yaml: &str) -> Result<()> {
    use std::io::Write;
    let mut child = cp
        .kubectl("admin")
        .args(["apply", "-n", ns, "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("failed to run kubectl apply")?;
    child
        .stdin
        .take()
        .context("kubectl has no stdin")?
        .write_all(yaml.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Polls `check` every 100 ms until it gives a value, for at most [`PATIENCE`].
pub(crate) async fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {PATIENCE:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until a Tether binary's `/readyz` answers 200.
pub(crate) async fn wait_ready(process: &mut ManagedProcess, metrics_port: u16) -> Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = process.exited() {
            bail!(
                "{} exited ({status}):\n{}",
                process.name(),
                process.log_tail(30)
            );
        }
        let ready = crate::demo::http_get(metrics_port, "/readyz")
            .await
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"));
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} was not ready after {PATIENCE:?}:\n{}",
                process.name(),
                process.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

pub(crate) fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    for i in 0..2u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i);
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

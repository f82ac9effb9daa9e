//! `cargo xtask demo`: Tether on an embedded default. Starts a real local control plane,
//! installs the Helm chart (CRDs, RBAC, ServiceAccount), runs the operator as that
//! ServiceAccount, applies the examples and keeps everything running until Ctrl-C.
//!
//! Notifications go to a local mail sink and a webhook log (files in the demo directory), and
//! recordings are kept for a short retention, so both retention and legal hold can be seen.

mod screen;
mod sinks;
mod wait;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tether_controlplane::assets::cache_root;
use tether_controlplane::build::human;
use tether_controlplane::{Assets, ControlPlane, Options};

use crate::crdgen::workspace_root;
use screen::start_screen;
use sinks::{mail_sink, wait_for_notifications, webhook_sink};
pub use wait::http_get;
pub(crate) use wait::wait_ready;
use wait::{wait_for_object, wait_for_phase, wait_for_presence, watch_exit};

/// The identity the chart gives the operator.
const OPERATOR_USER: &str = "system:serviceaccount:tether-system:tether-operator";

/// The identity the chart gives the relay.
const RELAY_USER: &str = "system:serviceaccount:tether-system:tether-relay";

/// How long the demo keeps recordings of ended sessions: short enough to see retention
/// delete them, while a legal hold keeps others.
const DEMO_RETENTION: &str = "10m";

/// How often the demo's retention sweeps.
const DEMO_SWEEP_INTERVAL: &str = "1m";

/// Runs the demo until Ctrl-C.
pub fn run() -> Result<()> {
    let assets = crate::controlplane::ensure()?;
    crate::tools::ensure_debian()?;
    crate::test::cargo(&["build", "--workspace", "--bins"])?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?
        .block_on(demo(assets))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

async fn demo(assets: Assets) -> Result<()> {
    let started = Instant::now();
    let dir = cache_root().join("demo");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("failed to clear {}", dir.display()))?;
    }
    eprintln!("Starting the local control plane (etcd, kube-apiserver, kube-controller-manager)");
    let cp = ControlPlane::start(Options {
        assets: assets.clone(),
        keep_dir: Some(dir.clone()),
        ..Options::default()
    })
    .await
    .context("failed to start the local control plane")?;
    eprintln!(
        "Kubernetes v{} is serving at {} (ready in {})",
        cp.version(),
        cp.server(),
        cp.startup()
    );

    eprintln!("Installing the Helm chart (CRDs, RBAC, ServiceAccount; no kubelet runs pods here)");
    let chart = workspace_root().join("charts/tether");
    run_checked(
        Command::new(assets.require("helm")?)
            .env("HELM_CACHE_HOME", dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", dir.join("helm/config"))
            .env("HELM_DATA_HOME", dir.join("helm/data"))
            .arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
            .arg("--kube-context=admin")
            .args(["install", "tether"])
            .arg(&chart)
            .args(["--namespace", "tether-system", "--create-namespace"])
            .args(["--set", "operator.replicas=0"]),
        "helm install",
    )?;

    eprintln!("Binding the demo's people to the chart's roles (README: the demo's users)");
    bind_demo_users(&cp)?;

    eprintln!("Starting a local mail sink and webhook log for request notifications");
    let mail_log = dir.join("notifications/mail.log");
    let webhook_log = dir.join("notifications/webhooks.log");
    std::fs::create_dir_all(dir.join("notifications"))?;
    let smtp = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let smtp_port = smtp.local_addr()?.port();
    tokio::spawn(mail_sink(smtp, mail_log.clone()));
    let hooks = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let hooks_port = hooks.local_addr()?.port();
    tokio::spawn(webhook_sink(hooks, webhook_log.clone()));

    eprintln!("Starting tether-operator as the chart's ServiceAccount");
    let metrics_port = free_port()?;
    let relay_port = free_port()?;
    let mut operator_cmd = Command::new(target_dir().join("debug/tether-operator"));
    operator_cmd
        .arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .arg(format!("--context={OPERATOR_USER}"))
        .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
        .arg(format!("--relay-address=127.0.0.1:{relay_port}"))
        // Recordings go to the local filesystem: no object store needed. Retention is short,
        // so retention and legal hold can both be tried.
        .arg(format!(
            "--recording-store=file://{}",
            dir.join("recordings").display()
        ))
        .arg(format!("--recording-retention={DEMO_RETENTION}"))
        .arg(format!("--recording-sweep-interval={DEMO_SWEEP_INTERVAL}"))
        // Notifications go to the local sinks (plain SMTP on loopback only).
        .arg("--smtp-host=127.0.0.1")
        .arg(format!("--smtp-port={smtp_port}"))
        .arg("--smtp-tls=none")
        .arg("--smtp-from=tether@demo.local")
        .arg(format!(
            "--webhook-url=http://127.0.0.1:{hooks_port}/tether"
        ));
    let mut operator = cp.spawn("tether-operator", operator_cmd)?;
    wait_ready(&mut operator, metrics_port).await?;

    eprintln!("Starting tether-relay from the certificate and settings the operator provisioned");
    wait_for_object(
        &cp,
        &["get", "secret", "tether-relay-tls", "-n", "tether-system"],
    )
    .await?;
    let relay_metrics = free_port()?;
    let mut relay_cmd = Command::new(target_dir().join("debug/tether-relay"));
    relay_cmd
        .arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .arg(format!("--context={RELAY_USER}"))
        .arg(format!("--listen=127.0.0.1:{relay_port}"))
        .arg(format!("--metrics-addr=127.0.0.1:{relay_metrics}"));
    let mut relay = cp.spawn("tether-relay", relay_cmd)?;
    wait_ready(&mut relay, relay_metrics).await?;

    eprintln!("Applying the examples");
    let examples = workspace_root().join("examples");
    let mut apply = cp.kubectl("admin");
    apply.args(["apply", "--namespace", "default"]);
    for file in [
        "device.yaml",
        "remotesession.yaml",
        "desktop-session.yaml",
        "scheduled-maintenance.yaml",
    ] {
        apply.arg("-f").arg(examples.join(file));
    }
    run_checked(&mut apply, "kubectl apply")?;

    eprintln!("Enrolling a demo agent for Device reception-laptop (it only dials out)");
    let device_dir = dir.join("device");
    let home = device_dir.join("home");
    std::fs::create_dir_all(&home)?;
    std::fs::write(
        home.join("README.txt"),
        "This is the demo device's home directory: kubectl tether files/cp work here.\n",
    )?;
    let token = format!("{:032x}", rand_u128());
    run_checked(
        cp.kubectl("admin").args([
            "create",
            "secret",
            "generic",
            "tether-enrollment",
            "--namespace",
            "default",
            &format!("--from-literal=token={token}"),
        ]),
        "kubectl create secret",
    )?;
    let ca = output_checked(
        cp.kubectl("admin").args([
            "get",
            "configmap",
            "tether-trust",
            "--namespace",
            "tether-system",
            "-o",
            "jsonpath={.data.ca-bundle\\.crt}",
        ]),
        "kubectl get configmap",
    )?;
    std::fs::write(device_dir.join("ca.crt"), ca)?;
    std::fs::write(device_dir.join("token"), &token)?;
    let agent_bin = target_dir().join("debug/tether-agent");
    let state = device_dir.join("state");
    run_checked(
        Command::new(&agent_bin)
            .arg("--state-dir")
            .arg(&state)
            .args(["enroll", "--relay", &format!("127.0.0.1:{relay_port}")])
            .args(["--namespace", "default", "--device", "reception-laptop"])
            .arg("--ca-file")
            .arg(device_dir.join("ca.crt"))
            .arg("--token-file")
            .arg(device_dir.join("token")),
        "tether-agent enroll",
    )?;
    eprintln!("Starting the demo device's screen (Xvfb, with a terminal and a clock on it)");
    let screen = start_screen(&cp, &home)?;
    let mut agent_cmd = Command::new(&agent_bin);
    agent_cmd
        .arg("--state-dir")
        .arg(&state)
        .arg("run")
        .arg(format!("--display={}", screen.display))
        .arg("--consent=always")
        .arg("--logged-on-user=dana")
        .arg(format!("--files-root=home={}", home.display()));
    let mut agent = cp.spawn("tether-agent", agent_cmd)?;
    wait_for_presence(&cp, "reception-laptop").await?;
    if let Some(status) = agent.exited() {
        bail!("tether-agent exited ({status}):\n{}", agent.log_tail(20));
    }
    wait_for_phase(&cp, "printer-help").await?;

    eprintln!("alice asks for help (an AssistanceRequest): its notifications go to the sinks");
    let request = "apiVersion: tether.dev/v1alpha1\nkind: AssistanceRequest\nmetadata:\n  name: vpn-broken\n  annotations:\n    tether.dev/requested-by: alice\nspec:\n  device: reception-laptop\n  requester:\n    name: Alice\n    email: alice@example.com\n  reason: \"VPN client fails with error 809\"\n  assignee:\n    groups: [\"technicians\"]\n    emails: [\"helpdesk@example.com\"]\n  sessionTemplate:\n    mode: Interactive\n    duration: 30m\n";
    apply_yaml(&cp, "alice", request)?;
    let (mails, hooks) = wait_for_notifications(&mail_log, &webhook_log).await?;

    let table = output_checked(
        cp.kubectl("admin")
            .args(["get", "remotesessions", "--namespace", "default"]),
        "kubectl get remotesessions",
    )?;
    let kubeconfig = cp.kubeconfig().display().to_string();
    println!();
    println!("$ kubectl get remotesessions");
    print!("{table}");
    println!();
    println!(
        "Tether is running (ready in {}). In another terminal:",
        human(started.elapsed())
    );
    println!();
    println!(
        "  export KUBECONFIG={kubeconfig} PATH={}:$PATH",
        target_dir().join("debug").display()
    );
    println!(
        "  kubectl tether shell printer-help       # a shell on the demo device, in the live session"
    );
    println!(
        "  kubectl tether vnc screen-help          # the device's desktop (Control) for any VNC viewer:"
    );
    println!(
        "                                          #   vncviewer 127.0.0.1::PORT, the password it prints"
    );
    println!(
        "  kubectl tether vnc printer-help         # the same screen, view-only: the relay drops input"
    );
    println!(
        "  kubectl tether desktop screen-help      # the same desktop in your browser (--no-browser: print the link)"
    );
    println!("  kubectl tether files printer-help ls /home");
    println!(
        "  kubectl tether chat printer-help        # type lines; the device side: tether-agent say"
    );
    println!(
        "  kubectl tether recordings               # what was recorded, with sizes and checksums"
    );
    println!(
        "  kubectl tether play printer-help        # replay the shell sessions (--speed 4 for faster)"
    );
    println!("  kubectl get tether                      # every Tether object");
    println!("  kubectl describe remotesession printer-help");
    println!("  kubectl explain remotesession.spec");
    println!(
        "  kubectl tether --context alice shell printer-help   # a requester may not connect: refused"
    );
    println!("  kubectl tether --context dave recordings            # an auditor reads recordings");
    println!(
        "  kubectl --context alice get remotesessions -n kube-system   # outside the demo namespace: forbidden"
    );
    println!();
    println!(
        "Operator metrics: http://127.0.0.1:{metrics_port}/metrics   logs: {}",
        operator.log_path().display()
    );
    println!(
        "Relay metrics:    http://127.0.0.1:{relay_metrics}/metrics   logs: {}",
        relay.log_path().display()
    );
    println!(
        "Demo device: state {}, files under {} (the agent answers consent prompts with yes;\n  real agents ask the user: --consent terminal or command:...)",
        state.display(),
        home.display()
    );
    println!(
        "Recordings:       {} (the local filesystem store; S3, GCS and Azure in clusters)",
        dir.join("recordings").display()
    );
    println!(
        "                  kept {DEMO_RETENTION} after their session ends (swept every {DEMO_SWEEP_INTERVAL}), unless on legal hold:"
    );
    println!(
        "                  kubectl label remotesession printer-help tether.dev/legal-hold=true"
    );
    println!(
        "Notifications:    {mails} email(s) in {}, {hooks} webhook call(s) in {}",
        mail_log.display(),
        webhook_log.display()
    );
    println!(
        "                  (kubectl tether --context bob approve vpn-broken sends more; operator metric tether_operator_notifications_total)"
    );
    println!("Press Ctrl-C to stop.");

    // Ctrl-C or SIGTERM: either way the processes below are stopped and the control plane
    // removed (a SIGTERM without a handler would leave them running).
    let outcome = tokio::select! {
        r = tether_telemetry::shutdown_signal() => r.context("failed to wait for Ctrl-C or SIGTERM"),
        status = watch_exit(&mut operator) => Err(anyhow::anyhow!(
            "tether-operator exited ({status}):\n{}", operator.log_tail(30)
        )),
    };
    eprintln!("\nStopping");
    agent.terminate(Duration::from_secs(10));
    relay.terminate(Duration::from_secs(10));
    operator.terminate(Duration::from_secs(10));
    drop(cp);
    outcome
}

/// Applies `yaml` in the demo namespace as `user`.
fn apply_yaml(cp: &ControlPlane, user: &str, yaml: &str) -> Result<()> {
    use std::io::Write;
    let mut child = cp
        .kubectl(user)
        .args(["apply", "--namespace", DEMO_NAMESPACE, "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("failed to run kubectl apply")?;
    child
        .stdin
        .take()
        .context("kubectl has no input")?
        .write_all(yaml.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "kubectl apply as {user} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The demo namespace's role for each of the demo's groups: `alice` (requesters), `bob`
/// (approvers), `carol` (technicians), `dave` (auditors). The README says what each may do.
const DEMO_ROLES: &[(&str, &str)] = &[
    ("requesters", "tether-requester"),
    ("approvers", "tether-approver"),
    ("technicians", "tether-technician"),
    ("auditors", "tether-auditor"),
];

/// Cluster-wide roles: filing the CertificateSigningRequests that technicians connect with
/// and auditors read recordings with (what the certificates allow is decided per namespace).
const DEMO_CLUSTER_ROLES: &[(&str, &str)] = &[
    ("technicians", "tether-certificate-requester"),
    ("auditors", "tether-recording-requester"),
];

/// The namespace the demo's examples, device and sessions live in.
const DEMO_NAMESPACE: &str = "default";

fn bind_demo_users(cp: &ControlPlane) -> Result<()> {
    for (group, role) in DEMO_ROLES {
        run_checked(
            cp.kubectl("admin").args([
                "create",
                "rolebinding",
                &format!("demo-{group}"),
                "--namespace",
                DEMO_NAMESPACE,
                &format!("--clusterrole={role}"),
                &format!("--group={group}"),
            ]),
            "kubectl create rolebinding",
        )?;
    }
    for (group, role) in DEMO_CLUSTER_ROLES {
        run_checked(
            cp.kubectl("admin").args([
                "create",
                "clusterrolebinding",
                &format!("demo-{group}-{role}"),
                &format!("--clusterrole={role}"),
                &format!("--group={group}"),
            ]),
            "kubectl create clusterrolebinding",
        )?;
    }
    Ok(())
}

fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let a = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(a);
    (u128::from(a) << 64) | u128::from(h.finish())
}

fn run_checked(cmd: &mut Command, what: &str) -> Result<()> {
    output_checked(cmd, what).map(|_| ())
}

fn output_checked(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("failed to run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

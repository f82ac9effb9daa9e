//! `cargo xtask bench lifecycle`: how late the operator is on time-window transitions under
//! load. Creates many RemoteSessions with staggered windows against the local control plane,
//! runs the release operator as a process, watches every phase change as a client would, and
//! prints transition lateness (seen − due) percentiles and the operator's peak memory.
//! It prints numbers and asserts nothing.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use tether_controlplane::{ControlPlane, Options};
use tether_crds::remote_session::SessionPhase;
use tether_crds::{Device, RemoteSession};

use crate::crdgen::workspace_root;

const OPERATOR_USER: &str = "system:serviceaccount:tether-system:tether-operator";

/// Parameters of the lifecycle benchmark.
#[derive(Clone, Debug, clap::Args)]
pub struct LifecycleArgs {
    /// Number of sessions.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Window starts are spread evenly over this many seconds.
    #[arg(long, default_value_t = 120)]
    pub spread_secs: i64,
    /// Shortest session, in seconds (durations vary from this to this + 9); longer than
    /// `--spread-secs` makes every session run at once.
    #[arg(long, default_value_t = 20)]
    pub min_duration_secs: i64,
    /// Devices the sessions are spread over (each session's device is one of them).
    #[arg(long, default_value_t = 1)]
    pub devices: usize,
    /// Restart the operator (SIGTERM, then a new process) halfway through the windows'
    /// openings, and report how long the new one takes to be ready.
    #[arg(long)]
    pub restart: bool,
}

/// Runs the lifecycle benchmark.
pub fn lifecycle(args: LifecycleArgs) -> Result<()> {
    let assets = crate::controlplane::ensure()?;
    if args.devices == 0 || args.sessions == 0 {
        bail!("--devices and --sessions must be at least 1");
    }
    crate::test::cargo(&["build", "--release", "--bin", "tether-operator"])?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?
        .block_on(run(args, assets))
}

/// Installs everything the chart renders (CRDs, RBAC, admission policies), with `set` as
/// `helm --set` values, into `cp` as the administrator.
pub fn install_chart(
    cp: &ControlPlane,
    assets: &tether_controlplane::Assets,
    set: &[&str],
) -> Result<()> {
    let helm = assets.require("helm")?;
    let chart = workspace_root().join("charts/tether");
    let mut helm = Command::new(helm);
    helm.args(["template", "tether"])
        .arg(&chart)
        .args(["--namespace", "tether-system"]);
    for value in set {
        helm.args(["--set", value]);
    }
    let rendered = helm.output().context("failed to run helm template")?;
    if !rendered.status.success() {
        bail!(
            "helm template failed: {}",
            String::from_utf8_lossy(&rendered.stderr)
        );
    }
    let manifests = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: tether-system\n---\n{}",
        String::from_utf8_lossy(&rendered.stdout)
    );
    let file = cp.dir().join("chart.yaml");
    std::fs::write(&file, manifests)?;
    let applied = cp
        .kubectl("admin")
        .args(["apply", "--server-side", "-f"])
        .arg(&file)
        .output()?;
    if !applied.status.success() {
        bail!(
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&applied.stderr)
        );
    }
    Ok(())
}

/// The value at quantile `p` (0–1) of `sorted`.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(args: LifecycleArgs, assets: tether_controlplane::Assets) -> Result<()> {
    eprintln!("Starting the local control plane");
    let cp = ControlPlane::start(Options {
        assets: assets.clone(),
        ..Options::default()
    })
    .await?;
    let admin = cp.client("admin").await?;

    // CRDs and the operator's RBAC, as the chart installs them.
    install_chart(&cp, &assets, &["operator.maxSessionDuration=1h"])?;
    let ns = cp.namespace("bench").await?;
    let devices: Api<Device> = Api::namespaced(admin.clone(), &ns);
    let made = Instant::now();
    let mut creates = futures::stream::iter(0..args.devices)
        .map(|i| {
            let devices = devices.clone();
            async move {
                let name = device_name(i);
                let device = serde_json::json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Device", "metadata": {"name": name}});
                devices
                    .patch(&name, &PatchParams::apply("bench"), &Patch::Apply(&device))
                    .await
            }
        })
        .buffer_unordered(16);
    let mut count = 0;
    while let Some(r) = creates.next().await {
        r?;
        count += 1;
        if count % 1000 == 0 {
            eprintln!("  {count}/{} Devices", args.devices);
        }
    }
    eprintln!(
        "Created {} Devices in {:.1}s",
        args.devices,
        made.elapsed().as_secs_f64()
    );

    let metrics_port = std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port();
    let start_operator = |name: &str| {
        let mut cmd = Command::new(crate::bench_desktop::release_dir().join("tether-operator"));
        cmd.arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
            .arg(format!("--context={OPERATOR_USER}"))
            .arg(format!("--watch-namespace={ns}"))
            .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
            .arg("--log-filter=warn");
        cp.spawn(name, cmd)
    };
    let mut operator = start_operator("tether-operator")?;

    // Watch every phase change as a client would see it.
    let sessions: Api<RemoteSession> = Api::namespaced(admin.clone(), &ns);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, SessionPhase, Timestamp)>();
    let watch = {
        let sessions = sessions.clone();
        tokio::spawn(async move {
            let mut stream =
                std::pin::pin!(watcher(sessions, watcher::Config::default()).applied_objects());
            while let Some(Ok(s)) = stream.next().await {
                if let Some(phase) = s.status.as_ref().and_then(|st| st.phase) {
                    let name = s.metadata.name.clone().unwrap_or_default();
                    if tx.send((name, phase, Timestamp::now())).is_err() {
                        return;
                    }
                }
            }
        })
    };

    let n = args.sessions;
    let devices = args.devices;
    let first_start = Timestamp::now().as_second() + 20 + (n as i64 / 50);
    let mut due: HashMap<String, (Timestamp, Timestamp)> = HashMap::new();
    eprintln!(
        "Creating {n} sessions (windows open over {}s)",
        args.spread_secs
    );
    let created = Instant::now();
    let mut creates = futures::stream::iter(0..n)
        .map(|i| {
            let sessions = sessions.clone();
            let start_ms = first_start * 1000 + (i as i64 * args.spread_secs * 1000) / n as i64;
            let start = Timestamp::from_millisecond(start_ms - start_ms % 1000).unwrap_or(Timestamp::now());
            let duration = args.min_duration_secs + (i as i64 % 10);
            let end = start + SignedDuration::from_secs(duration);
            let name = format!("s-{i:05}");
            async move {
                let obj = serde_json::json!({
                    "apiVersion": "tether.dev/v1alpha1", "kind": "RemoteSession",
                    "metadata": {"name": name},
                    "spec": {"device": device_name(i % devices), "mode": "Unattended", "startTime": start.to_string(), "duration": format!("{duration}s")},
                });
                sessions
                    .patch(&name, &PatchParams::apply("bench"), &Patch::Apply(&obj))
                    .await
                    .map(|_| (name, start, end))
            }
        })
        .buffer_unordered(16);
    while let Some(r) = creates.next().await {
        let (name, start, end) = r?;
        due.insert(name, (start, end));
    }
    eprintln!(
        "Created {n} sessions in {:.1}s",
        created.elapsed().as_secs_f64()
    );

    let mut seen: HashMap<(String, SessionPhase), Timestamp> = HashMap::new();
    // Updates the watching client received per phase (each a write to the API server).
    let mut updates: HashMap<SessionPhase, usize> = HashMap::new();
    let last_end = due
        .values()
        .map(|(_, e)| *e)
        .max()
        .unwrap_or_else(Timestamp::now);
    let give_up = last_end + SignedDuration::from_secs(120);
    let mut expired = 0usize;
    let mut peak_rss_kib = 0u64;
    let restart_at = Timestamp::from_second(first_start + args.spread_secs / 2)
        .unwrap_or_else(|_| Timestamp::now());
    let mut restarted: Option<(Duration, u64)> = None;
    while expired < n {
        if args.restart && restarted.is_none() && Timestamp::now() >= restart_at {
            eprintln!("Restarting the operator");
            operator.terminate(Duration::from_secs(30));
            let spawned = Instant::now();
            operator = start_operator("tether-operator-restarted")?;
            crate::demo::wait_ready(&mut operator, metrics_port).await?;
            // Ready alone may be a standby's readiness (it read the Lease): wait until it
            // leads and is ready as the leader (its caches synced).
            leading_and_ready(&mut operator, metrics_port).await?;
            let ready = spawned.elapsed();
            restarted = Some((ready, vm_hwm_kib(operator.id()).unwrap_or(0)));
            eprintln!("  ready after {:.2}s", ready.as_secs_f64());
        }
        if Timestamp::now() > give_up {
            eprintln!(
                "Stopped waiting: {expired}/{n} sessions expired two minutes after the last end"
            );
            break;
        }
        if let Some(status) = operator.exited() {
            bail!("the operator exited ({status}):\n{}", operator.log_tail(20));
        }
        peak_rss_kib = peak_rss_kib.max(vm_hwm_kib(operator.id()).unwrap_or(0));
        match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(Some((name, phase, at))) => {
                *updates.entry(phase).or_default() += 1;
                // The first sighting of each phase: later status writes in the same phase
                // (conditions, credentials) are not the transition.
                if let std::collections::hash_map::Entry::Vacant(e) = seen.entry((name, phase)) {
                    e.insert(at);
                    if phase == SessionPhase::Expired {
                        expired += 1;
                    }
                }
            }
            Ok(None) => bail!("the watch ended"),
            Err(_) => {}
        }
    }
    peak_rss_kib = peak_rss_kib.max(vm_hwm_kib(operator.id()).unwrap_or(0));
    watch.abort();

    let lateness = |phase: SessionPhase, pick: fn(&(Timestamp, Timestamp)) -> Timestamp| {
        let mut v: Vec<f64> = due
            .iter()
            .filter_map(|(name, d)| {
                let at = seen.get(&(name.clone(), phase))?;
                Some(at.duration_since(pick(d)).as_secs_f64() * 1000.0)
            })
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    };
    let pending = lateness(SessionPhase::Pending, |d| d.0);
    let expired_l = lateness(SessionPhase::Expired, |d| d.1);
    let metrics = crate::demo::http_get(metrics_port, "/metrics")
        .await
        .unwrap_or_default();
    let errors: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("tether_operator_reconcile_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();

    println!();
    println!(
        "lifecycle benchmark: {n} sessions on {devices} Devices, windows opening over {}s, durations {}–{}s",
        args.spread_secs,
        args.min_duration_secs,
        args.min_duration_secs + 9
    );
    println!(
        "transition            count   p50 ms   p99 ms   max ms   (seen by a watching client − due)"
    );
    for (label, v) in [("Scheduled→Pending", &pending), ("→Expired", &expired_l)] {
        println!(
            "{label:<20} {:>7} {:>8.0} {:>8.0} {:>8.0}",
            v.len(),
            percentile(v, 0.5),
            percentile(v, 0.99),
            v.last().copied().unwrap_or(f64::NAN)
        );
    }
    let per_session =
        |phase: SessionPhase| updates.get(&phase).copied().unwrap_or(0) as f64 / n as f64;
    println!(
        "updates a watching client saw per session: Scheduled {:.1}, Pending {:.1}, Expired {:.1}",
        per_session(SessionPhase::Scheduled),
        per_session(SessionPhase::Pending),
        per_session(SessionPhase::Expired)
    );
    println!("operator peak RSS: {:.1} MiB", peak_rss_kib as f64 / 1024.0);
    if let Some((ready, rss)) = restarted {
        println!(
            "operator restarted at {restart_at}: ready (caches synced, leading) {:.2}s after it was started, peak RSS by then {:.1} MiB; transitions due meanwhile are in the percentiles above",
            ready.as_secs_f64(),
            rss as f64 / 1024.0
        );
    }
    println!("operator reconcile errors: {errors}");
    operator.terminate(Duration::from_secs(10));
    Ok(())
}

/// Waits until the operator on `port` leads (`tether_operator_leader 1`) and is ready.
async fn leading_and_ready(
    operator: &mut tether_controlplane::process::ManagedProcess,
    port: u16,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let metrics = crate::demo::http_get(port, "/metrics")
            .await
            .unwrap_or_default();
        let leads = metrics
            .lines()
            .any(|l| l.trim() == "tether_operator_leader 1");
        let ready = crate::demo::http_get(port, "/readyz")
            .await
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"));
        if leads && ready {
            return Ok(());
        }
        if let Some(status) = operator.exited() {
            bail!("the operator exited ({status}):\n{}", operator.log_tail(20));
        }
        if Instant::now() > deadline {
            bail!("the restarted operator did not lead within 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The name of Device `i`.
fn device_name(i: usize) -> String {
    format!("d-{i:05}")
}

/// Peak resident set size of a process, from /proc.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

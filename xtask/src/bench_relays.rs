//! `cargo xtask bench relays`: relay replicas as in a cluster, processes on loopback. A local
//! control plane with the chart, the release operator, two relays (A, the address technicians
//! are given, and B) sharing the operator's relay certificate, and one agent attached to B
//! with both addresses. Measures, side by side in one run:
//!
//! - joining a session (`kubectl tether shell SESSION -- true`, the whole command: certificate,
//!   connection, admission, a shell that exits) through B, where the agent is, and through A,
//!   which forwards to B;
//! - the API-server writes the agent's presence causes while it is connected and idle (counted
//!   on the API server's own `apiserver_request_total`), and when it moves;
//! - how long the agent takes to be on A after B is sent SIGTERM (no live session: it is told
//!   to move at once).
//!
//! Prints numbers; asserts nothing.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tether_controlplane::{ControlPlane, Options};

use crate::bench::percentile;
use crate::bench_desktop::stack::{
    apply, bind_technicians, enroll_and_run, free_port, install_chart, kubectl, release_dir,
    start_operator, start_relay, wait_until,
};

/// Parameters of the relays benchmark.
#[derive(Clone, Debug, clap::Args)]
pub struct RelaysArgs {
    /// Joins measured through each replica (after 3 warm-up joins through each).
    #[arg(long, default_value_t = 20)]
    pub joins: usize,
    /// How long the idle agent is watched for presence writes.
    #[arg(long, default_value_t = 30)]
    pub idle_secs: u64,
}

/// The Device.
const DEVICE: &str = "bench-relays";
/// The RemoteSession.
const SESSION: &str = "relay-bench";

/// Runs the relays benchmark.
pub fn relays(args: RelaysArgs) -> Result<()> {
    let assets = crate::controlplane::ensure()?;
    crate::bench_desktop::stack::build_release()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?
        .block_on(run(args, assets))
}

async fn run(args: RelaysArgs, assets: tether_controlplane::Assets) -> Result<()> {
    eprintln!("Starting the local control plane");
    let cp = ControlPlane::start(Options {
        assets: assets.clone(),
        ..Options::default()
    })
    .await
    .context("failed to start the local control plane")?;
    let bin = release_dir();
    let dir = tempfile::Builder::new()
        .prefix("tether-relaybench-")
        .tempdir()?;
    install_chart(&cp, &assets, dir.path())?;
    let ns = cp.namespace("relaybench").await?;
    bind_technicians(&cp, &ns)?;
    let (a_port, b_port) = (free_port()?, free_port()?);
    let _operator = start_operator(&cp, &bin, &ns, a_port, &[]).await?;
    eprintln!("Starting relays A (127.0.0.1:{a_port}) and B (127.0.0.1:{b_port})");
    let peer = |port: u16| format!("--peer-address=127.0.0.1:{port}");
    let (_a, a_metrics) = start_relay(&cp, &bin, a_port, "relay-a", &[&peer(a_port)]).await?;
    let (mut b, _) = start_relay(&cp, &bin, b_port, "relay-b", &[&peer(b_port)]).await?;
    let relays = format!("--relay=127.0.0.1:{b_port},127.0.0.1:{a_port}");
    let agent = enroll_and_run(
        &cp,
        &bin,
        &ns,
        DEVICE,
        b_port,
        &["--consent=never", &relays],
        dir.path(),
    )
    .await?;
    attached(&cp, &ns, "relay-b").await?;
    apply(
        &cp,
        &ns,
        &format!(
            "apiVersion: tether.dev/v1alpha1\nkind: RemoteSession\nmetadata:\n  name: {SESSION}\nspec:\n  device: {DEVICE}\n  mode: Unattended\n  duration: 2h\n  reason: relays benchmark\n"
        ),
    )?;
    wait_until("the session is Active", || {
        let phase = kubectl(
            &cp,
            &[
                "get",
                "remotesession",
                SESSION,
                "-n",
                &ns,
                "-o",
                "jsonpath={.status.phase}",
            ],
        )
        .ok()?;
        (phase == "Active").then_some(())
    })
    .await?;

    // Joins, alternating so that both series see the same load.
    eprintln!(
        "Joining {} times through each replica (3 warm-ups each)",
        args.joins
    );
    let (mut same, mut other) = (Vec::new(), Vec::new());
    for i in 0..args.joins + 3 {
        let via_b = join(&cp, &bin, &ns, b_port)?;
        let via_a = join(&cp, &bin, &ns, a_port)?;
        if i >= 3 {
            same.push(via_b);
            other.push(via_a);
        }
    }
    let forwarded = metric(a_metrics, "tether_relay_forwarded_total").await;

    // Presence writes while idle.
    let before = device_writes(&cp)?;
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let idle = device_writes(&cp)? - before;

    // B goes away with no live session: the agent is told to move to A.
    let before_move = device_writes(&cp)?;
    let stopped = Instant::now();
    signal_term(&b)?;
    attached(&cp, &ns, "relay-a").await?;
    let moved = stopped.elapsed();
    let _ = b.terminate(Duration::from_secs(30));
    let move_writes = device_writes(&cp)? - before_move;
    drop(agent);

    println!();
    println!(
        "relay replicas (2 relays, 1 agent on B; release build; host load average {})",
        crate::bench_desktop::load_average()
    );
    print_series("join through B (agent on B)", &mut same);
    print_series("join through A (forwarded to B)", &mut other);
    println!("  forwarded by A: {forwarded}");
    println!(
        "  presence writes while idle: {idle:.0} in {} s ({:.2}/s for the agent)",
        args.idle_secs,
        idle / args.idle_secs as f64
    );
    println!(
        "  agent on A {:.2} s after SIGTERM to B (no live session); Device writes for the move: {move_writes:.0}",
        moved.as_secs_f64()
    );
    Ok(())
}

/// One `kubectl tether shell SESSION --relay 127.0.0.1:PORT -- true`, in milliseconds.
fn join(cp: &ControlPlane, bin: &Path, ns: &str, port: u16) -> Result<f64> {
    let relay = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let out = Command::new(bin.join("kubectl-tether"))
        .env("KUBECONFIG", cp.kubeconfig())
        .args(["--context", "carol", "-n", ns, "shell", SESSION])
        .args(["--relay", &relay, "--", "true"])
        .output()
        .context("failed to run kubectl-tether")?;
    let took = started.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "kubectl tether shell through {relay} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

fn print_series(what: &str, ms: &mut [f64]) {
    ms.sort_by(f64::total_cmp);
    println!(
        "  {what:<34} p50 {:6.1} ms   p90 {:6.1} ms   max {:6.1} ms   (n={})",
        percentile(ms, 0.5),
        percentile(ms, 0.9),
        ms.last().copied().unwrap_or(f64::NAN),
        ms.len()
    );
}

/// Waits until the Device is Online on relay `name`.
async fn attached(cp: &ControlPlane, ns: &str, name: &str) -> Result<()> {
    wait_until(&format!("the Device is on {name}"), || {
        let status = kubectl(
            cp,
            &[
                "get",
                "device",
                DEVICE,
                "-n",
                ns,
                "-o",
                "jsonpath={.status.presence}/{.status.relay}",
            ],
        )
        .ok()?;
        (status == format!("Online/{name}")).then_some(())
    })
    .await
}

/// Writes to Devices the API server has served (every verb that changes an object).
fn device_writes(cp: &ControlPlane) -> Result<f64> {
    let metrics = kubectl(cp, &["get", "--raw", "/metrics"])?;
    Ok(metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| l.contains("resource=\"devices\""))
        .filter(|l| {
            ["PATCH", "PUT", "POST", "DELETE", "APPLY"]
                .iter()
                .any(|v| l.contains(&format!("verb=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// A counter from the metrics a relay serves on `port`.
async fn metric(port: u16, name: &str) -> String {
    let body = crate::demo::http_get(port, "/metrics")
        .await
        .unwrap_or_default();
    body.lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| "0".into())
}

fn signal_term(process: &tether_controlplane::process::ManagedProcess) -> Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &process.id().to_string()])
        .status()
        .context("failed to run kill")?;
    if !status.success() {
        bail!("kill -TERM {} failed", process.id());
    }
    Ok(())
}

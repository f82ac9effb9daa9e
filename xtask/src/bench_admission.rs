//! `cargo xtask bench admission`: the latency SessionPolicies add to creating a RemoteSession.
//! One local control plane with the whole chart installed; sessions are created alternately in
//! a namespace without SessionPolicies and in one with two (every rule set, each met by the
//! session), so both series see the same API server, etcd and load. Prints p50/p99/max of each
//! create's round trip as the client sees it; asserts nothing.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::api::{Api, DynamicObject, PostParams};
use kube::discovery::ApiResource;
use tether_controlplane::{ControlPlane, Options};
use tether_crds::{RemoteSession, SessionPolicy};

use crate::bench::{install_chart, percentile};

/// Parameters of the admission benchmark.
#[derive(Clone, Debug, clap::Args)]
pub struct AdmissionArgs {
    /// Sessions created in each namespace (after 20 warm-up creates in each).
    #[arg(long, default_value_t = 500)]
    pub sessions: usize,
}

/// Runs the admission benchmark.
pub fn admission(args: AdmissionArgs) -> Result<()> {
    let assets = crate::controlplane::ensure()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?
        .block_on(run(args, assets))
}

/// A session that meets every rule of [`POLICIES`].
const SESSION: &str = r#"{"apiVersion": "tether.dev/v1alpha1", "kind": "RemoteSession",
  "metadata": {"name": "x"},
  "spec": {"device": "laptop", "mode": "Unattended", "duration": "20m", "recording": "Required",
    "technicians": {"groups": ["seniors"]},
    "features": {"desktop": "ViewOnly", "processes": false}}}"#;

/// Two policies in one namespace, every rule set.
const POLICIES: [&str; 2] = [
    r#"{"apiVersion": "tether.dev/v1alpha1", "kind": "SessionPolicy", "metadata": {"name": "servers"},
      "spec": {"modes": ["Unattended", "Interactive"], "recording": "Required", "maxDuration": "2h",
        "features": {"desktop": "ViewOnly", "processes": false, "clipboardToDevice": false,
          "clipboardFromDevice": false, "recordKeystrokes": false},
        "adminTools": {"groups": ["seniors"]}}}"#,
    r#"{"apiVersion": "tether.dev/v1alpha1", "kind": "SessionPolicy", "metadata": {"name": "hours"},
      "spec": {"maxDuration": "1h", "features": {"chat": true}}}"#,
];

async fn run(args: AdmissionArgs, assets: tether_controlplane::Assets) -> Result<()> {
    eprintln!("Starting the local control plane");
    let cp = ControlPlane::start(Options {
        assets: assets.clone(),
        ..Options::default()
    })
    .await?;
    install_chart(&cp, &assets, &[])?;
    let admin = cp.client("admin").await?;
    let plain = cp.namespace("admission-plain").await?;
    let governed = cp.namespace("admission-policy").await?;
    let policies: Api<SessionPolicy> = Api::namespaced(admin.clone(), &governed);
    for policy in POLICIES {
        let policy: SessionPolicy = serde_json::from_str(policy)?;
        policies.create(&PostParams::default(), &policy).await?;
    }
    // In force once a session breaking a rule is refused (checked with a dry run).
    let resource = ApiResource::erase::<RemoteSession>(&());
    let dynamic: Api<DynamicObject> = Api::namespaced_with(admin.clone(), &governed, &resource);
    let mut breaking: DynamicObject = serde_json::from_str(SESSION)?;
    breaking.data["spec"]["features"]["desktop"] = "Control".into();
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while dynamic.create(&dry, &breaking).await.is_ok() {
        if Instant::now() > deadline {
            bail!("the SessionPolicies were not in force after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let template: RemoteSession = serde_json::from_str(SESSION)?;
    let apis = [
        (
            "without SessionPolicies",
            Api::namespaced(admin.clone(), &plain),
        ),
        (
            "with 2 SessionPolicies",
            Api::namespaced(admin.clone(), &governed),
        ),
    ];
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let warmup = 20;
    for i in 0..warmup + args.sessions {
        for (k, (_, api)) in apis.iter().enumerate() {
            let mut session = template.clone();
            session.metadata.name = Some(format!("s-{i}"));
            let started = Instant::now();
            api.create(&PostParams::default(), &session)
                .await
                .with_context(|| format!("creating session {i}"))?;
            if i >= warmup {
                times[k].push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    println!(
        "RemoteSession create round trip, {} sessions each, alternating (ms):",
        args.sessions
    );
    let mut p50s = Vec::new();
    for (k, (label, _)) in apis.iter().enumerate() {
        let sorted = &mut times[k];
        sorted.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(sorted, 0.5), percentile(sorted, 0.99));
        p50s.push((p50, p99));
        println!(
            "  {label:<24} p50 {p50:6.2}   p99 {p99:6.2}   max {:6.2}",
            sorted.last().copied().unwrap_or(f64::NAN)
        );
    }
    println!(
        "  added by the policies   p50 {:+6.2}   p99 {:+6.2}",
        p50s[1].0 - p50s[0].0,
        p50s[1].1 - p50s[0].1
    );
    Ok(())
}

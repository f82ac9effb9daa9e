//! `cargo xtask controlplane`: builds and caches the local control plane's binaries, and the
//! S3 server (versitygw) the tests use.

use std::time::Instant;

use anyhow::Result;
use tether_controlplane::{
    Assets, ETCD_VERSION, HELM_VERSION, KUBERNETES_VERSION, VERSITYGW_VERSION, build,
};

/// Makes sure every control-plane binary exists, building what is missing, and returns where
/// they are.
pub fn ensure() -> Result<Assets> {
    let started = Instant::now();
    let assets = Assets::from_env();
    let report = build::build_missing(&assets, &mut |line| eprintln!("{line}"))?;
    if report.built.is_empty() {
        eprintln!(
            "Control plane ready: Kubernetes v{KUBERNETES_VERSION}, etcd v{ETCD_VERSION}, helm v{HELM_VERSION}, versitygw v{VERSITYGW_VERSION} in {} (cached; checked in {})",
            assets.cache.display(),
            build::human(started.elapsed())
        );
    } else {
        for (what, took) in &report.built {
            eprintln!("Built {what} in {}", build::human(*took));
        }
        eprintln!(
            "Control plane ready in {} after {}",
            assets.cache.display(),
            build::human(started.elapsed())
        );
    }
    Ok(assets)
}

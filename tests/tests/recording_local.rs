//! The local filesystem as the recording store: what the demo and a cluster without object
//! storage use. In its own test binary, so that its relay reads the store from the settings
//! its operator provisioned, with no other operator sharing them.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use std::path::Path;

use tether_crds::remote_session::SessionPhase;
use tether_e2e::dataplane::{Agent, Cluster, kubectl_tether};
use tether_e2e::recording::*;

#[tokio::test]
async fn the_local_filesystem_is_the_default_store() {
    // No store flags: the relay records where the operator's settings say, a directory.
    let cluster = Cluster::start_reading_store_settings("local").await;
    let ns = cluster.namespace.clone();
    let _agent = Agent::enroll_and_run(&ns, "laptop", cluster.relay.port, CONSENTING).await;
    session(&cluster, "plain", "Enabled").await;
    wait_phase(&cluster, "plain", SessionPhase::Pending).await;
    ok(kubectl_tether(
        &ns,
        "carol",
        &["shell", "plain", "--", "sh", "-c", "echo local-$((1+1))"],
        None,
    ));
    ok(kubectl_tether(&ns, "admin", &["terminate", "plain"], None));
    let status = wait_recording(&cluster, "plain", "Complete").await;
    let location = status.location.clone().unwrap();
    let dir = location
        .strip_prefix("file://")
        .unwrap_or_else(|| panic!("not a local store: {location}"));
    let uid = api(&cluster)
        .await
        .get("plain")
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let cast = status.objects.iter().find(|o| o.kind == "shell").unwrap();
    let file = Path::new(dir)
        .join("sessions")
        .join(&ns)
        .join("plain")
        .join(uid)
        .join(&cast.name);
    let played = asciinema_cat(&file);
    assert!(played.contains("local-2"), "{played}");
}

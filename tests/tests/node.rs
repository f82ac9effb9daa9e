//! Tether installed by Helm on a real node: the local control plane listens on the node's pod
//! bridge, the node runs containerd, runc, the CNI bridge plugin, kubelet and kube-proxy, and
//! Tether's images (`cargo xtask images`, from the test build's binaries) are loaded into it.
//! `helm install` runs the operator and the relay as pods that become Ready, and the relay
//! Service answers on the node's address (NodePort).

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tether_controlplane::node::{self, Node, NodeOptions};
use tether_controlplane::{Assets, ControlPlane, Options};
use tether_e2e::workspace_bin;

/// The images' tag.
const TAG: &str = "node-1";

/// Builds the images from the test build's binaries and writes each as an archive the node
/// can load, named `tether.local/<image>:<tag>`.
fn image_archives(work: &Path) -> Vec<std::path::PathBuf> {
    let binaries = workspace_bin("tether-operator")
        .parent()
        .unwrap()
        .to_path_buf();
    let layouts = work.join("layouts");
    let built = Command::new(workspace_bin("tether-xtask"))
        .arg("images")
        .arg("--binaries")
        .arg(&binaries)
        .arg("--tag")
        .arg(TAG)
        .arg("--out")
        .arg(&layouts)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "cargo xtask images failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let mut archives = vec![node::build_pause_image(work).unwrap()];
    for image in ["tether-operator", "tether-relay"] {
        archives.push(
            node::archive(
                &layouts.join(image),
                TAG,
                &format!("tether.local/{image}:{TAG}"),
                work,
            )
            .unwrap(),
        );
    }
    archives
}

fn pods_ready(pods: &[Pod], component: &str) -> usize {
    pods.iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app.kubernetes.io/component"))
                .is_some_and(|c| c == component)
        })
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count()
}

// Partial: the node registers and becomes Ready, the scheduler places the operator's pods and
// the CNI plugin wires their network, but Debian's runc 1.1.5 fails every pod sandbox on this
// kernel ("can't get final child's PID from pipe: EOF"), so no pod starts yet. Run it with
// `cargo test -p tether-e2e --test node -- --ignored` (as root).
#[ignore = "pod sandboxes do not start under Debian's runc 1.1.5 yet"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_runs_the_operator_and_relay_as_pods_on_a_real_node() {
    let work = tempfile::Builder::new()
        .prefix("tether-node-")
        .tempdir()
        .unwrap();
    let archives = image_archives(work.path());
    let address = node::prepare_network().unwrap();
    let mut users = tether_controlplane::default_users();
    users.extend(node::users());
    let cp = ControlPlane::start(Options {
        address,
        users,
        scheduler: true,
        keep_dir: std::env::var_os("TETHER_NODE_KEEP").map(Into::into),
        ..Options::default()
    })
    .await
    .unwrap();
    let assets = Assets::from_env();
    let _node = Node::start(
        &cp,
        &NodeOptions {
            kubelet: assets.require("kubelet").unwrap(),
            kube_proxy: assets.require("kube-proxy").unwrap(),
            images: archives,
        },
    )
    .await
    .unwrap();

    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/tether");
    let installed = Command::new(assets.require("helm").unwrap())
        .args([
            "install",
            "tether",
            chart,
            "--namespace",
            "tether-system",
            "--create-namespace",
        ])
        .arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .args([
            "--set",
            "operator.image.repository=tether.local/tether-operator",
        ])
        .args(["--set", &format!("operator.image.tag={TAG}")])
        .args(["--set", "operator.image.pullPolicy=Never"])
        .args(["--set", "relay.image.repository=tether.local/tether-relay"])
        .args(["--set", &format!("relay.image.tag={TAG}")])
        .args(["--set", "relay.image.pullPolicy=Never"])
        .args(["--set", "relay.serviceType=NodePort"])
        .args(["--set", "operator.logFormat=plain"])
        .output()
        .unwrap();
    assert!(
        installed.status.success(),
        "helm install failed: {}",
        String::from_utf8_lossy(&installed.stderr)
    );
    let pods: Api<Pod> = Api::namespaced(cp.client("admin").await.unwrap(), "tether-system");
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let list = pods.list(&Default::default()).await.unwrap().items;
        if pods_ready(&list, "operator") == 2 && pods_ready(&list, "relay") >= 1 {
            break;
        }
        if std::time::Instant::now() > deadline {
            let statuses: Vec<String> = list
                .iter()
                .map(|p| {
                    format!(
                        "{}: {}",
                        p.metadata.name.clone().unwrap_or_default(),
                        serde_json::to_string(&p.status).unwrap()
                    )
                })
                .collect();
            let events = cp
                .kubectl("admin")
                .args(["get", "events", "-A", "-o", "wide"])
                .output()
                .unwrap();
            panic!(
                "the operator's two replicas and the relay were not Ready pods within 180 s:\n{}\nevents:\n{}\nnode logs in {}",
                statuses.join("\n"),
                String::from_utf8_lossy(&events.stdout),
                cp.dir().join("node").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

//! The Helm chart: lints clean, renders, validates its values, installs into the local control
//! plane with every object it promises, upgrades, and keeps the CRDs on uninstall.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use std::process::{Command, Output};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use tether_e2e::{ControlPlane, control_plane};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/tether");

fn helm(cp: Option<&ControlPlane>, args: &[&str]) -> Output {
    let bin = tether_controlplane::Assets::from_env()
        .require("helm")
        .expect("helm is built by `cargo xtask controlplane`");
    let mut cmd = Command::new(bin);
    // Keep helm's caches and config out of the user's home.
    let home = std::env::temp_dir().join("tether-e2e-helm");
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    if let Some(cp) = cp {
        cmd.arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
            .arg("--kube-context=admin");
    }
    cmd.args(args).output().expect("helm runs")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "helm failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn control_plane_kubectl(cp: &ControlPlane, args: &[&str]) -> String {
    tether_e2e::kubectl_ok(cp, "admin", args)
}

#[test]
fn chart_lints_and_renders() {
    let lint = ok(helm(None, &["lint", "--strict", CHART]));
    assert!(lint.contains("0 chart(s) failed"), "{lint}");

    let rendered = ok(helm(
        None,
        &["template", "tether", CHART, "--namespace", "tether-system"],
    ));
    for kind in [
        "kind: CustomResourceDefinition",
        "kind: Deployment",
        "kind: ServiceAccount",
        "kind: ClusterRole\n",
        "kind: ClusterRoleBinding",
        "kind: Service\n",
    ] {
        assert!(rendered.contains(kind), "rendered chart lacks {kind:?}");
    }
    assert_eq!(
        rendered.matches("kind: CustomResourceDefinition").count(),
        tether_crds::crds().len()
    );
    assert!(rendered.contains("helm.sh/resource-policy: keep"));

    // The CRDs are optional.
    let without = ok(helm(
        None,
        &["template", "tether", CHART, "--set", "crds.install=false"],
    ));
    assert!(!without.contains("kind: CustomResourceDefinition"));

    // values.schema.json refuses bad values with a message naming the key.
    let bad = helm(
        None,
        &[
            "template",
            "tether",
            CHART,
            "--set",
            "operator.maxSessionDuration=forever",
        ],
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("maxSessionDuration"), "{err}");
    let bad = helm(
        None,
        &["template", "tether", CHART, "--set", "operator.replica=2"],
    );
    assert!(!bad.status.success(), "a misspelt key must be refused");
}

#[test]
fn chart_runs_two_operator_replicas_with_leader_election_on_a_namespaced_lease() {
    let deployment = operator_deployment(&[]);
    let spec = deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(2), "two replicas by default");
    let env = spec.template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let value = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
            .unwrap_or_else(|| panic!("{name} is set"))
    };
    assert_eq!(value("TETHER_LEADER_ELECTION"), "true");
    assert_eq!(value("TETHER_LEADER_ELECTION_ID"), "tether-operator");
    assert_eq!(value("TETHER_LEADER_ELECTION_LEASE_DURATION"), "12s");
    assert_eq!(value("TETHER_LEADER_ELECTION_RENEW_DEADLINE"), "8s");
    assert_eq!(value("TETHER_LEADER_ELECTION_RETRY_PERIOD"), "2s");

    // Leases only in the release namespace's Role, never in the ClusterRole.
    let rbac = ok(helm(
        None,
        &[
            "template",
            "tether",
            CHART,
            "--namespace",
            "tether-system",
            "--show-only",
            "templates/operator-rbac.yaml",
        ],
    ));
    let docs: Vec<serde_yaml::Value> = rbac
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str(d).ok())
        .collect();
    let grants_leases = |kind: &str| {
        docs.iter()
            .filter(|d| d["kind"] == kind)
            .flat_map(|d| d["rules"].as_sequence().cloned().unwrap_or_default())
            .any(|r| {
                r["resources"]
                    .as_sequence()
                    .is_some_and(|rs| rs.iter().any(|x| x == "leases"))
            })
    };
    assert!(grants_leases("Role"), "{rbac}");
    assert!(!grants_leases("ClusterRole"), "{rbac}");

    let bad = helm(
        None,
        &[
            "template",
            "tether",
            CHART,
            "--set",
            "operator.leaderElection.leaseDuration=soon",
        ],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("leaseDuration"));
}

#[tokio::test]
async fn chart_installs_upgrades_and_keeps_crds() {
    let cp = control_plane();
    let client = cp.client("admin").await.unwrap();

    ok(helm(
        Some(cp),
        &[
            "install",
            "tether",
            CHART,
            "--namespace",
            "tether-system",
            "--create-namespace",
        ],
    ));

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in [
        "remotesessions.tether.dev",
        "assistancerequests.tether.dev",
        "devices.tether.dev",
    ] {
        let crd = crds.get(name).await.unwrap();
        let annotations = crd.metadata.annotations.unwrap_or_default();
        assert_eq!(
            annotations
                .get("meta.helm.sh/release-name")
                .map(String::as_str),
            Some("tether")
        );
    }
    let deploy: Api<Deployment> = Api::namespaced(client.clone(), "tether-system");
    let operator = deploy.get("tether-operator").await.unwrap();
    let pod = operator.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("tether-operator"));
    let env: Vec<String> = pod.containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| format!("{}={}", e.name, e.value.clone().unwrap_or_default()))
        .collect();
    assert!(
        env.contains(&"TETHER_MAX_SESSION_DURATION=8h".to_owned()),
        "{env:?}"
    );
    Api::<ServiceAccount>::namespaced(client.clone(), "tether-system")
        .get("tether-operator")
        .await
        .unwrap();
    Api::<Service>::namespaced(client.clone(), "tether-system")
        .get("tether-operator-metrics")
        .await
        .unwrap();
    let role = Api::<ClusterRole>::all(client.clone())
        .get("tether-operator")
        .await
        .unwrap();
    // Least privilege: no wildcard and no write access to the resources' specs.
    for rule in role.rules.unwrap() {
        assert!(!rule.verbs.contains(&"*".to_owned()), "{rule:?}");
        let resources = rule.resources.clone().unwrap_or_default();
        assert!(!resources.contains(&"*".to_owned()), "{rule:?}");
    }
    Api::<ClusterRoleBinding>::all(client.clone())
        .get("tether-operator")
        .await
        .unwrap();
    // The roles for people, and the admission policies that guard approvals.
    for role in [
        "viewer",
        "requester",
        "editor",
        "approver",
        "technician",
        "auditor",
        "admin",
    ] {
        Api::<ClusterRole>::all(client.clone())
            .get(&format!("tether-{role}"))
            .await
            .unwrap();
    }
    let policies = control_plane_kubectl(cp, &["get", "validatingadmissionpolicies", "-o", "name"]);
    for policy in [
        "tether-remotesessions",
        "tether-assistancerequests",
        "tether-approvals",
    ] {
        assert!(policies.contains(policy), "{policy} missing: {policies}");
    }

    // Upgrades apply changed values (and CRDs, which are templates).
    ok(helm(
        Some(cp),
        &[
            "upgrade",
            "tether",
            CHART,
            "--namespace",
            "tether-system",
            "--set",
            "operator.maxSessionDuration=4h",
        ],
    ));
    let operator = deploy.get("tether-operator").await.unwrap();
    let env = operator.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap_or_default();
    assert!(
        env.iter()
            .any(|e| e.name == "TETHER_MAX_SESSION_DURATION" && e.value.as_deref() == Some("4h"))
    );

    // Uninstall removes the operator but keeps the CRDs and with them everyone's sessions.
    ok(helm(
        Some(cp),
        &["uninstall", "tether", "--namespace", "tether-system"],
    ));
    assert!(deploy.get_opt("tether-operator").await.unwrap().is_none());
    assert!(
        crds.get_opt("remotesessions.tether.dev")
            .await
            .unwrap()
            .is_some()
    );
}

/// The operator Deployment as the chart renders it with `sets`.
fn operator_deployment(sets: &[&str]) -> Deployment {
    let mut args = vec![
        "template",
        "tether",
        CHART,
        "--namespace",
        "tether-system",
        "--show-only",
        "templates/operator-deployment.yaml",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    serde_yaml::from_str(&ok(helm(None, &args))).unwrap()
}

fn env_of(deployment: &Deployment) -> std::collections::BTreeMap<String, String> {
    deployment
        .spec
        .clone()
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| Some((e.name, e.value?)))
        .collect()
}

#[test]
fn chart_images_come_from_their_repositories_or_one_private_registry() {
    // By default: the images of the chart's appVersion, and the operator runs the relay.
    let deployment = operator_deployment(&[]);
    let pod = deployment.spec.clone().unwrap().template.spec.unwrap();
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("ghcr.io/tether-dev/tether-operator:0.1.0")
    );
    assert_eq!(pod.image_pull_secrets, None);
    let env = env_of(&deployment);
    assert_eq!(
        env["TETHER_RELAY_IMAGE"],
        "ghcr.io/tether-dev/tether-relay:0.1.0"
    );
    assert_eq!(env["TETHER_RELAY_IMAGE_PULL_POLICY"], "IfNotPresent");
    assert_eq!(env["TETHER_RELAY_REPLICAS"], "1");
    assert!(!env.contains_key("TETHER_RELAY_IMAGE_PULL_SECRETS"));

    // A private registry with a pull secret: both images from it, both pods with the secret.
    let deployment = operator_deployment(&[
        "global.imageRegistry=registry.example.com/mirror",
        "global.imagePullSecrets[0].name=regcred",
        "operator.imagePullSecrets[0].name=operator-only",
        "relay.image.tag=1.2.3",
        "relay.image.pullPolicy=Always",
    ]);
    let pod = deployment.spec.clone().unwrap().template.spec.unwrap();
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("registry.example.com/mirror/tether-operator:0.1.0")
    );
    let secrets: Vec<String> = pod
        .image_pull_secrets
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(secrets, ["regcred", "operator-only"]);
    let env = env_of(&deployment);
    assert_eq!(
        env["TETHER_RELAY_IMAGE"],
        "registry.example.com/mirror/tether-relay:1.2.3"
    );
    assert_eq!(env["TETHER_RELAY_IMAGE_PULL_POLICY"], "Always");
    assert_eq!(env["TETHER_RELAY_IMAGE_PULL_SECRETS"], "regcred");

    // No relay image: the operator provisions no relay workload.
    let env = env_of(&operator_deployment(&["relay.image.repository="]));
    assert!(!env.contains_key("TETHER_RELAY_IMAGE"), "{env:?}");

    // Values the schema refuses.
    for bad in [
        "global.imageRegistry=https://registry.example.com",
        "relay.image.pullPolicy=Sometimes",
        "relay.serviceType=Ingress",
        "relay.port=0",
    ] {
        let out = helm(None, &["template", "tether", CHART, "--set", bad]);
        assert!(!out.status.success(), "{bad} must be refused");
    }
}

//! Relay provisioning: the operator keeps the relay's serving certificate (Secret
//! `tether-relay-tls`, issued by its CA for the relay's names and re-issued before expiry or
//! when the CA rotates), its settings (ConfigMap `tether-relay`) and, when an image is
//! configured, its Deployment and Service (UDP and TCP on one port). A relay run outside the
//! cluster (the demo, the tests) is configured from exactly these objects.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use tether_crds::contract::relay_certificate;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Context;
use crate::credentials::ca::unix_now;
use crate::recordings::RecordingSettings;

/// Field manager for the relay's objects.
pub const FIELD_MANAGER: &str = "tether-operator/relay";
/// The relay's name (Secret, ConfigMap, Deployment, Service, ServiceAccount).
pub const RELAY: &str = "tether-relay";
/// Secret with the relay's serving certificate.
pub const TLS_SECRET: &str = "tether-relay-tls";
/// Lifetime of the serving certificate.
pub const CERT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Re-issue this long before expiry.
pub const RENEW_BEFORE: Duration = Duration::from_secs(10 * 24 * 3600);

/// How the relay is provisioned (operator settings, from the chart's `relay.*` values).
#[derive(Clone, Debug, Default)]
pub struct RelaySettings {
    /// The address technicians and agents dial (`host:port`), if set.
    pub address: Option<String>,
    /// The relay image; empty: no Deployment or Service (the relay runs elsewhere).
    pub image: String,
    /// Its pull policy (`IfNotPresent` when empty).
    pub pull_policy: String,
    /// Secrets (in the operator's namespace) its pods pull the image with.
    pub pull_secrets: Vec<String>,
    /// Replicas.
    pub replicas: i32,
    /// Service type (`LoadBalancer`, `NodePort`, `ClusterIP`).
    pub service_type: String,
    /// Port the Service exposes for UDP and TCP.
    pub port: u16,
    /// Extra names or IPs for the serving certificate.
    pub extra_names: Vec<String>,
    /// How long users have to answer consent prompts.
    pub consent_timeout: String,
    /// Where the relay records sessions.
    pub recording: RecordingSettings,
}

/// Name of the relay's recordings volume (a `file://` store's directory).
pub const RECORDINGS_VOLUME: &str = "recordings";

/// The relay's settings, as the data of its ConfigMap:
///
/// | key | value |
/// |---|---|
/// | `advertise` | the address technicians and agents dial |
/// | `consentTimeout` | Go duration |
/// | `quic` | `true` |
/// | `recordingStore` | the store URL; absent when recording is not configured |
/// | `recordingOptions` | JSON object of the non-secret store options |
/// | `recordingCredentialsSecret` | Secret (same namespace) with the secret options; absent if none |
/// | `recordingPartSize` | bytes, decimal |
/// | `recordingFlushInterval` | Go duration |
pub fn config_data(settings: &RelaySettings) -> BTreeMap<String, String> {
    let recording = &settings.recording;
    let mut data = BTreeMap::from([
        (
            "advertise".to_owned(),
            settings.address.clone().unwrap_or_default(),
        ),
        (
            "consentTimeout".to_owned(),
            settings.consent_timeout.clone(),
        ),
        ("quic".to_owned(), "true".to_owned()),
        (
            "recordingOptions".to_owned(),
            serde_json::to_string(&recording.options).unwrap_or_else(|_| "{}".to_owned()),
        ),
        (
            "recordingPartSize".to_owned(),
            recording.part_size.to_string(),
        ),
        (
            "recordingFlushInterval".to_owned(),
            recording.flush_interval.to_string(),
        ),
    ]);
    if let Some(store) = &recording.store {
        data.insert("recordingStore".to_owned(), store.clone());
    }
    if let Some(secret) = &recording.credentials_secret {
        data.insert("recordingCredentialsSecret".to_owned(), secret.clone());
    }
    data
}

/// The relay pod's recordings volume and where it is mounted, for a `file://` store: the
/// configured PersistentVolumeClaim, else an `emptyDir` (recordings then last only as long
/// as the pod: fine for trying Tether out, not for production).
fn recordings_volume(
    recording: &RecordingSettings,
) -> Option<(serde_json::Value, serde_json::Value)> {
    let path = recording.file_path()?;
    let volume = match &recording.claim_name {
        Some(claim) => serde_json::json!({
            "name": RECORDINGS_VOLUME,
            "persistentVolumeClaim": {"claimName": claim},
        }),
        None => serde_json::json!({"name": RECORDINGS_VOLUME, "emptyDir": {}}),
    };
    let mount = serde_json::json!({"name": RECORDINGS_VOLUME, "mountPath": path});
    Some((volume, mount))
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "tether".to_owned()),
        ("app.kubernetes.io/component".to_owned(), "relay".to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "tether-operator".to_owned(),
        ),
    ])
}

/// Names the serving certificate must cover.
pub fn certificate_names(namespace: &str, settings: &RelaySettings) -> (Vec<String>, Vec<IpAddr>) {
    let mut names = vec![
        RELAY.to_owned(),
        format!("{RELAY}.{namespace}"),
        format!("{RELAY}.{namespace}.svc"),
        format!("{RELAY}.{namespace}.svc.cluster.local"),
        "localhost".to_owned(),
    ];
    let mut ips: Vec<IpAddr> = vec![std::net::Ipv4Addr::LOCALHOST.into()];
    let mut add = |name: &str| {
        let host =
            name.rsplit_once(':').map_or(
                name,
                |(h, p)| {
                    if p.parse::<u16>().is_ok() { h } else { name }
                },
            );
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match host.parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) if !host.is_empty() && !names.iter().any(|n| n == host) => {
                names.push(host.to_owned())
            }
            Err(_) => {}
        }
    };
    if let Some(address) = &settings.address {
        add(address);
    }
    for extra in &settings.extra_names {
        add(extra);
    }
    (names, ips)
}

/// Makes the relay's objects current; returns how long until the certificate needs renewal.
pub async fn provision(
    ctx: &Context,
    namespace: &str,
    settings: &RelaySettings,
) -> Result<Duration, kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let (names, ips) = certificate_names(namespace, settings);
    let wanted_names = names
        .iter()
        .cloned()
        .chain(ips.iter().map(ToString::to_string))
        .collect::<Vec<_>>()
        .join(",");
    let authority = ctx.credentials.authority();
    let bundle = authority.trust_bundle();
    let now = unix_now();
    let current = secrets.get_opt(TLS_SECRET).await?;
    let annotation = |s: &Secret, key: &str| {
        s.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key).cloned())
            .unwrap_or_default()
    };
    let data_text = |s: &Secret, key: &str| {
        s.data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .unwrap_or_default()
    };
    let renew_at = |s: &Secret| {
        annotation(s, "tether.dev/not-after")
            .parse::<i64>()
            .unwrap_or(0)
            - RENEW_BEFORE.as_secs() as i64
    };
    let fresh = current.as_ref().is_some_and(|s| {
        annotation(s, "tether.dev/names") == wanted_names
            && annotation(s, relay_certificate::PROFILE_ANNOTATION) == relay_certificate::PROFILE
            && data_text(s, "ca.crt") == bundle
            && now < renew_at(s)
    });
    let not_after = if fresh {
        current
            .as_ref()
            .map(|s| {
                annotation(s, "tether.dev/not-after")
                    .parse::<i64>()
                    .unwrap_or(now)
            })
            .unwrap_or(now)
    } else {
        let issued = match authority.issue_server(RELAY, &names, &ips, CERT_VALIDITY, now) {
            Ok(i) => i,
            Err(e) => {
                warn!(error = %e, "Failed to issue the relay certificate");
                return Ok(Duration::from_secs(60));
            }
        };
        let secret = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {
                "name": TLS_SECRET, "labels": labels(),
                "annotations": {
                    "tether.dev/names": wanted_names,
                    "tether.dev/not-after": issued.not_after.to_string(),
                    relay_certificate::PROFILE_ANNOTATION: relay_certificate::PROFILE,
                },
            },
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": issued.cert, "tls.key": issued.key, "ca.crt": bundle},
        });
        secrets
            .patch(
                TLS_SECRET,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await?;
        info!(namespace, names = %wanted_names, "Issued the relay's serving certificate");
        issued.not_after
    };

    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": RELAY, "labels": labels()},
        "data": config_data(settings),
    });
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(ctx.client.clone(), namespace)
        .patch(
            RELAY,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&config),
        )
        .await?;

    if !settings.image.is_empty() {
        workload(ctx, namespace, settings).await?;
    }
    let renew = not_after - RENEW_BEFORE.as_secs() as i64 - now;
    Ok(Duration::from_secs(renew.max(60) as u64))
}

/// The relay Deployment.
pub fn deployment(settings: &RelaySettings) -> serde_json::Value {
    let container_port = CONTAINER_PORT;
    let selector = serde_json::json!({"app.kubernetes.io/name": "tether", "app.kubernetes.io/component": "relay"});
    let (volumes, mounts): (Vec<_>, Vec<_>) =
        recordings_volume(&settings.recording).into_iter().unzip();
    let pull_secrets: Vec<_> = settings
        .pull_secrets
        .iter()
        .map(|name| serde_json::json!({"name": name}))
        .collect();
    let pull_policy = if settings.pull_policy.is_empty() {
        "IfNotPresent"
    } else {
        settings.pull_policy.as_str()
    };
    serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": RELAY, "labels": labels()},
        "spec": {
            "replicas": settings.replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels()},
                "spec": {
                    "serviceAccountName": RELAY,
                    // The relay drains on SIGTERM for up to 25 s (its --drain-grace): live
                    // sessions finish, then their agents move to another replica.
                    "terminationGracePeriodSeconds": 30,
                    "imagePullSecrets": pull_secrets,
                    "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "relay",
                        "image": settings.image,
                        "imagePullPolicy": pull_policy,
                        // Replicas reach each other at their pod addresses, to forward a
                        // technician to the replica the device's agent is attached to.
                        "args": [
                            format!("--listen=0.0.0.0:{container_port}"),
                            format!("--peer-address=$(POD_IP):{container_port}"),
                            "--log-format=json".to_owned(),
                        ],
                        "env": [
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        ],
                        "ports": [
                            {"name": "quic", "containerPort": container_port, "protocol": "UDP"},
                            {"name": "tls", "containerPort": container_port, "protocol": "TCP"},
                            {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
                        ],
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}},
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}},
                        "securityContext": {
                            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
                        "volumeMounts": mounts,
                    }],
                    "volumes": volumes,
                },
            },
        },
    })
}

/// The port the relay container listens on (UDP and TCP).
const CONTAINER_PORT: u16 = 8443;

async fn workload(
    ctx: &Context,
    namespace: &str,
    settings: &RelaySettings,
) -> Result<(), kube::Error> {
    let container_port = CONTAINER_PORT;
    let selector = serde_json::json!({"app.kubernetes.io/name": "tether", "app.kubernetes.io/component": "relay"});
    let deployment = deployment(settings);
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(ctx.client.clone(), namespace)
        .patch(
            RELAY,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&deployment),
        )
        .await?;
    let service = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": RELAY, "labels": labels()},
        "spec": {
            "type": settings.service_type,
            "selector": selector,
            "ports": [
                {"name": "quic", "port": settings.port, "targetPort": container_port, "protocol": "UDP"},
                {"name": "tls", "port": settings.port, "targetPort": container_port, "protocol": "TCP"},
            ],
        },
    });
    Api::<k8s_openapi::api::core::v1::Service>::namespaced(ctx.client.clone(), namespace)
        .patch(
            RELAY,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&service),
        )
        .await?;
    Ok(())
}

/// Keeps the relay provisioned until `shutdown`: again before the certificate is due, and
/// whenever the trust material changes (a CA rotation).
pub async fn run(
    ctx: Arc<Context>,
    namespace: String,
    settings: RelaySettings,
    shutdown: CancellationToken,
) {
    let mut changes = ctx.credentials.subscribe();
    loop {
        let wait = match provision(&ctx, &namespace, &settings).await {
            Ok(next) => next,
            Err(e) => {
                warn!(error = %e, "Failed to provision the relay; retrying");
                Duration::from_secs(10)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            Ok(()) = changes.changed() => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_covers_service_names_and_the_advertised_address() {
        let settings = RelaySettings {
            address: Some("relay.example.com:443".into()),
            extra_names: vec!["10.1.2.3".into(), "relay.example.com".into()],
            ..Default::default()
        };
        let (names, ips) = certificate_names("tether-system", &settings);
        assert!(names.contains(&"tether-relay.tether-system.svc".to_owned()));
        assert!(names.contains(&"relay.example.com".to_owned()));
        assert_eq!(
            names.iter().filter(|n| *n == "relay.example.com").count(),
            1
        );
        assert!(ips.contains(&"10.1.2.3".parse().unwrap()));
        assert!(ips.contains(&"127.0.0.1".parse().unwrap()));
        let (_, ips) = certificate_names(
            "ns",
            &RelaySettings {
                address: Some("127.0.0.1:8443".into()),
                ..Default::default()
            },
        );
        assert_eq!(ips.len(), 1, "no duplicate loopback");
    }

    #[test]
    fn config_carries_the_recording_settings_but_no_secrets() {
        let plain = config_data(&RelaySettings::default());
        assert!(!plain.contains_key("recordingStore"), "{plain:?}");
        assert!(!plain.contains_key("recordingCredentialsSecret"));
        assert_eq!(plain["recordingOptions"], "{}");
        assert_eq!(plain["recordingPartSize"], "5242880");
        assert_eq!(plain["recordingFlushInterval"], "2s");

        let settings = RelaySettings {
            recording: RecordingSettings {
                store: Some("s3://recordings/tether".into()),
                options: BTreeMap::from([
                    ("endpoint".into(), "http://minio:9000".into()),
                    ("allow_http".into(), "true".into()),
                ]),
                credentials_secret: Some("recording-s3".into()),
                part_size: 6 * 1024 * 1024,
                ..Default::default()
            },
            ..Default::default()
        };
        let data = config_data(&settings);
        assert_eq!(data["recordingStore"], "s3://recordings/tether");
        assert_eq!(data["recordingCredentialsSecret"], "recording-s3");
        assert_eq!(data["recordingPartSize"], "6291456");
        let options: BTreeMap<String, String> =
            serde_json::from_str(&data["recordingOptions"]).unwrap();
        assert_eq!(options["endpoint"], "http://minio:9000");
        assert_eq!(options.len(), 2);
        // An object store needs no volume.
        let pod = &deployment(&settings)["spec"]["template"]["spec"];
        assert_eq!(pod["volumes"], serde_json::json!([]));
    }

    #[test]
    fn a_file_store_is_mounted_from_its_claim() {
        let mut settings = RelaySettings {
            image: "relay:1".into(),
            recording: RecordingSettings {
                store: Some("file:///var/lib/tether/recordings".into()),
                claim_name: Some("tether-recordings".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let pod = deployment(&settings)["spec"]["template"]["spec"].clone();
        assert_eq!(
            pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "tether-recordings"
        );
        let mount = &pod["containers"][0]["volumeMounts"][0];
        assert_eq!(mount["mountPath"], "/var/lib/tether/recordings");
        assert_eq!(mount["name"], RECORDINGS_VOLUME);
        // Without a claim the directory is still writable (the root filesystem is not).
        settings.recording.claim_name = None;
        let pod = deployment(&settings)["spec"]["template"]["spec"].clone();
        assert_eq!(pod["volumes"][0]["emptyDir"], serde_json::json!({}));
    }

    #[test]
    fn the_relay_pulls_its_image_with_the_policy_and_secrets_given() {
        let mut settings = RelaySettings {
            image: "registry.example.com/tether-relay:0.1.0".into(),
            ..Default::default()
        };
        let pod = deployment(&settings)["spec"]["template"]["spec"].clone();
        assert_eq!(pod["imagePullSecrets"], serde_json::json!([]));
        let relay = &pod["containers"][0];
        assert_eq!(relay["image"], "registry.example.com/tether-relay:0.1.0");
        assert_eq!(relay["imagePullPolicy"], "IfNotPresent");
        settings.pull_policy = "Always".into();
        settings.pull_secrets = vec!["regcred".into(), "mirror.v2".into()];
        let pod = deployment(&settings)["spec"]["template"]["spec"].clone();
        assert_eq!(
            pod["imagePullSecrets"],
            serde_json::json!([{"name": "regcred"}, {"name": "mirror.v2"}])
        );
        assert_eq!(pod["containers"][0]["imagePullPolicy"], "Always");
    }
}

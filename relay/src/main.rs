//! `tether-relay`: configured from the objects the operator provisions — its serving
//! certificate (Secret `tether-relay-tls`), its settings (ConfigMap `tether-relay`) and the
//! published trust material — it listens for QUIC and TLS over TCP on one port number and
//! serves until SIGTERM, when it tells every agent and technician it is going.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tether_recording::{RecorderSettings, Storage, StoreConfig};
use tether_relay::cluster::Cluster;
use tether_relay::metrics::Metrics;
use tether_relay::peers::PeerTls;
use tether_relay::recording::RecordingSetup;
use tether_relay::trust::TrustStore;
use tether_relay::{Relay, Settings};
use tether_telemetry::{Health, LoggingArgs};
use tether_transport::{Listener, tls};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Tether's relay.
#[derive(Parser, Debug)]
#[command(name = "tether-relay", version, about)]
struct Args {
    /// Address for QUIC (UDP) and TLS (TCP), same port number for both.
    #[arg(long, env = "TETHER_RELAY_LISTEN", default_value = "0.0.0.0:443")]
    listen: SocketAddr,
    /// This relay's name (reported on Devices).
    #[arg(long, env = "POD_NAME", default_value = "tether-relay")]
    name: String,
    /// Namespace of the operator's objects: trust material, this relay's certificate and
    /// settings.
    #[arg(long, env = "POD_NAMESPACE", default_value = "tether-system")]
    namespace: String,
    /// Secret with the serving certificate (`tls.crt`, `tls.key`).
    #[arg(long, default_value = "tether-relay-tls")]
    tls_secret: String,
    /// ConfigMap with relay settings (`consentTimeout`, `quic`).
    #[arg(long, default_value = "tether-relay")]
    config: String,
    /// Where the other replicas of this relay reach it (`host:port`, e.g. the pod's address
    /// and the listening port), recorded on the Devices whose agents attach here so that a
    /// technician who reached another replica is forwarded here. Without it, technicians are
    /// only served by the replica their device's agent is attached to.
    #[arg(long, env = "TETHER_RELAY_PEER_ADDRESS")]
    peer_address: Option<String>,
    /// On SIGTERM, how long agents with a live session here have to finish it before the
    /// relay stops (agents without one are told to move at once). Keep it under the pod's
    /// terminationGracePeriodSeconds.
    #[arg(long, env = "TETHER_RELAY_DRAIN_GRACE", default_value = "25s")]
    drain_grace: tether_crds::GoDuration,
    /// Serve TLS over TCP only (no QUIC).
    #[arg(long)]
    no_quic: bool,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "TETHER_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    metrics_addr: SocketAddr,
    /// Kubeconfig to use instead of the usual rules.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context.
    #[arg(long)]
    context: Option<String>,
    /// Record to this store instead of the one in the ConfigMap: `file:///path`,
    /// `s3://bucket/prefix`, `gs://…`, `az://…`. Credentials come from
    /// `--recording-credentials-file` or the provider's usual environment variables, never
    /// from a flag (`ps` shows flags to anyone on the host).
    #[arg(long, env = "TETHER_RECORDING_STORE")]
    recording_store: Option<String>,
    /// A store option for `--recording-store` (`KEY=VALUE`, repeatable), e.g.
    /// `endpoint=http://minio:9000`, `region=eu-west-1`, `allow_http=true`. Credential keys
    /// are refused here.
    #[arg(long = "recording-option", value_name = "KEY=VALUE")]
    recording_options: Vec<String>,
    /// Credentials for `--recording-store`: a file of `KEY=VALUE` lines, or a directory with
    /// one file per key (a mounted Secret), e.g. `access_key_id` and `secret_access_key`.
    #[arg(long, env = "TETHER_RECORDING_CREDENTIALS_FILE", value_name = "PATH")]
    recording_credentials_file: Option<PathBuf>,
    /// How often recordings are made durable (Go duration), overriding the ConfigMap.
    #[arg(long)]
    recording_flush_interval: Option<String>,
    /// Logging.
    #[command(flatten)]
    logging: LoggingArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Err(e) = tether_telemetry::init_logging(&args.logging) {
        eprintln!("error: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "Relay stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn client(args: &Args) -> Result<kube::Client> {
    let config =
        tether_telemetry::kubeconfig::load(args.kubeconfig.as_deref(), args.context.as_deref())
            .await?;
    kube::Client::try_from(config).context("failed to create the Kubernetes client")
}

fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
}

/// The TLS configuration from the serving Secret and the trusted CA bundle.
fn tls_config(secret: &Secret, trust: &TrustStore) -> Result<rustls::ServerConfig> {
    let cert = secret_text(secret, "tls.crt").context("the relay Secret has no tls.crt")?;
    let key = secret_text(secret, "tls.key").context("the relay Secret has no tls.key")?;
    tls::server_config(&cert, &key, &trust.ca_bundle()).context("invalid relay certificate")
}

/// Takes the relay's certificate as its client certificate towards other replicas.
fn peer_tls(secret: &Secret, trust: &TrustStore, peers: &PeerTls) -> Result<()> {
    let cert = secret_text(secret, "tls.crt").context("the relay Secret has no tls.crt")?;
    let key = secret_text(secret, "tls.key").context("the relay Secret has no tls.key")?;
    peers
        .set(&trust.ca_bundle(), &cert, &key)
        .map_err(|e| anyhow::anyhow!("invalid relay certificate: {e}"))
}

/// `host:port` with a port number and a host of letters, digits, `.`, `-`, `:` (IPv6, in
/// brackets) only.
fn valid_peer_address(address: &str) -> bool {
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
        && port.parse::<u16>().is_ok_and(|p| p != 0)
}

async fn run(args: Args) -> Result<()> {
    let shutdown = CancellationToken::new();
    let client = client(&args).await?;
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry)?;
    let health = Health::new();
    let (metrics_addr, http) = tether_telemetry::serve(
        args.metrics_addr,
        registry,
        health.clone(),
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("failed to listen on {}", args.metrics_addr))?;
    info!(addr = %metrics_addr, "Serving metrics and health");

    let mut tasks = tokio::task::JoinSet::new();
    let trust = TrustStore::new();
    tasks.spawn(trust.clone().watch(client.clone(), args.namespace.clone()));
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        let mut changes = trust.subscribe();
        while !trust.is_ready() {
            if changes.changed().await.is_err() {
                break;
            }
        }
    })
    .await;
    if ready.is_err() {
        bail!(
            "no trust material after 60s: ConfigMaps tether-trust and tether-revocations in namespace {} are published by tether-operator; is it running?",
            args.namespace
        );
    }

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &args.namespace);
    let secret = secrets
        .get_opt(&args.tls_secret)
        .await
        .with_context(|| {
            format!(
                "failed to read Secret {}/{}",
                args.namespace, args.tls_secret
            )
        })?
        .with_context(|| {
            format!(
                "Secret {}/{} does not exist: tether-operator provisions it for the relay",
                args.namespace, args.tls_secret
            )
        })?;
    let config = Api::<ConfigMap>::namespaced(client.clone(), &args.namespace)
        .get_opt(&args.config)
        .await
        .with_context(|| {
            format!(
                "failed to read ConfigMap {}/{}",
                args.namespace, args.config
            )
        })?
        .and_then(|c| c.data)
        .unwrap_or_default();
    if let Some(address) = &args.peer_address
        && !valid_peer_address(address)
    {
        bail!(
            "--peer-address {} is not host:port",
            tether_proto::text::escape(address)
        );
    }
    let mut settings = Settings {
        name: args.name.clone(),
        peer_address: args.peer_address.clone(),
        ..Settings::default()
    };
    if let Some(t) = config.get("consentTimeout") {
        settings.consent_timeout = t
            .parse::<tether_crds::GoDuration>()
            .with_context(|| format!("invalid consentTimeout in ConfigMap {}", args.config))?
            .as_std();
    }
    let quic = !args.no_quic && config.get("quic").is_none_or(|q| q != "false");
    settings.recording = recording_setup(&client, &args, &config).await?;
    match &settings.recording {
        Some(setup) => {
            info!(store = %setup.storage.location, "Recording sessions");
            let cluster = Cluster::new(client.clone(), args.name.clone());
            // What this relay left behind when it last stopped is complete before it serves
            // (its own new uploads must not be taken for abandoned ones), however long that
            // takes: an interrupted recovery is redone, never half-done.
            recover_once(&setup.storage, &cluster, &args.name).await;
            tasks.spawn(recover_recordings(
                setup.storage.clone(),
                cluster,
                shutdown.clone(),
            ));
        }
        None => info!("No recording store configured: sessions that require recording are refused"),
    }

    let listener = Listener::bind(args.listen, tls_config(&secret, &trust)?, quic)
        .await
        .context("failed to listen")?;
    let bound = listener.local_addr();
    info!(addr = %bound, quic, name = %settings.name, "Listening for agents and technicians");

    let relay = Relay::new(
        settings,
        trust.clone(),
        Some(
            Cluster::new(client.clone(), args.name.clone())
                .with_peer_address(args.peer_address.clone()),
        ),
        metrics,
    );
    if let Err(e) = peer_tls(&secret, &trust, relay.peer_tls()) {
        warn!(error = %e, "The relay's certificate cannot reach other replicas: technicians whose device is on another replica are refused");
    }
    // Follow certificate rotations and CA bundle changes without dropping connections.
    let updater = listener.tls_updater();
    {
        let secrets = secrets.clone();
        let trust = trust.clone();
        let peers = relay.peer_tls().clone();
        let name = args.tls_secret.clone();
        tasks.spawn(async move {
            let mut secret_events = std::pin::pin!(
                watcher(
                    secrets,
                    watcher::Config::default().fields(&format!("metadata.name={name}"))
                )
                .default_backoff()
                .applied_objects()
            );
            let mut trust_changes = trust.subscribe();
            let mut current = None::<Secret>;
            loop {
                tokio::select! {
                    Some(Ok(s)) = secret_events.next() => current = Some(s),
                    Ok(()) = trust_changes.changed() => {}
                    else => break,
                }
                if let Some(s) = &current {
                    match tls_config(s, &trust) {
                        Ok(tls) => {
                            if let Err(e) = updater.set(tls) {
                                warn!(error = %e, "Failed to apply a new TLS configuration");
                            }
                        }
                        Err(e) => warn!(error = %e, "Ignored an unusable relay certificate"),
                    }
                    if let Err(e) = peer_tls(s, &trust, &peers) {
                        warn!(error = %e, "Ignored a relay certificate unusable towards other replicas");
                    }
                }
            }
        });
    }
    let serving = {
        let relay = relay.clone();
        tokio::spawn(async move { relay.serve(listener).await })
    };
    health.set_ready(true);

    tether_telemetry::shutdown_signal().await?;
    info!("Shutting down");
    health.set_ready(false);
    tokio::select! {
        () = relay.drain(args.drain_grace.as_std()) => {}
        signal = tether_telemetry::shutdown_signal() => {
            signal?;
            info!("Stopping without waiting for the drain");
        }
    }
    relay.shutdown().cancel();
    let _ = serving.await;
    shutdown.cancel();
    tasks.shutdown().await;
    let _ = http.await;
    info!("Stopped tether-relay");
    Ok(())
}

/// The store options the flags give: `--recording-option` (where credentials are refused) and
/// `--recording-credentials-file`.
fn flag_options(args: &Args) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for option in &args.recording_options {
        let Some((key, value)) = option.split_once('=') else {
            bail!("a --recording-option is not KEY=VALUE");
        };
        let key = key.trim();
        if tether_recording::storage::is_credential_key(key) {
            bail!(
                "--recording-option {key} holds a credential, which a flag shows to anyone who \
                 can list processes: use --recording-credentials-file or the provider's \
                 environment variables"
            );
        }
        out.push((key.to_owned(), value.to_owned()));
    }
    if let Some(path) = &args.recording_credentials_file {
        out.extend(credentials_from(path)?);
    }
    Ok(out)
}

/// Store options from a credentials file (`KEY=VALUE` lines; `#` comments) or directory (one
/// file per key, as a Secret is mounted). Values are never put in an error message.
fn credentials_from(path: &std::path::Path) -> Result<Vec<(String, String)>> {
    let shown = path.display();
    let mut out = Vec::new();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).with_context(|| format!("failed to read {shown}"))? {
            let entry = entry.with_context(|| format!("failed to read {shown}"))?;
            let key = entry.file_name().to_string_lossy().into_owned();
            // A mounted Secret also holds `..data` and other hidden bookkeeping entries.
            if key.starts_with('.') || !entry.path().is_file() {
                continue;
            }
            let value = std::fs::read_to_string(entry.path())
                .with_context(|| format!("failed to read {shown}/{key}"))?;
            out.push((key, value.trim().to_owned()));
        }
    } else {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("failed to read {shown}"))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                anyhow::bail!("line {} of {shown} is not KEY=VALUE", n + 1);
            };
            out.push((key.trim().to_owned(), value.trim().to_owned()));
        }
    }
    Ok(out)
}

/// The recording store and settings from the relay's ConfigMap (and the credentials Secret it
/// names), or `None` when no store is configured.
async fn recording_setup(
    client: &kube::Client,
    args: &Args,
    config: &std::collections::BTreeMap<String, String>,
) -> Result<Option<RecordingSetup>> {
    let from_flags = args.recording_store.is_some();
    let Some(url) = args
        .recording_store
        .clone()
        .or_else(|| config.get("recordingStore").cloned())
        .filter(|u| !u.is_empty())
    else {
        return Ok(None);
    };
    let mut store = StoreConfig::new(url);
    for (key, value) in flag_options(args)? {
        store = store.option(key, value);
    }
    if let Some(options) = config
        .get("recordingOptions")
        .filter(|o| !o.is_empty() && !from_flags)
    {
        let options: std::collections::BTreeMap<String, serde_json::Value> =
            serde_json::from_str(options).with_context(|| {
                format!(
                    "recordingOptions in ConfigMap {} is not a JSON object",
                    args.config
                )
            })?;
        for (key, value) in options {
            let value = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            store = store.option(key, value);
        }
    }
    if let Some(name) = config
        .get("recordingCredentialsSecret")
        .filter(|n| !n.is_empty() && !from_flags)
    {
        let secret = Api::<Secret>::namespaced(client.clone(), &args.namespace)
            .get_opt(name)
            .await
            .with_context(|| format!("failed to read Secret {}/{name}", args.namespace))?
            .with_context(|| {
                format!(
                    "Secret {}/{name} (recording store credentials) does not exist",
                    args.namespace
                )
            })?;
        for (key, value) in secret.data.unwrap_or_default() {
            let value = String::from_utf8(value.0)
                .with_context(|| format!("key {key} of Secret {name} is not UTF-8"))?;
            store = store.option(key, value.trim().to_owned());
        }
    }
    let storage = Storage::open(&store).context("invalid recording store")?;
    let mut settings = RecorderSettings::default();
    settings.upload.writer = args.name.clone();
    if let Some(size) = config.get("recordingPartSize") {
        settings.upload.part_size = size.parse().with_context(|| {
            format!(
                "invalid recordingPartSize {size:?} in ConfigMap {}",
                args.config
            )
        })?;
    }
    if let Some(interval) = args
        .recording_flush_interval
        .as_ref()
        .or(config.get("recordingFlushInterval"))
    {
        settings.flush_interval = interval
            .parse::<tether_crds::GoDuration>()
            .with_context(|| {
                format!(
                    "invalid recordingFlushInterval {interval:?} in ConfigMap {}",
                    args.config
                )
            })?
            .as_std();
        let (min, max) = (
            tether_recording::recorder::MIN_FLUSH_INTERVAL,
            tether_recording::recorder::MAX_FLUSH_INTERVAL,
        );
        if settings.flush_interval < min || settings.flush_interval > max {
            bail!(
                "recording flush interval {interval} is out of range: it must be between {min:?} and {max:?}"
            );
        }
    }
    Ok(Some(RecordingSetup {
        storage,
        settings,
        start_timeout: Duration::from_secs(10),
    }))
}

/// An upload whose writer is alive changes at least every heartbeat (60s).
const STALE_AFTER: Duration = Duration::from_secs(300);

/// Completes abandoned uploads — `writer`'s at once, anyone's that went quiet — so every
/// recording ends up readable, and refreshes the affected sessions' `status.recording`.
async fn recover_once(storage: &Storage, cluster: &Cluster, writer: &str) {
    match tether_recording::upload::recover(storage, writer, STALE_AFTER).await {
        Ok(report) => {
            if report.completed > 0 {
                info!(
                    objects = report.completed,
                    sessions = report.sessions.len(),
                    "Completed abandoned recording uploads"
                );
            }
            for session in &report.sessions {
                tether_relay::recording::publish(
                    cluster,
                    storage,
                    &session.namespace,
                    &session.name,
                    &session.uid,
                )
                .await;
            }
        }
        Err(e) => warn!(error = %e, "Failed to recover abandoned recording uploads"),
    }
}

/// Every minute, completes other relays' uploads that went quiet (their relay is gone).
async fn recover_recordings(storage: Storage, cluster: Cluster, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
            () = shutdown.cancelled() => return,
        }
        // No writer name: only uploads nobody touched for STALE_AFTER are taken over.
        recover_once(&storage, &cluster, "").await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses_are_host_and_port_only() {
        for good in [
            "10.244.1.7:8443",
            "relay-0.relays.tether-system.svc:443",
            "[fd00::7]:8443",
        ] {
            assert!(valid_peer_address(good), "{good} was refused");
        }
        for bad in [
            "",
            "10.244.1.7",
            ":8443",
            "10.244.1.7:0",
            "10.244.1.7:http",
            "host:99999",
            "evil host:443",
            "x\u{1b}]0;t\u{7}:443",
            "a/b:443",
        ] {
            assert!(!valid_peer_address(bad), "{bad:?} was taken");
        }
    }

    #[test]
    fn store_credentials_are_never_flags() {
        let args = Args::try_parse_from([
            "tether-relay",
            "--recording-store=s3://b",
            "--recording-option=secret_access_key=hunter2",
        ])
        .unwrap();
        let err = format!("{:#}", flag_options(&args).unwrap_err());
        assert!(
            err.contains("secret_access_key holds a credential") && !err.contains("hunter2"),
            "{err}"
        );
        // Positive control: the same credential from a file, next to ordinary options.
        let dir = std::env::temp_dir().join(format!("tether-relay-creds-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("secret")).unwrap();
        let file = dir.join("credentials");
        std::fs::write(
            &file,
            "# S3\naccess_key_id=minio\nsecret_access_key = hunter2\n",
        )
        .unwrap();
        let args = Args::try_parse_from([
            "tether-relay",
            "--recording-store=s3://b",
            "--recording-option=endpoint=http://127.0.0.1:9000",
            &format!("--recording-credentials-file={}", file.display()),
        ])
        .unwrap();
        let options = flag_options(&args).unwrap();
        assert_eq!(
            options,
            vec![
                ("endpoint".to_owned(), "http://127.0.0.1:9000".to_owned()),
                ("access_key_id".to_owned(), "minio".to_owned()),
                ("secret_access_key".to_owned(), "hunter2".to_owned()),
            ]
        );
        // A mounted Secret: one file per key, bookkeeping entries skipped.
        std::fs::write(dir.join("secret/secret_access_key"), "hunter2\n").unwrap();
        std::fs::write(dir.join("secret/..data"), "x").unwrap();
        assert_eq!(
            credentials_from(&dir.join("secret")).unwrap(),
            vec![("secret_access_key".to_owned(), "hunter2".to_owned())]
        );
        std::fs::write(&file, "secret_access_key hunter2\n").unwrap();
        let err = format!("{:#}", credentials_from(&file).unwrap_err());
        assert!(err.contains("line 1") && !err.contains("hunter2"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Operator settings, from flags or environment variables (the Helm chart sets the latter).
//! Secrets (the SMTP password, the webhook token) are never flags, which `ps` would show to
//! anyone on the node: they come from an environment variable or a file.

use std::net::SocketAddr;
use std::path::PathBuf;

use tether_crds::GoDuration;
use tether_telemetry::LoggingArgs;

use crate::controllers::assistance_request::plan as request_plan;
use crate::controllers::relay::RelaySettings;
use crate::controllers::remote_session::plan;
use crate::credentials::CredentialSettings;
use crate::credentials::ca::CaSettings;
use crate::credentials::keys::KeySettings;
use crate::leader::ElectionSettings;
use crate::notify::{EmailConfig, SmtpTls, WebhookConfig};
use crate::recordings::{DEFAULT_PART_SIZE, RecordingSettings, StoreOption, parse_part_size};

/// Command-line flags of `tether-operator`.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "tether-operator",
    version,
    about = "Tether's Kubernetes operator"
)]
pub struct Args {
    /// Kubeconfig to use instead of the usual rules (KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, env = "TETHER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig context to use.
    #[arg(long, env = "TETHER_CONTEXT")]
    pub context: Option<String>,

    /// Watch only this namespace (default: every namespace).
    #[arg(long, env = "TETHER_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, env = "TETHER_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Longest session the cluster allows (Go duration syntax).
    #[arg(long, env = "TETHER_MAX_SESSION_DURATION", default_value = "8h")]
    pub max_session_duration: GoDuration,

    /// Namespace of the operator's own objects (CA, signing keys, trust bundle, revocations).
    #[arg(long, env = "POD_NAMESPACE", default_value = "tether-system")]
    pub namespace: String,

    /// Relay address (`host:port`) agents and technicians dial; written into each session's
    /// access Secret and status, and into the relay's certificate.
    #[arg(long, env = "TETHER_RELAY_ADDRESS")]
    pub relay_address: Option<String>,

    /// Relay image; empty: the operator provisions the relay's certificate and settings but
    /// no Deployment or Service (the relay runs elsewhere).
    #[arg(long, env = "TETHER_RELAY_IMAGE", default_value = "")]
    pub relay_image: String,

    /// When the relay's pods pull its image.
    #[arg(
        long,
        env = "TETHER_RELAY_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent",
        value_parser = ["Always", "IfNotPresent", "Never"]
    )]
    pub relay_image_pull_policy: String,

    /// Secrets in the operator's namespace the relay's pods pull their image with
    /// (comma-separated; a private registry).
    #[arg(
        long,
        env = "TETHER_RELAY_IMAGE_PULL_SECRETS",
        value_delimiter = ',',
        value_parser = secret_name
    )]
    pub relay_image_pull_secrets: Vec<String>,

    /// Relay replicas.
    #[arg(long, env = "TETHER_RELAY_REPLICAS", default_value_t = 1)]
    pub relay_replicas: i32,

    /// Relay Service type.
    #[arg(
        long,
        env = "TETHER_RELAY_SERVICE_TYPE",
        default_value = "LoadBalancer"
    )]
    pub relay_service_type: String,

    /// Port the relay Service exposes (UDP and TCP).
    #[arg(long, env = "TETHER_RELAY_PORT", default_value_t = 443)]
    pub relay_port: u16,

    /// Extra names or IPs for the relay certificate (comma-separated).
    #[arg(long, env = "TETHER_RELAY_EXTRA_NAMES", value_delimiter = ',')]
    pub relay_extra_names: Vec<String>,

    /// How long users have to answer consent prompts.
    #[arg(long, env = "TETHER_CONSENT_TIMEOUT", default_value = "60s")]
    pub consent_timeout: GoDuration,

    /// Longest lifetime of a technician certificate (at most 15m; connected technicians renew
    /// theirs before it runs out).
    #[arg(
        long,
        env = "TETHER_TECHNICIAN_CERTIFICATE_VALIDITY",
        default_value = "15m"
    )]
    pub technician_certificate_validity: GoDuration,

    /// The user the relay authenticates as; only it may request agent certificates.
    /// Default: the relay ServiceAccount in the operator's namespace.
    #[arg(long, env = "TETHER_RELAY_IDENTITY")]
    pub relay_identity: Option<String>,

    /// How long a token signing key signs before the next one takes over.
    #[arg(long, env = "TETHER_TOKEN_KEY_ROTATION", default_value = "24h")]
    pub token_key_rotation: GoDuration,

    /// Lifetime of a CA certificate; the CA rotates when a third of it is left.
    #[arg(long, env = "TETHER_CA_VALIDITY", default_value = "8760h")]
    pub ca_validity: GoDuration,

    /// How long an AssistanceRequest waits for a decision before `ApprovalExpired`.
    #[arg(long, env = "TETHER_APPROVAL_TIMEOUT", default_value = "1h")]
    pub approval_timeout: GoDuration,

    /// SMTP server for request notifications (unset: no email).
    #[arg(long, env = "TETHER_SMTP_HOST")]
    pub smtp_host: Option<String>,

    /// SMTP port.
    #[arg(long, env = "TETHER_SMTP_PORT", default_value_t = 587)]
    pub smtp_port: u16,

    /// How the SMTP connection is secured.
    #[arg(long, env = "TETHER_SMTP_TLS", value_enum, default_value_t = SmtpTls::Starttls)]
    pub smtp_tls: SmtpTls,

    /// Extra CA certificate file (PEM) trusted for the SMTP server.
    #[arg(long, env = "TETHER_SMTP_CA_FILE")]
    pub smtp_ca_file: Option<PathBuf>,

    /// Sender address of notification emails.
    #[arg(long, env = "TETHER_SMTP_FROM", default_value = "tether@localhost")]
    pub smtp_from: String,

    /// SMTP user name (the chart takes it from a Secret).
    #[arg(long, env = "TETHER_SMTP_USERNAME", hide_env_values = true)]
    pub smtp_username: Option<String>,

    /// SMTP password: from `TETHER_SMTP_PASSWORD` only (the chart takes it from a Secret),
    /// never a flag.
    #[arg(skip = SecretValue::from_env("TETHER_SMTP_PASSWORD"))]
    pub smtp_password: Option<SecretValue>,

    /// A file holding the SMTP password (e.g. a mounted Secret), instead of
    /// `TETHER_SMTP_PASSWORD`.
    #[arg(long, env = "TETHER_SMTP_PASSWORD_FILE", value_name = "FILE", value_parser = SecretValue::from_file)]
    pub smtp_password_file: Option<SecretValue>,

    /// URL receiving a JSON POST for every request change (unset: no webhook).
    #[arg(long, env = "TETHER_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// Bearer token for the webhook: from `TETHER_WEBHOOK_TOKEN` only (the chart takes it
    /// from a Secret), never a flag.
    #[arg(skip = SecretValue::from_env("TETHER_WEBHOOK_TOKEN"))]
    pub webhook_token: Option<SecretValue>,

    /// A file holding the webhook's bearer token (e.g. a mounted Secret), instead of
    /// `TETHER_WEBHOOK_TOKEN`.
    #[arg(long, env = "TETHER_WEBHOOK_TOKEN_FILE", value_name = "FILE", value_parser = SecretValue::from_file)]
    pub webhook_token_file: Option<SecretValue>,

    /// Extra CA certificate file (PEM) trusted for an https webhook.
    #[arg(long, env = "TETHER_WEBHOOK_CA_FILE")]
    pub webhook_ca_file: Option<PathBuf>,

    /// Elect a leader on a Lease in the operator's namespace, so that of several replicas only
    /// one runs the controllers (`--leader-election=false` for a single process).
    #[arg(
        long,
        env = "TETHER_LEADER_ELECTION",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub leader_election: bool,

    /// Name of the leader election Lease; processes with the same name compete.
    #[arg(
        long,
        env = "TETHER_LEADER_ELECTION_ID",
        default_value = "tether-operator"
    )]
    pub leader_election_id: String,

    /// How long a standby waits after the leader's last renewal before it takes over (with
    /// the retry period, a killed leader is replaced within 14 s by default).
    #[arg(
        long,
        env = "TETHER_LEADER_ELECTION_LEASE_DURATION",
        default_value = "12s"
    )]
    pub leader_election_lease_duration: GoDuration,

    /// How long the leader keeps failing to renew before it stops and exits.
    #[arg(
        long,
        env = "TETHER_LEADER_ELECTION_RENEW_DEADLINE",
        default_value = "8s"
    )]
    pub leader_election_renew_deadline: GoDuration,

    /// How often the leader renews and standbys try to take the Lease.
    #[arg(
        long,
        env = "TETHER_LEADER_ELECTION_RETRY_PERIOD",
        default_value = "2s"
    )]
    pub leader_election_retry_period: GoDuration,

    /// Where session recordings go: `file:///var/lib/tether/recordings`, `s3://bucket/prefix`,
    /// `gs://bucket/prefix` or `az://container/prefix`. Empty: recording is not configured
    /// (sessions whose recording is `Required` cannot start).
    #[arg(long, env = "TETHER_RECORDING_STORE", default_value = "")]
    pub recording_store: String,

    /// A store option, `KEY=VALUE` with `object_store`'s option names (`endpoint`, `region`,
    /// `allow_http`, `virtual_hosted_style_request`, …). Repeatable; comma-separated in the
    /// environment. Credentials are refused here: use the credentials Secret.
    #[arg(
        long = "recording-option",
        env = "TETHER_RECORDING_OPTIONS",
        value_delimiter = ',',
        value_name = "KEY=VALUE"
    )]
    pub recording_options: Vec<StoreOption>,

    /// Secret in the operator's namespace whose data keys are extra store options, such as
    /// `access_key_id` and `secret_access_key`. Its values are never logged.
    #[arg(long, env = "TETHER_RECORDING_CREDENTIALS_SECRET")]
    pub recording_credentials_secret: Option<String>,

    /// PersistentVolumeClaim the relay Deployment mounts at a `file://` store's directory.
    #[arg(long, env = "TETHER_RECORDING_CLAIM_NAME")]
    pub recording_claim_name: Option<String>,

    /// Size of one uploaded recording part, in bytes (at least 5 MiB).
    #[arg(
        long,
        env = "TETHER_RECORDING_PART_SIZE",
        default_value_t = DEFAULT_PART_SIZE,
        value_parser = parse_part_size
    )]
    pub recording_part_size: u64,

    /// How often the relay makes buffered recording bytes durable: the most a relay crash
    /// can lose.
    #[arg(long, env = "TETHER_RECORDING_FLUSH_INTERVAL", default_value = "2s")]
    pub recording_flush_interval: GoDuration,

    /// How long recordings are kept after their last change; `0s` keeps them forever.
    /// Sessions on legal hold are always kept.
    #[arg(long, env = "TETHER_RECORDING_RETENTION", default_value = "0s")]
    pub recording_retention: GoDuration,

    /// How often retention looks for recordings past their retention.
    #[arg(long, env = "TETHER_RECORDING_SWEEP_INTERVAL", default_value = "1h")]
    pub recording_sweep_interval: GoDuration,

    /// Logging flags.
    #[command(flatten)]
    pub logging: LoggingArgs,
}

impl Args {
    /// The leader election settings; `None` when leader election is off. `pod_name` is the
    /// `POD_NAME` environment variable (the identity; a host-based one without it).
    pub fn election(&self, pod_name: Option<String>) -> Option<ElectionSettings> {
        self.leader_election.then(|| ElectionSettings {
            namespace: self.namespace.clone(),
            lease_name: self.leader_election_id.clone(),
            identity: crate::leader::identity(pod_name),
            lease_duration: self.leader_election_lease_duration.as_std(),
            renew_deadline: self.leader_election_renew_deadline.as_std(),
            retry_period: self.leader_election_retry_period.as_std(),
        })
    }

    /// Email settings, when an SMTP host is set.
    pub fn email(&self) -> Option<EmailConfig> {
        let host = self.smtp_host.clone().filter(|h| !h.is_empty())?;
        Some(EmailConfig {
            host,
            port: self.smtp_port,
            tls: self.smtp_tls,
            ca_file: self.smtp_ca_file.clone(),
            from: self.smtp_from.clone(),
            username: self.smtp_username.clone().filter(|u| !u.is_empty()),
            password: SecretValue::first(&self.smtp_password_file, &self.smtp_password),
        })
    }

    /// Webhook settings, when a URL is set.
    pub fn webhook(&self) -> Option<WebhookConfig> {
        let url = self.webhook_url.clone().filter(|u| !u.is_empty())?;
        Some(WebhookConfig {
            url,
            token: SecretValue::first(&self.webhook_token_file, &self.webhook_token),
            ca_file: self.webhook_ca_file.clone(),
        })
    }
}

/// A secret setting: shown as `<redacted>` by `Debug`, so printing the settings never
/// prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl SecretValue {
    /// The value of environment variable `name`, if set and not empty.
    pub fn from_env(name: &str) -> Option<Self> {
        std::env::var(name)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(Self)
    }

    /// The contents of the file at `path`, without surrounding whitespace (for clap: the
    /// error names the file, never its contents).
    pub fn from_file(path: &str) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("failed to read {path}: {e}"))?;
        let text = text.trim();
        if text.is_empty() {
            return Err(format!("{path} is empty"));
        }
        Ok(Self(text.to_owned()))
    }

    /// The first of `preferred` and `fallback` that is set.
    fn first(preferred: &Option<Self>, fallback: &Option<Self>) -> Option<String> {
        preferred
            .as_ref()
            .or(fallback.as_ref())
            .map(|s| s.0.clone())
    }
}

/// Settings the controllers read.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// RemoteSession planning settings.
    pub sessions: plan::Settings,
    /// AssistanceRequest planning settings.
    pub requests: request_plan::Settings,
    /// Credential authority settings.
    pub credentials: CredentialSettings,
    /// Relay provisioning.
    pub relay: RelaySettings,
    /// The user the relay authenticates as.
    pub relay_identity: String,
    /// Session recordings: the store, and retention.
    pub recording: RecordingSettings,
    /// Longest lifetime of a technician certificate (15 minutes at most); technicians renew
    /// theirs while connected.
    pub technician_certificate_validity: std::time::Duration,
}

impl Args {
    /// The recording settings the flags give.
    pub fn recording(&self) -> RecordingSettings {
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.trim().is_empty());
        RecordingSettings {
            store: Some(self.recording_store.trim().to_owned()).filter(|s| !s.is_empty()),
            options: self
                .recording_options
                .iter()
                .map(|o| (o.key.clone(), o.value.clone()))
                .collect(),
            credentials_secret: non_empty(&self.recording_credentials_secret),
            claim_name: non_empty(&self.recording_claim_name),
            part_size: self.recording_part_size,
            flush_interval: self.recording_flush_interval.clone(),
            retention: self.recording_retention.as_std(),
            sweep_interval: self.recording_sweep_interval.as_std(),
        }
    }
}

/// A Secret's name: a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253,
/// starting and ending with a letter or digit).
fn secret_name(name: &str) -> Result<String, String> {
    let edge = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok = name.len() <= 253
        && edge(name.bytes().next())
        && edge(name.bytes().last())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "{:?} is not a Secret name (lowercase letters, digits, '-' and '.')",
            tether_proto::text::escape(name)
        ))
    }
}

impl From<&Args> for Settings {
    fn from(args: &Args) -> Self {
        let ca_validity = args.ca_validity.as_std();
        let recording = args.recording();
        Self {
            sessions: plan::Settings {
                max_duration: args.max_session_duration.as_std(),
                relay_address: args.relay_address.clone().filter(|a| !a.is_empty()),
                ..plan::Settings::default()
            },
            requests: request_plan::Settings {
                approval_timeout: args.approval_timeout.as_std(),
                max_session_duration: args.max_session_duration.as_std(),
            },
            relay: RelaySettings {
                address: args.relay_address.clone().filter(|a| !a.is_empty()),
                image: args.relay_image.clone(),
                pull_policy: args.relay_image_pull_policy.clone(),
                pull_secrets: args.relay_image_pull_secrets.clone(),
                replicas: args.relay_replicas,
                service_type: args.relay_service_type.clone(),
                port: args.relay_port,
                extra_names: args.relay_extra_names.clone(),
                consent_timeout: args.consent_timeout.to_string(),
                recording: recording.clone(),
            },
            recording,
            technician_certificate_validity: args
                .technician_certificate_validity
                .as_std()
                .min(crate::controllers::signers::MAX_VALIDITY),
            relay_identity: args.relay_identity.clone().unwrap_or_else(|| {
                format!("system:serviceaccount:{}:tether-relay", args.namespace)
            }),
            credentials: CredentialSettings {
                ca: CaSettings {
                    ca_validity,
                    rotate_before: ca_validity / 3,
                },
                keys: KeySettings {
                    rotation_interval: args.token_key_rotation.as_std(),
                    ..KeySettings::default()
                },
            },
        }
    }
}

#[cfg(test)]
#[path = "settings_tests.rs"]
mod tests;

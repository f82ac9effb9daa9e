//! Operator settings, from flags or environment variables (the Helm chart sets the latter).

use std::net::SocketAddr;
use std::path::PathBuf;

use tether_crds::GoDuration;
use tether_telemetry::LoggingArgs;

use crate::controllers::remote_session::plan;
use crate::credentials::CredentialSettings;
use crate::credentials::ca::CaSettings;
use crate::credentials::keys::KeySettings;

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

    /// Relay address written into each session's access Secret and status.
    #[arg(long, env = "TETHER_RELAY_ADDRESS")]
    pub relay_address: Option<String>,

    /// How long a token signing key signs before the next one takes over.
    #[arg(long, env = "TETHER_TOKEN_KEY_ROTATION", default_value = "24h")]
    pub token_key_rotation: GoDuration,

    /// Lifetime of a CA certificate; the CA rotates when a third of it is left.
    #[arg(long, env = "TETHER_CA_VALIDITY", default_value = "8760h")]
    pub ca_validity: GoDuration,

    /// Logging flags.
    #[command(flatten)]
    pub logging: LoggingArgs,
}

/// Settings the controllers read.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// RemoteSession planning settings.
    pub sessions: plan::Settings,
    /// Credential authority settings.
    pub credentials: CredentialSettings,
}

impl From<&Args> for Settings {
    fn from(args: &Args) -> Self {
        let ca_validity = args.ca_validity.as_std();
        Self {
            sessions: plan::Settings {
                max_duration: args.max_session_duration.as_std(),
                relay_address: args.relay_address.clone().filter(|a| !a.is_empty()),
                ..plan::Settings::default()
            },
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
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_and_bad_input() {
        let args = Args::try_parse_from(["tether-operator"]).unwrap();
        assert_eq!(
            Settings::from(&args).sessions.max_duration.as_secs(),
            8 * 3600
        );
        let err = Args::try_parse_from(["tether-operator", "--max-session-duration", "8 hours"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid duration"), "{err}");
    }
}

//! `kubectl tether rotate ca|token-keys`: asks the operator to rotate its certificate
//! authority or its token signing key now, and waits until it has. The request is an
//! annotation on the credential's Secret in the operator's namespace, so only those who may
//! patch that Secret (administrators) can ask; the operator rotates exactly as it does on time:
//! what the old CA or key issued keeps working until it expires, so live sessions go on. The
//! command returns once the result is published in ConfigMap `tether-trust` (what relays and
//! agents load), not merely stored.

use std::time::Duration;

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams};
use tether_crds::contract::trust;

use crate::client::{GlobalArgs, connect, explain};

/// What to rotate.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum What {
    /// The certificate authority (Secret tether-ca): relays, agents and technicians get
    /// certificates from the new CA; the old one stays trusted until it expires.
    Ca,
    /// The token signing key (Secret tether-token-keys): new session grants are signed with
    /// the new key; the old one verifies what it signed until that expires.
    TokenKeys,
}

impl What {
    fn secret(self) -> &'static str {
        match self {
            Self::Ca => trust::CA_SECRET,
            Self::TokenKeys => trust::KEYS_SECRET,
        }
    }

    /// The annotation on `tether-trust` naming the last request of this kind published.
    fn published_for(self) -> &'static str {
        match self {
            Self::Ca => trust::CA_PUBLISHED_FOR,
            Self::TokenKeys => trust::TOKEN_KEYS_PUBLISHED_FOR,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Ca => "certificate authority",
            Self::TokenKeys => "token signing key",
        }
    }
}

/// Flags of `rotate`.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// What to rotate.
    #[arg(value_enum)]
    pub what: What,
    /// Namespace the operator runs in (where its Secrets are).
    #[arg(long, default_value = "tether-system")]
    pub operator_namespace: String,
    /// How long to wait for the operator to rotate.
    #[arg(long, default_value = "60s", value_parser = humantime_secs)]
    pub timeout: Duration,
}

fn humantime_secs(text: &str) -> Result<Duration, String> {
    text.parse::<tether_crds::GoDuration>()
        .map(|d| d.as_std())
        .map_err(|e| format!("{e} (e.g. 60s, 2m)"))
}

/// Whether `annotations` record the request `value` under `key`.
fn records(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
    key: &str,
    value: &str,
) -> bool {
    annotations
        .and_then(|a| a.get(key))
        .is_some_and(|v| v == value)
}

/// Runs `rotate`.
pub async fn run(global: &GlobalArgs, args: Args) -> Result<()> {
    let conn = connect(global).await?;
    let ns = &args.operator_namespace;
    let name = args.what.secret();
    let secrets: Api<Secret> = Api::namespaced(conn.client.clone(), ns);
    let value = jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({"metadata": {"annotations": {trust::ROTATE: value}}});
    secrets
        .patch_metadata(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| explain(e, &format!("ask for a rotation on Secret {ns}/{name}")))?;
    eprintln!(
        "Asked tether-operator to rotate the {} (Secret {ns}/{name})",
        args.what.describe()
    );
    let deadline = std::time::Instant::now() + args.timeout;
    let trust_maps: Api<ConfigMap> = Api::namespaced(conn.client.clone(), ns);
    let mut rotated = false;
    loop {
        if !rotated {
            let secret = secrets
                .get_metadata(name)
                .await
                .map_err(|e| explain(e, &format!("read Secret {ns}/{name}")))?;
            rotated = records(secret.metadata.annotations.as_ref(), trust::ROTATED, &value);
            if rotated {
                eprintln!(
                    "Rotated; waiting for the result to be published in ConfigMap {ns}/{}",
                    trust::CONFIGMAP
                );
            }
        }
        if rotated {
            let published = trust_maps
                .get_metadata_opt(trust::CONFIGMAP)
                .await
                .map_err(|e| explain(e, &format!("read ConfigMap {ns}/{}", trust::CONFIGMAP)))?;
            let annotations = published
                .as_ref()
                .and_then(|cm| cm.metadata.annotations.as_ref());
            if records(annotations, args.what.published_for(), &value) {
                println!("Rotated the {}", args.what.describe());
                return Ok(());
            }
        }
        if std::time::Instant::now() > deadline {
            let step = if rotated {
                "publish the new"
            } else {
                "rotate the"
            };
            bail!(
                "tether-operator did not {step} {} within {:?}; is it running? (its log says why)",
                args.what.describe(),
                args.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn names_the_secret_of_each_credential() {
        let cli = Cli::try_parse_from(["rotate", "ca"]).unwrap();
        assert_eq!(cli.args.what.secret(), "tether-ca");
        assert_eq!(cli.args.operator_namespace, "tether-system");
        let cli = Cli::try_parse_from(["rotate", "token-keys", "--timeout", "2m"]).unwrap();
        assert_eq!(cli.args.what.secret(), "tether-token-keys");
        assert_eq!(cli.args.timeout, Duration::from_secs(120));
        assert!(Cli::try_parse_from(["rotate", "everything"]).is_err());
        assert!(Cli::try_parse_from(["rotate", "ca", "--timeout", "soon"]).is_err());
    }

    #[test]
    fn a_request_is_carried_out_only_for_its_own_value() {
        let annotations = |rotated: &str| [(trust::ROTATED.to_owned(), rotated.to_owned())].into();
        assert!(records(Some(&annotations("a")), trust::ROTATED, "a"));
        assert!(!records(Some(&annotations("a")), trust::ROTATED, "b"));
        assert!(!records(
            Some(&annotations("a")),
            trust::CA_PUBLISHED_FOR,
            "a"
        ));
        assert!(!records(None, trust::ROTATED, "a"));
    }
}

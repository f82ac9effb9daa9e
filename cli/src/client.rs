//! Connecting like kubectl does: `--kubeconfig`/`KUBECONFIG`, `--context`, `--namespace`, and
//! turning API errors into sentences that say what to do.

use anyhow::{Context, Result};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, PostParams};

/// Connection flags shared by every command (kubectl does not pass its own to plugins).
#[derive(Clone, Debug, clap::Args)]
pub struct GlobalArgs {
    /// Path to the kubeconfig file (default: KUBECONFIG or ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace (default: the context's namespace).
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
}

/// A client and the namespace to work in.
pub struct Connection {
    /// Client acting as the caller.
    pub client: kube::Client,
    /// Namespace for namespaced commands.
    pub namespace: String,
}

/// Connects with the caller's kubeconfig.
pub async fn connect(args: &GlobalArgs) -> Result<Connection> {
    let mut config =
        tether_telemetry::kubeconfig::load(args.kubeconfig.as_deref(), args.context.as_deref())
            .await?;
    // kube-rs takes HTTPS_PROXY but checks NO_PROXY against the proxy rather than the API
    // server; decide as kubectl does. A kubeconfig's own proxy-url (different from the
    // environment's) is kept.
    let env = std::env::var("HTTPS_PROXY")
        .or_else(|_| std::env::var("https_proxy"))
        .ok()
        .filter(|p| !p.trim().is_empty());
    if let Some(env) = env
        && config
            .proxy_url
            .as_ref()
            .is_none_or(|p| p.to_string().trim_end_matches('/') == env.trim_end_matches('/'))
    {
        config.proxy_url = match crate::reach::api_server_proxy(&config.cluster_url) {
            Some(proxy) => Some(
                with_scheme(&proxy)
                    .parse()
                    .with_context(|| format!("HTTPS_PROXY is not a URL: {proxy:?}"))?,
            ),
            None => None,
        };
    }
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config).context("failed to create the client")?;
    Ok(Connection { client, namespace })
}

/// A proxy address with a scheme (`host:port` is an HTTP proxy, as curl and Go read it).
fn with_scheme(proxy: &str) -> String {
    if proxy.contains("://") {
        proxy.to_owned()
    } else {
        format!("http://{proxy}")
    }
}

/// The caller's user name, as the API server sees it.
pub async fn whoami(client: &kube::Client) -> Result<String> {
    let review = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|e| explain(e, "find out who you are (SelfSubjectReview)"))?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .context("the API server did not say who you are")
}

/// Turns an API error into a readable one: what failed, and why in the API server's words.
pub fn explain(error: kube::Error, doing: &str) -> anyhow::Error {
    match error {
        kube::Error::Api(status) => match status.code {
            403 => anyhow::anyhow!("not permitted to {doing}: {}", status.message),
            404 => anyhow::anyhow!("{}", status.message),
            _ => anyhow::anyhow!("failed to {doing}: {}", status.message),
        },
        other => anyhow::Error::new(other).context(format!("failed to {doing}")),
    }
}

//! `kubectl tether terminate NAME`: ends a session now.
//!
//! The request is an annotation (`tether.dev/terminated-by`, `tether.dev/termination-reason`)
//! rather than a spec change, so GitOps tools that own the spec never revert it. The API
//! server checks the caller holds the RBAC verb `terminate` and names themselves.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use kube::api::{Api, Patch, PatchParams};
use tether_crds::RemoteSession;
use tether_crds::remote_session::annotations;

use crate::client::{GlobalArgs, connect, explain, whoami};

/// Flags of `terminate`.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// The RemoteSession to end.
    pub name: String,
    /// Why, recorded on the session and in its Events.
    #[arg(long)]
    pub reason: Option<String>,
    /// Return without waiting for the operator to end the session.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the session to end.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    tether_proto::duration::parse(text).map_err(|e| e.to_string())
}

/// Runs `terminate`.
pub async fn run(global: &GlobalArgs, args: Args) -> Result<()> {
    let conn = connect(global).await?;
    let api: Api<RemoteSession> = Api::namespaced(conn.client.clone(), &conn.namespace);
    let name = &args.name;
    let ns = &conn.namespace;
    let Some(session) = api
        .get_opt(name)
        .await
        .map_err(|e| explain(e, &format!("read RemoteSession {name} in namespace {ns}")))?
    else {
        bail!("RemoteSession {name} not found in namespace {ns}");
    };
    if let Some(phase) = session.status.as_ref().and_then(|s| s.phase)
        && phase.is_terminal()
    {
        bail!("RemoteSession {name} has already ended ({phase})");
    }
    let user = whoami(&conn.client).await?;
    let mut values = serde_json::Map::new();
    values.insert(annotations::TERMINATED_BY.into(), user.clone().into());
    if let Some(reason) = &args.reason {
        values.insert(
            annotations::TERMINATION_REASON.into(),
            reason.clone().into(),
        );
    }
    let patch = serde_json::json!({"metadata": {"annotations": values}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| explain(e, &format!("terminate RemoteSession {name}")))?;
    if args.no_wait {
        println!("remotesession.tether.dev/{name} termination requested by {user}");
        return Ok(());
    }
    let deadline = Instant::now() + args.timeout;
    loop {
        let current = api
            .get(name)
            .await
            .map_err(|e| explain(e, &format!("read RemoteSession {name}")))?;
        if let Some(phase) = current.status.as_ref().and_then(|s| s.phase)
            && phase.is_terminal()
        {
            println!(
                "remotesession.tether.dev/{name} {}",
                phase.as_str().to_lowercase()
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "termination of {name} was recorded, but the operator has not ended it after {}s; is tether-operator running?",
                args.timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

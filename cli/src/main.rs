//! `kubectl-tether`: the kubectl plugin for Tether. Run as `kubectl tether <command>`; it reads
//! the same kubeconfig as kubectl and acts with the caller's own identity, so RBAC and the
//! cluster's admission policies decide what each user may do.

#![forbid(unsafe_code)]

mod client;
mod decide;
mod request;
mod show;
mod table;
mod terminate;

use clap::{Parser, Subcommand};
use tether_crds::assistance_request::Decision;

/// Tether remote sessions from kubectl.
#[derive(Parser)]
#[command(name = "kubectl tether", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: client::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ask for help on a device (creates an AssistanceRequest), or ask again with a reusable
    /// request (`--again NAME`).
    Request(Box<request::Args>),
    /// Approve a pending AssistanceRequest (needs the RBAC verb `approve`; not your own).
    Approve(decide::Args),
    /// Deny a pending AssistanceRequest (needs the RBAC verb `approve`).
    Deny(decide::Args),
    /// List AssistanceRequests (default) or RemoteSessions.
    List(show::ListArgs),
    /// Show one AssistanceRequest or RemoteSession.
    Get(show::NameArgs),
    /// Show an AssistanceRequest or RemoteSession with the timeline of what happened.
    Describe(show::NameArgs),
    /// End a RemoteSession now: its credentials are revoked and connected parties are
    /// disconnected. Works alongside GitOps: the session's manifest is not changed.
    Terminate(terminate::Args),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let g = &cli.global;
    let result = match cli.command {
        Command::Request(args) => request::run(g, *args).await,
        Command::Approve(args) => decide::run(g, args, Decision::Approved).await,
        Command::Deny(args) => decide::run(g, args, Decision::Denied).await,
        Command::List(args) => show::list(g, args).await,
        Command::Get(args) => show::get(g, args).await,
        Command::Describe(args) => show::describe(g, args).await,
        Command::Terminate(args) => terminate::run(g, args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

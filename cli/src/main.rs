//! `kubectl-tether`: the kubectl plugin for Tether. Run as `kubectl tether <command>`; it reads
//! the same kubeconfig as kubectl and acts with the caller's own identity, so RBAC and the
//! cluster's admission policies decide what each user may do.

#![forbid(unsafe_code)]

mod client;
mod terminate;

use clap::{Parser, Subcommand};

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
    /// End a RemoteSession now: its credentials are revoked and connected parties are
    /// disconnected. Works alongside GitOps: the session's manifest is not changed.
    Terminate(terminate::Args),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Terminate(args) => terminate::run(&cli.global, args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

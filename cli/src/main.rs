//! `kubectl-tether`: the kubectl plugin for Tether. Run as `kubectl tether <command>`; it reads
//! the same kubeconfig as kubectl and acts with the caller's own identity, so RBAC and the
//! cluster's admission policies decide what each user may do.

#![forbid(unsafe_code)]

mod certificate;
mod client;
mod connect;
mod decide;
mod progress;
mod reach;
mod recordings;
mod remote;
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
    /// Open a shell on the session's device (or run a command: `shell NAME -- cmd args`).
    Shell(remote::ShellArgs),
    /// The file manager: roots, ls, stat, get, put, rename, mv, cp, rm, mkdir, zip, find, edit.
    Files(remote::FilesArgs),
    /// Copy a file to or from the device (`cp NAME:/home/a.txt .`, `cp a.txt NAME:/home/`).
    Cp(remote::CpArgs),
    /// Chat with the user on the device (lines from stdin, or --message/--send-file).
    Chat(remote::ChatArgs),
    /// List the device's processes.
    Ps(remote::PsArgs),
    /// Send a signal to a process on the device.
    Kill(remote::KillArgs),
    /// End the session you are connected to, for everyone.
    End(remote::EndArgs),
    /// End a RemoteSession now: its credentials are revoked and connected parties are
    /// disconnected. Works alongside GitOps: the session's manifest is not changed.
    Terminate(terminate::Args),
    /// List recorded sessions with their objects, sizes and checksums (needs the
    /// tether-auditor role).
    Recordings(recordings::ListArgs),
    /// Play a session's shell recording in the terminal, in real time or faster (`--speed`).
    Play(recordings::PlayArgs),
    /// Download a session's recordings into a directory, verifying every checksum.
    Export(recordings::ExportArgs),
}

#[tokio::main]
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
        Command::Shell(args) => match remote::shell(g, args).await {
            Ok(code) => {
                connect::close_all().await;
                return std::process::ExitCode::from(code.clamp(0, 255) as u8);
            }
            Err(e) => Err(e),
        },
        Command::Files(args) => remote::files(g, args).await,
        Command::Cp(args) => remote::cp(g, args).await,
        Command::Chat(args) => remote::chat(g, args).await,
        Command::Ps(args) => remote::ps(g, args).await,
        Command::Kill(args) => remote::kill(g, args).await,
        Command::End(args) => remote::end(g, args).await,
        Command::Recordings(args) => recordings::list(g, args).await,
        Command::Play(args) => recordings::play(g, args).await,
        Command::Export(args) => recordings::export(g, args).await,
    };
    connect::close_all().await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! `kubectl-tether`: the kubectl plugin for Tether. Run as `kubectl tether <command>`; it reads
//! the same kubeconfig as kubectl and acts with the caller's own identity, so RBAC and the
//! cluster's admission policies decide what each user may do.

#![forbid(unsafe_code)]

mod certificate;
mod client;
mod connect;
mod decide;
mod policy;
mod progress;
mod reach;
mod recordings;
mod remote;
mod request;
mod rotate;
mod show;
mod table;
mod terminate;
mod video;

use clap::{Parser, Subcommand};
use tether_crds::assistance_request::Decision;

/// Where flags go and what each exit status means, for `--help` (the README says the same).
const EXIT_STATUS_HELP: &str = "\
Flags go after the plugin's name: kubectl tether --context alice list (kubectl does not pass
its own flags, written before `tether`, to plugins).

Exit status:
  shell    the command's own exit status; 128+N when signal N killed it; 255 when it has none:
           the command could not be started (no such session, not allowed, relay unreachable)
           or the session ended (expired, terminated, ended by the user or a technician) or
           the connection was lost before it finished; stderr says which.
  others   0 on success, 1 on any failure (the reason is on stderr).
  2        the command line could not be read (unknown flag, bad value).";

/// Tether remote sessions from kubectl.
#[derive(Parser)]
#[command(
    name = "kubectl tether",
    version,
    about,
    propagate_version = true,
    after_help = EXIT_STATUS_HELP
)]
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
    /// List AssistanceRequests (by default: what people asked for), RemoteSessions (`list
    /// sessions` or `--sessions`: what technicians connect to) or Devices (`list devices`).
    List(show::ListArgs),
    /// Show one AssistanceRequest or RemoteSession.
    Get(show::NameArgs),
    /// Show an AssistanceRequest or RemoteSession with the timeline of what happened.
    Describe(show::NameArgs),
    /// Open a shell on the session's device (or run a command: `shell NAME -- cmd args`).
    /// Exits with the command's status; 255 when it has none (see Exit status below).
    Shell(remote::ShellArgs),
    /// The file manager: roots, ls, stat, get, put, rename, mv, cp, rm, mkdir, zip, find, edit.
    Files(remote::FilesArgs),
    /// Copy a file to or from the device (`cp NAME:/home/a.txt .`, `cp a.txt NAME:/home/`).
    Cp(remote::CpArgs),
    /// Chat with the user on the device (lines from stdin, or --message/--send-file).
    Chat(remote::ChatArgs),
    /// The device's desktop for any VNC viewer: listens on 127.0.0.1 with a one-time
    /// password until the session ends (`--viewer CMD` starts one).
    Vnc(remote::VncArgs),
    /// The device's desktop in the browser: serves a viewer page on 127.0.0.1 behind a
    /// one-time link and opens it (`--no-browser` prints the link) until the session ends.
    Desktop(remote::DesktopArgs),
    /// List the device's processes.
    Ps(remote::PsArgs),
    /// Send a signal to a process on the device.
    Kill(remote::KillArgs),
    /// End RemoteSession NAME for everyone, as one of its technicians: joins it and ends it
    /// (recorded as ended by the technician). Administrators use `terminate`.
    End(remote::EndArgs),
    /// End a RemoteSession now: its credentials are revoked and connected parties are
    /// disconnected. Works alongside GitOps: the session's manifest is not changed.
    Terminate(terminate::Args),
    /// List recorded sessions with their objects, sizes and checksums (needs the
    /// tether-auditor role).
    Recordings(recordings::ListArgs),
    /// Play a session's shell recording in the terminal, in real time or faster (`--speed`),
    /// or its desktop recording in the browser viewer, with pause, seeking and speed.
    Play(recordings::PlayArgs),
    /// Download a session's recordings into a directory, verifying every checksum;
    /// `--video` also writes each desktop recording as an MP4 (needs ffmpeg).
    Export(recordings::ExportArgs),
    /// Write MP4 videos of desktop recordings already exported (`*.desktop-*.rfb`).
    Video(recordings::VideoArgs),
    /// Rotate the operator's certificate authority or token signing key now (administrators:
    /// patches its Secret); live sessions go on.
    Rotate(rotate::Args),
    /// Show the SessionPolicies that apply to a namespace's sessions and the effective
    /// policy they make together.
    Policy(policy::Args),
}

/// The arguments, with `help … --help` read as `help …` (clap's `help` subcommand takes no
/// flags, and `help --help` is what people type).
fn help_help(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let command = args
        .iter()
        .skip(1)
        .position(|a| !a.to_string_lossy().starts_with('-'));
    match command {
        Some(i) if args[i + 1] == "help" => args
            .into_iter()
            .enumerate()
            .filter(|(j, a)| *j <= i + 1 || (a != "--help" && a != "-h"))
            .map(|(_, a)| a)
            .collect(),
        _ => args,
    }
}

/// An error and its causes, each said once (some errors repeat their cause in their own
/// message).
fn chain(e: &anyhow::Error) -> String {
    tether_telemetry::error_chain(e.as_ref())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse_from(help_help(std::env::args_os().collect()));
    let g = &cli.global;
    let result = match cli.command {
        Command::Request(args) => request::run(g, *args).await,
        Command::Approve(args) => decide::run(g, args, Decision::Approved).await,
        Command::Deny(args) => decide::run(g, args, Decision::Denied).await,
        Command::List(args) => show::list(g, args).await,
        Command::Get(args) => show::get(g, args).await,
        Command::Describe(args) => show::describe(g, args).await,
        Command::Terminate(args) => terminate::run(g, args).await,
        Command::Shell(args) => {
            let code = match remote::shell(g, args).await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {}", chain(&e));
                    remote::EXIT_NO_STATUS
                }
            };
            connect::close_all().await;
            // Not a return: the runtime would wait for the blocking read of an input that is
            // still open (a login shell's terminal or pipe) before the process could exit.
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
            std::process::exit(i32::from(code));
        }
        Command::Files(args) => remote::files(g, args).await,
        Command::Cp(args) => remote::cp(g, args).await,
        Command::Chat(args) => remote::chat(g, args).await,
        Command::Vnc(args) => remote::vnc(g, args).await,
        Command::Desktop(args) => remote::desktop(g, args).await,
        Command::Ps(args) => remote::ps(g, args).await,
        Command::Kill(args) => remote::kill(g, args).await,
        Command::End(args) => remote::end(g, args).await,
        Command::Recordings(args) => recordings::list(g, args).await,
        Command::Play(args) => recordings::play(g, args).await,
        Command::Export(args) => recordings::export(g, args).await,
        Command::Video(args) => recordings::video(args).await,
        Command::Rotate(args) => rotate::run(g, args).await,
        Command::Policy(args) => policy::run(g, args).await,
    };
    connect::close_all().await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::ffi::OsString;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn help_takes_help() {
        assert_eq!(
            help_help(args(&["kubectl-tether", "help", "--help"])),
            args(&["kubectl-tether", "help"])
        );
        assert_eq!(
            help_help(args(&["kubectl-tether", "help", "shell", "-h"])),
            args(&["kubectl-tether", "help", "shell"])
        );
        assert!(
            Cli::try_parse_from(help_help(args(&["kubectl-tether", "help", "--help"])))
                .is_err_and(|e| e.kind() == clap::error::ErrorKind::DisplayHelp)
        );
        // Elsewhere `--help` is left alone, even after a word "help".
        let chat = args(&["kubectl-tether", "chat", "s", "--message", "help", "--help"]);
        assert_eq!(help_help(chat.clone()), chat);
    }

    #[test]
    fn help_says_what_exit_statuses_mean_and_where_flags_go() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit status:"), "{help}");
        assert!(help.contains("255 when it has none"), "{help}");
        assert!(help.contains("kubectl tether --context alice"), "{help}");
        let end = Cli::command()
            .find_subcommand_mut("end")
            .map(|c| c.render_help().to_string())
            .unwrap_or_default();
        assert!(end.contains("End RemoteSession NAME"), "{end}");
        assert!(!end.contains("you are connected to"), "{end}");
    }

    #[test]
    fn a_session_may_be_named_help() {
        let cli = Cli::try_parse_from(args(&[
            "kubectl-tether",
            "files",
            "help",
            "find",
            "/home",
            "*.txt",
        ]))
        .unwrap();
        let Command::Files(files) = cli.command else {
            panic!("not files")
        };
        assert_eq!(files.name, "help");
        assert!(matches!(files.op, remote::FilesOp::Find { .. }));
    }

    #[test]
    fn errors_say_each_cause_once() {
        let inner = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(inner)
            .context("failed to read x: No such file")
            .context("failed to load the kubeconfig");
        assert_eq!(
            chain(&e),
            "failed to load the kubeconfig: failed to read x: No such file"
        );
    }
}

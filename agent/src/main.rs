//! `tether-agent`: runs on a device, dials out to a Tether relay, asks the user for consent
//! and serves shell, files, chat and processes to the session's technicians. It never listens
//! for connections and never holds Kubernetes credentials.
//!
//! ```text
//! tether-agent enroll --relay relay.example.com:443 --ca-file ca.crt \
//!     --namespace kiosks --device kiosk-7 --token-file bootstrap-token
//! tether-agent run --consent terminal --files-root home=/home/dana
//! tether-agent status                # live sessions, who is connected, time left
//! tether-agent say "I'm back"        # chat to the technician
//! tether-agent end                   # end the remote session now
//! ```
//!
//! With several sessions live at once, `say`, `send-file` and `end` name the session
//! (`--session NAME`, `end NAME`); they never guess.

#![forbid(unsafe_code)]

mod channels;
mod consent;
mod desktop;
mod enroll;
mod onscreen;
mod run;
// The serve loop reports sessions here and gives chat channels their session; until it calls
// every hook, some are unused in the binary.
mod sessions;
mod state;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tether_telemetry::LoggingArgs;
use tether_transport::Prefer;
use tokio_util::sync::CancellationToken;

/// Tether's device agent.
#[derive(Parser)]
#[command(name = "tether-agent", version, about)]
struct Cli {
    /// State directory (identity, certificate, chat inbox and outbox).
    #[arg(
        long,
        global = true,
        env = "TETHER_AGENT_STATE",
        default_value = "/var/lib/tether-agent"
    )]
    state_dir: PathBuf,
    #[command(flatten)]
    logging: LoggingArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum TransportArg {
    Auto,
    Quic,
    Tcp,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll this device with a bootstrap token: get a client certificate from the cluster.
    Enroll {
        /// Relay `host:port`.
        #[arg(long)]
        relay: String,
        /// CA bundle to trust for the relay (the cluster's `tether-trust/ca-bundle.crt`).
        #[arg(long)]
        ca_file: PathBuf,
        /// Device group (namespace).
        #[arg(long)]
        namespace: String,
        /// Device name.
        #[arg(long)]
        device: String,
        /// File holding the group's bootstrap token.
        #[arg(long)]
        token_file: PathBuf,
        /// HTTP CONNECT proxy (`http://[user:pass@]host:port`) for the TCP path.
        #[arg(long, env = "HTTPS_PROXY")]
        proxy: Option<String>,
    },
    /// Connect to the relay and serve sessions until stopped.
    Run {
        /// Relay `host:port` (default: the one enrolled with), or several separated by commas,
        /// tried in turn: after the relay says goodbye (a replica draining) or a connection is
        /// lost, the agent connects to the next at once.
        #[arg(long)]
        relay: Option<String>,
        /// How consent is asked: x11 (a dialog on the user's X display), terminal,
        /// command:<command>, always or never. Default: x11 when the agent has a display
        /// (--display or DISPLAY), else terminal.
        #[arg(long)]
        consent: Option<consent::Provider>,
        /// How long the user has to answer.
        #[arg(long, default_value = "60s")]
        consent_timeout: Secs,
        /// A file-manager root, NAME=/path (repeatable; default: home=$HOME).
        #[arg(long = "files-root")]
        roots: Vec<channels::files::Root>,
        /// Run shells as this account (the agent must run as root).
        #[arg(long)]
        shell_user: Option<String>,
        /// Report these logged-on users instead of asking `who` (repeatable).
        #[arg(long = "logged-on-user")]
        users: Vec<String>,
        /// Transport.
        #[arg(long, value_enum, default_value_t = TransportArg::Auto)]
        transport: TransportArg,
        /// How long QUIC may take before TCP is tried.
        #[arg(long, default_value = "3s")]
        quic_timeout: Secs,
        /// HTTP CONNECT proxy for the TCP path.
        #[arg(long, env = "HTTPS_PROXY")]
        proxy: Option<String>,
        /// The X display the desktop channel serves; the consent dialog and the notice that
        /// the screen is being viewed appear on it too.
        #[arg(long, env = "DISPLAY")]
        display: Option<String>,
        /// The X authority file for the display (default: the logged-on users' ~/.Xauthority).
        #[arg(long, env = "XAUTHORITY")]
        xauthority: Option<PathBuf>,
        /// The most frames per second the desktop captures and sends to each viewer.
        #[arg(long, default_value_t = desktop::DEFAULT_MAX_FPS, value_parser = clap::value_parser!(u32).range(1..=120))]
        desktop_max_fps: u32,
    },
    /// End a remote session (as the user on the device): the one named, or the only one.
    End {
        /// The session (name or uid); needed when several are live.
        session: Option<String>,
    },
    /// Show the live remote sessions: who is connected and how long is left.
    Status,
    /// Send a chat message to the technicians of a session.
    Say {
        /// The message.
        text: String,
        /// The session (name or uid); needed when several are live.
        #[arg(long)]
        session: Option<String>,
    },
    /// Send a file to the technicians of a session through the chat.
    SendFile {
        /// The file.
        path: PathBuf,
        /// The session (name or uid); needed when several are live.
        #[arg(long)]
        session: Option<String>,
    },
}

/// A duration on the command line, in Go syntax (`60s`, `2m`).
#[derive(Clone, Copy, Debug)]
struct Secs(Duration);

impl std::str::FromStr for Secs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        tether_proto::duration::parse(s)
            .map(Secs)
            .map_err(|e| e.to_string())
    }
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

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse_from(help_help(std::env::args_os().collect()));
    if let Err(e) = tether_telemetry::init_logging(&cli.logging) {
        eprintln!("error: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    match run_cli(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The addresses of `--relay a:443,b:443`: each `host:port`, at least one.
fn relay_addresses(list: &str) -> Result<Vec<String>> {
    let addresses: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    if addresses.is_empty() {
        anyhow::bail!("no relay address: pass --relay host:port");
    }
    for a in &addresses {
        let port = a.rsplit_once(':').map(|(_, p)| p);
        if !port.is_some_and(|p| p.parse::<u16>().is_ok_and(|p| p != 0)) {
            anyhow::bail!(
                "relay address {} is not host:port",
                enroll::escape_controls(a)
            );
        }
    }
    Ok(addresses)
}

async fn run_cli(cli: Cli) -> Result<()> {
    let state = state::State::new(&cli.state_dir);
    match cli.command {
        Command::Enroll {
            relay,
            ca_file,
            namespace,
            device,
            token_file,
            proxy,
        } => {
            let ca = std::fs::read_to_string(&ca_file)
                .with_context(|| format!("failed to read {}", ca_file.display()))?;
            let token = std::fs::read_to_string(&token_file)
                .with_context(|| format!("failed to read {}", token_file.display()))?;
            enroll::enroll(
                &state,
                &relay,
                &ca,
                &namespace,
                &device,
                token.trim(),
                proxy,
            )
            .await?;
            println!("Enrolled {namespace}/{device}; start the agent with `tether-agent run`");
            Ok(())
        }
        Command::Run {
            relay,
            consent,
            consent_timeout,
            roots,
            shell_user,
            users,
            transport,
            quic_timeout,
            proxy,
            display,
            xauthority,
            desktop_max_fps,
        } => {
            let identity = state.identity()?;
            let display = display.filter(|d| !d.is_empty());
            let consent =
                consent.unwrap_or_else(|| consent::Provider::default_for(display.as_deref()));
            tracing::info!(consent = ?consent, "Chose how consent is asked");
            let roots = if roots.is_empty() {
                let home = std::env::var("HOME").unwrap_or_else(|_| "/".into());
                vec![
                    format!("home={home}")
                        .parse()
                        .map_err(|e: String| anyhow::anyhow!(e))?,
                ]
            } else {
                roots
            };
            // Notices go to the terminal too when that is where consent is asked; whatever a
            // previous run left about its sessions is stale.
            state
                .live
                .notify_terminal(consent == consent::Provider::Terminal);
            state.live.disconnected();
            let roots = channels::files::Roots::new(roots);
            let notices = onscreen::Notices::new(
                display.as_ref().map(|d| desktop::x11::X11Settings {
                    display: Some(d.clone()),
                    xauthority: xauthority.clone().filter(|p| !p.as_os_str().is_empty()),
                    users: run::logged_on_users(&users).unwrap_or_default(),
                }),
                state.live.clone(),
                state.control_dir(),
            );
            let config = run::Config {
                state,
                relays: relay_addresses(relay.as_deref().unwrap_or(&identity.relay))?,
                consent,
                consent_timeout: consent_timeout.0,
                roots: roots.clone(),
                shell: channels::shell::ShellSettings {
                    user: shell_user,
                    dir: roots.iter().next().map(|r| r.path.clone()),
                },
                users,
                prefer: match transport {
                    TransportArg::Auto => Prefer::Auto,
                    TransportArg::Quic => Prefer::Quic,
                    TransportArg::Tcp => Prefer::Tcp,
                },
                quic_timeout: quic_timeout.0,
                proxy,
                device: identity.device.clone(),
                notices,
                desktop: desktop::DesktopSettings {
                    display,
                    xauthority: xauthority.filter(|p| !p.as_os_str().is_empty()),
                    max_fps: desktop_max_fps,
                },
                desktops: desktop::Desktops::default(),
            };
            let shutdown = CancellationToken::new();
            let signals = {
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    // An agent that cannot watch its signals stops rather than run unstoppable.
                    if let Err(e) = tether_telemetry::shutdown_signal().await {
                        tracing::error!(error = %tether_telemetry::error_chain(&e), "Failed to watch for shutdown signals");
                    }
                    shutdown.cancel();
                })
            };
            tracing::info!(namespace = %identity.namespace, device = %identity.device, "Started tether-agent");
            let result = run::run(config, shutdown).await;
            signals.abort();
            result
        }
        Command::End { session } => {
            let live = sessions::read_live(&state.dir, jiff::Timestamp::now().as_second());
            let target = sessions::pick(&live, session.as_deref())?;
            sessions::request_end(&state.control_dir(), &target.uid)?;
            println!("Asked the agent to end remote session {}", target.shown());
            Ok(())
        }
        Command::Status => {
            print!("{}", status(&state));
            Ok(())
        }
        Command::Say { text, session } => {
            let item = channels::chat::Outgoing::Text { text };
            queue(&state, session.as_deref(), &item)
        }
        Command::SendFile { path, session } => {
            let path =
                std::fs::canonicalize(&path).with_context(|| format!("{}", path.display()))?;
            let item = channels::chat::Outgoing::File { path };
            queue(&state, session.as_deref(), &item)
        }
    }
}

/// Queues a chat item for the session named (or the only live one), or, when none is live,
/// for the next one to open; tells the user which.
fn queue(
    state: &state::State,
    session: Option<&str>,
    item: &channels::chat::Outgoing,
) -> Result<()> {
    let live = sessions::read_live(&state.dir, jiff::Timestamp::now().as_second());
    let target = if live.is_empty() && session.is_none() {
        None
    } else {
        Some(sessions::pick(&live, session)?)
    };
    channels::chat::enqueue(&state.dir, target, item)?;
    match target {
        Some(s) => println!(
            "Sent to remote session {} ({}); it waits there until a technician opens the chat",
            s.shown(),
            s.technicians_shown()
        ),
        None => println!(
            "No remote session is open: this goes to the next one that opens within {} minutes",
            sessions::HOLD_UNADDRESSED.as_secs() / 60
        ),
    }
    Ok(())
}

/// `tether-agent status`: the live sessions, who joined them, how long is left, and the chat
/// messages still waiting for a technician. Names are escaped.
fn status(state: &state::State) -> String {
    let now = jiff::Timestamp::now().as_second();
    let live = sessions::read_live(&state.dir, now);
    let held = channels::chat::queued(&state.dir);
    let mut out = String::new();
    if live.is_empty() {
        out.push_str("No remote session is open on this device\n");
    } else {
        let rows: Vec<[String; 3]> = live
            .iter()
            .map(|s| {
                [
                    s.shown(),
                    s.technicians_shown(),
                    if s.ends_at > 0 {
                        sessions::human_left(s.ends_at - now)
                    } else {
                        "?".into()
                    },
                ]
            })
            .collect();
        let headers = ["SESSION", "TECHNICIANS", "ENDS IN"];
        let width = |i: usize| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        };
        let (w0, w1) = (width(0), width(1));
        out.push_str(&format!(
            "{:w0$}   {:w1$}   {}\n",
            headers[0], headers[1], headers[2]
        ));
        for r in &rows {
            out.push_str(&format!("{:w0$}   {:w1$}   {}\n", r[0], r[1], r[2]));
        }
    }
    if !held.is_empty() {
        out.push_str(&format!(
            "{} chat message(s) waiting for a technician to open the chat\n",
            held.len()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn help_takes_help() {
        assert_eq!(
            help_help(args(&["tether-agent", "help", "--help"])),
            args(&["tether-agent", "help"])
        );
        assert!(
            Cli::try_parse_from(help_help(args(&["tether-agent", "help", "--help"])))
                .is_err_and(|e| e.kind() == clap::error::ErrorKind::DisplayHelp)
        );
        assert!(
            Cli::try_parse_from(help_help(args(&["tether-agent", "help", "run", "-h"])))
                .is_err_and(|e| e.kind() == clap::error::ErrorKind::DisplayHelp)
        );
        // Elsewhere `--help` is left alone, even after a word "help".
        let say = args(&["tether-agent", "say", "help", "--help"]);
        assert_eq!(help_help(say.clone()), say);
    }

    #[test]
    fn relay_addresses_are_a_list_of_host_port() {
        assert_eq!(
            relay_addresses("a:443, b:8443,").unwrap(),
            vec!["a:443".to_owned(), "b:8443".to_owned()]
        );
        assert_eq!(relay_addresses("[::1]:443").unwrap(), vec!["[::1]:443"]);
        for bad in ["", " , ", "a", "a:0", "a:http", "a:443,b"] {
            assert!(relay_addresses(bad).is_err(), "{bad:?} was taken");
        }
        // A hostile address is shown escaped.
        let e = relay_addresses("x\u{1b}]0;t\u{7}").unwrap_err().to_string();
        assert!(!e.contains('\u{1b}'), "{e}");
    }
}

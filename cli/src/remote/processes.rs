//! `ps` and `kill`: the device's processes over the processes channel.

use anyhow::{Result, bail};
use tether_proto::channels::{ProcessRequest, ProcessResponse};
use tether_proto::message::{Attach, ChannelKind};
use tether_proto::text::escape;

use crate::client::GlobalArgs;
use crate::connect::{ConnectArgs, Joined, join};
use crate::table::render;

/// `ps NAME` and `kill NAME PID`.
#[derive(Clone, Debug, clap::Args)]
pub struct PsArgs {
    /// The RemoteSession.
    pub name: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `kill NAME PID`.
#[derive(Clone, Debug, clap::Args)]
pub struct KillArgs {
    /// The RemoteSession.
    pub name: String,
    /// Process id.
    pub pid: i32,
    /// Signal name.
    #[arg(short, long, default_value = "TERM")]
    pub signal: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

async fn processes(joined: &Joined, req: ProcessRequest) -> Result<ProcessResponse> {
    let (mut r, mut w) = joined
        .attach(Attach {
            kind: ChannelKind::Processes,
            shell: None,
        })
        .await?;
    w.message(&req).await?;
    Ok(r.message().await?)
}

/// Runs `ps`.
pub async fn ps(global: &GlobalArgs, args: PsArgs) -> Result<()> {
    let joined = join(global, &args.connect, &args.name).await?;
    match processes(&joined, ProcessRequest::List).await? {
        ProcessResponse::Processes { processes } => {
            print!("{}", process_table(&processes));
            Ok(())
        }
        ProcessResponse::Error { message } => bail!("{}", escape(&message)),
        ProcessResponse::Signalled => bail!("unexpected answer"),
    }
}

/// The table `ps` prints. Names, users and command lines come from the device: escaped.
pub(super) fn process_table(processes: &[tether_proto::channels::Process]) -> String {
    let rows: Vec<Vec<String>> = processes
        .iter()
        .map(|p| {
            vec![
                p.pid.to_string(),
                p.ppid.to_string(),
                escape(&p.user).into_owned(),
                format!("{}", p.rss_kib),
                if p.command.is_empty() {
                    format!("[{}]", escape(&p.name))
                } else {
                    escape(&p.command).into_owned()
                },
            ]
        })
        .collect();
    render(&["PID", "PPID", "USER", "RSS(KiB)", "COMMAND"], &rows)
}

/// Runs `kill`.
pub async fn kill(global: &GlobalArgs, args: KillArgs) -> Result<()> {
    let joined = join(global, &args.connect, &args.name).await?;
    match processes(
        &joined,
        ProcessRequest::Kill {
            pid: args.pid,
            signal: args.signal.clone(),
        },
    )
    .await?
    {
        ProcessResponse::Signalled => {
            println!(
                "sent SIG{} to {}",
                args.signal.trim_start_matches("SIG").to_uppercase(),
                args.pid
            );
            Ok(())
        }
        ProcessResponse::Error { message } => bail!("{}", escape(&message)),
        ProcessResponse::Processes { .. } => bail!("unexpected answer"),
    }
}

//! The technician's commands inside a session, one module per channel as the agent serves them
//! (`shell`, `files` with its transfers and `cp`, `chat`, `ps`/`kill`, `vnc` and `desktop` for
//! the desktop, sharing `desktop_channel`), and `end`, which ends the session for everyone.

mod chat;
mod desktop;
mod desktop_bridge;
mod desktop_channel;
mod desktop_server;
mod files;
mod glob;
mod processes;
mod shell;
mod transfer;
mod viewer;
mod vnc;

use std::time::Duration;

use anyhow::Result;

pub use chat::{ChatArgs, chat};
pub use desktop::{DesktopArgs, desktop};
/// Named by `main`'s tests of the command line; everywhere else it is reached through
/// [`FilesArgs`].
#[cfg(test)]
pub use files::FilesOp;
pub use files::{FilesArgs, files};
pub use processes::{KillArgs, PsArgs, kill, ps};
pub use shell::{EXIT_NO_STATUS, ShellArgs, shell};
pub use transfer::{CpArgs, cp};
pub use vnc::{VncArgs, vnc};

/// The browser viewer's parts that `play` shares with `desktop`.
pub(crate) mod browser {
    pub(crate) use super::desktop_bridge::{
        HANDSHAKE_TIMEOUT, attend, fill, page_handshake, refuse,
    };
    pub(crate) use super::desktop_server::{Feed, Shared};
    pub(crate) use super::viewer::{Launch, MAX_VIEWERS, start};
}

use crate::client::GlobalArgs;
use crate::connect::{ConnectArgs, join};

/// `end NAME`.
#[derive(Clone, Debug, clap::Args)]
pub struct EndArgs {
    /// The RemoteSession.
    pub name: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Runs `end`: the technician ends the session for everyone.
pub async fn end(global: &GlobalArgs, args: EndArgs) -> Result<()> {
    let joined = join(global, &args.connect, &args.name).await?;
    joined.end("ended by the technician").await;
    let mut ended = joined.ended.clone();
    let _ = tokio::time::timeout(Duration::from_secs(10), ended.changed()).await;
    println!("remotesession.tether.dev/{} ended", args.name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::files::entries_table;
    use super::processes::process_table;
    use crate::progress::human_bytes;
    use tether_proto::channels::EntryKind;

    #[test]
    fn device_supplied_names_are_escaped() {
        use tether_proto::channels::{Entry, Process};
        let entry = |path: &str| Entry {
            path: path.into(),
            kind: EntryKind::File,
            size: 1,
            modified: 0,
            mode: 0o644,
        };
        let table = entries_table(&[
            entry("/home/evil\nfile   link   0   x   /home/forged"),
            entry("/home/\u{1b}]0;owned\u{7}title"),
        ]);
        // One header and one line per entry: the newline did not forge a row.
        assert_eq!(table.lines().count(), 3, "{table}");
        assert!(table.contains("/home/evil\\nfile"), "{table}");
        assert!(
            !table.contains('\u{1b}') && !table.contains('\u{7}'),
            "{table:?}"
        );
        assert!(table.contains("\\u{1b}]0;owned\\u{7}title"), "{table}");
        // Positive control: an ordinary name is shown as it is.
        assert!(entries_table(&[entry("/home/Grüße.txt")]).contains("/home/Grüße.txt"));

        let process = |name: &str, command: &str| Process {
            pid: 42,
            ppid: 1,
            user: "dana".into(),
            rss_kib: 10,
            name: name.into(),
            command: command.into(),
        };
        let table = process_table(&[
            process("kworker\n1   0   root", ""),
            process("sh", "sh -c 'printf \u{1b}[2J'\nforged"),
        ]);
        assert_eq!(table.lines().count(), 3, "{table}");
        assert!(!table.contains('\u{1b}'), "{table:?}");
        assert!(table.contains("[kworker\\n1   0   root]"), "{table}");
        assert!(
            process_table(&[process("sh", "sh -c true")]).contains("sh -c true"),
            "positive control"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(100 * 1024 * 1024), "100.0 MiB");
    }
}

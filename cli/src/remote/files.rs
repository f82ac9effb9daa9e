//! `files`: the file manager's operations over the files channel (browse, rename, move, copy,
//! delete, mkdir, zip, find, edit) and the tables they print.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use tether_proto::channels::{EntryKind, FileRequest, FileResponse};
use tether_proto::message::{Attach, ChannelKind};
use tether_proto::text::escape;
use tether_transport::{FrameReader, FrameWriter};

use super::glob::{glob_hint, glob_match, is_glob};
use super::transfer::{download, upload};
use crate::client::GlobalArgs;
use crate::connect::{ConnectArgs, Joined, join};
use crate::table::render;

/// `files NAME OPERATION …`. No `help` operation: clap's would take a session named `help`
/// (`files help ls /home`); `files --help` and `files NAME OPERATION --help` remain.
#[derive(Clone, Debug, clap::Args)]
#[command(disable_help_subcommand = true)]
pub struct FilesArgs {
    /// The RemoteSession.
    pub name: String,
    #[command(subcommand)]
    pub op: FilesOp,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// File-manager operations (remote paths look like `/home/docs/report.txt`).
#[derive(Clone, Debug, clap::Subcommand)]
pub enum FilesOp {
    /// The roots (drives) you may browse.
    Roots,
    /// List a directory.
    Ls {
        /// Remote directory.
        path: String,
    },
    /// Show one entry.
    Stat {
        /// Remote path.
        path: String,
    },
    /// Download a file.
    Get {
        /// Remote file.
        remote: String,
        /// Local destination (default: the file name, here).
        local: Option<PathBuf>,
    },
    /// Upload a file.
    Put {
        /// Local file.
        local: PathBuf,
        /// Remote destination.
        remote: String,
        /// Replace an existing file.
        #[arg(long)]
        overwrite: bool,
    },
    /// Rename within a directory.
    Rename {
        /// Remote path.
        from: String,
        /// The new name (`b.txt`), or the new path in the same directory.
        to: String,
    },
    /// Move (cut and paste).
    Mv {
        /// Remote path.
        from: String,
        /// New remote path.
        to: String,
    },
    /// Copy (copy and paste).
    Cp {
        /// Remote path.
        from: String,
        /// New remote path.
        to: String,
    },
    /// Delete.
    Rm {
        /// Remote path.
        path: String,
        /// Delete directories and their contents.
        #[arg(short, long)]
        recursive: bool,
    },
    /// Create a directory.
    Mkdir {
        /// Remote path.
        path: String,
        /// Create parents too.
        #[arg(short, long)]
        parents: bool,
    },
    /// Pack into a zip archive on the device.
    Zip {
        /// The archive to create.
        dest: String,
        /// What to pack.
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Find entries by name, under a directory (case-insensitive).
    Find {
        /// Where to look.
        root: String,
        /// A glob matched against whole names (`'*.txt'`, `report-?.pdf`, `[ab]*`; quote it
        /// so the local shell leaves it alone), or, without `*`, `?` or `[`, a part of the
        /// name (`report` finds `Q3-report.txt`).
        pattern: String,
    },
    /// Edit a file in $EDITOR; refused if it changed on the device meanwhile.
    Edit {
        /// Remote file.
        remote: String,
    },
}

/// Sends one request on a new files channel; its answer, refused if the device refused.
pub(super) async fn request(
    joined: &Joined,
    req: &FileRequest,
) -> Result<(FrameReader, FrameWriter, FileResponse)> {
    let (mut r, mut w) = joined
        .attach(Attach {
            kind: ChannelKind::Files,
            shell: None,
        })
        .await?;
    w.message(req).await?;
    let response: FileResponse = r.message().await?;
    if let FileResponse::Error { message, .. } = &response {
        bail!("{}", escape(message));
    }
    Ok((r, w, response))
}

fn print_entries(entries: &[tether_proto::channels::Entry]) {
    print!("{}", entries_table(entries));
}

/// The table `files ls`, `stat` and `find` print. Paths come from the device: escaped.
pub(super) fn entries_table(entries: &[tether_proto::channels::Entry]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                match e.kind {
                    EntryKind::Dir => "dir",
                    EntryKind::File => "file",
                    EntryKind::Symlink => "link",
                    EntryKind::Other => "other",
                }
                .into(),
                format!("{:o}", e.mode),
                e.size.to_string(),
                jiff::Timestamp::from_second(e.modified)
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
                escape(&e.path).into_owned(),
            ]
        })
        .collect();
    render(&["TYPE", "MODE", "SIZE", "MODIFIED", "PATH"], &rows)
}

/// Runs `files`.
pub async fn files(global: &GlobalArgs, args: FilesArgs) -> Result<()> {
    let joined = join(global, &args.connect, &args.name).await?;
    let simple = |req: FileRequest| {
        let joined = &joined;
        async move { request(joined, &req).await.map(|(_, _, r)| r) }
    };
    match args.op {
        FilesOp::Roots => {
            if let FileResponse::Entries { entries, .. } = simple(FileRequest::Roots).await? {
                print_entries(&entries);
            }
        }
        FilesOp::Ls { path } => {
            if let FileResponse::Entries { entries, .. } =
                simple(FileRequest::List { path }).await?
            {
                print_entries(&entries);
            }
        }
        FilesOp::Stat { path } => {
            if let FileResponse::Entry { entry } = simple(FileRequest::Stat { path }).await? {
                print_entries(&[entry]);
            }
        }
        FilesOp::Find { root, pattern } => {
            // The device matches a part of the name; a glob is asked as its longest literal
            // part and matched here.
            if let FileResponse::Entries { entries, truncated } = simple(FileRequest::Find {
                root,
                pattern: glob_hint(&pattern),
                max: 1000,
            })
            .await?
            {
                let entries: Vec<_> = if is_glob(&pattern) {
                    entries
                        .into_iter()
                        .filter(|e| glob_match(&pattern, e.path.rsplit('/').next().unwrap_or("")))
                        .collect()
                } else {
                    entries
                };
                print_entries(&entries);
                if truncated {
                    eprintln!("tether: more results were found; narrow the search");
                }
            }
        }
        FilesOp::Get { remote, local } => {
            let local = local
                .unwrap_or_else(|| PathBuf::from(remote.rsplit('/').next().unwrap_or("download")));
            download(&joined, &remote, &local).await?;
        }
        FilesOp::Put {
            local,
            remote,
            overwrite,
        } => {
            upload(&joined, &local, &remote, overwrite, None).await?;
        }
        FilesOp::Rename { from, to } => {
            let to = rename_target(&from, &to);
            report(simple(FileRequest::Rename { from, to }).await?)
        }
        FilesOp::Mv { from, to } => report(simple(FileRequest::Move { from, to }).await?),
        FilesOp::Cp { from, to } => report(simple(FileRequest::Copy { from, to }).await?),
        FilesOp::Rm { path, recursive } => {
            simple(FileRequest::Delete {
                path: path.clone(),
                recursive,
            })
            .await?;
            println!("deleted {path}");
        }
        FilesOp::Mkdir { path, parents } => {
            report(simple(FileRequest::Mkdir { path, parents }).await?)
        }
        FilesOp::Zip { dest, paths } => report(simple(FileRequest::Zip { paths, dest }).await?),
        FilesOp::Edit { remote } => {
            let dir = tempfile::tempdir()?;
            let name = remote.rsplit('/').next().unwrap_or("file").to_owned();
            let local = dir.path().join(&name);
            let before = download(&joined, &remote, &local).await?;
            let editor = std::env::var("VISUAL")
                .or_else(|_| std::env::var("EDITOR"))
                .unwrap_or_else(|_| "vi".into());
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("{editor} \"$1\""))
                .arg("editor")
                .arg(&local)
                .status()
                .with_context(|| format!("failed to start {editor}"))?;
            if !status.success() {
                bail!("{editor} exited with {status}; nothing uploaded");
            }
            let after = hex::encode(Sha256::digest(std::fs::read(&local)?));
            if after == before {
                println!("{remote} unchanged");
            } else {
                upload(&joined, &local, &remote, true, Some(before)).await?;
                println!("saved {remote}");
            }
        }
    }
    Ok(())
}

/// The new path of a rename: a bare name stays in `from`'s directory.
fn rename_target(from: &str, to: &str) -> String {
    if to.contains('/') {
        return to.to_owned();
    }
    match from.trim_end_matches('/').rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{to}"),
        None => to.to_owned(),
    }
}

fn report(response: FileResponse) {
    if let FileResponse::Entry { entry } = response {
        println!("{}", escape(&entry.path));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rename_to_a_bare_name_stays_in_the_directory() {
        assert_eq!(
            rename_target("/home/docs/a.txt", "b.txt"),
            "/home/docs/b.txt"
        );
        assert_eq!(
            rename_target("/home/docs/a.txt", "/home/docs/b.txt"),
            "/home/docs/b.txt"
        );
        assert_eq!(rename_target("/home/docs/", "old-docs"), "/home/old-docs");
    }
}

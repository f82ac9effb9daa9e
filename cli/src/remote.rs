//! The technician's commands inside a session: `shell`, `files`, `cp`, `chat`, `ps`, `kill`
//! and `end`. Transfers print progress and are checked end to end with SHA-256.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tether_proto::channels::{
    ChatMessage, EntryKind, FileRequest, FileResponse, ProcessRequest, ProcessResponse,
};
use tether_proto::frame::{Frame, FrameKind};
use tether_proto::message::{Attach, ChannelKind, ShellMessage, ShellParams};
use tether_proto::text::escape;
use tether_transport::{FrameReader, FrameWriter};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::client::GlobalArgs;
use crate::connect::{ConnectArgs, Joined, join};
use crate::progress::{Progress, human_bytes};
use crate::table::render;

/// `shell NAME [-- command…]`.
#[derive(Clone, Debug, clap::Args)]
pub struct ShellArgs {
    /// The RemoteSession.
    pub name: String,
    /// Allocate a terminal (default: when no command is given and stdin is a terminal).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The command to run instead of a login shell.
    #[arg(last = true)]
    pub command: Vec<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Puts the local terminal in raw mode until dropped.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enter() -> Self {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let Ok(original) = tcgetattr(&stdin) else {
            return Self(None);
        };
        let mut raw = original.clone();
        cfmakeraw(&mut raw);
        if tcsetattr(&stdin, SetArg::TCSANOW, &raw).is_err() {
            return Self(None);
        }
        Self(Some(original))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(original) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                original,
            );
        }
    }
}

fn terminal_size() -> (u16, u16) {
    terminal_size::terminal_size()
        .map(|(w, h)| (w.0, h.0))
        .unwrap_or((80, 24))
}

/// `shell`'s exit status when the command's own is unknown: it could not be started, or the
/// session ended or the connection was lost before it finished (stderr says which).
pub const EXIT_NO_STATUS: u8 = 255;

/// The exit status that reports a command's end: its own status, or 128 + the signal's
/// number when a signal killed it (as shells report it).
fn exit_status(code: Option<i32>, signal: Option<&str>) -> u8 {
    if let Some(code) = code {
        return u8::try_from(code.rem_euclid(256)).unwrap_or(EXIT_NO_STATUS);
    }
    let number = signal
        .and_then(|s| {
            format!("SIG{}", s.trim_start_matches("SIG"))
                .parse::<nix::sys::signal::Signal>()
                .ok()
        })
        .map_or(0, |s| s as i32);
    u8::try_from(128 + number).unwrap_or(EXIT_NO_STATUS)
}

/// Runs `shell`; returns the exit status to leave with (see [`EXIT_NO_STATUS`]).
pub async fn shell(global: &GlobalArgs, args: ShellArgs) -> Result<u8> {
    let joined = join(global, &args.connect, &args.name).await?;
    let tty = args.tty || (args.command.is_empty() && std::io::stdin().is_terminal());
    let (cols, rows) = terminal_size();
    let (mut reader, mut writer) = joined
        .attach(Attach {
            kind: ChannelKind::Shell,
            shell: Some(ShellParams {
                command: args.command.clone(),
                tty,
                cols,
                rows,
                term: std::env::var("TERM").ok(),
            }),
        })
        .await?;
    let _raw = tty.then(RawMode::enter);
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let mut buf = vec![0u8; 16 * 1024];
    let mut stdin_open = true;
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let mut ended = joined.ended.clone();
    let code = loop {
        tokio::select! {
            frame = reader.next() => match frame? {
                Some(f) if f.kind == FrameKind::Data => {
                    stdout.write_all(&f.payload).await?;
                    stdout.flush().await?;
                }
                Some(f) if f.kind == FrameKind::Message => match f.parse::<ShellMessage>()? {
                    ShellMessage::Exit { code, signal } => {
                        if code.is_none() && let Some(s) = &signal {
                            eprintln!("tether: killed by SIG{}", escape(s));
                        }
                        break exit_status(code, signal.as_deref());
                    }
                    ShellMessage::Stderr { text } => {
                        let mut err = std::io::stderr();
                        let _ = err.write_all(text.as_bytes());
                        let _ = err.flush();
                    }
                    ShellMessage::Error { message } => bail!("the shell failed: {}", escape(&message)),
                    ShellMessage::Resize { .. } => {}
                },
                Some(_) => {}
                None => {
                    joined.settle().await;
                    break EXIT_NO_STATUS;
                }
            },
            n = stdin.read(&mut buf), if stdin_open => match n? {
                0 => {
                    stdin_open = false;
                    writer.send(&Frame::end_of_data()).await?;
                }
                n => writer.send(&Frame::data(Bytes::copy_from_slice(&buf[..n]))).await?,
            },
            _ = winch.recv(), if tty => {
                let (cols, rows) = terminal_size();
                writer.message(&ShellMessage::Resize { cols, rows }).await?;
            }
            _ = ended.changed() => break EXIT_NO_STATUS,
        }
    };
    Ok(code)
}

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

async fn request(
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

/// Downloads `remote` to `local`; returns the SHA-256.
pub async fn download(joined: &Joined, remote: &str, local: &Path) -> Result<String> {
    let (mut r, _w, response) = request(
        joined,
        &FileRequest::Download {
            path: remote.into(),
        },
    )
    .await?;
    let FileResponse::Sending { size } = response else {
        bail!("unexpected answer: {response:?}")
    };
    let tmp = local.with_extension("tether-partial");
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .with_context(|| format!("failed to create {}", tmp.display()))?;
    let mut hasher = Sha256::new();
    let mut progress = Progress::new(format!("downloading {remote}"), size);
    loop {
        let f = r.expect().await?;
        match f.kind {
            FrameKind::Data => {
                hasher.update(&f.payload);
                file.write_all(&f.payload).await?;
                progress.add(f.payload.len() as u64);
            }
            FrameKind::EndOfData => break,
            FrameKind::Message => bail!("unexpected message during a download"),
        }
    }
    file.flush().await?;
    let local_sha = hex::encode(hasher.finalize());
    match r.message::<FileResponse>().await? {
        FileResponse::Done { sha256, .. } if sha256 == local_sha => {}
        FileResponse::Done { sha256, .. } => {
            let _ = tokio::fs::remove_file(&tmp).await;
            bail!("{remote}: corrupted in transit (sha256 {local_sha}, device says {sha256})");
        }
        other => bail!("unexpected answer: {other:?}"),
    }
    tokio::fs::rename(&tmp, local).await?;
    progress.finish(&local_sha);
    Ok(local_sha)
}

/// Uploads `local` to `remote`; returns the SHA-256.
pub async fn upload(
    joined: &Joined,
    local: &Path,
    remote: &str,
    overwrite: bool,
    if_sha256: Option<String>,
) -> Result<String> {
    let mut file = tokio::fs::File::open(local)
        .await
        .with_context(|| format!("failed to open {}", local.display()))?;
    let size = file.metadata().await?.len();
    let (mut r, mut w, response) = request(
        joined,
        &FileRequest::Upload {
            path: remote.into(),
            size,
            overwrite,
            if_sha256,
        },
    )
    .await?;
    let FileResponse::Ready = response else {
        bail!("unexpected answer: {response:?}")
    };
    let mut hasher = Sha256::new();
    let mut progress = Progress::new(format!("uploading {}", local.display()), size);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        w.send(&Frame::data(Bytes::copy_from_slice(&buf[..n])))
            .await?;
        progress.add(n as u64);
    }
    w.send(&Frame::end_of_data()).await?;
    let local_sha = hex::encode(hasher.finalize());
    match r.message::<FileResponse>().await? {
        FileResponse::Done { sha256, .. } if sha256 == local_sha => {}
        FileResponse::Done { sha256, .. } => {
            bail!("{remote}: corrupted in transit (sha256 {local_sha}, device stored {sha256})")
        }
        FileResponse::Error { message, .. } => bail!("{}", escape(&message)),
        other => bail!("unexpected answer: {other:?}"),
    }
    progress.finish(&local_sha);
    Ok(local_sha)
}

fn print_entries(entries: &[tether_proto::channels::Entry]) {
    print!("{}", entries_table(entries));
}

/// The table `files ls`, `stat` and `find` print. Paths come from the device: escaped.
fn entries_table(entries: &[tether_proto::channels::Entry]) -> String {
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

/// Whether a find pattern is a glob.
fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// What to ask the device for: the pattern itself, or a glob's longest literal part (every
/// name the glob matches contains it), lower-cased as the device compares.
fn glob_hint(pattern: &str) -> String {
    if !is_glob(pattern) {
        return pattern.to_owned();
    }
    let mut best = String::new();
    let mut current = String::new();
    let mut in_class = false;
    for c in pattern.chars() {
        match c {
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            '*' | '?' if !in_class => {}
            c if !in_class => {
                current.push(c);
                continue;
            }
            _ => continue,
        }
        if current.chars().count() > best.chars().count() {
            best = std::mem::take(&mut current);
        }
        current.clear();
    }
    if current.chars().count() > best.chars().count() {
        best = current;
    }
    best.to_lowercase()
}

/// Matches `name` against a glob (`*`, `?`, `[abc]`, `[a-z]`, `[!a]`), case-insensitively.
fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let n: Vec<char> = name.to_lowercase().chars().collect();
    // Iterative matching with one backtrack point for the last `*`.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
                continue;
            }
            Some('?') => Some(pi + 1),
            Some('[') => class(&p, pi, n[ni]),
            Some(c) if *c == n[ni] => Some(pi + 1),
            _ => None,
        };
        match (step, star) {
            (Some(next), _) => {
                pi = next;
                ni += 1;
            }
            (None, Some((sp, sn))) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Matches `c` against the class starting at `p[start]` (`[`); the index after it, if it
/// matches. An unclosed `[` is a literal.
fn class(p: &[char], start: usize, c: char) -> Option<usize> {
    let mut i = start + 1;
    let negated = matches!(p.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while let Some(&ch) = p.get(i) {
        if ch == ']' && !first {
            return (matched != negated).then_some(i + 1);
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|e| *e != ']') {
            if (ch..=p[i + 2]).contains(&c) {
                matched = true;
            }
            i += 3;
        } else {
            if ch == c {
                matched = true;
            }
            i += 1;
        }
    }
    (c == '[').then_some(start + 1)
}

fn report(response: FileResponse) {
    if let FileResponse::Entry { entry } = response {
        println!("{}", escape(&entry.path));
    }
}

/// `cp SRC DST`, where one side is `NAME:/remote/path` (like `kubectl cp`).
#[derive(Clone, Debug, clap::Args)]
pub struct CpArgs {
    /// Source: a local path or `SESSION:/remote/path`.
    pub source: String,
    /// Destination: a local path or `SESSION:/remote/path`.
    pub destination: String,
    /// Replace an existing remote file.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Splits `SESSION:/path` (a remote spec) from a local path.
pub fn remote_spec(s: &str) -> Option<(&str, &str)> {
    let (name, path) = s.split_once(':')?;
    (!name.is_empty() && !name.contains('/') && path.starts_with('/')).then_some((name, path))
}

/// Runs `cp`.
pub async fn cp(global: &GlobalArgs, args: CpArgs) -> Result<()> {
    match (remote_spec(&args.source), remote_spec(&args.destination)) {
        (Some((name, remote)), None) => {
            let joined = join(global, &args.connect, name).await?;
            let mut local = PathBuf::from(&args.destination);
            if local.is_dir() {
                local.push(remote.rsplit('/').next().unwrap_or("download"));
            }
            download(&joined, remote, &local).await?;
        }
        (None, Some((name, remote))) => {
            let joined = join(global, &args.connect, name).await?;
            upload(
                &joined,
                Path::new(&args.source),
                remote,
                args.overwrite,
                None,
            )
            .await?;
        }
        (Some(_), Some(_)) => {
            bail!("copy between two sessions is not supported; copy to a local file first")
        }
        (None, None) => {
            bail!("one side must be SESSION:/remote/path, e.g. printer-help:/home/report.txt")
        }
    }
    Ok(())
}

/// `chat NAME`.
#[derive(Clone, Debug, clap::Args)]
pub struct ChatArgs {
    /// The RemoteSession.
    pub name: String,
    /// Send this message (instead of reading lines from stdin).
    #[arg(short, long)]
    pub message: Vec<String>,
    /// Send this file.
    #[arg(long)]
    pub send_file: Option<PathBuf>,
    /// With --message or --send-file: keep showing the user's messages this long.
    #[arg(long, default_value = "0s", value_parser = crate::terminate::parse_duration)]
    pub wait: Duration,
    /// Where files the user sends are saved.
    #[arg(long, default_value = ".")]
    pub download_dir: PathBuf,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Runs `chat`.
pub async fn chat(global: &GlobalArgs, args: ChatArgs) -> Result<()> {
    let joined = join(global, &args.connect, &args.name).await?;
    let me = std::env::var("USER").unwrap_or_else(|_| "technician".into());
    let (mut r, mut w) = joined
        .attach(Attach {
            kind: ChannelKind::Chat,
            shell: None,
        })
        .await?;
    let scripted = !args.message.is_empty() || args.send_file.is_some();
    for text in &args.message {
        w.message(&ChatMessage::Text {
            from: me.clone(),
            text: text.clone(),
        })
        .await?;
    }
    if let Some(path) = &args.send_file {
        let data = tokio::fs::read(path)
            .await
            .with_context(|| format!("failed to read {}", path.display()))?;
        let sha256 = hex::encode(Sha256::digest(&data));
        let name = path
            .file_name()
            .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
        w.message(&ChatMessage::File {
            from: me.clone(),
            name: name.clone(),
            size: data.len() as u64,
            sha256: sha256.clone(),
        })
        .await?;
        for chunk in data.chunks(64 * 1024) {
            w.send(&Frame::data(Bytes::copy_from_slice(chunk))).await?;
        }
        w.send(&Frame::end_of_data()).await?;
        eprintln!(
            "tether: sent {name} ({}), sha256 {sha256}",
            human_bytes(data.len() as u64)
        );
    }
    let deadline = scripted.then(|| tokio::time::Instant::now() + args.wait);
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    let stdin_open = !scripted;
    let mut ended = joined.ended.clone();
    loop {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            frame = r.next() => {
                let Some(frame) = frame? else { break };
                if frame.kind != FrameKind::Message { continue }
                match frame.parse::<ChatMessage>()? {
                    ChatMessage::Text { from, text } => println!("{}: {}", escape(&from), escape(&text)),
                    ChatMessage::Received { name, sha256 } => eprintln!("tether: the user received {} (sha256 {})", escape(&name), escape(&sha256)),
                    ChatMessage::File { from, name, size, sha256 } => {
                        let target = args.download_dir.join(local_name(&name));
                        let mut file = tokio::fs::File::create(&target).await?;
                        let mut hasher = Sha256::new();
                        loop {
                            let f = r.expect().await?;
                            match f.kind {
                                FrameKind::Data => { hasher.update(&f.payload); file.write_all(&f.payload).await?; }
                                FrameKind::EndOfData => break,
                                FrameKind::Message => bail!("unexpected message inside a file"),
                            }
                        }
                        let got = hex::encode(hasher.finalize());
                        if got != sha256 {
                            bail!("{} from {} arrived corrupted", escape(&name), escape(&from));
                        }
                        println!("{} sent {} ({}) to {}", escape(&from), escape(&name), human_bytes(size), escape(&target.display().to_string()));
                    }
                }
            }
            n = stdin.read_line(&mut line), if stdin_open => {
                if n? == 0 {
                    break;
                }
                let text = line.trim_end().to_owned();
                line.clear();
                if !text.is_empty() {
                    w.message(&ChatMessage::Text { from: me.clone(), text }).await?;
                }
            }
            () = sleep => break,
            _ = ended.changed() => break,
        }
    }
    let _ = w.finish().await;
    Ok(())
}

/// The local name for a file the user sends: its last path component, without a leading dot
/// or control characters (which would hide it or garble the terminal that lists it).
fn local_name(sent: &str) -> String {
    let base = sent.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = base
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect::<String>()
        .trim_start_matches('.')
        .to_owned();
    if cleaned.is_empty() {
        "file".into()
    } else {
        cleaned
    }
}

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
fn process_table(processes: &[tether_proto::channels::Process]) -> String {
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
    use super::*;

    #[test]
    fn remote_specs() {
        assert_eq!(
            remote_spec("printer:/home/a.txt"),
            Some(("printer", "/home/a.txt"))
        );
        assert_eq!(remote_spec("./local.txt"), None);
        assert_eq!(remote_spec("C:relative"), None);
        assert_eq!(remote_spec("/abs/path"), None);
    }

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
    fn files_from_the_user_get_a_plain_local_name() {
        assert_eq!(local_name("../../.bashrc"), "bashrc");
        assert_eq!(local_name("shot\n\u{1b}.png"), "shot__.png");
        assert_eq!(local_name(""), "file");
        assert_eq!(local_name("screenshot.png"), "screenshot.png");
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(exit_status(Some(0), None), 0);
        assert_eq!(exit_status(Some(3), None), 3);
        assert_eq!(exit_status(Some(256 + 7), None), 7);
        assert_eq!(exit_status(None, Some("KILL")), 128 + 9);
        assert_eq!(exit_status(None, Some("TERM")), 128 + 15);
        assert_eq!(exit_status(None, Some("SIGINT")), 128 + 2);
        assert_eq!(exit_status(None, Some("NOSUCH")), 128);
    }

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

    #[test]
    fn find_patterns_are_globs() {
        assert!(glob_match("*.txt", "notes.TXT"));
        assert!(!glob_match("*.txt", "notes.txt.bak"));
        assert!(!glob_match("*.txt", "txt"));
        assert!(glob_match("report-?.pdf", "report-3.pdf"));
        assert!(!glob_match("report-?.pdf", "report-10.pdf"));
        assert!(glob_match("[ab]*", "beta"));
        assert!(!glob_match("[ab]*", "gamma"));
        assert!(glob_match("[!ab]*", "gamma"));
        assert!(glob_match("file[0-9]", "file7"));
        assert!(!glob_match("file[0-9]", "filex"));
        assert!(glob_match("*a*b*c", "xxaxxbxxc"));
        assert!(!glob_match("*a*b*c", "xxaxxcxxb"));
        assert!(glob_match("[unclosed", "[unclosed"));
        assert!(glob_match("*", ""));
        // What the device is asked for: something every match contains.
        assert_eq!(glob_hint("*.txt"), ".txt");
        assert_eq!(glob_hint("Report-?.pdf"), "report-");
        assert_eq!(glob_hint("[ab]*"), "");
        assert_eq!(glob_hint("report"), "report");
        assert!(!is_glob("report") && is_glob("*.txt"));
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(100 * 1024 * 1024), "100.0 MiB");
    }
}

//! The shell channel: a command (or the account's login shell) on a PTY for interactive use,
//! or on plain pipes for one-off commands; input, output, resizes and the exit status travel
//! as frames.

use std::process::Stdio;

use bytes::Bytes;
use tether_proto::frame::{Frame, FrameKind};
use tether_proto::message::{ShellMessage, ShellParams};
use tether_transport::{FrameReader, FrameWriter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;
use tracing::debug;

/// Which account shells run as, and where they start.
#[derive(Clone, Debug, Default)]
pub struct ShellSettings {
    /// Run as this user (needs the agent to run as root), instead of the agent's own account.
    pub user: Option<String>,
    /// Where shells start when they run as the agent's own account (the first files root, so
    /// the shell and the file manager show the same place); shells run as `user` start in
    /// that account's home. Never the agent's own working directory, which means nothing to
    /// a technician.
    pub dir: Option<std::path::PathBuf>,
}

/// The directory a shell starts in: the account's home, else the configured directory, else
/// `$HOME`, else `/`; the first of them that is a directory.
fn start_dir(settings: &ShellSettings, account_home: Option<&str>) -> std::path::PathBuf {
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    account_home
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(settings.dir.clone())
        .chain(home)
        .find(|d| d.is_dir())
        .unwrap_or_else(|| "/".into())
}

fn exit_message(status: std::process::ExitStatus) -> ShellMessage {
    use std::os::unix::process::ExitStatusExt;
    ShellMessage::Exit {
        code: status.code(),
        signal: status
            .signal()
            .and_then(|s| nix::sys::signal::Signal::try_from(s).ok())
            .map(|s| s.as_str().trim_start_matches("SIG").to_owned()),
    }
}

/// Kills a command's whole process group when the channel ends, however it ends (the
/// command exited, the technician left, the session was cut), so nothing it started keeps
/// running on the device after the session.
struct ProcessGroup(Option<nix::unistd::Pid>);

impl ProcessGroup {
    fn of(pid: Option<u32>) -> Self {
        Self(
            pid.and_then(|p| i32::try_from(p).ok())
                .map(nix::unistd::Pid::from_raw),
        )
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // ESRCH (the group is already gone) is the common, harmless case.
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The program and arguments to run.
fn program(params: &ShellParams, login_shell: &str) -> (String, Vec<String>) {
    match params.command.split_first() {
        Some((cmd, args)) => (cmd.clone(), args.to_vec()),
        None => (login_shell.to_owned(), vec!["-l".into()]),
    }
}

/// The account to run as: (uid, gid, home, shell).
fn account(settings: &ShellSettings) -> anyhow::Result<Option<(u32, u32, String, String)>> {
    let Some(name) = &settings.user else {
        return Ok(None);
    };
    let user = nix::unistd::User::from_name(name)?
        .ok_or_else(|| anyhow::anyhow!("no account named {name} on this device"))?;
    Ok(Some((
        user.uid.as_raw(),
        user.gid.as_raw(),
        user.dir.to_string_lossy().into_owned(),
        user.shell.to_string_lossy().into_owned(),
    )))
}

/// Serves one shell channel.
pub async fn serve(
    settings: &ShellSettings,
    params: ShellParams,
    mut reader: FrameReader,
    mut writer: FrameWriter,
) -> anyhow::Result<()> {
    let account = match account(settings) {
        Ok(a) => a,
        Err(e) => {
            writer
                .message(&ShellMessage::Error {
                    message: e.to_string(),
                })
                .await?;
            return Ok(writer.finish().await?);
        }
    };
    let default_shell = std::env::var("SHELL").unwrap_or_else(|_| "/bin/sh".into());
    let login_shell = account
        .as_ref()
        .map_or(default_shell.as_str(), |a| a.3.as_str())
        .to_owned();
    let (cmd, args) = program(&params, &login_shell);
    let dir = start_dir(settings, account.as_ref().map(|a| a.2.as_str()));
    let result = if params.tty {
        serve_pty(
            &cmd,
            &args,
            &params,
            account.as_ref(),
            &dir,
            &mut reader,
            &mut writer,
        )
        .await
    } else {
        serve_pipes(
            &cmd,
            &args,
            account.as_ref(),
            &dir,
            &mut reader,
            &mut writer,
        )
        .await
    };
    if let Err(e) = result {
        let _ = writer
            .message(&ShellMessage::Error {
                message: format!("{cmd}: {e}"),
            })
            .await;
    }
    let _ = writer.finish().await;
    Ok(())
}

async fn serve_pty(
    cmd: &str,
    args: &[String],
    params: &ShellParams,
    account: Option<&(u32, u32, String, String)>,
    dir: &std::path::Path,
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
) -> anyhow::Result<()> {
    let (pty, pts) = pty_process::open()?;
    let rows = if params.rows == 0 { 24 } else { params.rows };
    let cols = if params.cols == 0 { 80 } else { params.cols };
    pty.resize(pty_process::Size::new(rows, cols))?;
    let mut command = pty_process::Command::new(cmd)
        .args(args)
        .env(
            "TERM",
            params
                .term
                .clone()
                .unwrap_or_else(|| "xterm-256color".into()),
        )
        .current_dir(dir)
        .kill_on_drop(true);
    if let Some((uid, gid, home, _)) = account {
        command = command.uid(*uid).gid(*gid).env("HOME", home);
    }
    let mut child: Child = command.spawn(pts)?;
    let _group = ProcessGroup::of(child.id());
    let (mut out, mut input) = pty.into_split();
    let mut buf = vec![0u8; 32 * 1024];
    let mut input_open = true;
    loop {
        tokio::select! {
            n = out.read(&mut buf) => match n {
                // EIO on Linux when the last process on the PTY exits.
                Ok(0) | Err(_) => break,
                Ok(n) => writer.send(&Frame::data(Bytes::copy_from_slice(&buf[..n]))).await?,
            },
            frame = reader.next(), if input_open => match frame? {
                Some(f) if f.kind == FrameKind::Data => input.write_all(&f.payload).await?,
                Some(f) if f.kind == FrameKind::Message => {
                    if let Ok(ShellMessage::Resize { cols, rows }) = f.parse() {
                        let _ = input.resize(pty_process::Size::new(rows, cols));
                    }
                }
                Some(_) => {}
                // The technician is gone: end the command rather than leave it running.
                None => {
                    input_open = false;
                    child.start_kill()?;
                }
            },
        }
    }
    let status = child.wait().await?;
    writer.message(&exit_message(status)).await?;
    Ok(())
}

async fn serve_pipes(
    cmd: &str,
    args: &[String],
    account: Option<&(u32, u32, String, String)>,
    dir: &std::path::Path,
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
) -> anyhow::Result<()> {
    let mut command = tokio::process::Command::new(cmd);
    command
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some((uid, gid, home, _)) = account {
        command.uid(*uid).gid(*gid).env("HOME", home);
    }
    let mut child = command.spawn()?;
    let _group = ProcessGroup::of(child.id());
    let mut stdin = child.stdin.take();
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let (mut out_buf, mut err_buf) = (vec![0u8; 32 * 1024], vec![0u8; 8 * 1024]);
    let (mut out_open, mut err_open, mut input_open) = (true, true, true);
    while out_open || err_open {
        tokio::select! {
            n = stdout.read(&mut out_buf), if out_open => match n {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => writer.send(&Frame::data(Bytes::copy_from_slice(&out_buf[..n]))).await?,
            },
            n = stderr.read(&mut err_buf), if err_open => match n {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => writer
                    .message(&ShellMessage::Stderr { text: String::from_utf8_lossy(&err_buf[..n]).into_owned() })
                    .await?,
            },
            frame = reader.next(), if input_open => match frame {
                Ok(Some(f)) if f.kind == FrameKind::Data => {
                    if let Some(s) = stdin.as_mut()
                        && s.write_all(&f.payload).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Ok(Some(f)) if f.kind == FrameKind::EndOfData => {
                    stdin = None;
                }
                Ok(Some(_)) => {}
                // The technician is gone (end of input is an explicit frame): end the command
                // rather than leave it running.
                Ok(None) | Err(_) => {
                    input_open = false;
                    stdin = None;
                    child.start_kill()?;
                }
            },
        }
    }
    drop(stdin);
    let status = child.wait().await?;
    debug!(%status, "Shell command exited");
    writer.message(&exit_message(status)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs() {
        let p = ShellParams {
            command: vec!["echo".into(), "hi".into()],
            ..Default::default()
        };
        assert_eq!(
            program(&p, "/bin/bash"),
            ("echo".into(), vec!["hi".to_owned()])
        );
        assert_eq!(
            program(&ShellParams::default(), "/bin/bash"),
            ("/bin/bash".into(), vec!["-l".to_owned()])
        );
        assert!(
            account(&ShellSettings {
                user: Some("no-such-user-xyz".into()),
                dir: None,
            })
            .is_err()
        );
    }

    #[test]
    fn shells_start_in_the_home_or_the_files_root_never_the_agents_directory() {
        let root = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        let settings = ShellSettings {
            user: None,
            dir: Some(root.path().to_owned()),
        };
        assert_eq!(start_dir(&settings, None), root.path());
        // Run as another account: its home.
        assert_eq!(
            start_dir(&settings, Some(home.path().to_str().unwrap())),
            home.path()
        );
        // A home or root that is not there is skipped.
        let gone = ShellSettings {
            user: None,
            dir: Some(root.path().join("missing")),
        };
        let fallback = start_dir(&gone, Some("/no/such/home"));
        assert!(fallback.is_dir(), "{fallback:?}");
        assert_ne!(fallback, root.path().join("missing"));
    }

    /// The channel end to end: a command with no directory of its own reports where it ran.
    #[tokio::test]
    async fn a_command_runs_in_the_start_directory() {
        let root = tempfile::tempdir().unwrap();
        let settings = ShellSettings {
            user: None,
            dir: Some(root.path().to_owned()),
        };
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (server_r, server_w) = tokio::io::split(server);
        let (client_r, client_w) = tokio::io::split(client);
        let params = ShellParams {
            command: vec!["pwd".into()],
            ..Default::default()
        };
        let serving = tokio::spawn(async move {
            serve(
                &settings,
                params,
                FrameReader::new(Box::pin(server_r)),
                tether_transport::framed::writer(server_w),
            )
            .await
        });
        let mut reader = FrameReader::new(Box::pin(client_r));
        let mut writer = tether_transport::framed::writer(client_w);
        writer.send(&Frame::end_of_data()).await.unwrap();
        let mut out = Vec::new();
        while let Ok(Some(f)) = reader.next().await {
            if f.kind == FrameKind::Data {
                out.extend_from_slice(&f.payload);
            }
        }
        serving.await.unwrap().unwrap();
        let printed = std::path::PathBuf::from(String::from_utf8_lossy(&out).trim());
        assert_eq!(
            printed.canonicalize().unwrap(),
            root.path().canonicalize().unwrap()
        );
    }
}

//! `shell`: a command or login shell on the device over the shell channel, the local terminal
//! in raw mode, window resizes, and the exit status that reports the command's end.

use std::io::{IsTerminal, Write};

use anyhow::{Result, bail};
use bytes::Bytes;
use tether_proto::frame::{Frame, FrameKind};
use tether_proto::message::{Attach, ChannelKind, ShellMessage, ShellParams};
use tether_proto::text::escape;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::GlobalArgs;
use crate::connect::{ConnectArgs, join};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}

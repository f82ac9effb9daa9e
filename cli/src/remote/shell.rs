//! `shell`: a command or login shell on the device over the shell channel, the local terminal
//! in raw mode, window resizes, and the exit status that reports the command's end.

use std::io::{IsTerminal, Write};

use anyhow::{Result, bail};
use bytes::Bytes;
use tether_proto::frame::{Frame, FrameKind};
use tether_proto::message::{Attach, ChannelKind, ShellMessage, ShellParams};
use tether_proto::text::escape;
use tether_transport::{FrameReader, FrameWriter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::GlobalArgs;
use crate::connect::{ConnectArgs, Joined, join, rejoin};

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

/// How a shell channel ended.
enum Outcome {
    /// The command or shell exited with this status.
    Exit(u8),
    /// The session ended, or the connection was lost where joining again is not wanted.
    Over,
    /// The connection to the relay was lost (the session may go on).
    Lost,
}

/// Runs `shell`; returns the exit status to leave with (see [`EXIT_NO_STATUS`]). A login shell
/// whose relay connection is lost (a relay replica went away) joins the session again by
/// itself and starts a new shell; a command is never run twice.
pub async fn shell(global: &GlobalArgs, args: ShellArgs) -> Result<u8> {
    let mut joined = join(global, &args.connect, &args.name).await?;
    let tty = args.tty || (args.command.is_empty() && std::io::stdin().is_terminal());
    let mut raw = None;
    let mut io = Io {
        stdin: tokio::io::stdin(),
        stdout: tokio::io::stdout(),
        buf: vec![0u8; 16 * 1024],
        stdin_open: true,
    };
    loop {
        let (cols, rows) = terminal_size();
        let (reader, writer) = joined
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
        if raw.is_none() {
            raw = Some(tty.then(RawMode::enter));
        }
        match pump(&joined, reader, writer, &mut io, tty).await? {
            Outcome::Exit(code) => return Ok(code),
            Outcome::Lost if args.command.is_empty() => {
                joined = rejoin(global, &args.connect, &args.name).await?;
                eprint!("tether: a new shell was started on the device\r\n");
            }
            Outcome::Lost | Outcome::Over => return Ok(EXIT_NO_STATUS),
        }
    }
}

/// The local ends of a shell, kept across reconnections.
struct Io {
    stdin: tokio::io::Stdin,
    stdout: tokio::io::Stdout,
    buf: Vec<u8>,
    stdin_open: bool,
}

/// Carries one shell channel until it ends.
async fn pump(
    joined: &Joined,
    mut reader: FrameReader,
    mut writer: FrameWriter,
    io: &mut Io,
    tty: bool,
) -> Result<Outcome> {
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let mut ended = joined.ended.clone();
    if !io.stdin_open {
        writer.send(&Frame::end_of_data()).await?;
    }
    let gone = |joined: &Joined| {
        if joined.lost() {
            Outcome::Lost
        } else {
            Outcome::Over
        }
    };
    loop {
        tokio::select! {
            frame = reader.next() => match frame {
                Ok(Some(f)) if f.kind == FrameKind::Data => {
                    io.stdout.write_all(&f.payload).await?;
                    io.stdout.flush().await?;
                }
                Ok(Some(f)) if f.kind == FrameKind::Message => match f.parse::<ShellMessage>()? {
                    ShellMessage::Exit { code, signal } => {
                        if code.is_none() && let Some(s) = &signal {
                            eprintln!("tether: killed by SIG{}", escape(s));
                        }
                        return Ok(Outcome::Exit(exit_status(code, signal.as_deref())));
                    }
                    ShellMessage::Stderr { text } => {
                        let mut err = std::io::stderr();
                        let _ = err.write_all(text.as_bytes());
                        let _ = err.flush();
                    }
                    ShellMessage::Error { message } => bail!("the shell failed: {}", escape(&message)),
                    ShellMessage::Resize { .. } => {}
                },
                Ok(Some(_)) => {}
                Ok(None) => {
                    joined.settle().await;
                    return Ok(gone(joined));
                }
                Err(e) => {
                    joined.settle().await;
                    if joined.lost() {
                        return Ok(Outcome::Lost);
                    }
                    return Err(e.into());
                }
            },
            n = io.stdin.read(&mut io.buf), if io.stdin_open => match n? {
                0 => {
                    io.stdin_open = false;
                    let _ = writer.send(&Frame::end_of_data()).await;
                }
                // A write to a lost connection shows up on the reading side.
                n => { let _ = writer.send(&Frame::data(Bytes::copy_from_slice(&io.buf[..n]))).await; }
            },
            _ = winch.recv(), if tty => {
                let (cols, rows) = terminal_size();
                let _ = writer.message(&ShellMessage::Resize { cols, rows }).await;
            }
            _ = ended.changed() => return Ok(gone(joined)),
        }
    }
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

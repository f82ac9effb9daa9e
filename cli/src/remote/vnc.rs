//! `vnc NAME`: the session's desktop for any standard VNC viewer. A listener on 127.0.0.1
//! (nothing reachable from elsewhere) takes viewers with a one-time VNC password made up for
//! this run; each viewer that authenticates gets a desktop channel of its own, through the
//! relay (which enforces view-only and the clipboard whatever the viewer does) to the device.
//!
//! Two RFB handshakes meet here: towards the device, RFB 3.8 with security None inside the
//! channel the relay authenticated (`desktop_channel`, shared with the browser viewer);
//! towards the local viewer, RFB 3.8 (or 3.7) with VNC authentication. From ClientInit on,
//! bytes pass unchanged both ways.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use tether_proto::text::escape;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::desktop_channel::{self, FromDevice, VERSION};
use crate::client::GlobalArgs;
use crate::connect::{ConnectArgs, Joined, join};

/// Security type VNC authentication.
const VNC_AUTH: u8 = 2;
/// Viewers served at once.
const MAX_VIEWERS: usize = 4;
/// How long input a viewer sent just before it left is still forwarded.
const INPUT_DRAIN: Duration = Duration::from_secs(2);
/// How long a local viewer has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// `vnc NAME`.
#[derive(Clone, Debug, clap::Args)]
pub struct VncArgs {
    /// The RemoteSession.
    pub name: String,
    /// Local port to listen on (127.0.0.1 only); default: any free port.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// A viewer to start once listening. `{address}` becomes `127.0.0.1::PORT`, `{port}` the
    /// port and `{password-file}` a file with the one-time password in the format of
    /// `vncviewer -passwd` (readable only by you, removed on exit); the password is also in
    /// the environment as VNC_PASSWORD. Example: `--viewer 'vncviewer {address} -passwd
    /// {password-file}'`.
    #[arg(long, value_name = "CMD")]
    pub viewer: Option<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Runs `vnc`: listens until the session ends (or the viewer started with `--viewer` exits).
pub async fn vnc(global: &GlobalArgs, args: VncArgs) -> Result<()> {
    let joined = join(global, &args.connect, &args.name).await?;
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, args.port)))
        .await
        .with_context(|| format!("failed to listen on 127.0.0.1:{}", args.port))?;
    let port = listener.local_addr()?.port();
    let password = tether_rfb::auth::one_time_password();
    eprintln!(
        "tether: the desktop of {} is on 127.0.0.1:{port}",
        escape(&joined.session.device)
    );
    eprintln!("tether: connect with: vncviewer 127.0.0.1::{port}");
    eprintln!("tether: one-time password: {password}");
    let password_dir = tempfile::tempdir()?;
    let viewer = match &args.viewer {
        Some(command) => Some(start_viewer(command, port, &password, password_dir.path())?),
        None => None,
    };
    let viewer_exit = async move {
        match viewer {
            Some(mut child) => child.wait().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(viewer_exit);
    let mut viewers = JoinSet::new();
    let mut ended = joined.ended.clone();
    let joined = std::sync::Arc::new(joined);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = accepted?;
                while viewers.try_join_next().is_some() {}
                if viewers.len() >= MAX_VIEWERS {
                    eprintln!("tether: refused a viewer from {peer}: {MAX_VIEWERS} are connected");
                    continue;
                }
                let joined = joined.clone();
                let password = password.clone();
                viewers.spawn(async move {
                    match serve(&joined, stream, &password).await {
                        Ok(()) => eprintln!("tether: a viewer disconnected"),
                        Err(e) => eprintln!("tether: a viewer's desktop closed: {e:#}"),
                    }
                });
            }
            status = &mut viewer_exit => {
                match status {
                    Ok(status) => eprintln!("tether: the viewer exited ({status})"),
                    Err(e) => eprintln!("tether: the viewer failed: {e}"),
                }
                break;
            }
            _ = ended.changed() => {
                joined.settle().await;
                break;
            }
        }
    }
    viewers.shutdown().await;
    Ok(())
}

/// Starts the `--viewer` command through the shell, with its placeholders filled in.
fn start_viewer(
    command: &str,
    port: u16,
    password: &str,
    dir: &std::path::Path,
) -> Result<tokio::process::Child> {
    let file = dir.join("passwd");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)?;
        f.write_all(&tether_rfb::auth::obfuscated(password))?;
    }
    let command = command
        .replace("{address}", &format!("127.0.0.1::{port}"))
        .replace("{port}", &port.to_string())
        .replace("{password-file}", &file.to_string_lossy());
    tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .env("VNC_PASSWORD", password)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("failed to start the viewer `{command}`"))
}

/// Serves one local viewer: authenticates it, opens a desktop channel, handshakes with the
/// device, then passes bytes both ways until either side ends.
async fn serve(joined: &Joined, mut viewer: TcpStream, password: &str) -> Result<()> {
    viewer.set_nodelay(true)?;
    tokio::time::timeout(HANDSHAKE_TIMEOUT, authenticate(&mut viewer, password))
        .await
        .context("the viewer did not finish its handshake in time")??;
    let mut device = desktop_channel::open(joined).await?;
    if !device.pending.is_empty() {
        viewer
            .write_all(&std::mem::take(&mut device.pending))
            .await?;
    }
    let (mut viewer_r, mut viewer_w) = viewer.split();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            // The viewer's input first: what it sent before it left still reaches the device.
            biased;
            n = viewer_r.read(&mut buf) => {
                let n = n?;
                if n == 0 {
                    device.finish().await;
                    return Ok(());
                }
                device.send(Bytes::copy_from_slice(&buf[..n])).await?;
            }
            from = device.next() => match from? {
                FromDevice::Data(data) => {
                    if viewer_w.write_all(&data).await.is_err() {
                        // The viewer stopped reading (it left).
                        break;
                    }
                }
                FromDevice::Closed(reason) => bail!("{reason}"),
            },
        }
    }
    // A viewer that sent input and closed at once: forward what it sent, for a bounded time.
    let drain = async {
        while let Ok(n) = viewer_r.read(&mut buf).await {
            if n == 0
                || device
                    .send(Bytes::copy_from_slice(&buf[..n]))
                    .await
                    .is_err()
            {
                break;
            }
        }
        device.finish().await;
    };
    let _ = tokio::time::timeout(INPUT_DRAIN, drain).await;
    Ok(())
}

/// The viewer side of the handshake: version, VNC authentication with the one-time
/// password, SecurityResult. A wrong password is answered after a pause, so it cannot be
/// guessed quickly.
async fn authenticate(viewer: &mut TcpStream, password: &str) -> Result<()> {
    viewer.write_all(VERSION).await?;
    let mut version = [0u8; 12];
    viewer.read_exact(&mut version).await?;
    let with_reason = match &version {
        b"RFB 003.008\n" => true,
        b"RFB 003.007\n" => false,
        other => bail!(
            "the viewer speaks {}; RFB 3.7 or 3.8 is needed",
            escape(&String::from_utf8_lossy(other))
        ),
    };
    viewer.write_all(&[1, VNC_AUTH]).await?;
    let mut chosen = [0u8; 1];
    viewer.read_exact(&mut chosen).await?;
    if chosen[0] != VNC_AUTH {
        bail!(
            "the viewer chose security type {}, not VNC authentication",
            chosen[0]
        );
    }
    let challenge: [u8; 16] = rand::random();
    viewer.write_all(&challenge).await?;
    let mut response = [0u8; 16];
    viewer.read_exact(&mut response).await?;
    if tether_rfb::auth::response(password, &challenge) != response {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut failed = vec![0, 0, 0, 1];
        if with_reason {
            let reason = b"wrong password";
            failed.extend_from_slice(&(reason.len() as u32).to_be_bytes());
            failed.extend_from_slice(reason);
        }
        viewer.write_all(&failed).await?;
        bail!("a viewer gave a wrong password");
    }
    viewer.write_all(&[0, 0, 0, 0]).await?;
    Ok(())
}

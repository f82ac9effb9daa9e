//! `desktop NAME`: the session's desktop in the browser. A web server on 127.0.0.1 serves the
//! viewer page (Tether's page around noVNC, both embedded in the binary) behind a one-time
//! link, and bridges the page's WebSocket to a desktop channel of its own through the relay
//! (which enforces view-only and the clipboard whatever the page does).
//!
//! Who may use the server: the browser that opens the one-time link. The link's token is
//! exchanged once for an HttpOnly, SameSite=Strict cookie and is then spent; every request
//! must name this server in `Host` (`127.0.0.1:PORT` or `localhost:PORT`, against DNS
//! rebinding), and the WebSocket must come from the page's own origin (against cross-site
//! WebSocket hijacking). The server listens on 127.0.0.1 only.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::ws::WebSocket;
use tether_proto::text::escape;
use tether_proto::token::DesktopPermission;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use super::desktop_bridge;
use super::desktop_server::{self, Shared};
use crate::client::GlobalArgs;
use crate::connect::{ConnectArgs, join};

/// Browser viewers served at once.
const MAX_VIEWERS: usize = 4;
/// How long the server stays up after the session ended, for the page to show why.
const ENDED_GRACE: Duration = Duration::from_secs(5);

/// `desktop NAME`.
#[derive(Clone, Debug, clap::Args)]
pub struct DesktopArgs {
    /// The RemoteSession.
    pub name: String,
    /// Local port for the viewer page (127.0.0.1 only); default: any free port.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Print the viewer's one-time link instead of opening the default browser ($BROWSER,
    /// else xdg-open).
    #[arg(long)]
    pub no_browser: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Runs `desktop`: serves the viewer until the session ends.
pub async fn desktop(global: &GlobalArgs, args: DesktopArgs) -> Result<()> {
    let joined = join(global, &args.connect, &args.name).await?;
    if joined.session.permissions.desktop == DesktopPermission::None {
        anyhow::bail!(
            "RemoteSession {} does not allow the desktop (spec.features.desktop is Disabled)",
            args.name
        );
    }
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, args.port)))
        .await
        .with_context(|| format!("failed to listen on 127.0.0.1:{}", args.port))?;
    let port = listener.local_addr()?.port();
    let token = desktop_server::one_time_token();
    let (sockets_tx, mut sockets_rx) = mpsc::channel::<WebSocket>(MAX_VIEWERS);
    let device = escape(&joined.session.device).into_owned();
    let shared = Arc::new(Shared {
        port,
        token_sha256: desktop_server::sha256(&token),
        cookie: Mutex::new(None),
        sockets: sockets_tx,
        viewers: AtomicUsize::new(0),
        closed: Mutex::new(None),
        ended_shown: Notify::new(),
        joined: Arc::new(joined),
    });
    let url = format!("http://127.0.0.1:{port}/open?token={token}");
    let mut tasks = JoinSet::new();
    if args.no_browser {
        eprintln!("tether: the desktop of {device} is at {url}");
        eprintln!("tether: open it in your browser; the link works once");
    } else {
        match open_browser(&url) {
            Ok(mut child) => {
                eprintln!(
                    "tether: opened the desktop of {device} in the browser (http://127.0.0.1:{port}/)"
                );
                tasks.spawn(async move {
                    let _ = child.wait().await;
                });
            }
            Err(e) => {
                eprintln!("tether: could not open a browser ({e:#})");
                eprintln!("tether: the desktop of {device} is at {url}");
                eprintln!("tether: open it in your browser; the link works once");
            }
        }
    }
    drop(token);
    drop(url);

    let app: Router = desktop_server::router(shared.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop_rx.await;
    });
    tasks.spawn(async move {
        if let Err(e) = server.await {
            eprintln!("tether: the viewer's web server failed: {e}");
        }
    });

    let mut bridges = JoinSet::new();
    let mut ended = shared.joined.ended.clone();
    loop {
        tokio::select! {
            socket = sockets_rx.recv() => {
                let Some(socket) = socket else { break };
                while bridges.try_join_next().is_some() {}
                if bridges.len() >= MAX_VIEWERS {
                    eprintln!("tether: refused a browser viewer: {MAX_VIEWERS} are connected");
                    desktop_bridge::refuse(socket, "too many viewers are connected").await;
                    continue;
                }
                bridges.spawn(desktop_bridge::bridge(shared.clone(), socket));
            }
            _ = ended.changed() => {
                shared.joined.settle().await;
                break;
            }
        }
    }
    // The bridges close their pages' desktops with the reason; the pages then ask the server
    // why, so it stays up until one has been told (or a few seconds passed).
    let _ = tokio::time::timeout(ENDED_GRACE, async {
        while bridges.join_next().await.is_some() {}
        if shared.cookie_issued() {
            shared.ended_shown.notified().await;
        }
    })
    .await;
    bridges.shutdown().await;
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.shutdown().await;
    Ok(())
}

/// Opens `url` in the default browser: the first command in `$BROWSER` (with `%s` replaced
/// by the URL, or the URL appended), else `xdg-open`.
fn open_browser(url: &str) -> Result<tokio::process::Child> {
    let configured = std::env::var("BROWSER").ok().and_then(|b| {
        b.split(':')
            .map(str::trim)
            .find(|c| !c.is_empty())
            .map(str::to_owned)
    });
    let mut command = match configured {
        Some(browser) if browser.contains("%s") => {
            let mut c = tokio::process::Command::new("sh");
            c.arg("-c")
                .arg(browser.replace("%s", "\"$1\""))
                .arg("sh")
                .arg(url);
            c
        }
        Some(browser) => {
            let mut c = tokio::process::Command::new("sh");
            c.arg("-c")
                .arg(format!("{browser} \"$1\""))
                .arg("sh")
                .arg(url);
            c
        }
        None => {
            let mut c = tokio::process::Command::new("xdg-open");
            c.arg(url);
            c
        }
    };
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("failed to start the browser (set BROWSER, or pass --no-browser)")
}

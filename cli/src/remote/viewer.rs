//! Starting and stopping a browser viewer's local server, for `desktop` (a live session) and
//! `play` (a recording): listening on 127.0.0.1, the one-time link printed or opened in the
//! default browser, and the server's shutdown. The token is put in the link only, never in a
//! log line of its own, and is dropped once the link was handed out.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::ws::WebSocket;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinSet;

use super::desktop_server::{self, Feed, Shared};

/// Pages served at once.
pub(crate) const MAX_VIEWERS: usize = 4;

/// How to start a viewer.
pub(crate) struct Launch<'a> {
    /// Local port (0: any free one).
    pub port: u16,
    /// Print the link instead of opening the browser.
    pub no_browser: bool,
    /// The command (`desktop`, `play`), named in the page's refusals.
    pub command: &'static str,
    /// What the link shows, for the messages ("the desktop of kiosk-7"), already escaped.
    pub what: &'a str,
    /// What is shown.
    pub feed: Arc<dyn Feed>,
}

/// A running viewer server: its shared state and the pages' WebSockets, handed over as
/// they are upgraded.
pub(crate) struct Served {
    /// What the handlers share.
    pub shared: Arc<Shared>,
    /// Upgraded WebSockets, for the command to serve.
    pub sockets: mpsc::Receiver<WebSocket>,
    tasks: JoinSet<()>,
    stop: oneshot::Sender<()>,
}

/// Listens on 127.0.0.1, hands out the one-time link and starts serving.
pub(crate) async fn start(launch: Launch<'_>) -> Result<Served> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, launch.port)))
        .await
        .with_context(|| format!("failed to listen on 127.0.0.1:{}", launch.port))?;
    let port = listener.local_addr()?.port();
    let token = desktop_server::one_time_token();
    let (sockets_tx, sockets) = mpsc::channel::<WebSocket>(MAX_VIEWERS);
    let shared = Arc::new(Shared {
        command: launch.command,
        port,
        token_sha256: desktop_server::sha256(&token),
        cookie: Mutex::new(None),
        sockets: sockets_tx,
        viewers: AtomicUsize::new(0),
        closed: Mutex::new(None),
        ended_shown: Notify::new(),
        feed: launch.feed,
    });
    let url = format!("http://127.0.0.1:{port}/open?token={token}");
    let what = launch.what;
    let mut tasks = JoinSet::new();
    let print_link = || {
        eprintln!("tether: {what} is at {url}");
        eprintln!("tether: open it in your browser; the link works once");
    };
    if launch.no_browser {
        print_link();
    } else {
        match open_browser(&url) {
            Ok(mut child) => {
                eprintln!("tether: opened {what} in the browser (http://127.0.0.1:{port}/)");
                tasks.spawn(async move {
                    let _ = child.wait().await;
                });
            }
            Err(e) => {
                eprintln!("tether: could not open a browser ({e:#})");
                print_link();
            }
        }
    }
    drop(token);
    drop(url);

    let app = desktop_server::router(shared.clone());
    let (stop, stop_rx) = oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop_rx.await;
    });
    tasks.spawn(async move {
        if let Err(e) = server.await {
            eprintln!("tether: the viewer's web server failed: {e}");
        }
    });
    Ok(Served {
        shared,
        sockets,
        tasks,
        stop,
    })
}

impl Served {
    /// Stops the server (and the browser it started, if it still runs).
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.shutdown().await;
    }
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

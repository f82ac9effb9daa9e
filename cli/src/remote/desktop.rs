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

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tether_proto::message::Participant;
use tether_proto::text::escape;
use tether_proto::token::DesktopPermission;
use tokio::task::JoinSet;

use super::desktop_bridge;
use super::desktop_server::{Feed, Shared};
use super::viewer::{self, Launch, MAX_VIEWERS};
use crate::client::GlobalArgs;
use crate::connect::{ConnectArgs, Joined, join};

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

/// The live session as the page shows it.
struct Live(Arc<Joined>);

impl Feed for Live {
    fn state(&self, shared: &Shared) -> serde_json::Map<String, serde_json::Value> {
        let joined = &self.0;
        let now = jiff::Timestamp::now();
        let ended = joined.ended.borrow().clone();
        // The relay's countdown, when it sent one, is the end as the relay will enforce it.
        let countdown = *joined.countdown.borrow();
        let ends_at = match countdown {
            Some((seconds_left, at)) => {
                now.as_second() + seconds_left - i64::try_from(at.elapsed().as_secs()).unwrap_or(0)
            }
            None => joined.session.ends_at,
        };
        if ended.is_some() {
            shared.ended_shown.notify_one();
        }
        let permissions = &joined.session.permissions;
        let serde_json::Value::Object(state) = serde_json::json!({
            "device": joined.session.device,
            "namespace": joined.session.namespace,
            "name": joined.session.name,
            "endsAt": ends_at,
            "relayCountdown": countdown.is_some(),
            "ended": ended,
            "viewOnly": permissions.desktop != DesktopPermission::Control,
            "clipboard": {
                "toDevice": permissions.clipboard.to_device,
                "fromDevice": permissions.clipboard.from_device,
            },
            "participants": participants(&joined.participants.borrow(), &joined.me),
        }) else {
            unreachable!("a JSON object literal")
        };
        state
    }
}

/// The technicians in the session for the page: name, desktop rights, when they joined, and
/// which one is this technician (the first entry with this certificate's name; the same
/// person in a second `kubectl tether` is listed as another). The page shows names as text.
fn participants(list: &[Participant], me: &str) -> serde_json::Value {
    let mut mine = false;
    list.iter()
        .map(|p| {
            let you = !mine && !me.is_empty() && p.name == me;
            mine |= you;
            serde_json::json!({
                "name": p.name,
                "desktop": p.desktop,
                "joinedAt": p.joined_at,
                "you": you,
            })
        })
        .collect()
}

/// Runs `desktop`: serves the viewer until the session ends.
pub async fn desktop(global: &GlobalArgs, args: DesktopArgs) -> Result<()> {
    let joined = Arc::new(join(global, &args.connect, &args.name).await?);
    if joined.session.permissions.desktop == DesktopPermission::None {
        anyhow::bail!(
            "RemoteSession {} does not allow the desktop (spec.features.desktop is Disabled)",
            args.name
        );
    }
    let what = format!("the desktop of {}", escape(&joined.session.device));
    let mut served = viewer::start(Launch {
        port: args.port,
        no_browser: args.no_browser,
        command: "desktop",
        what: &what,
        feed: Arc::new(Live(joined.clone())),
    })
    .await?;
    let shared = served.shared.clone();

    let mut bridges = JoinSet::new();
    let mut ended = joined.ended.clone();
    loop {
        tokio::select! {
            socket = served.sockets.recv() => {
                let Some(socket) = socket else { break };
                while bridges.try_join_next().is_some() {}
                if bridges.len() >= MAX_VIEWERS {
                    eprintln!("tether: refused a browser viewer: {MAX_VIEWERS} are connected");
                    desktop_bridge::refuse(socket, "too many viewers are connected").await;
                    continue;
                }
                bridges.spawn(desktop_bridge::bridge(shared.clone(), joined.clone(), socket));
            }
            _ = ended.changed() => {
                joined.settle().await;
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
    served.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, desktop: DesktopPermission) -> Participant {
        Participant {
            name: name.into(),
            desktop,
            joined_at: 1_700_000_000,
        }
    }

    #[test]
    fn this_technician_is_marked_once_and_the_others_keep_their_rights() {
        let list = [
            p("senior@example.com", DesktopPermission::ViewOnly),
            p("junior@example.com", DesktopPermission::Control),
            p("junior@example.com", DesktopPermission::Control),
        ];
        let json = participants(&list, "junior@example.com");
        assert_eq!(
            json,
            serde_json::json!([
                {"name": "senior@example.com", "desktop": "viewOnly", "joinedAt": 1_700_000_000, "you": false},
                {"name": "junior@example.com", "desktop": "control", "joinedAt": 1_700_000_000, "you": true},
                {"name": "junior@example.com", "desktop": "control", "joinedAt": 1_700_000_000, "you": false},
            ])
        );
        // A certificate without a name marks nobody.
        assert!(
            participants(&list, "")
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["you"] == false)
        );
    }
}

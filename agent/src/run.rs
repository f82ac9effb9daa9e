//! The agent's life: dial out to the relay (QUIC first, TCP if UDP is blocked, through an
//! HTTP proxy if configured), say who the device is, and serve what the relay asks — consent
//! prompts and channels — until the connection drops; then reconnect with jittered backoff.
//! Nothing on the device listens for connections.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use tether_proto::message::{
    AgentInfo, ChannelKind, Control, Hello, HelloReply, Join, PROTOCOL_VERSION, Role,
};
use tether_transport::{Connection, Dial, Prefer, framed, tls};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::channels::{chat, files, processes, shell};
use crate::consent;
use crate::desktop;
use crate::onscreen;
use crate::state::State;

/// Everything the running agent needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// State directory.
    pub state: State,
    /// Relay addresses (`host:port`), tried in turn: the enrolled one unless overridden. One
    /// address behind which every replica sits (a Service) is the usual case; a list names
    /// replicas or sites of their own.
    pub relays: Vec<String>,
    /// How consent is asked.
    pub consent: consent::Provider,
    /// How long the user has to answer.
    pub consent_timeout: Duration,
    /// File manager roots.
    pub roots: files::Roots,
    /// Shell account.
    pub shell: shell::ShellSettings,
    /// Logged-on users reported (empty: ask `who`).
    pub users: Vec<String>,
    /// Transport preference.
    pub prefer: Prefer,
    /// How long QUIC may take before TCP is tried.
    pub quic_timeout: Duration,
    /// HTTP CONNECT proxy for the TCP path.
    pub proxy: Option<String>,
    /// The device's name (the desktop's name shows it).
    pub device: String,
    /// Which display the desktop channel serves.
    pub desktop: desktop::DesktopSettings,
    /// The displays being captured, shared by their viewers.
    pub desktops: desktop::Desktops,
    /// Who views the screen, and the notice on it that says so.
    pub notices: onscreen::Notices,
}

impl Config {
    /// The display the agent's own windows go on (the one the desktop serves), if any.
    pub fn screen(&self) -> Option<desktop::x11::X11Settings> {
        self.desktop
            .display
            .as_ref()
            .map(|display| desktop::x11::X11Settings {
                display: Some(display.clone()),
                xauthority: self.desktop.xauthority.clone(),
                users: logged_on_users(&self.users).unwrap_or_default(),
            })
    }
}

/// Who is logged on: the configured list (where `--logged-on-user=` alone means nobody), or
/// the users `who` reports; `None` when `who` cannot tell (missing or failing), which is not
/// the same as nobody.
pub fn logged_on_users(configured: &[String]) -> Option<Vec<String>> {
    if !configured.is_empty() {
        return Some(
            configured
                .iter()
                .filter(|u| !u.is_empty())
                .cloned()
                .collect(),
        );
    }
    let out = std::process::Command::new("who").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let mut users: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    users.sort();
    users.dedup();
    Some(users)
}

fn device_info(config: &Config) -> AgentInfo {
    let users = logged_on_users(&config.users);
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_owned())
            })
        })
        .unwrap_or_else(|| std::env::consts::OS.to_owned());
    AgentInfo {
        hostname,
        os,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        logged_on_users: users.clone().unwrap_or_default(),
        logged_on_users_unknown: users.is_none(),
    }
}

/// Runs until `shutdown`, reconnecting as needed: at once to the next address after the relay
/// said goodbye (a replica draining) or after a connection that had been up; with jittered
/// backoff once every address has failed in a row.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut addresses = Addresses::new(config.relays.clone());
    let mut backoff = Duration::from_millis(500);
    loop {
        let started = tokio::time::Instant::now();
        let relay = addresses.current().to_owned();
        let mut moved = false;
        match connect(&config, &relay).await {
            Ok(conn) => {
                info!(relay = %relay, transport = conn.transport().as_str(), "Connected to the relay");
                let outcome = serve(&config, conn.clone(), shutdown.clone()).await;
                conn.close("agent reconnecting");
                match outcome {
                    Ok(Left::Goodbye(reason)) => {
                        info!(relay = %relay, reason = %crate::enroll::escape_controls(&reason), "Connecting again at once: the relay said goodbye");
                        moved = true;
                    }
                    Ok(Left::Closed(reason)) => {
                        info!(relay = %relay, %reason, "Disconnected from the relay")
                    }
                    Err(e) => {
                        warn!(relay = %relay, error = format!("{e:#}"), "Lost the relay connection")
                    }
                }
                addresses.succeeded();
            }
            Err(e) => {
                warn!(relay = %relay, error = format!("{e:#}"), "Failed to reach the relay")
            }
        }
        if shutdown.is_cancelled() {
            return Ok(());
        }
        // The replica that dropped the connection may be the one going away: the next address
        // is tried first (the same one when there is only one, which the Service routes to a
        // replica that is still ready).
        let round_failed = addresses.advance();
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        // Full jitter, so a relay restart is not met by every agent at the same instant; a
        // draining replica's agents are spread over a second.
        let wait = match (moved, round_failed) {
            (true, _) => Duration::from_millis(rand::random_range(0..=MOVE_SPREAD_MS)),
            (false, false) => continue,
            (false, true) => {
                Duration::from_millis(rand::random_range(0..=backoff.as_millis() as u64))
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Over how many milliseconds the agents a relay said goodbye to reconnect.
const MOVE_SPREAD_MS: u64 = 1000;

/// The relay addresses an agent tries, in turn.
#[derive(Debug)]
struct Addresses {
    list: Vec<String>,
    at: usize,
    /// Addresses tried since the last connection that was welcomed.
    failed: usize,
}

impl Addresses {
    fn new(list: Vec<String>) -> Self {
        Self {
            list,
            at: 0,
            failed: 0,
        }
    }

    fn current(&self) -> &str {
        self.list.get(self.at).map_or("", String::as_str)
    }

    /// A connection to the current address was made.
    fn succeeded(&mut self) {
        self.failed = 0;
    }

    /// Moves to the next address; true when every address has now failed in a row (time to
    /// back off). The connection that was up counts as the start of a new round.
    fn advance(&mut self) -> bool {
        let len = self.list.len().max(1);
        self.at = (self.at + 1) % len;
        self.failed += 1;
        self.failed.is_multiple_of(len)
    }
}

async fn connect(config: &Config, relay: &str) -> anyhow::Result<Connection> {
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
    };
    let ca = read(config.state.ca_file())?;
    let cert = read(config.state.cert_file())?;
    let key = read(config.state.key_file())?;
    let dial = Dial {
        relay: relay.to_owned(),
        tls: tls::client_config(&ca, Some((&cert, &key)))?,
        prefer: config.prefer,
        quic_timeout: config.quic_timeout,
        proxy: config.proxy.clone(),
    };
    Ok(dial.connect().await?)
}

/// Why a relay connection was left.
enum Left {
    /// The relay said goodbye (it is draining or stopping): time to connect elsewhere.
    Goodbye(String),
    /// The connection or its control stream closed, or the agent is stopping.
    Closed(String),
}

async fn serve(
    config: &Config,
    conn: Connection,
    shutdown: CancellationToken,
) -> anyhow::Result<Left> {
    let (mut reader, mut writer) = framed(conn.open().await?);
    writer.set_priority(tether_proto::message::CONTROL_PRIORITY);
    let mut info = device_info(config);
    writer
        .message(&Hello {
            versions: vec![PROTOCOL_VERSION],
            role: Role::Agent,
            token: None,
            agent: Some(info.clone()),
            enroll: None,
            client: format!("tether-agent/{}", env!("CARGO_PKG_VERSION")),
            technician: None,
            forwarded: None,
        })
        .await?;
    match reader.message::<HelloReply>().await? {
        HelloReply::Welcome(_) => {}
        // For example another agent with this device's identity is connected and answers:
        // this one keeps trying, and gets in once that one is gone.
        HelloReply::Refused(r) => anyhow::bail!(
            "the relay refused the agent: {}",
            crate::enroll::escape_controls(&r.message)
        ),
    }

    let (control_tx, mut control_rx) = mpsc::channel::<Control>(64);
    // The sessions the relay told us about; cancelling one's token ends its channels.
    let mut active: HashMap<String, CancellationToken> = HashMap::new();
    let mut tasks = JoinSet::new();
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    m = control_rx.recv() => match m {
                        Some(m) => if writer.message(&m).await.is_err() { break },
                        None => break,
                    },
                    () = stop.cancelled() => break,
                }
            }
            let _ = writer.finish().await;
        });
    }
    let mut poll = tokio::time::interval(Duration::from_millis(250));
    let mut status_every = tokio::time::interval(Duration::from_secs(15));
    status_every.tick().await;
    let reason = loop {
        tokio::select! {
            message = reader.message::<Control>() => {
                let message = match message {
                    Ok(m) => m,
                    Err(e) => break Left::Closed(format!("control stream ended ({e})")),
                };
                match message {
                    // The operator decides whether a session needs consent and the relay
                    // offers only then: an offer is always asked of the user.
                    Control::Offer { session, technician, consent: _, reason, ticket, timeout_secs } => {
                        active.entry(session.uid.clone()).or_insert_with(|| stop.child_token());
                        let provider = config.consent.clone();
                        let control = control_tx.clone();
                        let live = config.state.live.clone();
                        let screen = config.screen();
                        let timeout = Duration::from_secs(u64::from(timeout_secs)).min(config.consent_timeout);
                        tasks.spawn(async move {
                            let shown = tether_proto::text::escape(&technician);
                            // Every technician is asked for, the first and each who joins after.
                            let joining = live.get(&session.uid).map_or(0, |s| s.technicians.len());
                            info!(session = %session.name, technician = %shown, already_joined = joining, "Asking the user for consent");
                            let request = consent::Request {
                                technician: technician.clone(),
                                session: session.name.clone(),
                                device: session.device.clone(),
                                reason,
                                ticket,
                                permissions: Some(session.permissions.clone()),
                                timeout,
                            };
                            let (granted, why) = consent::ask(&provider, &request, screen.as_ref()).await;
                            info!(session = %session.name, technician = %shown, granted, reason = %why, "Answered a consent request");
                            if granted {
                                live.consented(&session, &technician);
                            }
                            let _ = control.send(Control::Consent { session_uid: session.uid, granted, reason: why }).await;
                        });
                    }
                    Control::Open { channel, session_uid, attach, technician, permissions } => {
                        config.state.live.opened(&session_uid, &technician);
                        let ended = active.entry(session_uid.clone()).or_insert_with(|| stop.child_token()).clone();
                        let conn = conn.clone();
                        let config = config.clone();
                        tasks.spawn(async move {
                            tokio::select! {
                                r = open_channel(&config, &conn, channel, &session_uid, attach, &technician, permissions.as_ref()) => if let Err(e) = r {
                                    warn!(channel, error = format!("{e:#}"), "A channel failed");
                                },
                                () = ended.cancelled() => info!(channel, "Closed a channel of an ended session"),
                            }
                        });
                    }
                    Control::Countdown { session_uid, seconds_left } => {
                        info!(seconds_left, "The remote session is ending soon");
                        config.state.live.countdown(&session_uid, seconds_left);
                    }
                    Control::Ended { session_uid, reason } => {
                        if let Some(ended) = active.remove(&session_uid) {
                            ended.cancel();
                        }
                        config.state.live.ended(&session_uid, &reason);
                        info!(%reason, "The remote session ended");
                    }
                    Control::Goodbye { reason } => break Left::Goodbye(reason),
                    Control::Ping { n } => { let _ = control_tx.send(Control::Pong { n }).await; }
                    _ => {}
                }
            }
            _ = poll.tick() => {
                // `tether-agent end [SESSION]`: the session the user named, or the only one.
                for uid in config.state.live.take_end_requests(&config.state.control_dir()) {
                    info!(session = %uid, "Ending the remote session at the user's request");
                    let _ = control_tx.send(Control::End { session_uid: uid, reason: "the user ended the session".into() }).await;
                }
            }
            _ = status_every.tick() => {
                let now = device_info(config);
                if (&now.logged_on_users, now.logged_on_users_unknown) != (&info.logged_on_users, info.logged_on_users_unknown) {
                    info = now.clone();
                    let _ = control_tx.send(Control::Status(now)).await;
                }
            }
            () = conn.closed() => break Left::Closed("the connection closed".into()),
            () = shutdown.cancelled() => break Left::Closed("the agent is stopping".into()),
        }
    };
    stop.cancel();
    tasks.shutdown().await;
    config.state.live.disconnected();
    Ok(reason)
}

async fn open_channel(
    config: &Config,
    conn: &Connection,
    channel: u64,
    session_uid: &str,
    attach: tether_proto::message::Attach,
    technician: &str,
    permissions: Option<&tether_proto::token::Permissions>,
) -> anyhow::Result<()> {
    let (reader, mut writer) = framed(conn.open().await?);
    writer.set_priority(attach.kind.priority());
    writer.message(&Join { channel }).await?;
    info!(channel, kind = attach.kind.as_str(), %technician, "Opened a channel");
    match attach.kind {
        ChannelKind::Shell => {
            shell::serve(
                &config.shell,
                attach.shell.unwrap_or_default(),
                reader,
                writer,
            )
            .await
        }
        ChannelKind::Files => files::serve(&config.roots, reader, writer).await,
        ChannelKind::Chat => {
            let user = logged_on_users(&config.users)
                .unwrap_or_default()
                .into_iter()
                .next()
                .unwrap_or_else(|| "user".into());
            chat::serve_session(&config.state.live, session_uid, &user, reader, writer).await
        }
        ChannelKind::Processes => processes::serve(reader, writer).await,
        ChannelKind::Desktop => {
            // The relay enforces the session's grant on the viewer's messages; the agent
            // enforces it again. A relay that sends no grant gets a view-only desktop: nothing
            // fails open.
            let grant = permissions.map_or(
                desktop::Grant {
                    control: false,
                    clipboard_to_device: false,
                    clipboard_from_device: false,
                },
                |p| desktop::Grant {
                    control: p.desktop == tether_proto::token::DesktopPermission::Control,
                    clipboard_to_device: p.clipboard.to_device,
                    clipboard_from_device: p.clipboard.from_device,
                },
            );
            let users = logged_on_users(&config.users).unwrap_or_default();
            // The user sees who is on their screen for as long as the channel is open.
            info!(channel, session = %session_uid, technician = %tether_proto::text::escape(technician), control = grant.control, "A technician started viewing the screen");
            let _seen = config.notices.watch(onscreen::Viewer {
                session_uid: session_uid.to_owned(),
                technician: technician.to_owned(),
                control: grant.control,
            });
            desktop::serve_channel(
                &config.desktops,
                &config.desktop,
                &users,
                &config.device,
                grant,
                reader,
                writer,
            )
            .await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Addresses;

    #[test]
    fn addresses_are_tried_in_turn_and_backed_off_after_a_round_of_failures() {
        let mut a = Addresses::new(vec!["a:1".into(), "b:1".into(), "c:1".into()]);
        assert_eq!(a.current(), "a:1");
        // Connected to a, then lost it: b at once, then c, then back off before a again.
        a.succeeded();
        assert!(!a.advance());
        assert_eq!(a.current(), "b:1");
        assert!(!a.advance());
        assert_eq!(a.current(), "c:1");
        assert!(a.advance());
        assert_eq!(a.current(), "a:1");
        // A connection to a resets the round.
        a.succeeded();
        assert!(!a.advance());
        assert_eq!(a.current(), "b:1");
        // One address (a Service in front of the replicas): back off after every failure.
        let mut one = Addresses::new(vec!["svc:443".into()]);
        assert!(one.advance());
        assert_eq!(one.current(), "svc:443");
    }
}

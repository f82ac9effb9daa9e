//! Joining a session as a technician: obtain a technician certificate for the session from the
//! cluster (a CertificateSigningRequest for signer `tether.dev/technician`, which the operator
//! signs only if RBAC grants the caller `connect` on the RemoteSession and the caller is among
//! its technicians), dial the relay with it, wait for the user's consent, follow the countdown,
//! and renew the certificate while connected.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use kube::api::Api;
use tether_crds::RemoteSession;
use tether_proto::frame::FrameError;
use tether_proto::message::{
    Attach, AttachReply, Control, Hello, HelloReply, PROTOCOL_VERSION, Participant, Role,
    SessionInfo,
};
use tether_transport::{
    Connection, Dial, FrameReader, FrameWriter, FramedError, Prefer, framed, tls,
};
use tokio::sync::mpsc;

use crate::certificate::{self, Ask};
use crate::client::{GlobalArgs, connect as kube_connect};

/// Signer of technicians' certificates.
const SIGNER: &str = tether_crds::contract::signers::TECHNICIAN;

/// Flags for commands that connect to a session.
#[derive(Clone, Debug, clap::Args)]
pub struct ConnectArgs {
    /// Dial this relay instead of the one the operator names (`host:port`).
    #[arg(long, global = true)]
    pub relay: Option<String>,
    /// Transport: auto (QUIC, then TCP), quic or tcp.
    #[arg(long, global = true, default_value = "auto", value_parser = ["auto", "quic", "tcp"])]
    pub transport: String,
    /// HTTP CONNECT proxy for the relay connection (`http://[user:pass@]host:port`, or `none`).
    /// Default: HTTPS_PROXY, unless NO_PROXY names the relay.
    #[arg(long, global = true, value_name = "URL")]
    pub proxy: Option<String>,
}

/// A joined session.
pub struct Joined {
    /// The connection to the relay.
    pub conn: Connection,
    /// What the relay said about the session.
    pub session: SessionInfo,
    /// Control messages to the relay.
    pub control: mpsc::Sender<Control>,
    /// Set when the session ends, with the reason.
    pub ended: tokio::sync::watch::Receiver<Option<String>>,
    /// The relay's latest countdown: seconds left, and when it said so.
    pub countdown: tokio::sync::watch::Receiver<Option<(i64, std::time::Instant)>>,
    /// Who is in the session, as the relay last said (this technician included).
    pub participants: tokio::sync::watch::Receiver<Vec<Participant>>,
    /// This technician's name, as the cluster issued it in the certificate.
    pub me: String,
    /// Set when the connection was lost or the relay said goodbye (it is going away), as
    /// opposed to the session ending: joining again may go on with the session.
    lost: Arc<AtomicBool>,
    _tasks: tokio::task::JoinSet<()>,
}

/// Relay connections this process opened, closed on exit by [`close_all`].
static OPEN: std::sync::Mutex<Vec<Connection>> = std::sync::Mutex::new(Vec::new());

/// Notes a relay connection so that [`close_all`] closes it before the process exits.
pub fn remember(conn: &Connection) {
    OPEN.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(conn.clone());
}

/// Closes every relay connection and waits until the relay has been told, so it ends the
/// channels (and their recordings) at once instead of after the idle timeout.
pub async fn close_all() {
    let open: Vec<Connection> =
        std::mem::take(&mut *OPEN.lock().unwrap_or_else(|e| e.into_inner()));
    // A connection lost earlier (the relay went away) has no one to tell: bounded.
    for conn in open {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            conn.close_and_flush("kubectl-tether done"),
        )
        .await;
    }
}

/// Why a session cannot be joined now, from its phase (asked only after the operator refused
/// a certificate, to say more than the refusal).
async fn not_joinable(client: &kube::Client, ns: &str, name: &str) -> Option<String> {
    let sessions: Api<RemoteSession> = Api::namespaced(client.clone(), ns);
    let session = sessions.get_opt(name).await.ok()?;
    let Some(session) = session else {
        return Some(format!("RemoteSession {name} not found in namespace {ns}"));
    };
    let status = session.status?;
    match status.phase? {
        p if p.is_terminal() => Some(format!("RemoteSession {name} has ended ({p})")),
        tether_crds::SessionPhase::Scheduled => Some(format!(
            "RemoteSession {name} has not started; its window opens at {}",
            status
                .scheduled_start
                .map(|t| t.0.to_string())
                .unwrap_or_default()
        )),
        _ => None,
    }
}

/// What a technician is told while the relay has not answered yet, from the session's
/// effective mode: only an interactive session asks the user on the device.
fn waiting_message(session: Option<&RemoteSession>) -> &'static str {
    use tether_crds::remote_session::{EffectiveMode, RecordingPolicy, SessionMode};
    let mode = session.and_then(|s| {
        s.status
            .as_ref()
            .and_then(|st| st.effective_mode)
            .or(match s.spec.mode {
                SessionMode::Interactive => Some(EffectiveMode::Interactive),
                SessionMode::Unattended => Some(EffectiveMode::Unattended),
                SessionMode::Dynamic => None,
            })
    });
    let recorded = session.is_some_and(|s| s.spec.recording == RecordingPolicy::Required);
    match (mode, recorded) {
        (Some(EffectiveMode::Interactive), _) => {
            "waiting for the user on the device to allow the session…"
        }
        (Some(EffectiveMode::Unattended), true) => {
            "waiting for the device's agent and the session's recording (unattended: nobody is asked)…"
        }
        (Some(EffectiveMode::Unattended), false) => {
            "waiting for the device's agent (unattended: nobody is asked)…"
        }
        (None, _) => "waiting for the device's agent (and the user, if one is asked)…",
    }
}

/// What a technician is told when the session's participants change from `before` to
/// `now`: who joined (with their desktop rights) and who left, never this technician itself
/// (`me`). A participant is the same one while its name and join time are.
fn arrivals(before: &[Participant], now: &[Participant], me: &str) -> Vec<String> {
    use tether_proto::token::DesktopPermission;
    let same = |a: &Participant, b: &Participant| a.name == b.name && a.joined_at == b.joined_at;
    let mine = now.iter().position(|p| p.name == me);
    let mut lines = Vec::new();
    for (i, p) in now.iter().enumerate() {
        if Some(i) != mine && !before.iter().any(|b| same(b, p)) {
            let rights = match p.desktop {
                DesktopPermission::Control => "may control the desktop",
                DesktopPermission::ViewOnly => "may view the desktop",
                DesktopPermission::None => "no desktop",
            };
            let verb = if before.is_empty() { "is in" } else { "joined" };
            lines.push(format!(
                "{} {verb} the session ({rights})",
                tether_proto::text::escape(&p.name)
            ));
        }
    }
    for p in before {
        if p.name != me && !now.iter().any(|n| same(n, p)) {
            lines.push(format!(
                "{} left the session",
                tether_proto::text::escape(&p.name)
            ));
        }
    }
    lines
}

/// Renew a technician certificate when this much of its life is left.
fn renew_at(not_after: i64, issued_at: i64) -> i64 {
    let life = (not_after - issued_at).max(0);
    not_after - (life / 3).clamp(5, 180)
}

/// Joins session `name`.
pub async fn join(global: &GlobalArgs, args: &ConnectArgs, name: &str) -> Result<Joined> {
    let conn = kube_connect(global).await?;
    let ns = conn.namespace.clone();
    let ask = Ask {
        signer: SIGNER,
        kind: "technician",
        namespace: &ns,
        session: Some(name),
        role_hint: "request a technician certificate (create certificatesigningrequests; the tether-certificate-requester ClusterRole grants it, bound cluster-wide)",
    };
    let key = certificate::new_key()?;
    let issued = match certificate::request(&conn.client, &ask, &key).await {
        Ok(issued) => issued,
        Err(e) => match not_joinable(&conn.client, &ns, name).await {
            Some(why) => bail!("{why}"),
            None => bail!("you may not connect to RemoteSession {name}: {e}"),
        },
    };
    let relay = match (&args.relay, &issued.relay) {
        (Some(r), _) => r.clone(),
        (None, Some(r)) if !r.is_empty() => r.clone(),
        _ => bail!(
            "the cluster has no relay address for RemoteSession {name}; pass --relay host:port"
        ),
    };
    let dial = Dial {
        relay: relay.clone(),
        tls: tls::client_config(&issued.ca, Some((&issued.cert, &issued.key)))?,
        prefer: match args.transport.as_str() {
            "quic" => Prefer::Quic,
            "tcp" => Prefer::Tcp,
            _ => Prefer::Auto,
        },
        quic_timeout: Duration::from_secs(3),
        proxy: crate::reach::relay_proxy(args.proxy.as_deref(), &relay),
    };
    let relay_conn = crate::reach::connect(&dial).await?;
    remember(&relay_conn);
    let (mut reader, mut writer) = framed(relay_conn.open().await?);
    writer.set_priority(tether_proto::message::CONTROL_PRIORITY);
    writer
        .message(&Hello {
            versions: vec![PROTOCOL_VERSION],
            role: Role::Technician,
            token: None,
            agent: None,
            enroll: None,
            client: format!("kubectl-tether/{}", env!("CARGO_PKG_VERSION")),
            technician: None,
            forwarded: None,
        })
        .await?;
    let sessions: Api<RemoteSession> = Api::namespaced(conn.client.clone(), &ns);
    let waiting_for = waiting_message(sessions.get_opt(name).await.ok().flatten().as_ref());
    let waiting = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!("tether: {waiting_for}");
    });
    let reply = reader.message::<HelloReply>().await;
    waiting.abort();
    let session = match reply? {
        HelloReply::Welcome(w) => w
            .session
            .ok_or_else(|| anyhow::anyhow!("the relay did not describe the session"))?,
        HelloReply::Refused(r) => bail!(
            "the relay refused the connection: {}",
            tether_proto::text::escape(&r.message)
        ),
    };

    let (control_tx, mut control_rx) = mpsc::channel::<Control>(16);
    let issued_at = jiff::Timestamp::now().as_second();
    let first_expiry = certificate::not_after(&issued.cert).unwrap_or(issued_at);
    let (ended_tx, ended_rx) = tokio::sync::watch::channel(None);
    let (countdown_tx, countdown_rx) = tokio::sync::watch::channel(None);
    let (participants_tx, participants_rx) = tokio::sync::watch::channel(Vec::new());
    let me = tls::certs(&issued.cert, "the technician certificate")?
        .first()
        .and_then(tls::technician_certificate)
        .map(|c| c.user)
        .unwrap_or_default();
    let me_for_notes = me.clone();
    let lost = Arc::new(AtomicBool::new(false));
    let lost_by_reader = lost.clone();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move {
        while let Some(m) = control_rx.recv().await {
            if writer.message(&m).await.is_err() {
                break;
            }
        }
    });
    tasks.spawn(async move {
        loop {
            match reader.message::<Control>().await {
                Ok(Control::Countdown { seconds_left, .. }) => {
                    eprintln!(
                        "tether: the session ends in {}m{:02}s",
                        seconds_left / 60,
                        seconds_left % 60
                    );
                    let _ = countdown_tx.send(Some((seconds_left, std::time::Instant::now())));
                }
                Ok(Control::Ended { reason, .. }) => {
                    eprintln!("tether: the session ended ({reason})");
                    let _ = ended_tx.send(Some(reason));
                    break;
                }
                Ok(Control::Goodbye { reason }) => {
                    eprintln!("tether: {}", tether_proto::text::escape(&reason));
                    lost_by_reader.store(true, Ordering::SeqCst);
                    let _ = ended_tx.send(Some(reason));
                    break;
                }
                Ok(Control::Participants { technicians, .. }) => {
                    for line in arrivals(&participants_tx.borrow(), &technicians, &me_for_notes) {
                        eprintln!("tether: {line}");
                    }
                    let _ = participants_tx.send(technicians);
                }
                Ok(_) => {}
                // A well-framed message this version does not know (a newer relay's): skipped.
                Err(FramedError::Frame(FrameError::BadMessage(_))) => {}
                Err(_) => {
                    lost_by_reader.store(true, Ordering::SeqCst);
                    let _ = ended_tx.send(Some("the connection closed".into()));
                    break;
                }
            }
        }
    });
    // Renew the certificate while connected, with the same key: the relay closes a technician
    // connection whose certificate ran out.
    {
        let client = conn.client.clone();
        let control = control_tx.clone();
        let name = name.to_owned();
        tasks.spawn(async move {
            let ask = Ask {
                signer: SIGNER,
                kind: "technician",
                namespace: &ns,
                session: Some(&name),
                role_hint: "renew the technician certificate",
            };
            let (mut expiry, mut since) = (first_expiry, issued_at);
            loop {
                let wait = renew_at(expiry, since) - jiff::Timestamp::now().as_second();
                tokio::time::sleep(Duration::from_secs(u64::try_from(wait).unwrap_or(0))).await;
                since = jiff::Timestamp::now().as_second();
                match certificate::request(&client, &ask, &key).await {
                    Ok(renewed) => {
                        expiry = certificate::not_after(&renewed.cert).unwrap_or(since);
                        let chain = format!("{}{}", renewed.cert, renewed.ca);
                        if control
                            .send(Control::Renew { certificate: chain })
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Err(e) => {
                        eprintln!("tether: could not renew the technician certificate: {e}");
                        // Try again a little later, while the current one lasts.
                        expiry = expiry.min(since + 30);
                        if since >= expiry {
                            break;
                        }
                    }
                }
            }
        });
    }
    let _ = std::io::stderr().flush();
    Ok(Joined {
        conn: relay_conn,
        session,
        control: control_tx,
        ended: ended_rx,
        countdown: countdown_rx,
        participants: participants_rx,
        me,
        lost,
        _tasks: tasks,
    })
}

/// How long a technician's command tries to join again after losing the relay.
const REJOIN_FOR: Duration = Duration::from_secs(60);

/// Joins session `name` again after the connection to the relay was lost (a replica went
/// away): tries for [`REJOIN_FOR`] while the device's agent moves to another replica, and
/// stops at once if the session is over.
pub async fn rejoin(global: &GlobalArgs, args: &ConnectArgs, name: &str) -> Result<Joined> {
    eprintln!("tether: lost the relay; connecting again…");
    let deadline = tokio::time::Instant::now() + REJOIN_FOR;
    let mut wait = Duration::from_millis(250);
    loop {
        let error = match join(global, args, name).await {
            Ok(joined) => {
                eprintln!("tether: connected again");
                return Ok(joined);
            }
            Err(e) => e,
        };
        if let Ok(conn) = kube_connect(global).await
            && let Some(why) = not_joinable(&conn.client, &conn.namespace, name).await
        {
            bail!("{why}");
        }
        if tokio::time::Instant::now() + wait > deadline {
            bail!(
                "could not connect again within {}s: {error:#}",
                REJOIN_FOR.as_secs()
            );
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

impl Joined {
    /// Opens a channel.
    pub async fn attach(&self, attach: Attach) -> Result<(FrameReader, FrameWriter)> {
        let (mut reader, mut writer) = framed(self.conn.open().await?);
        writer.set_priority(attach.kind.priority());
        writer.message(&attach).await?;
        match reader.message::<AttachReply>().await? {
            AttachReply::Attached { .. } => Ok((reader, writer)),
            AttachReply::Refused(r) => bail!("{}", r.message),
        }
    }

    /// After a channel closed on its own, gives the relay's explanation (an `Ended` message on
    /// the control stream) a moment to arrive, so it is shown before the command returns.
    pub async fn settle(&self) {
        let mut ended = self.ended.clone();
        let _ = tokio::time::timeout(Duration::from_secs(1), ended.wait_for(Option::is_some)).await;
    }

    /// Whether the connection was lost (or the relay went away) rather than the session
    /// ending: see [`rejoin`].
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Ends the session for everyone.
    pub async fn end(&self, reason: &str) {
        let _ = self
            .control
            .send(Control::End {
                session_uid: self.session.uid.clone(),
                reason: reason.into(),
            })
            .await;
    }
}

#[cfg(test)]
mod waiting_tests {
    use super::*;
    use tether_proto::token::DesktopPermission;

    fn p(name: &str, joined_at: i64, desktop: DesktopPermission) -> Participant {
        Participant {
            name: name.into(),
            desktop,
            joined_at,
        }
    }

    #[test]
    fn technicians_hear_who_joins_and_leaves_but_not_about_themselves() {
        let carol = p("carol", 1, DesktopPermission::Control);
        let bob = p("bob", 2, DesktopPermission::ViewOnly);
        // Joining a session someone is already in.
        assert_eq!(
            arrivals(&[], &[bob.clone(), carol.clone()], "carol"),
            vec!["bob is in the session (may view the desktop)"]
        );
        assert!(arrivals(&[], std::slice::from_ref(&carol), "carol").is_empty());
        assert_eq!(
            arrivals(
                std::slice::from_ref(&carol),
                &[carol.clone(), bob.clone()],
                "carol"
            ),
            vec!["bob joined the session (may view the desktop)"]
        );
        assert_eq!(
            arrivals(
                &[carol.clone(), bob.clone()],
                std::slice::from_ref(&carol),
                "carol"
            ),
            vec!["bob left the session"]
        );
        // A hostile name is shown escaped, not interpreted by the terminal.
        let evil = p("x\u{1b}]0;pwned\u{7}", 3, DesktopPermission::Control);
        let lines = arrivals(
            std::slice::from_ref(&carol),
            &[carol.clone(), evil],
            "carol",
        );
        assert_eq!(lines.len(), 1);
        assert!(
            !lines[0].contains('\u{1b}') && !lines[0].contains('\u{7}'),
            "{lines:?}"
        );
    }

    fn session(spec: serde_json::Value, effective: Option<&str>) -> RemoteSession {
        let mut s: RemoteSession = serde_json::from_value(serde_json::json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "RemoteSession",
            "metadata": {"name": "s"}, "spec": spec,
        }))
        .unwrap();
        if let Some(mode) = effective {
            s.status =
                Some(serde_json::from_value(serde_json::json!({"effectiveMode": mode})).unwrap());
        }
        s
    }

    #[test]
    fn only_interactive_sessions_wait_for_the_user() {
        let unattended = session(
            serde_json::json!({"device": "d", "mode": "Unattended"}),
            None,
        );
        let message = waiting_message(Some(&unattended));
        assert!(!message.contains("user on the device"), "{message}");
        assert!(message.contains("unattended"), "{message}");
        let recorded = session(
            serde_json::json!({"device": "d", "mode": "Unattended", "recording": "Required"}),
            None,
        );
        assert!(waiting_message(Some(&recorded)).contains("recording"));
        // A Dynamic session resolved to unattended is unattended too.
        let dynamic = session(
            serde_json::json!({"device": "d", "mode": "Dynamic"}),
            Some("Unattended"),
        );
        assert!(!waiting_message(Some(&dynamic)).contains("user on the device"));
        // Positive control: an interactive session asks the user.
        let interactive = session(
            serde_json::json!({"device": "d", "mode": "Interactive"}),
            None,
        );
        assert!(waiting_message(Some(&interactive)).contains("user on the device to allow"));
        let resolved = session(
            serde_json::json!({"device": "d", "mode": "Dynamic"}),
            Some("Interactive"),
        );
        assert!(waiting_message(Some(&resolved)).contains("user on the device to allow"));
    }
}

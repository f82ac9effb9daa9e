//! Joining a session as a technician: read the session's access Secret with the caller's own
//! kubeconfig (so RBAC decides who may connect), dial the relay it names, present the token,
//! wait for the user's consent, and follow the countdown.

use std::io::Write;
use std::time::Duration;

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use tether_crds::RemoteSession;
use tether_proto::message::{
    Attach, AttachReply, Control, Hello, HelloReply, PROTOCOL_VERSION, Role, SessionInfo,
};
use tether_transport::{Connection, Dial, FrameReader, FrameWriter, Prefer, framed, tls};
use tokio::sync::mpsc;

use crate::client::{GlobalArgs, connect as kube_connect, explain};

/// Flags for commands that connect to a session.
#[derive(Clone, Debug, clap::Args)]
pub struct ConnectArgs {
    /// Dial this relay instead of the one in the access Secret (`host:port`).
    #[arg(long, global = true)]
    pub relay: Option<String>,
    /// Transport: auto (QUIC, then TCP), quic or tcp.
    #[arg(long, global = true, default_value = "auto", value_parser = ["auto", "quic", "tcp"])]
    pub transport: String,
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
    _tasks: tokio::task::JoinSet<()>,
}

fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
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
    for conn in open {
        conn.close_and_flush("kubectl-tether done").await;
    }
}

/// Joins session `name`.
pub async fn join(global: &GlobalArgs, args: &ConnectArgs, name: &str) -> Result<Joined> {
    let conn = kube_connect(global).await?;
    let ns = &conn.namespace;
    let secret_name = format!("{name}-access");
    let secrets: Api<Secret> = Api::namespaced(conn.client.clone(), ns);
    let secret = match secrets.get_opt(&secret_name).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            let sessions: Api<RemoteSession> = Api::namespaced(conn.client.clone(), ns);
            let session = sessions
                .get_opt(name)
                .await
                .map_err(|e| explain(e, &format!("read RemoteSession {name}")))?;
            match session.and_then(|s| s.status) {
                None => bail!("RemoteSession {name} not found in namespace {ns}"),
                Some(st) => match st.phase {
                    Some(p) if p.is_terminal() => bail!("RemoteSession {name} has ended ({p})"),
                    Some(tether_crds::SessionPhase::Scheduled) => bail!(
                        "RemoteSession {name} has not started; its window opens at {}",
                        st.scheduled_start
                            .map(|t| t.0.to_string())
                            .unwrap_or_default()
                    ),
                    _ => bail!(
                        "RemoteSession {name} has no credentials yet; is tether-operator running?"
                    ),
                },
            }
        }
        Err(kube::Error::Api(e)) if e.code == 403 => bail!(
            "you may not connect to RemoteSession {name}: reading Secret {secret_name} in namespace {ns} is not allowed (the tether-technician role grants it)"
        ),
        Err(e) => return Err(explain(e, &format!("read Secret {secret_name}"))),
    };
    let token = secret_text(&secret, "token")
        .ok_or_else(|| anyhow::anyhow!("Secret {secret_name} has no token"))?;
    let ca = secret_text(&secret, "ca.crt")
        .ok_or_else(|| anyhow::anyhow!("Secret {secret_name} has no ca.crt"))?;
    let relay = match (&args.relay, secret_text(&secret, "relay")) {
        (Some(r), _) => r.clone(),
        (None, Some(r)) if !r.is_empty() => r,
        _ => bail!(
            "the cluster has no relay address for RemoteSession {name}; pass --relay host:port"
        ),
    };
    let technician = crate::client::whoami(&conn.client)
        .await
        .unwrap_or_else(|_| std::env::var("USER").unwrap_or_else(|_| "technician".into()));
    let dial = Dial {
        relay: relay.clone(),
        tls: tls::client_config(&ca, None)?,
        prefer: match args.transport.as_str() {
            "quic" => Prefer::Quic,
            "tcp" => Prefer::Tcp,
            _ => Prefer::Auto,
        },
        quic_timeout: Duration::from_secs(3),
        proxy: std::env::var("HTTPS_PROXY").ok().filter(|p| !p.is_empty()),
    };
    let relay_conn = dial.connect().await?;
    remember(&relay_conn);
    let (mut reader, mut writer) = framed(relay_conn.open().await?);
    writer
        .message(&Hello {
            versions: vec![PROTOCOL_VERSION],
            role: Role::Technician,
            token: Some(token),
            agent: None,
            enroll: None,
            client: format!("kubectl-tether/{}", env!("CARGO_PKG_VERSION")),
            technician: Some(technician),
        })
        .await?;
    let waiting = tokio::spawn(async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!("tether: waiting for the user on the device to allow the session…");
    });
    let reply = reader.message::<HelloReply>().await;
    waiting.abort();
    let session = match reply? {
        HelloReply::Welcome(w) => w
            .session
            .ok_or_else(|| anyhow::anyhow!("the relay did not describe the session"))?,
        HelloReply::Refused(r) => bail!("the relay refused the connection: {}", r.message),
    };

    let (control_tx, mut control_rx) = mpsc::channel::<Control>(16);
    let (ended_tx, ended_rx) = tokio::sync::watch::channel(None);
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
                }
                Ok(Control::Ended { reason, .. }) => {
                    eprintln!("tether: the session ended ({reason})");
                    let _ = ended_tx.send(Some(reason));
                    break;
                }
                Ok(Control::Goodbye { reason }) => {
                    eprintln!("tether: {reason}");
                    let _ = ended_tx.send(Some(reason));
                    break;
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = ended_tx.send(Some("the connection closed".into()));
                    break;
                }
            }
        }
    });
    let _ = std::io::stderr().flush();
    Ok(Joined {
        conn: relay_conn,
        session,
        control: control_tx,
        ended: ended_rx,
        _tasks: tasks,
    })
}

impl Joined {
    /// Opens a channel.
    pub async fn attach(&self, attach: Attach) -> Result<(FrameReader, FrameWriter)> {
        let (mut reader, mut writer) = framed(self.conn.open().await?);
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

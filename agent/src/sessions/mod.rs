//! The remote sessions live on this device, as the relay reports them to the running agent
//! (a technician consented to, a channel opened, the countdown, the end), and what the device's
//! user is told about them.
//!
//! The running agent keeps them in memory and mirrors them to `<state>/sessions.json`, which
//! the user's own commands read: `tether-agent status` lists them, `tether-agent end` names the
//! one to end, `tether-agent say` addresses a message to one. Notices ("carol joined…", "ends in
//! 5 minutes", "ended") go to the chat log and, with the terminal consent provider, to the
//! terminal the agent runs in. Every name in them comes from elsewhere and is shown escaped.
//!
//! Chat from the device belongs to a session: the outbox holds each message with the session
//! it was written for, every chat channel open on that session gets a copy, and a message
//! nobody has read yet is held for that session only — dropped, and the user told, when the
//! session ends. A message written while no session was open goes to the next session that
//! opens within [`HOLD_UNADDRESSED`], or is dropped with a notice.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tether_proto::text::escape_short;
use tokio::sync::mpsc;
use tracing::warn;

use crate::channels::chat::{self, Outgoing};

mod notices;

/// How long a message written while no session was open waits for the next one.
pub const HOLD_UNADDRESSED: Duration = Duration::from_secs(600);

/// The longest a name is shown in a notice or a status line.
const NAME_SHOWN: usize = 64;

/// One live session, as the user's commands see it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LiveSession {
    /// The RemoteSession's uid.
    pub uid: String,
    /// Its name (empty when the agent learned of it from a channel only).
    #[serde(default)]
    pub name: String,
    /// Its namespace.
    #[serde(default)]
    pub namespace: String,
    /// When the relay closes it (Unix seconds; 0 when unknown).
    #[serde(default)]
    pub ends_at: i64,
    /// The technicians who joined it, in order.
    #[serde(default)]
    pub technicians: Vec<String>,
    /// When the agent learned of it (Unix seconds).
    #[serde(default)]
    pub since: i64,
}

impl LiveSession {
    /// The name to show: the session's name, or its uid when the name is unknown.
    pub fn shown(&self) -> String {
        escape_short(
            if self.name.is_empty() {
                &self.uid
            } else {
                &self.name
            },
            NAME_SHOWN,
        )
    }

    /// The technicians, escaped, comma-separated.
    pub fn technicians_shown(&self) -> String {
        if self.technicians.is_empty() {
            return "-".into();
        }
        self.technicians
            .iter()
            .map(|t| escape_short(t, NAME_SHOWN))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn matches(&self, wanted: &str) -> bool {
        self.name == wanted || self.uid == wanted
    }
}

/// `<state>/sessions.json`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// The agent that wrote it.
    pub agent_pid: u32,
    /// Its live sessions.
    pub sessions: Vec<LiveSession>,
}

/// The snapshot file in `dir`.
pub fn snapshot_file(dir: &Path) -> PathBuf {
    dir.join("sessions.json")
}

/// The sessions live now, from the running agent's snapshot: none when no agent runs (its
/// process is gone) or the snapshot is unreadable; sessions past their end are left out.
pub fn read_live(dir: &Path, now: i64) -> Vec<LiveSession> {
    let Ok(text) = std::fs::read(snapshot_file(dir)) else {
        return Vec::new();
    };
    let Ok(snapshot) = serde_json::from_slice::<Snapshot>(&text) else {
        return Vec::new();
    };
    if !Path::new(&format!("/proc/{}", snapshot.agent_pid)).exists() {
        return Vec::new();
    }
    snapshot
        .sessions
        .into_iter()
        .filter(|s| s.ends_at == 0 || s.ends_at > now)
        .collect()
}

/// Why a user's command could not pick a session.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PickError {
    /// No session is live.
    #[error("no remote session is open on this device")]
    NoneLive,
    /// The named session is not live.
    #[error("no remote session named {wanted} is open; open: {open}")]
    NotFound {
        /// The name asked for (escaped).
        wanted: String,
        /// The live sessions (escaped).
        open: String,
    },
    /// Several are live and none was named.
    #[error("several remote sessions are open ({open}); name one")]
    Ambiguous {
        /// The live sessions and their technicians (escaped).
        open: String,
    },
}

fn listing(live: &[LiveSession]) -> String {
    live.iter()
        .map(|s| format!("{} with {}", s.shown(), s.technicians_shown()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The session a user's command is for: the one named (by name or uid), or the only one
/// live. Several live and none named is refused with the list, never guessed.
pub fn pick<'a>(
    live: &'a [LiveSession],
    wanted: Option<&str>,
) -> Result<&'a LiveSession, PickError> {
    match wanted {
        Some(w) => live.iter().find(|s| s.matches(w)).ok_or_else(|| {
            if live.is_empty() {
                PickError::NoneLive
            } else {
                PickError::NotFound {
                    wanted: escape_short(w, NAME_SHOWN),
                    open: listing(live),
                }
            }
        }),
        None => match live {
            [] => Err(PickError::NoneLive),
            [only] => Ok(only),
            several => Err(PickError::Ambiguous {
                open: listing(several),
            }),
        },
    }
}

/// A request left by `tether-agent end` in the control directory: the uid of the session to
/// end. (An empty file, from an older `tether-agent end`, means "the only live session".)
pub fn request_end(control_dir: &Path, uid: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(control_dir)?;
    let name = format!("end-{}", jiff::Timestamp::now().as_nanosecond());
    let tmp = control_dir.join(format!(".{name}"));
    std::fs::write(&tmp, uid)?;
    std::fs::rename(&tmp, control_dir.join(name))
}

/// "54m", "2h05m", "45s".
pub fn human_left(seconds: i64) -> String {
    match seconds.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

struct Subscriber {
    id: u64,
    tx: mpsc::UnboundedSender<Outgoing>,
}

#[derive(Default)]
struct Inner {
    sessions: BTreeMap<String, LiveSession>,
    subscribers: HashMap<String, Vec<Subscriber>>,
    next_id: u64,
    terminal: bool,
}

/// The running agent's live sessions and the chat channels listening on them. Cheap to
/// clone; every clone is the same registry.
#[derive(Clone)]
pub struct Sessions {
    dir: PathBuf,
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// A chat channel's subscription to its session's messages; ends when dropped.
pub struct Subscription {
    /// The device's messages for this session, in order.
    pub messages: mpsc::UnboundedReceiver<Outgoing>,
    uid: String,
    id: u64,
    sessions: Sessions,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut inner = self.sessions.lock();
        if let Some(list) = inner.subscribers.get_mut(&self.uid) {
            list.retain(|s| s.id != self.id);
        }
    }
}

impl Sessions {
    /// An empty registry for the state directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            inner: Arc::default(),
        }
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A live session, as the user's commands see it.
    pub fn get(&self, session_uid: &str) -> Option<LiveSession> {
        self.lock().sessions.get(session_uid).cloned()
    }

    /// again. Held messages stay.
    pub fn disconnected(&self) {
        let mut inner = self.lock();
        inner.sessions.clear();
        inner.subscribers.clear();
        self.save(&inner);
    }

    /// The sessions the user asked to end with `tether-agent end` since the last call (their
    /// uids); each request is consumed.
    pub fn take_end_requests(&self, control_dir: &Path) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(control_dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
            })
            .collect();
        files.sort();
        let inner = self.lock();
        let mut out = Vec::new();
        for file in files {
            let wanted = std::fs::read_to_string(&file).unwrap_or_default();
            let _ = std::fs::remove_file(&file);
            let wanted = wanted.trim();
            let live: Vec<LiveSession> = inner.sessions.values().cloned().collect();
            match pick(&live, (!wanted.is_empty()).then_some(wanted)) {
                Ok(s) if !out.contains(&s.uid) => out.push(s.uid.clone()),
                Ok(_) => {}
                Err(e) => self.notice(inner.terminal, &format!("Nothing was ended: {e}")),
            }
        }
        out
    }

    /// Subscribes a chat channel to the device's messages for `session_uid`.
    pub fn subscribe(&self, session_uid: &str) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner
            .subscribers
            .entry(session_uid.to_owned())
            .or_default()
            .push(Subscriber { id, tx });
        Subscription {
            messages: rx,
            uid: session_uid.to_owned(),
            id,
            sessions: self.clone(),
        }
    }

    /// Delivers the outbox: every message for a session with chat channels open goes to each
    /// of them and leaves the outbox; the others wait for their session, or expire.
    pub fn pump(&self) {
        let mut inner = self.lock();
        self.claim_unaddressed(&mut inner);
        let now = now();
        for (path, queued) in chat::queued(&self.dir) {
            let Some(uid) = queued.session.clone() else {
                continue;
            };
            let listeners = inner
                .subscribers
                .get_mut(&uid)
                .map(|list| {
                    list.retain(|s| s.tx.send(queued.item.clone()).is_ok());
                    list.len()
                })
                .unwrap_or(0);
            if listeners > 0 {
                let _ = std::fs::remove_file(&path);
            } else if !inner.sessions.contains_key(&uid)
                && queued.ends_at > 0
                && queued.ends_at <= now
            {
                // Written for a session this agent never saw end (it was offline then).
                self.drop_item(inner.terminal, &path, &queued, "its remote session is over");
            }
        }
    }

    /// Gives messages written while no session was open to the session that opened since
    /// (the oldest such), and drops those that waited too long.
    fn claim_unaddressed(&self, inner: &mut Inner) {
        let now_s = now();
        for (path, mut queued) in chat::queued(&self.dir) {
            if queued.session.is_some() {
                continue;
            }
            if now_s - queued.queued_at > HOLD_UNADDRESSED.as_secs() as i64 {
                self.drop_item(
                    inner.terminal,
                    &path,
                    &queued,
                    "no remote session opened in time",
                );
                continue;
            }
            let target = inner
                .sessions
                .values()
                .filter(|s| s.since >= queued.queued_at)
                .min_by_key(|s| s.since)
                .or_else(|| {
                    let mut all = inner.sessions.values();
                    match (all.next(), all.next()) {
                        (Some(only), None) => Some(only),
                        _ => None,
                    }
                });
            if let Some(target) = target {
                queued.session = Some(target.uid.clone());
                queued.session_name = Some(target.name.clone());
                queued.ends_at = target.ends_at;
                if let Err(e) = chat::rewrite(&path, &queued) {
                    warn!(error = %e, "Failed to address a held chat message");
                }
            }
        }
    }

    fn save(&self, inner: &Inner) {
        let snapshot = Snapshot {
            agent_pid: std::process::id(),
            sessions: inner.sessions.values().cloned().collect(),
        };
        let written = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let file = snapshot_file(&self.dir);
            let tmp = self.dir.join(".sessions.json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&snapshot)?)?;
            std::fs::rename(tmp, file)
        })();
        if let Err(e) = written {
            warn!(error = %e, "Failed to write the live sessions for the user's commands");
        }
    }
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

#[cfg(test)]
mod tests;

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
use tether_proto::message::SessionInfo;
use tether_proto::text::escape_short;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::channels::chat::{self, Outgoing, Queued};

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

    /// Also write notices to the terminal (`/dev/tty`) the agent runs in: with the terminal
    /// consent provider, that is where the user is.
    pub fn notify_terminal(&self, on: bool) {
        self.lock().terminal = on;
    }

    /// The user consented to `technician` joining `session` (or consent was not needed).
    pub fn consented(&self, session: &SessionInfo, technician: &str) {
        let mut inner = self.lock();
        let live = inner
            .sessions
            .entry(session.uid.clone())
            .or_insert_with(|| LiveSession {
                uid: session.uid.clone(),
                name: String::new(),
                namespace: String::new(),
                ends_at: 0,
                technicians: Vec::new(),
                since: now(),
            });
        live.name.clone_from(&session.name);
        live.namespace.clone_from(&session.namespace);
        live.ends_at = session.ends_at;
        self.joined(&mut inner, &session.uid, technician);
    }

    /// The relay opened a channel of `session_uid` for `technician`.
    pub fn opened(&self, session_uid: &str, technician: &str) {
        let mut inner = self.lock();
        inner
            .sessions
            .entry(session_uid.to_owned())
            .or_insert_with(|| LiveSession {
                uid: session_uid.to_owned(),
                name: String::new(),
                namespace: String::new(),
                ends_at: 0,
                technicians: Vec::new(),
                since: now(),
            });
        self.joined(&mut inner, session_uid, technician);
    }

    fn joined(&self, inner: &mut Inner, uid: &str, technician: &str) {
        let Some(live) = inner.sessions.get_mut(uid) else {
            return;
        };
        let new = !live.technicians.iter().any(|t| t == technician);
        if new {
            live.technicians.push(technician.to_owned());
            let ends = if live.ends_at > 0 {
                format!("; it ends in {}", human_left(live.ends_at - now()))
            } else {
                String::new()
            };
            let text = format!(
                "{} joined remote session {}{ends}",
                escape_short(technician, NAME_SHOWN),
                live.shown()
            );
            self.notice(inner.terminal, &text);
        }
        self.claim_unaddressed(inner);
        self.save(inner);
    }

    /// A live session, as the user's commands see it.
    pub fn get(&self, session_uid: &str) -> Option<LiveSession> {
        self.lock().sessions.get(session_uid).cloned()
    }

    /// The relay says `session_uid` ends in `seconds_left`.
    pub fn countdown(&self, session_uid: &str, seconds_left: i64) {
        let mut inner = self.lock();
        // A session the agent learned of from a channel only learns its end here.
        if let Some(live) = inner.sessions.get_mut(session_uid)
            && live.ends_at == 0
        {
            live.ends_at = now() + seconds_left;
        }
        let shown = inner
            .sessions
            .get(session_uid)
            .map_or_else(|| escape_short(session_uid, NAME_SHOWN), LiveSession::shown);
        self.notice(
            inner.terminal,
            &format!(
                "Remote session {shown} ends in {}",
                human_left(seconds_left)
            ),
        );
    }

    /// The relay says `session_uid` is over: it is forgotten, its chat channels end, and the
    /// messages held for it are dropped (the user is told which).
    pub fn ended(&self, session_uid: &str, reason: &str) {
        let mut inner = self.lock();
        let shown = inner
            .sessions
            .remove(session_uid)
            .map_or_else(|| escape_short(session_uid, NAME_SHOWN), |s| s.shown());
        inner.subscribers.remove(session_uid);
        self.notice(
            inner.terminal,
            &format!(
                "Remote session {shown} ended ({})",
                escape_short(reason, NAME_SHOWN)
            ),
        );
        for (path, queued) in chat::queued(&self.dir) {
            if queued.session.as_deref() == Some(session_uid) {
                self.drop_item(
                    inner.terminal,
                    &path,
                    &queued,
                    &format!("remote session {shown} ended before a technician read it"),
                );
            }
        }
        self.save(&inner);
    }

    /// The relay connection is gone: no session is known to be live until the relay says so
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

    fn drop_item(&self, terminal: bool, path: &Path, queued: &Queued, why: &str) {
        let _ = std::fs::remove_file(path);
        let what = match &queued.item {
            Outgoing::Text { text } => format!("message \"{}\"", escape_short(text, 80)),
            Outgoing::File { path } => format!(
                "file {}",
                escape_short(&path.display().to_string(), NAME_SHOWN * 2)
            ),
        };
        self.notice(terminal, &format!("Your {what} was not delivered: {why}"));
    }

    /// Tells the user: the agent's log, the chat log, and the terminal when there is one.
    fn notice(&self, terminal: bool, text: &str) {
        info!(notice = %text, "Told the user");
        let line = serde_json::json!({"at": jiff::Timestamp::now().to_string(), "notice": text});
        let appended = std::fs::create_dir_all(&self.dir).and_then(|()| {
            use std::io::Write;
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("chat.log"))?;
            log.write_all(format!("{line}\n").as_bytes())
        });
        if let Err(e) = appended {
            warn!(error = %e, "Failed to write a notice to the chat log");
        }
        if terminal && let Ok(mut tty) = std::fs::OpenOptions::new().write(true).open("/dev/tty") {
            use std::io::Write;
            let _ = writeln!(tty, "\r\n[tether] {text}\r");
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
mod tests {
    use super::*;

    fn info(uid: &str, name: &str, ends_in: i64) -> SessionInfo {
        SessionInfo {
            uid: uid.into(),
            namespace: "kiosks".into(),
            name: name.into(),
            device: "kiosk".into(),
            ends_at: now() + ends_in,
            permissions: tether_proto::token::Permissions {
                desktop: tether_proto::token::DesktopPermission::None,
                shell: false,
                files: false,
                chat: true,
                processes: false,
                clipboard: Default::default(),
            },
        }
    }

    fn say(dir: &Path, to: Option<&LiveSession>, text: &str) {
        chat::enqueue(dir, to, &Outgoing::Text { text: text.into() }).unwrap();
    }

    fn texts(sub: &mut Subscription) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Outgoing::Text { text }) = sub.messages.try_recv() {
            out.push(text);
        }
        out
    }

    fn chat_log(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("chat.log")).unwrap_or_default()
    }

    #[test]
    fn picking_a_session_never_guesses() {
        let a = LiveSession {
            uid: "u-a".into(),
            name: "printer".into(),
            namespace: "ns".into(),
            ends_at: 0,
            technicians: vec!["carol".into()],
            since: 0,
        };
        let mut b = a.clone();
        b.uid = "u-b".into();
        b.name = "wifi".into();
        b.technicians = vec!["dave\n\u{1b}[2J".into()];
        assert_eq!(pick(&[], None), Err(PickError::NoneLive));
        assert_eq!(pick(std::slice::from_ref(&a), None).unwrap().uid, "u-a");
        let both = [a.clone(), b.clone()];
        let e = pick(&both, None).unwrap_err();
        let shown = e.to_string();
        assert!(shown.contains("printer with carol"), "{shown}");
        assert!(shown.contains("wifi with dave\\n\\u{1b}[2J"), "{shown}");
        assert_eq!(pick(&both, Some("wifi")).unwrap().uid, "u-b");
        assert_eq!(pick(&both, Some("u-a")).unwrap().uid, "u-a");
        assert!(matches!(
            pick(&both, Some("nope")),
            Err(PickError::NotFound { .. })
        ));
    }

    #[test]
    fn every_chat_channel_of_the_session_gets_the_message_and_no_other_session_does() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = Sessions::new(dir.path());
        sessions.consented(&info("u-a", "printer", 3600), "carol");
        sessions.consented(&info("u-b", "wifi", 3600), "dave");
        let live = read_live(dir.path(), now());
        assert_eq!(live.len(), 2);
        let mut carol_long = sessions.subscribe("u-a");
        let mut carol_short = sessions.subscribe("u-a");
        let mut dave = sessions.subscribe("u-b");
        say(
            dir.path(),
            Some(pick(&live, Some("printer")).unwrap()),
            "for carol",
        );
        sessions.pump();
        assert_eq!(texts(&mut carol_long), vec!["for carol"]);
        assert_eq!(texts(&mut carol_short), vec!["for carol"]);
        assert!(texts(&mut dave).is_empty());
        // A short-lived channel that went away takes nothing with it.
        drop(carol_short);
        say(
            dir.path(),
            Some(pick(&live, Some("printer")).unwrap()),
            "again",
        );
        sessions.pump();
        assert_eq!(texts(&mut carol_long), vec!["again"]);
        // Positive control: the other session gets its own.
        say(
            dir.path(),
            Some(pick(&live, Some("wifi")).unwrap()),
            "for dave",
        );
        sessions.pump();
        assert_eq!(texts(&mut dave), vec!["for dave"]);
        assert!(texts(&mut carol_long).is_empty());
        assert!(chat::queued(dir.path()).is_empty());
    }

    #[test]
    fn a_held_message_stays_with_its_session_and_is_dropped_when_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = Sessions::new(dir.path());
        sessions.consented(&info("u-a", "printer", 3600), "carol");
        let live = read_live(dir.path(), now());
        say(dir.path(), live.first(), "typed while nobody listened");
        sessions.pump();
        assert_eq!(chat::queued(dir.path()).len(), 1, "held for printer");
        sessions.ended("u-a", "Expired");
        assert!(chat::queued(dir.path()).is_empty());
        let log = chat_log(dir.path());
        assert!(
            log.contains("Your message \\\"typed while nobody listened\\\" was not delivered"),
            "{log}"
        );
        assert!(
            log.contains("Remote session printer ended (Expired)"),
            "{log}"
        );
        // The next session's technician never sees it.
        sessions.consented(&info("u-b", "later", 3600), "dave");
        let mut dave = sessions.subscribe("u-b");
        sessions.pump();
        assert!(texts(&mut dave).is_empty());
        // Positive control: a message held for a live session reaches its first channel.
        let live = read_live(dir.path(), now());
        say(dir.path(), live.first(), "for dave");
        sessions.pump();
        assert_eq!(texts(&mut dave), vec!["for dave"]);
    }

    #[test]
    fn a_message_written_before_any_session_goes_to_the_next_one_only() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = Sessions::new(dir.path());
        say(dir.path(), None, "hi, the printer is stuck");
        sessions.consented(&info("u-a", "printer", 3600), "carol");
        sessions.ended("u-a", "EndedByTechnician");
        assert!(chat::queued(dir.path()).is_empty(), "claimed by printer");
        sessions.consented(&info("u-b", "later", 3600), "dave");
        let mut dave = sessions.subscribe("u-b");
        sessions.pump();
        assert!(texts(&mut dave).is_empty());
        // Positive control: the first session after it does get it.
        sessions.ended("u-b", "Expired");
        say(dir.path(), None, "anyone?");
        sessions.consented(&info("u-c", "third", 3600), "erin");
        let mut erin = sessions.subscribe("u-c");
        sessions.pump();
        assert_eq!(texts(&mut erin), vec!["anyone?"]);
    }

    #[test]
    fn the_user_is_told_who_joined_and_how_long_is_left_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = Sessions::new(dir.path());
        sessions.consented(
            &info("u-a", "printer", 3600),
            "mallory\n{\"notice\":\"forged\"}\u{1b}[2J",
        );
        sessions.opened("u-a", "carol");
        sessions.opened("u-a", "carol");
        sessions.countdown("u-a", 300);
        let log = chat_log(dir.path());
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let notices: Vec<&str> = lines.iter().filter_map(|l| l["notice"].as_str()).collect();
        assert_eq!(notices.len(), 3, "{notices:?}");
        assert!(notices[0].starts_with("mallory\\n{\"notice\":\"forged\"}\\u{1b}[2J joined remote session printer; it ends in"), "{}", notices[0]);
        assert_eq!(
            notices[1].split(';').next(),
            Some("carol joined remote session printer")
        );
        assert_eq!(notices[2], "Remote session printer ends in 5m");
        let live = read_live(dir.path(), now());
        assert_eq!(live[0].technicians.len(), 2);
    }

    #[test]
    fn end_requests_name_one_session() {
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("control");
        let sessions = Sessions::new(dir.path());
        sessions.consented(&info("u-a", "printer", 3600), "carol");
        sessions.consented(&info("u-b", "wifi", 3600), "dave");
        request_end(&control, "u-b").unwrap();
        assert_eq!(sessions.take_end_requests(&control), vec!["u-b"]);
        assert!(sessions.take_end_requests(&control).is_empty(), "consumed");
        // An old-style request names nothing: with two live, nothing is ended.
        std::fs::write(control.join("end-1"), b"").unwrap();
        assert!(sessions.take_end_requests(&control).is_empty());
        assert!(chat_log(dir.path()).contains("Nothing was ended: several remote sessions"));
        // Positive control: with one live, it is that one.
        sessions.ended("u-b", "EndedByUser");
        std::fs::write(control.join("end-2"), b"").unwrap();
        assert_eq!(sessions.take_end_requests(&control), vec!["u-a"]);
    }
}

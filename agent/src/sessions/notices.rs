//! What the device's user is told about their sessions: the hooks the serve loop calls as the
//! relay reports consent, a technician joining, the countdown and the end, and the notices
//! they write to the chat log and the terminal.

use std::path::Path;

use tether_proto::message::SessionInfo;
use tether_proto::text::escape_short;
use tracing::{info, warn};

use super::{Inner, LiveSession, NAME_SHOWN, Sessions, human_left, now};
use crate::channels::chat::{self, Outgoing, Queued};

impl Sessions {
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
    pub(super) fn drop_item(&self, terminal: bool, path: &Path, queued: &Queued, why: &str) {
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
    pub(super) fn notice(&self, terminal: bool, text: &str) {
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
}

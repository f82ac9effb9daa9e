//! Where things live in the store, under the configured prefix:
//!
//! ```text
//! sessions/<namespace>/<session>/<uid>/<recording>.manifest.json   what a recording holds
//! sessions/<namespace>/<session>/<uid>/<recording>.events.jsonl    control, files, chat, processes
//! sessions/<namespace>/<session>/<uid>/<recording>.shell-<n>.cast  one per shell channel
//! sessions/<namespace>/<session>/<uid>/legal-hold                  present while on legal hold
//! uploads/<namespace>/<session>/<uid>/<object>/journal.json        an upload in progress
//! uploads/<namespace>/<session>/<uid>/<object>/tail-<parts>        its bytes not yet in a part
//! uploads/<namespace>/<session>/<uid>/<object>/data                its parts (local filesystem)
//! ```
//!
//! A recording is what one relay recorded of one session; a session that moved relays (or
//! outlived a relay restart) has several. Recording ids sort by start time.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Prefix of finished objects.
pub const SESSIONS: &str = "sessions";
/// Prefix of uploads in progress.
pub const UPLOADS: &str = "uploads";
/// A key that never exists, listed to check the store answers.
pub const PROBE: &str = "probe";
/// The legal-hold marker's name in a session's directory.
pub const LEGAL_HOLD: &str = "legal-hold";

/// The session a recording belongs to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct SessionRef {
    /// Namespace.
    pub namespace: String,
    /// RemoteSession name.
    pub name: String,
    /// RemoteSession uid (sessions re-created under the same name stay apart).
    pub uid: String,
}

impl SessionRef {
    /// `sessions/<namespace>/<name>/<uid>`.
    pub fn dir(&self) -> String {
        format!("{SESSIONS}/{}/{}/{}", self.namespace, self.name, self.uid)
    }

    /// `uploads/<namespace>/<name>/<uid>`.
    pub fn uploads(&self) -> String {
        format!("{UPLOADS}/{}/{}/{}", self.namespace, self.name, self.uid)
    }

    /// The session's directory for one namespace's listing: `sessions/<namespace>`.
    pub fn namespace_dir(namespace: &str) -> String {
        format!("{SESSIONS}/{namespace}")
    }

    /// Parses `sessions/<namespace>/<name>/<uid>/…` (relative to the prefix).
    pub fn from_key(relative: &str) -> Option<(Self, String)> {
        let mut parts = relative.splitn(5, '/');
        let (root, namespace, name, uid, rest) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next().unwrap_or_default(),
        );
        (root == SESSIONS || root == UPLOADS).then(|| {
            (
                Self {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    uid: uid.to_owned(),
                },
                rest.to_owned(),
            )
        })
    }
}

/// A fresh recording id: its start time (sortable) and a random suffix.
pub fn recording_id(now: Timestamp) -> String {
    let suffix: u32 = rand_suffix();
    format!(
        "{}{:03}Z-{suffix:08x}",
        now.strftime("%Y%m%dT%H%M%S"),
        now.subsec_millisecond()
    )
}

fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    // A per-process random seed mixed with a counter: unique enough for ids that also carry
    // the millisecond they started.
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.finish() as u32
}

/// The file name of a recording's manifest.
pub fn manifest_name(recording: &str) -> String {
    format!("{recording}.manifest.json")
}

/// The recording id of a manifest's file name.
pub fn recording_of_manifest(name: &str) -> Option<&str> {
    name.strip_suffix(".manifest.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let s = SessionRef {
            namespace: "helpdesk".into(),
            name: "printer".into(),
            uid: "1234".into(),
        };
        assert_eq!(s.dir(), "sessions/helpdesk/printer/1234");
        let (back, rest) = SessionRef::from_key("sessions/helpdesk/printer/1234/a.cast").unwrap();
        assert_eq!((back, rest.as_str()), (s.clone(), "a.cast"));
        let (back, rest) =
            SessionRef::from_key("uploads/helpdesk/printer/1234/a.cast/journal.json").unwrap();
        assert_eq!((back, rest.as_str()), (s, "a.cast/journal.json"));
        assert!(SessionRef::from_key("other/x/y/z").is_none());
    }

    #[test]
    fn recording_ids_sort_by_time_and_differ() {
        let t: Timestamp = "2026-11-22T18:00:00.123Z".parse().unwrap();
        let a = recording_id(t);
        let b = recording_id(t);
        assert!(a.starts_with("20261122T180000123Z-"), "{a}");
        assert_ne!(a, b);
        let later = recording_id("2026-11-22T18:00:01Z".parse().unwrap());
        assert!(later > a);
        assert_eq!(recording_of_manifest(&manifest_name(&a)), Some(a.as_str()));
    }
}

//! A recording's manifest: which session, device and technicians, when, and every object
//! with its size and SHA-256. Written when the recording starts (state `Recording`) and
//! rewritten when it ends; object stores cannot attach a checksum known only at the end of a
//! streamed upload to the object itself, so the manifest carries it.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::layout::SessionRef;

/// What an object holds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub enum ObjectKind {
    /// JSON-lines events.
    Events,
    /// A shell channel as asciicast v2.
    Shell,
    /// A desktop channel as a timestamped RFB stream.
    Desktop,
}

impl ObjectKind {
    /// The kind as written in names and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::Shell => "shell",
            Self::Desktop => "desktop",
        }
    }
}

/// State of a recording.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Being written.
    Recording,
    /// Finished normally.
    Complete,
    /// Finished after a relay crash: everything up to the last flush is there.
    Recovered,
    /// Recording stopped on a storage error; what was written is there.
    Failed,
}

impl State {
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recording => "Recording",
            Self::Complete => "Complete",
            Self::Recovered => "Recovered",
            Self::Failed => "Failed",
        }
    }
}

/// One object of a recording.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectEntry {
    /// File name within the session's directory.
    pub name: String,
    /// What it holds.
    pub kind: ObjectKind,
    /// The channel it records, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<u64>,
    /// Who opened that channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub technician: Option<String>,
    /// Size in bytes (once finished).
    #[serde(default)]
    pub bytes: u64,
    /// SHA-256 (hex) of the whole object (once finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
}

/// A recording's manifest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The recording id.
    pub id: String,
    /// The session.
    pub session: SessionRef,
    /// The device.
    pub device: String,
    /// The relay that recorded it.
    pub relay: String,
    /// Technicians who joined.
    #[serde(default)]
    pub technicians: Vec<String>,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    /// Its state.
    pub state: State,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its objects.
    #[serde(default)]
    pub objects: Vec<ObjectEntry>,
}

impl Manifest {
    /// Total bytes of the objects.
    pub fn bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.bytes).sum()
    }

    /// How long it lasted (so far, for one still recording).
    pub fn duration(&self, now: Timestamp) -> jiff::SignedDuration {
        self.ended_at.unwrap_or(now).duration_since(self.started_at)
    }
}

//! The JSON-lines event log of a recording: everything that is not terminal output — who
//! connected, consent, countdown and end, file operations and transfers (with sizes and the
//! SHA-256 the relay computed over the bytes it relayed), chat and process actions.
//!
//! Each line is one [`Event`]: `{"time": "...", "event": "fileTransfer", ...}`.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// One line of the event log.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// When it happened.
    pub time: Timestamp,
    /// What happened.
    #[serde(flatten)]
    pub what: What,
}

impl Event {
    /// An event happening now.
    pub fn now(what: What) -> Self {
        Self {
            time: Timestamp::now(),
            what,
        }
    }

    /// The event as one line, newline included.
    pub fn line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// Direction of a file transfer.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Direction {
    /// Technician to device.
    Upload,
    /// Device to technician.
    Download,
}

/// What happened.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(
    tag = "event",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum What {
    /// The recording started.
    RecordingStarted {
        /// The device.
        device: String,
        /// The relay recording it.
        relay: String,
    },
    /// A technician joined.
    TechnicianJoined {
        /// Who.
        technician: String,
        /// `quic` or `tcp`.
        transport: String,
    },
    /// A technician left.
    TechnicianLeft {
        /// Who.
        technician: String,
    },
    /// The user was asked to consent.
    ConsentAsked {
        /// For whom.
        technician: String,
    },
    /// The user answered (or the prompt timed out).
    ConsentAnswered {
        /// Whether the user agreed.
        granted: bool,
        /// The provider's reason.
        reason: String,
    },
    /// The end is near.
    Countdown {
        /// Seconds left.
        seconds_left: i64,
    },
    /// A channel opened.
    ChannelOpened {
        /// Channel id.
        channel: u64,
        /// `shell`, `files`, `chat`, `processes`, `desktop`.
        kind: String,
        /// Who opened it.
        technician: String,
        /// The object recording it, when it has its own (shell, desktop).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        object: Option<String>,
        /// The command run (shell), if not a login shell.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        command: Option<String>,
    },
    /// A channel closed.
    ChannelClosed {
        /// Channel id.
        channel: u64,
        /// A shell's exit status, when it reported one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit: Option<String>,
    },
    /// A file-manager operation (not a transfer).
    FileOperation {
        /// Channel id.
        channel: u64,
        /// Who.
        technician: String,
        /// `list`, `stat`, `rename`, `move`, `copy`, `delete`, `mkdir`, `zip`, `find`, `roots`.
        op: String,
        /// The paths involved.
        paths: Vec<String>,
        /// `ok`, or the error the device reported.
        outcome: String,
    },
    /// A file transfer through the file manager or chat.
    FileTransfer {
        /// Channel id.
        channel: u64,
        /// Who sent it (a technician, or the device's user for chat files).
        from: String,
        /// Which way.
        direction: Direction,
        /// The remote path (file manager) or file name (chat).
        path: String,
        /// Bytes relayed.
        size: u64,
        /// SHA-256 (hex) of the bytes relayed, computed by the relay.
        sha256: String,
        /// Whether it ended as announced (the receiver confirmed size and checksum).
        complete: bool,
        /// The receiver's error, if it refused the transfer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Clipboard text the technician sent to the device on a desktop channel (its content
    /// is never recorded).
    Clipboard {
        /// Channel id.
        channel: u64,
        /// Who sent it.
        from: String,
        /// Which way.
        direction: Direction,
        /// Bytes (for Extended Clipboard: of the compressed payload).
        size: u64,
        /// SHA-256 (hex) of those bytes.
        sha256: String,
    },
    /// A chat message.
    ChatMessage {
        /// Channel id.
        channel: u64,
        /// Who wrote it.
        from: String,
        /// The text.
        text: String,
    },
    /// The process list was read.
    ProcessList {
        /// Channel id.
        channel: u64,
        /// Who.
        technician: String,
        /// How many processes it showed.
        count: usize,
    },
    /// A process was signalled.
    ProcessSignal {
        /// Channel id.
        channel: u64,
        /// Who.
        technician: String,
        /// The process.
        pid: i32,
        /// The signal.
        signal: String,
        /// `ok`, or the error.
        outcome: String,
    },
    /// The session ended.
    SessionEnded {
        /// Why (`Expired`, `Terminated`, `EndedByUser`, …).
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_flat_json_lines() {
        let e = Event {
            time: "2026-11-22T18:00:00Z".parse().unwrap(),
            what: What::FileTransfer {
                channel: 4,
                from: "carol".into(),
                direction: Direction::Upload,
                path: "/home/report.pdf".into(),
                size: 3,
                sha256: "ab".into(),
                complete: true,
                error: None,
            },
        };
        let line = e.line();
        assert_eq!(
            line,
            "{\"time\":\"2026-11-22T18:00:00Z\",\"event\":\"fileTransfer\",\"channel\":4,\"from\":\"carol\",\"direction\":\"upload\",\"path\":\"/home/report.pdf\",\"size\":3,\"sha256\":\"ab\",\"complete\":true}\n"
        );
        let back: Event = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(back, e);
    }
}

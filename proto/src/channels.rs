//! Messages of the file manager, chat and process channels.
//!
//! Each file-manager channel carries one request and its answer: the technician sends a
//! [`FileRequest`]; the agent answers with a [`FileResponse`]. Transfers stream the bytes as
//! data frames ended by an end-of-data frame, and both sides check the SHA-256 announced
//! at the end.

use serde::{Deserialize, Serialize};

/// A file-system entry's type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (not followed).
    Symlink,
    /// Anything else (device, socket, FIFO).
    Other,
}

/// A file-system entry, with paths as the technician sees them (relative to a root).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// Path, `/`-separated, starting at a root name (`/home/…`).
    pub path: String,
    /// Type.
    pub kind: EntryKind,
    /// Size in bytes.
    pub size: u64,
    /// Last modification (Unix seconds).
    pub modified: i64,
    /// Unix permission bits.
    pub mode: u32,
}

/// A file-manager request (technician → agent).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum FileRequest {
    /// The roots the technician may browse ("drives").
    Roots,
    /// A directory's entries.
    List {
        /// Directory.
        path: String,
    },
    /// One entry.
    Stat {
        /// Path.
        path: String,
    },
    /// Send a file's bytes.
    Download {
        /// File.
        path: String,
    },
    /// Receive a file's bytes (data frames follow, then end-of-data).
    Upload {
        /// Destination file.
        path: String,
        /// Total size, for progress and a quota check.
        size: u64,
        /// Replace an existing file.
        #[serde(default)]
        overwrite: bool,
        /// Only replace the file if its current SHA-256 is this (the "edit" conflict check).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_sha256: Option<String>,
    },
    /// Rename within a directory.
    Rename {
        /// Existing path.
        from: String,
        /// New path.
        to: String,
    },
    /// Move anywhere within the roots.
    Move {
        /// Existing path.
        from: String,
        /// New path.
        to: String,
    },
    /// Copy a file or directory tree.
    Copy {
        /// Existing path.
        from: String,
        /// New path.
        to: String,
    },
    /// Delete a file, or a directory (with `recursive` if not empty).
    Delete {
        /// Path.
        path: String,
        /// Delete a non-empty directory.
        #[serde(default)]
        recursive: bool,
    },
    /// Create a directory.
    Mkdir {
        /// Path.
        path: String,
        /// Create missing parents.
        #[serde(default)]
        parents: bool,
    },
    /// Pack files and directories into a zip archive.
    Zip {
        /// What to pack.
        paths: Vec<String>,
        /// The archive to create.
        dest: String,
    },
    /// Find entries whose name contains `pattern` (case-insensitive) under `root`.
    Find {
        /// Where to look.
        root: String,
        /// Name substring.
        pattern: String,
        /// At most this many results.
        #[serde(default = "default_max")]
        max: u32,
    },
}

fn default_max() -> u32 {
    1000
}

/// Why a file operation failed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum FileErrorCode {
    /// No such file or directory.
    NotFound,
    /// The path leaves the allowed roots (`..`, a symlink, an absolute path elsewhere).
    OutsideRoots,
    /// The OS refused.
    PermissionDenied,
    /// The destination exists.
    AlreadyExists,
    /// An edited file changed since it was downloaded.
    Conflict,
    /// A directory where a file was expected, or the reverse; a non-empty directory.
    InvalidTarget,
    /// The transfer did not match what was announced.
    Corrupt,
    /// Anything else.
    Io,
}

/// A file-manager answer (agent → technician).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(
    tag = "result",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum FileResponse {
    /// Entries (roots, a listing, find results).
    Entries {
        /// The entries.
        entries: Vec<Entry>,
        /// Whether results were cut at the maximum.
        #[serde(default)]
        truncated: bool,
    },
    /// One entry (stat, or what an operation created).
    Entry {
        /// The entry.
        entry: Entry,
    },
    /// A download starts: `size` bytes follow as data frames, then end-of-data, then
    /// [`FileResponse::Done`].
    Sending {
        /// File size.
        size: u64,
    },
    /// Ready for an upload's data frames.
    Ready,
    /// A transfer finished; `sha256` of what was sent or stored.
    Done {
        /// Bytes transferred.
        size: u64,
        /// SHA-256, hex.
        sha256: String,
    },
    /// The operation failed.
    Error {
        /// Machine-readable code.
        code: FileErrorCode,
        /// Explanation naming the path.
        message: String,
    },
}

/// A chat message or file (both directions).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ChatMessage {
    /// A line of text.
    Text {
        /// Who wrote it.
        from: String,
        /// The text.
        text: String,
    },
    /// A file follows as data frames and end-of-data.
    File {
        /// Who sends it.
        from: String,
        /// File name (no directories).
        name: String,
        /// Size.
        size: u64,
        /// SHA-256, hex.
        sha256: String,
    },
    /// A file was received and stored.
    Received {
        /// File name.
        name: String,
        /// SHA-256 of what arrived.
        sha256: String,
    },
}

/// A message on the desktop channel beside its RFB bytes (which travel as data frames).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum DesktopMessage {
    /// The channel is closing, and why: the relay refused a viewer message, the device has no
    /// display, the session ended. Sent by whoever closes it, to the technician.
    Closed {
        /// Why, for the technician to read.
        reason: String,
    },
}

/// A process-list request (technician → agent).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum ProcessRequest {
    /// List processes.
    List,
    /// Send a signal to a process.
    Kill {
        /// Process id.
        pid: i32,
        /// Signal name (`TERM`, `KILL`, …).
        #[serde(default = "default_signal")]
        signal: String,
    },
}

fn default_signal() -> String {
    "TERM".into()
}

/// One process.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    /// Process id.
    pub pid: i32,
    /// Parent process id.
    pub ppid: i32,
    /// Owner's user name (or uid).
    pub user: String,
    /// Resident memory in KiB.
    pub rss_kib: u64,
    /// Command name.
    pub name: String,
    /// Full command line.
    pub command: String,
}

/// A process-list answer (agent → technician).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(
    tag = "result",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ProcessResponse {
    /// The processes.
    Processes {
        /// The list.
        processes: Vec<Process>,
    },
    /// The signal was sent.
    Signalled,
    /// The request failed.
    Error {
        /// Why.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_with_defaults() {
        let r: FileRequest =
            serde_json::from_str(r#"{"op":"find","root":"/home","pattern":"log"}"#).unwrap();
        assert_eq!(
            r,
            FileRequest::Find {
                root: "/home".into(),
                pattern: "log".into(),
                max: 1000
            }
        );
        let k: ProcessRequest = serde_json::from_str(r#"{"op":"kill","pid":42}"#).unwrap();
        assert_eq!(
            k,
            ProcessRequest::Kill {
                pid: 42,
                signal: "TERM".into()
            }
        );
        let e = FileResponse::Error {
            code: FileErrorCode::OutsideRoots,
            message: "x".into(),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"result":"error","code":"outsideRoots","message":"x"}"#
        );
    }
}

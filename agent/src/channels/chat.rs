//! Chat with the user, both ways, including files. The user's side works without any
//! listening socket: incoming messages are appended to `<state>/chat.log` (and logged), files
//! land in `<state>/inbox/`, and `tether-agent say` / `tether-agent send-file` drop outgoing
//! messages into `<state>/outbox/`, each addressed to the session it was written for. Which
//! channel gets what is decided by [`crate::sessions`]: every chat channel open on the
//! session gets each message; nothing crosses to another session.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tether_proto::channels::ChatMessage;
use tether_proto::frame::{Frame, FrameKind};
use tether_proto::text::escape;
use tether_transport::{FrameReader, FrameWriter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::sessions::{LiveSession, Sessions};

/// An outgoing chat item written by `tether-agent say` or `send-file`.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Outgoing {
    /// A line of text.
    Text {
        /// The text.
        text: String,
    },
    /// A file to send.
    File {
        /// Absolute path on the device.
        path: PathBuf,
    },
}

/// An outbox item: what to send, and for which session.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Queued {
    /// The session's uid; none when no session was open when it was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The session's name, for the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_name: Option<String>,
    /// When the session ends (Unix seconds; 0 when unknown).
    #[serde(default)]
    pub ends_at: i64,
    /// When it was written (Unix seconds).
    #[serde(default)]
    pub queued_at: i64,
    /// The message or file.
    #[serde(flatten)]
    pub item: Outgoing,
}

/// Queues an outgoing item in the state directory's outbox, for `session` (none: the next
/// session to open).
pub fn enqueue(
    state: &Path,
    session: Option<&LiveSession>,
    item: &Outgoing,
) -> anyhow::Result<PathBuf> {
    let dir = state.join("outbox");
    std::fs::create_dir_all(&dir)?;
    let now = jiff::Timestamp::now();
    let name = format!(
        "{:020}-{:08x}.json",
        now.as_nanosecond(),
        rand::random::<u32>()
    );
    let queued = Queued {
        session: session.map(|s| s.uid.clone()),
        session_name: session.map(|s| s.name.clone()),
        ends_at: session.map_or(0, |s| s.ends_at),
        queued_at: now.as_second(),
        item: item.clone(),
    };
    let path = dir.join(name);
    rewrite(&path, &queued)?;
    Ok(path)
}

/// Replaces the outbox item at `path` atomically.
pub fn rewrite(path: &Path, queued: &Queued) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}"));
    std::fs::write(&tmp, serde_json::to_vec(queued)?)?;
    std::fs::rename(&tmp, path)
}

/// The outbox's items, oldest first. Unreadable items are removed (and logged).
pub fn queued(state: &Path) -> Vec<(PathBuf, Queued)> {
    let Ok(entries) = std::fs::read_dir(state.join("outbox")) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let parsed = std::fs::read(&path)
            .map_err(anyhow::Error::from)
            .and_then(|b| Ok(serde_json::from_slice::<Queued>(&b)?));
        match parsed {
            Ok(mut q) => {
                if q.queued_at == 0 {
                    // Written by an older agent: the name starts with the time.
                    q.queued_at = path
                        .file_name()
                        .and_then(|n| n.to_string_lossy().split('-').next()?.parse::<i64>().ok())
                        .map_or(0, |nanos| nanos / 1_000_000_000);
                }
                out.push((path, q));
            }
            Err(e) => {
                warn!(file = %path.display(), error = %e, "Removed an unreadable chat outbox item");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    out
}

/// A file name safe to create in the inbox: no directories, no hidden names.
pub fn safe_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = base
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect::<String>()
        .trim_start_matches('.')
        .to_owned();
    if cleaned.is_empty() {
        "file".into()
    } else {
        cleaned
    }
}

fn unique(dir: &Path, name: &str) -> PathBuf {
    let mut candidate = dir.join(name);
    let mut n = 1;
    while candidate.exists() {
        candidate = dir.join(format!("{n}-{name}"));
        n += 1;
    }
    candidate
}

/// Serves a chat channel of session `session_uid` until the technician closes it or the
/// session ends: the technician's messages and files go to the chat log and the inbox, and the
/// device's messages for this session (held ones first) go to the technician.
pub async fn serve_session(
    sessions: &Sessions,
    session_uid: &str,
    user: &str,
    mut reader: FrameReader,
    mut writer: FrameWriter,
) -> anyhow::Result<()> {
    let state = sessions.dir().to_path_buf();
    tokio::fs::create_dir_all(state.join("outbox")).await?;
    tokio::fs::create_dir_all(state.join("inbox")).await?;
    let mut subscription = sessions.subscribe(session_uid);
    sessions.pump();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            frame = reader.next() => {
                let Some(frame) = frame? else { break };
                receive(&state, Some(session_uid), frame, &mut reader, &mut writer).await?;
            }
            item = subscription.messages.recv() => match item {
                Some(item) => send(&mut writer, user, item).await?,
                // The session ended.
                None => break,
            },
            _ = tick.tick() => sessions.pump(),
        }
    }
    writer.finish().await?;
    Ok(())
}

/// Handles one frame from the technician: a message for the chat log, or a file (whose data
/// frames follow) for the inbox.
async fn receive(
    state: &Path,
    session_uid: Option<&str>,
    frame: Frame,
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
) -> anyhow::Result<()> {
    if frame.kind != FrameKind::Message {
        return Ok(());
    }
    let inbox = state.join("inbox");
    match frame.parse::<ChatMessage>()? {
        ChatMessage::Text { from, text } => {
            info!(from = %escape(&from), "Chat message from the technician");
            // JSON lines: whatever the technician typed stays inside its string.
            let line = serde_json::json!({"at": jiff::Timestamp::now().to_string(), "session": session_uid, "from": from, "text": text});
            let mut log = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(state.join("chat.log"))
                .await?;
            log.write_all(format!("{line}\n").as_bytes()).await?;
        }
        ChatMessage::File {
            from,
            name,
            size,
            sha256,
        } => {
            let target = unique(&inbox, &safe_name(&name));
            let mut file = tokio::fs::File::create(&target).await?;
            let mut hasher = Sha256::new();
            let mut got = 0u64;
            loop {
                let f = reader.expect().await?;
                match f.kind {
                    FrameKind::Data => {
                        got += f.payload.len() as u64;
                        anyhow::ensure!(got <= size, "the file is larger than announced");
                        hasher.update(&f.payload);
                        file.write_all(&f.payload).await?;
                    }
                    FrameKind::EndOfData => break,
                    FrameKind::Message => anyhow::bail!("unexpected message inside a file"),
                }
            }
            file.flush().await?;
            let actual = hex::encode(hasher.finalize());
            if actual != sha256 || got != size {
                let _ = tokio::fs::remove_file(&target).await;
                anyhow::bail!(
                    "the file {} from {} arrived corrupted",
                    escape(&name),
                    escape(&from)
                );
            }
            info!(from = %escape(&from), file = %target.display(), "Received a file from the technician");
            writer
                .message(&ChatMessage::Received {
                    name: safe_name(&name),
                    sha256: actual,
                })
                .await?;
        }
        ChatMessage::Received { name, .. } => {
            info!(name = %escape(&name), "The technician received a file")
        }
    }
    Ok(())
}

async fn send(writer: &mut FrameWriter, user: &str, item: Outgoing) -> anyhow::Result<()> {
    match item {
        Outgoing::Text { text } => {
            writer
                .message(&ChatMessage::Text {
                    from: user.to_owned(),
                    text,
                })
                .await?;
        }
        Outgoing::File { path } => {
            // The user may have moved it since: skipped, not fatal to the channel.
            let data = match tokio::fs::read(&path).await {
                Ok(data) => data,
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "Failed to read a file the user sent");
                    return Ok(());
                }
            };
            let sha256 = hex::encode(Sha256::digest(&data));
            let name = path
                .file_name()
                .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
            writer
                .message(&ChatMessage::File {
                    from: user.to_owned(),
                    name,
                    size: data.len() as u64,
                    sha256,
                })
                .await?;
            let mut f = tokio::fs::File::open(&path).await?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = f.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                writer
                    .send(&Frame::data(Bytes::copy_from_slice(&buf[..n])))
                    .await?;
            }
            writer.send(&Frame::end_of_data()).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_safe() {
        assert_eq!(safe_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_name(".bashrc"), "bashrc");
        assert_eq!(safe_name("a\u{7}b.txt"), "a_b.txt");
        assert_eq!(safe_name(""), "file");
        assert_eq!(safe_name("dir\\evil.exe"), "evil.exe");
    }

    #[test]
    fn outbox_items_are_written_atomically_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let a = enqueue(dir.path(), None, &Outgoing::Text { text: "one".into() }).unwrap();
        let b = enqueue(dir.path(), None, &Outgoing::Text { text: "two".into() }).unwrap();
        assert!(a < b);
        let back: Queued = serde_json::from_slice(&std::fs::read(&a).unwrap()).unwrap();
        assert_eq!(back.item, Outgoing::Text { text: "one".into() });
        assert_eq!(back.session, None);
        let items = queued(dir.path());
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].1.item, Outgoing::Text { text: "two".into() });
    }

    #[test]
    fn items_from_an_older_agent_are_read_as_unaddressed() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = dir.path().join("outbox");
        std::fs::create_dir_all(&outbox).unwrap();
        std::fs::write(
            outbox.join("01700000000000000000-0000abcd.json"),
            br#"{"type":"text","text":"old"}"#,
        )
        .unwrap();
        std::fs::write(
            outbox.join("01700000000000000001-0000abcd.json"),
            b"not json",
        )
        .unwrap();
        let items = queued(dir.path());
        assert_eq!(items.len(), 1, "the unreadable one is removed");
        assert_eq!(items[0].1.session, None);
        assert_eq!(items[0].1.queued_at, 1_700_000_000);
        assert_eq!(std::fs::read_dir(&outbox).unwrap().count(), 1);
    }
}

//! Chat with the user, both ways, including files. The user's side works without any
//! listening socket: incoming messages are appended to `<state>/chat.log` (and logged), files
//! land in `<state>/inbox/`, and `tether-agent say` / `tether-agent send-file` drop outgoing
//! messages into `<state>/outbox/`, which the channel sends while it is open.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tether_proto::channels::ChatMessage;
use tether_proto::frame::{Frame, FrameKind};
use tether_transport::{FrameReader, FrameWriter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::info;

/// An outgoing chat item written by `tether-agent say` or `send-file`.
#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Eq)]
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

/// Queues an outgoing item in the state directory's outbox.
pub fn enqueue(state: &Path, item: &Outgoing) -> anyhow::Result<PathBuf> {
    let dir = state.join("outbox");
    std::fs::create_dir_all(&dir)?;
    let name = format!(
        "{:020}-{:08x}.json",
        jiff::Timestamp::now().as_nanosecond(),
        rand::random::<u32>()
    );
    let tmp = dir.join(format!(".{name}"));
    std::fs::write(&tmp, serde_json::to_vec(item)?)?;
    let path = dir.join(name);
    std::fs::rename(&tmp, &path)?;
    Ok(path)
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

/// Serves a chat channel until the technician closes it.
pub async fn serve(
    state: &Path,
    user: &str,
    mut reader: FrameReader,
    mut writer: FrameWriter,
) -> anyhow::Result<()> {
    let outbox = state.join("outbox");
    let inbox = state.join("inbox");
    tokio::fs::create_dir_all(&outbox).await?;
    tokio::fs::create_dir_all(&inbox).await?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            frame = reader.next() => {
                let Some(frame) = frame? else { break };
                if frame.kind != FrameKind::Message {
                    continue;
                }
                match frame.parse::<ChatMessage>()? {
                    ChatMessage::Text { from, text } => {
                        info!(%from, "Chat message from the technician");
                        let line = serde_json::json!({"at": jiff::Timestamp::now().to_string(), "from": from, "text": text});
                        let mut log = tokio::fs::OpenOptions::new().create(true).append(true).open(state.join("chat.log")).await?;
                        log.write_all(format!("{line}\n").as_bytes()).await?;
                    }
                    ChatMessage::File { from, name, size, sha256 } => {
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
                            anyhow::bail!("the file {name} from {from} arrived corrupted");
                        }
                        info!(%from, file = %target.display(), "Received a file from the technician");
                        writer.message(&ChatMessage::Received { name: safe_name(&name), sha256: actual }).await?;
                    }
                    ChatMessage::Received { name, .. } => info!(%name, "The technician received a file"),
                }
            }
            _ = tick.tick() => {
                let mut items: Vec<PathBuf> = std::fs::read_dir(&outbox)?
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "json") && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
                    .collect();
                items.sort();
                for item in items {
                    let parsed: Outgoing = serde_json::from_slice(&tokio::fs::read(&item).await?)?;
                    send(&mut writer, user, parsed).await?;
                    tokio::fs::remove_file(&item).await?;
                }
            }
        }
    }
    writer.finish().await?;
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
            let data = tokio::fs::read(&path).await?;
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
        let a = enqueue(dir.path(), &Outgoing::Text { text: "one".into() }).unwrap();
        let b = enqueue(dir.path(), &Outgoing::Text { text: "two".into() }).unwrap();
        assert!(a < b);
        let back: Outgoing = serde_json::from_slice(&std::fs::read(&a).unwrap()).unwrap();
        assert_eq!(back, Outgoing::Text { text: "one".into() });
    }
}

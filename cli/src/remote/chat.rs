//! `chat`: messages and files between the technician and the user over the chat channel,
//! scripted (`--message`, `--send-file`) or line by line from stdin.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tether_proto::channels::ChatMessage;
use tether_proto::frame::{Frame, FrameKind};
use tether_proto::message::{Attach, ChannelKind};
use tether_proto::text::escape;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::client::GlobalArgs;
use crate::connect::{ConnectArgs, join};
use crate::progress::human_bytes;

/// `chat NAME`.
#[derive(Clone, Debug, clap::Args)]
pub struct ChatArgs {
    /// The RemoteSession.
    pub name: String,
    /// Send this message (instead of reading lines from stdin).
    #[arg(short, long)]
    pub message: Vec<String>,
    /// Send this file.
    #[arg(long)]
    pub send_file: Option<PathBuf>,
    /// With --message or --send-file: keep showing the user's messages this long.
    #[arg(long, default_value = "0s", value_parser = crate::terminate::parse_duration)]
    pub wait: Duration,
    /// Where files the user sends are saved.
    #[arg(long, default_value = ".")]
    pub download_dir: PathBuf,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Runs `chat`.
pub async fn chat(global: &GlobalArgs, args: ChatArgs) -> Result<()> {
    let joined = join(global, &args.connect, &args.name).await?;
    let me = std::env::var("USER").unwrap_or_else(|_| "technician".into());
    let (mut r, mut w) = joined
        .attach(Attach {
            kind: ChannelKind::Chat,
            shell: None,
        })
        .await?;
    let scripted = !args.message.is_empty() || args.send_file.is_some();
    for text in &args.message {
        w.message(&ChatMessage::Text {
            from: me.clone(),
            text: text.clone(),
        })
        .await?;
    }
    if let Some(path) = &args.send_file {
        let data = tokio::fs::read(path)
            .await
            .with_context(|| format!("failed to read {}", path.display()))?;
        let sha256 = hex::encode(Sha256::digest(&data));
        let name = path
            .file_name()
            .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
        w.message(&ChatMessage::File {
            from: me.clone(),
            name: name.clone(),
            size: data.len() as u64,
            sha256: sha256.clone(),
        })
        .await?;
        for chunk in data.chunks(64 * 1024) {
            w.send(&Frame::data(Bytes::copy_from_slice(chunk))).await?;
        }
        w.send(&Frame::end_of_data()).await?;
        eprintln!(
            "tether: sent {name} ({}), sha256 {sha256}",
            human_bytes(data.len() as u64)
        );
    }
    let deadline = scripted.then(|| tokio::time::Instant::now() + args.wait);
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    let stdin_open = !scripted;
    let mut ended = joined.ended.clone();
    loop {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            frame = r.next() => {
                let Some(frame) = frame? else { break };
                if frame.kind != FrameKind::Message { continue }
                match frame.parse::<ChatMessage>()? {
                    ChatMessage::Text { from, text } => println!("{}: {}", escape(&from), escape(&text)),
                    ChatMessage::Received { name, sha256 } => eprintln!("tether: the user received {} (sha256 {})", escape(&name), escape(&sha256)),
                    ChatMessage::File { from, name, size, sha256 } => {
                        let target = args.download_dir.join(local_name(&name));
                        let mut file = tokio::fs::File::create(&target).await?;
                        let mut hasher = Sha256::new();
                        loop {
                            let f = r.expect().await?;
                            match f.kind {
                                FrameKind::Data => { hasher.update(&f.payload); file.write_all(&f.payload).await?; }
                                FrameKind::EndOfData => break,
                                FrameKind::Message => bail!("unexpected message inside a file"),
                            }
                        }
                        let got = hex::encode(hasher.finalize());
                        if got != sha256 {
                            bail!("{} from {} arrived corrupted", escape(&name), escape(&from));
                        }
                        println!("{} sent {} ({}) to {}", escape(&from), escape(&name), human_bytes(size), escape(&target.display().to_string()));
                    }
                }
            }
            n = stdin.read_line(&mut line), if stdin_open => {
                if n? == 0 {
                    break;
                }
                let text = line.trim_end().to_owned();
                line.clear();
                if !text.is_empty() {
                    w.message(&ChatMessage::Text { from: me.clone(), text }).await?;
                }
            }
            () = sleep => break,
            _ = ended.changed() => break,
        }
    }
    let _ = w.finish().await;
    Ok(())
}

/// The local name for a file the user sends: its last path component, without a leading dot
/// or control characters (which would hide it or garble the terminal that lists it).
fn local_name(sent: &str) -> String {
    let base = sent.rsplit(['/', '\\']).next().unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_from_the_user_get_a_plain_local_name() {
        assert_eq!(local_name("../../.bashrc"), "bashrc");
        assert_eq!(local_name("shot\n\u{1b}.png"), "shot__.png");
        assert_eq!(local_name(""), "file");
        assert_eq!(local_name("screenshot.png"), "screenshot.png");
    }
}

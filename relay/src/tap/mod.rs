//! What the relay records from a channel as its frames pass: a shell's output and resizes
//! become an asciicast; a desktop's RFB both ways becomes a timestamped desktop recording
//! (keystrokes and clipboard text redacted, clipboard transfers as events); file-manager operations and transfers, chat and process actions become
//! events, transfers with the size and SHA-256 of the bytes the relay itself relayed (not what
//! either side claims).

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tether_proto::frame::Frame;
use tether_proto::message::{Attach, ChannelKind};
use tether_recording::Recorder;
use tether_recording::events::{Direction, What};

mod chat;
mod desktop;
mod files;
mod processes;
mod shell;

/// Which way a frame travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// Technician to agent.
    ToAgent,
    /// Agent to technician.
    ToTechnician,
}

/// A transfer being hashed.
struct Transfer {
    way: Way,
    from: String,
    path: String,
    size: u64,
    announced: Option<(u64, String)>,
    hasher: Sha256,
}

impl Transfer {
    fn new(way: Way, from: String, path: String) -> Self {
        Self {
            way,
            from,
            path,
            size: 0,
            announced: None,
            hasher: Sha256::new(),
        }
    }

    fn feed(&mut self, bytes: &Bytes) {
        self.size += bytes.len() as u64;
        self.hasher.update(bytes);
    }

    /// The transfer event; `confirmed` is what the receiver reported (size, sha256).
    fn event(self, channel: u64, confirmed: Option<(u64, &str)>, error: Option<String>) -> What {
        let sha256 = hex::encode(self.hasher.finalize());
        let complete = error.is_none()
            && confirmed.is_some_and(|(size, sha)| size == self.size && sha == sha256)
            && self
                .announced
                .as_ref()
                .is_none_or(|(size, sha)| *size == self.size && *sha == sha256);
        What::FileTransfer {
            channel,
            from: self.from,
            direction: match self.way {
                Way::ToAgent => Direction::Upload,
                Way::ToTechnician => Direction::Download,
            },
            path: self.path,
            size: self.size,
            sha256,
            complete,
            error,
        }
    }
}

/// What is recorded of a channel, by its kind.
enum Kind {
    Shell(shell::Shell),
    Files(files::Files),
    Chat(chat::Chat),
    Processes(processes::Processes),
    Desktop(desktop::Desktop),
}

/// Records one channel.
pub struct Tap {
    recorder: Recorder,
    channel: u64,
    technician: String,
    kind: Kind,
}

impl Tap {
    /// Starts recording a channel a technician attached: notes it in the event log and, for a
    /// shell, opens its asciicast.
    /// `keystrokes` keeps a desktop's keystrokes in its recording (otherwise redacted).
    pub async fn open(
        recorder: Recorder,
        channel: u64,
        technician: &str,
        attach: &Attach,
        keystrokes: bool,
    ) -> Self {
        let mut object = None;
        let mut command = None;
        let kind = match attach.kind {
            ChannelKind::Shell => {
                let (shell, name, run) =
                    shell::Shell::open(&recorder, channel, technician, attach).await;
                object = Some(name);
                command = run;
                Kind::Shell(shell)
            }
            ChannelKind::Files => Kind::Files(files::Files::default()),
            ChannelKind::Chat => Kind::Chat(chat::Chat::default()),
            ChannelKind::Processes => Kind::Processes(processes::Processes::default()),
            ChannelKind::Desktop => {
                let (desktop, name) =
                    desktop::Desktop::open(&recorder, channel, technician, keystrokes).await;
                object = Some(name);
                Kind::Desktop(desktop)
            }
        };
        recorder
            .event(What::ChannelOpened {
                channel,
                kind: attach.kind.as_str().to_owned(),
                technician: technician.to_owned(),
                object,
                command,
            })
            .await;
        Self {
            recorder,
            channel,
            technician: technician.to_owned(),
            kind,
        }
    }

    /// The recording this channel is part of.
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// Looks at a frame the relay just forwarded.
    pub async fn observe(&mut self, way: Way, frame: &Frame) {
        if self.recorder.is_failed() {
            return;
        }
        let channel = self.channel;
        let event = match &mut self.kind {
            Kind::Shell(shell) => {
                shell.observe(way, frame).await;
                None
            }
            Kind::Files(files) => files.observe(way, frame, channel, &self.technician),
            Kind::Chat(chat) => chat.observe(way, frame, channel),
            Kind::Processes(processes) => processes.observe(way, frame, channel, &self.technician),
            Kind::Desktop(desktop) => {
                desktop
                    .observe(&self.recorder, way, frame, channel, &self.technician)
                    .await;
                None
            }
        };
        if let Some(event) = event {
            self.recorder.event(event).await;
        }
    }

    /// The channel closed.
    pub async fn close(self) {
        let exit = match self.kind {
            Kind::Shell(shell) => shell.close().await,
            Kind::Desktop(desktop) => {
                desktop.close(&self.recorder).await;
                None
            }
            _ => None,
        };
        self.recorder
            .event(What::ChannelClosed {
                channel: self.channel,
                exit,
            })
            .await;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

    use tether_proto::channels::ChatMessage;
    use tether_proto::message::{ShellMessage, ShellParams};
    use tether_recording::asciicast::Cast;
    use tether_recording::{RecorderSettings, SessionRef, Storage, StoreConfig};

    use super::*;

    pub(crate) async fn recorder(dir: &std::path::Path) -> (Storage, Recorder) {
        let storage =
            Storage::open(&StoreConfig::new(format!("file://{}", dir.display()))).unwrap();
        let recorder = Recorder::start(
            storage.clone(),
            RecorderSettings::default(),
            session(),
            "laptop".into(),
        )
        .await
        .unwrap();
        (storage, recorder)
    }

    fn session() -> SessionRef {
        SessionRef {
            namespace: "helpdesk".into(),
            name: "printer".into(),
            uid: "u1".into(),
        }
    }

    pub(crate) async fn object(storage: &Storage, name: &str) -> String {
        use futures::TryStreamExt;
        let (_, stream) = tether_recording::catalog::open(storage, &session(), name)
            .await
            .unwrap();
        let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
        String::from_utf8(chunks.concat()).unwrap()
    }

    #[tokio::test]
    async fn a_shell_becomes_an_asciicast_with_its_resizes_and_exit() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, recorder) = recorder(dir.path()).await;
        let attach = Attach {
            kind: ChannelKind::Shell,
            shell: Some(ShellParams {
                command: vec!["top".into()],
                tty: true,
                cols: 120,
                rows: 40,
                term: Some("xterm-256color".into()),
            }),
        };
        let mut tap = Tap::open(recorder.clone(), 7, "carol", &attach, false).await;
        tap.observe(Way::ToTechnician, &Frame::data(&b"load \xe2\x82"[..]))
            .await;
        tap.observe(Way::ToTechnician, &Frame::data(&b"\xac 1.0\r\n"[..]))
            .await;
        // Keystrokes are not recorded.
        tap.observe(Way::ToAgent, &Frame::data(&b"secret"[..]))
            .await;
        let resize = ShellMessage::Resize {
            cols: 100,
            rows: 30,
        };
        tap.observe(Way::ToAgent, &Frame::message(&resize).unwrap())
            .await;
        let exit = ShellMessage::Exit {
            code: Some(3),
            signal: None,
        };
        tap.observe(Way::ToTechnician, &Frame::message(&exit).unwrap())
            .await;
        tap.close().await;
        let manifest = recorder.finish("Completed").await;

        let cast_name = "shell-7.cast";
        let entry = manifest
            .objects
            .iter()
            .find(|o| o.name.ends_with(cast_name))
            .unwrap();
        let cast = Cast::parse(&object(&storage, &entry.name).await).unwrap();
        assert_eq!((cast.header.width, cast.header.height), (120, 40));
        assert_eq!(cast.header.command.as_deref(), Some("top"));
        assert_eq!(cast.header.env["TERM"], "xterm-256color");
        assert_eq!(cast.output(), "load € 1.0\r\n", "UTF-8 split across frames");
        assert!(
            cast.events
                .iter()
                .any(|e| e.code == "r" && e.data == "100x30"),
            "{:?}",
            cast.events
        );
        assert!(!cast.events.iter().any(|e| e.data.contains("secret")));

        let events_name = &manifest.objects[0].name;
        let log = object(&storage, events_name).await;
        assert!(
            log.contains(
                r#""event":"channelOpened","channel":7,"kind":"shell","technician":"carol""#
            ),
            "{log}"
        );
        assert!(
            log.contains(r#""event":"channelClosed","channel":7,"exit":"3""#),
            "{log}"
        );
    }

    #[tokio::test]
    async fn a_chat_file_is_checked_against_what_its_sender_announced() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, recorder) = recorder(dir.path()).await;
        let attach = Attach {
            kind: ChannelKind::Chat,
            shell: None,
        };
        let mut tap = Tap::open(recorder.clone(), 2, "carol", &attach, false).await;
        let body = b"screenshot bytes";
        let announce = |sha256: String| ChatMessage::File {
            from: "dana".into(),
            name: "screen.png".into(),
            size: body.len() as u64,
            sha256,
        };
        // The device's user sends a file; the relay hashes what passes.
        let good = hex::encode(Sha256::digest(body));
        tap.observe(
            Way::ToTechnician,
            &Frame::message(&announce(good.clone())).unwrap(),
        )
        .await;
        tap.observe(Way::ToTechnician, &Frame::data(&body[..6]))
            .await;
        tap.observe(Way::ToTechnician, &Frame::data(&body[6..]))
            .await;
        tap.observe(Way::ToTechnician, &Frame::end_of_data()).await;
        // A file whose bytes do not match what was announced is recorded as incomplete.
        tap.observe(
            Way::ToAgent,
            &Frame::message(&announce("00".repeat(32))).unwrap(),
        )
        .await;
        tap.observe(Way::ToAgent, &Frame::data(&body[..])).await;
        tap.observe(Way::ToAgent, &Frame::end_of_data()).await;
        tap.close().await;
        let manifest = recorder.finish("Completed").await;
        let log = object(&storage, &manifest.objects[0].name).await;
        let transfers: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|e| e["event"] == "fileTransfer")
            .collect();
        assert_eq!(transfers.len(), 2, "{log}");
        assert_eq!(transfers[0]["direction"], "download");
        assert_eq!(transfers[0]["sha256"], good.as_str());
        assert_eq!(transfers[0]["complete"], true);
        assert_eq!(transfers[0]["from"], "dana");
        assert_eq!(transfers[1]["direction"], "upload");
        assert_eq!(
            transfers[1]["sha256"],
            good.as_str(),
            "what actually passed"
        );
        assert_eq!(transfers[1]["complete"], false);
    }
}

//! A shell channel's recording: its output, stderr and resizes become an asciicast, and how it
//! exited goes into the channel's closing event. Keystrokes are never recorded.

use tether_proto::frame::{Frame, FrameKind};
use tether_proto::message::{Attach, ShellMessage};
use tether_recording::Recorder;
use tether_recording::asciicast::Header;
use tether_recording::recorder::ShellRecording;

use super::Way;

/// A shell channel's asciicast and how the shell exited.
pub(super) struct Shell {
    recording: ShellRecording,
    exit: Option<String>,
}

impl Shell {
    /// Opens the asciicast of the shell `attach` asks for: the shell, the asciicast's object
    /// name and the command it runs (none for the login shell).
    pub(super) async fn open(
        recorder: &Recorder,
        channel: u64,
        technician: &str,
        attach: &Attach,
    ) -> (Self, String, Option<String>) {
        let mut command = None;
        let params = attach.shell.clone().unwrap_or_default();
        if !params.command.is_empty() {
            command = Some(params.command.join(" "));
        }
        let header = Header {
            version: 2,
            width: if params.cols == 0 { 80 } else { params.cols },
            height: if params.rows == 0 { 24 } else { params.rows },
            timestamp: Some(jiff::Timestamp::now().as_second()),
            command: command.clone(),
            title: Some(format!(
                "{}/{} by {technician}",
                recorder.session().namespace,
                recorder.session().name
            )),
            env: params
                .term
                .iter()
                .map(|t| ("TERM".to_owned(), t.clone()))
                .collect(),
        };
        let (recording, name) = recorder.shell(channel, technician, header).await;
        (
            Self {
                recording,
                exit: None,
            },
            name,
            command,
        )
    }

    /// Looks at a frame of the shell: output and resizes go to the asciicast.
    pub(super) async fn observe(&mut self, way: Way, frame: &Frame) {
        let Self { recording, exit } = self;
        match (way, frame.kind) {
            (Way::ToTechnician, FrameKind::Data) => recording.output(&frame.payload).await,
            (_, FrameKind::Message) => match serde_json::from_slice(&frame.payload) {
                Ok(ShellMessage::Resize { cols, rows }) => recording.resize(cols, rows).await,
                Ok(ShellMessage::Stderr { text }) => recording.output(text.as_bytes()).await,
                Ok(ShellMessage::Exit { code, signal }) => {
                    *exit = code.map(|c| c.to_string()).or(signal);
                }
                Ok(ShellMessage::Error { message }) => *exit = Some(message),
                Err(_) => {}
            },
            _ => {}
        }
    }

    /// Closes the asciicast: how the shell exited, when it said.
    pub(super) async fn close(self) -> Option<String> {
        self.recording.close().await;
        self.exit
    }
}

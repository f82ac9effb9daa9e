//! What the relay records from a channel as its frames pass: a shell's output and resizes
//! become an asciicast; file-manager operations and transfers, chat and process actions become
//! events, transfers with the size and SHA-256 of the bytes the relay itself relayed (not what
//! either side claims).

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tether_proto::channels::{
    ChatMessage, FileRequest, FileResponse, ProcessRequest, ProcessResponse,
};
use tether_proto::frame::{Frame, FrameKind};
use tether_proto::message::{Attach, ChannelKind, ShellMessage};
use tether_recording::Recorder;
use tether_recording::asciicast::Header;
use tether_recording::events::{Direction, What};
use tether_recording::recorder::ShellRecording;

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

enum Kind {
    Shell {
        recording: ShellRecording,
        exit: Option<String>,
    },
    Files {
        request: Option<FileRequest>,
        transfer: Option<Transfer>,
    },
    Chat {
        transfer: Option<Transfer>,
    },
    Processes {
        request: Option<ProcessRequest>,
    },
    Other,
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
    pub async fn open(recorder: Recorder, channel: u64, technician: &str, attach: &Attach) -> Self {
        let mut object = None;
        let mut command = None;
        let kind = match attach.kind {
            ChannelKind::Shell => {
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
                object = Some(name);
                Kind::Shell {
                    recording,
                    exit: None,
                }
            }
            ChannelKind::Files => Kind::Files {
                request: None,
                transfer: None,
            },
            ChannelKind::Chat => Kind::Chat { transfer: None },
            ChannelKind::Processes => Kind::Processes { request: None },
            _ => Kind::Other,
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

    /// Looks at a frame the relay just forwarded.
    pub async fn observe(&mut self, way: Way, frame: &Frame) {
        if self.recorder.is_failed() {
            return;
        }
        let channel = self.channel;
        let mut event = None;
        match &mut self.kind {
            Kind::Shell { recording, exit } => match (way, frame.kind) {
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
            },
            Kind::Files { request, transfer } => match (way, frame.kind) {
                (_, FrameKind::Data) => {
                    if let Some(t) = transfer.as_mut().filter(|t| t.way == way) {
                        t.feed(&frame.payload);
                    }
                }
                (Way::ToAgent, FrameKind::Message) => {
                    if let Ok(r) = serde_json::from_slice::<FileRequest>(&frame.payload) {
                        if let FileRequest::Upload { path, .. } = &r {
                            *transfer = Some(Transfer::new(
                                Way::ToAgent,
                                self.technician.clone(),
                                path.clone(),
                            ));
                        }
                        *request = Some(r);
                    }
                }
                (Way::ToTechnician, FrameKind::Message) => {
                    match serde_json::from_slice::<FileResponse>(&frame.payload) {
                        Ok(FileResponse::Sending { .. }) => {
                            if let Some(FileRequest::Download { path }) = request.as_ref() {
                                *transfer = Some(Transfer::new(
                                    Way::ToTechnician,
                                    self.technician.clone(),
                                    path.clone(),
                                ));
                            }
                        }
                        Ok(FileResponse::Done { size, sha256 }) => {
                            if let Some(t) = transfer.take() {
                                event = Some(t.event(channel, Some((size, &sha256)), None));
                            }
                            *request = None;
                        }
                        Ok(FileResponse::Error { message, .. }) => {
                            event = Some(match transfer.take() {
                                Some(t) => t.event(channel, None, Some(message)),
                                None => file_operation(
                                    channel,
                                    &self.technician,
                                    request.take(),
                                    message,
                                ),
                            });
                        }
                        Ok(FileResponse::Entries { .. } | FileResponse::Entry { .. }) => {
                            event = Some(file_operation(
                                channel,
                                &self.technician,
                                request.take(),
                                "ok".into(),
                            ));
                        }
                        Ok(FileResponse::Ready) | Err(_) => {}
                    }
                }
                _ => {}
            },
            Kind::Chat { transfer } => match frame.kind {
                FrameKind::Message => match serde_json::from_slice::<ChatMessage>(&frame.payload) {
                    Ok(ChatMessage::Text { from, text }) => {
                        event = Some(What::ChatMessage {
                            channel,
                            from,
                            text,
                        });
                    }
                    Ok(ChatMessage::File {
                        from,
                        name,
                        size,
                        sha256,
                    }) => {
                        let mut t = Transfer::new(way, from, name);
                        t.announced = Some((size, sha256));
                        *transfer = Some(t);
                    }
                    Ok(ChatMessage::Received { .. }) | Err(_) => {}
                },
                FrameKind::Data => {
                    if let Some(t) = transfer.as_mut().filter(|t| t.way == way) {
                        t.feed(&frame.payload);
                    }
                }
                FrameKind::EndOfData => {
                    if transfer.as_ref().is_some_and(|t| t.way == way)
                        && let Some(t) = transfer.take()
                    {
                        // The sender's announcement is what the bytes are checked against.
                        let announced = t.announced.clone();
                        let confirmed = announced.as_ref().map(|(s, h)| (*s, h.as_str()));
                        event = Some(t.event(channel, confirmed, None));
                    }
                }
            },
            Kind::Processes { request } => match (way, frame.kind) {
                (Way::ToAgent, FrameKind::Message) => {
                    *request = serde_json::from_slice(&frame.payload).ok();
                }
                (Way::ToTechnician, FrameKind::Message) => {
                    let answer = serde_json::from_slice::<ProcessResponse>(&frame.payload).ok();
                    event = match (request.take(), answer) {
                        (_, Some(ProcessResponse::Processes { processes })) => {
                            Some(What::ProcessList {
                                channel,
                                technician: self.technician.clone(),
                                count: processes.len(),
                            })
                        }
                        (Some(ProcessRequest::Kill { pid, signal }), Some(answer)) => {
                            Some(What::ProcessSignal {
                                channel,
                                technician: self.technician.clone(),
                                pid,
                                signal,
                                outcome: match answer {
                                    ProcessResponse::Error { message } => message,
                                    _ => "ok".into(),
                                },
                            })
                        }
                        _ => None,
                    };
                }
                _ => {}
            },
            Kind::Other => {}
        }
        if let Some(event) = event {
            self.recorder.event(event).await;
        }
    }

    /// The channel closed.
    pub async fn close(self) {
        let exit = match self.kind {
            Kind::Shell { recording, exit } => {
                recording.close().await;
                exit
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

/// A file-manager operation, its paths taken from the request whatever its shape.
fn file_operation(
    channel: u64,
    technician: &str,
    request: Option<FileRequest>,
    outcome: String,
) -> What {
    let value = request
        .as_ref()
        .and_then(|r| serde_json::to_value(r).ok())
        .unwrap_or_default();
    let op = value
        .get("op")
        .and_then(|o| o.as_str())
        .unwrap_or("unknown")
        .to_owned();
    let mut paths = Vec::new();
    if let Some(fields) = value.as_object() {
        for (key, v) in fields {
            if matches!(key.as_str(), "op" | "pattern" | "ifSha256") {
                continue;
            }
            match v {
                serde_json::Value::String(s) => paths.push(s.clone()),
                serde_json::Value::Array(items) => {
                    paths.extend(items.iter().filter_map(|i| i.as_str().map(str::to_owned)));
                }
                _ => {}
            }
        }
    }
    What::FileOperation {
        channel,
        technician: technician.to_owned(),
        op,
        paths,
        outcome,
    }
}

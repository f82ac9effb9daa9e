//! A file-manager channel's record: each operation becomes an event with its paths and
//! outcome, each upload or download a transfer hashed as it passes.

use tether_proto::channels::{FileRequest, FileResponse};
use tether_proto::frame::{Frame, FrameKind};
use tether_recording::events::What;

use super::{Transfer, Way};

/// The request a file-manager channel is answering and the transfer under way.
#[derive(Default)]
pub(super) struct Files {
    request: Option<FileRequest>,
    transfer: Option<Transfer>,
}

impl Files {
    /// Looks at a frame of the file manager: the event it completes, if any.
    pub(super) fn observe(
        &mut self,
        way: Way,
        frame: &Frame,
        channel: u64,
        technician: &str,
    ) -> Option<What> {
        let Self { request, transfer } = self;
        let mut event = None;
        match (way, frame.kind) {
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
                            technician.to_owned(),
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
                                technician.to_owned(),
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
                            None => file_operation(channel, technician, request.take(), message),
                        });
                    }
                    Ok(FileResponse::Entries { .. } | FileResponse::Entry { .. }) => {
                        event = Some(file_operation(
                            channel,
                            technician,
                            request.take(),
                            "ok".into(),
                        ));
                    }
                    Ok(FileResponse::Ready) | Err(_) => {}
                }
            }
            _ => {}
        }
        event
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

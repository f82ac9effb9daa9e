//! A process channel's record: each listing and each signal sent, with its outcome, becomes
//! an event.

use tether_proto::channels::{ProcessRequest, ProcessResponse};
use tether_proto::frame::{Frame, FrameKind};
use tether_recording::events::What;

use super::Way;

/// The request a process channel is answering.
#[derive(Default)]
pub(super) struct Processes {
    request: Option<ProcessRequest>,
}

impl Processes {
    /// Looks at a frame of the process list: the event it completes, if any.
    pub(super) fn observe(
        &mut self,
        way: Way,
        frame: &Frame,
        channel: u64,
        technician: &str,
    ) -> Option<What> {
        let Self { request } = self;
        let mut event = None;
        match (way, frame.kind) {
            (Way::ToAgent, FrameKind::Message) => {
                *request = serde_json::from_slice(&frame.payload).ok();
            }
            (Way::ToTechnician, FrameKind::Message) => {
                let answer = serde_json::from_slice::<ProcessResponse>(&frame.payload).ok();
                event = match (request.take(), answer) {
                    (_, Some(ProcessResponse::Processes { processes })) => {
                        Some(What::ProcessList {
                            channel,
                            technician: technician.to_owned(),
                            count: processes.len(),
                        })
                    }
                    (Some(ProcessRequest::Kill { pid, signal }), Some(answer)) => {
                        Some(What::ProcessSignal {
                            channel,
                            technician: technician.to_owned(),
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
        }
        event
    }
}

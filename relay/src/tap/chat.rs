//! A chat channel's record: each message becomes an event, each file sent a transfer checked
//! against what its sender announced.

use tether_proto::channels::ChatMessage;
use tether_proto::frame::{Frame, FrameKind};
use tether_recording::events::What;

use super::{Transfer, Way};

/// The file a chat channel is carrying.
#[derive(Default)]
pub(super) struct Chat {
    transfer: Option<Transfer>,
}

impl Chat {
    /// Looks at a frame of the chat: the event it completes, if any.
    pub(super) fn observe(&mut self, way: Way, frame: &Frame, channel: u64) -> Option<What> {
        let Self { transfer } = self;
        let mut event = None;
        match frame.kind {
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
        }
        event
    }
}

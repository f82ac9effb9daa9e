//! A desktop channel's recording: its RFB both ways, timestamped, becomes a desktop recording
//! (keystrokes and clipboard text redacted unless asked), and each clipboard transfer an event.

use std::time::Instant;

use bytes::Bytes;
use tether_proto::frame::{Frame, FrameKind};
use tether_recording::desktop;
use tether_recording::events::{Direction, What};
use tether_recording::recorder::ObjectId;
use tether_recording::{ObjectKind, Recorder};

use super::Way;

/// A desktop channel's recording object and its encoder.
pub(super) struct Desktop {
    object: ObjectId,
    encoder: desktop::Encoder,
    started: Instant,
}

impl Desktop {
    /// Opens the desktop recording of `channel`: the desktop and the recording's object name.
    /// `keystrokes` keeps the keystrokes in it (otherwise redacted).
    pub(super) async fn open(
        recorder: &Recorder,
        channel: u64,
        technician: &str,
        keystrokes: bool,
    ) -> (Self, String) {
        let (id, name) = recorder
            .open(
                ObjectKind::Desktop,
                channel,
                technician,
                Bytes::from_static(desktop::MAGIC),
            )
            .await;
        (
            Self {
                object: id,
                encoder: desktop::Encoder::new(
                    technician,
                    jiff::Timestamp::now().as_millisecond(),
                    keystrokes,
                ),
                started: Instant::now(),
            },
            name,
        )
    }

    /// Looks at a frame of the desktop: its RFB goes to the recording, its clipboard
    /// transfers to the event log.
    pub(super) async fn observe(
        &mut self,
        recorder: &Recorder,
        way: Way,
        frame: &Frame,
        channel: u64,
        technician: &str,
    ) {
        let Self {
            object,
            encoder,
            started,
        } = self;
        if frame.kind == FrameKind::Data {
            let ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
            let d = match way {
                Way::ToAgent => desktop::TO_DEVICE,
                Way::ToTechnician => desktop::TO_VIEWER,
            };
            let encoded = encoder.record(d, ms, &frame.payload);
            if !encoded.bytes.is_empty() {
                recorder.append(*object, Bytes::from(encoded.bytes)).await;
            }
            for c in encoded.clipboard {
                recorder
                    .event(What::Clipboard {
                        channel,
                        from: technician.to_owned(),
                        direction: Direction::Upload,
                        size: c.size,
                        sha256: c.sha256,
                    })
                    .await;
            }
        }
    }

    /// Ends the recording: the encoder's last bytes, then the object is closed.
    pub(super) async fn close(mut self, recorder: &Recorder) {
        recorder
            .append(self.object, Bytes::from(self.encoder.finish()))
            .await;
        recorder.close(self.object).await;
    }
}

//! The relay's side of the desktop channel: the technician's viewer → device half of RFB goes
//! through [`tether_rfb::filter::Filter`] before it is forwarded, so a session's desktop
//! policy holds whatever viewer the technician runs. `ViewOnly` drops keyboard, pointer,
//! clipboard and resize requests, the clipboard passes only in the directions the session
//! allows, SetEncodings loses what is not on the allow-list (xvp can reboot the machine), and
//! a message the relay does not allow or cannot parse closes this channel (not the session)
//! with the reason. Every drop is counted in `tether_relay_desktop_dropped_total`.
//!
//! The device → viewer half (framebuffer updates) is not parsed: the relay forwards pixels
//! and records them, it never decodes them.

use tether_proto::frame::{Frame, FrameKind};
use tether_proto::token::{DesktopPermission, Permissions};
use tether_rfb::client::{Limits, ParseError};
use tether_rfb::filter::{Dropped, Filter, Policy};

use crate::metrics::Metrics;

/// The filter of one desktop channel, with the metrics it reports to.
pub struct DesktopFilter {
    filter: Filter,
    reported: Dropped,
    metrics: Metrics,
}

/// What to do with one frame from the technician.
#[derive(Debug, PartialEq, Eq)]
pub enum Judged {
    /// Forward this frame (possibly rewritten).
    Forward(Frame),
    /// Nothing to forward yet (dropped, or part of a message still arriving).
    Hold,
    /// Close the channel, telling the technician why.
    Close(String),
}

impl DesktopFilter {
    /// A filter enforcing `permissions` (the session's grant) from the start of the viewer's
    /// handshake.
    pub fn new(permissions: &Permissions, metrics: &Metrics) -> Self {
        let policy = Policy {
            input: permissions.desktop == DesktopPermission::Control,
            clipboard_to_device: permissions.clipboard.to_device,
            clipboard_from_device: permissions.clipboard.from_device,
            limits: Limits::default(),
        };
        Self {
            filter: Filter::new(policy),
            reported: Dropped::default(),
            metrics: metrics.clone(),
        }
    }

    /// What was dropped so far.
    pub fn dropped(&self) -> Dropped {
        self.filter.dropped()
    }

    /// Judges a frame the technician sent on the desktop channel. RFB travels in data frames;
    /// the viewer has nothing to say in protocol messages, so those are dropped.
    pub fn judge(&mut self, frame: Frame) -> Judged {
        match frame.kind {
            FrameKind::Data => {}
            FrameKind::EndOfData => return Judged::Forward(frame),
            FrameKind::Message => return Judged::Hold,
        }
        let verdict = self.filter.push(&frame.payload);
        self.report();
        if let Some(error) = verdict.close {
            let reason = match error {
                ParseError::TooLarge { .. } | ParseError::Malformed(_) | ParseError::Failed => {
                    "malformed"
                }
                _ => "refused",
            };
            self.metrics
                .desktop_closed
                .with_label_values(&[reason])
                .inc();
            // What passed before the bad message is not forwarded: the channel is closing,
            // and half a burst of input is worth less than a clean stop.
            return Judged::Close(format!("the relay closed the desktop channel: {error}"));
        }
        if verdict.forward.is_empty() {
            return Judged::Hold;
        }
        if verdict.forward.len() == frame.payload.len()
            && verdict.forward.as_slice() == frame.payload.as_ref()
        {
            // Unchanged (the common case): forward the frame as it came, no copy.
            return Judged::Forward(frame);
        }
        Judged::Forward(Frame::data(verdict.forward))
    }

    /// Adds what was dropped since the last report to the metrics.
    fn report(&mut self) {
        let now = self.filter.dropped();
        let before = self.reported;
        for (what, n) in [
            ("keys", now.keys - before.keys),
            ("pointer", now.pointer - before.pointer),
            ("clipboard", now.clipboard - before.clipboard),
            ("resizes", now.resizes - before.resizes),
            ("encodings", now.encodings - before.encodings),
        ] {
            if n > 0 {
                self.metrics
                    .desktop_dropped
                    .with_label_values(&[what])
                    .inc_by(n);
            }
        }
        self.reported = now;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

    use tether_proto::token::Clipboard;
    use tether_rfb::client::ClientMessage;

    use super::*;

    fn permissions(desktop: DesktopPermission) -> Permissions {
        Permissions {
            desktop,
            shell: false,
            files: false,
            chat: false,
            processes: false,
            clipboard: Clipboard::default(),
        }
    }

    fn handshake() -> Vec<u8> {
        [
            ClientMessage::Version,
            ClientMessage::Security,
            ClientMessage::Init { shared: true },
        ]
        .iter()
        .flat_map(ClientMessage::encode)
        .collect()
    }

    #[test]
    fn view_only_drops_input_and_counts_it() {
        let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
        let mut filter = DesktopFilter::new(&permissions(DesktopPermission::ViewOnly), &metrics);
        let hs = handshake();
        assert_eq!(
            filter.judge(Frame::data(hs.clone())),
            Judged::Forward(Frame::data(hs))
        );
        let key = ClientMessage::Key {
            down: true,
            keysym: 0x61,
        }
        .encode();
        assert_eq!(filter.judge(Frame::data(key)), Judged::Hold);
        let update = ClientMessage::UpdateRequest {
            incremental: true,
            x: 0,
            y: 0,
            width: 10,
            height: 10,
        }
        .encode();
        let pointer = ClientMessage::Pointer {
            buttons: 1,
            x: 5,
            y: 5,
        }
        .encode();
        let mixed = [pointer, update.clone()].concat();
        assert_eq!(
            filter.judge(Frame::data(mixed)),
            Judged::Forward(Frame::data(update))
        );
        let keys = metrics.desktop_dropped.with_label_values(&["keys"]).get();
        let pointer = metrics
            .desktop_dropped
            .with_label_values(&["pointer"])
            .get();
        assert_eq!((keys, pointer), (1, 1));
    }

    #[test]
    fn control_forwards_input_unchanged_and_xvp_closes_the_channel() {
        let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
        let mut filter = DesktopFilter::new(&permissions(DesktopPermission::Control), &metrics);
        filter.judge(Frame::data(handshake()));
        let key = Frame::data(
            ClientMessage::Key {
                down: true,
                keysym: 0x61,
            }
            .encode(),
        );
        assert_eq!(filter.judge(key.clone()), Judged::Forward(key));
        // A technician's protocol message has no meaning here.
        let message = Frame::message(&serde_json::json!({"type": "x"})).unwrap();
        assert_eq!(filter.judge(message), Judged::Hold);
        // xvp (type 250): shut down, reboot, reset.
        let Judged::Close(reason) = filter.judge(Frame::data(vec![250, 0, 1, 2])) else {
            panic!("xvp must close the channel");
        };
        assert!(reason.contains("xvp"), "{reason}");
        assert_eq!(
            metrics.desktop_closed.with_label_values(&["refused"]).get(),
            1
        );
    }
}

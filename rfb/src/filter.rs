//! The relay's enforcement of a session's desktop policy on what the technician's viewer
//! sends, whatever the viewer is: a view-only session drops keyboard, pointer, clipboard and
//! resize requests; clipboard is allowed per direction; SetEncodings is rewritten to the
//! [`crate::encoding::allowed`] list; a message the relay cannot parse, or does not allow,
//! closes the desktop channel (only that channel) with the reason. Every drop is counted.

use crate::client::ClientMessage;
use crate::client::{CutText, Limits, ParseError, Parser, clipboard_action};
use crate::encoding;

/// What the session allows the technician's viewer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Keyboard, pointer and resizes reach the device (`Control`); otherwise view-only.
    pub input: bool,
    /// The technician's clipboard may be sent to the device.
    pub clipboard_to_device: bool,
    /// The technician may ask for the device's clipboard.
    pub clipboard_from_device: bool,
    /// Message size limits.
    pub limits: Limits,
}

impl Policy {
    /// A view-only policy with no clipboard.
    pub fn view_only() -> Self {
        Self {
            input: false,
            clipboard_to_device: false,
            clipboard_from_device: false,
            limits: Limits::default(),
        }
    }
}

/// What the relay dropped, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Key events (plain and QEMU).
    pub keys: u64,
    /// Pointer events.
    pub pointer: u64,
    /// Clipboard messages.
    pub clipboard: u64,
    /// SetDesktopSize requests.
    pub resizes: u64,
    /// Encodings stripped from SetEncodings.
    pub encodings: u64,
}

/// What the relay does with the viewer's bytes: forward what passed (the messages before a
/// bad one included), then close the desktop channel if a message was refused.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Bytes to forward to the device, possibly none.
    pub forward: Vec<u8>,
    /// Why the channel must close; nothing more is read from it.
    pub close: Option<ParseError>,
}

impl Verdict {
    /// Forward `bytes`, go on.
    pub fn forward(bytes: Vec<u8>) -> Self {
        Self {
            forward: bytes,
            close: None,
        }
    }
}

/// Filters one viewer's stream.
#[derive(Debug)]
pub struct Filter {
    parser: Parser,
    policy: Policy,
    dropped: Dropped,
}

impl Filter {
    /// A filter at the start of the viewer's handshake.
    pub fn new(policy: Policy) -> Self {
        Self {
            parser: Parser::new(policy.limits),
            policy,
            dropped: Dropped::default(),
        }
    }

    /// What was dropped so far.
    pub fn dropped(&self) -> Dropped {
        self.dropped
    }

    /// Filters bytes that arrived: what to forward (possibly nothing, if every message in
    /// them was dropped or is not complete yet), or the reason to close.
    pub fn push(&mut self, bytes: &[u8]) -> Verdict {
        self.parser.push(bytes);
        let mut out = Vec::new();
        loop {
            match self.parser.next_message() {
                Ok(Some((message, raw))) => self.judge(message, raw, &mut out),
                Ok(None) => return Verdict::forward(out),
                Err(e) => {
                    return Verdict {
                        forward: out,
                        close: Some(e),
                    };
                }
            }
        }
    }

    fn judge(&mut self, message: ClientMessage, raw: Vec<u8>, out: &mut Vec<u8>) {
        let p = self.policy;
        let d = &mut self.dropped;
        match message {
            ClientMessage::Key { .. } | ClientMessage::QemuKey { .. } if !p.input => d.keys += 1,
            ClientMessage::Pointer { .. } if !p.input => d.pointer += 1,
            ClientMessage::SetDesktopSize { .. } if !p.input => d.resizes += 1,
            ClientMessage::CutText(ref text) if !clipboard_allowed(text, &p) => d.clipboard += 1,
            ClientMessage::SetEncodings(list) => {
                let kept: Vec<i32> = list
                    .iter()
                    .copied()
                    .filter(|e| encoding::allowed(*e))
                    .collect();
                d.encodings += (list.len() - kept.len()) as u64;
                out.extend_from_slice(&ClientMessage::SetEncodings(kept).encode());
            }
            _ => out.extend_from_slice(&raw),
        }
    }
}

/// Whether a clipboard message may pass: plain text and Extended Clipboard `provide` go to
/// the device; `request` and `peek` ask for the device's; `caps` and `notify` only say what
/// each side can do or has, and pass when either direction is allowed.
fn clipboard_allowed(text: &CutText, p: &Policy) -> bool {
    if !p.input {
        return false;
    }
    match text {
        CutText::Latin1(_) => p.clipboard_to_device,
        CutText::Extended { flags, .. } => {
            let to = flags & clipboard_action::PROVIDE != 0;
            let from = flags & (clipboard_action::REQUEST | clipboard_action::PEEK) != 0;
            let about = flags & (clipboard_action::CAPS | clipboard_action::NOTIFY) != 0;
            if to || from {
                (!to || p.clipboard_to_device) && (!from || p.clipboard_from_device)
            } else {
                about && (p.clipboard_to_device || p.clipboard_from_device)
            }
        }
    }
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;

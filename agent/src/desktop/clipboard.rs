//! Clipboard text between a viewer and the device, in RFB's two forms: plain cut text
//! (Latin-1, `?` for what Latin-1 lacks) and the Extended Clipboard extension (UTF-8 with
//! CRLF line ends and a NUL, zlib-compressed in `provide`), each way capped at
//! [`MAX_CLIPBOARD`] bytes of UTF-8. Only the text format is spoken.
//!
//! Each transfer is logged with its size and SHA-256, never its content. The clipboard
//! thread of a shared desktop runs [`thread_loop`].

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use sha2::{Digest, Sha256};
use tether_rfb::client::clipboard_action as action;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

pub use super::backend::MAX_CLIPBOARD;
use super::backend::{Clipboard, ClipboardText, DesktopError};
use super::capture::DeviceClipboard;

/// Extended Clipboard format bit: UTF-8 text.
pub const TEXT: u32 = 1;

/// The action bits of an Extended Clipboard message.
const ACTIONS: u32 =
    action::CAPS | action::REQUEST | action::PEEK | action::NOTIFY | action::PROVIDE;

/// ServerCutText's message type.
const SERVER_CUT_TEXT: u8 = 3;

/// Plain RFB clipboard text is Latin-1: every byte is the code point of its character.
pub fn from_latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|b| char::from(*b)).collect()
}

/// An Extended Clipboard ServerCutText: a negative length, the flags, the payload.
fn extended(flags: u32, payload: &[u8]) -> Vec<u8> {
    let length = i32::try_from(4 + payload.len()).unwrap_or(i32::MAX);
    let mut out = vec![SERVER_CUT_TEXT, 0, 0, 0];
    out.extend_from_slice(&(-length).to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The server's capabilities: text up to [`MAX_CLIPBOARD`], and the actions the session's
/// directions make sense of (`notify` and `provide` from a viewer whose text may reach the
/// device, `request` and `peek` from one that may read the device's).
pub fn caps(to_device: bool, from_device: bool) -> Vec<u8> {
    let mut flags = action::CAPS | TEXT;
    if to_device {
        flags |= action::NOTIFY | action::PROVIDE;
    }
    if from_device {
        flags |= action::REQUEST | action::PEEK;
    }
    let max = u32::try_from(MAX_CLIPBOARD).unwrap_or(u32::MAX);
    extended(flags, &max.to_be_bytes())
}

/// `notify`: the device's clipboard has text (or nothing).
pub fn notify(has_text: bool) -> Vec<u8> {
    extended(action::NOTIFY | if has_text { TEXT } else { 0 }, &[])
}

/// `request`: asks the viewer for its text.
pub fn request() -> Vec<u8> {
    extended(action::REQUEST | TEXT, &[])
}

/// `provide` with `text`: CRLF line ends, NUL-terminated, its length first, zlib-compressed.
pub fn provide(text: &str) -> Vec<u8> {
    let mut data = text
        .replace("\r\n", "\n")
        .replace('\n', "\r\n")
        .into_bytes();
    data.push(0);
    let mut plain = (data.len() as u32).to_be_bytes().to_vec();
    plain.extend_from_slice(&data);
    let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
    // Writing to a Vec cannot fail.
    let _ = std::io::Write::write_all(&mut encoder, &plain);
    let compressed = encoder.finish().unwrap_or_default();
    extended(action::PROVIDE | TEXT, &compressed)
}

/// What a viewer's Extended Clipboard message asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Extended {
    /// Its capabilities: the actions and formats it handles, its largest text.
    Caps {
        /// The action bits.
        actions: u32,
        /// The most text bytes it takes unasked, when it handles text.
        text_max: Option<u32>,
    },
    /// It asks for the device's text.
    Request,
    /// It asks whether the device has text.
    Peek,
    /// Its clipboard changed; true when it has text.
    Notify(bool),
    /// Its text.
    Provide(Provided),
    /// No action, several, or formats other than text only.
    Other,
}

/// The text in a viewer's `provide`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Provided {
    /// The text, line ends as LF.
    Text(String),
    /// Over [`MAX_CLIPBOARD`], dropped.
    TooBig(usize),
    /// No text in it.
    Empty,
    /// It does not inflate or is cut short.
    Malformed,
}

/// Reads a viewer's Extended Clipboard message.
pub fn parse(flags: u32, payload: &[u8]) -> Extended {
    let actions = flags & ACTIONS;
    let text = flags & TEXT != 0;
    // A caps message also names the actions its sender handles.
    if actions & action::CAPS != 0 {
        let text_max = text
            .then(|| payload.get(..4))
            .flatten()
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes);
        return Extended::Caps {
            actions: actions & !action::CAPS,
            text_max,
        };
    }
    match actions {
        action::REQUEST if text => Extended::Request,
        action::PEEK => Extended::Peek,
        action::NOTIFY => Extended::Notify(text),
        action::PROVIDE if text => Extended::Provide(inflate_text(payload)),
        action::PROVIDE => Extended::Provide(Provided::Empty),
        _ => Extended::Other,
    }
}

/// The text format's data in a `provide` payload (formats come in bit order, text first),
/// inflating no more than the cap allows.
fn inflate_text(payload: &[u8]) -> Provided {
    let mut decoder = ZlibDecoder::new(payload);
    let mut length = [0u8; 4];
    if decoder.read_exact(&mut length).is_err() {
        return Provided::Malformed;
    }
    let length = u32::from_be_bytes(length) as usize;
    // The NUL is not text: the cap is on what reaches the device.
    if length > MAX_CLIPBOARD + 1 {
        return Provided::TooBig(length);
    }
    let mut data = Vec::with_capacity(length);
    match decoder.take(length as u64).read_to_end(&mut data) {
        Ok(n) if n == length => {}
        _ => return Provided::Malformed,
    }
    if let Some(end) = data.iter().position(|b| *b == 0) {
        data.truncate(end);
    }
    if data.is_empty() {
        return Provided::Empty;
    }
    let text = String::from_utf8_lossy(&data).replace("\r\n", "\n");
    if text.len() > MAX_CLIPBOARD {
        return Provided::TooBig(text.len());
    }
    Provided::Text(text)
}

/// The SHA-256 of `text`, in hex.
pub fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Logs text from the technician for the device.
pub fn log_to_device(name: &str, text: &str) {
    info!(display = %name, direction = "to_device", size = text.len(), sha256 = %sha256(text), "Took clipboard text from the technician");
}

/// Logs the device's text sent to the technician.
pub fn log_from_device(name: &str, text: &str, extended: bool) {
    info!(display = %name, direction = "from_device", size = text.len(), sha256 = %sha256(text), extended, "Sent the device's clipboard text to the technician");
}

/// The longest the clipboard thread waits before it looks for the technicians' text again.
const CLIPBOARD_POLL: Duration = Duration::from_millis(25);

/// The clipboard thread: puts the technicians' texts on the device's clipboard, publishes
/// the texts other applications put there and counts those too big to send.
pub fn thread_loop(
    clipboard: &mut dyn Clipboard,
    texts: &mut mpsc::Receiver<String>,
    device: &watch::Sender<DeviceClipboard>,
    too_big: &AtomicU64,
    stop: &AtomicBool,
) -> Result<(), DesktopError> {
    while !stop.load(Ordering::Relaxed) {
        loop {
            match texts.try_recv() {
                Ok(text) => {
                    if let Err(e) = clipboard.set_text(&text) {
                        debug!(error = %tether_telemetry::error_chain(&e), "Failed to set the device's clipboard");
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return Ok(()),
            }
        }
        match clipboard.wait(CLIPBOARD_POLL)? {
            Some(ClipboardText::Text(text)) => {
                device.send_replace(Some(Arc::from(text)));
            }
            // Counted, not published: every viewer allowed the text counts it as dropped.
            Some(ClipboardText::TooBig(_)) => {
                too_big.fetch_add(1, Ordering::Relaxed);
            }
            None => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

    use super::*;

    /// The flags and payload of a message [`extended`] built.
    fn split(message: &[u8]) -> (u32, &[u8]) {
        assert_eq!(message[0], SERVER_CUT_TEXT);
        let length = i32::from_be_bytes(message[4..8].try_into().unwrap());
        assert_eq!(-length as usize, message.len() - 8);
        let flags = u32::from_be_bytes(message[8..12].try_into().unwrap());
        (flags, &message[12..])
    }

    #[test]
    fn provide_round_trips_utf8_with_crlf_on_the_wire() {
        let text = "Grüße ✓\nzweite Zeile";
        let message = provide(text);
        let (flags, payload) = split(&message);
        assert_eq!(flags, action::PROVIDE | TEXT);
        let mut plain = Vec::new();
        ZlibDecoder::new(payload).read_to_end(&mut plain).unwrap();
        let wire = "Grüße ✓\r\nzweite Zeile\0";
        assert_eq!(&plain[..4], &(wire.len() as u32).to_be_bytes());
        assert_eq!(&plain[4..], wire.as_bytes());
        assert_eq!(
            parse(flags, payload),
            Extended::Provide(Provided::Text(text.into()))
        );
    }

    #[test]
    fn caps_name_the_directions_the_session_allows() {
        let message = caps(true, false);
        let (flags, payload) = split(&message);
        assert_eq!(
            flags,
            action::CAPS | action::NOTIFY | action::PROVIDE | TEXT
        );
        assert_eq!(payload, (MAX_CLIPBOARD as u32).to_be_bytes());
        let (flags, _) = split(&caps(false, true));
        assert_eq!(flags, action::CAPS | action::REQUEST | action::PEEK | TEXT);
        assert_eq!(
            parse(
                action::CAPS | action::PROVIDE | TEXT | 2,
                &[0, 0, 1, 0, 0, 0, 0, 9]
            ),
            Extended::Caps {
                actions: action::PROVIDE,
                text_max: Some(256)
            }
        );
    }

    #[test]
    fn a_bad_or_oversized_provide_is_refused_without_inflating_it_all() {
        assert_eq!(
            parse(action::PROVIDE | TEXT, b"not zlib"),
            Extended::Provide(Provided::Malformed)
        );
        // A length over the cap is refused from the length alone.
        let mut plain = ((MAX_CLIPBOARD + 2) as u32).to_be_bytes().to_vec();
        plain.extend_from_slice(b"abc");
        let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
        std::io::Write::write_all(&mut encoder, &plain).unwrap();
        let payload = encoder.finish().unwrap();
        assert_eq!(
            parse(action::PROVIDE | TEXT, &payload),
            Extended::Provide(Provided::TooBig(MAX_CLIPBOARD + 2))
        );
        // Cut short.
        let message = provide("hello");
        let (_, payload) = split(&message);
        assert_eq!(
            parse(action::PROVIDE | TEXT, &payload[..payload.len() / 2]),
            Extended::Provide(Provided::Malformed)
        );
        assert_eq!(
            parse(action::PROVIDE | action::NOTIFY | TEXT, &[]),
            Extended::Other
        );
        assert_eq!(parse(action::REQUEST | TEXT, &[]), Extended::Request);
        assert_eq!(parse(action::NOTIFY, &[]), Extended::Notify(false));
    }

    #[test]
    fn latin1_maps_bytes_to_code_points() {
        assert_eq!(from_latin1(b"caf\xe9"), "café");
        assert_eq!(
            sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

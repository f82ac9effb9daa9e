//! A desktop channel's recording: both directions of its RFB stream as the relay forwarded
//! them, timestamped, so a player can decode it from the start as a viewer would (ZRLE and
//! Tight keep zlib streams across the connection, so there is no starting mid-stream).
//!
//! Layout (`<recording>.desktop-<channel>.rfb`):
//!
//! ```text
//! TETHER-RFB 1\n                       magic line
//! {"width":…,"height":…,…}\n           header (JSON line): size, pixel formats, encodings
//! record*                              [way u8][ms u32 BE][len u32 BE][len bytes]
//! index record                         way 2: JSON [[ms, offset], …], about one a second
//! [offset of the index record u64 BE]["TRFBIDX1"]
//! ```
//!
//! `way` 0 is viewer → device, 1 device → viewer. `ms` counts from the channel's start.
//! Offsets are from the start of the object. A recording cut off (relay crash) has no index;
//! [`Reader`] reads it anyway and builds the index from the records.
//!
//! What the viewer sent is kept as it reached the device, except keystrokes (the keysym of
//! every key event becomes 0 unless the session keeps them) and clipboard text (removed;
//! its size and SHA-256 go to the event log).

use serde::{Deserialize, Serialize};
use tether_rfb::client::{ClientMessage, CutText, Limits, Parser};

/// The first line of a desktop recording.
pub const MAGIC: &[u8] = b"TETHER-RFB 1\n";
/// The last eight bytes of a complete desktop recording.
pub const INDEX_MAGIC: &[u8; 8] = b"TRFBIDX1";
/// Viewer → device.
pub const TO_DEVICE: u8 = 0;
/// Device → viewer.
pub const TO_VIEWER: u8 = 1;
/// The index record.
pub const INDEX: u8 = 2;
/// Bytes before a record's payload.
pub const RECORD_HEADER: usize = 9;
/// How often (milliseconds) the index notes an offset.
pub const INDEX_EVERY_MS: u32 = 1000;

/// The header line: what a player needs before the first record.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    /// Framebuffer width at the start (ServerInit).
    pub width: u16,
    /// Framebuffer height at the start.
    pub height: u16,
    /// The desktop's name (ServerInit).
    pub name: String,
    /// The server's pixel format (ServerInit), 16 bytes as on the wire, hex.
    pub server_format: String,
    /// The viewer's pixel format if it set one before its first update request, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub viewer_format: Option<String>,
    /// The viewer's encodings (its first SetEncodings), after the relay's filter.
    pub encodings: Vec<i32>,
    /// Whether keystrokes are kept (otherwise every keysym is 0).
    pub keystrokes: bool,
    /// The technician.
    pub technician: String,
    /// When the channel opened (Unix milliseconds).
    pub started_ms: i64,
}

impl Header {
    /// The header as one line, newline included.
    pub fn line(&self) -> Vec<u8> {
        let mut s = serde_json::to_vec(self).unwrap_or_default();
        s.push(b'\n');
        s
    }
}

/// A clipboard transfer seen in the viewer's stream (its content is not recorded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clipboard {
    /// Bytes of text.
    pub size: u64,
    /// SHA-256 of the text, hex.
    pub sha256: String,
}

/// Turns what the relay forwards into records, redacting the viewer's keystrokes and
/// clipboard. Pure: the caller appends the bytes it returns to the recording's object.
#[derive(Debug)]
pub struct Encoder {
    viewer: Parser,
    keep_keys: bool,
    /// Bytes written so far (the next record's offset).
    offset: u64,
    index: Vec<(u32, u64)>,
    last_indexed: Option<u32>,
    /// The header until it is written.
    header: Option<Header>,
    /// The server's handshake until ServerInit is read out of it.
    server: Option<Vec<u8>>,
    /// Records held until the header is written.
    held: Vec<(u8, u32, Vec<u8>)>,
    /// The viewer asked for its first update: its formats and encodings are known.
    ready: bool,
}

/// What one call to the encoder produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Encoded {
    /// Bytes to append to the object.
    pub bytes: Vec<u8>,
    /// Clipboard transfers seen.
    pub clipboard: Vec<Clipboard>,
}

/// Bytes held before the header is written anyway (a handshake is far smaller).
const HOLD_LIMIT: usize = 64 * 1024;

impl Encoder {
    /// An encoder for a channel opened at `started_ms` by `technician`; `keep_keys` keeps
    /// keystrokes (a session setting), otherwise they are redacted.
    pub fn new(technician: &str, started_ms: i64, keep_keys: bool) -> Self {
        Self {
            viewer: Parser::new(Limits::default()),
            keep_keys,
            offset: MAGIC.len() as u64,
            index: Vec::new(),
            last_indexed: None,
            header: Some(Header {
                keystrokes: keep_keys,
                technician: technician.to_owned(),
                started_ms,
                ..Header::default()
            }),
            server: Some(Vec::new()),
            held: Vec::new(),
            ready: false,
        }
    }

    /// Takes in bytes forwarded `way` ([`TO_DEVICE`] or [`TO_VIEWER`]) at `ms` since the
    /// channel opened.
    pub fn record(&mut self, way: u8, ms: u32, bytes: &[u8]) -> Encoded {
        let mut out = Encoded::default();
        let payload = if way == TO_DEVICE {
            self.redact(bytes, &mut out.clipboard)
        } else {
            self.read_server_init(bytes);
            bytes.to_vec()
        };
        if self.header.is_none() {
            if !payload.is_empty() {
                self.push(way, ms, &payload, &mut out.bytes);
            }
            return out;
        }
        if !payload.is_empty() {
            self.held.push((way, ms, payload));
        }
        let held: usize = self.held.iter().map(|(_, _, b)| b.len()).sum();
        if self.ready || held > HOLD_LIMIT {
            self.write_header(&mut out.bytes);
        }
        out
    }

    /// The index and trailer, to append last.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_header(&mut out);
        let index = serde_json::to_vec(&self.index).unwrap_or_default();
        let at = self.offset;
        self.push_raw(INDEX, self.last_indexed.unwrap_or(0), &index, &mut out);
        out.extend_from_slice(&at.to_be_bytes());
        out.extend_from_slice(INDEX_MAGIC);
        out
    }

    /// Writes the header (once) and the records held for it.
    fn write_header(&mut self, out: &mut Vec<u8>) {
        let Some(header) = self.header.take() else {
            return;
        };
        let line = header.line();
        self.offset += line.len() as u64;
        out.extend_from_slice(&line);
        for (way, ms, payload) in std::mem::take(&mut self.held) {
            self.push(way, ms, &payload, out);
        }
    }

    fn push(&mut self, way: u8, ms: u32, payload: &[u8], out: &mut Vec<u8>) {
        if self
            .last_indexed
            .is_none_or(|last| ms >= last.saturating_add(INDEX_EVERY_MS))
        {
            self.index.push((ms, self.offset));
            self.last_indexed = Some(ms);
        }
        self.push_raw(way, ms, payload, out);
    }

    fn push_raw(&mut self, way: u8, ms: u32, payload: &[u8], out: &mut Vec<u8>) {
        out.push(way);
        out.extend_from_slice(&ms.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        self.offset += (RECORD_HEADER + payload.len()) as u64;
    }

    /// Reads ServerInit out of the server's handshake: version (12), security types
    /// (1 + n), SecurityResult (4), then width, height, pixel format (16) and name.
    fn read_server_init(&mut self, bytes: &[u8]) {
        let Some(s) = self.server.as_mut() else {
            return;
        };
        s.extend_from_slice(bytes);
        let parsed = (|| {
            let n = usize::from(*s.get(12)?);
            let init = 12 + 1 + n + 4;
            let fixed = s.get(init..init + 24)?;
            let name_len = u32::from_be_bytes([fixed[20], fixed[21], fixed[22], fixed[23]]);
            let name_len = usize::try_from(name_len).ok()?.min(4096);
            let name = s.get(init + 24..init + 24 + name_len)?;
            Some((
                u16::from_be_bytes([fixed[0], fixed[1]]),
                u16::from_be_bytes([fixed[2], fixed[3]]),
                hex::encode(&fixed[4..20]),
                String::from_utf8_lossy(name).into_owned(),
            ))
        })();
        let give_up = s.len() > HOLD_LIMIT;
        if let Some((width, height, format, name)) = parsed {
            if let Some(h) = self.header.as_mut() {
                (h.width, h.height, h.server_format, h.name) = (width, height, format, name);
            }
            self.server = None;
        } else if give_up {
            self.server = None;
        }
    }

    /// The viewer's bytes with keystrokes and clipboard text removed; notes the header's
    /// viewer fields, and marks the header ready at the first update request.
    fn redact(&mut self, bytes: &[u8], clipboard: &mut Vec<Clipboard>) -> Vec<u8> {
        use sha2::{Digest, Sha256};
        self.viewer.push(bytes);
        let mut out = Vec::with_capacity(bytes.len());
        // The relay's filter closes the channel on what it cannot parse: the recording keeps
        // what reached the device, and nothing after an error.
        while let Ok(Some((message, raw))) = self.viewer.next_message() {
            match message {
                ClientMessage::Key { down, .. } if !self.keep_keys => {
                    out.extend_from_slice(&ClientMessage::Key { down, keysym: 0 }.encode());
                }
                ClientMessage::QemuKey { down, .. } if !self.keep_keys => out.extend_from_slice(
                    &ClientMessage::QemuKey {
                        down,
                        keysym: 0,
                        keycode: 0,
                    }
                    .encode(),
                ),
                ClientMessage::CutText(text) => {
                    // Extended Clipboard carries content only in `provide` (zlib-compressed:
                    // its size and hash are of the compressed bytes); the other actions
                    // carry capabilities and stay.
                    let (content, empty) = match text {
                        CutText::Latin1(t) => (t, CutText::Latin1(Vec::new())),
                        CutText::Extended { flags, payload }
                            if flags & tether_rfb::client::clipboard_action::PROVIDE != 0 =>
                        {
                            (
                                payload,
                                CutText::Extended {
                                    flags,
                                    payload: Vec::new(),
                                },
                            )
                        }
                        other => (Vec::new(), other),
                    };
                    if !content.is_empty() {
                        clipboard.push(Clipboard {
                            size: content.len() as u64,
                            sha256: hex::encode(Sha256::digest(&content)),
                        });
                    }
                    out.extend_from_slice(&ClientMessage::CutText(empty).encode());
                }
                ClientMessage::SetPixelFormat(_) => {
                    if let Some(h) = self.header.as_mut() {
                        h.viewer_format = raw.get(4..20).map(hex::encode);
                    }
                    out.extend_from_slice(&raw);
                }
                ClientMessage::SetEncodings(list) => {
                    if let Some(h) = self.header.as_mut()
                        && h.encodings.is_empty()
                    {
                        h.encodings = list;
                    }
                    out.extend_from_slice(&raw);
                }
                ClientMessage::UpdateRequest { .. } => {
                    self.ready = true;
                    out.extend_from_slice(&raw);
                }
                _ => out.extend_from_slice(&raw),
            }
        }
        out
    }
}

/// One record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// [`TO_DEVICE`] or [`TO_VIEWER`].
    pub way: u8,
    /// Milliseconds since the channel opened.
    pub ms: u32,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// Why a desktop recording cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    /// Not a desktop recording.
    #[error("not a Tether desktop recording (no {MAGIC:?} line)")]
    Magic,
    /// The header line is not valid.
    #[error("the desktop recording's header is not valid: {0}")]
    Header(String),
}

/// A desktop recording read back: its header, records and index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reader {
    /// The header.
    pub header: Header,
    /// The records in order.
    pub records: Vec<Record>,
    /// `(ms, offset)` pairs; rebuilt from the records when the trailer is missing.
    pub index: Vec<(u32, u64)>,
    /// Whether the recording ended with its index (it was closed, not cut off).
    pub complete: bool,
}

impl Reader {
    /// Reads a whole recording. A cut-off tail (a partial record) is ignored.
    pub fn read(data: &[u8]) -> Result<Self, ReadError> {
        let rest = data.strip_prefix(MAGIC).ok_or(ReadError::Magic)?;
        let end = rest
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| ReadError::Header("no end of line".into()))?;
        let header: Header =
            serde_json::from_slice(&rest[..end]).map_err(|e| ReadError::Header(e.to_string()))?;
        let mut at = MAGIC.len() + end + 1;
        let mut records = Vec::new();
        let mut built = Vec::new();
        let mut index = None;
        let mut last: Option<u32> = None;
        while let Some(head) = data.get(at..at + RECORD_HEADER) {
            let way = head[0];
            let ms = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
            let len = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) as usize;
            let Some(bytes) = data.get(at + RECORD_HEADER..at + RECORD_HEADER + len) else {
                break;
            };
            if way == INDEX {
                index = serde_json::from_slice(bytes).ok();
                break;
            }
            if last.is_none_or(|l| ms >= l.saturating_add(INDEX_EVERY_MS)) {
                built.push((ms, at as u64));
                last = Some(ms);
            }
            records.push(Record {
                way,
                ms,
                bytes: bytes.to_vec(),
            });
            at += RECORD_HEADER + len;
        }
        let complete = index.is_some() && data.ends_with(INDEX_MAGIC);
        Ok(Self {
            header,
            records,
            index: index.unwrap_or(built),
            complete,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

    use super::*;

    fn server_handshake() -> Vec<u8> {
        let mut s = b"RFB 003.008\n".to_vec();
        s.extend_from_slice(&[1, 1, 0, 0, 0, 0]);
        s.extend_from_slice(&[3, 32, 2, 88]); // 800x600
        s.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
        s.extend_from_slice(&4u32.to_be_bytes());
        s.extend_from_slice(b"kiosk");
        s.truncate(s.len() - 1); // name "kios": length 4
        s
    }

    fn viewer(messages: &[ClientMessage]) -> Vec<u8> {
        messages.iter().flat_map(ClientMessage::encode).collect()
    }

    #[test]
    fn a_session_reads_back_with_its_header_keystrokes_redacted_and_an_index() {
        let mut enc = Encoder::new("carol", 1_700_000_000_000, false);
        let mut object = MAGIC.to_vec();
        let hs = viewer(&[
            ClientMessage::Version,
            ClientMessage::Security,
            ClientMessage::Init { shared: true },
        ]);
        // The server's handshake arrives in two pieces.
        let server = server_handshake();
        object.extend(enc.record(TO_VIEWER, 0, &server[..10]).bytes);
        object.extend(enc.record(TO_DEVICE, 1, &hs).bytes);
        object.extend(enc.record(TO_VIEWER, 2, &server[10..]).bytes);
        assert_eq!(object, MAGIC, "held until the viewer asks for an update");
        let setup = viewer(&[
            ClientMessage::SetEncodings(vec![16, 0, -239]),
            ClientMessage::UpdateRequest {
                incremental: false,
                x: 0,
                y: 0,
                width: 800,
                height: 600,
            },
        ]);
        object.extend(enc.record(TO_DEVICE, 3, &setup).bytes);
        object.extend(enc.record(TO_VIEWER, 1500, &[0, 0, 0, 0]).bytes);
        let typed = viewer(&[
            ClientMessage::Key {
                down: true,
                keysym: 0x70,
            },
            ClientMessage::CutText(CutText::Latin1(b"secret".to_vec())),
        ]);
        let typed_out = enc.record(TO_DEVICE, 2600, &typed);
        assert_eq!(typed_out.clipboard.len(), 1);
        assert_eq!(typed_out.clipboard[0].size, 6);
        object.extend(typed_out.bytes);
        object.extend(enc.finish());

        let read = Reader::read(&object).unwrap();
        assert!(read.complete);
        assert_eq!((read.header.width, read.header.height), (800, 600));
        assert_eq!(read.header.name, "kios");
        assert_eq!(read.header.encodings, vec![16, 0, -239]);
        assert_eq!(read.header.technician, "carol");
        assert!(!read.header.keystrokes);
        assert_eq!(read.records.len(), 6);
        let last = &read.records[5];
        assert_eq!(last.way, TO_DEVICE);
        assert_eq!(
            &last.bytes[..8],
            &[4, 1, 0, 0, 0, 0, 0, 0],
            "keysym redacted"
        );
        assert!(
            !last.bytes.windows(6).any(|w| w == b"secret"),
            "clipboard removed"
        );
        // The index points at records: about one entry a second.
        assert_eq!(
            read.index.iter().map(|(ms, _)| *ms).collect::<Vec<_>>(),
            [0, 1500, 2600]
        );
        for (ms, offset) in &read.index {
            let at = *offset as usize;
            let got = u32::from_be_bytes(object[at + 1..at + 5].try_into().unwrap());
            assert_eq!(got, *ms);
        }
        // Cut off mid-record: what was whole is still read, and the index is rebuilt.
        let trailer = object.len() - 16;
        let index_at = u64::from_be_bytes(object[trailer..trailer + 8].try_into().unwrap());
        let cut = &object[..index_at as usize - 3];
        let partial = Reader::read(cut).unwrap();
        assert!(!partial.complete);
        assert_eq!(partial.records.len(), 5);
        assert_eq!(partial.index[..2], read.index[..2]);
        assert_eq!(Reader::read(b"nope"), Err(ReadError::Magic));
    }

    #[test]
    fn keystrokes_are_kept_when_the_session_says_so() {
        let mut enc = Encoder::new("carol", 0, true);
        let hs = viewer(&[
            ClientMessage::Version,
            ClientMessage::Security,
            ClientMessage::Init { shared: true },
            ClientMessage::UpdateRequest {
                incremental: false,
                x: 0,
                y: 0,
                width: 1,
                height: 1,
            },
            ClientMessage::Key {
                down: true,
                keysym: 0x70,
            },
        ]);
        let mut object = MAGIC.to_vec();
        object.extend(enc.record(TO_DEVICE, 0, &hs).bytes);
        object.extend(enc.finish());
        let read = Reader::read(&object).unwrap();
        assert!(read.header.keystrokes);
        assert!(read.records[0].bytes.ends_with(&0x70u32.to_be_bytes()));
    }
}

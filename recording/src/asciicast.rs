//! asciicast v2, the format `asciinema` records and plays: a JSON header line, then one JSON
//! array per event — `[seconds, "o", text]` for output, `[seconds, "r", "COLSxROWS"]` for a
//! resize, `[seconds, "m", label]` for a marker.
//! <https://docs.asciinema.org/manual/asciicast/v2/>

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The header line.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Header {
    /// Always 2.
    pub version: u8,
    /// Terminal columns.
    pub width: u16,
    /// Terminal rows.
    pub height: u16,
    /// Start (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    /// What ran (absent for a login shell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// A title for players.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Environment (`TERM`, `SHELL`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

impl Header {
    /// The header as one line, newline included.
    pub fn line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// One event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Seconds since the start.
    pub time: f64,
    /// `o` output, `i` input, `r` resize, `m` marker.
    pub code: String,
    /// The text.
    pub data: String,
}

impl Event {
    /// The event as one line, newline included.
    pub fn line(&self) -> String {
        String::from_utf8(event_line(self.time, &self.code, &self.data)).unwrap_or_default()
    }

    /// Parses an event line.
    pub fn parse(line: &str) -> Option<Self> {
        let (time, code, data): (f64, String, String) = serde_json::from_str(line).ok()?;
        Some(Self { time, code, data })
    }
}

/// An event's line (newline included) as bytes, encoded straight from borrowed text: the
/// recorder's path for output, which is most of a shell recording's bytes.
pub fn event_line(time: f64, code: &str, data: &str) -> Vec<u8> {
    // Sized for the data up front: output events are often tens of KiB, and terminal output
    // escapes a few bytes in a hundred (newlines, escape sequences).
    let mut buf = Vec::with_capacity(data.len() + data.len() / 8 + 32);
    buf.push(b'[');
    // A number always serializes (a non-finite one as `null`, which players read as 0).
    if serde_json::to_writer(&mut buf, &round_micros(time)).is_err() {
        buf.extend_from_slice(b"0");
    }
    buf.push(b',');
    push_json_str(&mut buf, code);
    buf.push(b',');
    push_json_str(&mut buf, data);
    buf.extend_from_slice(b"]\n");
    buf
}

/// What a byte becomes in a JSON string, as `serde_json` writes it: 0 for itself, `u` for
/// `\u00XX`, otherwise the letter after a backslash.
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0A] = b'n';
    table[0x0C] = b'f';
    table[0x0D] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Whether any of the eight bytes in `w` needs escaping (a control character, `"` or `\`).
/// Exact as an "any": the borrow tricks only misfire next to a byte that does match.
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    let quote = has_zero(w ^ (ONES * u64::from(b'"')));
    let backslash = has_zero(w ^ (ONES * u64::from(b'\\')));
    (control | quote | backslash) != 0
}

/// Appends `text` as a JSON string, quotes included, byte for byte as `serde_json` would,
/// skipping eight bytes at a time where none needs escaping (most of terminal output).
fn push_json_str(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    out.push(b'"');
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        if let Some(word) = bytes.get(i..i + 8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            if !needs_escape(u64::from_le_bytes(w)) {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        let escape = ESCAPE[usize::from(b)];
        if escape != 0 {
            out.extend_from_slice(&bytes[start..i]);
            if escape == b'u' {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xF)]);
            } else {
                out.push(b'\\');
                out.push(escape);
            }
            start = i + 1;
        }
        i += 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn round_micros(t: f64) -> f64 {
    (t * 1_000_000.0).round() / 1_000_000.0
}

/// Turns a byte stream into text without splitting a UTF-8 sequence across events: an
/// incomplete sequence at the end waits for the next chunk; invalid bytes become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    carry: Vec<u8>,
}

impl Utf8Stream {
    /// The text of `bytes` (after what was carried), keeping an incomplete tail. Valid text
    /// with nothing carried — the usual case — is borrowed, not copied.
    pub fn push<'a>(&mut self, bytes: &'a [u8]) -> Cow<'a, str> {
        if self.carry.is_empty() {
            let keep = incomplete_tail(bytes);
            let (text, tail) = bytes.split_at(bytes.len() - keep);
            self.carry.extend_from_slice(tail);
            return decode(text);
        }
        self.carry.extend_from_slice(bytes);
        let keep = incomplete_tail(&self.carry);
        let rest = self.carry.split_off(self.carry.len() - keep);
        let text = decode(&self.carry).into_owned();
        self.carry = rest;
        Cow::Owned(text)
    }

    /// Whatever is left, lossily.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.carry).into_owned();
        self.carry.clear();
        text
    }
}

/// `bytes` as text: validated in one pass when it is valid UTF-8 (the lossy decoder's
/// chunking is several times slower), invalid bytes as U+FFFD otherwise.
fn decode(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// How many trailing bytes form the start of a multi-byte sequence that is not complete.
fn incomplete_tail(bytes: &[u8]) -> usize {
    for back in 1..=3.min(bytes.len()) {
        let b = bytes[bytes.len() - back];
        let need = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            0x80..=0xBF => continue,
            _ => return 0,
        };
        return if need > back { back } else { 0 };
    }
    0
}

/// A parsed recording, for players.
#[derive(Clone, Debug)]
pub struct Cast {
    /// The header.
    pub header: Header,
    /// The events, in order.
    pub events: Vec<Event>,
}

impl Cast {
    /// Parses a whole asciicast v2 file. Lines that are not events (blank, or a tail cut by
    /// a crash) are skipped.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        let first = lines.next().ok_or("the recording is empty")?;
        let header: Header =
            serde_json::from_str(first).map_err(|e| format!("not an asciicast header: {e}"))?;
        if header.version != 2 {
            return Err(format!(
                "asciicast version {} is not supported",
                header.version
            ));
        }
        let events = lines.filter_map(Event::parse).collect();
        Ok(Self { header, events })
    }

    /// The output text (what a terminal would have received).
    pub fn output(&self) -> String {
        self.events
            .iter()
            .filter(|e| e.code == "o")
            .map(|e| e.data.as_str())
            .collect()
    }

    /// How long the recording lasts.
    pub fn duration(&self) -> f64 {
        self.events.last().map_or(0.0, |e| e.time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_never_split() {
        let mut s = Utf8Stream::default();
        let text = "héllo → ✓ 🎉";
        let bytes = text.as_bytes();
        // Every chunking: sequences cut anywhere, with and without bytes carried over.
        for size in 1..=bytes.len() {
            let mut out = String::new();
            for chunk in bytes.chunks(size) {
                out.push_str(&s.push(chunk));
            }
            out.push_str(&s.finish());
            assert_eq!(out, text, "chunks of {size}");
        }
        // Invalid bytes do not stall the stream.
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(s.push(b"\xe2\x82"), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }

    #[test]
    fn event_lines_are_what_serde_json_writes() {
        // Every byte value an ASCII or UTF-8 text can hold, at every offset of the eight-byte
        // skip, plus longer runs and multi-byte characters.
        let mut texts: Vec<String> = (0u8..0x80)
            .flat_map(|b| {
                (0..10).map(move |pad| {
                    let mut t = "x".repeat(pad);
                    t.push(char::from(b));
                    t.push_str("yz");
                    t
                })
            })
            .collect();
        texts.push(String::new());
        texts.push("-rw-r--r-- 1 bench bench       37 Nov 22 10:00 file-000001.log\n".repeat(40));
        texts.push("\u{1b}[1;32mgreen\u{1b}[0m \"quoted\" back\\slash é → ✓ 🎉\r\n\t\u{7f}".into());
        // A fixed pseudo-random mix of everything above.
        let alphabet: Vec<char> = "ab \"\\\n\r\t\u{0}\u{1f}\u{1b}\u{7f}é€🎉".chars().collect();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..200 {
            let text: String = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    alphabet[(state % alphabet.len() as u64) as usize]
                })
                .collect();
            texts.push(text);
        }
        for text in &texts {
            let ours = event_line(1.5, "o", text);
            let mut theirs = serde_json::to_vec(&(1.5, "o", text)).unwrap();
            theirs.push(b'\n');
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs),
                "{text:?}"
            );
        }
    }

    #[test]
    fn lines_round_trip() {
        let h = Header {
            version: 2,
            width: 80,
            height: 24,
            timestamp: Some(1_700_000_000),
            command: None,
            title: Some("helpdesk/printer".into()),
            env: BTreeMap::from([("TERM".into(), "xterm".into())]),
        };
        let e = Event {
            time: 0.123_456_7,
            code: "o".into(),
            data: "a\"b\r\n".into(),
        };
        let text = format!(
            "{}{}{}",
            h.line(),
            e.line(),
            "[1.5, \"r\", \"100x30\"]\n[2.0, \"o\""
        );
        let cast = Cast::parse(&text).unwrap();
        assert_eq!(cast.header, h);
        assert_eq!(cast.events.len(), 2, "the cut line is skipped");
        assert_eq!(cast.events[0].time, 0.123_457);
        assert_eq!(cast.output(), "a\"b\r\n");
        assert_eq!(cast.duration(), 1.5);
    }
}

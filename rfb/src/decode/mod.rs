//! The viewer's half of RFB without I/O: a [`Decoder`] takes the server's bytes as the viewer
//! saw them (handshake, ServerInit, then server messages) and keeps the framebuffer they
//! draw, as a player of recordings needs it.
//!
//! It decodes what Tether's server sends ([`crate::server`]): Raw, CopyRect, ZRLE (one zlib
//! stream for the connection), Tight (four zlib streams; fill, JPEG, and the copy, palette
//! and gradient filters), the Cursor, DesktopSize, ExtendedDesktopSize, DesktopName and
//! LastRect pseudo-encodings, and skips Bell, ServerCutText (plain and Extended Clipboard),
//! SetColourMapEntries, ServerFence and EndOfContinuousUpdates. The viewer's own bytes go to
//! [`Decoder::push_viewer`], for its SetPixelFormat (the format every later rectangle is in)
//! and the pointer's position (where the cursor is drawn).
//!
//! Like [`crate::client::Parser`] it never panics on any input: a malformed stream is an
//! error, after which the decoder stays failed; every size is checked against [`Limits`]
//! before anything is allocated, and whole rectangles are waited for before any state changes,
//! so bytes may arrive split anywhere. A [`Snapshot`] captures the whole state between two
//! records, zlib streams included, so a player can seek without decoding from the start.

mod framebuffer;
mod framing;
mod pixels;
mod rects;

use thiserror::Error;

use crate::client::{ClientMessage, Limits as ClientLimits, Parser, PixelFormat};
use crate::encoding;
use crate::server::Rect;
pub use framebuffer::{Cursor, Framebuffer};
use pixels::{Pixels, Stream};

/// Bounds on what a stream may make the decoder hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most pixels in the framebuffer.
    pub max_pixels: usize,
    /// The longest desktop name kept (longer ones are an error).
    pub max_name: usize,
    /// The most pixels in a cursor shape.
    pub max_cursor: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // 8K UHD.
            max_pixels: 7680 * 4320,
            max_name: 64 * 1024,
            max_cursor: 512 * 512,
        }
    }
}

/// Why a server's stream cannot be decoded.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The first bytes are not an RFB version.
    #[error("not an RFB server stream")]
    Version,
    /// The server refused the connection.
    #[error("the server refused the connection: {0}")]
    Refused(String),
    /// A security type other than None was used.
    #[error("security type {0} is not supported")]
    Security(u32),
    /// A pixel format that is not true colour of 8, 16 or 32 bits.
    #[error("the pixel format is not supported")]
    PixelFormat,
    /// A message type the decoder does not know.
    #[error("unknown server message type {0}")]
    MessageType(u8),
    /// A rectangle in an encoding the decoder does not implement.
    #[error("unsupported encoding {0}")]
    Encoding(i32),
    /// A rectangle outside the framebuffer.
    #[error("rectangle {0:?} is outside the {1}x{2} framebuffer")]
    Outside(Rect, u16, u16),
    /// Something is larger than the limits allow.
    #[error("{0} is larger than the decoder allows")]
    TooLarge(&'static str),
    /// A zlib stream could not be inflated.
    #[error("a zlib stream of the connection is corrupt")]
    Zlib,
    /// A JPEG rectangle could not be decoded.
    #[error("a Tight JPEG rectangle is not valid: {0}")]
    Jpeg(String),
    /// Data inside a rectangle is inconsistent.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// An earlier error stopped the decoder.
    #[error("the stream failed earlier")]
    Failed,
}

/// What a server message did, as [`Decoder::poll`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// ServerInit was read: the framebuffer exists.
    Ready {
        /// Width.
        width: u16,
        /// Height.
        height: u16,
        /// The desktop's name.
        name: String,
    },
    /// A FramebufferUpdate was applied.
    Update {
        /// The rectangles whose pixels it changed (pixel encodings and copies; a resize
        /// counts as the whole framebuffer).
        damage: Vec<Rect>,
        /// The framebuffer changed size in it.
        resized: bool,
        /// The cursor's shape changed in it.
        cursor: bool,
    },
    /// A message without pixels (Bell, ServerCutText, ServerFence, EndOfContinuousUpdates,
    /// SetColourMapEntries) was skipped.
    Skipped(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Version,
    /// RFB 3.7 and 3.8: the list of security types.
    SecurityTypes,
    /// RFB 3.3: the type the server chose.
    SecurityType,
    SecurityResult,
    ServerInit,
    Messages,
    /// Inside a FramebufferUpdate with this many rectangles to go.
    Update(u16),
    /// Skipping this many bytes of a message whose content is not kept.
    Skip(u64),
}

/// What a FramebufferUpdate has done so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Pending {
    damage: Vec<Rect>,
    resized: bool,
    cursor: bool,
}

/// What decoding one rectangle took.
enum Used {
    /// A rectangle of this many bytes.
    Rect(usize),
    /// LastRect (this many bytes): the update ends.
    Last(usize),
}

/// Decodes a server's stream into a framebuffer. See the [module](self) documentation.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    stage: Stage,
    version: u8,
    buf: Vec<u8>,
    pos: usize,
    failed: bool,
    pixels: Option<Pixels>,
    /// A SetPixelFormat from the viewer, in force from the next update.
    next_format: Option<Pixels>,
    fb: Framebuffer,
    name: String,
    cursor: Option<Cursor>,
    pointer: (u16, u16),
    pending: Pending,
    zrle: Stream,
    tight: [Stream; 4],
    viewer: Option<Parser>,
    scratch: Vec<u8>,
    colours: Vec<u32>,
}

/// Everything a [`Decoder`] holds, for resuming elsewhere ([`Decoder::resume`]): a player
/// keeps one every few seconds of a recording and seeks from the nearest.
///
/// Taken between two messages of each stream (it holds no partial viewer message), it is
/// exact for servers that flush their zlib streams at the end of every rectangle (Tether's
/// server does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    limits: Limits,
    stage: Stage,
    version: u8,
    buffered: Vec<u8>,
    failed: bool,
    format: Option<PixelFormat>,
    next_format: Option<PixelFormat>,
    fb: Framebuffer,
    name: String,
    cursor: Option<Cursor>,
    pointer: (u16, u16),
    pending: Pending,
    /// ZRLE's stream then Tight's four: started, and the last 32 KiB each inflated.
    streams: Vec<(bool, Vec<u8>)>,
}

impl Snapshot {
    /// The framebuffer when it was taken.
    pub fn framebuffer(&self) -> &Framebuffer {
        &self.fb
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

/// Bytes of a FramebufferUpdate's rectangle header.
const RECT_HEADER: usize = 12;

impl Decoder {
    /// A decoder at the start of the server's handshake.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            stage: Stage::Version,
            version: 8,
            buf: Vec::new(),
            pos: 0,
            failed: false,
            pixels: None,
            next_format: None,
            fb: Framebuffer::default(),
            name: String::new(),
            cursor: None,
            pointer: (0, 0),
            pending: Pending::default(),
            zrle: Stream::new(),
            tight: std::array::from_fn(|_| Stream::new()),
            viewer: Some(Parser::new(ClientLimits::default())),
            scratch: Vec::new(),
            colours: Vec::new(),
        }
    }

    /// The framebuffer as decoded so far (empty before ServerInit).
    pub fn framebuffer(&self) -> &Framebuffer {
        &self.fb
    }

    /// The desktop's name (ServerInit, or a later DesktopName).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cursor's shape, once the server sent one.
    pub fn cursor(&self) -> Option<&Cursor> {
        self.cursor.as_ref()
    }

    /// Where the viewer last put the pointer.
    pub fn pointer(&self) -> (u16, u16) {
        self.pointer
    }

    /// Whether ServerInit has been read.
    pub fn is_ready(&self) -> bool {
        self.pixels.is_some()
    }

    /// The framebuffer with the cursor drawn at the pointer, as the viewer showed it.
    pub fn composed(&self) -> Framebuffer {
        let mut fb = self.fb.clone();
        if let Some(c) = &self.cursor {
            fb.draw_cursor(c, self.pointer.0, self.pointer.1);
        }
        fb
    }

    /// Adds bytes the server sent.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed {
            return;
        }
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Adds bytes the viewer sent: its SetPixelFormat applies from the server's next update,
    /// its PointerEvents move the cursor. A viewer stream that cannot be parsed is ignored
    /// from there on (the server would have closed the connection).
    pub fn push_viewer(&mut self, bytes: &[u8]) {
        let Some(parser) = self.viewer.as_mut() else {
            return;
        };
        parser.push(bytes);
        loop {
            match parser.next_message() {
                Ok(Some((ClientMessage::SetPixelFormat(f), _))) => {
                    if let Ok(p) = Pixels::new(f) {
                        self.next_format = Some(p);
                    }
                }
                Ok(Some((ClientMessage::Pointer { x, y, .. }, _))) => self.pointer = (x, y),
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(_) => {
                    self.viewer = None;
                    return;
                }
            }
        }
    }

    /// Bytes received and not yet decoded (part of a message still arriving).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Decodes the next whole message: `Ok(None)` when more bytes are needed.
    pub fn poll(&mut self) -> Result<Option<Event>, DecodeError> {
        if self.failed {
            return Err(DecodeError::Failed);
        }
        let result = self.step();
        if result.is_err() {
            self.failed = true;
            self.buf = Vec::new();
            self.pos = 0;
        }
        result
    }

    /// Takes in `bytes` from the server and decodes every whole message in them, calling
    /// `event` for each.
    pub fn feed(&mut self, bytes: &[u8], mut event: impl FnMut(&Event)) -> Result<(), DecodeError> {
        self.push(bytes);
        while let Some(e) = self.poll()? {
            event(&e);
        }
        Ok(())
    }

    /// Everything the decoder holds, to [`Decoder::resume`] from later.
    pub fn snapshot(&self) -> Snapshot {
        let streams = std::iter::once(&self.zrle)
            .chain(self.tight.iter())
            .map(|s| (s.started, s.window.clone()))
            .collect();
        Snapshot {
            limits: self.limits,
            stage: self.stage,
            version: self.version,
            buffered: self.buf[self.pos..].to_vec(),
            failed: self.failed,
            format: self.pixels.map(|p| p.format),
            next_format: self.next_format.map(|p| p.format),
            fb: self.fb.clone(),
            name: self.name.clone(),
            cursor: self.cursor.clone(),
            pointer: self.pointer,
            pending: self.pending.clone(),
            streams,
        }
    }

    /// A decoder in the state `snapshot` was taken in. The viewer's stream is taken to be
    /// between two messages.
    pub fn resume(snapshot: &Snapshot) -> Self {
        let stream = |i: usize| {
            snapshot
                .streams
                .get(i)
                .map_or_else(Stream::new, |(started, w)| Stream::resume(*started, w))
        };
        let viewer = Parser::after_handshake(ClientLimits::default());
        Self {
            limits: snapshot.limits,
            stage: snapshot.stage,
            version: snapshot.version,
            buf: snapshot.buffered.clone(),
            pos: 0,
            failed: snapshot.failed,
            pixels: snapshot.format.and_then(|f| Pixels::new(f).ok()),
            next_format: snapshot.next_format.and_then(|f| Pixels::new(f).ok()),
            fb: snapshot.fb.clone(),
            name: snapshot.name.clone(),
            cursor: snapshot.cursor.clone(),
            pointer: snapshot.pointer,
            pending: snapshot.pending.clone(),
            zrle: stream(0),
            tight: std::array::from_fn(|i| stream(i + 1)),
            viewer: Some(viewer),
            scratch: Vec::new(),
            colours: Vec::new(),
        }
    }

    fn available(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
    }

    /// Decodes the rectangle at the start of `avail`: the bytes it took, `None` if it is not
    /// all there.
    fn decode_rect(&mut self, avail: &[u8]) -> Result<Option<Used>, DecodeError> {
        let Some(header) = avail.get(..RECT_HEADER) else {
            return Ok(None);
        };
        let rect = Rect::new(
            u16_at(header, 0).unwrap_or(0),
            u16_at(header, 2).unwrap_or(0),
            u16_at(header, 4).unwrap_or(0),
            u16_at(header, 6).unwrap_or(0),
        );
        let enc = u32_at(header, 8).unwrap_or(0) as i32;
        let Some(pixels) = self.pixels else {
            return Err(DecodeError::Malformed("update before ServerInit"));
        };
        let body = &avail[RECT_HEADER..];
        let inside = u32::from(rect.x) + u32::from(rect.width) <= u32::from(self.fb.width)
            && u32::from(rect.y) + u32::from(rect.height) <= u32::from(self.fb.height);
        let is_pixels = matches!(
            enc,
            encoding::RAW | encoding::COPY_RECT | encoding::ZRLE | encoding::TIGHT
        );
        if is_pixels && !inside {
            return Err(DecodeError::Outside(rect, self.fb.width, self.fb.height));
        }
        let used = match enc {
            encoding::RAW => {
                let len = rect.area() * pixels.bytes;
                let Some(data) = body.get(..len) else {
                    return Ok(None);
                };
                let mut px = std::mem::take(&mut self.colours);
                px.clear();
                px.extend(data.chunks_exact(pixels.bytes).map(|b| pixels.whole(b)));
                self.fb.put(rect, &px);
                self.colours = px;
                len
            }
            encoding::COPY_RECT => {
                let (Some(sx), Some(sy)) = (u16_at(body, 0), u16_at(body, 2)) else {
                    return Ok(None);
                };
                let src = Rect::new(sx, sy, rect.width, rect.height);
                if src.intersect(&Rect::new(0, 0, self.fb.width, self.fb.height)) != src
                    && !src.is_empty()
                {
                    return Err(DecodeError::Outside(src, self.fb.width, self.fb.height));
                }
                if !rect.is_empty() {
                    self.fb.copy(sx, sy, rect);
                }
                4
            }
            encoding::ZRLE => match rects::zrle_len(body, rect, &pixels)? {
                None => return Ok(None),
                Some(len) => {
                    self.zrle(rect, &pixels, &body[4..len])?;
                    len
                }
            },
            encoding::TIGHT => match rects::tight_len(body, rect, &pixels)? {
                None => return Ok(None),
                Some(len) => {
                    self.tight(rect, &pixels, &body[..len])?;
                    len
                }
            },
            encoding::CURSOR => {
                let area = rect.area();
                if area > self.limits.max_cursor {
                    return Err(DecodeError::TooLarge("the cursor"));
                }
                let mask_row = usize::from(rect.width).div_ceil(8);
                let len = area * pixels.bytes + mask_row * usize::from(rect.height);
                let Some(data) = body.get(..len) else {
                    return Ok(None);
                };
                let (colours, mask) = data.split_at(area * pixels.bytes);
                let w = usize::from(rect.width);
                let argb = colours
                    .chunks_exact(pixels.bytes)
                    .enumerate()
                    .map(|(i, b)| {
                        let (x, y) = (i % w.max(1), i / w.max(1));
                        let bit = mask
                            .get(y * mask_row + x / 8)
                            .map_or(0, |m| m >> (7 - x % 8));
                        let alpha = if bit & 1 != 0 { 0xFF00_0000 } else { 0 };
                        alpha | pixels.whole(b)
                    })
                    .collect();
                self.cursor = Some(Cursor {
                    hot_x: rect.x,
                    hot_y: rect.y,
                    width: rect.width,
                    height: rect.height,
                    argb,
                });
                self.pending.cursor = true;
                len
            }
            encoding::DESKTOP_SIZE => {
                self.resize(rect.width, rect.height)?;
                0
            }
            encoding::EXTENDED_DESKTOP_SIZE => {
                let Some(&n) = body.first() else {
                    return Ok(None);
                };
                let len = 4 + 16 * usize::from(n);
                if body.len() < len {
                    return Ok(None);
                }
                // y is the status: only a successful change resizes.
                if rect.y == 0 {
                    self.resize(rect.width, rect.height)?;
                }
                len
            }
            encoding::DESKTOP_NAME => {
                let Some(n) = u32_at(body, 0) else {
                    return Ok(None);
                };
                let n = n as usize;
                if n > self.limits.max_name {
                    return Err(DecodeError::TooLarge("the desktop's name"));
                }
                let Some(name) = body.get(4..4 + n) else {
                    return Ok(None);
                };
                self.name = String::from_utf8_lossy(name).into_owned();
                4 + n
            }
            encoding::LAST_RECT => return Ok(Some(Used::Last(RECT_HEADER))),
            other => return Err(DecodeError::Encoding(other)),
        };
        if is_pixels && !rect.is_empty() {
            self.pending.damage.push(rect);
        }
        Ok(Some(Used::Rect(RECT_HEADER + used)))
    }

    fn resize(&mut self, width: u16, height: u16) -> Result<(), DecodeError> {
        if usize::from(width) * usize::from(height) > self.limits.max_pixels {
            return Err(DecodeError::TooLarge("the framebuffer"));
        }
        if (width, height) != (self.fb.width, self.fb.height) {
            self.fb.resize(width, height);
            self.pending.resized = true;
        }
        self.pending.damage.push(Rect::new(0, 0, width, height));
        Ok(())
    }
}

/// A big-endian u16 at `at`.
fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

/// A big-endian u32 at `at`.
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// The 16-byte PIXEL_FORMAT structure (`b` holds 16 bytes).
pub fn parse_format(b: &[u8]) -> PixelFormat {
    let at = |i: usize| b.get(i).copied().unwrap_or(0);
    PixelFormat {
        bits_per_pixel: at(0),
        depth: at(1),
        big_endian: at(2) != 0,
        true_colour: at(3) != 0,
        red_max: u16_at(b, 4).unwrap_or(0),
        green_max: u16_at(b, 6).unwrap_or(0),
        blue_max: u16_at(b, 8).unwrap_or(0),
        red_shift: at(10),
        green_shift: at(11),
        blue_shift: at(12),
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;

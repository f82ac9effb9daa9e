//! What a viewer sends: the client half of the RFB 3.8 handshake (version, security type
//! None, ClientInit), then client messages (RFC 6143 §7.5 and the extensions Tether allows:
//! EnableContinuousUpdates, Fence, SetDesktopSize, QEMU extended key events, Extended
//! Clipboard). [`Parser`] reads them from bytes as they arrive; anything else is an error,
//! and the channel it came on is closed.

use thiserror::Error;

/// The only protocol version Tether's server speaks.
pub const VERSION: &[u8; 12] = b"RFB 003.008\n";

/// Security type None (the channel is authenticated by the relay at both ends).
pub const SECURITY_NONE: u8 = 1;

/// Limits on what one message may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes of clipboard text (or Extended Clipboard payload) in one message.
    pub cut_text: usize,
    /// The most encodings in one SetEncodings.
    pub encodings: usize,
    /// The most screens in one SetDesktopSize.
    pub screens: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cut_text: 1 << 20,
            encodings: 256,
            screens: 16,
        }
    }
}

/// A pixel format (RFC 6143 §7.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelFormat {
    /// Bits per pixel: 8, 16 or 32.
    pub bits_per_pixel: u8,
    /// Useful bits in a pixel.
    pub depth: u8,
    /// Multi-byte pixels are big-endian.
    pub big_endian: bool,
    /// True colour (otherwise a colour map).
    pub true_colour: bool,
    /// Largest red value.
    pub red_max: u16,
    /// Largest green value.
    pub green_max: u16,
    /// Largest blue value.
    pub blue_max: u16,
    /// Shift of red in a pixel.
    pub red_shift: u8,
    /// Shift of green in a pixel.
    pub green_shift: u8,
    /// Shift of blue in a pixel.
    pub blue_shift: u8,
}

/// One screen of a SetDesktopSize layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Screen {
    /// Screen id.
    pub id: u32,
    /// Left edge.
    pub x: u16,
    /// Top edge.
    pub y: u16,
    /// Width.
    pub width: u16,
    /// Height.
    pub height: u16,
    /// Flags.
    pub flags: u32,
}

/// Clipboard text from the viewer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CutText {
    /// Plain RFB: Latin-1 text.
    Latin1(Vec<u8>),
    /// Extended Clipboard: flags (action bits and formats), then the action's payload.
    Extended {
        /// The action and format bits.
        flags: u32,
        /// What follows the flags (for `provide`: zlib-compressed data).
        payload: Vec<u8>,
    },
}

/// Extended Clipboard action bits (in `CutText::Extended::flags`).
pub mod clipboard_action {
    /// The sender's capabilities.
    pub const CAPS: u32 = 1 << 24;
    /// Asks the other side for its clipboard.
    pub const REQUEST: u32 = 1 << 25;
    /// Asks which formats the other side's clipboard has.
    pub const PEEK: u32 = 1 << 26;
    /// Says which formats the sender's clipboard has.
    pub const NOTIFY: u32 = 1 << 27;
    /// Carries the sender's clipboard.
    pub const PROVIDE: u32 = 1 << 28;
}

/// One thing a viewer sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    /// The protocol version the viewer chose (always [`VERSION`]).
    Version,
    /// The security type the viewer chose (always [`SECURITY_NONE`]).
    Security,
    /// ClientInit: whether other viewers may stay connected.
    Init {
        /// Shared session.
        shared: bool,
    },
    /// SetPixelFormat.
    SetPixelFormat(PixelFormat),
    /// SetEncodings, in the viewer's order of preference.
    SetEncodings(Vec<i32>),
    /// FramebufferUpdateRequest.
    UpdateRequest {
        /// Only what changed.
        incremental: bool,
        /// Left edge.
        x: u16,
        /// Top edge.
        y: u16,
        /// Width.
        width: u16,
        /// Height.
        height: u16,
    },
    /// KeyEvent.
    Key {
        /// Pressed (otherwise released).
        down: bool,
        /// X keysym.
        keysym: u32,
    },
    /// PointerEvent.
    Pointer {
        /// Buttons held (bit 0 = left).
        buttons: u8,
        /// Column.
        x: u16,
        /// Row.
        y: u16,
    },
    /// ClientCutText.
    CutText(CutText),
    /// EnableContinuousUpdates.
    ContinuousUpdates {
        /// On or off.
        enable: bool,
        /// Left edge.
        x: u16,
        /// Top edge.
        y: u16,
        /// Width.
        width: u16,
        /// Height.
        height: u16,
    },
    /// ClientFence.
    Fence {
        /// Flags.
        flags: u32,
        /// Up to 64 bytes the server echoes.
        payload: Vec<u8>,
    },
    /// SetDesktopSize.
    SetDesktopSize {
        /// Width.
        width: u16,
        /// Height.
        height: u16,
        /// Layout.
        screens: Vec<Screen>,
    },
    /// QEMU extended key event.
    QemuKey {
        /// Pressed (otherwise released).
        down: bool,
        /// X keysym.
        keysym: u32,
        /// XT scan code.
        keycode: u32,
    },
}

/// Why the viewer's stream cannot be read on.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The viewer asked for a protocol version other than 3.8.
    #[error("the viewer asked for protocol version {0:?}; only RFB 003.008 is spoken")]
    Version(String),
    /// The viewer chose a security type other than None.
    #[error("the viewer chose security type {0}; only None (1) is offered")]
    Security(u8),
    /// A message type Tether does not allow.
    #[error("message type {0} is not allowed on the desktop channel")]
    Unknown(u8),
    /// xvp: shutdown, reboot or reset.
    #[error("xvp messages (shut down, reboot or reset the device) are not allowed")]
    Xvp,
    /// A QEMU message sub-type other than extended key events.
    #[error("QEMU message sub-type {0} is not allowed")]
    QemuSubtype(u8),
    /// A message bigger than its limit.
    #[error("{what} of {size} exceeds the limit of {limit}")]
    TooLarge {
        /// What.
        what: &'static str,
        /// How big it said it was.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A field with a value the protocol forbids.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The stream failed before; nothing more is read from it.
    #[error("the viewer's stream failed earlier")]
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Version,
    Security,
    Init,
    Messages,
}

/// Reads a viewer's bytes as they arrive: [`Parser::push`] what came, then call
/// [`Parser::next_message`] until it returns `Ok(None)`. Each message comes with the exact bytes it
/// was read from, for forwarding unchanged. After an error every call returns
/// [`ParseError::Failed`].
#[derive(Debug)]
pub struct Parser {
    limits: Limits,
    stage: Stage,
    buf: Vec<u8>,
    failed: bool,
}

/// A message and the bytes it was read from.
pub type Parsed = (ClientMessage, Vec<u8>);

impl Parser {
    /// A parser at the start of the handshake.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            stage: Stage::Version,
            buf: Vec::new(),
            failed: false,
        }
    }

    /// A parser past the handshake (for a stream picked up after ClientInit).
    pub fn after_handshake(limits: Limits) -> Self {
        Self {
            stage: Stage::Messages,
            ..Self::new(limits)
        }
    }

    /// Adds bytes that arrived.
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes received but not yet part of a whole message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Parsed>, ParseError> {
        if self.failed {
            return Err(ParseError::Failed);
        }
        match self.parse() {
            Ok(Some((message, len))) => {
                let raw: Vec<u8> = self.buf.drain(..len).collect();
                Ok(Some((message, raw)))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.failed = true;
                self.buf = Vec::new();
                Err(e)
            }
        }
    }

    /// Parses the message at the front of the buffer: the message and its length.
    fn parse(&mut self) -> Result<Option<(ClientMessage, usize)>, ParseError> {
        let b = Bytes(&self.buf);
        match self.stage {
            Stage::Version => {
                let Some(version) = b.slice(0, 12) else {
                    // A wrong version is refused as soon as it differs, not after 12 bytes.
                    if !VERSION.starts_with(&self.buf) {
                        return Err(ParseError::Version(
                            String::from_utf8_lossy(&self.buf).into_owned(),
                        ));
                    }
                    return Ok(None);
                };
                if version != VERSION {
                    return Err(ParseError::Version(
                        String::from_utf8_lossy(version).into_owned(),
                    ));
                }
                self.stage = Stage::Security;
                Ok(Some((ClientMessage::Version, 12)))
            }
            Stage::Security => {
                let Some(kind) = b.u8(0) else { return Ok(None) };
                if kind != SECURITY_NONE {
                    return Err(ParseError::Security(kind));
                }
                self.stage = Stage::Init;
                Ok(Some((ClientMessage::Security, 1)))
            }
            Stage::Init => {
                let Some(shared) = b.u8(0) else {
                    return Ok(None);
                };
                self.stage = Stage::Messages;
                Ok(Some((
                    ClientMessage::Init {
                        shared: shared != 0,
                    },
                    1,
                )))
            }
            Stage::Messages => parse_message(b, &self.limits),
        }
    }
}

/// A view of buffered bytes whose reads return `None` past the end.
#[derive(Clone, Copy)]
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn slice(self, at: usize, len: usize) -> Option<&'a [u8]> {
        self.0.get(at..at.checked_add(len)?)
    }
    fn u8(self, at: usize) -> Option<u8> {
        self.0.get(at).copied()
    }
    fn u16(self, at: usize) -> Option<u16> {
        self.slice(at, 2).map(|s| u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(self, at: usize) -> Option<u32> {
        self.slice(at, 4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn rect(self, at: usize) -> Option<(u16, u16, u16, u16)> {
        Some((
            self.u16(at)?,
            self.u16(at + 2)?,
            self.u16(at + 4)?,
            self.u16(at + 6)?,
        ))
    }
}

/// `Ok(None)` when a field is not all there yet.
macro_rules! need {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return Ok(None),
        }
    };
}

fn parse_message(
    b: Bytes<'_>,
    limits: &Limits,
) -> Result<Option<(ClientMessage, usize)>, ParseError> {
    let kind = need!(b.u8(0));
    let parsed = match kind {
        0 => {
            let p = need!(b.slice(4, 16));
            let format = PixelFormat {
                bits_per_pixel: p[0],
                depth: p[1],
                big_endian: p[2] != 0,
                true_colour: p[3] != 0,
                red_max: u16::from_be_bytes([p[4], p[5]]),
                green_max: u16::from_be_bytes([p[6], p[7]]),
                blue_max: u16::from_be_bytes([p[8], p[9]]),
                red_shift: p[10],
                green_shift: p[11],
                blue_shift: p[12],
            };
            if !matches!(format.bits_per_pixel, 8 | 16 | 32) || format.depth > format.bits_per_pixel
            {
                return Err(ParseError::Malformed("pixel format"));
            }
            (ClientMessage::SetPixelFormat(format), 20)
        }
        2 => {
            let count = usize::from(need!(b.u16(2)));
            if count > limits.encodings {
                return Err(ParseError::TooLarge {
                    what: "a SetEncodings list",
                    size: count,
                    limit: limits.encodings,
                });
            }
            let list = need!(b.slice(4, count * 4));
            let encodings = list
                .chunks_exact(4)
                .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (ClientMessage::SetEncodings(encodings), 4 + count * 4)
        }
        3 => {
            let incremental = need!(b.u8(1)) != 0;
            let (x, y, width, height) = need!(b.rect(2));
            (
                ClientMessage::UpdateRequest {
                    incremental,
                    x,
                    y,
                    width,
                    height,
                },
                10,
            )
        }
        4 => {
            let down = need!(b.u8(1)) != 0;
            let keysym = need!(b.u32(4));
            (ClientMessage::Key { down, keysym }, 8)
        }
        5 => {
            let buttons = need!(b.u8(1));
            let (x, y) = (need!(b.u16(2)), need!(b.u16(4)));
            (ClientMessage::Pointer { buttons, x, y }, 6)
        }
        6 => {
            let length = need!(b.u32(4)) as i32;
            let size = length.unsigned_abs() as usize;
            if size > limits.cut_text {
                return Err(ParseError::TooLarge {
                    what: "clipboard text",
                    size,
                    limit: limits.cut_text,
                });
            }
            let data = need!(b.slice(8, size));
            let text = if length >= 0 {
                CutText::Latin1(data.to_vec())
            } else {
                let Some(flags) = Bytes(data).u32(0) else {
                    return Err(ParseError::Malformed("extended clipboard message"));
                };
                CutText::Extended {
                    flags,
                    payload: data[4..].to_vec(),
                }
            };
            (ClientMessage::CutText(text), 8 + size)
        }
        150 => {
            let enable = need!(b.u8(1)) != 0;
            let (x, y, width, height) = need!(b.rect(2));
            (
                ClientMessage::ContinuousUpdates {
                    enable,
                    x,
                    y,
                    width,
                    height,
                },
                10,
            )
        }
        248 => {
            let flags = need!(b.u32(4));
            let length = usize::from(need!(b.u8(8)));
            if length > 64 {
                return Err(ParseError::TooLarge {
                    what: "a fence payload",
                    size: length,
                    limit: 64,
                });
            }
            let payload = need!(b.slice(9, length)).to_vec();
            (ClientMessage::Fence { flags, payload }, 9 + length)
        }
        250 => return Err(ParseError::Xvp),
        251 => {
            let (width, height) = (need!(b.u16(2)), need!(b.u16(4)));
            let count = usize::from(need!(b.u8(6)));
            if count > limits.screens {
                return Err(ParseError::TooLarge {
                    what: "a screen layout",
                    size: count,
                    limit: limits.screens,
                });
            }
            let layout = need!(b.slice(8, count * 16));
            let screens = layout
                .chunks_exact(16)
                .map(|s| {
                    let s = Bytes(s);
                    Screen {
                        id: s.u32(0).unwrap_or(0),
                        x: s.u16(4).unwrap_or(0),
                        y: s.u16(6).unwrap_or(0),
                        width: s.u16(8).unwrap_or(0),
                        height: s.u16(10).unwrap_or(0),
                        flags: s.u32(12).unwrap_or(0),
                    }
                })
                .collect();
            (
                ClientMessage::SetDesktopSize {
                    width,
                    height,
                    screens,
                },
                8 + count * 16,
            )
        }
        255 => {
            let subtype = need!(b.u8(1));
            if subtype != 0 {
                return Err(ParseError::QemuSubtype(subtype));
            }
            let down = need!(b.u16(2)) != 0;
            let (keysym, keycode) = (need!(b.u32(4)), need!(b.u32(8)));
            (
                ClientMessage::QemuKey {
                    down,
                    keysym,
                    keycode,
                },
                12,
            )
        }
        other => return Err(ParseError::Unknown(other)),
    };
    Ok(Some(parsed))
}

#[path = "client_encode.rs"]
mod encode;

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;

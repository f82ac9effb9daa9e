//! The stream's framing: the handshake (version, security, ServerInit) and the server
//! messages, each read only once it is whole, and a FramebufferUpdate's rectangles handed one
//! at a time to the rectangle decoders.

use super::pixels::Pixels;
use super::{DecodeError, Decoder, Event, Framebuffer, Stage, Used, parse_format, u16_at, u32_at};
use crate::server::message_type;

impl Decoder {
    pub(super) fn step(&mut self) -> Result<Option<Event>, DecodeError> {
        loop {
            let avail = self.available();
            match self.stage {
                Stage::Version => {
                    let Some(v) = avail.get(..12) else {
                        return Ok(None);
                    };
                    if !v.starts_with(b"RFB 003.") || v[11] != b'\n' {
                        return Err(DecodeError::Version);
                    }
                    let minor = &v[8..11];
                    self.version = match minor {
                        b"003" | b"004" | b"005" | b"006" => 3,
                        b"007" => 7,
                        _ => 8,
                    };
                    self.stage = if self.version == 3 {
                        Stage::SecurityType
                    } else {
                        Stage::SecurityTypes
                    };
                    self.consume(12);
                }
                Stage::SecurityTypes => {
                    let Some(&n) = avail.first() else {
                        return Ok(None);
                    };
                    if n == 0 {
                        return self.refused(1);
                    }
                    let n = usize::from(n);
                    if avail.len() < 1 + n {
                        return Ok(None);
                    }
                    if !avail[1..=n].contains(&crate::client::SECURITY_NONE) {
                        return Err(DecodeError::Security(u32::from(avail[1])));
                    }
                    self.consume(1 + n);
                    self.stage = if self.version == 8 {
                        Stage::SecurityResult
                    } else {
                        Stage::ServerInit
                    };
                }
                Stage::SecurityType => {
                    let Some(t) = u32_at(avail, 0) else {
                        return Ok(None);
                    };
                    match t {
                        0 => return self.refused(4),
                        1 => {}
                        other => return Err(DecodeError::Security(other)),
                    }
                    self.consume(4);
                    self.stage = Stage::ServerInit;
                }
                Stage::SecurityResult => {
                    let Some(result) = u32_at(avail, 0) else {
                        return Ok(None);
                    };
                    if result != 0 {
                        return self.refused(4);
                    }
                    self.consume(4);
                    self.stage = Stage::ServerInit;
                }
                Stage::ServerInit => return self.server_init(),
                Stage::Messages => {
                    let Some(&kind) = avail.first() else {
                        return Ok(None);
                    };
                    if let Some(event) = self.message(kind)? {
                        return Ok(Some(event));
                    }
                    if matches!(self.stage, Stage::Messages) {
                        return Ok(None);
                    }
                }
                Stage::Update(0) => {
                    self.stage = Stage::Messages;
                    let done = std::mem::take(&mut self.pending);
                    return Ok(Some(Event::Update {
                        damage: done.damage,
                        resized: done.resized,
                        cursor: done.cursor,
                    }));
                }
                Stage::Update(left) => {
                    if !self.rectangle(left)? {
                        return Ok(None);
                    }
                }
                Stage::Skip(n) => {
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(avail.len());
                    if take == 0 && n > 0 {
                        return Ok(None);
                    }
                    self.consume(take);
                    let left = n - take as u64;
                    if left > 0 {
                        self.stage = Stage::Skip(left);
                        return Ok(None);
                    }
                    self.stage = Stage::Messages;
                }
            }
        }
    }

    /// A refusal with its reason after `skip` bytes: an error whether or not the reason is
    /// all there yet (nothing can follow it).
    fn refused(&mut self, skip: usize) -> Result<Option<Event>, DecodeError> {
        let avail = self.available();
        let Some(len) = u32_at(avail, skip) else {
            return Ok(None);
        };
        let len = (len as usize).min(1024);
        let Some(reason) = avail.get(skip + 4..skip + 4 + len) else {
            return Ok(None);
        };
        Err(DecodeError::Refused(
            String::from_utf8_lossy(reason).into_owned(),
        ))
    }

    fn server_init(&mut self) -> Result<Option<Event>, DecodeError> {
        let avail = self.available();
        let Some(fixed) = avail.get(..24) else {
            return Ok(None);
        };
        let width = u16_at(fixed, 0).unwrap_or(0);
        let height = u16_at(fixed, 2).unwrap_or(0);
        let format = parse_format(&fixed[4..20]);
        let name_len = u32_at(fixed, 20).unwrap_or(0) as usize;
        if name_len > self.limits.max_name {
            return Err(DecodeError::TooLarge("the desktop's name"));
        }
        let Some(name) = avail.get(24..24 + name_len) else {
            return Ok(None);
        };
        let name = String::from_utf8_lossy(name).into_owned();
        if usize::from(width) * usize::from(height) > self.limits.max_pixels {
            return Err(DecodeError::TooLarge("the framebuffer"));
        }
        self.pixels = Some(Pixels::new(format)?);
        self.fb = Framebuffer::new(width, height);
        self.name.clone_from(&name);
        self.consume(24 + name_len);
        self.stage = Stage::Messages;
        Ok(Some(Event::Ready {
            width,
            height,
            name,
        }))
    }

    /// Starts or decodes the message of type `kind`; `Ok(None)` with the stage unchanged
    /// when it is not all there yet.
    fn message(&mut self, kind: u8) -> Result<Option<Event>, DecodeError> {
        let avail = self.available();
        match kind {
            message_type::FRAMEBUFFER_UPDATE => {
                let Some(count) = u16_at(avail, 2) else {
                    return Ok(None);
                };
                self.consume(4);
                if let Some(p) = self.next_format.take() {
                    self.pixels = Some(p);
                }
                self.stage = Stage::Update(count);
                Ok(None)
            }
            1 => {
                // SetColourMapEntries: true-colour formats only, so it changes nothing.
                let Some(n) = u16_at(avail, 4) else {
                    return Ok(None);
                };
                self.consume(6);
                self.stage = Stage::Skip(6 * u64::from(n));
                Ok(Some(Event::Skipped(kind)))
            }
            message_type::BELL | message_type::END_OF_CONTINUOUS_UPDATES => {
                self.consume(1);
                Ok(Some(Event::Skipped(kind)))
            }
            message_type::CUT_TEXT => {
                let Some(len) = u32_at(avail, 4) else {
                    return Ok(None);
                };
                // Extended Clipboard sends the length negated.
                let len = (len as i32).unsigned_abs();
                self.consume(8);
                self.stage = Stage::Skip(u64::from(len));
                Ok(Some(Event::Skipped(kind)))
            }
            message_type::FENCE => {
                let Some(&len) = avail.get(8) else {
                    return Ok(None);
                };
                if len > 64 {
                    return Err(DecodeError::Malformed("ServerFence"));
                }
                self.consume(9);
                self.stage = Stage::Skip(u64::from(len));
                Ok(Some(Event::Skipped(kind)))
            }
            other => Err(DecodeError::MessageType(other)),
        }
    }

    /// Decodes the next rectangle of an update if it is all there; false if not.
    fn rectangle(&mut self, left: u16) -> Result<bool, DecodeError> {
        // The buffer is lent out so the rectangle's bytes can be read while the framebuffer
        // and streams change.
        let buf = std::mem::take(&mut self.buf);
        let result = self.decode_rect(buf.get(self.pos..).unwrap_or_default());
        self.buf = buf;
        match result? {
            None => Ok(false),
            Some(Used::Rect(n)) => {
                self.consume(n);
                self.stage = Stage::Update(left - 1);
                Ok(true)
            }
            Some(Used::Last(n)) => {
                self.consume(n);
                self.stage = Stage::Update(0);
                Ok(true)
            }
        }
    }
}

//! The compressed encodings: how long a ZRLE or Tight rectangle is on the wire (read before
//! any state changes, so a rectangle split across reads is decoded once it is whole), and
//! decoding them into the framebuffer.

use super::pixels::Pixels;
use super::{DecodeError, Decoder, u32_at};
use crate::server::Rect;

/// ZRLE's tile edge.
const TILE: u16 = 64;
/// Tight's filtered data shorter than this is sent without zlib.
const MIN_TO_COMPRESS: usize = 12;

/// The most bytes the tiles of a ZRLE `rect` can inflate to: per tile a subencoding byte
/// and a palette, per pixel at most a CPIXEL and one byte of run length.
fn zrle_cap(rect: Rect, pixels: &Pixels) -> usize {
    let cp = pixels.cpixel_len();
    let tiles = usize::from(rect.width.div_ceil(TILE)) * usize::from(rect.height.div_ceil(TILE));
    tiles * (1 + 127 * cp) + rect.area() * (cp + 1)
}

/// The most bytes compressed data of `inflated` bytes takes (stored blocks and flushes).
fn deflated_cap(inflated: usize) -> usize {
    inflated + inflated / 16 + 1024
}

/// The length of a ZRLE rectangle's body (length field included), `None` if it is not all
/// there yet.
pub(super) fn zrle_len(
    body: &[u8],
    rect: Rect,
    pixels: &Pixels,
) -> Result<Option<usize>, DecodeError> {
    let Some(len) = u32_at(body, 0) else {
        return Ok(None);
    };
    let len = len as usize;
    if len > deflated_cap(zrle_cap(rect, pixels)) {
        return Err(DecodeError::TooLarge("a ZRLE rectangle"));
    }
    Ok((body.len() >= 4 + len).then_some(4 + len))
}

/// Tight's compact length at `at`: `(value, bytes)`, `None` if not all there.
fn compact(body: &[u8], at: usize) -> Option<(usize, usize)> {
    let a = usize::from(*body.get(at)?);
    if a & 0x80 == 0 {
        return Some((a, 1));
    }
    let b = usize::from(*body.get(at + 1)?);
    if b & 0x80 == 0 {
        return Some(((a & 0x7F) | (b << 7), 2));
    }
    let c = usize::from(*body.get(at + 2)?);
    Some(((a & 0x7F) | ((b & 0x7F) << 7) | (c << 14), 3))
}

/// Decompressed ZRLE data being read.
struct Bytes<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let s = self
            .data
            .get(self.at..self.at + n)
            .ok_or(DecodeError::Malformed("ZRLE tile"))?;
        self.at += n;
        Ok(s)
    }

    /// A run length (at most `area`).
    fn run(&mut self, area: usize) -> Result<usize, DecodeError> {
        let mut len = 1usize;
        loop {
            let b = self.take(1)?[0];
            len += usize::from(b);
            if len > area {
                return Err(DecodeError::Malformed("ZRLE run"));
            }
            if b != 255 {
                return Ok(len);
            }
        }
    }
}

/// How a Tight rectangle of basic compression is laid out.
struct Basic {
    stream: usize,
    filter: u8,
    /// Where the palette starts and how many colours it has.
    palette: (usize, usize),
    /// Bytes of filtered data.
    data_len: usize,
    /// Where the data (or its compact length) starts.
    data_at: usize,
}

fn basic(body: &[u8], rect: Rect, pixels: &Pixels) -> Result<Option<Basic>, DecodeError> {
    let Some(&control) = body.first() else {
        return Ok(None);
    };
    let kind = control >> 4;
    let tp = pixels.tpixel_len();
    let mut at = 1;
    let filter = if kind & 4 != 0 {
        let Some(&f) = body.get(at) else {
            return Ok(None);
        };
        at += 1;
        f
    } else {
        0
    };
    let area = rect.area();
    let mut palette = (0, 0);
    let data_len = match filter {
        0 | 2 => area * tp,
        1 => {
            let Some(&n) = body.get(at) else {
                return Ok(None);
            };
            let n = usize::from(n) + 1;
            palette = (at + 1, n);
            at += 1 + n * tp;
            if n == 2 {
                usize::from(rect.width).div_ceil(8) * usize::from(rect.height)
            } else {
                area
            }
        }
        _ => return Err(DecodeError::Malformed("Tight filter")),
    };
    Ok(Some(Basic {
        stream: usize::from(kind & 3),
        filter,
        palette,
        data_len,
        data_at: at,
    }))
}

/// The length of a Tight rectangle's body, `None` if it is not all there yet.
pub(super) fn tight_len(
    body: &[u8],
    rect: Rect,
    pixels: &Pixels,
) -> Result<Option<usize>, DecodeError> {
    let Some(&control) = body.first() else {
        return Ok(None);
    };
    let end = match control >> 4 {
        8 => 1 + pixels.tpixel_len(),
        9 => {
            let Some((len, n)) = compact(body, 1) else {
                return Ok(None);
            };
            1 + n + len
        }
        kind if kind & 8 == 0 => {
            let Some(b) = basic(body, rect, pixels)? else {
                return Ok(None);
            };
            if b.data_len < MIN_TO_COMPRESS {
                b.data_at + b.data_len
            } else {
                let Some((len, n)) = compact(body, b.data_at) else {
                    return Ok(None);
                };
                if len > deflated_cap(b.data_len) {
                    return Err(DecodeError::TooLarge("a Tight rectangle"));
                }
                b.data_at + n + len
            }
        }
        _ => return Err(DecodeError::Malformed("Tight compression control")),
    };
    Ok((body.len() >= end).then_some(end))
}

impl Decoder {
    /// Decodes a ZRLE rectangle's zlib data (inside the framebuffer).
    pub(super) fn zrle(
        &mut self,
        rect: Rect,
        pixels: &Pixels,
        zlib: &[u8],
    ) -> Result<(), DecodeError> {
        let mut data = std::mem::take(&mut self.scratch);
        let result = self
            .zrle
            .inflate(zlib, &mut data, zrle_cap(rect, pixels))
            .and_then(|()| self.zrle_tiles(rect, pixels, &data));
        self.scratch = data;
        result
    }

    fn zrle_tiles(&mut self, rect: Rect, pixels: &Pixels, data: &[u8]) -> Result<(), DecodeError> {
        let cp = pixels.cpixel_len();
        let mut d = Bytes { data, at: 0 };
        let mut tile = std::mem::take(&mut self.colours);
        let mut palette = Vec::with_capacity(128);
        for ty in (0..rect.height).step_by(usize::from(TILE)) {
            for tx in (0..rect.width).step_by(usize::from(TILE)) {
                let tw = TILE.min(rect.width - tx);
                let th = TILE.min(rect.height - ty);
                let area = usize::from(tw) * usize::from(th);
                let sub = d.take(1)?[0];
                let n = usize::from(sub & 0x7F);
                palette.clear();
                for _ in 0..n {
                    palette.push(pixels.cpixel(d.take(cp)?));
                }
                tile.clear();
                match sub {
                    0 => {
                        let raw = d.take(area * cp)?;
                        tile.extend(raw.chunks_exact(cp).map(|b| pixels.cpixel(b)));
                    }
                    1 => tile.resize(area, palette.first().copied().unwrap_or(0)),
                    2..=16 => {
                        let bits = match n {
                            2 => 1,
                            3 | 4 => 2,
                            _ => 4,
                        };
                        let w = usize::from(tw);
                        for _ in 0..th {
                            let row = d.take((w * bits).div_ceil(8))?;
                            for x in 0..w {
                                let bit = x * bits;
                                let v = (row[bit / 8] >> (8 - bits - bit % 8)) & ((1 << bits) - 1);
                                let p = palette
                                    .get(usize::from(v))
                                    .ok_or(DecodeError::Malformed("ZRLE palette index"))?;
                                tile.push(*p);
                            }
                        }
                    }
                    128 => {
                        while tile.len() < area {
                            let p = pixels.cpixel(d.take(cp)?);
                            let len = d.run(area)?;
                            if tile.len() + len > area {
                                return Err(DecodeError::Malformed("ZRLE run"));
                            }
                            tile.resize(tile.len() + len, p);
                        }
                    }
                    130..=255 => {
                        while tile.len() < area {
                            let b = d.take(1)?[0];
                            let p = *palette
                                .get(usize::from(b & 0x7F))
                                .ok_or(DecodeError::Malformed("ZRLE palette index"))?;
                            let len = if b & 0x80 != 0 { d.run(area)? } else { 1 };
                            if tile.len() + len > area {
                                return Err(DecodeError::Malformed("ZRLE run"));
                            }
                            tile.resize(tile.len() + len, p);
                        }
                    }
                    _ => return Err(DecodeError::Malformed("ZRLE subencoding")),
                }
                self.fb
                    .put(Rect::new(rect.x + tx, rect.y + ty, tw, th), &tile);
            }
        }
        self.colours = tile;
        if d.at != data.len() {
            return Err(DecodeError::Malformed("ZRLE data after the tiles"));
        }
        Ok(())
    }

    /// Decodes a whole Tight rectangle's body (inside the framebuffer).
    pub(super) fn tight(
        &mut self,
        rect: Rect,
        pixels: &Pixels,
        body: &[u8],
    ) -> Result<(), DecodeError> {
        let control = body.first().copied().unwrap_or(0);
        for (i, stream) in self.tight.iter_mut().enumerate() {
            if control & (1 << i) != 0 {
                stream.reset();
            }
        }
        match control >> 4 {
            8 => {
                let colour = pixels.tpixel(body.get(1..).unwrap_or_default());
                self.fb.fill(rect, colour);
                Ok(())
            }
            9 => {
                let (len, n) = compact(body, 1).ok_or(DecodeError::Malformed("Tight JPEG"))?;
                let jpeg = body
                    .get(1 + n..1 + n + len)
                    .ok_or(DecodeError::Malformed("Tight JPEG"))?;
                self.jpeg(rect, jpeg)
            }
            _ => {
                let b = basic(body, rect, pixels)?.ok_or(DecodeError::Malformed("Tight"))?;
                let mut data = std::mem::take(&mut self.scratch);
                let result = self.tight_basic(rect, pixels, body, &b, &mut data);
                self.scratch = data;
                result
            }
        }
    }

    fn tight_basic(
        &mut self,
        rect: Rect,
        pixels: &Pixels,
        body: &[u8],
        b: &Basic,
        data: &mut Vec<u8>,
    ) -> Result<(), DecodeError> {
        let tp = pixels.tpixel_len();
        if b.data_len < MIN_TO_COMPRESS {
            data.clear();
            data.extend_from_slice(
                body.get(b.data_at..b.data_at + b.data_len)
                    .ok_or(DecodeError::Malformed("Tight"))?,
            );
        } else {
            let (len, n) = compact(body, b.data_at).ok_or(DecodeError::Malformed("Tight"))?;
            let zlib = body
                .get(b.data_at + n..b.data_at + n + len)
                .ok_or(DecodeError::Malformed("Tight"))?;
            self.tight[b.stream].inflate(zlib, data, b.data_len)?;
        }
        if data.len() != b.data_len {
            return Err(DecodeError::Malformed("Tight data length"));
        }
        let mut px = std::mem::take(&mut self.colours);
        px.clear();
        let w = usize::from(rect.width);
        match b.filter {
            0 => px.extend(data.chunks_exact(tp).map(|c| pixels.tpixel(c))),
            2 => pixels.gradient(data, w, &mut px),
            _ => {
                let (at, n) = b.palette;
                let palette: Vec<u32> = body
                    .get(at..at + n * tp)
                    .ok_or(DecodeError::Malformed("Tight palette"))?
                    .chunks_exact(tp)
                    .map(|c| pixels.tpixel(c))
                    .collect();
                if n == 2 {
                    for row in data.chunks(w.div_ceil(8).max(1)) {
                        px.extend((0..w).map(|x| {
                            let bit = row.get(x / 8).map_or(0, |v| (v >> (7 - x % 8)) & 1);
                            palette[usize::from(bit)]
                        }));
                    }
                } else {
                    for &i in data.iter() {
                        px.push(
                            *palette
                                .get(usize::from(i))
                                .ok_or(DecodeError::Malformed("Tight palette index"))?,
                        );
                    }
                }
            }
        }
        let ok = px.len() == rect.area();
        if ok {
            self.fb.put(rect, &px);
        }
        self.colours = px;
        if ok {
            Ok(())
        } else {
            Err(DecodeError::Malformed("Tight pixels"))
        }
    }

    fn jpeg(&mut self, rect: Rect, jpeg: &[u8]) -> Result<(), DecodeError> {
        let mut dec = jpeg_decoder::Decoder::new(jpeg);
        dec.set_max_decoding_buffer_size(4 * rect.area() + 4096);
        dec.read_info()
            .map_err(|e| DecodeError::Jpeg(e.to_string()))?;
        let info = dec
            .info()
            .ok_or_else(|| DecodeError::Jpeg("no header".into()))?;
        if (info.width, info.height) != (rect.width, rect.height) {
            return Err(DecodeError::Jpeg(format!(
                "{}x{} in a {}x{} rectangle",
                info.width, info.height, rect.width, rect.height
            )));
        }
        let data = dec.decode().map_err(|e| DecodeError::Jpeg(e.to_string()))?;
        let mut px = std::mem::take(&mut self.colours);
        px.clear();
        match info.pixel_format {
            jpeg_decoder::PixelFormat::RGB24 => px.extend(
                data.chunks_exact(3)
                    .map(|c| (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2])),
            ),
            jpeg_decoder::PixelFormat::L8 => {
                px.extend(data.iter().map(|&l| u32::from(l) * 0x01_01_01));
            }
            other => {
                self.colours = px;
                return Err(DecodeError::Jpeg(format!("pixel format {other:?}")));
            }
        }
        let ok = px.len() == rect.area();
        if ok {
            self.fb.put(rect, &px);
        }
        self.colours = px;
        if ok {
            Ok(())
        } else {
            Err(DecodeError::Jpeg("fewer pixels than the rectangle".into()))
        }
    }
}

//! For the tests: a viewer that decodes FramebufferUpdates (Raw, CopyRect, ZRLE, Tight with
//! its JPEG) into a framebuffer of pixel values, written from the specifications and not from
//! the encoders, so tests compare the pixels a viewer would show.

#![allow(clippy::unwrap_used)] // Test helpers fail loudly.

use flate2::{Decompress, FlushDecompress};

pub(crate) use super::fixtures::*;
use crate::client::PixelFormat;
use crate::encoding;
use crate::server::{Image, Rect};

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos + n;
        let b = self
            .bytes
            .get(self.pos..end)
            .ok_or_else(|| format!("truncated at {} (wanted {n} more)", self.pos))?;
        self.pos = end;
        Ok(b)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn done(&self) -> bool {
        self.pos == self.bytes.len()
    }
}

/// A viewer's decoding state and framebuffer.
pub(crate) struct Viewer {
    pub(crate) format: PixelFormat,
    pub(crate) width: u16,
    pub(crate) height: u16,
    /// Pixel values, row-major.
    pub(crate) fb: Vec<u32>,
    zrle: Decompress,
    tight: [Decompress; 4],
    /// Every rectangle's encoding, in order.
    pub(crate) encodings: Vec<i32>,
    /// Every rectangle, in order.
    pub(crate) rects: Vec<Rect>,
    /// Every Tight rectangle's compression-control byte, in order.
    pub(crate) tight_controls: Vec<u8>,
}

impl Viewer {
    pub(crate) fn new(format: PixelFormat, width: u16, height: u16) -> Self {
        Self {
            format,
            width,
            height,
            fb: vec![0; usize::from(width) * usize::from(height)],
            zrle: Decompress::new(true),
            tight: std::array::from_fn(|_| Decompress::new(true)),
            encodings: Vec::new(),
            rects: Vec::new(),
            tight_controls: Vec::new(),
        }
    }

    /// A viewer whose framebuffer already shows `image`.
    pub(crate) fn showing(format: PixelFormat, image: &Image<'_>) -> Self {
        let mut v = Self::new(format, image.width, image.height);
        v.fb = expected(image, image.bounds(), &format);
        v
    }

    /// The values held for `rect`.
    pub(crate) fn pixels(&self, rect: Rect) -> Vec<u32> {
        let mut out = Vec::new();
        for y in rect.y..rect.y + rect.height {
            let start = usize::from(y) * usize::from(self.width) + usize::from(rect.x);
            out.extend_from_slice(&self.fb[start..start + usize::from(rect.width)]);
        }
        out
    }

    /// Decodes one FramebufferUpdate message, which must be exactly `msg`.
    pub(crate) fn apply(&mut self, msg: &[u8]) -> Result<(), String> {
        let mut r = Reader { bytes: msg, pos: 0 };
        if r.u8()? != 0 {
            return Err("not a FramebufferUpdate".into());
        }
        r.u8()?;
        let count = r.u16()?;
        for _ in 0..count {
            let rect = Rect::new(r.u16()?, r.u16()?, r.u16()?, r.u16()?);
            let enc = r.u32()? as i32;
            let end_x = u32::from(rect.x) + u32::from(rect.width);
            let end_y = u32::from(rect.y) + u32::from(rect.height);
            if end_x > u32::from(self.width) || end_y > u32::from(self.height) {
                return Err(format!("{rect:?} outside the framebuffer"));
            }
            self.encodings.push(enc);
            self.rects.push(rect);
            match enc {
                encoding::RAW => {
                    let mut px = Vec::new();
                    for _ in 0..rect.area() {
                        px.push(self.whole(&mut r)?);
                    }
                    self.put(rect, &px);
                }
                encoding::COPY_RECT => {
                    let src = Rect::new(r.u16()?, r.u16()?, rect.width, rect.height);
                    if u32::from(src.y) + u32::from(src.height) > u32::from(self.height) {
                        return Err("copy source outside the framebuffer".into());
                    }
                    let px = self.pixels(src);
                    self.put(rect, &px);
                }
                encoding::ZRLE => self.zrle(&mut r, rect)?,
                encoding::TIGHT => self.tight(&mut r, rect)?,
                other => return Err(format!("unexpected encoding {other}")),
            }
        }
        if !r.done() {
            return Err(format!("{} trailing bytes", msg.len() - r.pos));
        }
        Ok(())
    }

    fn put(&mut self, rect: Rect, px: &[u32]) {
        for (i, row) in px.chunks(usize::from(rect.width)).enumerate() {
            let start = (usize::from(rect.y) + i) * usize::from(self.width) + usize::from(rect.x);
            self.fb[start..start + row.len()].copy_from_slice(row);
        }
    }

    fn whole(&self, r: &mut Reader<'_>) -> Result<u32, String> {
        let n = usize::from(self.format.bits_per_pixel / 8);
        let b = r.take(n)?;
        let mut v = 0u32;
        for i in 0..n {
            let byte = if self.format.big_endian {
                b[i]
            } else {
                b[n - 1 - i]
            };
            v = (v << 8) | u32::from(byte);
        }
        // Bits outside the colour channels are padding, which viewers ignore.
        Ok(v & self.format.pixel(255, 255, 255))
    }

    /// Reads a 3-byte pixel in the format's byte order.
    fn three(&self, r: &mut Reader<'_>) -> Result<u32, String> {
        let b = r.take(3)?;
        let [a, m, z] = [b[0], b[1], b[2]].map(u32::from);
        Ok(if self.format.big_endian {
            (a << 16) | (m << 8) | z
        } else {
            (z << 16) | (m << 8) | a
        })
    }

    fn cpixel(&self, r: &mut Reader<'_>) -> Result<u32, String> {
        let f = &self.format;
        if f.bits_per_pixel == 32 && f.depth <= 24 {
            let max = f.pixel(255, 255, 255);
            if max < 1 << 24 {
                return self.three(r);
            }
            if max & 0xFF == 0 {
                return Ok(self.three(r)? << 8);
            }
        }
        self.whole(r)
    }

    fn tpixel(&self, r: &mut Reader<'_>) -> Result<u32, String> {
        let f = &self.format;
        if f.bits_per_pixel == 32
            && f.depth == 24
            && [f.red_max, f.green_max, f.blue_max] == [255; 3]
        {
            let b = r.take(3)?;
            return Ok(u32::from(b[0]) << f.red_shift
                | u32::from(b[1]) << f.green_shift
                | u32::from(b[2]) << f.blue_shift);
        }
        self.whole(r)
    }

    fn zrle(&mut self, r: &mut Reader<'_>, rect: Rect) -> Result<(), String> {
        let len = r.u32()? as usize;
        let data = inflate(&mut self.zrle, r.take(len)?)?;
        let mut d = Reader {
            bytes: &data,
            pos: 0,
        };
        for ty in (0..rect.height).step_by(64) {
            for tx in (0..rect.width).step_by(64) {
                let tw = 64.min(rect.width - tx);
                let th = 64.min(rect.height - ty);
                let tile = Rect::new(rect.x + tx, rect.y + ty, tw, th);
                let px = self.zrle_tile(&mut d, tile.area(), usize::from(tw))?;
                self.put(tile, &px);
            }
        }
        if !d.done() {
            return Err("ZRLE data left after the tiles".into());
        }
        Ok(())
    }

    fn zrle_tile(&self, d: &mut Reader<'_>, area: usize, w: usize) -> Result<Vec<u32>, String> {
        let sub = d.u8()?;
        let palette_len = usize::from(sub & 0x7F);
        let mut palette = Vec::new();
        for _ in 0..palette_len {
            palette.push(self.cpixel(d)?);
        }
        let mut px = Vec::with_capacity(area);
        let run = |d: &mut Reader<'_>| -> Result<usize, String> {
            let mut len = 1;
            loop {
                let b = d.u8()?;
                len += usize::from(b);
                if b != 255 {
                    return Ok(len);
                }
            }
        };
        match sub {
            0 => {
                for _ in 0..area {
                    px.push(self.cpixel(d)?);
                }
            }
            1 => px.resize(area, palette[0]),
            2..=16 => {
                let bits = match palette_len {
                    2 => 1,
                    3 | 4 => 2,
                    _ => 4,
                };
                let h = area / w;
                for _ in 0..h {
                    let row = d.take((w * bits).div_ceil(8))?;
                    for x in 0..w {
                        let bit = x * bits;
                        let v = (row[bit / 8] >> (8 - bits - bit % 8)) & ((1 << bits) - 1);
                        px.push(*palette.get(usize::from(v)).ok_or("index past palette")?);
                    }
                }
            }
            128 => {
                while px.len() < area {
                    let p = self.cpixel(d)?;
                    let len = run(d)?;
                    px.resize(px.len() + len, p);
                }
            }
            130..=255 => {
                while px.len() < area {
                    let b = d.u8()?;
                    let p = *palette
                        .get(usize::from(b & 0x7F))
                        .ok_or("index past palette")?;
                    let len = if b & 0x80 != 0 { run(d)? } else { 1 };
                    px.resize(px.len() + len, p);
                }
            }
            _ => return Err(format!("invalid ZRLE subencoding {sub}")),
        }
        if px.len() != area {
            return Err("ZRLE run past the tile".into());
        }
        Ok(px)
    }

    fn tight(&mut self, r: &mut Reader<'_>, rect: Rect) -> Result<(), String> {
        if rect.width > 2048 || rect.area() > 65536 {
            return Err(format!("Tight rectangle {rect:?} too large"));
        }
        let control = r.u8()?;
        self.tight_controls.push(control);
        for i in 0..4 {
            if control & (1 << i) != 0 {
                self.tight[i].reset(true);
            }
        }
        let kind = control >> 4;
        let (w, area) = (usize::from(rect.width), rect.area());
        if kind == 8 {
            let p = self.tpixel(r)?;
            self.put(rect, &vec![p; area]);
            return Ok(());
        }
        if kind == 9 {
            let len = compact(r)?;
            let jpeg = r.take(len)?;
            let mut dec = jpeg_decoder::Decoder::new(jpeg);
            let rgb = dec.decode().map_err(|e| e.to_string())?;
            let info = dec.info().ok_or("no JPEG info")?;
            if (info.width, info.height) != (rect.width, rect.height) {
                return Err("JPEG of the wrong size".into());
            }
            let px: Vec<u32> = rgb
                .chunks_exact(3)
                .map(|c| self.format.pixel(c[0], c[1], c[2]))
                .collect();
            if px.len() != area {
                return Err("JPEG not RGB".into());
            }
            self.put(rect, &px);
            return Ok(());
        }
        if kind & 8 != 0 {
            return Err(format!("invalid Tight compression {kind}"));
        }
        let stream = usize::from(kind & 3);
        let filter = if kind & 4 != 0 { r.u8()? } else { 0 };
        let mut palette = Vec::new();
        let data_len = match filter {
            0 => area * self.tpixel_len(),
            1 => {
                let n = usize::from(r.u8()?) + 1;
                for _ in 0..n {
                    palette.push(self.tpixel(r)?);
                }
                if n == 2 {
                    w.div_ceil(8) * usize::from(rect.height)
                } else {
                    area
                }
            }
            other => return Err(format!("unexpected Tight filter {other}")),
        };
        let data = if data_len < 12 {
            r.take(data_len)?.to_vec()
        } else {
            let len = compact(r)?;
            inflate(&mut self.tight[stream], r.take(len)?)?
        };
        if data.len() != data_len {
            return Err(format!(
                "Tight data of {} bytes, not {data_len}",
                data.len()
            ));
        }
        let mut d = Reader {
            bytes: &data,
            pos: 0,
        };
        let px: Vec<u32> = match (filter, palette.len()) {
            (0, _) => (0..area)
                .map(|_| self.tpixel(&mut d))
                .collect::<Result<_, _>>()?,
            (_, 2) => data
                .chunks(w.div_ceil(8))
                .flat_map(|row| (0..w).map(move |x| (row[x / 8] >> (7 - x % 8)) & 1))
                .map(|i| palette[usize::from(i)])
                .collect(),
            _ => data
                .iter()
                .map(|&i| {
                    palette
                        .get(usize::from(i))
                        .copied()
                        .ok_or("index past palette")
                })
                .collect::<Result<_, _>>()?,
        };
        self.put(rect, &px);
        Ok(())
    }

    fn tpixel_len(&self) -> usize {
        let f = &self.format;
        if f.bits_per_pixel == 32
            && f.depth == 24
            && [f.red_max, f.green_max, f.blue_max] == [255; 3]
        {
            3
        } else {
            usize::from(f.bits_per_pixel / 8)
        }
    }
}

fn compact(r: &mut Reader<'_>) -> Result<usize, String> {
    let a = usize::from(r.u8()?);
    if a & 0x80 == 0 {
        return Ok(a);
    }
    let b = usize::from(r.u8()?);
    if b & 0x80 == 0 {
        return Ok((a & 0x7F) | b << 7);
    }
    let c = usize::from(r.u8()?);
    Ok((a & 0x7F) | (b & 0x7F) << 7 | c << 14)
}

/// Inflates all of `input` (ending in a sync flush) on the stream `z`.
fn inflate(z: &mut Decompress, input: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(4 * input.len() + 1024);
    let mut rest = input;
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity());
        }
        let (before_in, before_out) = (z.total_in(), z.total_out());
        z.decompress_vec(rest, &mut out, FlushDecompress::Sync)
            .map_err(|e| e.to_string())?;
        let used = (z.total_in() - before_in) as usize;
        rest = &rest[used..];
        if rest.is_empty() && out.len() < out.capacity() {
            return Ok(out);
        }
        if used == 0 && z.total_out() == before_out {
            return Err("inflate made no progress".into());
        }
    }
}

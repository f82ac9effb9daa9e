//! Pixels as the viewer receives them: values in its pixel format, ZRLE's CPIXEL and Tight's
//! TPIXEL, turned into `0x00RRGGBB` colours; and the bounded zlib inflation both encodings use.

use flate2::{Decompress, FlushDecompress, Status};

use super::DecodeError;
use crate::client::PixelFormat;

/// How a pixel is laid out on the wire, and how its value becomes a colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pixels {
    /// The pixel format in force.
    pub(crate) format: PixelFormat,
    /// Bytes of a whole pixel (1, 2 or 4).
    pub(crate) bytes: usize,
    /// ZRLE's CPIXEL: 3 bytes (and the shift of its value) or the whole pixel.
    cpixel: Option<u32>,
    /// Tight's TPIXEL is three bytes red, green, blue.
    tpixel_rgb: bool,
}

impl Pixels {
    /// The layout for `format`; only formats [`PixelFormat::is_supported`] accepts.
    pub(crate) fn new(format: PixelFormat) -> Result<Self, DecodeError> {
        if !format.is_supported() {
            return Err(DecodeError::PixelFormat);
        }
        let all = format.pixel(255, 255, 255);
        let cpixel = if format.bits_per_pixel != 32 || format.depth > 24 {
            None
        } else if all >> 24 == 0 {
            Some(0)
        } else if all & 0xFF == 0 {
            Some(8)
        } else {
            None
        };
        let tpixel_rgb = format.bits_per_pixel == 32
            && format.depth == 24
            && [format.red_max, format.green_max, format.blue_max] == [255; 3];
        Ok(Self {
            format,
            bytes: format.bytes_per_pixel(),
            cpixel,
            tpixel_rgb,
        })
    }

    /// Bytes of a CPIXEL.
    pub(crate) fn cpixel_len(&self) -> usize {
        if self.cpixel.is_some() { 3 } else { self.bytes }
    }

    /// Bytes of a TPIXEL.
    pub(crate) fn tpixel_len(&self) -> usize {
        if self.tpixel_rgb { 3 } else { self.bytes }
    }

    /// The value of the whole pixel at the start of `b` (which holds at least
    /// [`Pixels::bytes`]).
    pub(crate) fn value(&self, b: &[u8]) -> u32 {
        let n = self.bytes.min(b.len());
        let mut v = 0u32;
        for i in 0..n {
            let byte = if self.format.big_endian {
                b[i]
            } else {
                b[n - 1 - i]
            };
            v = (v << 8) | u32::from(byte);
        }
        v
    }

    /// The colour of a pixel value.
    pub(crate) fn colour(&self, v: u32) -> u32 {
        let f = &self.format;
        (channel(v, f.red_shift, f.red_max) << 16)
            | (channel(v, f.green_shift, f.green_max) << 8)
            | channel(v, f.blue_shift, f.blue_max)
    }

    /// The colour of the whole pixel at the start of `b`.
    pub(crate) fn whole(&self, b: &[u8]) -> u32 {
        self.colour(self.value(b))
    }

    /// The colour of the CPIXEL at the start of `b`.
    pub(crate) fn cpixel(&self, b: &[u8]) -> u32 {
        match (self.cpixel, b) {
            (Some(shift), [x, y, z, ..]) => {
                let [x, y, z] = [*x, *y, *z].map(u32::from);
                let v = if self.format.big_endian {
                    (x << 16) | (y << 8) | z
                } else {
                    (z << 16) | (y << 8) | x
                };
                self.colour(v << shift)
            }
            _ => self.whole(b),
        }
    }

    /// The colour of the TPIXEL at the start of `b`.
    pub(crate) fn tpixel(&self, b: &[u8]) -> u32 {
        match (self.tpixel_rgb, b) {
            (true, [r, g, bl, ..]) => (u32::from(*r) << 16) | (u32::from(*g) << 8) | u32::from(*bl),
            _ => self.whole(b),
        }
    }

    /// Tight's gradient filter undone over `data` (`width`×`height` TPIXELs of differences
    /// from the prediction left + above − above-left, per channel, modulo its range).
    pub(crate) fn gradient(&self, data: &[u8], width: usize, out: &mut Vec<u32>) {
        let len = self.tpixel_len();
        let f = &self.format;
        // Channel maxima and how a TPIXEL's channels are read.
        let max = if self.tpixel_rgb {
            [255u32; 3]
        } else {
            [f.red_max, f.green_max, f.blue_max].map(u32::from)
        };
        let channels = |b: &[u8]| -> [u32; 3] {
            if self.tpixel_rgb {
                [b[0], b[1], b[2]].map(u32::from)
            } else {
                let v = self.value(b);
                [
                    (v >> f.red_shift) & max[0],
                    (v >> f.green_shift) & max[1],
                    (v >> f.blue_shift) & max[2],
                ]
            }
        };
        let mut above = vec![[0u32; 3]; width];
        let mut row = vec![[0u32; 3]; width];
        out.clear();
        for line in data.chunks_exact((len * width).max(1)) {
            for x in 0..width {
                let diff = channels(&line[x * len..]);
                let left = if x > 0 { row[x - 1] } else { [0; 3] };
                let up_left = if x > 0 { above[x - 1] } else { [0; 3] };
                for c in 0..3 {
                    let predicted = (i64::from(left[c]) + i64::from(above[x][c])
                        - i64::from(up_left[c]))
                    .clamp(0, i64::from(max[c])) as u32;
                    row[x][c] = predicted.wrapping_add(diff[c]) & max[c];
                }
            }
            out.extend(row.iter().map(|px| {
                if self.tpixel_rgb {
                    (px[0] << 16) | (px[1] << 8) | px[2]
                } else {
                    (scale(px[0], max[0]) << 16)
                        | (scale(px[1], max[1]) << 8)
                        | scale(px[2], max[2])
                }
            }));
            std::mem::swap(&mut above, &mut row);
        }
    }
}

/// A channel of `v` scaled to 0–255.
fn channel(v: u32, shift: u8, max: u16) -> u32 {
    let max = u32::from(max);
    scale(v.checked_shr(u32::from(shift)).unwrap_or(0) & max, max)
}

/// `c` of 0–`max` scaled to 0–255.
fn scale(c: u32, max: u32) -> u32 {
    match max {
        0 => 0,
        255 => c & 255,
        _ => ((c.min(max) * 255 + max / 2) / max) & 255,
    }
}

/// A zlib stream of the connection, with the last 32 KiB it produced: enough to rebuild it
/// elsewhere (see [`super::Snapshot`]).
#[derive(Debug)]
pub(crate) struct Stream {
    z: Decompress,
    /// Whether the zlib header has been read (a rebuilt stream starts after it).
    pub(crate) started: bool,
    /// The last bytes inflated, at most [`WINDOW`].
    pub(crate) window: Vec<u8>,
}

/// zlib's window.
pub(crate) const WINDOW: usize = 32 * 1024;

impl Stream {
    /// A stream at its start.
    pub(crate) fn new() -> Self {
        Self {
            z: Decompress::new(true),
            started: false,
            window: Vec::new(),
        }
    }

    /// A stream in the state a snapshot describes: raw deflate, its window primed by stored
    /// blocks of the bytes it last produced (valid when the server flushed its stream at the
    /// end of each rectangle, as Tether's, TigerVNC's and libvncserver's do).
    pub(crate) fn resume(started: bool, window: &[u8]) -> Self {
        if !started {
            return Self::new();
        }
        let mut z = Decompress::new(false);
        let window = &window[window.len().saturating_sub(WINDOW)..];
        let mut blocks = Vec::with_capacity(window.len() + 5);
        let len = window.len() as u16;
        blocks.push(0);
        blocks.extend_from_slice(&len.to_le_bytes());
        blocks.extend_from_slice(&(!len).to_le_bytes());
        blocks.extend_from_slice(window);
        let mut sink = Vec::with_capacity(window.len() + 16);
        // Stored blocks cannot fail to inflate; if zlib says otherwise, the next rectangle's
        // inflation reports it.
        let _ = z.decompress_vec(&blocks, &mut sink, FlushDecompress::Sync);
        Self {
            z,
            started: true,
            window: window.to_vec(),
        }
    }

    /// Starts the stream afresh (Tight's reset bits).
    pub(crate) fn reset(&mut self) {
        *self = Self::new();
    }

    /// Inflates all of `input` into `out` (replacing it), failing if it would exceed `cap`.
    pub(crate) fn inflate(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        cap: usize,
    ) -> Result<(), DecodeError> {
        out.clear();
        let mut rest = input;
        loop {
            if out.len() == out.capacity() {
                let room = out
                    .len()
                    .clamp(4096, 1 << 20)
                    .min(cap + 1 - out.len().min(cap));
                out.reserve(room.max(1));
            }
            let (before_in, before_out) = (self.z.total_in(), self.z.total_out());
            let status = self
                .z
                .decompress_vec(rest, out, FlushDecompress::Sync)
                .map_err(|_| DecodeError::Zlib)?;
            let used =
                usize::try_from(self.z.total_in() - before_in).map_err(|_| DecodeError::Zlib)?;
            rest = rest.get(used..).ok_or(DecodeError::Zlib)?;
            if used > 0 {
                self.started = true;
            }
            if out.len() > cap {
                return Err(DecodeError::TooLarge("inflated data"));
            }
            if status == Status::StreamEnd {
                // The server ended its stream: what follows it cannot be read.
                if !rest.is_empty() {
                    return Err(DecodeError::Zlib);
                }
                break;
            }
            if rest.is_empty() && out.len() < out.capacity() {
                break;
            }
            if used == 0 && self.z.total_out() == before_out {
                if rest.is_empty() {
                    break;
                }
                return Err(DecodeError::Zlib);
            }
        }
        if out.len() >= WINDOW {
            self.window.clear();
            self.window.extend_from_slice(&out[out.len() - WINDOW..]);
        } else {
            self.window.extend_from_slice(out);
            let extra = self.window.len().saturating_sub(WINDOW);
            self.window.drain(..extra);
        }
        Ok(())
    }
}

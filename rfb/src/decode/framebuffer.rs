//! The decoded screen and the pointer's shape, and the drawing the decoder does on them.

use crate::server::Rect;

/// The pointer's shape from the Cursor pseudo-encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// Hot spot, from the shape's left edge.
    pub hot_x: u16,
    /// Hot spot, from the shape's top edge.
    pub hot_y: u16,
    /// Width.
    pub width: u16,
    /// Height.
    pub height: u16,
    /// `0xAARRGGBB` per pixel, row-major; alpha is 0 or 255 (the shape's mask).
    pub argb: Vec<u32>,
}

/// The decoded screen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Framebuffer {
    /// Width.
    pub width: u16,
    /// Height.
    pub height: u16,
    /// `0x00RRGGBB` per pixel, row-major.
    pub pixels: Vec<u32>,
}

impl Framebuffer {
    pub(super) fn new(width: u16, height: u16) -> Self {
        Self {
            width,
            height,
            pixels: vec![0; usize::from(width) * usize::from(height)],
        }
    }

    /// The colour at (`x`, `y`) as `(r, g, b)`; black outside.
    pub fn rgb(&self, x: u16, y: u16) -> (u8, u8, u8) {
        if x >= self.width || y >= self.height {
            return (0, 0, 0);
        }
        let p = self.pixels[usize::from(y) * usize::from(self.width) + usize::from(x)];
        ((p >> 16) as u8, (p >> 8) as u8, p as u8)
    }

    /// Appends the pixels as RGB bytes, row by row.
    pub fn write_rgb(&self, out: &mut Vec<u8>) {
        out.reserve(3 * self.pixels.len());
        for p in &self.pixels {
            out.extend_from_slice(&[(p >> 16) as u8, (p >> 8) as u8, *p as u8]);
        }
    }

    /// Draws `cursor` with its hot spot at (`x`, `y`), clipped to the framebuffer.
    pub fn draw_cursor(&mut self, cursor: &Cursor, x: u16, y: u16) {
        let (w, h) = (usize::from(cursor.width), usize::from(cursor.height));
        let left = i64::from(x) - i64::from(cursor.hot_x);
        let top = i64::from(y) - i64::from(cursor.hot_y);
        for cy in 0..h {
            let fy = top + cy as i64;
            if fy < 0 || fy >= i64::from(self.height) {
                continue;
            }
            for cx in 0..w {
                let fx = left + cx as i64;
                if fx < 0 || fx >= i64::from(self.width) {
                    continue;
                }
                if let Some(&p) = cursor.argb.get(cy * w + cx)
                    && p >> 24 != 0
                {
                    let i = fy as usize * usize::from(self.width) + fx as usize;
                    if let Some(px) = self.pixels.get_mut(i) {
                        *px = p & 0x00FF_FFFF;
                    }
                }
            }
        }
    }

    pub(super) fn resize(&mut self, width: u16, height: u16) {
        let mut next = Self::new(width, height);
        let w = usize::from(width.min(self.width));
        for y in 0..usize::from(height.min(self.height)) {
            let from = y * usize::from(self.width);
            let to = y * usize::from(width);
            next.pixels[to..to + w].copy_from_slice(&self.pixels[from..from + w]);
        }
        *self = next;
    }

    /// Copies `src`-sized pixels from (`sx`, `sy`) to `dst` (both inside the framebuffer).
    pub(super) fn copy(&mut self, sx: u16, sy: u16, dst: Rect) {
        let width = usize::from(self.width);
        let w = usize::from(dst.width);
        let rows: Vec<usize> = (0..usize::from(dst.height)).collect();
        // Row order that never reads a row already overwritten.
        let order: Box<dyn Iterator<Item = &usize>> = if sy < dst.y {
            Box::new(rows.iter().rev())
        } else {
            Box::new(rows.iter())
        };
        for &r in order {
            let from = (usize::from(sy) + r) * width + usize::from(sx);
            let to = (usize::from(dst.y) + r) * width + usize::from(dst.x);
            self.pixels.copy_within(from..from + w, to);
        }
    }

    /// Puts `px` (`rect`'s pixels, row-major) into `rect` (inside the framebuffer).
    pub(super) fn put(&mut self, rect: Rect, px: &[u32]) {
        let width = usize::from(self.width);
        for (i, row) in px.chunks(usize::from(rect.width).max(1)).enumerate() {
            let start = (usize::from(rect.y) + i) * width + usize::from(rect.x);
            if let Some(dst) = self.pixels.get_mut(start..start + row.len()) {
                dst.copy_from_slice(row);
            }
        }
    }

    pub(super) fn fill(&mut self, rect: Rect, colour: u32) {
        let width = usize::from(self.width);
        for y in rect.y..rect.y + rect.height {
            let start = usize::from(y) * width + usize::from(rect.x);
            if let Some(dst) = self.pixels.get_mut(start..start + usize::from(rect.width)) {
                dst.fill(colour);
            }
        }
    }
}

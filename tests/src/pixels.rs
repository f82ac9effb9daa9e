//! Screens as pixels for the desktop tests: 8-bit RGB images from the X server's own dump
//! (XWD) or a PNG (decoded with Pillow from the test tools' Python), and how far a decoded
//! framebuffer is from one.

use std::path::{Path, PathBuf};
use std::process::Command;

/// An image as 8-bit RGB, row by row.
#[derive(Clone, PartialEq, Eq)]
pub struct Rgb {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// `3 * width * height` bytes.
    pub pixels: Vec<u8>,
}

impl std::fmt::Debug for Rgb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Rgb({}x{}, {} bytes)",
            self.width,
            self.height,
            self.pixels.len()
        )
    }
}

impl Rgb {
    /// Pixels that differ between two images of the same size.
    pub fn differing_pixels(&self, other: &Rgb) -> usize {
        assert_eq!(
            (self.width, self.height),
            (other.width, other.height),
            "sizes differ"
        );
        self.pixels
            .chunks_exact(3)
            .zip(other.pixels.chunks_exact(3))
            .filter(|(a, b)| a != b)
            .count()
    }

    /// The colour at (`x`, `y`).
    pub fn at(&self, x: u32, y: u32) -> [u8; 3] {
        let i = 3 * (y * self.width + x) as usize;
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }
}

/// Reads an XWD dump (X Window Dump, version 7) of a 24/32-bit TrueColor screen.
pub(crate) fn parse_xwd(data: &[u8]) -> Rgb {
    let field = |i: usize| {
        u32::from_be_bytes([
            data[4 * i],
            data[4 * i + 1],
            data[4 * i + 2],
            data[4 * i + 3],
        ])
    };
    let header_size = field(0) as usize;
    assert_eq!(field(1), 7, "XWD version 7");
    let (width, height) = (field(4), field(5));
    let byte_order = field(7); // 0 = LSBFirst
    let bits_per_pixel = field(11);
    let bytes_per_line = field(12) as usize;
    let (red_mask, green_mask, blue_mask) = (field(14), field(15), field(16));
    let ncolors = field(19) as usize;
    assert_eq!(
        bits_per_pixel, 32,
        "a 24-bit screen dumps 32 bits per pixel"
    );
    let start = header_size + 12 * ncolors;
    let mut pixels = Vec::with_capacity(3 * (width * height) as usize);
    let channel = |p: u32, mask: u32| ((p & mask) >> mask.trailing_zeros()) as u8;
    for y in 0..height as usize {
        let row = &data[start + y * bytes_per_line..];
        for x in 0..width as usize {
            let b = [row[4 * x], row[4 * x + 1], row[4 * x + 2], row[4 * x + 3]];
            let p = if byte_order == 0 {
                u32::from_le_bytes(b)
            } else {
                u32::from_be_bytes(b)
            };
            pixels.extend_from_slice(&[
                channel(p, red_mask),
                channel(p, green_mask),
                channel(p, blue_mask),
            ]);
        }
    }
    Rgb {
        width,
        height,
        pixels,
    }
}

/// The rows at the top of the screen the agent's viewing notice may cover while a viewer is
/// connected (one line of text for one session, with its padding, is about 25): in
/// recordings, and not on the X server's screen once the viewer has left.
pub const NOTICE_ROWS: u32 = 40;

/// Pixels from row `top` down where a decoded framebuffer and an image differ by more than
/// a little in some channel (lossy encodings and scaling stay within it).
pub fn differing_below(fb: &tether_rfb::decode::Framebuffer, seen: &Rgb, top: u32) -> usize {
    let mut differing = 0;
    for y in top..seen.height.min(u32::from(fb.height)) {
        for x in 0..seen.width.min(u32::from(fb.width)) {
            let (r, g, b) = fb.rgb(x as u16, y as u16);
            let want = seen.at(x, y);
            let close = [r, g, b].iter().zip(want).all(|(a, b)| a.abs_diff(b) <= 24);
            differing += usize::from(!close);
        }
    }
    differing
}

/// Decodes a PNG to RGB with Pillow, from the test tools' Python environment.
pub fn png_to_rgb(png: &Path) -> Rgb {
    let python = std::env::var_os("TETHER_TEST_PYTHON")
        .map_or_else(|| PathBuf::from("python3"), PathBuf::from);
    let script = "import sys\nfrom PIL import Image\nim = Image.open(sys.argv[1]).convert('RGB')\nsys.stdout.write(f'{im.width} {im.height}\\n')\nsys.stdout.flush()\nsys.stdout.buffer.write(im.tobytes())\n";
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(png)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "Pillow could not read {}: {}",
        png.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let newline = out
        .stdout
        .iter()
        .position(|b| *b == b'\n')
        .expect("a size line");
    let size = String::from_utf8_lossy(&out.stdout[..newline]).into_owned();
    let mut parts = size
        .split_whitespace()
        .map(|v| v.parse::<u32>().expect("a number"));
    let (width, height) = (parts.next().expect("width"), parts.next().expect("height"));
    Rgb {
        width,
        height,
        pixels: out.stdout[newline + 1..].to_vec(),
    }
}

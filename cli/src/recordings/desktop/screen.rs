//! What one page is sent of a recording, without I/O: the decoded framebuffer re-encoded as
//! RFB FramebufferUpdates in the page's pixel format and encoding (the rfb crate's
//! [`Encoder`], keeping that connection's zlib streams), the rectangles that changed, and a
//! DesktopSize or ExtendedDesktopSize rectangle when the recorded screen changed size.
//!
//! The page gets lossless encodings whatever it asks for (its JPEG quality levels are
//! dropped): a recording is evidence, and the link is local. The recorded pointer is drawn
//! into the pixels, as the MP4 export draws it: noVNC would draw a cursor shape at the
//! page's own mouse, not where the technician's was.

use tether_rfb::client::{PixelFormat, Screen as Monitor};
use tether_rfb::decode::{Decoder, Framebuffer};
use tether_rfb::encoding;
use tether_rfb::server::{self, Encoder, Image, Rect, SizeReason, Update};

/// Damage rectangles kept apart before they are sent as the one rectangle covering them.
const MAX_RECTS: usize = 32;

/// One page's view of the recording.
#[derive(Debug)]
pub(crate) struct Screen {
    encoder: Encoder,
    /// The framebuffer size the page has.
    size: (u16, u16),
    /// The framebuffer as BGRX bytes, for the encoder.
    pixels: Vec<u8>,
}

impl Screen {
    /// A page that was told `size` in ServerInit.
    pub(crate) fn new(size: (u16, u16)) -> Self {
        Self {
            encoder: Encoder::new(),
            size,
            pixels: Vec::new(),
        }
    }

    /// The page's SetPixelFormat.
    pub(crate) fn set_format(&mut self, format: PixelFormat) -> Result<(), &'static str> {
        self.encoder.set_format(format)
    }

    /// The page's SetEncodings, less its JPEG quality levels.
    pub(crate) fn set_encodings(&mut self, list: &[i32]) {
        let lossless: Vec<i32> = list
            .iter()
            .copied()
            .filter(|e| !encoding::JPEG_QUALITY.contains(e))
            .collect();
        self.encoder.set_encodings(&lossless);
    }

    /// The FramebufferUpdate that brings the page to `fb`: the whole screen when `full` or
    /// when it changed size, else the `damage`; `None` when there is nothing to send.
    pub(crate) fn update(
        &mut self,
        fb: &Framebuffer,
        damage: &[Rect],
        full: bool,
    ) -> Option<Vec<u8>> {
        let bounds = Rect::new(0, 0, fb.width, fb.height);
        if bounds.is_empty() {
            return None;
        }
        let mut update = Update::new();
        let resized = (fb.width, fb.height) != self.size;
        let prefs = self.encoder.preferences();
        if resized && (prefs.extended_desktop_size || prefs.desktop_size) {
            if prefs.extended_desktop_size {
                let monitor = Monitor {
                    id: 0,
                    x: 0,
                    y: 0,
                    width: fb.width,
                    height: fb.height,
                    flags: 0,
                };
                server::extended_desktop_size(
                    SizeReason::Server,
                    0,
                    fb.width,
                    fb.height,
                    &[monitor],
                    update.body(),
                );
            } else {
                server::desktop_size(fb.width, fb.height, update.body());
            }
            update.added(1);
            self.size = (fb.width, fb.height);
        }
        // A page that cannot be told of a new size keeps its own: what fits of the screen.
        let visible = bounds.intersect(&Rect::new(0, 0, self.size.0, self.size.1));
        let rects: Vec<Rect> = if full || resized {
            vec![visible]
        } else {
            let mut rects = Vec::new();
            add_damage(&mut rects, damage, visible);
            rects
        };
        self.pixels.clear();
        self.pixels.reserve(4 * fb.pixels.len());
        for p in &fb.pixels {
            // 0x00RRGGBB little-endian is B, G, R, X.
            self.pixels.extend_from_slice(&p.to_le_bytes());
        }
        let image = Image {
            width: fb.width,
            height: fb.height,
            stride: 4 * usize::from(fb.width),
            data: &self.pixels,
        };
        for rect in rects {
            self.encoder.encode(&image, rect, &mut update);
        }
        (update.rects() > 0).then(|| update.finish())
    }
}

/// Where the recorded pointer is drawn (its shape's box at the pointer, less the hot spot),
/// once the recording sent a shape.
pub(crate) fn cursor_area(decoder: &Decoder) -> Option<Rect> {
    let c = decoder.cursor()?;
    let (x, y) = decoder.pointer();
    Some(Rect::new(
        x.saturating_sub(c.hot_x),
        y.saturating_sub(c.hot_y),
        c.width,
        c.height,
    ))
}

/// Adds `new` damage, clipped to `bounds`, to `damage`; past [`MAX_RECTS`] the lot becomes
/// the one rectangle covering it (fewer, larger rectangles encode faster than many small).
pub(crate) fn add_damage(damage: &mut Vec<Rect>, new: &[Rect], bounds: Rect) {
    damage.extend(
        new.iter()
            .map(|r| r.intersect(&bounds))
            .filter(|r| !r.is_empty()),
    );
    if damage.len() > MAX_RECTS {
        let all = damage.iter().fold(Rect::default(), |a, r| a.union(r));
        damage.clear();
        damage.push(all);
    }
}

#[cfg(test)]
mod tests {
    use tether_rfb::client::{ClientMessage, PixelFormat};
    use tether_rfb::decode::Decoder;

    use super::*;

    /// A decoder that has read ServerInit for `w`×`h` and the viewer's encodings.
    fn viewer(w: u16, h: u16, encodings: &[i32]) -> Decoder {
        let mut d = Decoder::default();
        let mut hs = server::version().to_vec();
        hs.extend_from_slice(&server::security_types());
        hs.extend_from_slice(&server::security_ok());
        hs.extend(server::server_init(w, h, &PixelFormat::BGRX, "recorded"));
        let sent: Vec<u8> = [
            ClientMessage::Version,
            ClientMessage::Security,
            ClientMessage::Init { shared: true },
            ClientMessage::SetEncodings(encodings.to_vec()),
        ]
        .iter()
        .flat_map(ClientMessage::encode)
        .collect();
        d.push_viewer(&sent);
        d.feed(&hs, |_| {}).unwrap();
        d
    }

    fn screen(w: u16, h: u16, seed: u32) -> Framebuffer {
        Framebuffer {
            width: w,
            height: h,
            pixels: (0..u32::from(w) * u32::from(h))
                .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed) & 0x00ff_ffff)
                .collect(),
        }
    }

    #[test]
    fn updates_decode_to_the_recorded_screen_through_a_resize() {
        for encodings in [
            vec![encoding::TIGHT, -28, encoding::EXTENDED_DESKTOP_SIZE],
            vec![encoding::ZRLE, encoding::DESKTOP_SIZE],
            vec![encoding::RAW, encoding::DESKTOP_SIZE],
        ] {
            let mut page = viewer(64, 48, &encodings);
            let mut s = Screen::new((64, 48));
            s.set_encodings(&encodings);
            let first = screen(64, 48, 1);
            page.feed(&s.update(&first, &[], true).unwrap(), |_| {})
                .unwrap();
            assert_eq!(page.framebuffer(), &first, "{encodings:?}");
            // Only the damage is sent, and the page's copy follows.
            let mut second = first.clone();
            for x in 10..20 {
                second.pixels[5 * 64 + x] = 0x00ff_0000;
            }
            let bytes = s
                .update(&second, &[Rect::new(10, 5, 10, 1)], false)
                .unwrap();
            assert!(bytes.len() < 200, "{} bytes for 10 pixels", bytes.len());
            page.feed(&bytes, |_| {}).unwrap();
            assert_eq!(page.framebuffer(), &second, "{encodings:?}");
            // The recorded screen grows: the page is told, then sent all of it.
            let bigger = screen(80, 60, 2);
            page.feed(&s.update(&bigger, &[], false).unwrap(), |_| {})
                .unwrap();
            assert_eq!(page.framebuffer(), &bigger, "{encodings:?}");
        }
    }

    #[test]
    fn nothing_changed_is_nothing_sent() {
        let mut s = Screen::new((16, 8));
        s.set_encodings(&[encoding::RAW]);
        let fb = screen(16, 8, 3);
        assert!(s.update(&fb, &[], false).is_none());
        // Damage outside the screen is no damage.
        assert!(s.update(&fb, &[Rect::new(100, 100, 5, 5)], false).is_none());
        assert!(s.update(&Framebuffer::default(), &[], true).is_none());
        assert!(s.update(&fb, &[], true).is_some());
    }

    #[test]
    fn a_page_that_cannot_resize_keeps_its_size() {
        let mut page = viewer(16, 8, &[encoding::RAW]);
        let mut s = Screen::new((16, 8));
        s.set_encodings(&[encoding::RAW]);
        let bigger = screen(32, 16, 4);
        page.feed(&s.update(&bigger, &[], false).unwrap(), |_| {})
            .unwrap();
        let fb = page.framebuffer();
        assert_eq!((fb.width, fb.height), (16, 8));
        assert_eq!(fb.rgb(3, 2), bigger.rgb(3, 2));
    }

    #[test]
    fn the_recorded_pointer_is_found_where_the_viewer_put_it() {
        let mut d = viewer(64, 48, &[encoding::RAW, encoding::CURSOR]);
        assert_eq!(cursor_area(&d), None, "no shape yet");
        let mut update = Update::new();
        server::cursor(
            2,
            3,
            4,
            5,
            &[0xff00_0000; 20],
            &PixelFormat::BGRX,
            update.body(),
        );
        update.added(1);
        d.feed(&update.finish(), |_| {}).unwrap();
        d.push_viewer(
            &ClientMessage::Pointer {
                buttons: 0,
                x: 20,
                y: 10,
            }
            .encode(),
        );
        assert_eq!(cursor_area(&d), Some(Rect::new(18, 7, 4, 5)));
        // At the corner, the box starts at the edge.
        d.push_viewer(
            &ClientMessage::Pointer {
                buttons: 0,
                x: 1,
                y: 0,
            }
            .encode(),
        );
        assert_eq!(cursor_area(&d), Some(Rect::new(0, 0, 4, 5)));
    }

    #[test]
    fn many_damage_rectangles_become_their_union() {
        let bounds = Rect::new(0, 0, 100, 100);
        let mut damage = Vec::new();
        add_damage(
            &mut damage,
            &[Rect::new(90, 90, 20, 20), Rect::new(0, 0, 0, 5)],
            bounds,
        );
        assert_eq!(damage, vec![Rect::new(90, 90, 10, 10)]);
        let many: Vec<Rect> = (0..40).map(|i| Rect::new(i, i, 1, 1)).collect();
        add_damage(&mut damage, &many, bounds);
        assert_eq!(damage, vec![Rect::new(0, 0, 100, 100)]);
    }
}

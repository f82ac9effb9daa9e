//! Viewer messages as bytes, as a viewer sends them: what the filter forwards after a
//! rewrite, and what tests and players build streams from.

use super::{ClientMessage, CutText, SECURITY_NONE, VERSION};

impl ClientMessage {
    /// The message as a viewer sends it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let rect = |out: &mut Vec<u8>, x: u16, y: u16, w: u16, h: u16| {
            for v in [x, y, w, h] {
                out.extend_from_slice(&v.to_be_bytes());
            }
        };
        match self {
            Self::Version => out.extend_from_slice(VERSION),
            Self::Security => out.push(SECURITY_NONE),
            Self::Init { shared } => out.push(u8::from(*shared)),
            Self::SetPixelFormat(p) => {
                out.extend_from_slice(&[0, 0, 0, 0]);
                out.extend_from_slice(&[
                    p.bits_per_pixel,
                    p.depth,
                    u8::from(p.big_endian),
                    u8::from(p.true_colour),
                ]);
                for v in [p.red_max, p.green_max, p.blue_max] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
                out.extend_from_slice(&[p.red_shift, p.green_shift, p.blue_shift, 0, 0, 0]);
            }
            Self::SetEncodings(list) => {
                out.extend_from_slice(&[2, 0]);
                let count = u16::try_from(list.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&count.to_be_bytes());
                for e in list.iter().take(usize::from(count)) {
                    out.extend_from_slice(&e.to_be_bytes());
                }
            }
            Self::UpdateRequest {
                incremental,
                x,
                y,
                width,
                height,
            } => {
                out.extend_from_slice(&[3, u8::from(*incremental)]);
                rect(&mut out, *x, *y, *width, *height);
            }
            Self::Key { down, keysym } => {
                out.extend_from_slice(&[4, u8::from(*down), 0, 0]);
                out.extend_from_slice(&keysym.to_be_bytes());
            }
            Self::Pointer { buttons, x, y } => {
                out.extend_from_slice(&[5, *buttons]);
                out.extend_from_slice(&x.to_be_bytes());
                out.extend_from_slice(&y.to_be_bytes());
            }
            Self::CutText(text) => {
                out.extend_from_slice(&[6, 0, 0, 0]);
                match text {
                    CutText::Latin1(data) => {
                        let len = i32::try_from(data.len()).unwrap_or(i32::MAX);
                        out.extend_from_slice(&len.to_be_bytes());
                        out.extend_from_slice(data);
                    }
                    CutText::Extended { flags, payload } => {
                        let len = i32::try_from(payload.len() + 4).unwrap_or(i32::MAX);
                        out.extend_from_slice(&(-len).to_be_bytes());
                        out.extend_from_slice(&flags.to_be_bytes());
                        out.extend_from_slice(payload);
                    }
                }
            }
            Self::ContinuousUpdates {
                enable,
                x,
                y,
                width,
                height,
            } => {
                out.extend_from_slice(&[150, u8::from(*enable)]);
                rect(&mut out, *x, *y, *width, *height);
            }
            Self::Fence { flags, payload } => {
                out.extend_from_slice(&[248, 0, 0, 0]);
                out.extend_from_slice(&flags.to_be_bytes());
                let len = payload.len().min(64);
                out.push(len as u8);
                out.extend_from_slice(&payload[..len]);
            }
            Self::SetDesktopSize {
                width,
                height,
                screens,
            } => {
                out.extend_from_slice(&[251, 0]);
                out.extend_from_slice(&width.to_be_bytes());
                out.extend_from_slice(&height.to_be_bytes());
                let count = screens.len().min(255);
                out.extend_from_slice(&[count as u8, 0]);
                for s in &screens[..count] {
                    out.extend_from_slice(&s.id.to_be_bytes());
                    rect(&mut out, s.x, s.y, s.width, s.height);
                    out.extend_from_slice(&s.flags.to_be_bytes());
                }
            }
            Self::QemuKey {
                down,
                keysym,
                keycode,
            } => {
                out.extend_from_slice(&[255, 0]);
                out.extend_from_slice(&u16::from(*down).to_be_bytes());
                out.extend_from_slice(&keysym.to_be_bytes());
                out.extend_from_slice(&keycode.to_be_bytes());
            }
        }
        out
    }
}

//! The viewer's side of the wire: the RFB 3.8 handshake up to ServerInit, the messages it
//! sends (SetPixelFormat, SetEncodings, FramebufferUpdateRequest), and reading a
//! FramebufferUpdate far enough to know where each rectangle ends and what carried it.

use anyhow::{Result, bail};
use tether_rfb::encoding;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;

use super::{BPP, Coverage, RectRecord, TPIXEL};

/// RFB 3.8 up to ServerInit; returns the screen's size.
pub(super) async fn handshake<R: AsyncRead + Unpin>(
    read: &mut R,
    write: &mut OwnedWriteHalf,
    password: Option<&str>,
) -> Result<(u16, u16)> {
    let mut version = [0u8; 12];
    read.read_exact(&mut version).await?;
    if !version.starts_with(b"RFB 003.") {
        bail!("not an RFB server: {:?}", String::from_utf8_lossy(&version));
    }
    write.write_all(b"RFB 003.008\n").await?;
    let n = read.read_u8().await?;
    if n == 0 {
        bail!("the server refused: {}", read_string(read).await?);
    }
    let mut types = vec![0u8; usize::from(n)];
    read.read_exact(&mut types).await?;
    match password {
        Some(password) if types.contains(&2) => {
            write.write_all(&[2]).await?;
            let mut challenge = [0u8; 16];
            read.read_exact(&mut challenge).await?;
            write
                .write_all(&tether_rfb::auth::response(password, &challenge))
                .await?;
        }
        None if types.contains(&1) => write.write_all(&[1]).await?,
        _ => bail!("the server offers security types {types:?}"),
    }
    if read.read_u32().await? != 0 {
        bail!("authentication failed: {}", read_string(read).await?);
    }
    write.write_all(&[1]).await?; // ClientInit: shared
    let width = read.read_u16().await?;
    let height = read.read_u16().await?;
    let mut format = [0u8; 16];
    read.read_exact(&mut format).await?;
    let _name = read_string(read).await?;
    Ok((width, height))
}

async fn read_string<R: AsyncRead + Unpin>(read: &mut R) -> Result<String> {
    let len = read.read_u32().await?;
    if len > 1 << 20 {
        bail!("a string of {len} bytes");
    }
    let mut text = vec![0u8; len as usize];
    read.read_exact(&mut text).await?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// SetPixelFormat: 32 bits per pixel, depth 24, little-endian true colour (BGRX in memory).
pub(super) fn set_pixel_format() -> [u8; 20] {
    [
        0, 0, 0, 0, // type, padding
        32, 24, 0, 1, // bpp, depth, big-endian, true colour
        0, 255, 0, 255, 0, 255, // maxima
        16, 8, 0, // shifts
        0, 0, 0, // padding
    ]
}

pub(super) fn set_encodings(list: &[i32]) -> Vec<u8> {
    let mut msg = vec![2, 0];
    msg.extend_from_slice(&(list.len() as u16).to_be_bytes());
    for e in list {
        msg.extend_from_slice(&e.to_be_bytes());
    }
    msg
}

pub(super) fn request(incremental: bool, width: u16, height: u16) -> [u8; 10] {
    let [w0, w1] = width.to_be_bytes();
    let [h0, h1] = height.to_be_bytes();
    [3, u8::from(incremental), 0, 0, 0, 0, w0, w1, h0, h1]
}

/// Reads one FramebufferUpdate after its type byte.
pub(super) async fn read_update<R: AsyncRead + Unpin>(
    reader: &mut Counting<'_, R>,
    rects: &mut Vec<RectRecord>,
    size: &mut (u16, u16),
    coverage: &mut Coverage,
) -> Result<()> {
    reader.skip(1).await?;
    let count = reader.u16().await?;
    // 0xFFFF with LastRect: rectangles until a LastRect one.
    let bounded = if count == 0xFFFF {
        u32::from(u16::MAX) * 16
    } else {
        u32::from(count)
    };
    for _ in 0..bounded {
        let before = reader.bytes;
        let x = reader.u16().await?;
        let y = reader.u16().await?;
        let w = usize::from(reader.u16().await?);
        let h = usize::from(reader.u16().await?);
        let enc = reader.u32().await? as i32;
        let kind = match enc {
            encoding::RAW => {
                reader.skip(w * h * BPP).await?;
                "Raw"
            }
            encoding::COPY_RECT => {
                reader.skip(4).await?;
                "CopyRect"
            }
            encoding::ZRLE => {
                let len = reader.u32().await?;
                reader.skip(len as usize).await?;
                "ZRLE"
            }
            encoding::TIGHT => read_tight(reader, w, h).await?,
            encoding::CURSOR => {
                reader.skip(w * h * BPP + w.div_ceil(8) * h).await?;
                "Cursor"
            }
            XCURSOR => {
                if w * h > 0 {
                    reader.skip(6 + 2 * w.div_ceil(8) * h).await?;
                }
                "Cursor"
            }
            encoding::DESKTOP_SIZE => {
                *size = (w as u16, h as u16);
                *coverage = Coverage::new(*size);
                "DesktopSize"
            }
            encoding::LAST_RECT => {
                rects.push(RectRecord {
                    kind: "LastRect",
                    bytes: reader.bytes - before,
                    pixels: 0,
                });
                return Ok(());
            }
            encoding::EXTENDED_DESKTOP_SIZE => {
                let n = reader.u8().await?;
                reader.skip(3 + 16 * usize::from(n)).await?;
                "ExtendedDesktopSize"
            }
            other => bail!("rectangle with unrequested encoding {other}"),
        };
        if enc >= 0 {
            coverage.mark(x, y, w, h);
        }
        rects.push(RectRecord {
            kind,
            bytes: reader.bytes - before,
            pixels: if enc >= 0 { (w * h) as u64 } else { 0 },
        });
    }
    if count == 0xFFFF {
        bail!("no LastRect after {bounded} rectangles");
    }
    Ok(())
}

/// The XCursor pseudo-encoding (two colours and a mask), which some servers send for Cursor.
const XCURSOR: i32 = -240;

/// Finds the end of a Tight rectangle (RFB community spec, "Tight Encoding").
async fn read_tight<R: AsyncRead + Unpin>(
    reader: &mut Counting<'_, R>,
    w: usize,
    h: usize,
) -> Result<&'static str> {
    let control = reader.u8().await?;
    match control >> 4 {
        0x8 => {
            reader.skip(TPIXEL).await?;
            Ok("Tight fill")
        }
        0x9 => {
            let len = compact_length(reader).await?;
            reader.skip(len).await?;
            Ok("Tight JPEG")
        }
        basic if basic & 0x8 == 0 => {
            let filter = if control & 0x40 != 0 {
                reader.u8().await?
            } else {
                0
            };
            let (size, kind) = match filter {
                0 => (w * h * TPIXEL, "Tight zlib"),
                1 => {
                    let colours = usize::from(reader.u8().await?) + 1;
                    reader.skip(colours * TPIXEL).await?;
                    let size = if colours == 2 {
                        w.div_ceil(8) * h
                    } else {
                        w * h
                    };
                    (size, "Tight palette")
                }
                2 => (w * h * TPIXEL, "Tight gradient"),
                other => bail!("Tight filter {other}"),
            };
            if size < 12 {
                reader.skip(size).await?;
            } else {
                let len = compact_length(reader).await?;
                reader.skip(len).await?;
            }
            Ok(kind)
        }
        other => bail!("Tight compression type {other:#x}"),
    }
}

async fn compact_length<R: AsyncRead + Unpin>(reader: &mut Counting<'_, R>) -> Result<usize> {
    let mut len = 0usize;
    for i in 0..3 {
        let b = reader.u8().await?;
        if i == 2 {
            len |= usize::from(b) << 14;
            break;
        }
        len |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            break;
        }
    }
    Ok(len)
}

/// A reader that counts what it reads.
pub(super) struct Counting<'a, R> {
    pub(super) inner: &'a mut R,
    pub(super) bytes: u64,
    pub(super) scratch: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Counting<'_, R> {
    pub(super) async fn u8(&mut self) -> Result<u8> {
        self.bytes += 1;
        Ok(self.inner.read_u8().await?)
    }

    pub(super) async fn u16(&mut self) -> Result<u16> {
        self.bytes += 2;
        Ok(self.inner.read_u16().await?)
    }

    pub(super) async fn u32(&mut self) -> Result<u32> {
        self.bytes += 4;
        Ok(self.inner.read_u32().await?)
    }

    pub(super) async fn skip(&mut self, mut n: usize) -> Result<()> {
        self.bytes += n as u64;
        while n > 0 {
            let chunk = n.min(self.scratch.len());
            self.inner.read_exact(&mut self.scratch[..chunk]).await?;
            n -= chunk;
        }
        Ok(())
    }
}

//! A desktop channel to the device, as both desktop viewers use it (`vnc` for VNC viewers and
//! `desktop` for the browser): attach through the relay, do the device's side of the RFB 3.8
//! handshake (security None: the relay already authenticated the channel), and read what the
//! device sends as RFB bytes or the reason the channel closed.

use anyhow::{Result, bail};
use bytes::Bytes;
use tether_proto::channels::DesktopMessage;
use tether_proto::frame::{Frame, FrameKind};
use tether_proto::message::{Attach, ChannelKind};
use tether_proto::text::escape;
use tether_transport::{FrameReader, FrameWriter};

use crate::connect::Joined;

/// The protocol version both sides of every handshake speak.
pub(super) const VERSION: &[u8; 12] = b"RFB 003.008\n";
/// Security type None.
pub(super) const NONE: u8 = 1;
/// The largest data frame sent to the device; bigger writes are split.
const MAX_DATA: usize = 64 * 1024;

/// A desktop channel past the device's handshake.
pub(super) struct DeviceDesktop {
    /// What the device sends.
    pub from: FrameReader,
    /// What goes to the device.
    pub to: FrameWriter,
    /// RFB bytes the device sent beyond its handshake, not yet passed on to the viewer.
    pub pending: Vec<u8>,
}

/// What the device sent next.
pub(super) enum FromDevice {
    /// RFB bytes.
    Data(Bytes),
    /// The channel closed, and why (escaped, ready to show).
    Closed(String),
}

/// Opens a desktop channel in the joined session and does the device's side of the
/// handshake.
pub(super) async fn open(joined: &Joined) -> Result<DeviceDesktop> {
    let (from, to) = joined
        .attach(Attach {
            kind: ChannelKind::Desktop,
            shell: None,
        })
        .await?;
    let mut desktop = DeviceDesktop {
        from,
        to,
        pending: Vec::new(),
    };
    device_handshake(&mut desktop).await?;
    Ok(desktop)
}

impl DeviceDesktop {
    /// The next thing the device sent: RFB bytes, or why the channel closed.
    pub async fn next(&mut self) -> Result<FromDevice> {
        next(&mut self.from).await
    }

    /// Sends RFB bytes to the device, in frames of at most 64 KiB.
    pub async fn send(&mut self, mut bytes: Bytes) -> Result<()> {
        while !bytes.is_empty() {
            let chunk = bytes.split_to(bytes.len().min(MAX_DATA));
            self.to.send(&Frame::data(chunk)).await?;
        }
        Ok(())
    }

    /// Tells the device nothing more is coming from this viewer.
    pub async fn finish(&mut self) {
        let _ = self.to.finish().await;
    }
}

/// The next RFB bytes from `from`, or why the channel closed. Messages other than
/// [`DesktopMessage::Closed`] are skipped.
async fn next(from: &mut FrameReader) -> Result<FromDevice> {
    loop {
        match from.next().await? {
            Some(f) if f.kind == FrameKind::Data => return Ok(FromDevice::Data(f.payload)),
            Some(f) if f.kind == FrameKind::Message => {
                if let Ok(DesktopMessage::Closed { reason }) = f.parse::<DesktopMessage>() {
                    return Ok(FromDevice::Closed(escape(&reason).into_owned()));
                }
            }
            Some(_) => {}
            None => return Ok(FromDevice::Closed("the device closed the desktop".into())),
        }
    }
}

/// Reads from the desktop channel until `want` bytes of RFB are in `pending`.
async fn fill(from: &mut FrameReader, pending: &mut Vec<u8>, want: usize) -> Result<()> {
    while pending.len() < want {
        match next(from).await? {
            FromDevice::Data(d) => pending.extend_from_slice(&d),
            FromDevice::Closed(reason) => bail!("{reason}"),
        }
    }
    Ok(())
}

/// The device side of the handshake: version, security None, SecurityResult. What the
/// device sent beyond it stays in `pending` for the viewer.
async fn device_handshake(d: &mut DeviceDesktop) -> Result<()> {
    let (from, to, pending) = (&mut d.from, &mut d.to, &mut d.pending);
    fill(from, pending, 12).await?;
    if pending[..12] != *VERSION {
        bail!(
            "the device speaks {:?}, not RFB 3.8",
            String::from_utf8_lossy(&pending[..12])
        );
    }
    pending.drain(..12);
    to.send(&Frame::data(VERSION.to_vec())).await?;
    fill(from, pending, 1).await?;
    let count = usize::from(pending[0]);
    if count == 0 {
        fill(from, pending, 5).await?;
        let len = u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]) as usize;
        fill(from, pending, 5 + len.min(4096)).await?;
        bail!(
            "the device refused the desktop: {}",
            escape(&String::from_utf8_lossy(&pending[5..5 + len.min(4096)]))
        );
    }
    fill(from, pending, 1 + count).await?;
    if !pending[1..1 + count].contains(&NONE) {
        bail!("the device does not offer security type None inside the channel");
    }
    pending.drain(..1 + count);
    to.send(&Frame::data(vec![NONE])).await?;
    fill(from, pending, 4).await?;
    if pending[..4] != [0, 0, 0, 0] {
        bail!("the device refused the desktop handshake");
    }
    pending.drain(..4);
    Ok(())
}

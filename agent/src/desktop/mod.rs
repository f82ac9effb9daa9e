//! The desktop channel on the device: the screen as an RFB 3.8 server (security None inside
//! the channel the relay authenticated), input from viewers whose session has control.
//!
//! ```text
//!  viewer A ─┐                         ┌─ capture thread ── X connection 1 (SHM/GetImage,
//!  viewer B ─┼─ server.rs per viewer ──┤   watch<Arc<Frame>>     Damage, XFIXES, RandR)
//!            │  (reading + updating)   └─ input thread ──── X connection 2 (XTEST)
//! ```
//!
//! - **Shared capture.** Viewers of one display share one [`capture::SharedDesktop`]: one
//!   capture thread publishes frames through a `watch` channel, each viewer encodes them for
//!   its own pixel format and encodings. The desktop stops when its last viewer leaves.
//! - **Tile diff, damage as a hint.** Each capture is compared with the previous one in
//!   64×64 tiles ([`tiles`]); a frame stamps each tile with the generation it last changed
//!   in, and a viewer is sent the tiles stamped later than what it has, however many frames
//!   it skipped. XDamage only makes the next capture come sooner: compositors draw without
//!   reporting damage, so what is sent comes from the comparison, and the screen is polled
//!   every 200 ms even when nothing reports a change (at the full rate without XDamage).
//! - **Frame-rate cap.** Captures and each viewer's updates come at most `max_fps` times a
//!   second (`--desktop-max-fps`, 30 by default); a viewer that is slow to ask simply skips
//!   frames and gets what changed meanwhile in one update.
//! - **Threads.** X calls block, so they run on the desktop's two threads, never on the async
//!   runtime's workers; encoding runs on the runtime's blocking pool.
//! - **Cursor.** Sent as the Cursor pseudo-encoding to viewers that announce it; captures do
//!   not contain it.
//! - **Clipboard.** Text each way, only in the directions the session allows, at most 1 MiB,
//!   as plain cut text (Latin-1) or Extended Clipboard (UTF-8) where the viewer speaks it
//!   ([`clipboard`]); a third thread holds the device's clipboard.
//! - **Back-ends.** [`backend`] holds the traits a platform implements; [`x11`] is the only
//!   one today.

pub mod backend;
pub mod capture;
mod clipboard;
pub mod server;
pub mod tiles;
mod update;
pub mod x11;

#[cfg(test)]
pub(crate) mod tests;

use std::path::PathBuf;

use tether_transport::{FrameReader, FrameWriter};
use tracing::warn;

pub use self::capture::Desktops;
pub use self::server::{ServeError, ViewerOptions, ViewerStats};

/// The default frame-rate cap.
pub const DEFAULT_MAX_FPS: u32 = 30;

/// Which display the agent serves and how fast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesktopSettings {
    /// The X display (`--display`, else `DISPLAY`).
    pub display: Option<String>,
    /// The Xauthority file (`--xauthority`, else `XAUTHORITY`); `None`: the logged-on users'.
    pub xauthority: Option<PathBuf>,
    /// The most frames per second captured and sent to each viewer.
    pub max_fps: u32,
}

impl Default for DesktopSettings {
    fn default() -> Self {
        Self {
            display: None,
            xauthority: None,
            max_fps: DEFAULT_MAX_FPS,
        }
    }
}

/// What the session lets one desktop channel do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Keyboard and pointer reach the device.
    pub control: bool,
    /// The viewer's clipboard reaches the device's.
    pub clipboard_to_device: bool,
    /// The device's clipboard reaches the viewer's.
    pub clipboard_from_device: bool,
}

/// Serves one desktop channel: attaches to the configured display's shared capture (opening
/// it for the first viewer) and serves RFB over the channel until the viewer leaves. When
/// the display cannot be opened the technician is told why, in the RFB handshake and in a
/// `Closed` message, and the error is returned.
pub async fn serve_channel(
    desktops: &Desktops,
    settings: &DesktopSettings,
    users: &[String],
    device: &str,
    grant: Grant,
    reader: FrameReader,
    writer: FrameWriter,
) -> Result<ViewerStats, ServeError> {
    let desktop = match &settings.display {
        None => Err(backend::DesktopError::NoDisplay),
        Some(display) => {
            let x11 = x11::X11Settings {
                display: Some(display.clone()),
                xauthority: settings.xauthority.clone(),
                users: users.to_vec(),
            };
            let pacing = capture::Pacing::with_max_fps(settings.max_fps);
            desktops
                .attach(display, pacing, move || x11::open(&x11))
                .await
        }
    };
    if let Err(e) = &desktop {
        warn!(error = %tether_telemetry::error_chain(e), "Failed to open the desktop for a viewer");
    }
    let options = ViewerOptions {
        name: format!("{device} (Tether)"),
        control: grant.control,
        clipboard_to_device: grant.clipboard_to_device,
        clipboard_from_device: grant.clipboard_from_device,
        max_fps: settings.max_fps,
    };
    server::serve(desktop, options, reader, writer).await
}

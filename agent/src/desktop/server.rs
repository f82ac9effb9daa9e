//! The RFB 3.8 server of one viewer, over the desktop channel's frames: RFB bytes travel as
//! data frames, and a [`DesktopMessage::Closed`] message tells the technician why the agent
//! closes the channel.
//!
//! Two halves run side by side. The reading half parses the viewer's bytes with
//! [`tether_rfb::client::Parser`] (the handshake included), applies input and clipboard
//! where the session allows them (and counts what it drops otherwise) and hands everything
//! about updates to the updating half in order. The updating half owns the encoder and the
//! writer: it sends an update when the viewer asked for one (or enabled continuous updates)
//! and something it has not seen changed — tiles stamped later than what this viewer was
//! sent, the cursor's shape, the screen's size — at most once per frame interval. Encoding
//! (in the viewer's first choice of Tight, ZRLE and Raw) runs on a blocking thread, so a
//! large update never stalls the runtime. For viewers that announced CopyRect, a vertical
//! scroll is sent as a copy plus the rows it exposed; it is looked for only against a frame
//! the viewer holds whole (the last update sent every changed tile of the whole screen).
//!
//! Clipboard: the reading half puts the viewer's text on the device's clipboard when the
//! session lets it reach the device; the updating half sends the device's clipboard as it
//! changes when the session lets it reach the technician ([`super::clipboard`]). Texts over
//! the cap are dropped and counted.

use std::sync::Arc;

use bytes::Bytes;
use tether_proto::channels::DesktopMessage;
use tether_proto::frame::{Frame as WireFrame, FrameKind};
use tether_rfb::client::{ClientMessage, CutText, Limits, ParseError, Parser, PixelFormat};
use tether_rfb::server::{self as rfb, Rect};
use tether_transport::{FrameReader, FrameWriter, framed::FramedError};
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::backend::DesktopError;
use super::capture::{InputCommand, SharedDesktop};
use super::clipboard::{self, Extended, MAX_CLIPBOARD, Provided};
use super::update::Updater;

/// What one viewer may do and how it is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewerOptions {
    /// The desktop's name in ServerInit.
    pub name: String,
    /// Keyboard and pointer reach the device (otherwise they are dropped and counted).
    pub control: bool,
    /// The viewer's clipboard reaches the device's.
    pub clipboard_to_device: bool,
    /// The device's clipboard reaches the viewer's.
    pub clipboard_from_device: bool,
    /// The most framebuffer updates per second.
    pub max_fps: u32,
}

/// What happened on one viewer's channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ViewerStats {
    /// Framebuffer updates sent.
    pub updates: u64,
    /// RFB bytes sent.
    pub bytes: u64,
    /// Key and pointer events dropped because the session is view-only, or because a consent
    /// dialog was on the screen (so a technician cannot answer it for the user).
    pub dropped_input: u64,
    /// Clipboard texts dropped: the session does not let them reach the device, or they
    /// are over the cap (either way).
    pub dropped_clipboard: u64,
    /// Clipboard texts taken from the viewer for the device.
    pub clipboard_to_device: u64,
    /// The device's clipboard texts sent to the viewer.
    pub clipboard_from_device: u64,
}

/// Why a viewer's channel closed early.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The desktop cannot be served.
    #[error(transparent)]
    Desktop(#[from] DesktopError),
    /// The viewer sent something the parser refuses; the channel closes with its reason.
    #[error(transparent)]
    Viewer(#[from] ParseError),
    /// The viewer asked for a pixel format the server does not produce.
    #[error("the viewer asked for a pixel format the desktop does not send: {0}")]
    PixelFormat(&'static str),
    /// The capture of the display stopped.
    #[error("the desktop's capture stopped: {0}")]
    CaptureStopped(String),
    /// The channel failed.
    #[error("the desktop channel failed")]
    Channel(#[from] FramedError),
}

/// The most RFB bytes in one data frame (the frame limit is 1 MiB; smaller frames let the
/// connection's other streams in between).
const CHUNK: usize = 256 * 1024;

/// Update-related messages queued from the reading half to the updating half.
const COMMANDS: usize = 32;

/// Serves one viewer of `desktop` (or tells it why the desktop cannot be served) until the
/// viewer leaves, breaks the protocol or the channel fails.
pub async fn serve(
    desktop: Result<Arc<SharedDesktop>, DesktopError>,
    options: ViewerOptions,
    reader: FrameReader,
    mut writer: FrameWriter,
) -> Result<ViewerStats, ServeError> {
    let mut viewer = ViewerBytes {
        reader,
        // Texts between the cap and this are dropped and counted rather than refused.
        parser: Parser::new(Limits {
            cut_text: 4 * MAX_CLIPBOARD,
            ..Limits::default()
        }),
    };
    let mut stats = ViewerStats::default();
    let handshake = handshake(desktop, &options, &mut viewer, &mut writer).await;
    let desktop = match handshake {
        Ok(Some(d)) => d,
        Ok(None) => return Ok(stats),
        Err(e) => {
            close(&mut writer, &e).await;
            return Err(e);
        }
    };
    let id = desktop.viewer_id();
    let (tx, rx) = mpsc::channel(COMMANDS);
    let updater = Updater::new(&desktop, writer, &options);
    let (read_result, (mut writer, sent, update_result)) = {
        let reading = read_viewer(&desktop, id, &options, &mut viewer, tx, &mut stats);
        let updating = updater.run(rx);
        tokio::pin!(reading, updating);
        tokio::select! {
            read = &mut reading => (read, updating.await),
            // The viewer's input already sent is still applied (a viewer that types and
            // disconnects at once), for a bounded time.
            update = &mut updating => {
                let read = tokio::time::timeout(INPUT_DRAIN, &mut reading).await.unwrap_or(Ok(()));
                (read, update)
            }
        }
    };
    stats.updates = sent.updates;
    stats.bytes = sent.bytes;
    stats.dropped_clipboard += sent.dropped_clipboard;
    stats.clipboard_from_device = sent.clipboard;
    desktop.input(InputCommand::Left { viewer: id }).await;
    let result = read_result.and(update_result);
    match &result {
        Err(e) => close(&mut writer, e).await,
        Ok(()) => {
            let _ = writer.finish().await;
        }
    }
    info!(
        display = %desktop.display,
        updates = stats.updates,
        bytes = stats.bytes,
        dropped_input = stats.dropped_input,
        dropped_clipboard = stats.dropped_clipboard,
        clipboard_to_device = stats.clipboard_to_device,
        clipboard_from_device = stats.clipboard_from_device,
        "Closed a desktop viewer"
    );
    desktop.leave().await;
    result.map(|()| stats)
}

/// Tells the technician why the channel closes, and closes it.
async fn close(writer: &mut FrameWriter, error: &ServeError) {
    let reason = tether_telemetry::error_chain(error);
    if let Ok(message) = WireFrame::message(&DesktopMessage::Closed { reason }) {
        let _ = writer.send(&message).await;
    }
    let _ = writer.finish().await;
}

/// The viewer's bytes, parsed as they arrive.
struct ViewerBytes {
    reader: FrameReader,
    parser: Parser,
}

impl ViewerBytes {
    /// The next message, `None` when the viewer ended its half.
    async fn next(&mut self) -> Result<Option<ClientMessage>, ServeError> {
        loop {
            if let Some((message, _)) = self.parser.next_message()? {
                return Ok(Some(message));
            }
            match self.reader.next().await? {
                Some(f) if f.kind == FrameKind::Data => self.parser.push(&f.payload),
                // The viewer has nothing to say in protocol messages.
                Some(f) if f.kind == FrameKind::Message => {}
                Some(_) | None => return Ok(None),
            }
        }
    }
}

pub(super) async fn send(
    writer: &mut FrameWriter,
    bytes: impl Into<Bytes>,
) -> Result<(), FramedError> {
    let bytes: Bytes = bytes.into();
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + CHUNK).min(bytes.len());
        writer.send(&WireFrame::data(bytes.slice(at..end))).await?;
        at = end;
    }
    Ok(())
}

/// A failed handshake in RFB's own words: no security types and the reason.
fn refusal(reason: &str) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(reason.len() as u32).to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
    out
}

/// Version, security None, ClientInit and ServerInit; `None` when the viewer left.
async fn handshake(
    desktop: Result<Arc<SharedDesktop>, DesktopError>,
    options: &ViewerOptions,
    viewer: &mut ViewerBytes,
    writer: &mut FrameWriter,
) -> Result<Option<Arc<SharedDesktop>>, ServeError> {
    send(writer, rfb::version()).await?;
    match viewer.next().await {
        Ok(Some(ClientMessage::Version)) => {}
        Ok(_) => return Ok(None),
        Err(e) => {
            let _ = send(writer, refusal(&e.to_string())).await;
            return Err(e);
        }
    }
    let desktop = match desktop {
        Ok(d) => d,
        Err(e) => {
            send(writer, refusal(&e.to_string())).await?;
            return Err(e.into());
        }
    };
    send(writer, rfb::security_types().to_vec()).await?;
    if !matches!(viewer.next().await?, Some(ClientMessage::Security)) {
        return Ok(None);
    }
    send(writer, rfb::security_ok().to_vec()).await?;
    let Some(ClientMessage::Init { shared: _ }) = viewer.next().await? else {
        return Ok(None);
    };
    // Every viewer shares the desktop, whatever its ClientInit says: the session decides
    // who may watch, not the viewer.
    let size = desktop.frames().borrow().size;
    let init = rfb::server_init(size.width, size.height, &PixelFormat::BGRX, &options.name);
    send(writer, init).await?;
    Ok(Some(desktop))
}

/// How long a viewer's input is still read after its updates stopped.
const INPUT_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// What the reading half hands the updating half, in the viewer's order.
#[derive(Debug)]
pub(super) enum Command {
    Format(PixelFormat),
    Encodings(Vec<i32>),
    Request {
        incremental: bool,
        region: Rect,
    },
    Continuous {
        enable: bool,
        region: Rect,
    },
    Fence {
        flags: u32,
        payload: Vec<u8>,
    },
    SetDesktopSize,
    /// The viewer's Extended Clipboard capabilities.
    ClipboardCaps {
        actions: u32,
        text_max: Option<u32>,
    },
    /// Ask the viewer for its text (it said it has some).
    ClipboardRequest,
    /// Send the viewer the device's text (it asked).
    ClipboardProvide,
    /// Tell the viewer whether the device has text (it asked).
    ClipboardPeek,
}

/// Puts a viewer's text on the device's clipboard when it is within the cap.
async fn to_device(desktop: &SharedDesktop, text: String, stats: &mut ViewerStats) {
    if text.len() > MAX_CLIPBOARD {
        debug!(display = %desktop.display, size = text.len(), limit = MAX_CLIPBOARD, "Dropped clipboard text from the technician: it is over the limit");
        stats.dropped_clipboard += 1;
        return;
    }
    clipboard::log_to_device(&desktop.display, &text);
    if desktop.set_clipboard(text).await {
        stats.clipboard_to_device += 1;
    } else {
        debug!(display = %desktop.display, "Dropped clipboard text: the display has no clipboard support");
        stats.dropped_clipboard += 1;
    }
}

/// What an Extended Clipboard message from the viewer means; `None` when it is dealt with.
async fn extended_clipboard(
    desktop: &SharedDesktop,
    options: &ViewerOptions,
    flags: u32,
    payload: &[u8],
    stats: &mut ViewerStats,
) -> Option<Command> {
    match clipboard::parse(flags, payload) {
        Extended::Caps { actions, text_max } => Some(Command::ClipboardCaps { actions, text_max }),
        Extended::Notify(true) if options.clipboard_to_device => Some(Command::ClipboardRequest),
        Extended::Request if options.clipboard_from_device => Some(Command::ClipboardProvide),
        Extended::Peek if options.clipboard_from_device => Some(Command::ClipboardPeek),
        Extended::Provide(provided) if options.clipboard_to_device => {
            match provided {
                Provided::Text(text) => to_device(desktop, text, stats).await,
                Provided::TooBig(size) => {
                    debug!(display = %desktop.display, size, limit = MAX_CLIPBOARD, "Dropped clipboard text from the technician: it is over the limit");
                    stats.dropped_clipboard += 1;
                }
                Provided::Empty => {}
                Provided::Malformed => {
                    debug!(display = %desktop.display, "Dropped an Extended Clipboard provide that does not inflate");
                    stats.dropped_clipboard += 1;
                }
            }
            None
        }
        Extended::Provide(_) => {
            stats.dropped_clipboard += 1;
            None
        }
        other => {
            debug!(display = %desktop.display, message = ?other, "Ignored an Extended Clipboard message the session gives no meaning");
            None
        }
    }
}

async fn read_viewer(
    desktop: &SharedDesktop,
    id: u64,
    options: &ViewerOptions,
    viewer: &mut ViewerBytes,
    updates: mpsc::Sender<Command>,
    stats: &mut ViewerStats,
) -> Result<(), ServeError> {
    while let Some(message) = viewer.next().await? {
        let command = match message {
            ClientMessage::SetPixelFormat(format) => Command::Format(format),
            ClientMessage::SetEncodings(list) => Command::Encodings(list),
            ClientMessage::UpdateRequest {
                incremental,
                x,
                y,
                width,
                height,
            } => Command::Request {
                incremental,
                region: Rect::new(x, y, width, height),
            },
            ClientMessage::ContinuousUpdates {
                enable,
                x,
                y,
                width,
                height,
            } => Command::Continuous {
                enable,
                region: Rect::new(x, y, width, height),
            },
            ClientMessage::Fence { flags, payload } => Command::Fence { flags, payload },
            ClientMessage::SetDesktopSize { .. } => Command::SetDesktopSize,
            ClientMessage::Key { down, keysym } | ClientMessage::QemuKey { down, keysym, .. } => {
                if options.control && !crate::onscreen::dialog::is_open(&desktop.display) {
                    desktop
                        .input(InputCommand::Key {
                            viewer: id,
                            keysym,
                            down,
                        })
                        .await;
                } else {
                    stats.dropped_input += 1;
                }
                continue;
            }
            ClientMessage::Pointer { buttons, x, y } => {
                if options.control && !crate::onscreen::dialog::is_open(&desktop.display) {
                    desktop
                        .input(InputCommand::Pointer {
                            viewer: id,
                            x,
                            y,
                            buttons,
                        })
                        .await;
                } else {
                    stats.dropped_input += 1;
                }
                continue;
            }
            ClientMessage::CutText(CutText::Latin1(bytes)) => {
                if options.clipboard_to_device {
                    to_device(desktop, clipboard::from_latin1(&bytes), stats).await;
                } else {
                    stats.dropped_clipboard += 1;
                }
                continue;
            }
            ClientMessage::CutText(CutText::Extended { flags, payload }) => {
                match extended_clipboard(desktop, options, flags, &payload, stats).await {
                    Some(command) => command,
                    None => continue,
                }
            }
            ClientMessage::Version | ClientMessage::Security | ClientMessage::Init { .. } => {
                continue;
            }
        };
        if updates.send(command).await.is_err() {
            // The updating half ended (the viewer stopped reading, or its stream failed); its
            // result says why. Input the viewer sent before it left still reaches the device.
            continue;
        }
    }
    Ok(())
}

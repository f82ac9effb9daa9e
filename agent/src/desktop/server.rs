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

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tether_proto::channels::DesktopMessage;
use tether_proto::frame::{Frame as WireFrame, FrameKind};
use tether_rfb::client::{ClientMessage, CutText, Limits, ParseError, Parser, PixelFormat, Screen};
use tether_rfb::server::{self as rfb, Encoder, Rect, SizeReason, Update};
use tether_transport::{FrameReader, FrameWriter, framed::FramedError};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info};

use super::backend::{CursorShape, DesktopError, Size};
use super::capture::{InputCommand, SharedDesktop};
use super::tiles::{Frame, tile_grid, tiles_to_rects};

/// What one viewer may do and how it is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewerOptions {
    /// The desktop's name in ServerInit.
    pub name: String,
    /// Keyboard and pointer reach the device (otherwise they are dropped and counted).
    pub control: bool,
    /// The viewer's clipboard reaches the device's.
    pub clipboard_to_device: bool,
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
    /// Key and pointer events dropped because the session is view-only.
    pub dropped_input: u64,
    /// Clipboard texts dropped because the session does not let them reach the device.
    pub dropped_clipboard: u64,
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

/// Fence flags: BlockBefore, BlockAfter, SyncNext (all honoured by processing in order).
const FENCE_SUPPORTED: u32 = 0b111;
/// Fence flag: a request the other side must answer.
const FENCE_REQUEST: u32 = 1 << 31;

/// ExtendedDesktopSize status: resizing is prohibited.
const RESIZE_PROHIBITED: u16 = 1;

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
        parser: Parser::new(Limits::default()),
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
    let updater = Updater::new(&desktop, writer, options.max_fps);
    let (read_result, (mut writer, sent, update_result)) = {
        let reading = read_viewer(&desktop, id, &options, &mut viewer, tx, &mut stats);
        let updating = updater.run(rx);
        tokio::pin!(reading, updating);
        tokio::select! {
            read = &mut reading => (read, updating.await),
            update = &mut updating => (Ok(()), update),
        }
    };
    stats.updates = sent.0;
    stats.bytes = sent.1;
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

async fn send(writer: &mut FrameWriter, bytes: impl Into<Bytes>) -> Result<(), FramedError> {
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

/// What the reading half hands the updating half, in the viewer's order.
#[derive(Debug)]
enum Command {
    Format(PixelFormat),
    Encodings(Vec<i32>),
    Request { incremental: bool, region: Rect },
    Continuous { enable: bool, region: Rect },
    Fence { flags: u32, payload: Vec<u8> },
    SetDesktopSize,
}

/// Plain RFB clipboard text is Latin-1: every byte is the code point of its character.
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|b| char::from(*b)).collect()
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
                if options.control {
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
                if options.control {
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
            ClientMessage::CutText(text) => {
                match text {
                    CutText::Latin1(bytes) if options.clipboard_to_device => {
                        desktop.input(InputCommand::Clipboard(latin1(&bytes))).await;
                    }
                    // Extended Clipboard is never offered, so a viewer has no business sending it.
                    CutText::Extended { .. } => {
                        debug!("Dropped an Extended Clipboard message the desktop never offered");
                    }
                    CutText::Latin1(_) => stats.dropped_clipboard += 1,
                }
                continue;
            }
            ClientMessage::Version | ClientMessage::Security | ClientMessage::Init { .. } => {
                continue;
            }
        };
        if updates.send(command).await.is_err() {
            // The updating half ended; its result says why.
            return Ok(());
        }
    }
    Ok(())
}

/// The updating half: what this viewer asked for and what it already has.
struct Updater {
    encoder: Encoder,
    writer: FrameWriter,
    frames: watch::Receiver<Arc<Frame>>,
    cursor: watch::Receiver<Option<Arc<CursorShape>>>,
    cursor_alive: bool,
    failure: Box<dyn Fn() -> Option<String> + Send + Sync>,
    interval: Duration,
    last_update: Option<Instant>,
    /// Regions asked for in full (non-incremental).
    full: Option<Rect>,
    /// Regions asked for incrementally.
    incremental: Option<Rect>,
    /// The region of continuous updates, while enabled.
    continuous: Option<Rect>,
    /// The size the viewer was told.
    viewer_size: Size,
    /// Per tile of the latest frame's grid, the generation this viewer has.
    known: Vec<u64>,
    known_size: Size,
    cursor_sent: Option<u32>,
    /// The frame the viewer's framebuffer holds, when it holds one whole (every tile sent as
    /// of that frame): what a scroll is copied from.
    last_sent: Option<Arc<Frame>>,
    /// An ExtendedDesktopSize rectangle announcing support is due.
    announce_size: bool,
    announced_size: bool,
    /// A SetDesktopSize waits for its answer.
    size_reply: bool,
    announced_continuous: bool,
    announced_fence: bool,
    updates: u64,
    bytes: u64,
}

impl Updater {
    fn new(desktop: &Arc<SharedDesktop>, writer: FrameWriter, max_fps: u32) -> Self {
        let frames = desktop.frames();
        let size = frames.borrow().size;
        let weak = Arc::downgrade(desktop);
        Self {
            encoder: Encoder::new(),
            writer,
            frames,
            cursor: desktop.cursor(),
            cursor_alive: true,
            failure: Box::new(move || weak.upgrade().and_then(|d| d.failure())),
            interval: Duration::from_secs(1) / max_fps.max(1),
            last_update: None,
            full: None,
            incremental: None,
            continuous: None,
            viewer_size: size,
            known: Vec::new(),
            known_size: Size::default(),
            cursor_sent: None,
            last_sent: None,
            announce_size: false,
            announced_size: false,
            size_reply: false,
            announced_continuous: false,
            announced_fence: false,
            updates: 0,
            bytes: 0,
        }
    }

    /// Runs until the reading half is done or something fails; gives the writer back with
    /// (updates, bytes) sent.
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
    ) -> (FrameWriter, (u64, u64), Result<(), ServeError>) {
        let result = self.serve(&mut commands).await;
        (self.writer, (self.updates, self.bytes), result)
    }

    async fn serve(&mut self, commands: &mut mpsc::Receiver<Command>) -> Result<(), ServeError> {
        loop {
            let frame = self.frames.borrow().clone();
            let cursor = self.cursor.borrow().clone();
            let due = self.deliverable(&frame, cursor.as_deref()).then(|| {
                self.last_update
                    .map_or_else(Instant::now, |t| t + self.interval)
            });
            tokio::select! {
                command = commands.recv() => match command {
                    Some(c) => self.handle(c).await?,
                    None => return Ok(()),
                },
                changed = self.frames.changed() => if changed.is_err() {
                    let why = (self.failure)().unwrap_or_else(|| "the display closed".into());
                    return Err(ServeError::CaptureStopped(why));
                },
                changed = self.cursor.changed(), if self.cursor_alive => if changed.is_err() {
                    self.cursor_alive = false;
                },
                () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    self.update(frame, cursor).await?;
                }
            }
        }
    }

    async fn write(&mut self, bytes: impl Into<Bytes>) -> Result<(), ServeError> {
        let bytes: Bytes = bytes.into();
        self.bytes += bytes.len() as u64;
        send(&mut self.writer, bytes).await?;
        Ok(())
    }

    async fn handle(&mut self, command: Command) -> Result<(), ServeError> {
        match command {
            Command::Format(format) => self
                .encoder
                .set_format(format)
                .map_err(ServeError::PixelFormat)?,
            Command::Encodings(list) => {
                let had_cursor = self.encoder.preferences().cursor;
                self.encoder.set_encodings(&list);
                let prefs = self.encoder.preferences().clone();
                if prefs.cursor && !had_cursor {
                    self.cursor_sent = None;
                }
                // Each extension is confirmed once, the first time the viewer names it.
                if prefs.continuous_updates && !self.announced_continuous {
                    self.announced_continuous = true;
                    self.write(rfb::end_of_continuous_updates().to_vec())
                        .await?;
                }
                if prefs.fence && !self.announced_fence {
                    self.announced_fence = true;
                    self.write(rfb::fence(FENCE_REQUEST, &[])).await?;
                }
                if prefs.extended_desktop_size && !self.announced_size {
                    self.announced_size = true;
                    self.announce_size = true;
                }
            }
            Command::Request {
                incremental,
                region,
            } => {
                if !incremental {
                    self.full = Some(union(self.full, region));
                } else if self.continuous.is_none() {
                    self.incremental = Some(union(self.incremental, region));
                }
            }
            Command::Continuous { enable, region } => {
                if enable {
                    self.continuous = Some(region);
                    self.incremental = None;
                } else {
                    self.continuous = None;
                    self.write(rfb::end_of_continuous_updates().to_vec())
                        .await?;
                }
            }
            Command::Fence { flags, payload } => {
                if flags & FENCE_REQUEST != 0 {
                    self.write(rfb::fence(flags & FENCE_SUPPORTED, &payload))
                        .await?;
                }
            }
            Command::SetDesktopSize => {
                if self.encoder.preferences().extended_desktop_size {
                    self.size_reply = true;
                }
            }
        }
        Ok(())
    }

    /// Tiles of `frame` inside `region` this viewer has not been sent, as rectangles.
    fn dirty(&self, frame: &Frame, region: Rect) -> Vec<Rect> {
        let region = region.intersect(&self.viewer_size.bounds());
        if region.is_empty() {
            return Vec::new();
        }
        let (across, _) = tile_grid(frame.size);
        let fresh = self.known_size != frame.size;
        let marked: Vec<bool> = frame
            .changed_at
            .iter()
            .enumerate()
            .map(|(i, stamp)| {
                let unseen = fresh || self.known.get(i).is_none_or(|k| stamp > k);
                unseen
                    && !frame
                        .tile_rect(i % across, i / across)
                        .intersect(&region)
                        .is_empty()
            })
            .collect();
        tiles_to_rects(frame.size, &marked)
            .into_iter()
            .map(|r| r.intersect(&region))
            .filter(|r| !r.is_empty())
            .collect()
    }

    fn wanted(&self) -> Option<Rect> {
        match (self.incremental, self.continuous) {
            (Some(a), Some(b)) => Some(a.union(&b)),
            (a, b) => a.or(b),
        }
    }

    fn cursor_changed(&self, cursor: Option<&CursorShape>) -> bool {
        self.encoder.preferences().cursor
            && cursor.is_some_and(|c| Some(c.serial) != self.cursor_sent)
    }

    /// Whether an update is due now (subject to the frame interval).
    fn deliverable(&self, frame: &Frame, cursor: Option<&CursorShape>) -> bool {
        let Some(wanted) = self.full.or(self.wanted()) else {
            return false;
        };
        let prefs = self.encoder.preferences();
        let resizable = prefs.desktop_size || prefs.extended_desktop_size;
        self.full.is_some()
            || self.size_reply
            || self.announce_size
            || (resizable && frame.size != self.viewer_size)
            || self.cursor_changed(cursor)
            || !self.dirty(frame, wanted).is_empty()
    }

    /// Builds, encodes and sends one update from `frame`.
    async fn update(
        &mut self,
        frame: Arc<Frame>,
        cursor: Option<Arc<CursorShape>>,
    ) -> Result<(), ServeError> {
        let mut update = Update::new();
        let prefs = self.encoder.preferences().clone();
        let screen = |size: Size| Screen {
            id: 0,
            x: 0,
            y: 0,
            width: size.width,
            height: size.height,
            flags: 0,
        };
        if frame.size != self.viewer_size && (prefs.extended_desktop_size || prefs.desktop_size) {
            let size = frame.size;
            if prefs.extended_desktop_size {
                rfb::extended_desktop_size(
                    SizeReason::Server,
                    0,
                    size.width,
                    size.height,
                    &[screen(size)],
                    update.body(),
                );
            } else {
                rfb::desktop_size(size.width, size.height, update.body());
            }
            update.added(1);
            self.viewer_size = size;
            self.announce_size = false;
            // Everything the viewer had is gone with the old size.
            self.full = Some(size.bounds());
        }
        if self.size_reply || self.announce_size {
            let (reason, status) = if self.size_reply {
                (SizeReason::ThisClient, RESIZE_PROHIBITED)
            } else {
                (SizeReason::Server, 0)
            };
            let size = self.viewer_size;
            rfb::extended_desktop_size(
                reason,
                status,
                size.width,
                size.height,
                &[screen(size)],
                update.body(),
            );
            update.added(1);
            self.size_reply = false;
            self.announce_size = false;
        }
        if let Some(shape) = cursor.as_deref().filter(|c| self.cursor_changed(Some(c))) {
            rfb::cursor(
                shape.hot_x,
                shape.hot_y,
                shape.width,
                shape.height,
                &shape.argb,
                self.encoder.format(),
                update.body(),
            );
            update.added(1);
            self.cursor_sent = Some(shape.serial);
        }
        let bounds = self.viewer_size.bounds();
        let asked = match (self.full, self.wanted()) {
            (Some(f), Some(w)) => Some(f.union(&w)),
            (f, w) => f.or(w),
        };
        let covers_screen = asked.is_some_and(|a| a.intersect(&bounds) == bounds);
        let mut rects = match self.full.take() {
            Some(full) => {
                let full = full.intersect(&self.viewer_size.bounds());
                let mut rects: Vec<Rect> = if full.is_empty() {
                    Vec::new()
                } else {
                    vec![full]
                };
                // What changed elsewhere in an incremental region goes along.
                if let Some(wanted) = self.wanted() {
                    rects.extend(
                        self.dirty(&frame, wanted)
                            .into_iter()
                            .filter(|r| r.intersect(&full) != *r),
                    );
                }
                rects
            }
            None => self
                .wanted()
                .map(|w| self.dirty(&frame, w))
                .unwrap_or_default(),
        };
        rects.retain(|r| !r.is_empty());
        self.incremental = None;
        self.mark_known(&frame, &rects);
        // Scrolls are copied from what the viewer holds, so only from a frame it holds whole.
        let prev = self
            .last_sent
            .take()
            .filter(|p| prefs.copy_rect && p.size == frame.size);
        self.last_sent =
            (covers_screen && frame.size == self.viewer_size && self.knows_all(&frame))
                .then(|| frame.clone());
        let encoder = std::mem::take(&mut self.encoder);
        let encoded = tokio::task::spawn_blocking(move || {
            let mut encoder = encoder;
            let image = frame.image();
            for rect in rects {
                match &prev {
                    Some(prev) => {
                        encoder.encode_with_scroll(&prev.image(), &image, rect, &mut update);
                    }
                    None => encoder.encode(&image, rect, &mut update),
                }
            }
            (encoder, update.finish())
        })
        .await;
        let (encoder, bytes) = match encoded {
            Ok(done) => done,
            Err(e) => {
                return Err(ServeError::CaptureStopped(format!(
                    "the encoder failed: {e}"
                )));
            }
        };
        self.encoder = encoder;
        self.last_update = Some(Instant::now());
        self.updates += 1;
        self.write(bytes).await
    }

    /// Whether the viewer has every tile of `frame` as it is there.
    fn knows_all(&self, frame: &Frame) -> bool {
        self.known_size == frame.size
            && self.known.len() == frame.changed_at.len()
            && self
                .known
                .iter()
                .zip(&frame.changed_at)
                .all(|(k, c)| k >= c)
    }

    /// Records that the tiles under `rects` were sent as they are in `frame`.
    fn mark_known(&mut self, frame: &Frame, rects: &[Rect]) {
        if self.known_size != frame.size {
            self.known = vec![0; frame.changed_at.len()];
            self.known_size = frame.size;
        }
        let across = frame.tiles_across();
        for (i, stamp) in frame.changed_at.iter().enumerate() {
            let tile = frame.tile_rect(i % across, i / across);
            if rects.iter().any(|r| !r.intersect(&tile).is_empty())
                && let Some(known) = self.known.get_mut(i)
            {
                *known = *stamp;
            }
        }
    }
}

fn union(a: Option<Rect>, b: Rect) -> Rect {
    a.map_or(b, |a| a.union(&b))
}

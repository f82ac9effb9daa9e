//! The measuring viewer: an RFB 3.8 client of the benchmark's own, the same for every server.
//! It authenticates (VNC authentication or None), asks for one pixel format and one encoding
//! list, requests the whole screen once and then incrementally after every update, as viewers
//! do, and logs every server message with its size, its arrival time and the encodings of its
//! rectangles. It decodes no pixels: it only finds where each rectangle ends (ZRLE and Tight
//! carry lengths; Raw, CopyRect and the cursor follow from the rectangle's size).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod wire;

use wire::{Counting, handshake, read_update, request, set_encodings, set_pixel_format};

/// Bytes per pixel of the format the viewer asks for (32 bits, depth 24).
const BPP: usize = 4;
/// Tight's compact pixels for that format: three bytes.
const TPIXEL: usize = 3;
/// How long the first full frame may take.
const FIRST_FRAME_PATIENCE: Duration = Duration::from_secs(60);
/// The first frame is complete when every cell of this size has been covered.
const CELL: usize = 8;

/// One framebuffer rectangle as it arrived.
#[derive(Clone, Debug)]
pub struct RectRecord {
    /// What carried it: "ZRLE", "CopyRect", "Tight JPEG", "Cursor", …
    pub kind: &'static str,
    /// Its bytes, header included.
    pub bytes: u64,
    /// Its pixels (0 for pseudo-rectangles).
    pub pixels: u64,
}

/// One server message as it arrived.
#[derive(Clone, Debug)]
pub struct Record {
    /// When its last byte was read.
    pub at: Instant,
    /// Its bytes.
    pub bytes: u64,
    /// Its rectangles, for FramebufferUpdates (empty for other messages).
    pub rects: Vec<RectRecord>,
    /// Whether it was a FramebufferUpdate.
    pub update: bool,
}

/// The first full frame: the updates that covered the whole screen after the first request.
#[derive(Clone, Copy, Debug, Default)]
pub struct FirstFrame {
    /// When it was complete.
    pub done: Option<Instant>,
    /// Their bytes.
    pub bytes: u64,
    /// How many updates it took.
    pub updates: u32,
    /// From the request to the last byte.
    pub elapsed: Duration,
}

#[derive(Default)]
struct Log {
    records: Vec<Record>,
    first: Option<FirstFrame>,
    failed: Option<String>,
}

/// What a time window held.
#[derive(Clone, Debug, Default)]
pub struct Window {
    /// Every byte the server sent.
    pub bytes: u64,
    /// FramebufferUpdates.
    pub updates: u64,
    /// Per rectangle kind.
    pub kinds: BTreeMap<&'static str, Kind>,
}

/// Rectangles of one kind in a window.
#[derive(Clone, Copy, Debug, Default)]
pub struct Kind {
    /// How many.
    pub rects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Their pixels.
    pub pixels: u64,
}

/// A connected measuring viewer. Dropping it disconnects.
pub struct Viewer {
    /// The screen's width.
    pub width: u16,
    /// The screen's height.
    pub height: u16,
    /// The first full frame.
    pub first: FirstFrame,
    /// What the first full frame was made of.
    pub first_window: Window,
    /// When the first frame was requested.
    pub requested: Instant,
    log: Arc<Mutex<Log>>,
    seq: watch::Receiver<u64>,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    task: JoinHandle<()>,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Viewer {
    /// Connects to 127.0.0.1:`port`, authenticates with `password` (VNC authentication) or
    /// none, asks for `encodings` and waits for the first full frame.
    pub async fn connect(port: u16, password: Option<&str>, encodings: &[i32]) -> Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("failed to connect to 127.0.0.1:{port}"))?;
        stream.set_nodelay(true)?;
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::with_capacity(256 * 1024, read);
        let (width, height) = handshake(&mut read, &mut write, password).await?;
        write.write_all(&set_pixel_format()).await?;
        write.write_all(&set_encodings(encodings)).await?;
        let requested = Instant::now();
        write.write_all(&request(false, width, height)).await?;

        let log = Arc::new(Mutex::new(Log::default()));
        let (seq_tx, seq) = watch::channel(0u64);
        let writer = Arc::new(tokio::sync::Mutex::new(write));
        let task = tokio::spawn(read_loop(
            read,
            writer.clone(),
            log.clone(),
            seq_tx,
            (width, height),
            requested,
        ));
        let mut viewer = Self {
            width,
            height,
            first: FirstFrame::default(),
            first_window: Window::default(),
            requested,
            log,
            seq,
            writer,
            task,
        };
        let deadline = Instant::now() + FIRST_FRAME_PATIENCE;
        loop {
            let first = viewer.lock().first;
            if let Some(first) = first {
                viewer.first = first;
                let done = first.done.unwrap_or_else(Instant::now);
                viewer.first_window = viewer.window(requested, done + Duration::from_nanos(1));
                return Ok(viewer);
            }
            viewer.check()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no full frame within {FIRST_FRAME_PATIENCE:?}");
            }
            let _ = tokio::time::timeout(left, viewer.seq.changed()).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fails if the connection failed.
    pub fn check(&self) -> Result<()> {
        match &self.lock().failed {
            Some(why) => bail!("the viewer's connection failed: {why}"),
            None => Ok(()),
        }
    }

    /// What arrived from `from` to `to`.
    pub fn window(&self, from: Instant, to: Instant) -> Window {
        let log = self.lock();
        let mut w = Window::default();
        for r in log.records.iter().filter(|r| r.at >= from && r.at < to) {
            w.bytes += r.bytes;
            if r.update {
                w.updates += 1;
            }
            for rect in &r.rects {
                let e = w.kinds.entry(rect.kind).or_default();
                e.rects += 1;
                e.bytes += rect.bytes;
                e.pixels += rect.pixels;
            }
        }
        w
    }

    /// When the last FramebufferUpdate arrived.
    fn last_update(&self) -> Option<Instant> {
        self.lock()
            .records
            .iter()
            .rev()
            .find(|r| r.update)
            .map(|r| r.at)
    }

    /// Waits until no update has arrived for `quiet`, for at most `limit`; whether it did.
    pub async fn settle(&self, quiet: Duration, limit: Duration) -> Result<bool> {
        let started = Instant::now();
        let deadline = started + limit;
        loop {
            self.check()?;
            let last = self.last_update().map_or(started, |t| t.max(started));
            let now = Instant::now();
            if now.duration_since(last) >= quiet {
                return Ok(true);
            }
            if now >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// When the first FramebufferUpdate completed after `t0`, waiting at most `limit`.
    pub async fn update_after(&self, t0: Instant, limit: Duration) -> Result<Option<Instant>> {
        let deadline = t0 + limit;
        let mut seq = self.seq.clone();
        loop {
            let found = self
                .lock()
                .records
                .iter()
                .rev()
                .take_while(|r| r.at > t0)
                .filter(|r| r.update)
                .last()
                .map(|r| r.at);
            if found.is_some() {
                return Ok(found);
            }
            self.check()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let _ = tokio::time::timeout(left, seq.changed()).await;
        }
    }

    /// Sends a KeyEvent press and release of `keysym`; returns when it was sent.
    pub async fn key(&self, keysym: u32) -> Result<Instant> {
        let mut msg = Vec::with_capacity(16);
        for down in [1u8, 0] {
            msg.extend_from_slice(&[4, down, 0, 0]);
            msg.extend_from_slice(&keysym.to_be_bytes());
        }
        let mut w = self.writer.lock().await;
        let t0 = Instant::now();
        w.write_all(&msg).await?;
        Ok(t0)
    }
}

/// Reads server messages until the connection ends, logging each, answering every update
/// with an incremental request for the whole screen.
async fn read_loop<R: AsyncRead + Unpin>(
    mut read: R,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    log: Arc<Mutex<Log>>,
    seq: watch::Sender<u64>,
    size: (u16, u16),
    requested: Instant,
) {
    let mut reader = Counting {
        inner: &mut read,
        bytes: 0,
        scratch: vec![0; 64 * 1024],
    };
    let mut coverage = Coverage::new(size);
    let mut size = size;
    let mut first = FirstFrame::default();
    let mut done_first = false;
    let result: Result<()> = async {
        loop {
            reader.bytes = 0;
            let kind = reader.u8().await?;
            let mut rects = Vec::new();
            let update = kind == 0;
            match kind {
                0 => read_update(&mut reader, &mut rects, &mut size, &mut coverage).await?,
                1 => {
                    reader.skip(3).await?;
                    let n = reader.u16().await?;
                    reader.skip(6 * usize::from(n)).await?;
                }
                2 | 150 => {}
                3 => {
                    reader.skip(3).await?;
                    let len = reader.u32().await?;
                    reader.skip(len as usize).await?;
                }
                248 => {
                    reader.skip(7).await?;
                    let len = reader.u8().await?;
                    reader.skip(usize::from(len)).await?;
                }
                other => bail!("unknown server message type {other}"),
            }
            let at = Instant::now();
            if update {
                let request = request(true, size.0, size.1);
                writer.lock().await.write_all(&request).await?;
                if !done_first {
                    first.bytes += reader.bytes;
                    first.updates += 1;
                    if coverage.complete() {
                        first.elapsed = at.duration_since(requested);
                        first.done = Some(at);
                        done_first = true;
                    }
                }
            }
            {
                let mut log = log
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if done_first && log.first.is_none() {
                    log.first = Some(first);
                }
                log.records.push(Record {
                    at,
                    bytes: reader.bytes,
                    rects,
                    update,
                });
            }
            seq.send_modify(|n| *n += 1);
        }
    }
    .await;
    let why = match result {
        Ok(()) => "closed".to_owned(),
        Err(e) => format!("{e:#}"),
    };
    log.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .failed = Some(why);
    seq.send_modify(|n| *n += 1);
}

/// Which cells of the screen rectangles have covered since the first request.
struct Coverage {
    across: usize,
    covered: Vec<bool>,
}

impl Coverage {
    fn new((width, height): (u16, u16)) -> Self {
        let across = usize::from(width).div_ceil(CELL);
        let down = usize::from(height).div_ceil(CELL);
        Self {
            across,
            covered: vec![false; across * down],
        }
    }

    fn mark(&mut self, x: u16, y: u16, w: usize, h: usize) {
        if w == 0 || h == 0 {
            return;
        }
        let (x, y) = (usize::from(x), usize::from(y));
        let down = self.covered.len() / self.across.max(1);
        for cy in y / CELL..((y + h).div_ceil(CELL)).min(down) {
            for cx in x / CELL..((x + w).div_ceil(CELL)).min(self.across) {
                self.covered[cy * self.across + cx] = true;
            }
        }
    }

    fn complete(&self) -> bool {
        self.covered.iter().all(|c| *c)
    }
}

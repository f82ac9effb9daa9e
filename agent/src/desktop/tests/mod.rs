//! Desktop tests against a real X server: an Xvfb per test on a display it picks, drawn on
//! and read back with the test's own X connection, and the agent's RFB server driven over
//! an in-memory framed pipe by a minimal viewer.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on any unexpected error.

mod clipboard;
mod fake;
mod x11;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tether_proto::channels::DesktopMessage;
use tether_proto::frame::{Frame, FrameKind};
use tether_rfb::encoding;
use tether_rfb::server::Rect;
use tether_transport::framed::{reader, writer};
use tether_transport::{FrameReader, FrameWriter};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{self, ConnectionExt as _};
use x11rb::rust_connection::RustConnection;

/// How long any one expected thing may take.
pub const PATIENCE: Duration = Duration::from_secs(20);

fn tool(name: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is not installed: the desktop tests need the Debian package {package} (apt-get install -y {package})")
        })
}

/// A running Xvfb, killed when dropped.
pub struct Xvfb {
    child: Child,
    /// `:N`.
    pub display: String,
}

impl Xvfb {
    /// Starts Xvfb with a `width`×`height` 24-bit screen on a display it picks itself (the
    /// server skips numbers whose `/tmp/.X<n>-lock` is taken and reports its choice through
    /// `-displayfd`), with `extra` arguments.
    pub fn start(width: u16, height: u16, extra: &[&str]) -> Self {
        let mut child = Command::new(tool("Xvfb", "xvfb"))
            .args([
                "-displayfd",
                "1",
                "-nolisten",
                "tcp",
                "-noreset",
                "-screen",
                "0",
            ])
            .arg(format!("{width}x{height}x24"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb starts");
        let stdout = child.stdout.take().expect("Xvfb's stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(PATIENCE).unwrap_or_default();
        let number: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("Xvfb did not report its display number (got {line:?})"));
        Self {
            child,
            display: format!(":{number}"),
        }
    }

    /// A connection of the test's own.
    pub fn connect(&self) -> RustConnection {
        x11rb::connect(Some(&self.display))
            .expect("the test connects to Xvfb")
            .0
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The root window.
pub fn root(conn: &RustConnection) -> xproto::Window {
    conn.setup().roots[0].root
}

/// A mapped override-redirect window filled with `colour` (0xRRGGBB), events in `mask`.
pub fn window(
    conn: &RustConnection,
    rect: Rect,
    colour: u32,
    mask: xproto::EventMask,
) -> xproto::Window {
    let id = conn.generate_id().unwrap();
    conn.create_window(
        x11rb::COPY_DEPTH_FROM_PARENT,
        id,
        root(conn),
        rect.x as i16,
        rect.y as i16,
        rect.width,
        rect.height,
        0,
        xproto::WindowClass::INPUT_OUTPUT,
        x11rb::COPY_FROM_PARENT,
        &xproto::CreateWindowAux::new()
            .background_pixel(colour)
            .override_redirect(1)
            .event_mask(mask),
    )
    .unwrap();
    conn.map_window(id).unwrap();
    conn.get_input_focus().unwrap().reply().unwrap();
    id
}

/// Fills `rect` of `window` with `colour`.
pub fn fill(conn: &RustConnection, window: xproto::Window, rect: Rect, colour: u32) {
    let gc = conn.generate_id().unwrap();
    conn.create_gc(gc, window, &xproto::CreateGCAux::new().foreground(colour))
        .unwrap();
    conn.poly_fill_rectangle(
        window,
        gc,
        &[xproto::Rectangle {
            x: rect.x as i16,
            y: rect.y as i16,
            width: rect.width,
            height: rect.height,
        }],
    )
    .unwrap();
    conn.free_gc(gc).unwrap();
    conn.get_input_focus().unwrap().reply().unwrap();
}

/// The X server's own capture of the whole screen, as 0xRRGGBB pixels.
pub fn screen_pixels(conn: &RustConnection) -> (u16, u16, Vec<u32>) {
    let screen = &conn.setup().roots[0];
    let (w, h) = (screen.width_in_pixels, screen.height_in_pixels);
    let image = conn
        .get_image(xproto::ImageFormat::Z_PIXMAP, screen.root, 0, 0, w, h, !0)
        .unwrap()
        .reply()
        .unwrap();
    let pixels = image
        .data
        .chunks_exact(4)
        .map(|p| u32::from_le_bytes([p[0], p[1], p[2], 0]))
        .collect();
    (w, h, pixels)
}

/// A minimal RFB viewer: Raw only, 32-bit BGRX as the server offers it.
pub struct Viewer {
    to: FrameWriter,
    from: FrameReader,
    buf: Vec<u8>,
    /// The framebuffer's size.
    pub width: u16,
    /// The framebuffer's size.
    pub height: u16,
    /// The framebuffer, 0xRRGGBB.
    pub pixels: Vec<u32>,
    /// The desktop's name from ServerInit.
    pub name: String,
    /// Why the agent closed the channel, once it said.
    pub closed: Option<String>,
}

/// A message from the server.
#[derive(Debug)]
pub enum Message {
    /// FramebufferUpdate.
    Update(Received),
    /// EndOfContinuousUpdates.
    EndOfContinuousUpdates,
    /// ServerFence.
    Fence {
        /// Flags.
        flags: u32,
        /// Payload.
        payload: Vec<u8>,
    },
    /// ServerCutText: Latin-1 bytes.
    CutText(Vec<u8>),
    /// ServerCutText in Extended Clipboard form.
    ExtendedCutText {
        /// Action and format bits.
        flags: u32,
        /// What follows them.
        payload: Vec<u8>,
    },
    /// Bell.
    Other,
}

/// What one framebuffer update held.
#[derive(Debug, Default)]
pub struct Received {
    /// Pixel rectangles.
    pub rects: Vec<Rect>,
    /// CopyRect rectangles (destinations).
    pub copies: Vec<Rect>,
    /// Pseudo-rectangles: (encoding, header rectangle).
    pub pseudo: Vec<(i32, Rect)>,
}

impl Received {
    /// Pixels covered by the pixel rectangles (not copies).
    pub fn area(&self) -> usize {
        self.rects.iter().map(Rect::area).sum()
    }

    /// Whether the pixel rectangles cover all of `rect`.
    pub fn covers(&self, rect: Rect) -> bool {
        (rect.y..rect.y + rect.height).all(|y| {
            (rect.x..rect.x + rect.width).all(|x| {
                self.rects
                    .iter()
                    .any(|r| x >= r.x && x < r.x + r.width && y >= r.y && y < r.y + r.height)
            })
        })
    }
}

/// The two framed pipes of a channel: (the server's reader and writer, the viewer's).
pub fn channel() -> ((FrameReader, FrameWriter), (FrameReader, FrameWriter)) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let (a_r, a_w) = tokio::io::split(a);
    let (b_r, b_w) = tokio::io::split(b);
    ((reader(a_r), writer(a_w)), (reader(b_r), writer(b_w)))
}

impl Viewer {
    /// A viewer on the viewer's end of [`channel`], before the handshake.
    pub fn new((from, to): (FrameReader, FrameWriter)) -> Self {
        Self {
            to,
            from,
            buf: Vec::new(),
            width: 0,
            height: 0,
            pixels: Vec::new(),
            name: String::new(),
            closed: None,
        }
    }

    /// Sends RFB bytes (in data frames within the frame limit).
    pub async fn send(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(256 * 1024) {
            self.to.send(&Frame::data(chunk.to_vec())).await.unwrap();
        }
    }

    /// Reads until `n` bytes are buffered; `None` when the channel ended first.
    async fn fill(&mut self, n: usize) -> Option<()> {
        while self.buf.len() < n {
            let frame = tokio::time::timeout(PATIENCE, self.from.next())
                .await
                .expect("the agent answers in time")
                .ok()??;
            match frame.kind {
                FrameKind::Data => self.buf.extend_from_slice(&frame.payload),
                FrameKind::Message => {
                    if let Ok(DesktopMessage::Closed { reason }) = frame.parse() {
                        self.closed = Some(reason);
                    }
                }
                FrameKind::EndOfData => return None,
            }
        }
        Some(())
    }

    /// Takes `n` bytes.
    pub async fn take(&mut self, n: usize) -> Vec<u8> {
        self.fill(n)
            .await
            .expect("the channel carries the bytes expected");
        self.buf.drain(..n).collect()
    }

    /// Reads until the agent ends the channel; true when it did (rather than time out).
    pub async fn until_closed(&mut self) -> bool {
        loop {
            match tokio::time::timeout(PATIENCE, self.from.next()).await {
                Err(_) => return false,
                Ok(Ok(Some(frame))) => {
                    if frame.kind == FrameKind::Message
                        && let Ok(DesktopMessage::Closed { reason }) = frame.parse()
                    {
                        self.closed = Some(reason);
                    }
                }
                Ok(_) => return true,
            }
        }
    }

    /// The version exchange; then the security types (count first) as the server sent them.
    pub async fn version(&mut self) -> u8 {
        assert_eq!(self.take(12).await, b"RFB 003.008\n");
        self.send(b"RFB 003.008\n").await;
        self.take(1).await[0]
    }

    /// The reason after a count of zero security types.
    pub async fn refusal(&mut self) -> String {
        let len = u32::from_be_bytes(self.take(4).await.try_into().unwrap()) as usize;
        String::from_utf8(self.take(len).await).unwrap()
    }

    /// The whole handshake, then SetEncodings `encodings`.
    pub async fn handshake(&mut self, encodings: &[i32]) {
        let count = self.version().await;
        assert_eq!(
            self.take(usize::from(count)).await,
            vec![1],
            "security None is offered"
        );
        self.send(&[1]).await;
        assert_eq!(self.take(4).await, [0, 0, 0, 0], "SecurityResult is OK");
        self.send(&[1]).await; // ClientInit, shared
        let init = self.take(24).await;
        self.width = u16::from_be_bytes([init[0], init[1]]);
        self.height = u16::from_be_bytes([init[2], init[3]]);
        assert_eq!(
            &init[4..8],
            &[32, 24, 0, 1],
            "ServerInit offers 32-bit true colour"
        );
        let len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
        self.name = String::from_utf8(self.take(len).await).unwrap();
        self.pixels = vec![0; usize::from(self.width) * usize::from(self.height)];
        let mut message = vec![2, 0];
        message.extend_from_slice(&(encodings.len() as u16).to_be_bytes());
        for e in encodings {
            message.extend_from_slice(&e.to_be_bytes());
        }
        self.send(&message).await;
    }

    /// FramebufferUpdateRequest for the whole screen.
    pub async fn request(&mut self, incremental: bool) {
        let mut message = vec![3, u8::from(incremental), 0, 0, 0, 0];
        message.extend_from_slice(&self.width.to_be_bytes());
        message.extend_from_slice(&self.height.to_be_bytes());
        self.send(&message).await;
    }

    /// Reads server messages until a FramebufferUpdate, applies it and returns what it held.
    pub async fn update(&mut self) -> Received {
        loop {
            if let Message::Update(received) = self.message().await {
                return received;
            }
        }
    }

    /// The next server message (a FramebufferUpdate is applied).
    pub async fn message(&mut self) -> Message {
        let kind = self.take(1).await[0];
        match kind {
            0 => Message::Update(self.read_update().await),
            2 => Message::Other,
            150 => Message::EndOfContinuousUpdates,
            3 => {
                let header = self.take(7).await;
                let len = i32::from_be_bytes(header[3..7].try_into().unwrap());
                if len < 0 {
                    let body = self.take(len.unsigned_abs() as usize).await;
                    Message::ExtendedCutText {
                        flags: u32::from_be_bytes(body[..4].try_into().unwrap()),
                        payload: body[4..].to_vec(),
                    }
                } else {
                    Message::CutText(self.take(len as usize).await)
                }
            }
            248 => {
                let header = self.take(8).await;
                let flags = u32::from_be_bytes(header[3..7].try_into().unwrap());
                let payload = self.take(usize::from(header[7])).await;
                Message::Fence { flags, payload }
            }
            other => panic!("unexpected server message type {other}"),
        }
    }

    async fn read_update(&mut self) -> Received {
        let header = self.take(3).await;
        let count = u16::from_be_bytes([header[1], header[2]]);
        let mut received = Received::default();
        for _ in 0..count {
            let h = self.take(12).await;
            let v = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
            let rect = Rect::new(v(0), v(2), v(4), v(6));
            let enc = i32::from_be_bytes(h[8..12].try_into().unwrap());
            match enc {
                encoding::RAW => {
                    let data = self.take(rect.area() * 4).await;
                    let mut px = data.chunks_exact(4);
                    for y in rect.y..rect.y + rect.height {
                        for x in rect.x..rect.x + rect.width {
                            let p = px.next().unwrap();
                            self.pixels
                                [usize::from(y) * usize::from(self.width) + usize::from(x)] =
                                u32::from_le_bytes([p[0], p[1], p[2], 0]);
                        }
                    }
                    received.rects.push(rect);
                }
                encoding::COPY_RECT => {
                    let src = self.take(4).await;
                    let (sx, sy) = (
                        u16::from_be_bytes([src[0], src[1]]),
                        u16::from_be_bytes([src[2], src[3]]),
                    );
                    let before = self.pixels.clone();
                    let w = usize::from(self.width);
                    for dy in 0..rect.height {
                        for dx in 0..rect.width {
                            let from = usize::from(sy + dy) * w + usize::from(sx + dx);
                            let to = usize::from(rect.y + dy) * w + usize::from(rect.x + dx);
                            self.pixels[to] = before[from];
                        }
                    }
                    received.copies.push(rect);
                }
                encoding::CURSOR => {
                    let (w, h) = (usize::from(rect.width), usize::from(rect.height));
                    self.take(w * h * 4 + w.div_ceil(8) * h).await;
                    received.pseudo.push((enc, rect));
                }
                encoding::DESKTOP_SIZE => {
                    self.resize(rect.width, rect.height);
                    received.pseudo.push((enc, rect));
                }
                encoding::EXTENDED_DESKTOP_SIZE => {
                    let screens = self.take(4).await[0];
                    self.take(16 * usize::from(screens)).await;
                    if rect.x != 1 {
                        self.resize(rect.width, rect.height);
                    }
                    received.pseudo.push((enc, rect));
                }
                other => panic!("unexpected encoding {other}"),
            }
        }
        received
    }

    fn resize(&mut self, width: u16, height: u16) {
        self.width = width;
        self.height = height;
        self.pixels = vec![0; usize::from(width) * usize::from(height)];
    }
}

/// Waits until `condition` holds, polling; false when it never did within [`PATIENCE`].
pub async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

//! The device's screen and what happens on it: a 1920×1080×24 Xvfb, an office-like scene
//! (a background, a terminal the keys go to, a terminal with a page of text), and the
//! workloads, all driven by X clients: `xdotool type` for typing, a full-screen xterm printing
//! log lines at a steady rate for scrolling, a window of our own repainted with moving colour
//! and grain every frame for video, and XTEST key presses at known instants for latency.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tether_controlplane::ControlPlane;
use tether_controlplane::process::ManagedProcess;
use x11rb::connection::{Connection, RequestConnection};
use x11rb::protocol::xproto::{self, ConnectionExt as _};
use x11rb::protocol::xtest::ConnectionExt as _;
use x11rb::rust_connection::RustConnection;

/// The screen's size.
pub const WIDTH: u16 = 1920;
/// The screen's height.
pub const HEIGHT: u16 = 1080;
/// The typing terminal's title; keys go to it.
const TYPING_TITLE: &str = "bench-typing";
/// How long an X client has to show its window.
const MAP_PATIENCE: Duration = Duration::from_secs(30);

/// A running Xvfb.
pub struct Xvfb {
    /// The display, e.g. `:3`.
    pub display: String,
    /// The X server's process.
    pub process: ManagedProcess,
}

impl Xvfb {
    /// Starts Xvfb on a display number it chooses and reports (`-displayfd`).
    pub fn start(cp: &ControlPlane) -> Result<Self> {
        let mut xvfb = Command::new("Xvfb");
        xvfb.args(["-displayfd", "1", "-nolisten", "tcp", "-noreset"])
            .args(["-screen", "0", &format!("{WIDTH}x{HEIGHT}x24")]);
        let process = cp.spawn("Xvfb", xvfb)?;
        let deadline = Instant::now() + MAP_PATIENCE;
        let number = loop {
            let first = std::fs::read_to_string(process.log_path())
                .ok()
                .and_then(|t| t.lines().next().map(str::trim).map(str::to_owned))
                .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()));
            if let Some(n) = first {
                break n;
            }
            if Instant::now() > deadline {
                bail!("Xvfb did not start:\n{}", process.log_tail(20));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Ok(Self {
            display: format!(":{number}"),
            process,
        })
    }

    /// An X client on this display.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("DISPLAY", &self.display);
        c
    }

    /// Runs an X client to completion.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<()> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .with_context(|| format!("failed to run {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Waits until a window titled `title` is visible (`xdotool search --sync`, bounded). A
    /// search that fails is started again: xdotool gives up with an X error when a window it
    /// is looking at is destroyed meanwhile (the previous scene's, closing).
    pub fn wait_for_window(&self, title: &str) -> Result<()> {
        let deadline = Instant::now() + MAP_PATIENCE;
        let search = || {
            self.command("xdotool")
                .args(["search", "--sync", "--onlyvisible", "--name", title])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("failed to run xdotool")
        };
        let mut running = search()?;
        let mut failures = 0;
        loop {
            if let Some(status) = running.try_wait()? {
                if status.success() {
                    return Ok(());
                }
                failures += 1;
                if Instant::now() > deadline {
                    bail!("xdotool search for {title:?} failed {failures} times (last: {status})");
                }
                std::thread::sleep(Duration::from_millis(100));
                running = search()?;
            }
            if Instant::now() > deadline {
                let _ = running.kill();
                let _ = running.wait();
                bail!("no window {title:?} after {MAP_PATIENCE:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Perl that prints `lines` of deterministic text (seeded), for terminals to show.
fn text_script(seed: u32, lines: u32, then: &str) -> String {
    format!(
        "srand({seed}); my @w = qw({WORDS}); for my $i (1..{lines}) {{ my $n = 3 + int(rand(12)); \
         print join(' ', map {{ $w[rand @w] }} 1..$n), \"\\n\" }} {then}"
    )
}

const WORDS: &str = "the device session relay agent screen printer invoice quarterly report \
    meeting notes budget draft review approved pending lorem ipsum dolor sit amet consectetur \
    adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua 2026 \
    INFO WARN GET POST /api/v1/devices 200 404 ms";

/// The office-like scene every server is measured on, rebuilt for each so each sees the same.
pub struct Scene {
    _photo: Painter,
    _windows: Vec<ManagedProcess>,
}

/// Where the scene's photo is and how big it is.
pub const PHOTO_AT: (i16, i16) = (60, 560);
/// The photo's size.
pub const PHOTO_SIZE: (u16, u16) = (480, 270);

impl Scene {
    /// A solid background; a terminal with a page of text, a calculator and a logo; a photo
    /// (`photo`: one frame of camera-like colour and grain); and the typing terminal, focused
    /// (the pointer is in it). Returns once every window is visible.
    pub fn build(cp: &ControlPlane, x: &Xvfb, photo: std::sync::Arc<Vec<Vec<u8>>>) -> Result<Self> {
        x.run("xsetroot", &["-solid", "#2e5c8a"])?;
        let mut windows = Vec::new();
        let mut doc = x.command("xterm");
        doc.args(["-geometry", "110x60+1180+80", "-title", "bench-document"])
            .args(["-e", "perl", "-e"])
            .arg(text_script(7, 58, "sleep 86400"));
        windows.push(cp.spawn("xterm-document", doc)?);
        let mut calc = x.command("xcalc");
        calc.args(["-geometry", "240x320+720+60", "-title", "bench-calc"]);
        windows.push(cp.spawn("xcalc", calc)?);
        let mut logo = x.command("xlogo");
        logo.args(["-geometry", "160x160+980+60", "-title", "bench-logo"]);
        windows.push(cp.spawn("xlogo", logo)?);
        let mut typing = x.command("xterm");
        typing
            .args(["-geometry", "100x30+60+60", "-title", TYPING_TITLE])
            .args(["-e", "perl", "-e"])
            .arg(text_script(3, 12, "exec 'cat'"));
        windows.push(cp.spawn("xterm-typing", typing)?);
        for title in ["bench-document", "bench-calc", "bench-logo", TYPING_TITLE] {
            x.wait_for_window(title)?;
        }
        let photo = Painter::open(&x.display, PHOTO_AT, PHOTO_SIZE, photo, 1)?;
        x.run("xdotool", &["mousemove", "400", "300"])?;
        Ok(Self {
            _photo: photo,
            _windows: windows,
        })
    }
}

/// `xdotool type` into the focused terminal at `per_second` characters a second for `secs`.
pub fn start_typing(
    cp: &ControlPlane,
    x: &Xvfb,
    per_second: u32,
    secs: u64,
) -> Result<ManagedProcess> {
    let sentence = "please check the printer queue on the second floor ";
    let chars = (u64::from(per_second) * secs + 8) as usize;
    let text: String = sentence.chars().cycle().take(chars).collect();
    let delay = (1000 / per_second.max(1)).to_string();
    let mut cmd = x.command("xdotool");
    cmd.args(["type", "--delay", &delay, &text]);
    Ok(cp.spawn("xdotool-type", cmd)?)
}

/// The scrolling terminal's rows (320×83 characters of 6×13 pixels: the whole screen).
const SCROLL_ROWS: u32 = 83;

/// A full-screen terminal with a screenful of log lines that prints `per_second` more a
/// second once `go` exists, so the whole screen scrolls from the first one; returns once it
/// is visible.
pub fn start_scroller(
    cp: &ControlPlane,
    x: &Xvfb,
    go: &Path,
    per_second: u32,
) -> Result<ManagedProcess> {
    let script = format!(
        "use Time::HiRes qw(time sleep); $| = 1; srand(11); my @w = qw({WORDS}); my $next; \
         for my $i (1..100000000) {{ \
         if ($i == {SCROLL_ROWS} + 1) {{ sleep(0.01) until -e $ARGV[0]; $next = time }} \
         my $n = 8 + int(rand(30)); \
         printf(\"2026-12-06T10:%02d:%02d %07d %s\\n\", ($i / 60) % 60, $i % 60, $i, \
         join(' ', map {{ $w[rand @w] }} 1..$n)); \
         if ($i > {SCROLL_ROWS}) {{ $next += 1 / {per_second}; my $d = $next - time; \
         sleep($d) if $d > 0 }} }}"
    );
    let mut cmd = x.command("xterm");
    cmd.args(["-b", "0", "-geometry", &format!("320x{SCROLL_ROWS}+0+0")])
        .args(["-title", "bench-scroll", "-e", "perl", "-e", &script])
        .arg(go);
    let process = cp.spawn("xterm-scroll", cmd)?;
    x.wait_for_window("bench-scroll")?;
    Ok(process)
}

/// Frames for the video window: moving colour waves with grain, like camera footage.
pub fn video_frames(width: usize, height: usize, count: usize) -> Vec<Vec<u8>> {
    let tri = |v: usize| {
        let v = v % 512;
        (if v < 256 { v } else { 511 - v }) as i32
    };
    (0..count)
        .map(|t| {
            let mut data = Vec::with_capacity(width * height * 4);
            let mut seed = 0x9E37_79B9u32 ^ (t as u32).wrapping_mul(0x85EB_CA6B);
            for y in 0..height {
                for x in 0..width {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    let grain = (seed & 31) as i32 - 16;
                    let c = |v: i32| (v + grain).clamp(0, 255) as u8;
                    let b = c(tri(x + y + 6 * t));
                    let g = c(tri(2 * y + 10 * t));
                    let r = c(tri(x + 14 * t));
                    data.extend_from_slice(&[b, g, r, 0]);
                }
            }
            data
        })
        .collect()
}

enum PainterCommand {
    Animate,
}

/// A window of our own repainted every frame from `frames` (the video workload). Created
/// showing the first frame; [`Painter::animate`] starts playback; dropping it closes it.
pub struct Painter {
    commands: Option<mpsc::Sender<PainterCommand>>,
    thread: Option<std::thread::JoinHandle<Result<u64>>>,
}

impl Painter {
    /// Opens the window at (`x`, `y`) and waits until its first frame is drawn.
    pub fn open(
        display: &str,
        at: (i16, i16),
        size: (u16, u16),
        frames: std::sync::Arc<Vec<Vec<u8>>>,
        fps: u32,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let display = display.to_owned();
        let thread =
            std::thread::spawn(move || paint(&display, at, size, &frames, fps, &rx, &ready_tx));
        let mut painter = Self {
            commands: Some(tx),
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(MAP_PATIENCE) {
            Ok(()) => Ok(painter),
            Err(_) => {
                let why = painter.stop();
                bail!("the video window did not open: {why}")
            }
        }
    }

    /// Starts playback.
    pub fn animate(&self) {
        if let Some(tx) = &self.commands {
            let _ = tx.send(PainterCommand::Animate);
        }
    }

    /// Stops and closes the window; says how many frames were drawn, or why it failed.
    pub fn stop(&mut self) -> String {
        self.commands = None;
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(Ok(frames))) => format!("{frames} frames drawn"),
            Some(Ok(Err(e))) => format!("{e:#}"),
            Some(Err(_)) => "the painter panicked".to_owned(),
            None => "stopped".to_owned(),
        }
    }
}

impl Drop for Painter {
    fn drop(&mut self) {
        self.stop();
    }
}

fn paint(
    display: &str,
    (x, y): (i16, i16),
    (width, height): (u16, u16),
    frames: &[Vec<u8>],
    fps: u32,
    commands: &mpsc::Receiver<PainterCommand>,
    ready: &mpsc::Sender<()>,
) -> Result<u64> {
    let (conn, screen) = x11rb::connect(Some(display)).context("failed to open the display")?;
    let root = conn.setup().roots[screen].clone();
    let window = conn.generate_id()?;
    conn.create_window(
        x11rb::COPY_DEPTH_FROM_PARENT,
        window,
        root.root,
        x,
        y,
        width,
        height,
        0,
        xproto::WindowClass::INPUT_OUTPUT,
        root.root_visual,
        &xproto::CreateWindowAux::new()
            .background_pixel(0)
            .override_redirect(1),
    )?;
    let gc = conn.generate_id()?;
    conn.create_gc(gc, window, &xproto::CreateGCAux::new())?;
    conn.map_window(window)?;
    // PutImage in bands that fit a request without BIG-REQUESTS.
    let row = usize::from(width) * 4;
    let band = ((conn.maximum_request_bytes().min(262_140) - 64) / row).clamp(1, 256);
    let draw = |frame: &[u8]| -> Result<()> {
        for (i, rows) in frame.chunks(band * row).enumerate() {
            conn.put_image(
                xproto::ImageFormat::Z_PIXMAP,
                window,
                gc,
                width,
                (rows.len() / row) as u16,
                0,
                (i * band) as i16,
                0,
                root.root_depth,
                rows,
            )?;
        }
        conn.get_input_focus()?.reply()?;
        Ok(())
    };
    draw(&frames[0])?;
    let _ = ready.send(());
    let mut drawn = 0u64;
    if let Ok(PainterCommand::Animate) = commands.recv() {
        let interval = Duration::from_secs(1) / fps.max(1);
        let mut next = Instant::now();
        // Until told to stop (or its owner is gone), and never past ten minutes of frames.
        while let Err(mpsc::TryRecvError::Empty) = commands.try_recv() {
            if drawn >= u64::from(fps) * 600 {
                break;
            }
            draw(&frames[(drawn as usize + 1) % frames.len()])?;
            drawn += 1;
            next += interval;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else {
                next = now;
            }
        }
    }
    conn.destroy_window(window)?;
    conn.get_input_focus()?.reply()?;
    Ok(drawn)
}

/// Key presses through XTEST at known instants, as `xdotool key` makes them, into the
/// focused window.
pub struct Keys {
    conn: RustConnection,
    root: xproto::Window,
    /// Key codes of `a`–`z`.
    codes: Vec<u8>,
}

impl Keys {
    /// Opens a connection to `display` and looks up the letters' key codes.
    pub fn open(display: &str) -> Result<Self> {
        let (conn, screen) = x11rb::connect(Some(display)).context("failed to open the display")?;
        if conn
            .extension_information(x11rb::protocol::xtest::X11_EXTENSION_NAME)?
            .is_none()
        {
            bail!("the X server has no XTEST");
        }
        let root = conn.setup().roots[screen].root;
        let (min, max) = (conn.setup().min_keycode, conn.setup().max_keycode);
        let map = conn.get_keyboard_mapping(min, max - min + 1)?.reply()?;
        let per = usize::from(map.keysyms_per_keycode.max(1));
        let codes = (u32::from(b'a')..=u32::from(b'z'))
            .map(|sym| {
                map.keysyms
                    .chunks(per)
                    .position(|syms| syms.first() == Some(&sym))
                    .map(|i| min + i as u8)
                    .with_context(|| format!("no key code for keysym {sym:#x}"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { conn, root, codes })
    }

    /// Presses and releases letter number `i` (mod 26); returns the instant just before the
    /// press was sent, once the X server has processed both.
    pub fn press(&self, i: usize) -> Result<Instant> {
        let code = self.codes[i % self.codes.len()];
        let t0 = Instant::now();
        for kind in [xproto::KEY_PRESS_EVENT, xproto::KEY_RELEASE_EVENT] {
            self.conn
                .xtest_fake_input(kind, code, 0, self.root, 0, 0, 0)?;
        }
        self.conn.get_input_focus()?.reply()?;
        Ok(t0)
    }
}

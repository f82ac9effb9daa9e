//! `cargo xtask bench desktop`: what the desktop costs on the wire and on the device, Tether
//! against x11vnc serving the same 1920×1080×24 Xvfb to the same measuring viewer, one after
//! the other in one run. It prints numbers and asserts nothing.
//!
//! - **Tether** runs its whole path ([`stack`]): release operator, relay and agent as real
//!   processes on a local control plane, a `Control` desktop session, `kubectl tether vnc`,
//!   and the viewer connecting to it with the one-time password.
//! - **x11vnc** runs as `x11vnc -display :N -rfbport P -localhost -nopw -shared -forever`.
//! - **The viewer** ([`client`]) asks both for the same pixel format and encodings, requests
//!   incrementally after every update, and logs each message's size and arrival.
//! - **The workload** ([`scene`]) is made by X clients on the device: a fresh office-like
//!   scene for each server, then the phases: first full frame, idle, key-to-update latency
//!   (keys pressed through XTEST at a known instant, and KeyEvents sent by the viewer),
//!   typing (`xdotool type`), full-screen scrolling (an xterm printing log lines at a steady
//!   rate) and video (a window repainted with moving colour and grain every frame).
//! - **Usage**: CPU (utime + stime from /proc over each phase, as % of one core) and RSS of
//!   the agent or x11vnc, the relay, `kubectl tether vnc` and Xvfb.
//! - **Recording** ([`recorded`]): Tether runs twice, on a session with recording off and on
//!   one with it on; the second run's recording is read back from the local store and
//!   measured per phase (size per hour, export speed to H.264), beside the relay's CPU and
//!   memory in both runs.
//!
//! Two passes: ZRLE (lossless) and Tight with JPEG quality 6 (noVNC's defaults).

mod client;
mod recorded;
mod report;
mod scene;
pub(crate) mod stack;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use tether_controlplane::process::ManagedProcess;
use tether_controlplane::{Assets, ControlPlane, Options};
use tether_rfb::encoding;

use client::Viewer;
use report::{CpuSample, Latency, Pass, Phase, Proc, Run, TETHER, TETHER_RECORDED};
use scene::{Keys, Painter, Scene, Xvfb};
use stack::Stack;

pub use stack::release_dir;

/// Parameters of the desktop benchmark.
#[derive(Clone, Debug, clap::Args)]
pub struct DesktopArgs {
    /// A smoke run: 3-second phases and 30 latency samples.
    #[arg(long)]
    pub quick: bool,
    /// Only the ZRLE pass (skip Tight with JPEG).
    #[arg(long)]
    pub zrle_only: bool,
    /// Log lines a second the full-screen terminal prints while scrolling.
    #[arg(long, default_value_t = 30)]
    pub scroll_lines: u32,
    /// Keep the run's directory (every process's log) here instead of removing it.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<std::path::PathBuf>,
}

/// Characters a second `xdotool` types.
const TYPING_RATE: u32 = 8;
/// The video window: where, how big, how fast, and how many distinct frames it cycles.
const VIDEO_AT: (i16, i16) = (640, 360);
const VIDEO_SIZE: (u16, u16) = (640, 360);
const VIDEO_FPS: u32 = 30;
const VIDEO_FRAMES: usize = 30;
/// A screen is settled when no update has come for this long.
const QUIET: Duration = Duration::from_millis(500);
/// Before each latency sample: quiet for this long, then a random wait up to `JITTER` so keys
/// do not fall in step with a server's capture clock.
const KEY_QUIET: Duration = Duration::from_millis(150);
const JITTER_MS: u64 = 100;
/// A key without an update this long after it counts as missed.
const KEY_LIMIT: Duration = Duration::from_secs(2);
/// How long a screen may take to settle before the phase starts anyway.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// Runs the desktop benchmark.
pub fn desktop(args: DesktopArgs) -> Result<()> {
    let assets = crate::controlplane::ensure()?;
    crate::tools::ensure_debian()?;
    stack::build_release()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?
        .block_on(run(args, assets))
}

/// What every run needs.
struct Bench<'a> {
    cp: &'a ControlPlane,
    x: &'a Xvfb,
    keys: Keys,
    photo: Arc<Vec<Vec<u8>>>,
    frames: Arc<Vec<Vec<u8>>>,
    phase: Duration,
    samples: usize,
    scroll_lines: u32,
    hz: f64,
    dir: tempfile::TempDir,
    runs: usize,
    rng: u64,
}

async fn run(args: DesktopArgs, assets: Assets) -> Result<()> {
    let phase = Duration::from_secs(if args.quick { 3 } else { 10 });
    let samples = if args.quick { 30 } else { 40 };
    let frames = tokio::task::spawn_blocking(|| {
        let photo = scene::video_frames(
            usize::from(scene::PHOTO_SIZE.0),
            usize::from(scene::PHOTO_SIZE.1),
            1,
        );
        let video = scene::video_frames(
            usize::from(VIDEO_SIZE.0),
            usize::from(VIDEO_SIZE.1),
            VIDEO_FRAMES,
        );
        (photo, video)
    });
    let load_before = load_average();
    eprintln!("Starting the local control plane");
    let cp = ControlPlane::start(Options {
        assets: assets.clone(),
        keep_dir: args.keep.clone(),
        ..Options::default()
    })
    .await
    .context("failed to start the local control plane")?;
    let x = Xvfb::start(&cp)?;
    eprintln!(
        "Xvfb {} ({}x{}x24); starting Tether's operator, relay, agent and `kubectl tether vnc`",
        x.display,
        scene::WIDTH,
        scene::HEIGHT
    );
    let tether = Stack::start(&cp, &assets, &x).await?;
    let (photo, video) = frames.await?;
    let mut bench = Bench {
        cp: &cp,
        x: &x,
        keys: Keys::open(&x.display)?,
        photo: Arc::new(photo),
        frames: Arc::new(video),
        phase,
        samples,
        scroll_lines: args.scroll_lines,
        hz: report::clock_ticks(),
        dir: tempfile::Builder::new()
            .prefix("tether-deskbench-")
            .tempdir()?,
        runs: 0,
        rng: seed(),
    };
    let mut passes = vec![Pass {
        name: "ZRLE",
        encodings: vec![
            encoding::ZRLE,
            encoding::COPY_RECT,
            encoding::RAW,
            encoding::CURSOR,
            encoding::DESKTOP_SIZE,
        ],
        runs: Vec::new(),
        recorded: None,
    }];
    if !args.zrle_only {
        passes.push(Pass {
            name: "Tight",
            encodings: vec![
                encoding::TIGHT,
                encoding::COPY_RECT,
                encoding::ZRLE,
                encoding::RAW,
                -26,  // JPEG quality 6
                -254, // compression level 2
                encoding::CURSOR,
                encoding::DESKTOP_SIZE,
                encoding::LAST_RECT,
            ],
            runs: Vec::new(),
            recorded: None,
        });
    }
    for pass in &mut passes {
        for (server, endpoint) in [(TETHER, &tether.plain), (TETHER_RECORDED, &tether.recorded)] {
            eprintln!("{} pass: {server}", pass.name);
            let procs = [
                Proc {
                    role: "server",
                    pid: tether.agent.id(),
                },
                Proc {
                    role: "relay",
                    pid: tether.relay.id(),
                },
                Proc {
                    role: "CLI",
                    pid: endpoint.cli.id(),
                },
                Proc {
                    role: "Xvfb",
                    pid: x.process.id(),
                },
            ];
            let before = recorded::objects(&tether.recordings);
            let run = bench
                .measure(
                    server,
                    endpoint.port,
                    Some(&endpoint.password),
                    &pass.encodings,
                    &procs,
                )
                .await
                .with_context(|| format!("failed to measure {server}"))?;
            if server == TETHER_RECORDED {
                eprintln!("{} pass: reading the recording back", pass.name);
                pass.recorded = Some(recorded::measure(&tether.recordings, &before, &run).await?);
            }
            pass.runs.push(run);
        }

        eprintln!("{} pass: x11vnc", pass.name);
        let (mut x11vnc, port) = start_x11vnc(&cp, &x).await?;
        let procs = [
            Proc {
                role: "server",
                pid: x11vnc.id(),
            },
            Proc {
                role: "Xvfb",
                pid: x.process.id(),
            },
        ];
        let run = bench
            .measure("x11vnc", port, None, &pass.encodings, &procs)
            .await;
        x11vnc.kill();
        pass.runs.push(run.context("failed to measure x11vnc")?);
    }
    let load_after = load_average();

    println!();
    println!("desktop benchmark, {}", build_description());
    println!(
        "machine: {} cores, load average {load_before} before, {load_after} after; phases {} s, {} latency samples, scrolling {} lines/s, typing {TYPING_RATE} chars/s, video {}x{} at {VIDEO_FPS} fps",
        std::thread::available_parallelism().map_or(0, usize::from),
        phase.as_secs(),
        samples,
        args.scroll_lines,
        VIDEO_SIZE.0,
        VIDEO_SIZE.1
    );
    print!("{}", report::render(&passes, phase.as_secs()));
    drop(tether);
    Ok(())
}

impl Bench<'_> {
    /// Measures one server: a fresh scene, a fresh viewer, every phase.
    async fn measure(
        &mut self,
        server: &'static str,
        port: u16,
        password: Option<&str>,
        encodings: &[i32],
        procs: &[Proc],
    ) -> Result<Run> {
        self.runs += 1;
        let scene = Scene::build(self.cp, self.x, self.photo.clone())?;
        let relay_rss_before_kib = procs
            .iter()
            .find(|p| p.role == "relay")
            .and_then(|p| report::rss_kib(p.pid));
        let viewer = Viewer::connect(port, password, encodings).await?;
        if (viewer.width, viewer.height) != (scene::WIDTH, scene::HEIGHT) {
            bail!(
                "{server} serves a {}x{} screen, not the display's {}x{}",
                viewer.width,
                viewer.height,
                scene::WIDTH,
                scene::HEIGHT
            );
        }
        let mut run = Run {
            server,
            first: viewer.first,
            first_window: viewer.first_window.clone(),
            total: Default::default(),
            phases: Vec::new(),
            x_keys: Latency::default(),
            rfb_keys: Latency::default(),
            relay_rss_before_kib,
        };
        self.settle(&viewer, "the first frame").await?;
        run.phases.push(self.timed(&viewer, procs, "idle").await?);

        let mut x_keys = Latency::default();
        for i in 0..self.samples {
            self.before_key(&viewer).await?;
            let t0 = self.keys.press(i)?;
            record(&mut x_keys, t0, viewer.update_after(t0, KEY_LIMIT).await?);
        }
        run.x_keys = sorted(x_keys);
        let mut rfb_keys = Latency::default();
        for i in 0..self.samples {
            self.before_key(&viewer).await?;
            let t0 = viewer.key(u32::from(b'a') + (i % 26) as u32).await?;
            record(&mut rfb_keys, t0, viewer.update_after(t0, KEY_LIMIT).await?);
        }
        run.rfb_keys = sorted(rfb_keys);

        self.settle(&viewer, "the keys").await?;
        let mut typist =
            scene::start_typing(self.cp, self.x, TYPING_RATE, self.phase.as_secs() + 1)?;
        let typing = self.timed(&viewer, procs, "typing").await;
        typist.kill();
        run.phases.push(typing?);

        self.settle(&viewer, "typing").await?;
        let go = self.dir.path().join(format!("scroll-{}", self.runs));
        let mut scroller = scene::start_scroller(self.cp, self.x, &go, self.scroll_lines)?;
        self.settle(&viewer, "the scrolling terminal's window")
            .await?;
        std::fs::write(&go, b"go")?;
        let scrolling = self.timed(&viewer, procs, "scrolling").await;
        scroller.kill();
        run.phases.push(scrolling?);

        self.settle(&viewer, "closing the scrolling terminal")
            .await?;
        let mut painter = Painter::open(
            &self.x.display,
            VIDEO_AT,
            VIDEO_SIZE,
            self.frames.clone(),
            VIDEO_FPS,
        )?;
        self.settle(&viewer, "the video window").await?;
        painter.animate();
        let video = self.timed(&viewer, procs, "video").await;
        let drawn = painter.stop();
        let mut video = video?;
        video.note = format!("video window {}x{}: {drawn}", VIDEO_SIZE.0, VIDEO_SIZE.1);
        run.phases.push(video);

        run.total = viewer.window(viewer.requested, Instant::now());
        drop(viewer);
        drop(scene);
        Ok(run)
    }

    /// Waits until the viewer's screen is quiet; says so if it never is.
    async fn settle(&self, viewer: &Viewer, after: &str) -> Result<()> {
        if !viewer.settle(QUIET, SETTLE_LIMIT).await? {
            eprintln!(
                "  Note: updates kept coming for {SETTLE_LIMIT:?} after {after}; measuring anyway"
            );
        }
        Ok(())
    }

    /// A quiet screen, then a random wait.
    async fn before_key(&mut self, viewer: &Viewer) -> Result<()> {
        viewer.settle(KEY_QUIET, SETTLE_LIMIT).await?;
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        tokio::time::sleep(Duration::from_millis(self.rng % JITTER_MS)).await;
        Ok(())
    }

    /// One phase: the viewer's traffic and the processes' usage over [`Bench::phase`].
    async fn timed(&self, viewer: &Viewer, procs: &[Proc], name: &'static str) -> Result<Phase> {
        let before = CpuSample::take(procs);
        let started = SystemTime::now();
        let from = Instant::now();
        let until = from + self.phase;
        loop {
            viewer.check()?;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(left.min(Duration::from_millis(200))).await;
        }
        let to = Instant::now();
        let after = CpuSample::take(procs);
        Ok(Phase {
            name,
            started,
            elapsed: to.duration_since(from),
            window: viewer.window(from, to),
            usage: before.usage(&after, procs, self.hz),
            note: String::new(),
        })
    }
}

fn record(latency: &mut Latency, t0: Instant, update: Option<Instant>) {
    match update {
        Some(at) => latency
            .samples
            .push(at.duration_since(t0).as_secs_f64() * 1000.0),
        None => latency.missed += 1,
    }
}

fn sorted(mut latency: Latency) -> Latency {
    latency.samples.sort_by(f64::total_cmp);
    latency
}

/// Starts x11vnc on the display and waits until it listens.
async fn start_x11vnc(cp: &ControlPlane, x: &Xvfb) -> Result<(ManagedProcess, u16)> {
    let port = stack::free_port()?;
    let mut cmd = Command::new("x11vnc");
    cmd.args(["-display", &x.display, "-rfbport", &port.to_string()])
        .args(["-localhost", "-nopw", "-shared", "-forever"]);
    let mut process = cp.spawn(&format!("x11vnc-{port}"), cmd)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(process.log_path()).unwrap_or_default();
        if log.contains(&format!("PORT={port}")) {
            return Ok((process, port));
        }
        if let Some(status) = process.exited() {
            bail!("x11vnc exited ({status}):\n{}", process.log_tail(20));
        }
        if Instant::now() > deadline {
            bail!("x11vnc did not listen:\n{}", process.log_tail(20));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Which build ran: the release profile and the commit.
fn build_description() -> String {
    let git = Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(crate::crdgen::workspace_root())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "release build (cargo build --release) of {git}: {}",
        stack::release_dir().display()
    )
}

/// The host's load averages (1, 5, 15 minutes).
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish() | 1
}

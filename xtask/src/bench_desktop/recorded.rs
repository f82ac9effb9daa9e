//! What recording a desktop costs: the relay's recording of the measuring viewer's channel,
//! read back from the local store once the viewer has left, cut by the phases' wall-clock
//! windows (a record's time counts from the channel's start, which the header gives in Unix
//! milliseconds). For each phase: the bytes recorded (records and their headers), scaled to
//! an hour, and how fast `kubectl tether export --video` turns that phase into H.264 (decoding
//! from the start as the export does, then the phase's frames through the export's ffmpeg
//! settings; only the phase's own decoding and encoding is timed). Beside it, the relay's CPU
//! and memory in the same phases with recording off and on.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use tether_recording::desktop::{RECORD_HEADER, Reader};
use tether_recording::playback::{self, Frames};

use super::report::{Pass, Phase, Run};

/// Frames a second the export writes (`kubectl tether export --video`'s default).
const FPS: u32 = 10;
/// How long the relay may take to finish the recording once the viewer leaves.
const FINISH_LIMIT: Duration = Duration::from_secs(60);

/// One phase of a recorded run.
#[derive(Clone, Debug)]
pub struct PhaseRecording {
    /// The phase.
    pub name: &'static str,
    /// Its length.
    pub seconds: f64,
    /// Bytes recorded in it.
    pub bytes: u64,
    /// Seconds of the phase exported per second spent; `None` without ffmpeg.
    pub export: Option<f64>,
}

/// A recorded run's recording.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The object in the store.
    pub object: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Its length (the last record's time).
    pub seconds: f64,
    /// Per phase.
    pub phases: Vec<PhaseRecording>,
}

/// Every finished desktop recording under the local store's root.
pub fn objects(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rfb") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Waits for the complete recording that is not among `before`, then measures it by `run`'s
/// phases.
pub async fn measure(root: &Path, before: &[PathBuf], run: &Run) -> Result<Recorded> {
    let deadline = Instant::now() + FINISH_LIMIT;
    let (object, data) = loop {
        let finished = objects(root)
            .into_iter()
            .filter(|p| !before.contains(p))
            .find_map(|p| {
                let data = std::fs::read(&p).ok()?;
                Reader::read(&data)
                    .is_ok_and(|r| r.complete)
                    .then_some((p, data))
            });
        if let Some(found) = finished {
            break found;
        }
        if Instant::now() > deadline {
            bail!(
                "no finished desktop recording appeared under {} within {FINISH_LIMIT:?}",
                root.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let phases = run.phases.clone();
    tokio::task::spawn_blocking(move || analyse(object, &data, &phases)).await?
}

/// The phase's window in the recording's milliseconds.
fn window(phase: &Phase, started_ms: i64) -> (u32, u32) {
    let from = phase
        .started
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
        - started_ms;
    let to = from + phase.elapsed.as_millis() as i64;
    let clamp = |ms: i64| u32::try_from(ms.max(0)).unwrap_or(u32::MAX);
    (clamp(from), clamp(to))
}

fn analyse(object: PathBuf, data: &[u8], phases: &[Phase]) -> Result<Recorded> {
    let reader = Reader::read(data).with_context(|| format!("{}", object.display()))?;
    let started = reader.header.started_ms;
    let (sizes, _) = playback::sizes(&reader);
    let windows: Vec<(u32, u32)> = phases.iter().map(|p| window(p, started)).collect();
    let bytes_in = |(from, to): (u32, u32)| -> u64 {
        reader
            .records
            .iter()
            .filter(|r| (from..to).contains(&r.ms))
            .map(|r| (RECORD_HEADER + r.bytes.len()) as u64)
            .sum()
    };
    let exports = export_speeds(&reader, &sizes, &windows)?;
    Ok(Recorded {
        bytes: data.len() as u64,
        seconds: f64::from(playback::duration_ms(&reader)) / 1000.0,
        phases: phases
            .iter()
            .zip(&windows)
            .zip(exports)
            .map(|((p, w), export)| PhaseRecording {
                name: p.name,
                seconds: p.elapsed.as_secs_f64(),
                bytes: bytes_in(*w),
                export,
            })
            .collect(),
        object,
    })
}

/// Each window's frames encoded by ffmpeg as the export encodes them: seconds of recording
/// per second spent on that window's frames (decoding them and encoding them).
fn export_speeds(
    reader: &Reader,
    sizes: &[(u16, u16)],
    windows: &[(u32, u32)],
) -> Result<Vec<Option<f64>>> {
    let mut speeds = vec![None; windows.len()];
    if Command::new("ffmpeg").arg("-version").output().is_err() {
        eprintln!("  Note: ffmpeg is not on PATH: no export speeds");
        return Ok(speeds);
    }
    let mut frames = Frames::new(reader, FPS, sizes, true);
    let (width, height) = frames.canvas();
    let mut frame = Vec::new();
    let mut index = 0u64;
    for (speed, &(from, to)) in speeds.iter_mut().zip(windows) {
        // Decode up to the window without timing it: the export decodes from the start anyway.
        while index * 1000 / u64::from(FPS) < u64::from(from) && frames.next_frame(&mut frame) {
            index += 1;
        }
        let began = Instant::now();
        let mut ffmpeg = Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"])
            .args(["-f", "rawvideo", "-pix_fmt", "rgb24"])
            .args(["-video_size", &format!("{width}x{height}")])
            .args(["-framerate", &FPS.to_string(), "-i", "pipe:0"])
            .args(["-c:v", "libx264", "-preset", "veryfast", "-crf", "23"])
            .args(["-pix_fmt", "yuv420p", "-f", "mp4", "/dev/null"])
            .stdin(Stdio::piped())
            .spawn()
            .context("failed to start ffmpeg")?;
        let mut stdin = ffmpeg.stdin.take().context("ffmpeg has no stdin")?;
        let mut written = 0u64;
        while index * 1000 / u64::from(FPS) < u64::from(to) && frames.next_frame(&mut frame) {
            index += 1;
            stdin.write_all(&frame)?;
            written += 1;
        }
        drop(stdin);
        let status = ffmpeg.wait()?;
        if !status.success() {
            bail!("ffmpeg failed ({status})");
        }
        let spent = began.elapsed().as_secs_f64().max(1e-3);
        *speed = (written > 0).then(|| written as f64 / f64::from(FPS) / spent);
    }
    Ok(speeds)
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.digits$}"))
}

/// The recording's section of the report: per phase, the relay's CPU and memory without and
/// with recording, the recording's rate and size per hour, and the export's speed.
pub fn render(pass: &Pass, plain: &str, recorded: &str) -> String {
    let mut out = String::new();
    let (Some(off), Some(on), Some(rec)) = (
        pass.runs.iter().find(|r| r.server == plain),
        pass.runs.iter().find(|r| r.server == recorded),
        pass.recorded.as_ref(),
    ) else {
        return out;
    };
    let _ = writeln!(
        out,
        "\n#### Recording ({} pass): {} bytes for {:.1} s, {:.1} MiB per hour overall ({})\n",
        pass.name,
        rec.bytes,
        rec.seconds,
        rec.bytes as f64 * 3600.0 / rec.seconds.max(1e-3) / 1048576.0,
        rec.object.file_name().unwrap_or_default().to_string_lossy()
    );
    let _ = writeln!(
        out,
        "| phase | relay CPU % off / on | relay RSS MiB off / on (growth since the viewer connected) | recorded KiB/s | MiB per hour | export × real time |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let usage = |run: &Run, name: &str| {
        let u = run.phases.iter().find(|p| p.name == name)?.usage("relay")?;
        let rss = u.rss_kib.map(|k| {
            let growth = k as f64 - run.relay_rss_before_kib.unwrap_or(k) as f64;
            format!("{:.1} ({:+.1})", k as f64 / 1024.0, growth / 1024.0)
        });
        Some((u.cpu, rss))
    };
    for phase in &rec.phases {
        let (cpu_off, rss_off) = usage(off, phase.name).unwrap_or_default();
        let (cpu_on, rss_on) = usage(on, phase.name).unwrap_or_default();
        let rate = phase.bytes as f64 / phase.seconds.max(1e-3);
        let _ = writeln!(
            out,
            "| {} | {} / {} | {} / {} | {:.1} | {:.1} | {} |",
            phase.name,
            num(cpu_off, 1),
            num(cpu_on, 1),
            rss_off.unwrap_or_else(|| "—".into()),
            rss_on.unwrap_or_else(|| "—".into()),
            rate / 1024.0,
            rate * 3600.0 / 1048576.0,
            num(phase.export, 1)
        );
    }
    out
}

//! Desktop recordings as ordinary video: `kubectl tether export NAME DIR --video` decodes each
//! exported `.rfb` (after its checksum was verified) and pipes its frames, at a fixed rate, as
//! raw RGB to `ffmpeg`, which writes an MP4 (H.264, yuv420p). A recording that changes size
//! is drawn centred on a canvas as wide and as tall as its largest size (rounded up to even
//! numbers), so a resize never stretches or crops the screen.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use tether_recording::desktop::Reader;
use tether_recording::playback::{self, Frames};

use crate::progress::Progress;

/// Frames per second of exported videos unless `--fps` says otherwise.
pub(crate) const DEFAULT_FPS: u32 = 10;

/// What one video export produced.
#[derive(Debug)]
pub(crate) struct Video {
    /// The MP4 written.
    pub(crate) path: PathBuf,
    /// Canvas width and height.
    pub(crate) size: (u16, u16),
    /// Seconds of video.
    pub(crate) seconds: f64,
    /// Frames written.
    pub(crate) frames: u64,
    /// Seconds the export took.
    pub(crate) took: f64,
    /// Where decoding stopped early, if it did (the rest of the video repeats the last
    /// good screen).
    pub(crate) warning: Option<String>,
}

/// `ffmpeg` on PATH (or `TETHER_FFMPEG`), or a message saying how to install it.
pub(crate) fn find_ffmpeg() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("TETHER_FFMPEG") {
        return Ok(PathBuf::from(path));
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("ffmpeg"))
            .find(|p| p.is_file())
    });
    found.ok_or_else(|| {
        anyhow::anyhow!(
            "--video needs ffmpeg, which is not on PATH; install it (Debian/Ubuntu: \
             apt-get install ffmpeg; Fedora: dnf install ffmpeg; macOS: brew install ffmpeg; \
             Windows: winget install ffmpeg) or set TETHER_FFMPEG to its path, then export \
             again"
        )
    })
}

/// The MP4's name for a desktop recording's file: `x.desktop-3.rfb` → `x.desktop-3.mp4`.
pub(crate) fn video_name(rfb: &Path) -> PathBuf {
    rfb.with_extension("mp4")
}

/// Decodes the desktop recording at `input` and writes it as an MP4 to `output` at `fps`,
/// with `ffmpeg`. Progress goes to stderr; ffmpeg's own messages are shown only when it fails.
pub(crate) fn export(ffmpeg: &Path, input: &Path, output: &Path, fps: u32) -> Result<Video> {
    let started = std::time::Instant::now();
    let data =
        std::fs::read(input).with_context(|| format!("failed to read {}", input.display()))?;
    let reader = Reader::read(&data).map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
    let (sizes, early) = playback::sizes(&reader);
    if sizes.is_empty() {
        bail!(
            "{}: the recording ends before the desktop's first screen{}",
            input.display(),
            early.map(|e| format!(" ({e})")).unwrap_or_default()
        );
    }
    let mut frames = Frames::new(&reader, fps, &sizes, true);
    let (width, height) = frames.canvas();
    let count = frames.count();
    let stderr = tempfile::tempfile().context("failed to create a file for ffmpeg's messages")?;
    let mut child = Command::new(ffmpeg)
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"])
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24"])
        .args(["-video_size", &format!("{width}x{height}")])
        .args(["-framerate", &fps.to_string(), "-i", "pipe:0"])
        .args(["-c:v", "libx264", "-preset", "veryfast", "-crf", "23"])
        .args([
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
            "-f",
            "mp4",
        ])
        .arg(output)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(stderr.try_clone()?)
        .spawn()
        .with_context(|| format!("failed to start {}", ffmpeg.display()))?;
    let label = format!(
        "encoding {}",
        output.file_name().unwrap_or_default().to_string_lossy()
    );
    let frame_bytes = 3 * u64::from(width) * u64::from(height);
    let mut progress = Progress::new(label, count * frame_bytes);
    let written = (|| -> std::io::Result<u64> {
        let mut stdin = child.stdin.take().ok_or(std::io::ErrorKind::BrokenPipe)?;
        let mut frame = Vec::new();
        let mut n = 0;
        while frames.next_frame(&mut frame) {
            stdin.write_all(&frame)?;
            progress.add(frame_bytes);
            n += 1;
        }
        stdin.flush()?;
        Ok(n)
        // stdin drops here: ffmpeg sees the end of its input.
    })();
    let status = child.wait().context("failed to wait for ffmpeg")?;
    if !status.success() || written.is_err() {
        let _ = std::fs::remove_file(output);
        let messages = read_all(stderr);
        bail!(
            "ffmpeg failed to encode {} ({status}){}{}",
            output.display(),
            written
                .err()
                .map(|e| format!(", writing frames: {e}"))
                .unwrap_or_default(),
            if messages.trim().is_empty() {
                String::new()
            } else {
                format!(":\n{}", messages.trim_end())
            }
        );
    }
    let frames_written = written.unwrap_or(0);
    let digest = std::fs::read(output)
        .map(|b| hex::encode(Sha256::digest(&b)))
        .with_context(|| format!("failed to read back {}", output.display()))?;
    progress.finish(&digest);
    let warning = early.or(frames.error).map(|e| e.to_string());
    Ok(Video {
        path: output.to_owned(),
        size: (width, height),
        seconds: frames_written as f64 / f64::from(fps.max(1)),
        frames: frames_written,
        took: started.elapsed().as_secs_f64(),
        warning,
    })
}

fn read_all(mut file: std::fs::File) -> String {
    use std::io::{Read, Seek};
    let mut s = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn videos_are_named_after_their_recording() {
        assert_eq!(
            video_name(Path::new("/x/20261206T185620Z-3f.desktop-3.rfb")),
            PathBuf::from("/x/20261206T185620Z-3f.desktop-3.mp4")
        );
    }

    #[test]
    fn ffmpeg_failures_are_reported_with_its_messages() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // A stand-in "ffmpeg" that complains and fails.
        let fake = dir.path().join("ffmpeg");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho 'Unknown encoder libx264' >&2\nexit 1\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&fake)
            .status()
            .unwrap_or_else(|e| panic!("{e}"));
        let input = dir.path().join("r.desktop-1.rfb");
        std::fs::write(&input, tiny_recording()).unwrap_or_else(|e| panic!("{e}"));
        let err = export(&fake, &input, &dir.path().join("r.mp4"), 10)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("ffmpeg failed"), "{err}");
        assert!(err.contains("Unknown encoder libx264"), "{err}");
        // Positive control: what is not a recording fails before ffmpeg.
        std::fs::write(&input, b"nope").unwrap_or_else(|e| panic!("{e}"));
        let err = export(&fake, &input, &dir.path().join("r.mp4"), 10)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("not a Tether desktop recording"), "{err}");
    }

    /// A recording of one 16×8 screen.
    fn tiny_recording() -> Vec<u8> {
        use tether_recording::desktop::{Encoder, MAGIC, TO_DEVICE, TO_VIEWER};
        use tether_rfb::client::{ClientMessage, PixelFormat};
        use tether_rfb::server;
        let mut rec = Encoder::new("carol", 0, false);
        let mut out = MAGIC.to_vec();
        let mut hs = server::version().to_vec();
        hs.extend_from_slice(&server::security_types());
        hs.extend_from_slice(&server::security_ok());
        hs.extend(server::server_init(16, 8, &PixelFormat::BGRX, "t"));
        out.extend(rec.record(TO_VIEWER, 0, &hs).bytes);
        let viewer: Vec<u8> = [
            ClientMessage::Version,
            ClientMessage::Security,
            ClientMessage::Init { shared: true },
            ClientMessage::UpdateRequest {
                incremental: false,
                x: 0,
                y: 0,
                width: 16,
                height: 8,
            },
        ]
        .iter()
        .flat_map(ClientMessage::encode)
        .collect();
        out.extend(rec.record(TO_DEVICE, 1, &viewer).bytes);
        out.extend(rec.record(TO_VIEWER, 500, &[0, 0, 0, 0]).bytes);
        out.extend(rec.finish());
        out
    }
}

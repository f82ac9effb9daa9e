//! Benchmark of desktop recordings (prints numbers, asserts nothing): records a synthetic
//! session the way the relay does — a 1280×720 screen of terminal text that changes every
//! 100 ms, encoded by Tether's own server encoder (Tight with JPEG, as noVNC and TigerVNC
//! ask, then ZRLE) — and reports the recording's size per hour, then the export's speed:
//! decoding to frames at 10 fps and, when `ffmpeg` is on PATH, encoding them to H.264.
//! Run with `cargo run --release -p tether-recording --example export_bench [SECONDS]`.

#![allow(clippy::unwrap_used)] // A benchmark fails loudly.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use tether_recording::desktop::{Encoder as Recorder, MAGIC, Reader, TO_DEVICE, TO_VIEWER};
use tether_recording::playback::{Frames, sizes};
use tether_rfb::client::{ClientMessage, PixelFormat};
use tether_rfb::server::{self, Encoder, Image, Rect, Update};

const W: u16 = 1280;
const H: u16 = 720;

fn recording(seconds: u32, encodings: &[i32]) -> Vec<u8> {
    let mut rec = Recorder::new("bench", 0, false);
    let mut out = MAGIC.to_vec();
    let mut hs = server::version().to_vec();
    hs.extend_from_slice(&server::security_types());
    hs.extend_from_slice(&server::security_ok());
    hs.extend(server::server_init(W, H, &PixelFormat::BGRX, "bench"));
    out.extend(rec.record(TO_VIEWER, 0, &hs).bytes);
    let viewer: Vec<u8> = [
        ClientMessage::Version,
        ClientMessage::Security,
        ClientMessage::Init { shared: true },
        ClientMessage::SetEncodings(encodings.to_vec()),
        ClientMessage::UpdateRequest {
            incremental: false,
            x: 0,
            y: 0,
            width: W,
            height: H,
        },
    ]
    .iter()
    .flat_map(ClientMessage::encode)
    .collect();
    out.extend(rec.record(TO_DEVICE, 1, &viewer).bytes);
    let mut enc = Encoder::new();
    enc.set_encodings(encodings);
    let mut screen = vec![0u8; 4 * usize::from(W) * usize::from(H)];
    // A desktop: a background, a photo-like wallpaper strip, and a terminal whose lines fill in.
    for y in 0..usize::from(H) {
        for x in 0..usize::from(W) {
            let i = 4 * (y * usize::from(W) + x);
            let v = if y < 120 {
                ((x * 7 + y * 13) ^ (x * y)) as u8
            } else {
                0x33
            };
            screen[i..i + 4].copy_from_slice(&[0xcc, 0x66, v, 0]);
        }
    }
    let first = screen.clone();
    let img = Image {
        width: W,
        height: H,
        stride: 4 * usize::from(W),
        data: &first,
    };
    let mut update = Update::new();
    enc.encode(&img, img.bounds(), &mut update);
    out.extend(rec.record(TO_VIEWER, 20, &update.finish()).bytes);
    for (line, tick) in (1..=seconds * 10).enumerate() {
        // One terminal line of "text" (glyph-like strokes) appears every 100 ms.
        let y0 = 160 + (line % 30) * 18;
        for y in y0..y0 + 14 {
            for x in 40..1240 {
                let on = (x / 3 + y + tick as usize) % 7 < 2 && (x / 9) % 8 != 0;
                let i = 4 * (y * usize::from(W) + x);
                let c = if on {
                    [0xee, 0xee, 0xee, 0]
                } else {
                    [0x10, 0x10, 0x10, 0]
                };
                screen[i..i + 4].copy_from_slice(&c);
            }
        }
        let img = Image {
            width: W,
            height: H,
            stride: 4 * usize::from(W),
            data: &screen,
        };
        let mut update = Update::new();
        enc.encode(&img, Rect::new(40, y0 as u16, 1200, 14), &mut update);
        out.extend(rec.record(TO_VIEWER, tick * 100, &update.finish()).bytes);
    }
    out.extend(rec.finish());
    out
}

fn main() {
    let seconds: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    for (label, encodings) in [
        ("Tight+JPEG q6", vec![7, -26, -239]),
        ("ZRLE", vec![16, -239]),
    ] {
        let data = recording(seconds, &encodings);
        let per_hour = data.len() as f64 * 3600.0 / f64::from(seconds);
        println!(
            "{label}: {seconds} s recorded at {W}x{H}, 10 changes/s: {} bytes, {:.1} MiB per hour",
            data.len(),
            per_hour / 1048576.0
        );
        let reader = Reader::read(&data).unwrap();
        let (sz, _) = sizes(&reader);
        let started = Instant::now();
        let mut frames = Frames::new(&reader, 10, &sz, true);
        let mut frame = Vec::new();
        let mut n = 0u64;
        while frames.next_frame(&mut frame) {
            n += 1;
        }
        let decode = started.elapsed().as_secs_f64();
        println!(
            "  decode to {n} frames at 10 fps: {decode:.2} s, {:.1}x real time",
            f64::from(seconds) / decode
        );
        let Ok(mut child) = Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-nostdin",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "rawvideo",
            ])
            .args([
                "-pix_fmt",
                "rgb24",
                "-video_size",
                &format!("{W}x{H}"),
                "-framerate",
                "10",
            ])
            .args([
                "-i", "pipe:0", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23",
            ])
            .args(["-pix_fmt", "yuv420p", "-f", "mp4", "/dev/null"])
            .stdin(Stdio::piped())
            .spawn()
        else {
            println!("  ffmpeg not on PATH: no video timing");
            continue;
        };
        let started = Instant::now();
        let mut stdin = child.stdin.take().unwrap();
        let mut frames = Frames::new(&reader, 10, &sz, true);
        while frames.next_frame(&mut frame) {
            stdin.write_all(&frame).unwrap();
        }
        drop(stdin);
        child.wait().unwrap();
        let total = started.elapsed().as_secs_f64();
        println!(
            "  export to MP4 (decode + ffmpeg libx264 veryfast): {total:.2} s, {:.1}x real time",
            f64::from(seconds) / total
        );
    }
}

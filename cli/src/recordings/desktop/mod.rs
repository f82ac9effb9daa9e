//! `kubectl tether play NAME` for a desktop recording: the recording, read through the relay
//! and checked against its manifest's SHA-256, decoded once from its start into a
//! [`Timeline`] of snapshots, then shown in the browser viewer of `kubectl tether desktop`
//! (the same local server, one-time link and page) with play/pause, speed and seeking.
//!
//! The CLI is the page's RFB server ([`stream`]), re-encoding the decoded framebuffer
//! ([`screen`]); one [`Clock`] ([`clock`]) moved by the page's `/control` paces every page.
//! Nothing reaches a device: there is none.

mod clock;
mod screen;
mod stream;

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tether_proto::text::escape;
use tether_recording::desktop::Reader;
use tether_recording::playback::{self, Timeline};
use tether_recording::{Manifest, ObjectEntry};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::remote::browser::{self, Feed, Launch, MAX_VIEWERS, Shared};
use clock::{Clock, Control};

/// What `play` was asked for that concerns the browser.
pub(super) struct Options {
    /// Local port (0: any).
    pub port: u16,
    /// Print the link instead of opening the browser.
    pub no_browser: bool,
    /// Initial speed.
    pub speed: f64,
}

/// The recording as the page shows it, and the clock its controls move.
struct Recording {
    /// What does not change: the session, the recording, its length.
    about: serde_json::Map<String, serde_json::Value>,
    clock: watch::Sender<Clock>,
}

impl Feed for Recording {
    fn state(&self, _shared: &Shared) -> serde_json::Map<String, serde_json::Value> {
        let now = Instant::now();
        let clock = self.clock.borrow();
        let mut recording = self.about.clone();
        recording.insert("positionMs".into(), clock.position(now).into());
        recording.insert("playing".into(), clock.is_playing(now).into());
        recording.insert("speed".into(), clock.speed().into());
        let mut state = serde_json::Map::new();
        state.insert("recording".into(), recording.into());
        state.insert("viewOnly".into(), true.into());
        state.insert("ended".into(), serde_json::Value::Null);
        state
    }

    fn control(&self, body: &[u8]) -> Result<(), String> {
        let control = Control::parse(body)?;
        let mut result = Ok(());
        self.clock.send_if_modified(|clock| {
            result = clock.apply(&control, Instant::now());
            result.is_ok()
        });
        result
    }
}

/// Fails unless `speed` is one a desktop recording plays at.
pub(super) fn check_speed(speed: f64) -> Result<()> {
    if !clock::SPEEDS.contains(&speed) {
        bail!(
            "--speed for a desktop recording must be from {} to {}",
            clock::SPEEDS.start(),
            clock::SPEEDS.end()
        );
    }
    Ok(())
}

/// Plays the desktop recording `object` (its bytes `data`, already verified) in the browser
/// until interrupted.
pub(super) async fn play(
    manifest: &Manifest,
    object: &ObjectEntry,
    data: Vec<u8>,
    options: Options,
) -> Result<()> {
    let name = escape(&object.name).into_owned();
    let reader = Reader::read(&data).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    drop(data);
    // Every page's stream borrows the recording (and below, its timeline) for as long as the
    // command runs, which ends the process.
    let reader: &'static Reader = Box::leak(Box::new(reader));
    let (sizes, early) = playback::sizes(reader);
    let Some(&first_size) = sizes.first() else {
        bail!(
            "{name}: the recording ends before the desktop's first screen{}",
            early.map(|e| format!(" ({e})")).unwrap_or_default()
        );
    };
    let duration_ms = playback::duration_ms(reader);
    eprintln!(
        "tether: decoding {name} ({}, {}x{}{})",
        crate::table::span(i64::from(duration_ms / 1000)),
        first_size.0,
        first_size.1,
        if sizes.len() > 1 {
            format!(", {} sizes", sizes.len())
        } else {
            String::new()
        }
    );
    let every = clock::snapshot_every(duration_ms, playback::canvas(&sizes));
    let timeline = tokio::task::spawn_blocking(move || Timeline::build(reader, every))
        .await
        .context("decoding the recording stopped")?;
    let warning = timeline.error.as_ref().map(ToString::to_string);
    if let Some(w) = &warning {
        eprintln!("tether: warning: {w}; playback shows the last screen decoded from there on");
    }
    let timeline: &'static Timeline<'static> = Box::leak(Box::new(timeline));
    let desktop_name = reader.header.name.clone();

    let serde_json::Value::Object(about) = serde_json::json!({
        "device": manifest.device,
        "namespace": manifest.session.namespace,
        "name": manifest.session.name,
        "object": object.name,
        "technician": object.technician,
        "startedAt": object.started_at.to_string(),
        "durationMs": duration_ms,
        "sizes": sizes,
        "warning": warning,
    }) else {
        unreachable!("a JSON object literal")
    };
    let (clock, clock_rx) = watch::channel(Clock::new(duration_ms, options.speed, Instant::now()));
    drop(clock_rx);
    let feed = Arc::new(Recording { about, clock });
    let what = format!("the recording {name} of {}", escape(&manifest.device));
    let mut served = browser::start(Launch {
        port: options.port,
        no_browser: options.no_browser,
        command: "play",
        what: &what,
        feed: feed.clone(),
    })
    .await?;
    eprintln!("tether: press Ctrl-C to stop");
    let source = Arc::new(stream::Source {
        timeline,
        first_size,
        name: desktop_name,
    });
    let mut pages = JoinSet::new();
    loop {
        tokio::select! {
            socket = served.sockets.recv() => {
                let Some(socket) = socket else { break };
                while pages.try_join_next().is_some() {}
                if pages.len() >= MAX_VIEWERS {
                    eprintln!("tether: refused a browser viewer: {MAX_VIEWERS} are connected");
                    browser::refuse(socket, "too many viewers are connected").await;
                    continue;
                }
                let (shared, source, clock) = (served.shared.clone(), source.clone(), feed.clock.subscribe());
                pages.spawn(async move {
                    browser::attend(&shared, socket, async |socket| {
                        stream::stream(&source, clock, socket).await
                    })
                    .await;
                });
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    pages.shutdown().await;
    served.stop().await;
    Ok(())
}

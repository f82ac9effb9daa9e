//! `kubectl tether play`: a session's recorded shells replayed in the terminal, in time or at
//! once, read through the relay as an auditor like the other recording commands.

use std::io::Write;
use std::time::Duration;

use anyhow::{Result, bail};
use tether_recording::asciicast::Cast;
use tether_recording::{Manifest, ObjectEntry, ObjectKind};

use super::{Auditor, is_complete, nothing_of, session_exists};
use crate::client::GlobalArgs;

/// Flags of `play`.
#[derive(Clone, Debug, clap::Args)]
pub struct PlayArgs {
    /// The RemoteSession.
    pub name: String,
    /// Playback speed (2 = twice as fast).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Longest pause kept between two outputs, in seconds (idle time is cut to this).
    #[arg(long, default_value_t = 2.0)]
    pub idle_limit: f64,
    /// Print the whole output at once instead of replaying it in time.
    #[arg(long)]
    pub instant: bool,
    /// Play only this shell channel (default: every shell of the session, in order).
    #[arg(long)]
    pub channel: Option<u64>,
    /// Dial this relay instead of the one the operator names (`host:port`).
    #[arg(long)]
    pub relay: Option<String>,
    /// HTTP CONNECT proxy for the relay connection (`http://[user:pass@]host:port`, or `none`).
    /// Default: HTTPS_PROXY, unless NO_PROXY names the relay.
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
}

/// `kubectl tether play NAME`.
pub async fn play(global: &GlobalArgs, args: PlayArgs) -> Result<()> {
    if !args.speed.is_finite() || args.speed <= 0.0 {
        bail!("--speed must be greater than 0");
    }
    let (auditor, ns) = Auditor::connect(
        global,
        Some(&args.name),
        args.relay.as_deref(),
        args.proxy.as_deref(),
    )
    .await?;
    let manifests = auditor.list(Some(&args.name)).await?;
    let (shells, live): (Vec<(&Manifest, &ObjectEntry)>, Vec<_>) = manifests
        .iter()
        .flat_map(|m| m.objects.iter().map(move |o| (m, o)))
        .filter(|(_, o)| o.kind == ObjectKind::Shell)
        .filter(|(_, o)| args.channel.is_none_or(|c| o.channel == Some(c)))
        .partition(|(_, o)| is_complete(o));
    for (_, object) in &live {
        eprintln!(
            "tether: skipping {}: its channel is still open (it can be played once it closes)",
            object.name
        );
    }
    if shells.is_empty() && !live.is_empty() {
        bail!(
            "RemoteSession {}'s shells are still being recorded; play them once they close",
            args.name
        );
    }
    if shells.is_empty() {
        let objects: Vec<&str> = manifests
            .iter()
            .flat_map(|m| m.objects.iter().map(|o| o.name.as_str()))
            .collect();
        let exists = if objects.is_empty() {
            session_exists(global, &args.name).await
        } else {
            Some(true)
        };
        let what = match args.channel {
            Some(c) => format!("recorded shell on channel {c}"),
            None => "recorded shell".to_owned(),
        };
        bail!("{}", nothing_of(&args.name, &ns, &what, exists, &objects));
    }
    let mut out = std::io::stdout();
    for (manifest, object) in shells {
        let mut body = Vec::new();
        auditor
            .read(
                manifest,
                object,
                &mut |b| {
                    body.extend_from_slice(b);
                    Ok(())
                },
                None,
            )
            .await?;
        let cast = Cast::parse(&String::from_utf8_lossy(&body))
            .map_err(|e| anyhow::anyhow!("{}: {e}", object.name))?;
        eprintln!(
            "tether: playing {} ({}x{}, {:.0}s{})",
            object.name,
            cast.header.width,
            cast.header.height,
            cast.duration(),
            object
                .technician
                .as_ref()
                .map(|t| format!(", by {t}"))
                .unwrap_or_default()
        );
        if args.instant {
            out.write_all(cast.output().as_bytes())?;
            out.flush()?;
            continue;
        }
        let mut previous = 0.0;
        for event in cast.events.iter().filter(|e| e.code == "o") {
            let pause = ((event.time - previous).max(0.0)).min(args.idle_limit) / args.speed;
            previous = event.time;
            if pause > 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(pause)).await;
            }
            out.write_all(event.data.as_bytes())?;
            out.flush()?;
        }
    }
    Ok(())
}

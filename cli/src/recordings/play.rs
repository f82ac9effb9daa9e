//! `kubectl tether play`: a session's recorded shells replayed in the terminal, in time or at
//! once, and its desktop recordings in the browser viewer ([`super::desktop`]); read through
//! the relay as an auditor like the other recording commands, and checked against their
//! manifest's SHA-256 before anything is shown.

use std::io::Write;
use std::time::Duration;

use anyhow::{Result, bail};
use tether_proto::text::escape;
use tether_recording::asciicast::Cast;
use tether_recording::{Manifest, ObjectEntry, ObjectKind};

use super::{Auditor, is_complete, nothing_of, session_exists, verify};
use crate::client::GlobalArgs;
use crate::progress::Progress;

/// Flags of `play`.
#[derive(Clone, Debug, clap::Args)]
pub struct PlayArgs {
    /// The RemoteSession.
    pub name: String,
    /// Playback speed (2 = twice as fast); desktops start at it and the page changes it.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Longest pause kept between two outputs of a shell, in seconds (idle time is cut to this).
    #[arg(long, default_value_t = 2.0)]
    pub idle_limit: f64,
    /// Print a shell's whole output at once instead of replaying it in time.
    #[arg(long)]
    pub instant: bool,
    /// Play only this channel: a shell in the terminal, a desktop in the browser (default:
    /// every shell of the session in order; without shells, its first desktop).
    #[arg(long)]
    pub channel: Option<u64>,
    /// Local port for a desktop's viewer page (127.0.0.1 only); default: any free port.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Print a desktop viewer's one-time link instead of opening the default browser.
    #[arg(long)]
    pub no_browser: bool,
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
    let (done, live): (Vec<(&Manifest, &ObjectEntry)>, Vec<_>) = manifests
        .iter()
        .flat_map(|m| m.objects.iter().map(move |o| (m, o)))
        .filter(|(_, o)| matches!(o.kind, ObjectKind::Shell | ObjectKind::Desktop))
        .filter(|(_, o)| args.channel.is_none_or(|c| o.channel == Some(c)))
        .partition(|(_, o)| is_complete(o));
    for (_, object) in &live {
        eprintln!(
            "tether: skipping {}: its channel is still open (it can be played once it closes)",
            escape(&object.name)
        );
    }
    let (shells, desktops): (Vec<_>, Vec<_>) = done
        .into_iter()
        .partition(|(_, o)| o.kind == ObjectKind::Shell);
    if !shells.is_empty() {
        if args.no_browser || args.port != 0 {
            bail!(
                "{} is a shell recording, which plays in the terminal: drop --no-browser and --port (they are for desktop recordings)",
                escape(&shells[0].1.name)
            );
        }
        for (_, desktop) in &desktops {
            eprintln!(
                "tether: {} is a desktop recording; play it in the browser with kubectl tether play {} --channel {}",
                escape(&desktop.name),
                args.name,
                desktop.channel.unwrap_or_default()
            );
        }
        return play_shells(&auditor, &args, shells).await;
    }
    if let Some(&(manifest, object)) = desktops.first() {
        if args.instant {
            bail!(
                "{} is a desktop recording, which plays in the browser: drop --instant (it is for shell recordings)",
                escape(&object.name)
            );
        }
        for (_, other) in &desktops[1..] {
            eprintln!(
                "tether: also recorded: {} (play it with --channel {})",
                escape(&other.name),
                other.channel.unwrap_or_default()
            );
        }
        super::desktop::check_speed(args.speed)?;
        let data = read_verified(&auditor, manifest, object, true).await?;
        let options = super::desktop::Options {
            port: args.port,
            no_browser: args.no_browser,
            speed: args.speed,
        };
        return super::desktop::play(manifest, object, data, options).await;
    }
    if !live.is_empty() {
        bail!(
            "RemoteSession {}'s recordings are still being recorded; play them once they close",
            args.name
        );
    }
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
        Some(c) => format!("recorded shell or desktop on channel {c}"),
        None => "recorded shell or desktop".to_owned(),
    };
    bail!("{}", nothing_of(&args.name, &ns, &what, exists, &objects));
}

/// Reads `object` whole, verified against its manifest's SHA-256, with progress on stderr
/// when `progress`.
async fn read_verified(
    auditor: &Auditor,
    manifest: &Manifest,
    object: &ObjectEntry,
    progress: bool,
) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut shown =
        progress.then(|| Progress::new(format!("reading {}", escape(&object.name)), object.bytes));
    let (_, sha256) = auditor
        .read(
            manifest,
            object,
            &mut |b| {
                body.extend_from_slice(b);
                Ok(())
            },
            shown.as_mut(),
        )
        .await?;
    verify(object, &sha256, &escape(&object.name))?;
    if let Some(p) = shown {
        p.finish(&sha256);
    }
    Ok(body)
}

/// Replays `shells` in the terminal, one after another.
async fn play_shells(
    auditor: &Auditor,
    args: &PlayArgs,
    shells: Vec<(&Manifest, &ObjectEntry)>,
) -> Result<()> {
    let mut out = std::io::stdout();
    for (manifest, object) in shells {
        let body = read_verified(auditor, manifest, object, false).await?;
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

//! Reading session recordings: `recordings`, `play` and `export`. Recordings are read through
//! the relay, never from the store directly: the CLI asks the cluster for a short-lived client
//! certificate (a CertificateSigningRequest for signer `tether.dev/recordings`, which the
//! operator signs only if the caller may `get remotesessions/recording`), then presents it.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use tether_proto::frame::FrameKind;
use tether_proto::message::{
    AuditRequest, AuditResponse, Hello, HelloReply, PROTOCOL_VERSION, Role,
};
use tether_recording::{Manifest, ObjectEntry, ObjectKind};
use tether_transport::{Dial, FrameReader, Prefer, framed, tls};

use crate::certificate::{self, Ask, Issued};
use crate::client::{GlobalArgs, connect as kube_connect};
use crate::progress::{Progress, human_bytes};
use crate::table;

mod desktop;
mod play;

pub use play::{PlayArgs, play};

/// Signer of auditors' certificates.
const SIGNER: &str = tether_crds::contract::signers::RECORDINGS;

/// Flags of `recordings`.
#[derive(Clone, Debug, clap::Args)]
pub struct ListArgs {
    /// Only this RemoteSession's recordings (default: every recording in the namespace).
    pub name: Option<String>,
    /// Dial this relay instead of the one the operator names (`host:port`).
    #[arg(long)]
    pub relay: Option<String>,
    /// HTTP CONNECT proxy for the relay connection (`http://[user:pass@]host:port`, or `none`).
    /// Default: HTTPS_PROXY, unless NO_PROXY names the relay.
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
}

/// Flags of `export`.
#[derive(Clone, Debug, clap::Args)]
pub struct ExportArgs {
    /// The RemoteSession.
    pub name: String,
    /// Directory to write the recordings to (created if missing).
    pub dir: PathBuf,
    /// Also write each desktop recording as an MP4 video (H.264) beside it; needs ffmpeg.
    #[arg(long)]
    pub video: bool,
    /// Frames per second of the videos.
    #[arg(long, default_value_t = crate::video::DEFAULT_FPS, value_parser = clap::value_parser!(u32).range(1..=60))]
    pub fps: u32,
    /// Dial this relay instead of the one the operator names (`host:port`).
    #[arg(long)]
    pub relay: Option<String>,
    /// HTTP CONNECT proxy for the relay connection (`http://[user:pass@]host:port`, or `none`).
    /// Default: HTTPS_PROXY, unless NO_PROXY names the relay.
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
}

/// A connection to the relay as an auditor.
struct Auditor {
    conn: tether_transport::Connection,
    /// The control stream, open for the connection's life.
    _control: (FrameReader, tether_transport::FrameWriter),
}

impl Auditor {
    /// Obtains a certificate for `session` (or the whole namespace) and connects.
    async fn connect(
        global: &GlobalArgs,
        session: Option<&str>,
        relay: Option<&str>,
        proxy: Option<&str>,
    ) -> Result<(Self, String)> {
        let kube = kube_connect(global).await?;
        let ns = kube.namespace.clone();
        let issued = certificate(&kube.client, &ns, session).await?;
        let relay = match (relay, &issued.relay) {
            (Some(r), _) => r.to_owned(),
            (None, Some(r)) => r.clone(),
            (None, None) => bail!(
                "the operator did not say which relay serves recordings; pass --relay host:port"
            ),
        };
        let dial = Dial {
            relay: relay.clone(),
            tls: tls::client_config(&issued.ca, Some((&issued.cert, &issued.key)))?,
            prefer: Prefer::Auto,
            quic_timeout: Duration::from_secs(3),
            proxy: crate::reach::relay_proxy(proxy, &relay),
        };
        let conn = crate::reach::connect(&dial)
            .await
            .with_context(|| format!("failed to reach the relay at {relay}"))?;
        crate::connect::remember(&conn);
        let (mut reader, mut writer) = framed(conn.open().await?);
        writer
            .message(&Hello {
                versions: vec![PROTOCOL_VERSION],
                role: Role::Auditor,
                token: None,
                agent: None,
                enroll: None,
                client: format!("kubectl-tether/{}", env!("CARGO_PKG_VERSION")),
                technician: None,
                forwarded: None,
            })
            .await?;
        match reader.message::<HelloReply>().await? {
            HelloReply::Welcome(_) => {}
            HelloReply::Refused(r) => bail!("the relay refused: {}", r.message),
        }
        Ok((
            Self {
                conn,
                _control: (reader, writer),
            },
            ns,
        ))
    }

    async fn request(&self, request: &AuditRequest) -> Result<(FrameReader, AuditResponse)> {
        let (mut reader, mut writer) = framed(self.conn.open().await?);
        writer.message(request).await?;
        writer.finish().await?;
        let response = reader.message::<AuditResponse>().await?;
        if let AuditResponse::Error { message } = response {
            bail!("{message}");
        }
        Ok((reader, response))
    }

    async fn list(&self, session: Option<&str>) -> Result<Vec<Manifest>> {
        let (_, response) = self
            .request(&AuditRequest::List {
                session: session.map(str::to_owned),
            })
            .await?;
        let AuditResponse::Recordings { manifests } = response else {
            bail!("the relay answered a listing with something else");
        };
        manifests
            .into_iter()
            .map(|m| serde_json::from_value(m).context("the relay sent an unreadable manifest"))
            .collect()
    }

    /// Streams an object into `sink`, returning its size and SHA-256.
    async fn read(
        &self,
        manifest: &Manifest,
        object: &ObjectEntry,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
        progress: Option<&mut Progress>,
    ) -> Result<(u64, String)> {
        let (mut reader, response) = self
            .request(&AuditRequest::Read {
                session: manifest.session.name.clone(),
                uid: manifest.session.uid.clone(),
                object: object.name.clone(),
            })
            .await?;
        let AuditResponse::Sending { size } = response else {
            bail!("the relay answered a read with something else");
        };
        let mut progress = progress;
        let mut hasher = Sha256::new();
        let mut got = 0u64;
        loop {
            let frame = reader
                .next()
                .await?
                .with_context(|| format!("{} ended after {got} of {size} bytes", object.name))?;
            match frame.kind {
                FrameKind::Data => {
                    got += frame.payload.len() as u64;
                    hasher.update(&frame.payload);
                    sink(&frame.payload)?;
                    if let Some(p) = progress.as_deref_mut() {
                        p.add(frame.payload.len() as u64);
                    }
                }
                FrameKind::EndOfData => break,
                FrameKind::Message => bail!("unexpected message while reading {}", object.name),
            }
        }
        if got != size {
            bail!("{}: received {got} bytes, expected {size}", object.name);
        }
        Ok((got, hex::encode(hasher.finalize())))
    }
}

/// Asks the operator for a short-lived recordings certificate and waits for it.
async fn certificate(client: &kube::Client, ns: &str, session: Option<&str>) -> Result<Issued> {
    let ask = Ask {
        signer: SIGNER,
        kind: "recordings",
        namespace: ns,
        session,
        role_hint: "request a recordings certificate (create certificatesigningrequests; the tether-recording-requester ClusterRole grants it, bound cluster-wide)",
    };
    certificate::request(client, &ask, &certificate::new_key()?)
        .await
        .map_err(|e| anyhow::anyhow!("not permitted to read recordings: {e}"))
}

/// A name from the relay, accepted as a file name in the export directory only if it cannot
/// point anywhere else.
fn plain_name(name: &str) -> Result<&str> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\', '\0']) {
        bail!("the relay sent an object name that is not a plain file name: {name:?}");
    }
    Ok(name)
}

/// Fails when the SHA-256 of what was read of `object` (as `what`) is not its manifest's.
fn verify(object: &ObjectEntry, sha256: &str, what: &str) -> Result<()> {
    if let Some(expected) = object.sha256.as_ref().filter(|e| *e != sha256) {
        bail!(
            "{what} is corrupt: its SHA-256 is {sha256}, the recording's manifest says {expected}"
        );
    }
    Ok(())
}

/// Whether an object is finished and stored with its checksum (a live recording's open
/// channels are not yet; a failed recording's may never be).
fn is_complete(object: &ObjectEntry) -> bool {
    object.sha256.is_some()
}

fn duration(m: &Manifest) -> String {
    table::span(m.duration(jiff::Timestamp::now()).as_secs())
}

/// Whether RemoteSession `name` exists, when the caller may tell (recordings outlive their
/// sessions, so this is asked only when there is nothing to play or export).
async fn session_exists(global: &GlobalArgs, name: &str) -> Option<bool> {
    let kube = kube_connect(global).await.ok()?;
    let sessions: kube::Api<tether_crds::RemoteSession> =
        kube::Api::namespaced(kube.client, &kube.namespace);
    sessions.get_opt(name).await.ok().map(|s| s.is_some())
}

/// Why there is nothing to play or export of `name`: first whether such a session exists at
/// all, then what its recordings hold. `what` is "recorded shell" or "recordings".
fn nothing_of(name: &str, ns: &str, what: &str, exists: Option<bool>, objects: &[&str]) -> String {
    if objects.is_empty() && exists == Some(false) {
        return format!(
            "RemoteSession {name} not found in namespace {ns}, and there are no recordings of a session by that name"
        );
    }
    format!(
        "RemoteSession {name} in namespace {ns} has no {what} (its recordings hold: {})",
        if objects.is_empty() {
            "nothing".to_owned()
        } else {
            objects.join(", ")
        }
    )
}

/// `kubectl tether recordings [NAME]`.
pub async fn list(global: &GlobalArgs, args: ListArgs) -> Result<()> {
    let (auditor, ns) = Auditor::connect(
        global,
        args.name.as_deref(),
        args.relay.as_deref(),
        args.proxy.as_deref(),
    )
    .await?;
    let manifests = auditor.list(args.name.as_deref()).await?;
    if manifests.is_empty() {
        match &args.name {
            Some(name) => println!("No recordings of RemoteSession {name} in namespace {ns}."),
            None => println!("No recordings in namespace {ns}."),
        }
        return Ok(());
    }
    let mut rows = Vec::new();
    for m in &manifests {
        rows.push(vec![
            m.session.name.clone(),
            m.id.clone(),
            m.state.as_str().to_owned(),
            m.started_at.strftime("%Y-%m-%d %H:%M:%S").to_string(),
            duration(m),
            m.technicians.join(","),
            human_bytes(m.bytes()),
            String::new(),
        ]);
        for o in &m.objects {
            rows.push(vec![
                String::new(),
                format!("  {}", o.name),
                o.kind.as_str().to_owned(),
                String::new(),
                String::new(),
                o.technician.clone().unwrap_or_default(),
                human_bytes(o.bytes),
                o.sha256
                    .clone()
                    .unwrap_or_else(|| "(being recorded)".into()),
            ]);
        }
    }
    print!(
        "{}",
        table::render(
            &[
                "SESSION",
                "RECORDING",
                "STATE",
                "STARTED",
                "DURATION",
                "TECHNICIANS",
                "SIZE",
                "SHA256",
            ],
            &rows
        )
    );
    Ok(())
}

/// `kubectl tether export NAME DIR`.
pub async fn export(global: &GlobalArgs, args: ExportArgs) -> Result<()> {
    let (auditor, ns) = Auditor::connect(
        global,
        Some(&args.name),
        args.relay.as_deref(),
        args.proxy.as_deref(),
    )
    .await?;
    let manifests = auditor.list(Some(&args.name)).await?;
    if manifests.is_empty() {
        let exists = session_exists(global, &args.name).await;
        bail!("{}", nothing_of(&args.name, &ns, "recordings", exists, &[]));
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("failed to create {}", args.dir.display()))?;
    // Without ffmpeg the recordings are still exported; the missing tool is the error.
    let ffmpeg = args.video.then(crate::video::find_ffmpeg);
    if let Some(Err(e)) = &ffmpeg {
        eprintln!("tether: {e}; exporting the recordings without video");
    }
    let mut desktops = Vec::new();
    let (mut files, mut bytes, mut unverified) = (0, 0u64, 0);
    for manifest in &manifests {
        for object in &manifest.objects {
            if !is_complete(object) {
                eprintln!(
                    "tether: skipping {}: still being recorded (export again once the session ends)",
                    object.name
                );
                unverified += 1;
                continue;
            }
            let path = args.dir.join(plain_name(&object.name)?);
            let mut file = std::fs::File::create(&path)
                .with_context(|| format!("failed to create {}", path.display()))?;
            let mut progress = Progress::new(format!("exporting {}", object.name), object.bytes);
            let (size, sha256) = auditor
                .read(
                    manifest,
                    object,
                    &mut |b| {
                        file.write_all(b)
                            .with_context(|| format!("failed to write {}", path.display()))
                    },
                    Some(&mut progress),
                )
                .await?;
            file.sync_all()?;
            verify(object, &sha256, &path.display().to_string())?;
            progress.finish(&sha256);
            files += 1;
            bytes += size;
            if object.kind == ObjectKind::Desktop {
                desktops.push(path);
            }
        }
        let manifest_path = args
            .dir
            .join(plain_name(&format!("{}.manifest.json", manifest.id))?);
        std::fs::write(&manifest_path, serde_json::to_vec_pretty(manifest)?)
            .with_context(|| format!("failed to write {}", manifest_path.display()))?;
    }
    eprintln!(
        "tether: exported {files} objects ({}) of {} recording(s) to {}{}",
        human_bytes(bytes),
        manifests.len(),
        args.dir.display(),
        if unverified > 0 {
            format!("; {unverified} still being recorded were skipped")
        } else {
            "; every checksum verified".into()
        }
    );
    match ffmpeg {
        None => Ok(()),
        Some(Err(e)) => Err(e),
        Some(Ok(ffmpeg)) => videos(&ffmpeg, &desktops, args.fps).await,
    }
}

/// Writes an MP4 beside each of the (verified) desktop recordings at `paths`.
async fn videos(ffmpeg: &std::path::Path, paths: &[PathBuf], fps: u32) -> Result<()> {
    if paths.is_empty() {
        eprintln!("tether: no desktop recordings, so no videos");
        return Ok(());
    }
    for path in paths {
        let (ffmpeg, input, output) = (
            ffmpeg.to_owned(),
            path.clone(),
            crate::video::video_name(path),
        );
        let video = tokio::task::spawn_blocking(move || {
            crate::video::export(&ffmpeg, &input, &output, fps)
        })
        .await
        .context("the video export stopped")??;
        report(&video);
    }
    Ok(())
}

fn report(video: &crate::video::Video) {
    eprintln!(
        "tether: wrote {} ({}x{}, {:.1}s, {} frames) in {:.1}s ({:.1}x real time)",
        video.path.display(),
        video.size.0,
        video.size.1,
        video.seconds,
        video.frames,
        video.took,
        video.seconds / video.took.max(0.001)
    );
    if let Some(w) = &video.warning {
        eprintln!("tether: warning: {w}; the video shows the last screen decoded from there on");
    }
}

/// Flags of `video`.
#[derive(Clone, Debug, clap::Args)]
pub struct VideoArgs {
    /// Exported desktop recordings (`*.desktop-*.rfb`); each becomes an MP4 beside it.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Frames per second.
    #[arg(long, default_value_t = crate::video::DEFAULT_FPS, value_parser = clap::value_parser!(u32).range(1..=60))]
    pub fps: u32,
}

/// `kubectl tether video FILE…`: MP4s of desktop recordings already exported (and verified)
/// by `export`.
pub async fn video(args: VideoArgs) -> Result<()> {
    let ffmpeg = crate::video::find_ffmpeg()?;
    videos(&ffmpeg, &args.files, args.fps).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_that_does_not_exist_is_said_to_be_not_found() {
        let missing = nothing_of("nosuch", "kiosks", "recorded shell", Some(false), &[]);
        assert!(
            missing.starts_with("RemoteSession nosuch not found in namespace kiosks"),
            "{missing}"
        );
        // Positive control: one that exists, or recordings of a deleted one, say what is there.
        let empty = nothing_of("help", "kiosks", "recorded shell", Some(true), &[]);
        assert_eq!(
            empty,
            "RemoteSession help in namespace kiosks has no recorded shell (its recordings hold: nothing)"
        );
        let files = nothing_of(
            "help",
            "kiosks",
            "recorded shell",
            Some(false),
            &["files-1.jsonl"],
        );
        assert!(files.contains("hold: files-1.jsonl"), "{files}");
        // Not allowed to look: no claim either way.
        assert!(!nothing_of("x", "ns", "recordings", None, &[]).contains("not found"));
    }

    #[test]
    fn a_recording_whose_checksum_differs_is_refused() {
        let object: ObjectEntry = serde_json::from_value(serde_json::json!({
            "name": "r.desktop-3.rfb", "kind": "desktop", "channel": 3, "bytes": 4,
            "sha256": sha256_hex(b"good"), "startedAt": "2026-12-06T20:00:00Z",
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(verify(&object, &sha256_hex(b"good"), "r.desktop-3.rfb").is_ok());
        let err = verify(&object, &sha256_hex(b"evil"), "r.desktop-3.rfb")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("r.desktop-3.rfb is corrupt: its SHA-256 is "),
            "{err}"
        );
        assert!(err.contains(&sha256_hex(b"good")), "{err}");
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn plain_names_only() {
        assert!(plain_name("shell-1.cast").is_ok());
        for bad in ["", ".hidden", "../x", "a/b", "a\\b"] {
            assert!(plain_name(bad).is_err(), "{bad}");
        }
    }
}

//! Transfers over the files channel, checked end to end with SHA-256 and shown with progress:
//! `download`, `upload`, and `cp` between a local path and `SESSION:/remote/path`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tether_proto::channels::{FileRequest, FileResponse};
use tether_proto::frame::{Frame, FrameKind};
use tether_proto::text::escape;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::files::request;
use crate::client::GlobalArgs;
use crate::connect::{ConnectArgs, Joined, join};
use crate::progress::Progress;

/// Downloads `remote` to `local`; returns the SHA-256.
pub async fn download(joined: &Joined, remote: &str, local: &Path) -> Result<String> {
    let (mut r, _w, response) = request(
        joined,
        &FileRequest::Download {
            path: remote.into(),
        },
    )
    .await?;
    let FileResponse::Sending { size } = response else {
        bail!("unexpected answer: {response:?}")
    };
    let tmp = local.with_extension("tether-partial");
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .with_context(|| format!("failed to create {}", tmp.display()))?;
    let mut hasher = Sha256::new();
    let mut progress = Progress::new(format!("downloading {remote}"), size);
    loop {
        let f = r.expect().await?;
        match f.kind {
            FrameKind::Data => {
                hasher.update(&f.payload);
                file.write_all(&f.payload).await?;
                progress.add(f.payload.len() as u64);
            }
            FrameKind::EndOfData => break,
            FrameKind::Message => bail!("unexpected message during a download"),
        }
    }
    file.flush().await?;
    let local_sha = hex::encode(hasher.finalize());
    match r.message::<FileResponse>().await? {
        FileResponse::Done { sha256, .. } if sha256 == local_sha => {}
        FileResponse::Done { sha256, .. } => {
            let _ = tokio::fs::remove_file(&tmp).await;
            bail!("{remote}: corrupted in transit (sha256 {local_sha}, device says {sha256})");
        }
        other => bail!("unexpected answer: {other:?}"),
    }
    tokio::fs::rename(&tmp, local).await?;
    progress.finish(&local_sha);
    Ok(local_sha)
}

/// Uploads `local` to `remote`; returns the SHA-256.
pub async fn upload(
    joined: &Joined,
    local: &Path,
    remote: &str,
    overwrite: bool,
    if_sha256: Option<String>,
) -> Result<String> {
    let mut file = tokio::fs::File::open(local)
        .await
        .with_context(|| format!("failed to open {}", local.display()))?;
    let size = file.metadata().await?.len();
    let (mut r, mut w, response) = request(
        joined,
        &FileRequest::Upload {
            path: remote.into(),
            size,
            overwrite,
            if_sha256,
        },
    )
    .await?;
    let FileResponse::Ready = response else {
        bail!("unexpected answer: {response:?}")
    };
    let mut hasher = Sha256::new();
    let mut progress = Progress::new(format!("uploading {}", local.display()), size);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        w.send(&Frame::data(Bytes::copy_from_slice(&buf[..n])))
            .await?;
        progress.add(n as u64);
    }
    w.send(&Frame::end_of_data()).await?;
    let local_sha = hex::encode(hasher.finalize());
    match r.message::<FileResponse>().await? {
        FileResponse::Done { sha256, .. } if sha256 == local_sha => {}
        FileResponse::Done { sha256, .. } => {
            bail!("{remote}: corrupted in transit (sha256 {local_sha}, device stored {sha256})")
        }
        FileResponse::Error { message, .. } => bail!("{}", escape(&message)),
        other => bail!("unexpected answer: {other:?}"),
    }
    progress.finish(&local_sha);
    Ok(local_sha)
}

/// `cp SRC DST`, where one side is `NAME:/remote/path` (like `kubectl cp`).
#[derive(Clone, Debug, clap::Args)]
pub struct CpArgs {
    /// Source: a local path or `SESSION:/remote/path`.
    pub source: String,
    /// Destination: a local path or `SESSION:/remote/path`.
    pub destination: String,
    /// Replace an existing remote file.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Splits `SESSION:/path` (a remote spec) from a local path.
pub fn remote_spec(s: &str) -> Option<(&str, &str)> {
    let (name, path) = s.split_once(':')?;
    (!name.is_empty() && !name.contains('/') && path.starts_with('/')).then_some((name, path))
}

/// Runs `cp`.
pub async fn cp(global: &GlobalArgs, args: CpArgs) -> Result<()> {
    match (remote_spec(&args.source), remote_spec(&args.destination)) {
        (Some((name, remote)), None) => {
            let joined = join(global, &args.connect, name).await?;
            let mut local = PathBuf::from(&args.destination);
            if local.is_dir() {
                local.push(remote.rsplit('/').next().unwrap_or("download"));
            }
            download(&joined, remote, &local).await?;
        }
        (None, Some((name, remote))) => {
            let joined = join(global, &args.connect, name).await?;
            upload(
                &joined,
                Path::new(&args.source),
                remote,
                args.overwrite,
                None,
            )
            .await?;
        }
        (Some(_), Some(_)) => {
            bail!("copy between two sessions is not supported; copy to a local file first")
        }
        (None, None) => {
            bail!("one side must be SESSION:/remote/path, e.g. printer-help:/home/report.txt")
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_specs() {
        assert_eq!(
            remote_spec("printer:/home/a.txt"),
            Some(("printer", "/home/a.txt"))
        );
        assert_eq!(remote_spec("./local.txt"), None);
        assert_eq!(remote_spec("C:relative"), None);
        assert_eq!(remote_spec("/abs/path"), None);
    }
}

//! The file manager's streamed transfers: a download sends the file in data frames and its
//! SHA-256; an upload is received into a temporary file next to its destination, checked
//! against the announced size (and, for an edit, the content it replaces), then put in place.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tether_proto::channels::{FileErrorCode, FileResponse};
use tether_proto::frame::{Frame, FrameKind};
use tether_transport::{FrameReader, FrameWriter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{CHUNK, FileError, Roots};

/// An upload's temporary file, next to its destination: removed when dropped unless it was
/// put in place, so no failure (a name the file system refuses, a broken connection, a session
/// that ends mid-transfer) leaves one behind.
struct UploadTemp {
    path: PathBuf,
    kept: bool,
}

impl UploadTemp {
    fn new(dir: &Path) -> Self {
        Self {
            path: dir.join(format!(".tether-upload-{:016x}", rand::random::<u64>())),
            kept: false,
        }
    }

    /// Moves the file to `to`; on failure the file is still removed on drop.
    fn persist(mut self, to: &Path) -> std::io::Result<()> {
        std::fs::rename(&self.path, to)?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for UploadTemp {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Serves a download of `path`: `Sending`, the data, then `Done` with its SHA-256, or the
/// error that refused it.
pub(super) async fn download(
    roots: &Roots,
    path: String,
    mut writer: FrameWriter,
) -> anyhow::Result<()> {
    let (full, _) = match roots.resolve(&path) {
        Ok(r) => r,
        Err(e) => return Ok(writer.message(&e.response()).await?),
    };
    let mut file = match tokio::fs::File::open(&full).await {
        Ok(f) => f,
        Err(e) => return Ok(writer.message(&FileError::io(&path, &e).response()).await?),
    };
    let meta = file.metadata().await?;
    if meta.is_dir() {
        let e = FileError::new(
            FileErrorCode::InvalidTarget,
            format!("{path}: is a directory (zip it first)"),
        );
        return Ok(writer.message(&e.response()).await?);
    }
    writer
        .message(&FileResponse::Sending { size: meta.len() })
        .await?;
    let mut hasher = Sha256::new();
    let mut sent = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        sent += n as u64;
        writer
            .send(&Frame::data(bytes::Bytes::copy_from_slice(&buf[..n])))
            .await?;
    }
    writer.send(&Frame::end_of_data()).await?;
    writer
        .message(&FileResponse::Done {
            size: sent,
            sha256: hex::encode(hasher.finalize()),
        })
        .await?;
    writer.finish().await?;
    Ok(())
}

/// Serves an upload to `path` of `size` bytes: `Ready`, the data, then `Done` with its
/// SHA-256, or the error that refused it. With `if_sha256`, an existing file is replaced only
/// if it still has that content.
pub(super) async fn upload(
    roots: &Roots,
    path: String,
    size: u64,
    overwrite: bool,
    if_sha256: Option<String>,
    mut reader: FrameReader,
    mut writer: FrameWriter,
) -> anyhow::Result<()> {
    let (full, root) = match roots.resolve(&path) {
        Ok(r) => r,
        Err(e) => return Ok(writer.message(&e.response()).await?),
    };
    if let Ok(meta) = full.symlink_metadata() {
        if meta.is_dir() {
            let e = FileError::new(
                FileErrorCode::InvalidTarget,
                format!("{path}: is a directory"),
            );
            return Ok(writer.message(&e.response()).await?);
        }
        if let Some(expected) = &if_sha256 {
            let current = sha256_file(&full).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
            if &current != expected {
                let e = FileError::new(
                    FileErrorCode::Conflict,
                    format!("{path}: changed on the device since it was downloaded"),
                );
                return Ok(writer.message(&e.response()).await?);
            }
        } else if !overwrite {
            let e = FileError::new(
                FileErrorCode::AlreadyExists,
                format!("{path}: already exists"),
            );
            return Ok(writer.message(&e.response()).await?);
        }
    }
    let dir = full
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root.path.clone());
    let temp = UploadTemp::new(&dir);
    let mut file = match tokio::fs::File::create(&temp.path).await {
        Ok(f) => f,
        Err(e) => return Ok(writer.message(&FileError::io(&path, &e).response()).await?),
    };
    writer.message(&FileResponse::Ready).await?;
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let result: anyhow::Result<()> = async {
        loop {
            let frame = reader.expect().await?;
            match frame.kind {
                FrameKind::Data => {
                    received += frame.payload.len() as u64;
                    if received > size {
                        anyhow::bail!("more data than announced");
                    }
                    hasher.update(&frame.payload);
                    file.write_all(&frame.payload).await?;
                }
                FrameKind::EndOfData => break,
                FrameKind::Message => anyhow::bail!("unexpected message during an upload"),
            }
        }
        file.flush().await?;
        file.sync_all().await?;
        Ok(())
    }
    .await;
    drop(file);
    if let Err(e) = result {
        let e = FileError::new(FileErrorCode::Corrupt, format!("{path}: {e}"));
        return Ok(writer.message(&e.response()).await?);
    }
    if received != size {
        let e = FileError::new(
            FileErrorCode::Corrupt,
            format!("{path}: received {received} bytes, {size} were announced"),
        );
        return Ok(writer.message(&e.response()).await?);
    }
    if let Err(e) = temp.persist(&full) {
        return Ok(writer.message(&FileError::io(&path, &e).response()).await?);
    }
    writer
        .message(&FileResponse::Done {
            size: received,
            sha256: hex::encode(hasher.finalize()),
        })
        .await?;
    writer.finish().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_temp_file_never_outlives_its_upload() {
        let dir = tempfile::tempdir().unwrap();
        let temps = |d: &Path| {
            std::fs::read_dir(d)
                .unwrap()
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(".tether-upload-")
                })
                .count()
        };
        // Abandoned: removed on drop.
        let temp = UploadTemp::new(dir.path());
        std::fs::write(&temp.path, b"partial").unwrap();
        drop(temp);
        assert_eq!(temps(dir.path()), 0);
        // The final rename fails (a name longer than the file system allows): removed too.
        let temp = UploadTemp::new(dir.path());
        std::fs::write(&temp.path, b"data").unwrap();
        let e = temp.persist(&dir.path().join("n".repeat(300))).unwrap_err();
        assert!(e.to_string().contains("too long"), "{e}");
        assert_eq!(temps(dir.path()), 0);
        // Positive control: a good name keeps the data and leaves no temp file.
        let temp = UploadTemp::new(dir.path());
        std::fs::write(&temp.path, b"data").unwrap();
        temp.persist(&dir.path().join("ok.txt")).unwrap();
        assert_eq!(std::fs::read(dir.path().join("ok.txt")).unwrap(), b"data");
        assert_eq!(temps(dir.path()), 0);
    }
}

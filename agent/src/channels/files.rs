//! The file manager: browse, transfer, rename, move, copy, delete, mkdir, zip and find, confined
//! to configured roots. Technicians see paths as `/<root>/<relative path>`; any path that
//! would leave its root — a `..` component, an absolute path elsewhere, a symbolic link
//! pointing outside, at any depth — is refused with a clear error before anything is touched
//! (see [`super::confine`]).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tether_proto::channels::{Entry, EntryKind, FileErrorCode, FileRequest, FileResponse};
use tether_proto::frame::{Frame, FrameKind};
use tether_transport::{FrameReader, FrameWriter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Size of the data frames a download sends.
const CHUNK: usize = 64 * 1024;

pub use super::confine::{FileError, Root, Roots};

/// The entry a technician sees for a device path under `root` (links not followed).
fn entry_of(root: &Root, full: &Path) -> Result<Entry, FileError> {
    let shown = Roots::display(root, full);
    let meta = full
        .symlink_metadata()
        .map_err(|e| FileError::io(&shown, &e))?;
    use std::os::unix::fs::MetadataExt;
    let ft = meta.file_type();
    Ok(Entry {
        path: shown,
        kind: if ft.is_symlink() {
            EntryKind::Symlink
        } else if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_file() {
            EntryKind::File
        } else {
            EntryKind::Other
        },
        size: meta.len(),
        modified: meta.mtime(),
        mode: meta.mode() & 0o7777,
    })
}

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

fn copy_tree(from: &Path, to: &Path, shown: &str) -> Result<(), FileError> {
    let meta = from
        .symlink_metadata()
        .map_err(|e| FileError::io(shown, &e))?;
    if meta.file_type().is_symlink() {
        // Links are not followed (they could point anywhere); they are skipped.
        return Ok(());
    }
    if meta.is_dir() {
        std::fs::create_dir(to).map_err(|e| FileError::io(shown, &e))?;
        for entry in std::fs::read_dir(from).map_err(|e| FileError::io(shown, &e))? {
            let entry = entry.map_err(|e| FileError::io(shown, &e))?;
            copy_tree(&entry.path(), &to.join(entry.file_name()), shown)?;
        }
        Ok(())
    } else {
        std::fs::copy(from, to)
            .map(|_| ())
            .map_err(|e| FileError::io(shown, &e))
    }
}

fn zip_paths(sources: &[(PathBuf, String)], dest: &Path, shown: &str) -> Result<(), FileError> {
    let file = std::fs::File::create(dest).map_err(|e| FileError::io(shown, &e))?;
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let zerr =
        |e: zip::result::ZipError| FileError::new(FileErrorCode::Io, format!("{shown}: {e}"));
    fn add(
        zip: &mut zip::ZipWriter<std::fs::File>,
        path: &Path,
        name: &str,
        options: zip::write::SimpleFileOptions,
        shown: &str,
    ) -> Result<(), FileError> {
        let meta = path
            .symlink_metadata()
            .map_err(|e| FileError::io(shown, &e))?;
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        if meta.is_dir() {
            zip.add_directory(format!("{name}/"), options)
                .map_err(|e| FileError::new(FileErrorCode::Io, format!("{shown}: {e}")))?;
            for entry in std::fs::read_dir(path).map_err(|e| FileError::io(shown, &e))? {
                let entry = entry.map_err(|e| FileError::io(shown, &e))?;
                let child = format!("{name}/{}", entry.file_name().to_string_lossy());
                add(zip, &entry.path(), &child, options, shown)?;
            }
        } else {
            zip.start_file(name, options)
                .map_err(|e| FileError::new(FileErrorCode::Io, format!("{shown}: {e}")))?;
            let mut f = std::fs::File::open(path).map_err(|e| FileError::io(shown, &e))?;
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = f.read(&mut buf).map_err(|e| FileError::io(shown, &e))?;
                if n == 0 {
                    break;
                }
                zip.write_all(&buf[..n])
                    .map_err(|e| FileError::io(shown, &e))?;
            }
        }
        Ok(())
    }
    for (path, name) in sources {
        add(&mut zip, path, name, options, shown)?;
    }
    zip.finish().map_err(zerr)?;
    Ok(())
}

fn find(
    root: &Root,
    dir: &Path,
    pattern: &str,
    max: usize,
    out: &mut Vec<Entry>,
    depth: usize,
) -> bool {
    if depth > 32 {
        return false;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    for entry in entries.flatten() {
        if out.len() >= max {
            return true;
        }
        let path = entry.path();
        if entry
            .file_name()
            .to_string_lossy()
            .to_lowercase()
            .contains(pattern)
            && let Ok(e) = entry_of(root, &path)
        {
            out.push(e);
        }
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && find(root, &path, pattern, max, out, depth + 1) {
            return true;
        }
    }
    false
}

/// Carries out one request that needs no data transfer.
pub fn simple(roots: &Roots, request: &FileRequest) -> Result<FileResponse, FileError> {
    match request {
        FileRequest::Roots => Ok(FileResponse::Entries {
            entries: roots
                .iter()
                .filter_map(|r| entry_of(r, &r.path).ok())
                .collect(),
            truncated: false,
        }),
        FileRequest::List { path } => {
            let (full, root) = roots.resolve(path)?;
            let mut entries = Vec::new();
            for entry in std::fs::read_dir(&full).map_err(|e| FileError::io(path, &e))? {
                let entry = entry.map_err(|e| FileError::io(path, &e))?;
                entries.push(entry_of(root, &entry.path())?);
            }
            entries.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(FileResponse::Entries {
                entries,
                truncated: false,
            })
        }
        FileRequest::Stat { path } => {
            let (full, root) = roots.resolve(path)?;
            Ok(FileResponse::Entry {
                entry: entry_of(root, &full)?,
            })
        }
        FileRequest::Rename { from, to } | FileRequest::Move { from, to } => {
            let (src, _) = roots.resolve(from)?;
            let (dst, root) = roots.resolve(to)?;
            if matches!(request, FileRequest::Rename { .. }) && src.parent() != dst.parent() {
                return Err(FileError::new(
                    FileErrorCode::InvalidTarget,
                    format!("{to}: a rename stays in the same directory; use move"),
                ));
            }
            if dst.symlink_metadata().is_ok() {
                return Err(FileError::new(
                    FileErrorCode::AlreadyExists,
                    format!("{to}: already exists"),
                ));
            }
            std::fs::rename(&src, &dst).map_err(|e| FileError::io(from, &e))?;
            Ok(FileResponse::Entry {
                entry: entry_of(root, &dst)?,
            })
        }
        FileRequest::Copy { from, to } => {
            let (src, _) = roots.resolve(from)?;
            let (dst, root) = roots.resolve(to)?;
            if dst.symlink_metadata().is_ok() {
                return Err(FileError::new(
                    FileErrorCode::AlreadyExists,
                    format!("{to}: already exists"),
                ));
            }
            copy_tree(&src, &dst, from)?;
            Ok(FileResponse::Entry {
                entry: entry_of(root, &dst)?,
            })
        }
        FileRequest::Delete { path, recursive } => {
            let (full, root) = roots.resolve(path)?;
            if full == root.path {
                return Err(FileError::new(
                    FileErrorCode::InvalidTarget,
                    format!("{path}: a root cannot be deleted"),
                ));
            }
            let meta = full
                .symlink_metadata()
                .map_err(|e| FileError::io(path, &e))?;
            if meta.is_dir() {
                if *recursive {
                    std::fs::remove_dir_all(&full)
                } else {
                    std::fs::remove_dir(&full).map_err(|e| {
                        if e.kind() == std::io::ErrorKind::DirectoryNotEmpty {
                            std::io::Error::new(
                                e.kind(),
                                "directory not empty (delete it recursively)",
                            )
                        } else {
                            e
                        }
                    })
                }
            } else {
                std::fs::remove_file(&full)
            }
            .map_err(|e| FileError::io(path, &e))?;
            Ok(FileResponse::Done {
                size: 0,
                sha256: String::new(),
            })
        }
        FileRequest::Mkdir { path, parents } => {
            let (full, root) = roots.resolve(path)?;
            if *parents {
                Roots::create_dirs(root, &full, path)?;
            } else {
                std::fs::create_dir(&full).map_err(|e| FileError::io(path, &e))?;
            }
            Ok(FileResponse::Entry {
                entry: entry_of(root, &full)?,
            })
        }
        FileRequest::Zip { paths, dest } => {
            let (dst, root) = roots.resolve(dest)?;
            if dst.symlink_metadata().is_ok() {
                return Err(FileError::new(
                    FileErrorCode::AlreadyExists,
                    format!("{dest}: already exists"),
                ));
            }
            let mut sources = Vec::new();
            for p in paths {
                let (full, _) = roots.resolve(p)?;
                if full.symlink_metadata().is_err() {
                    return Err(FileError::new(
                        FileErrorCode::NotFound,
                        format!("{p}: not found"),
                    ));
                }
                let name = full
                    .file_name()
                    .map_or_else(|| "root".to_owned(), |n| n.to_string_lossy().into_owned());
                sources.push((full, name));
            }
            if let Err(e) = zip_paths(&sources, &dst, dest) {
                let _ = std::fs::remove_file(&dst);
                return Err(e);
            }
            Ok(FileResponse::Entry {
                entry: entry_of(root, &dst)?,
            })
        }
        FileRequest::Find {
            root: under,
            pattern,
            max,
        } => {
            let (full, root) = roots.resolve(under)?;
            let mut out = Vec::new();
            let truncated = find(
                root,
                &full,
                &pattern.to_lowercase(),
                *max as usize,
                &mut out,
                0,
            );
            Ok(FileResponse::Entries {
                entries: out,
                truncated,
            })
        }
        FileRequest::Download { path } | FileRequest::Upload { path, .. } => Err(FileError::new(
            FileErrorCode::Io,
            format!("{path}: transfers are streamed"),
        )),
    }
}

/// Serves one file-manager channel: one request, its answer, and for transfers the data.
pub async fn serve(
    roots: &Roots,
    mut reader: FrameReader,
    mut writer: FrameWriter,
) -> anyhow::Result<()> {
    let request: FileRequest = reader.message().await?;
    match request {
        FileRequest::Download { path } => {
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
        }
        FileRequest::Upload {
            path,
            size,
            overwrite,
            if_sha256,
        } => {
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
        }
        other => {
            let response = match tokio::task::spawn_blocking({
                let roots = roots.clone();
                move || simple(&roots, &other)
            })
            .await?
            {
                Ok(r) => r,
                Err(e) => e.response(),
            };
            writer.message(&response).await?;
        }
    }
    writer.finish().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Roots) {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join("docs")).unwrap();
        std::fs::write(home.join("docs/report.txt"), "quarterly numbers").unwrap();
        std::fs::write(dir.path().join("secret.txt"), "outside").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), home.join("escape")).unwrap();
        std::os::unix::fs::symlink(dir.path(), home.join("escape-dir")).unwrap();
        let roots = Roots::new(vec![format!("home={}", home.display()).parse().unwrap()]);
        (dir, roots)
    }

    fn err(r: Result<FileResponse, FileError>) -> FileError {
        r.unwrap_err()
    }

    #[test]
    fn mkdir_p_through_a_link_stays_inside() {
        let (d, roots) = setup();
        let e = err(simple(
            &roots,
            &FileRequest::Mkdir {
                path: "/home/escape-dir/planted/deeper".into(),
                parents: true,
            },
        ));
        assert_eq!(e.code, FileErrorCode::OutsideRoots, "{e:?}");
        assert!(e.message.contains("symbolic link"), "{e:?}");
        assert!(!d.path().join("planted").exists());
        // Positive control: the same depth inside the root is created.
        simple(
            &roots,
            &FileRequest::Mkdir {
                path: "/home/planted/deeper".into(),
                parents: true,
            },
        )
        .unwrap();
        assert!(d.path().join("home/planted/deeper").is_dir());
    }

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

    #[test]
    fn every_simple_operation() {
        let (_d, roots) = setup();
        let FileResponse::Entries { entries, .. } = simple(&roots, &FileRequest::Roots).unwrap()
        else {
            panic!()
        };
        assert_eq!(entries[0].path, "/home");

        let FileResponse::Entries { entries, .. } = simple(
            &roots,
            &FileRequest::List {
                path: "/home".into(),
            },
        )
        .unwrap() else {
            panic!()
        };
        let names: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            names,
            vec!["/home/docs", "/home/escape", "/home/escape-dir"]
        );
        assert_eq!(entries[1].kind, EntryKind::Symlink);

        simple(
            &roots,
            &FileRequest::Mkdir {
                path: "/home/a/b".into(),
                parents: true,
            },
        )
        .unwrap();
        let e = err(simple(
            &roots,
            &FileRequest::Mkdir {
                path: "/home/a".into(),
                parents: false,
            },
        ));
        assert_eq!(e.code, FileErrorCode::AlreadyExists);
        simple(
            &roots,
            &FileRequest::Copy {
                from: "/home/docs".into(),
                to: "/home/a/docs".into(),
            },
        )
        .unwrap();
        let FileResponse::Entry { entry } = simple(
            &roots,
            &FileRequest::Stat {
                path: "/home/a/docs/report.txt".into(),
            },
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(entry.size, 17);
        simple(
            &roots,
            &FileRequest::Rename {
                from: "/home/a/docs/report.txt".into(),
                to: "/home/a/docs/r.txt".into(),
            },
        )
        .unwrap();
        let e = err(simple(
            &roots,
            &FileRequest::Rename {
                from: "/home/a/docs/r.txt".into(),
                to: "/home/r.txt".into(),
            },
        ));
        assert_eq!(e.code, FileErrorCode::InvalidTarget);
        simple(
            &roots,
            &FileRequest::Move {
                from: "/home/a/docs/r.txt".into(),
                to: "/home/r.txt".into(),
            },
        )
        .unwrap();
        let FileResponse::Entries { entries, .. } = simple(
            &roots,
            &FileRequest::Find {
                root: "/home".into(),
                pattern: "REPORT".into(),
                max: 10,
            },
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].path, "/home/docs/report.txt");

        simple(
            &roots,
            &FileRequest::Zip {
                paths: vec!["/home/docs".into(), "/home/r.txt".into()],
                dest: "/home/pack.zip".into(),
            },
        )
        .unwrap();
        let file = std::fs::File::open(roots.resolve("/home/pack.zip").unwrap().0).unwrap();
        let mut archive = zip::ZipArchive::new(file).unwrap();
        let mut content = String::new();
        archive
            .by_name("docs/report.txt")
            .unwrap()
            .read_to_string(&mut content)
            .unwrap();
        assert_eq!(content, "quarterly numbers");
        assert!(archive.by_name("r.txt").is_ok());

        let e = err(simple(
            &roots,
            &FileRequest::Delete {
                path: "/home/a".into(),
                recursive: false,
            },
        ));
        assert_eq!(e.code, FileErrorCode::InvalidTarget);
        assert!(e.message.contains("not empty"), "{e:?}");
        simple(
            &roots,
            &FileRequest::Delete {
                path: "/home/a".into(),
                recursive: true,
            },
        )
        .unwrap();
        let e = err(simple(
            &roots,
            &FileRequest::Stat {
                path: "/home/a".into(),
            },
        ));
        assert_eq!(e.code, FileErrorCode::NotFound);
        let e = err(simple(
            &roots,
            &FileRequest::Delete {
                path: "/home".into(),
                recursive: true,
            },
        ));
        assert_eq!(e.code, FileErrorCode::InvalidTarget);
        let e = err(simple(
            &roots,
            &FileRequest::Delete {
                path: "/home/../secret.txt".into(),
                recursive: false,
            },
        ));
        assert_eq!(e.code, FileErrorCode::OutsideRoots);
    }
}

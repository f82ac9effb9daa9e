//! The file manager: browse, transfer, rename, move, copy, delete, mkdir, zip and find, confined
//! to configured roots. Technicians see paths as `/<root>/<relative path>`; any path that
//! would leave its root — a `..` component, an absolute path elsewhere, a symbolic link
//! pointing outside — is refused with a clear error before anything is touched.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};
use tether_proto::channels::{Entry, EntryKind, FileErrorCode, FileRequest, FileResponse};
use tether_proto::frame::{Frame, FrameKind};
use tether_transport::{FrameReader, FrameWriter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Size of the data frames a download sends.
const CHUNK: usize = 64 * 1024;

/// A named root the technician may browse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root {
    /// Name seen by technicians (`home`, `data`, …).
    pub name: String,
    /// Where it is on the device.
    pub path: PathBuf,
}

impl std::str::FromStr for Root {
    type Err = String;

    /// Parses `name=/path`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, path) = s
            .split_once('=')
            .ok_or_else(|| format!("expected NAME=PATH, got {s:?}"))?;
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(format!("invalid root name {name:?}"));
        }
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(format!("root {name} must be an absolute path"));
        }
        Ok(Self {
            name: name.to_owned(),
            path,
        })
    }
}

/// An error to report to the technician.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// Code.
    pub code: FileErrorCode,
    /// Message naming the path.
    pub message: String,
}

impl FileError {
    fn new(code: FileErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn io(path: &str, e: &std::io::Error) -> Self {
        let code = match e.kind() {
            std::io::ErrorKind::NotFound => FileErrorCode::NotFound,
            std::io::ErrorKind::PermissionDenied => FileErrorCode::PermissionDenied,
            std::io::ErrorKind::AlreadyExists => FileErrorCode::AlreadyExists,
            std::io::ErrorKind::DirectoryNotEmpty
            | std::io::ErrorKind::IsADirectory
            | std::io::ErrorKind::NotADirectory => FileErrorCode::InvalidTarget,
            _ => FileErrorCode::Io,
        };
        Self::new(code, format!("{path}: {e}"))
    }

    fn response(&self) -> FileResponse {
        FileResponse::Error {
            code: self.code,
            message: self.message.clone(),
        }
    }
}

/// The roots, and how to map technician paths onto them.
#[derive(Clone, Debug)]
pub struct Roots {
    roots: Vec<Root>,
}

impl Roots {
    /// The configured roots.
    pub fn new(roots: Vec<Root>) -> Self {
        Self { roots }
    }

    /// Resolves a technician path to a device path inside its root. The path need not exist,
    /// but its parent must, and neither may lead outside the root through a symlink.
    pub fn resolve(&self, path: &str) -> Result<(PathBuf, &Root), FileError> {
        let outside = || {
            FileError::new(
                FileErrorCode::OutsideRoots,
                format!("{path}: outside the allowed roots"),
            )
        };
        let mut components = Path::new(path).components();
        if components.next() != Some(Component::RootDir) {
            return Err(FileError::new(
                FileErrorCode::OutsideRoots,
                format!(
                    "{path}: paths start with /<root>, e.g. /{}",
                    self.roots.first().map_or("home", |r| r.name.as_str())
                ),
            ));
        }
        let root_name = match components.next() {
            Some(Component::Normal(n)) => n.to_string_lossy().into_owned(),
            _ => return Err(outside()),
        };
        let root = self
            .roots
            .iter()
            .find(|r| r.name == root_name)
            .ok_or_else(|| {
                FileError::new(
                    FileErrorCode::NotFound,
                    format!("{path}: no root named {root_name}"),
                )
            })?;
        let mut full = root.path.clone();
        for c in components {
            match c {
                Component::Normal(n) => full.push(n),
                Component::CurDir => {}
                // `..` is refused outright rather than normalised.
                Component::ParentDir => {
                    return Err(FileError::new(
                        FileErrorCode::OutsideRoots,
                        format!("{path}: '..' is not allowed"),
                    ));
                }
                _ => return Err(outside()),
            }
        }
        let base = std::fs::canonicalize(&root.path).map_err(|e| FileError::io(&root.name, &e))?;
        // Whatever exists of the path must stay inside the root once links are followed.
        let check = |p: &Path| -> Result<(), FileError> {
            match std::fs::canonicalize(p) {
                Ok(real) if real.starts_with(&base) => Ok(()),
                Ok(_) => Err(FileError::new(
                    FileErrorCode::OutsideRoots,
                    format!("{path}: a symbolic link leads outside the allowed roots"),
                )),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(FileError::io(path, &e)),
            }
        };
        if full.symlink_metadata().is_ok() {
            check(&full)?;
        } else if let Some(parent) = full.parent() {
            check(parent)?;
        }
        Ok((full, root))
    }

    /// The technician path of a device path under `root`.
    fn display(root: &Root, full: &Path) -> String {
        let rel = full.strip_prefix(&root.path).unwrap_or(full);
        let rel = rel.to_string_lossy();
        if rel.is_empty() {
            format!("/{}", root.name)
        } else {
            format!("/{}/{}", root.name, rel)
        }
    }

    fn entry(root: &Root, full: &Path) -> Result<Entry, FileError> {
        let shown = Self::display(root, full);
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
            && let Ok(e) = Roots::entry(root, &path)
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
                .roots
                .iter()
                .filter_map(|r| Roots::entry(r, &r.path).ok())
                .collect(),
            truncated: false,
        }),
        FileRequest::List { path } => {
            let (full, root) = roots.resolve(path)?;
            let mut entries = Vec::new();
            for entry in std::fs::read_dir(&full).map_err(|e| FileError::io(path, &e))? {
                let entry = entry.map_err(|e| FileError::io(path, &e))?;
                entries.push(Roots::entry(root, &entry.path())?);
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
                entry: Roots::entry(root, &full)?,
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
                entry: Roots::entry(root, &dst)?,
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
                entry: Roots::entry(root, &dst)?,
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
                std::fs::create_dir_all(&full)
            } else {
                std::fs::create_dir(&full)
            }
            .map_err(|e| FileError::io(path, &e))?;
            Ok(FileResponse::Entry {
                entry: Roots::entry(root, &full)?,
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
                entry: Roots::entry(root, &dst)?,
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
            let temp = dir.join(format!(".tether-upload-{:016x}", rand::random::<u64>()));
            let mut file = match tokio::fs::File::create(&temp).await {
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
                let _ = tokio::fs::remove_file(&temp).await;
                let e = FileError::new(FileErrorCode::Corrupt, format!("{path}: {e}"));
                return Ok(writer.message(&e.response()).await?);
            }
            if received != size {
                let _ = tokio::fs::remove_file(&temp).await;
                let e = FileError::new(
                    FileErrorCode::Corrupt,
                    format!("{path}: received {received} bytes, {size} were announced"),
                );
                return Ok(writer.message(&e.response()).await?);
            }
            tokio::fs::rename(&temp, &full).await?;
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
    fn paths_are_confined_to_roots() {
        let (_d, roots) = setup();
        for bad in [
            "/home/../secret.txt",
            "/home/docs/../../secret.txt",
            "home/docs",
            "/etc/passwd",
            "/",
        ] {
            let e = roots.resolve(bad).unwrap_err();
            assert!(
                matches!(
                    e.code,
                    FileErrorCode::OutsideRoots | FileErrorCode::NotFound
                ),
                "{bad}: {e:?}"
            );
        }
        assert!(
            roots
                .resolve("/home/../x")
                .unwrap_err()
                .message
                .contains("'..' is not allowed")
        );
        let e = roots.resolve("/home/escape").unwrap_err();
        assert_eq!(e.code, FileErrorCode::OutsideRoots);
        assert!(e.message.contains("symbolic link"), "{e:?}");
        let e = roots.resolve("/home/escape-dir/secret.txt").unwrap_err();
        assert_eq!(e.code, FileErrorCode::OutsideRoots);
        // Creating through an escaping directory link is refused too.
        let e = roots.resolve("/home/escape-dir/new.txt").unwrap_err();
        assert_eq!(e.code, FileErrorCode::OutsideRoots);
        assert!(roots.resolve("/home/docs/report.txt").is_ok());
        assert!(roots.resolve("/home/docs/new.txt").is_ok());
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

    #[test]
    fn roots_parse() {
        assert!("home=/home".parse::<Root>().is_ok());
        assert!("home".parse::<Root>().is_err());
        assert!("home=relative".parse::<Root>().is_err());
        assert!("a/b=/x".parse::<Root>().is_err());
    }
}

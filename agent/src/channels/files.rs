//! The file manager: browse, transfer, rename, move, copy, delete, mkdir, zip and find, confined
//! to configured roots. Technicians see paths as `/<root>/<relative path>`; any path that
//! would leave its root — a `..` component, an absolute path elsewhere, a symbolic link
//! pointing outside, at any depth — is refused with a clear error before anything is touched
//! (see [`super::confine`]).

mod transfer;
mod tree;

use std::path::Path;

use tether_proto::channels::{Entry, EntryKind, FileErrorCode, FileRequest, FileResponse};
use tether_transport::{FrameReader, FrameWriter};

use tree::{copy_tree, find, zip_paths};

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
        FileRequest::Download { path } => transfer::download(roots, path, writer).await,
        FileRequest::Upload {
            path,
            size,
            overwrite,
            if_sha256,
        } => transfer::upload(roots, path, size, overwrite, if_sha256, reader, writer).await,
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
            writer.finish().await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

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

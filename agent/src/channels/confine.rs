//! Keeping the file manager inside its roots. Technicians see paths as
//! `/<root>/<relative path>`; [`Roots::resolve`] maps them onto the device and refuses, before
//! anything is touched, any path that would leave its root: a `..` component, an absolute path
//! elsewhere, a symbolic link anywhere on the way that points outside, or a name the file
//! system cannot hold. [`Roots::create_dirs`] creates missing directories one level at a time,
//! checking each level the same way, so `mkdir -p` cannot be walked out of a root either.
//!
//! What this does not cover: someone on the device swapping a directory for a link between the
//! check and the operation. Technicians cannot create links through the file manager, so only
//! the device's own users (or a technician's shell, which is not confined anyway) could.

use std::path::{Component, Path, PathBuf};

use tether_proto::channels::FileErrorCode;
use tether_proto::channels::FileResponse;

/// The longest file name (one path component), in bytes, that Linux file systems accept
/// (`NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// The longest path, in bytes, the kernel accepts (`PATH_MAX`, terminating NUL included).
pub const PATH_MAX: usize = 4095;

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
    /// An error with `code` and `message`.
    pub fn new(code: FileErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// An I/O error on `path` (the technician's form of it).
    pub fn io(path: &str, e: &std::io::Error) -> Self {
        let code = match e.kind() {
            std::io::ErrorKind::NotFound => FileErrorCode::NotFound,
            std::io::ErrorKind::PermissionDenied => FileErrorCode::PermissionDenied,
            std::io::ErrorKind::AlreadyExists => FileErrorCode::AlreadyExists,
            std::io::ErrorKind::DirectoryNotEmpty
            | std::io::ErrorKind::IsADirectory
            | std::io::ErrorKind::NotADirectory
            | std::io::ErrorKind::InvalidFilename => FileErrorCode::InvalidTarget,
            _ => FileErrorCode::Io,
        };
        Self::new(code, format!("{path}: {e}"))
    }

    /// The answer that carries this error to the technician.
    pub fn response(&self) -> FileResponse {
        FileResponse::Error {
            code: self.code,
            message: self.message.clone(),
        }
    }

    fn link_outside(path: &str) -> Self {
        Self::new(
            FileErrorCode::OutsideRoots,
            format!("{path}: a symbolic link leads outside the allowed roots"),
        )
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

    /// The roots, in the order configured.
    pub fn iter(&self) -> impl Iterator<Item = &Root> {
        self.roots.iter()
    }

    /// Resolves a technician path to a device path inside its root. The path need not exist,
    /// nor its parents; but whatever part of it exists must stay inside the root once every
    /// symbolic link on the way is followed, and every name must fit the file system.
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
                Component::Normal(n) => {
                    // Refused here, before an upload starts, rather than by the final rename
                    // after the data has been received.
                    if n.len() > NAME_MAX {
                        return Err(FileError::new(
                            FileErrorCode::InvalidTarget,
                            format!(
                                "{path}: a name is {} bytes long, the file system allows {NAME_MAX}",
                                n.len()
                            ),
                        ));
                    }
                    full.push(n);
                }
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
        if full.as_os_str().len() > PATH_MAX {
            return Err(FileError::new(
                FileErrorCode::InvalidTarget,
                format!("{path}: longer than the file system allows ({PATH_MAX} bytes)"),
            ));
        }
        let base = std::fs::canonicalize(&root.path).map_err(|e| FileError::io(&root.name, &e))?;
        // The deepest part of the path that exists decides: following it resolves every link
        // above it too. Checking only the path or its parent would miss a linked directory
        // higher up when several levels are still missing (`mkdir -p a/b/c`).
        let mut existing = full.as_path();
        while existing.symlink_metadata().is_err() {
            match existing.parent() {
                Some(parent) if parent.starts_with(&root.path) => existing = parent,
                _ => break,
            }
        }
        match std::fs::canonicalize(existing) {
            Ok(real) if real.starts_with(&base) => {}
            Ok(_) => return Err(FileError::link_outside(path)),
            // A dangling link: harmless as the target itself (it can be stat'ed, renamed or
            // deleted; nothing is written through it), refused on the way to something else.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && existing == full => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(FileError::new(
                    FileErrorCode::OutsideRoots,
                    format!("{path}: a symbolic link on the way leads nowhere inside the roots"),
                ));
            }
            Err(e) => return Err(FileError::io(path, &e)),
        }
        Ok((full, root))
    }

    /// `mkdir -p` for a path [`resolve`](Self::resolve)d under `root`: creates each missing
    /// directory in turn, and checks every level that already exists (links followed) is a
    /// directory inside the root before going below it.
    pub fn create_dirs(root: &Root, full: &Path, shown: &str) -> Result<(), FileError> {
        let base = std::fs::canonicalize(&root.path).map_err(|e| FileError::io(&root.name, &e))?;
        let rel = full.strip_prefix(&root.path).map_err(|_| {
            FileError::new(
                FileErrorCode::OutsideRoots,
                format!("{shown}: outside the allowed roots"),
            )
        })?;
        let mut current = root.path.clone();
        for component in rel.components() {
            let Component::Normal(name) = component else {
                return Err(FileError::new(
                    FileErrorCode::OutsideRoots,
                    format!("{shown}: outside the allowed roots"),
                ));
            };
            current.push(name);
            match std::fs::create_dir(&current) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let real = std::fs::canonicalize(&current).map_err(|e| {
                        if e.kind() == std::io::ErrorKind::NotFound {
                            FileError::new(
                                FileErrorCode::OutsideRoots,
                                format!("{shown}: a symbolic link on the way leads nowhere inside the roots"),
                            )
                        } else {
                            FileError::io(shown, &e)
                        }
                    })?;
                    if !real.starts_with(&base) {
                        return Err(FileError::link_outside(shown));
                    }
                    if !real.is_dir() {
                        return Err(FileError::new(
                            FileErrorCode::InvalidTarget,
                            format!(
                                "{shown}: {} is not a directory",
                                Self::display(root, &current)
                            ),
                        ));
                    }
                }
                Err(e) => return Err(FileError::io(shown, &e)),
            }
        }
        Ok(())
    }

    /// The technician path of a device path under `root`.
    pub fn display(root: &Root, full: &Path) -> String {
        let rel = full.strip_prefix(&root.path).unwrap_or(full);
        let rel = rel.to_string_lossy();
        if rel.is_empty() {
            format!("/{}", root.name)
        } else {
            format!("/{}/{}", root.name, rel)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Roots) {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join("docs")).unwrap();
        std::fs::write(home.join("docs/report.txt"), "quarterly numbers").unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("secret.txt"), "outside").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), home.join("escape")).unwrap();
        std::os::unix::fs::symlink(dir.path(), home.join("escape-dir")).unwrap();
        std::os::unix::fs::symlink(home.join("docs"), home.join("docs-link")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("gone"), home.join("dangling")).unwrap();
        let roots = Roots::new(vec![format!("home={}", home.display()).parse().unwrap()]);
        (dir, roots)
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
    fn a_link_several_levels_up_is_seen() {
        let (_d, roots) = setup();
        // Two and three missing levels below a link that leaves the root.
        for bad in ["/home/escape-dir/new/dir", "/home/escape-dir/outside/a/b/c"] {
            let e = roots.resolve(bad).unwrap_err();
            assert_eq!(e.code, FileErrorCode::OutsideRoots, "{bad}: {e:?}");
            assert!(e.message.contains("symbolic link"), "{e:?}");
        }
        // A dangling link can be named itself, never walked through.
        assert!(roots.resolve("/home/dangling").is_ok());
        let e = roots.resolve("/home/dangling/a/b").unwrap_err();
        assert_eq!(e.code, FileErrorCode::OutsideRoots, "{e:?}");
        // Positive controls: missing levels under a real directory, or under a link that
        // stays inside the root.
        assert!(roots.resolve("/home/new/dir/deeper").is_ok());
        assert!(roots.resolve("/home/docs-link/new/dir").is_ok());
    }

    #[test]
    fn create_dirs_never_leaves_the_root() {
        let (d, roots) = setup();
        let root = roots.iter().next().unwrap().clone();
        let (full, _) = roots.resolve("/home/a/b/c").unwrap();
        Roots::create_dirs(&root, &full, "/home/a/b/c").unwrap();
        assert!(full.is_dir());
        // Existing levels are fine; a link inside the root is followed.
        let (full, _) = roots.resolve("/home/docs-link/x/y").unwrap();
        Roots::create_dirs(&root, &full, "/home/docs-link/x/y").unwrap();
        assert!(root.path.join("docs/x/y").is_dir());
        // Even if resolution were bypassed, a level that leads outside stops the walk.
        let sneaky = root.path.join("escape-dir/planted/deeper");
        let e = Roots::create_dirs(&root, &sneaky, "/home/escape-dir/planted/deeper").unwrap_err();
        assert_eq!(e.code, FileErrorCode::OutsideRoots, "{e:?}");
        assert!(!d.path().join("planted").exists());
        // A file on the way is not a directory.
        let through_file = root.path.join("docs/report.txt/sub");
        let e = Roots::create_dirs(&root, &through_file, "/home/docs/report.txt/sub").unwrap_err();
        assert_eq!(e.code, FileErrorCode::InvalidTarget, "{e:?}");
    }

    #[test]
    fn names_longer_than_the_file_system_allows_are_refused() {
        let (_d, roots) = setup();
        let long = "n".repeat(300);
        let e = roots.resolve(&format!("/home/{long}")).unwrap_err();
        assert_eq!(e.code, FileErrorCode::InvalidTarget);
        assert!(e.message.contains("300 bytes"), "{e:?}");
        let deep = format!("/home{}", "/d".repeat(2100));
        let e = roots.resolve(&deep).unwrap_err();
        assert_eq!(e.code, FileErrorCode::InvalidTarget, "{e:?}");
        // Positive control: the longest allowed name.
        assert!(
            roots
                .resolve(&format!("/home/{}", "n".repeat(NAME_MAX)))
                .is_ok()
        );
    }

    #[test]
    fn roots_parse() {
        assert!("home=/home".parse::<Root>().is_ok());
        assert!("home".parse::<Root>().is_err());
        assert!("home=relative".parse::<Root>().is_err());
        assert!("a/b=/x".parse::<Root>().is_err());
    }
}

//! Walking trees under a root for the file manager: copying, packing into a zip archive and
//! finding by name. Symbolic links are never followed (they could point anywhere).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use tether_proto::channels::{Entry, FileErrorCode};

use super::{CHUNK, FileError, Root, entry_of};

/// Copies `from` to `to`, directories recursively; links inside are skipped.
pub(super) fn copy_tree(from: &Path, to: &Path, shown: &str) -> Result<(), FileError> {
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

/// Packs `sources` (device path, name in the archive) into a new zip archive at `dest`.
pub(super) fn zip_paths(
    sources: &[(PathBuf, String)],
    dest: &Path,
    shown: &str,
) -> Result<(), FileError> {
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

/// Collects into `out` the entries under `dir` whose name contains `pattern` (lower case),
/// at most `max` and 32 levels deep; whether the search stopped at `max`.
pub(super) fn find(
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

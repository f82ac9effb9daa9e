//! Parts on the local filesystem: every part of an upload is written at its offset in one
//! working file (`<work>/data`), so completing the object truncates that file to the
//! journaled parts, appends the last bytes and renames it into place. No recorded byte is
//! read back or copied again, where keeping parts as separate objects would concatenate them
//! at the end (the relay's largest cost while recording to the local store).
//!
//! A part's id names its range in the working file (`data:<offset>:<length>`), so the
//! journal says which bytes of the file are a finished part; bytes past them (a part written
//! but not journaled before a crash) are cut off on recovery, and the tail follows as usual.

use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::multipart::PartId;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use crate::Error;

/// The working file's name in an upload's directory.
pub(super) const DATA: &str = "data";

/// The id of the part at `offset` of `len` bytes.
pub(super) fn part_id(offset: u64, len: u64) -> PartId {
    PartId {
        content_id: format!("{DATA}:{offset}:{len}"),
    }
}

/// The range (offset, length) a part id names; `None` for other ids (part objects written
/// by earlier versions, or a multipart store's ids).
pub(super) fn range(id: &PartId) -> Option<(u64, u64)> {
    let rest = id.content_id.strip_prefix(DATA)?.strip_prefix(':')?;
    let (offset, len) = rest.split_once(':')?;
    Some((offset.parse().ok()?, len.parse().ok()?))
}

fn io_error(path: &std::path::Path, e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: format!("{}: {e}", path.display()).into(),
    }
}

/// Writes `payload` at `offset` of the file at `path` (created, with its directory, if
/// missing), first cutting the file to `offset` when `cut`.
async fn write_at(
    path: std::path::PathBuf,
    offset: u64,
    payload: PutPayload,
    cut: bool,
) -> Result<(), object_store::Error> {
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        if cut {
            file.set_len(offset).map_err(|e| io_error(&path, e))?;
        }
        // Each write has a handle of its own, so parts in flight at once never share a
        // file position.
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| io_error(&path, e))?;
        for chunk in payload.iter() {
            file.write_all(chunk).map_err(|e| io_error(&path, e))?;
        }
        Ok(())
    })
    .await
    .map_err(|e| object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(e),
    })?
}

/// Writes `part` at `offset` of the working file `data`.
pub(super) async fn write_part(
    fs: Arc<LocalFileSystem>,
    data: Path,
    offset: u64,
    part: PutPayload,
) -> Result<PartId, object_store::Error> {
    let len = part.content_length() as u64;
    write_at(fs.path_to_filesystem(&data)?, offset, part, false).await?;
    Ok(part_id(offset, len))
}

/// Completes `key` from the working file `data` whose finished parts are `parts`, plus
/// `last`. `None` when the parts are not ranges of one working file from its start (an
/// upload of an earlier version's part objects): the caller concatenates those.
pub(super) async fn complete(
    fs: &LocalFileSystem,
    data: &Path,
    key: &Path,
    parts: &[PartId],
    last: Option<PutPayload>,
) -> Option<Result<(), Error>> {
    let mut end = 0u64;
    for part in parts {
        let (offset, len) = range(part)?;
        if offset != end {
            return None;
        }
        end += len;
    }
    let done = async {
        // Whatever lies past the journaled parts was never finished: the last bytes go there.
        let path = fs.path_to_filesystem(data)?;
        write_at(path, end, last.unwrap_or_default(), true).await?;
        fs.rename(data, key).await
    };
    Some(
        done.await
            .map_err(|e| Error::store(format!("write {key}"), e)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_ids_name_their_range_and_nothing_else_parses() {
        let id = part_id(5 * 1024 * 1024, 42);
        assert_eq!(range(&id), Some((5 * 1024 * 1024, 42)));
        for other in [
            "uploads/ns/a/u/x.cast/part-00000",
            "data:1",
            "data:x:2",
            "datum:0:1",
            "",
        ] {
            let id = PartId {
                content_id: other.into(),
            };
            assert_eq!(range(&id), None, "{other:?}");
        }
    }
}

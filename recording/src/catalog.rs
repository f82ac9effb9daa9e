//! Finding, reading, holding and deleting recordings.

use std::collections::BTreeMap;

use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use jiff::Timestamp;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use crate::Error;
use crate::layout::{self, LEGAL_HOLD, SESSIONS, SessionRef};
use crate::manifest::Manifest;
use crate::storage::Storage;

/// Writes a recording's manifest.
pub async fn write_manifest(storage: &Storage, manifest: &Manifest) -> Result<(), Error> {
    let key = storage.key(&format!(
        "{}/{}",
        manifest.session.dir(),
        layout::manifest_name(&manifest.id)
    ));
    let body = serde_json::to_vec_pretty(manifest).unwrap_or_default();
    storage
        .store
        .put(&key, PutPayload::from(body))
        .await
        .map(|_| ())
        .map_err(|e| Error::store(format!("write {key}"), e))
}

/// The manifests of a namespace's recordings, or of one session's (all its uids), oldest
/// first.
pub async fn list(
    storage: &Storage,
    namespace: &str,
    session: Option<&str>,
) -> Result<Vec<Manifest>, Error> {
    let dir = match session {
        Some(name) => format!("{}/{name}", SessionRef::namespace_dir(namespace)),
        None => SessionRef::namespace_dir(namespace),
    };
    let prefix = storage.key(&dir);
    let keys: Vec<Path> = storage
        .store
        .list(Some(&prefix))
        .try_filter(|m| futures::future::ready(m.location.as_ref().ends_with(".manifest.json")))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .map_err(|e| Error::store(format!("list {prefix}"), e))?;
    let mut manifests = Vec::with_capacity(keys.len());
    for key in keys {
        match read_manifest(storage, &key).await {
            Ok(m) => manifests.push(m),
            Err(Error::Invalid(message)) => {
                tracing::warn!(%key, %message, "Ignored an unreadable manifest");
            }
            Err(e) => return Err(e),
        }
    }
    manifests.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
    Ok(manifests)
}

/// Reads the manifest stored at `key`.
pub(crate) async fn read_manifest(storage: &Storage, key: &Path) -> Result<Manifest, Error> {
    let bytes = storage
        .store
        .get(key)
        .await
        .map_err(|e| Error::store(format!("read {key}"), e))?
        .bytes()
        .await
        .map_err(|e| Error::store(format!("read {key}"), e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Invalid(format!("{key}: {e}")))
}

/// An object of a session's recordings, as a stream of chunks, with its size.
pub async fn open(
    storage: &Storage,
    session: &SessionRef,
    name: &str,
) -> Result<(u64, BoxStream<'static, Result<bytes::Bytes, Error>>), Error> {
    if name.contains('/') || name.starts_with('.') || name.is_empty() {
        return Err(Error::Invalid(format!("{name:?} is not an object name")));
    }
    let key = storage.key(&format!("{}/{name}", session.dir()));
    let got = storage
        .store
        .get(&key)
        .await
        .map_err(|e| Error::store(format!("read {key}"), e))?;
    let size = got.meta.size;
    let what = format!("read {key}");
    let stream = got
        .into_stream()
        .map_err(move |e| Error::store(what.clone(), e))
        .boxed();
    Ok((size, stream))
}

/// A session directory in the store, for retention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSession {
    /// The session.
    pub session: SessionRef,
    /// When anything in it last changed.
    pub last_modified: Timestamp,
    /// Whether the legal-hold marker is present.
    pub held: bool,
    /// Its objects.
    pub keys: Vec<Path>,
}

/// Every session directory in the store.
pub async fn sessions(storage: &Storage) -> Result<Vec<StoredSession>, Error> {
    let root = storage.key(SESSIONS);
    let all: Vec<object_store::ObjectMeta> = storage
        .store
        .list(Some(&root))
        .try_collect()
        .await
        .map_err(|e| Error::store(format!("list {root}"), e))?;
    let prefix = storage.prefix.as_ref().to_owned();
    let mut by_session: BTreeMap<SessionRef, StoredSession> = BTreeMap::new();
    for meta in all {
        let key = meta.location.as_ref();
        let relative = key
            .strip_prefix(prefix.as_str())
            .unwrap_or(key)
            .trim_start_matches('/');
        let Some((session, rest)) = SessionRef::from_key(relative) else {
            continue;
        };
        let t = Timestamp::from_millisecond(meta.last_modified.timestamp_millis())
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let entry = by_session
            .entry(session.clone())
            .or_insert_with(|| StoredSession {
                session,
                last_modified: t,
                held: false,
                keys: Vec::new(),
            });
        entry.last_modified = entry.last_modified.max(t);
        entry.held |= rest == LEGAL_HOLD;
        entry.keys.push(meta.location);
    }
    Ok(by_session.into_values().collect())
}

/// Deletes a session's recordings and any of its uploads still in progress.
pub async fn delete(storage: &Storage, session: &SessionRef) -> Result<usize, Error> {
    let mut deleted = 0;
    for dir in [session.dir(), session.uploads()] {
        let prefix = storage.key(&dir);
        let keys: Vec<Path> = storage
            .store
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| Error::store(format!("list {prefix}"), e))?;
        for key in keys {
            match storage.store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => return Err(Error::store(format!("delete {key}"), e)),
            }
        }
    }
    Ok(deleted)
}

/// Puts a session's recordings on legal hold (a marker object retention respects), or
/// lifts it.
pub async fn set_legal_hold(
    storage: &Storage,
    session: &SessionRef,
    held: bool,
    note: &str,
) -> Result<(), Error> {
    let key = storage.key(&format!("{}/{LEGAL_HOLD}", session.dir()));
    let result = if held {
        storage
            .store
            .put(&key, PutPayload::from(note.as_bytes().to_vec()))
            .await
            .map(|_| ())
    } else {
        match storage.store.delete(&key).await {
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            other => other,
        }
    };
    result.map_err(|e| Error::store(format!("update {key}"), e))
}

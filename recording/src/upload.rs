//! One object streamed to the store while it is written, surviving a crash of the writer.
//!
//! Bytes collect in a buffer; every `part_size` bytes (at least 5 MiB, the S3 minimum) go out
//! as a multipart part, with a bounded number of parts in flight. Every flush interval the
//! finished parts are recorded in a journal object and the buffer — the bytes not in a part
//! yet — is written as a tail object named after the number of parts it follows
//! (`tail-<parts>`), so at most one flush interval of data is ever only in memory. On a clean
//! finish the buffer becomes the last part and the upload completes; after a crash,
//! [`recover`] completes the upload from the journal's parts and the matching tail, so every
//! finished recording is one readable object.
//!
//! A tail named after fewer parts than the journal lists is stale (its bytes are a prefix of
//! the next part) and ignored, so journal and tail never duplicate or drop bytes between them.
//! The local filesystem has no multipart uploads: its parts are ranges of one working file,
//! renamed into place at the end ([`spool`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt, TryStreamExt};
use object_store::multipart::PartId;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::Error;
use crate::layout::SessionRef;
use crate::manifest::ObjectEntry;
use crate::storage::Storage;

mod pending;
mod recovery;
mod spool;
use pending::Pending;
pub use recovery::{Recovery, recover};

/// The smallest part most stores accept (all but the last part).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

/// How uploads behave.
#[derive(Clone, Debug)]
pub struct UploadSettings {
    /// Bytes per part (at least [`MIN_PART_SIZE`]).
    pub part_size: usize,
    /// Parts uploading at once, per object.
    pub parts_in_flight: usize,
    /// Who is writing (recorded in journals, so a restarted writer recovers its own uploads
    /// at once and others' only once they are stale).
    pub writer: String,
}

impl Default for UploadSettings {
    fn default() -> Self {
        Self {
            part_size: MIN_PART_SIZE,
            parts_in_flight: 2,
            writer: "tether-relay".into(),
        }
    }
}

/// What an upload in progress records about itself.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
struct Journal {
    /// The final object, relative to the prefix.
    object: String,
    /// The manifest listing it, relative to the prefix.
    manifest: String,
    /// The multipart upload id, for stores with resumable multipart uploads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upload_id: Option<String>,
    /// Finished parts: content ids, or part object keys.
    parts: Vec<String>,
    /// Who writes it.
    writer: String,
    /// The manifest entry for the object.
    entry: ObjectEntry,
}

/// A finished object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// Bytes.
    pub bytes: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// A part uploading in a task of its own, so it goes on while the writer takes more bytes
/// (a future in the queue would only run when the writer next waits on the queue). Dropping
/// it, as an upload abandoned on an error does, stops the task.
struct PartTask(JoinHandle<Result<PartId, object_store::Error>>);

impl Future for PartTask {
    type Output = Result<PartId, object_store::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|done| {
            done.unwrap_or_else(|e| {
                Err(object_store::Error::Generic {
                    store: "upload",
                    source: Box::new(e),
                })
            })
        })
    }
}

impl Drop for PartTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An object being written.
pub struct Upload {
    storage: Storage,
    settings: UploadSettings,
    key: Path,
    work: String,
    journal: Journal,
    parts: Vec<PartId>,
    /// Bytes handed out as parts (finished or in flight).
    sent: u64,
    in_flight: FuturesOrdered<PartTask>,
    journaled: usize,
    buffer: Pending,
    /// The tail stored: (parts it follows, buffer length then).
    tail: Option<(usize, usize)>,
    hasher: Sha256,
    bytes: u64,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("object", &self.journal.object)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

fn store_err(what: impl Into<String>) -> impl FnOnce(object_store::Error) -> Error {
    let what = what.into();
    move |e| Error::store(what, e)
}

/// `uploads/<ns>/<name>/<uid>/<object-name>`.
fn work_dir(object: &str) -> String {
    let (session, name) = SessionRef::from_key(object).unwrap_or_else(|| {
        (
            SessionRef {
                namespace: String::new(),
                name: String::new(),
                uid: String::new(),
            },
            object.to_owned(),
        )
    });
    format!("{}/{name}", session.uploads())
}

impl Upload {
    /// Starts an upload of `object` (relative to the prefix), listed in `manifest` as
    /// `entry`. Contacts the store: an unreachable store fails here.
    pub async fn start(
        storage: Storage,
        settings: UploadSettings,
        object: String,
        manifest: String,
        entry: ObjectEntry,
    ) -> Result<Self, Error> {
        let key = storage.key(&object);
        let upload_id = match &storage.multipart {
            Some(m) => Some(
                m.create_multipart(&key)
                    .await
                    .map_err(store_err(format!("start uploading {key}")))?,
            ),
            None => None,
        };
        let work = work_dir(&object);
        let mut upload = Self {
            journal: Journal {
                object,
                manifest,
                upload_id,
                parts: Vec::new(),
                writer: settings.writer.clone(),
                entry,
            },
            storage,
            settings,
            key,
            work,
            parts: Vec::new(),
            sent: 0,
            in_flight: FuturesOrdered::new(),
            journaled: 0,
            buffer: Pending::default(),
            tail: None,
            hasher: Sha256::new(),
            bytes: 0,
        };
        if let Err(e) = upload.write_journal().await {
            // Without a journal nobody could ever complete or find this upload: abort it so
            // the store does not keep (and bill) its parts forever.
            if let (Some(m), Some(id)) = (&upload.storage.multipart, &upload.journal.upload_id) {
                let _ = m.abort_multipart(&upload.key, id).await;
            }
            return Err(e);
        }
        Ok(upload)
    }

    /// The object's key relative to the prefix.
    pub fn object(&self) -> &str {
        &self.journal.object
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends bytes; full parts start uploading (waiting when too many are in flight). The
    /// bytes are kept as given, not copied, until the store has them.
    pub async fn write(&mut self, data: Bytes) -> Result<(), Error> {
        self.hasher.update(&data);
        self.bytes += data.len() as u64;
        self.buffer.push(data);
        let part_size = self.settings.part_size.max(MIN_PART_SIZE);
        while self.buffer.len() >= part_size {
            let part = self.buffer.take(part_size);
            self.send_part(part).await?;
        }
        Ok(())
    }

    async fn send_part(&mut self, part: PutPayload) -> Result<(), Error> {
        while self.in_flight.len() >= self.settings.parts_in_flight.max(1) {
            self.collect_one().await?;
        }
        let idx = self.parts.len() + self.in_flight.len();
        let store = self.storage.clone();
        let key = self.key.clone();
        let id = self.journal.upload_id.clone();
        let part_key = self.storage.key(&format!("{}/part-{idx:05}", self.work));
        let data = self.storage.key(&format!("{}/{}", self.work, spool::DATA));
        let offset = self.sent;
        self.sent += part.content_length() as u64;
        self.in_flight.push_back(PartTask(tokio::spawn(async move {
            match (&store.multipart, id, &store.local) {
                (Some(m), Some(id), _) => m.put_part(&key, &id, idx, part).await,
                (_, _, Some(fs)) => spool::write_part(fs.clone(), data, offset, part).await,
                _ => {
                    store.store.put(&part_key, part).await?;
                    Ok(PartId {
                        content_id: part_key.to_string(),
                    })
                }
            }
        })));
        Ok(())
    }

    async fn collect_one(&mut self) -> Result<(), Error> {
        if let Some(done) = self.in_flight.next().await {
            let part = done.map_err(store_err(format!("upload a part of {}", self.key)))?;
            self.parts.push(part);
        }
        Ok(())
    }

    /// Makes everything written so far durable: waits for parts in flight, journals them,
    /// and stores the buffer as the tail. Cheap when nothing changed.
    pub async fn checkpoint(&mut self) -> Result<(), Error> {
        while !self.in_flight.is_empty() {
            self.collect_one().await?;
        }
        if self.parts.len() > self.journaled {
            self.write_journal().await?;
        }
        let n = self.parts.len();
        let wanted = (!self.buffer.is_empty()).then_some((n, self.buffer.len()));
        if wanted != self.tail {
            if let Some((n, _)) = wanted {
                let key = self.tail_key(n);
                self.storage
                    .store
                    .put(&key, self.buffer.payload())
                    .await
                    .map_err(store_err(format!("write {key}")))?;
            }
            if let Some((old, _)) = self.tail
                && wanted.is_none_or(|(n, _)| n != old)
            {
                let _ = self.storage.store.delete(&self.tail_key(old)).await;
            }
            self.tail = wanted;
        }
        Ok(())
    }

    /// Rewrites the journal so the upload does not look abandoned while idle.
    pub async fn heartbeat(&mut self) -> Result<(), Error> {
        self.write_journal().await
    }

    fn tail_key(&self, parts: usize) -> Path {
        self.storage.key(&format!("{}/tail-{parts:05}", self.work))
    }

    async fn write_journal(&mut self) -> Result<(), Error> {
        self.journal.parts = self.parts.iter().map(|p| p.content_id.clone()).collect();
        let key = self.storage.key(&format!("{}/journal.json", self.work));
        let body = serde_json::to_vec(&self.journal).unwrap_or_default();
        self.storage
            .store
            .put(&key, PutPayload::from(body))
            .await
            .map_err(store_err(format!("write {key}")))?;
        self.journaled = self.parts.len();
        Ok(())
    }

    /// Uploads the rest and completes the object.
    pub async fn finish(mut self) -> Result<Finished, Error> {
        while !self.in_flight.is_empty() {
            self.collect_one().await?;
        }
        let rest = self.buffer.len();
        let last = self.buffer.take(rest);
        let parts = std::mem::take(&mut self.parts);
        complete(
            &self.storage,
            &self.work,
            &self.key,
            self.journal.upload_id.as_ref(),
            parts,
            (rest > 0 || self.bytes == 0).then_some(last),
        )
        .await?;
        clean_up(&self.storage, &self.work).await;
        Ok(Finished {
            bytes: self.bytes,
            sha256: hex::encode(self.hasher.clone().finalize()),
        })
    }
}

/// Completes an upload (working directory `work`) from its parts and an optional last part.
async fn complete(
    storage: &Storage,
    work: &str,
    key: &Path,
    upload_id: Option<&String>,
    mut parts: Vec<PartId>,
    last: Option<PutPayload>,
) -> Result<(), Error> {
    if let Some(fs) = &storage.local {
        let data = storage.key(&format!("{work}/{}", spool::DATA));
        if let Some(done) = spool::complete(fs, &data, key, &parts, last.clone()).await {
            return done;
        }
    }
    match (&storage.multipart, upload_id) {
        (Some(m), Some(id)) => {
            if let Some(last) = last {
                let idx = parts.len();
                parts.push(
                    m.put_part(key, id, idx, last)
                        .await
                        .map_err(store_err(format!("upload the last part of {key}")))?,
                );
            }
            m.complete_multipart(key, id, parts)
                .await
                .map_err(store_err(format!("complete {key}")))?;
        }
        _ => {
            // Parts are objects (written by an earlier version): concatenate them.
            let mut upload = storage
                .store
                .put_multipart(key)
                .await
                .map_err(store_err(format!("write {key}")))?;
            let result = async {
                for part in &parts {
                    let bytes = storage
                        .store
                        .get(&Path::from(part.content_id.as_str()))
                        .await?
                        .bytes()
                        .await?;
                    upload.put_part(PutPayload::from(bytes)).await?;
                }
                if let Some(last) = last {
                    upload.put_part(last).await?;
                }
                upload.complete().await
            }
            .await;
            if let Err(e) = result {
                return Err(Error::store(format!("write {key}"), e));
            }
        }
    }
    Ok(())
}

/// Removes an upload's working objects (journal, tails, parts).
async fn clean_up(storage: &Storage, work: &str) {
    let prefix = storage.key(work);
    let keys: Vec<_> = storage
        .store
        .list(Some(&prefix))
        .map_ok(|m| m.location)
        .filter_map(|r| async move { r.ok() })
        .collect()
        .await;
    for key in keys {
        if let Err(e) = storage.store.delete(&key).await {
            warn!(%key, error = %e, "Failed to remove a finished upload's working object");
        }
    }
}

/// SHA-256 and size of an object, read back.
pub async fn checksum(storage: &Storage, key: &Path) -> Result<Finished, Error> {
    let mut stream = storage
        .store
        .get(key)
        .await
        .map_err(store_err(format!("read {key}")))?
        .into_stream();
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(store_err(format!("read {key}")))?;
        bytes += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok(Finished {
        bytes,
        sha256: hex::encode(hasher.finalize()),
    })
}

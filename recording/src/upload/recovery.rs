//! Completing uploads a writer left behind (a crash, a lost pod): from the journal's parts
//! and the tail that matches them, each becomes one readable object and its manifest says
//! `Recovered`.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::stream::TryStreamExt;
use jiff::Timestamp;
use object_store::multipart::PartId;
use object_store::{ObjectStoreExt, PutPayload};
use tracing::{info, warn};

use super::{Finished, Journal, checksum, clean_up, complete, store_err};
use crate::Error;
use crate::layout::{SessionRef, UPLOADS};
use crate::manifest::{Manifest, ObjectEntry, State};
use crate::storage::Storage;

/// What [`recover`] did.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Sessions whose recordings changed (their status should be refreshed).
    pub sessions: Vec<SessionRef>,
    /// Objects completed.
    pub completed: usize,
    /// Uploads left for later (not stale yet, or the store failed).
    pub pending: usize,
}

/// Completes abandoned uploads: those `writer` left (at once) and anyone's that have not
/// changed for `stale_after` (their writer is gone). Each becomes a readable object holding
/// everything up to its writer's last flush, and its manifest says `Recovered`.
pub async fn recover(
    storage: &Storage,
    writer: &str,
    stale_after: Duration,
) -> Result<Recovery, Error> {
    let uploads = storage.key(UPLOADS);
    let all: Vec<object_store::ObjectMeta> = storage
        .store
        .list(Some(&uploads))
        .try_collect()
        .await
        .map_err(store_err(format!("list {uploads}")))?;
    // Newest change per upload directory.
    let mut newest: BTreeMap<String, Timestamp> = BTreeMap::new();
    for meta in &all {
        let key = meta.location.as_ref();
        if let Some((dir, _)) = key.rsplit_once('/') {
            let t = Timestamp::from_millisecond(meta.last_modified.timestamp_millis())
                .unwrap_or(Timestamp::UNIX_EPOCH);
            let e = newest.entry(dir.to_owned()).or_insert(t);
            *e = (*e).max(t);
        }
    }
    let now = Timestamp::now();
    let stale = jiff::SignedDuration::try_from(stale_after).unwrap_or_default();
    let mut report = Recovery::default();
    for meta in all
        .iter()
        .filter(|m| m.location.as_ref().ends_with("/journal.json"))
    {
        let key = &meta.location;
        let journal: Journal = match storage.store.get(key).await {
            Ok(r) => match r.bytes().await.map(|b| serde_json::from_slice(&b)) {
                Ok(Ok(j)) => j,
                Ok(Err(e)) => {
                    warn!(%key, error = %e, "Ignored an unreadable upload journal");
                    continue;
                }
                Err(e) => return Err(Error::store(format!("read {key}"), e)),
            },
            // Another relay recovered it meanwhile.
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(Error::store(format!("read {key}"), e)),
        };
        let dir = key.as_ref().trim_end_matches("/journal.json").to_owned();
        let changed = newest.get(&dir).copied().unwrap_or(now);
        if journal.writer != writer && now.duration_since(changed) < stale {
            report.pending += 1;
            continue;
        }
        let work = dir
            .strip_prefix(storage.prefix.as_ref())
            .unwrap_or(&dir)
            .trim_start_matches('/')
            .to_owned();
        let tail_key = storage.key(&format!("{work}/tail-{:05}", journal.parts.len()));
        let tail = match storage.store.get(&tail_key).await {
            Ok(r) => Some(
                r.bytes()
                    .await
                    .map_err(store_err(format!("read {tail_key}")))?,
            ),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => return Err(Error::store(format!("read {tail_key}"), e)),
        };
        let object = storage.key(&journal.object);
        let parts = journal
            .parts
            .iter()
            .map(|c| PartId {
                content_id: c.clone(),
            })
            .collect::<Vec<_>>();
        let last = match tail {
            Some(t) => Some(PutPayload::from(t)),
            None if parts.is_empty() => Some(PutPayload::new()),
            None => None,
        };
        // Completed already (a crash, or a failed clean-up, after completing)? Then it holds
        // everything; completing again from the journal could only lose the last bytes.
        let exists = storage.store.head(&object).await.is_ok();
        if !exists
            && let Err(e) = complete(
                storage,
                &work,
                &object,
                journal.upload_id.as_ref(),
                parts,
                last,
            )
            .await
        {
            warn!(object = %object, error = %e, "Failed to recover an upload; will retry");
            report.pending += 1;
            continue;
        }
        let sum = checksum(storage, &object).await?;
        info!(object = %object, bytes = sum.bytes, "Recovered an abandoned recording upload");
        // The manifest says so before the journal goes: a recovery interrupted in between
        // is simply done again.
        if let Some(session) = record_recovered(
            storage,
            &journal.manifest,
            journal.entry.clone(),
            sum,
            changed,
        )
        .await?
            && !report.sessions.contains(&session)
        {
            report.sessions.push(session);
        }
        clean_up(storage, &work).await;
        report.completed += 1;
    }
    Ok(report)
}

/// Writes a recovered object's size and checksum into its manifest, which then says
/// `Recovered` if it still said `Recording`. `None` when the manifest is missing or unreadable.
async fn record_recovered(
    storage: &Storage,
    manifest_key: &str,
    entry: ObjectEntry,
    sum: Finished,
    last_flush: Timestamp,
) -> Result<Option<SessionRef>, Error> {
    let key = storage.key(manifest_key);
    let mut manifest: Manifest = match storage.store.get(&key).await {
        Ok(r) => {
            let b = r.bytes().await.map_err(store_err(format!("read {key}")))?;
            match serde_json::from_slice(&b) {
                Ok(m) => m,
                Err(e) => {
                    warn!(%key, error = %e, "Ignored an unreadable manifest");
                    return Ok(None);
                }
            }
        }
        Err(e) => {
            warn!(%key, error = %e, "A recovered upload's manifest is missing");
            return Ok(None);
        }
    };
    let updated = ObjectEntry {
        bytes: sum.bytes,
        sha256: Some(sum.sha256),
        ended_at: entry.ended_at.or(Some(last_flush)),
        ..entry
    };
    match manifest.objects.iter_mut().find(|o| o.name == updated.name) {
        Some(o) => *o = updated,
        None => manifest.objects.push(updated),
    }
    if manifest.state == State::Recording {
        manifest.state = State::Recovered;
    }
    if manifest.ended_at.is_none() {
        manifest.ended_at = manifest.objects.iter().filter_map(|o| o.ended_at).max();
    }
    crate::catalog::write_manifest(storage, &manifest).await?;
    Ok(Some(manifest.session))
}

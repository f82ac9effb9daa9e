//! Recordings on the local filesystem (the default store): a whole session, and recovery of
//! uploads a crashed writer left behind.
#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use tether_recording::asciicast::{Cast, Header};
use tether_recording::events::{Event, What};
use tether_recording::manifest::{ObjectEntry, ObjectKind, State};
use tether_recording::upload::{MIN_PART_SIZE, Upload, UploadSettings, recover};
use tether_recording::{Recorder, RecorderSettings, SessionRef, Storage, StoreConfig, catalog};

fn session() -> SessionRef {
    SessionRef {
        namespace: "helpdesk".into(),
        name: "printer".into(),
        uid: "0b5e".into(),
    }
}

fn storage(dir: &tempfile::TempDir) -> Storage {
    Storage::open(&StoreConfig::new(format!(
        "file://{}",
        dir.path().display()
    )))
    .unwrap()
}

async fn read(storage: &Storage, session: &SessionRef, name: &str) -> Vec<u8> {
    let (size, stream) = catalog::open(storage, session, name).await.unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    let bytes = chunks.concat();
    assert_eq!(bytes.len() as u64, size);
    bytes
}

#[tokio::test]
async fn a_session_becomes_a_manifest_an_event_log_and_a_cast() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(&dir);
    let recorder = Recorder::start(
        storage.clone(),
        RecorderSettings::default(),
        session(),
        "laptop".into(),
    )
    .await
    .unwrap();
    recorder.technician("carol").await;
    recorder
        .event(What::TechnicianJoined {
            technician: "carol".into(),
            transport: "quic".into(),
        })
        .await;
    let header = Header {
        version: 2,
        width: 80,
        height: 24,
        timestamp: Some(1),
        command: None,
        title: None,
        env: Default::default(),
    };
    let (mut shell, name) = recorder.shell(3, "carol", header).await;
    shell.output("$ echo hé".as_bytes()).await;
    shell.output(b"llo\r\nh\xc3").await;
    shell.output(b"\xa9llo\r\n").await;
    shell.resize(100, 30).await;
    shell.close().await;
    let manifest = recorder.finish("Completed").await;

    assert_eq!(manifest.state, State::Complete);
    assert_eq!(manifest.technicians, vec!["carol".to_owned()]);
    assert_eq!(manifest.objects.len(), 2);
    let cast_entry = manifest.objects.iter().find(|o| o.name == name).unwrap();
    assert_eq!(cast_entry.kind, ObjectKind::Shell);
    let cast = read(&storage, &session(), &name).await;
    assert_eq!(cast.len() as u64, cast_entry.bytes);
    let cast = Cast::parse(std::str::from_utf8(&cast).unwrap()).unwrap();
    assert_eq!(cast.output(), "$ echo héllo\r\nhéllo\r\n");
    assert!(
        cast.events
            .iter()
            .any(|e| e.code == "r" && e.data == "100x30")
    );

    let events_entry = manifest
        .objects
        .iter()
        .find(|o| o.kind == ObjectKind::Events)
        .unwrap();
    let log = read(&storage, &session(), &events_entry.name).await;
    use sha2::Digest;
    assert_eq!(
        events_entry.sha256.as_deref(),
        Some(hex::encode(sha2::Sha256::digest(&log)).as_str())
    );
    let events: Vec<Event> = std::str::from_utf8(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(matches!(events[0].what, What::RecordingStarted { .. }));
    assert!(matches!(events[1].what, What::TechnicianJoined { .. }));
    assert!(matches!(
        events.last().unwrap().what,
        What::SessionEnded { .. }
    ));

    // The catalog lists it, and nothing of the upload machinery is left.
    let listed = catalog::list(&storage, "helpdesk", Some("printer"))
        .await
        .unwrap();
    assert_eq!(listed, vec![manifest]);
    let uploads: Vec<_> = storage
        .store
        .list(Some(&storage.key("uploads")))
        .try_collect()
        .await
        .unwrap();
    assert!(uploads.is_empty(), "{uploads:?}");
}

fn entry(name: &str) -> ObjectEntry {
    ObjectEntry {
        name: name.into(),
        kind: ObjectKind::Shell,
        channel: Some(1),
        technician: Some("carol".into()),
        bytes: 0,
        sha256: None,
        started_at: jiff::Timestamp::now(),
        ended_at: None,
    }
}

#[tokio::test]
async fn a_crashed_writer_loses_only_what_it_had_not_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(&dir);
    // A manifest for the recording, as the recorder writes it at the start.
    let id = tether_recording::layout::recording_id(jiff::Timestamp::now());
    catalog::write_manifest(
        &storage,
        &tether_recording::Manifest {
            id: id.clone(),
            session: session(),
            device: "laptop".into(),
            relay: "relay-a".into(),
            technicians: vec!["carol".into()],
            started_at: jiff::Timestamp::now(),
            ended_at: None,
            state: State::Recording,
            error: None,
            objects: Vec::new(),
        },
    )
    .await
    .unwrap();
    let manifest_key = format!(
        "{}/{}",
        session().dir(),
        tether_recording::layout::manifest_name(&id)
    );
    let name = format!("{id}.shell-9.cast");
    let settings = UploadSettings {
        writer: "relay-a".into(),
        ..UploadSettings::default()
    };
    let mut upload = Upload::start(
        storage.clone(),
        settings.clone(),
        format!("{}/{name}", session().dir()),
        manifest_key,
        entry(&name),
    )
    .await
    .unwrap();
    // One full part and a tail are flushed; then more bytes that never are.
    let part: Vec<u8> = (0..MIN_PART_SIZE).map(|i| (i % 251) as u8).collect();
    upload.write(Bytes::from(part.clone())).await.unwrap();
    upload
        .write(Bytes::from_static(b"flushed tail"))
        .await
        .unwrap();
    upload.checkpoint().await.unwrap();
    upload.write(Bytes::from_static(b" lost")).await.unwrap();
    // The finished part is a range of the upload's working file, not a copy of its own.
    let data = dir
        .path()
        .join(format!("uploads/helpdesk/printer/0b5e/{name}/data"));
    assert_eq!(
        std::fs::metadata(&data).unwrap().len(),
        MIN_PART_SIZE as u64
    );
    // A next part was being written when the writer crashed: bytes past the journaled part.
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&data)
            .unwrap();
        file.write_all(&[0xee; 1000]).unwrap();
    }
    drop(upload); // the crash

    // Someone else's upload is left alone until it is stale.
    let other = recover(&storage, "relay-b", Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!((other.completed, other.pending), (0, 1));
    // Its own writer, restarted, completes it at once.
    let report = recover(&storage, "relay-a", Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!((report.completed, report.pending), (1, 0));
    assert_eq!(report.sessions, vec![session()]);

    let bytes = read(&storage, &session(), &name).await;
    let mut expected = part.clone();
    expected.extend_from_slice(b"flushed tail");
    assert_eq!(bytes.len(), expected.len());
    assert!(
        bytes == expected,
        "the recovered object is the flushed bytes"
    );

    let manifest = &catalog::list(&storage, "helpdesk", Some("printer"))
        .await
        .unwrap()[0];
    assert_eq!(manifest.state, State::Recovered);
    let recovered = manifest.objects.iter().find(|o| o.name == name).unwrap();
    assert_eq!(recovered.bytes, expected.len() as u64);
    assert!(recovered.sha256.is_some() && recovered.ended_at.is_some());
    // Nothing left to recover, and nothing of the upload left behind.
    let again = recover(&storage, "relay-b", Duration::ZERO).await.unwrap();
    assert_eq!((again.completed, again.pending), (0, 0));
    assert!(!data.exists());
    assert!(!dir.path().join("uploads/helpdesk/printer/0b5e").exists());
}

#[tokio::test]
async fn legal_hold_and_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(&dir);
    let recorder = Recorder::start(
        storage.clone(),
        RecorderSettings::default(),
        session(),
        "laptop".into(),
    )
    .await
    .unwrap();
    recorder.finish("Completed").await;
    catalog::set_legal_hold(&storage, &session(), true, "case 42")
        .await
        .unwrap();
    let stored = catalog::sessions(&storage).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].held);
    catalog::set_legal_hold(&storage, &session(), false, "")
        .await
        .unwrap();
    assert!(!catalog::sessions(&storage).await.unwrap()[0].held);
    let deleted = catalog::delete(&storage, &session()).await.unwrap();
    assert_eq!(deleted, 2, "manifest and event log");
    assert!(catalog::sessions(&storage).await.unwrap().is_empty());
    assert!(
        storage
            .store
            .head(&storage.key(&session().dir()))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn an_object_of_several_parts_finishes_whole_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(&dir);
    let name = "r1.shell-2.cast";
    let object = format!("{}/{name}", session().dir());
    let mut upload = Upload::start(
        storage.clone(),
        UploadSettings {
            parts_in_flight: 3,
            ..UploadSettings::default()
        },
        object.clone(),
        format!("{}/r1.manifest.json", session().dir()),
        entry(name),
    )
    .await
    .unwrap();
    // Two and a half parts in uneven writes, with a checkpoint in the middle of a part.
    let data: Vec<u8> = (0..MIN_PART_SIZE * 5 / 2)
        .map(|i| (i % 253) as u8 ^ (i >> 16) as u8)
        .collect();
    for (n, chunk) in data.chunks(777_777).enumerate() {
        upload.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        if n == 9 {
            upload.checkpoint().await.unwrap();
        }
    }
    let finished = upload.finish().await.unwrap();
    assert_eq!(finished.bytes, data.len() as u64);
    let stored = storage
        .store
        .get(&storage.key(&object))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(stored == data, "the object is every byte, in order");
    assert_eq!(
        finished.sha256,
        tether_recording::upload::checksum(&storage, &storage.key(&object))
            .await
            .unwrap()
            .sha256
    );
    assert!(!dir.path().join("uploads").join("helpdesk").exists());
}

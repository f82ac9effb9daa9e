//! Recording one session: a writer task owns the session's uploads (the event log and one
//! object per shell or desktop channel) and flushes them on a timer; channels hand it bytes
//! through a bounded queue, so a slow store slows the session instead of growing memory.
//!
//! Starting a recording writes its manifest and opens its event log, so an unreachable store
//! fails [`Recorder::start`] — the caller can refuse the session. A storage error later stops
//! the recording and is published on [`Recorder::failure`]; what was written stays readable.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use jiff::Timestamp;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::asciicast::{self, Utf8Stream};
use crate::events::{Event, What};
use crate::layout::{self, SessionRef};
use crate::manifest::{Manifest, ObjectEntry, ObjectKind, State};
use crate::storage::Storage;
use crate::upload::{Upload, UploadSettings};
use crate::{Error, catalog};

/// The shortest flush interval used, whatever is configured.
pub const MIN_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// The longest flush interval allowed: uploads must change well within the time after which
/// another relay takes them for abandoned.
pub const MAX_FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// How a session's recording behaves.
#[derive(Clone, Debug)]
pub struct RecorderSettings {
    /// Part size, parts in flight, writer name.
    pub upload: UploadSettings,
    /// How often buffered bytes are made durable (the most a crash can lose).
    pub flush_interval: Duration,
    /// How often an idle upload says it is alive (so no one takes it for abandoned).
    pub heartbeat: Duration,
    /// Chunks queued between the channels and the writer.
    pub queue: usize,
}

impl Default for RecorderSettings {
    fn default() -> Self {
        Self {
            upload: UploadSettings::default(),
            flush_interval: Duration::from_secs(2),
            heartbeat: Duration::from_secs(60),
            queue: 64,
        }
    }
}

/// An object of the recording (the event log is [`ObjectId::EVENTS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectId(u64);

impl ObjectId {
    /// The event log.
    pub const EVENTS: Self = Self(0);
}

enum Command {
    Open {
        id: ObjectId,
        entry: ObjectEntry,
        first: Bytes,
    },
    Append {
        id: ObjectId,
        bytes: Bytes,
    },
    Close {
        id: ObjectId,
    },
    Technician(String),
    Finish {
        reason: String,
        reply: oneshot::Sender<Manifest>,
    },
}

struct Shared {
    failure: watch::Sender<Option<String>>,
    failed: AtomicBool,
    manifest: watch::Sender<Manifest>,
    next: AtomicU64,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// A session's recording. Cheap to clone; every clone feeds the same writer.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    id: String,
    session: SessionRef,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("id", &self.id)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// Starts recording a session: writes the manifest and opens the event log. Fails when
    /// the store cannot be written.
    pub async fn start(
        storage: Storage,
        settings: RecorderSettings,
        session: SessionRef,
        device: String,
    ) -> Result<Self, Error> {
        let now = Timestamp::now();
        let id = layout::recording_id(now);
        let events_name = format!("{id}.events.jsonl");
        let manifest = Manifest {
            id: id.clone(),
            session: session.clone(),
            device: device.clone(),
            relay: settings.upload.writer.clone(),
            technicians: Vec::new(),
            started_at: now,
            ended_at: None,
            state: State::Recording,
            error: None,
            objects: vec![ObjectEntry {
                name: events_name.clone(),
                kind: ObjectKind::Events,
                channel: None,
                technician: None,
                bytes: 0,
                sha256: None,
                started_at: now,
                ended_at: None,
            }],
        };
        catalog::write_manifest(&storage, &manifest).await?;
        let manifest_key = format!("{}/{}", session.dir(), layout::manifest_name(&id));
        let mut events = Upload::start(
            storage.clone(),
            settings.upload.clone(),
            format!("{}/{events_name}", session.dir()),
            manifest_key.clone(),
            manifest.objects[0].clone(),
        )
        .await?;
        let started = Event::now(What::RecordingStarted {
            device,
            relay: settings.upload.writer.clone(),
        });
        events.write(Bytes::from(started.line())).await?;
        events.checkpoint().await?;

        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let shared = Arc::new(Shared {
            failure: watch::channel(None).0,
            failed: AtomicBool::new(false),
            manifest: watch::channel(manifest.clone()).0,
            next: AtomicU64::new(1),
            task: Mutex::new(None),
        });
        let writer = Writer {
            storage,
            settings,
            manifest,
            manifest_key,
            uploads: BTreeMap::from([(ObjectId::EVENTS, (events, Instant::now()))]),
            shared: shared.clone(),
            failed: None,
        };
        let task = tokio::spawn(writer.run(rx));
        *shared.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        info!(recording = %id, session = %session.name, namespace = %session.namespace, "Started recording a session");
        Ok(Self {
            tx,
            shared,
            id,
            session,
        })
    }

    /// The recording id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The session recorded.
    pub fn session(&self) -> &SessionRef {
        &self.session
    }

    /// Whether recording stopped on an error.
    pub fn is_failed(&self) -> bool {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// The error that stopped the recording, once there is one.
    pub fn failure(&self) -> watch::Receiver<Option<String>> {
        self.shared.failure.subscribe()
    }

    /// The manifest as it evolves (objects opened and finished, state).
    pub fn manifest(&self) -> watch::Receiver<Manifest> {
        self.shared.manifest.subscribe()
    }

    async fn send(&self, command: Command) {
        if !self.is_failed() && self.tx.send(command).await.is_err() {
            // The writer is gone without saying why (it cannot, short of a bug): the
            // recording has stopped all the same, and whoever depends on it must know.
            self.stopped("the recording's writer stopped unexpectedly");
        }
    }

    /// Marks the recording as failed from the outside: what the relay could not hand to the
    /// recording in time (a full buffer) is lost, and a session that must be recorded ends.
    pub fn fail(&self, message: &str) {
        self.stopped(message);
    }

    /// Marks the recording as failed from the outside (the writer cannot report it).
    fn stopped(&self, message: &str) {
        if !self.shared.failed.swap(true, Ordering::Relaxed) {
            warn!(recording = %self.id, %message, "Recording failed");
            self.shared.failure.send_replace(Some(message.to_owned()));
        }
    }

    /// Appends an event to the log.
    pub async fn event(&self, what: What) {
        let line = Event::now(what).line();
        self.send(Command::Append {
            id: ObjectId::EVENTS,
            bytes: Bytes::from(line),
        })
        .await;
    }

    /// Notes a technician in the manifest.
    pub async fn technician(&self, name: &str) {
        self.send(Command::Technician(name.to_owned())).await;
    }

    /// Opens an object for a channel, starting with `first` (e.g. a header).
    pub async fn open(
        &self,
        kind: ObjectKind,
        channel: u64,
        technician: &str,
        first: Bytes,
    ) -> (ObjectId, String) {
        let id = ObjectId(self.shared.next.fetch_add(1, Ordering::Relaxed));
        let name = format!(
            "{}.{}-{channel}.{}",
            self.id,
            kind.as_str(),
            extension(kind)
        );
        let entry = ObjectEntry {
            name: name.clone(),
            kind,
            channel: Some(channel),
            technician: Some(technician.to_owned()),
            bytes: 0,
            sha256: None,
            started_at: Timestamp::now(),
            ended_at: None,
        };
        self.send(Command::Open { id, entry, first }).await;
        (id, name)
    }

    /// Appends bytes to an object.
    pub async fn append(&self, id: ObjectId, bytes: Bytes) {
        self.send(Command::Append { id, bytes }).await;
    }

    /// Finishes an object.
    pub async fn close(&self, id: ObjectId) {
        self.send(Command::Close { id }).await;
    }

    /// Opens a shell channel's asciicast recording.
    pub async fn shell(
        &self,
        channel: u64,
        technician: &str,
        header: asciicast::Header,
    ) -> (ShellRecording, String) {
        let (id, name) = self
            .open(
                ObjectKind::Shell,
                channel,
                technician,
                Bytes::from(header.line()),
            )
            .await;
        (
            ShellRecording {
                recorder: self.clone(),
                id,
                started: Instant::now(),
                utf8: Utf8Stream::default(),
            },
            name,
        )
    }

    /// Ends the recording: the event log gets `SessionEnded`, every object completes, and
    /// the final manifest is written and returned.
    pub async fn finish(&self, reason: &str) -> Manifest {
        let (reply, answer) = oneshot::channel();
        let sent = self
            .tx
            .send(Command::Finish {
                reason: reason.to_owned(),
                reply,
            })
            .await;
        // A failed send hands the reply sender back inside the error: never wait on it then.
        let answered = match sent {
            Ok(()) => answer.await.ok(),
            Err(_) => None,
        };
        let manifest = answered.unwrap_or_else(|| self.shared.manifest.borrow().clone());
        let task = self
            .shared
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        manifest
    }
}

fn extension(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Events => "jsonl",
        ObjectKind::Shell => "cast",
        ObjectKind::Desktop => "rfb",
    }
}

/// A shell channel's recording: output and resizes become asciicast events timed from the
/// channel's start.
pub struct ShellRecording {
    recorder: Recorder,
    id: ObjectId,
    started: Instant,
    utf8: Utf8Stream,
}

impl ShellRecording {
    async fn event(&self, code: &str, data: &str) {
        let line = asciicast::event_line(self.started.elapsed().as_secs_f64(), code, data);
        self.recorder.append(self.id, Bytes::from(line)).await;
    }

    /// Terminal output.
    pub async fn output(&mut self, bytes: &[u8]) {
        if self.recorder.is_failed() {
            return;
        }
        let text = self.utf8.push(bytes);
        if !text.is_empty() {
            self.event("o", &text).await;
        }
    }

    /// A terminal resize.
    pub async fn resize(&self, cols: u16, rows: u16) {
        self.event("r", &format!("{cols}x{rows}")).await;
    }

    /// Ends the recording of this channel.
    pub async fn close(mut self) {
        let rest = self.utf8.finish();
        if !rest.is_empty() {
            self.event("o", &rest).await;
        }
        self.recorder.close(self.id).await;
    }
}

struct Writer {
    storage: Storage,
    settings: RecorderSettings,
    manifest: Manifest,
    manifest_key: String,
    uploads: BTreeMap<ObjectId, (Upload, Instant)>,
    shared: Arc<Shared>,
    failed: Option<String>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        // A zero period would panic; anything shorter than this is pointless anyway.
        let period = self.settings.flush_interval.max(MIN_FLUSH_INTERVAL);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = rx.recv() => match command {
                    Some(Command::Finish { reason, reply }) => {
                        let manifest = self.finish(&reason).await;
                        let _ = reply.send(manifest);
                        return;
                    }
                    Some(command) => {
                        if self.failed.is_none()
                            && let Err(e) = self.handle(command).await
                        {
                            self.fail(e).await;
                        }
                    }
                    None => {
                        self.finish("the relay stopped recording").await;
                        return;
                    }
                },
                _ = tick.tick() => {
                    if self.failed.is_none()
                        && let Err(e) = self.checkpoint().await
                    {
                        self.fail(e).await;
                    }
                }
            }
        }
    }

    async fn handle(&mut self, command: Command) -> Result<(), Error> {
        match command {
            Command::Open { id, entry, first } => {
                let object = format!("{}/{}", self.manifest.session.dir(), entry.name);
                let mut upload = Upload::start(
                    self.storage.clone(),
                    self.settings.upload.clone(),
                    object,
                    self.manifest_key.clone(),
                    entry.clone(),
                )
                .await?;
                upload.write(first).await?;
                self.uploads.insert(id, (upload, Instant::now()));
                self.manifest.objects.push(entry);
                self.publish_manifest().await?;
            }
            Command::Append { id, bytes } => {
                if let Some((upload, _)) = self.uploads.get_mut(&id) {
                    upload.write(bytes).await?;
                }
            }
            Command::Close { id } => {
                if id != ObjectId::EVENTS
                    && let Some((upload, _)) = self.uploads.remove(&id)
                {
                    let name = upload
                        .object()
                        .rsplit('/')
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let done = upload.finish().await?;
                    if let Some(o) = self.manifest.objects.iter_mut().find(|o| o.name == name) {
                        o.bytes = done.bytes;
                        o.sha256 = Some(done.sha256);
                        o.ended_at = Some(Timestamp::now());
                    }
                    self.publish_manifest().await?;
                }
            }
            Command::Technician(name) => {
                if !self.manifest.technicians.contains(&name) {
                    self.manifest.technicians.push(name);
                    self.publish_manifest().await?;
                }
            }
            Command::Finish { .. } => {}
        }
        Ok(())
    }

    async fn checkpoint(&mut self) -> Result<(), Error> {
        let heartbeat = self.settings.heartbeat;
        for (upload, alive) in self.uploads.values_mut() {
            upload.checkpoint().await?;
            if alive.elapsed() >= heartbeat {
                upload.heartbeat().await?;
                *alive = Instant::now();
            }
        }
        Ok(())
    }

    async fn publish_manifest(&mut self) -> Result<(), Error> {
        catalog::write_manifest(&self.storage, &self.manifest).await?;
        self.shared.manifest.send_replace(self.manifest.clone());
        Ok(())
    }

    async fn fail(&mut self, error: Error) {
        let message = error.to_string();
        warn!(recording = %self.manifest.id, error = %message, "Recording failed");
        self.failed = Some(message.clone());
        self.shared.failed.store(true, Ordering::Relaxed);
        self.manifest.state = State::Failed;
        self.manifest.error = Some(message.clone());
        self.shared.manifest.send_replace(self.manifest.clone());
        self.shared.failure.send_replace(Some(message));
        // Uploads stay journaled; the relay's recovery completes them once the store answers.
        self.uploads.clear();
    }

    async fn finish(&mut self, reason: &str) -> Manifest {
        if self.failed.is_none()
            && let Err(e) = self.finish_all(reason).await
        {
            self.fail(e).await;
        }
        if self.failed.is_some() {
            // Best effort: say in the store that it failed — unless a recovery has meanwhile
            // completed the abandoned uploads and described them, which this manifest (written
            // before the failure) would undo.
            let key = self.storage.key(&self.manifest_key);
            match catalog::read_manifest(&self.storage, &key).await {
                Ok(stored) if stored.state != State::Recording => {
                    self.manifest = stored;
                }
                _ => {
                    let _ = catalog::write_manifest(&self.storage, &self.manifest).await;
                }
            }
        }
        info!(recording = %self.manifest.id, state = self.manifest.state.as_str(), bytes = self.manifest.bytes(), "Finished recording a session");
        self.manifest.clone()
    }

    async fn finish_all(&mut self, reason: &str) -> Result<(), Error> {
        if let Some((events, _)) = self.uploads.get_mut(&ObjectId::EVENTS) {
            let line = Event::now(What::SessionEnded {
                reason: reason.to_owned(),
            })
            .line();
            events.write(Bytes::from(line)).await?;
        }
        // Channels first, the event log last.
        let ids: Vec<ObjectId> = self.uploads.keys().rev().copied().collect();
        let now = Timestamp::now();
        for id in ids {
            if let Some((upload, _)) = self.uploads.remove(&id) {
                let name = upload
                    .object()
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let done = upload.finish().await?;
                if let Some(o) = self.manifest.objects.iter_mut().find(|o| o.name == name) {
                    o.bytes = done.bytes;
                    o.sha256 = Some(done.sha256);
                    o.ended_at = Some(now);
                }
            }
        }
        self.manifest.state = State::Complete;
        self.manifest.ended_at = Some(now);
        self.publish_manifest().await
    }
}

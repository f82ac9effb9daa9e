//! Splicing a technician's channel stream to the agent's, frame by frame: each direction is
//! copied independently (an end of data in one direction does not stop the other), bytes are
//! counted per channel kind, each side sends at the channel's priority (interactive channels
//! before bulk ones on the same connection), and the session's end closes both sides at once.
//!
//! Recording is off the forwarding path: each forwarded frame (a reference-counted `Bytes`,
//! not a copy) goes into a bounded queue that the channel's recording task drains, decoding,
//! encoding and hashing there. Forwarding does not wait for the recording while it keeps up;
//! a burst that puts it [`RECORDING_QUEUE`] frames behind holds forwarding back until it
//! catches up, so nothing is lost; a recording that makes no progress for
//! [`RECORDING_STALL`] fails (a `Required` session then ends, an `Enabled` one goes on
//! unrecorded and says so) and forwarding goes on without it. The splice returns only after the
//! recording task has seen every forwarded frame and closed the channel's recording.

use tether_proto::frame::{Frame, FrameKind};
use tether_proto::message::ChannelKind;
use tether_transport::{FrameReader, FrameWriter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use tether_proto::channels::DesktopMessage;
use tracing::info;

use crate::desktop::{DesktopFilter, Judged};
use crate::metrics::Metrics;
use crate::tap::{Tap, Way};

/// Frames a channel's recording may fall behind its forwarding before forwarding waits.
pub const RECORDING_QUEUE: usize = 256;

/// How long forwarding waits for a recording that is [`RECORDING_QUEUE`] frames behind before
/// the recording fails (the store or the encoder has stopped making progress).
pub const RECORDING_STALL: std::time::Duration = std::time::Duration::from_secs(2);

/// Copies frames from `from` to `to` until the end of the stream, an error, or `stop`,
/// counting bytes and handing each forwarded frame to the channel's recording, if any. On a
/// desktop channel's technician → agent half, each frame is judged by the session's desktop
/// filter first; a refusal stops both directions (through `stop`) and is returned, with `to`
/// unfinished, so the caller can tell the technician why before closing.
async fn pump(
    mut from: FrameReader,
    mut to: FrameWriter,
    counter: prometheus::IntCounter,
    record: Option<(mpsc::Sender<(Way, Frame)>, Way)>,
    overflow: &(dyn Fn() + Sync),
    mut filter: Option<&mut DesktopFilter>,
    stop: &CancellationToken,
) -> (FrameWriter, Option<String>) {
    let mut record = record;
    loop {
        let frame = tokio::select! {
            frame = from.next() => frame,
            () = stop.cancelled() => return (to, None),
        };
        let Ok(Some(frame)) = frame else { break };
        let frame = match filter.as_deref_mut().map(|f| f.judge(frame.clone())) {
            None => frame,
            Some(Judged::Forward(frame)) => frame,
            Some(Judged::Hold) => continue,
            Some(Judged::Close(reason)) => {
                stop.cancel();
                return (to, Some(reason));
            }
        };
        // Queued before it is forwarded: what the other side sees is in the recording, even
        // when the session ends between the two. A full queue (a burst the recording has not
        // caught up with) holds forwarding back for at most RECORDING_STALL; a recording
        // still stuck after that has stopped making progress and fails.
        if let Some((queue, way)) = &record {
            let queued = match queue.try_send((*way, frame.clone())) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(item)) => {
                    matches!(
                        tokio::time::timeout(RECORDING_STALL, queue.send(item)).await,
                        Ok(Ok(()))
                    )
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            };
            if !queued {
                overflow();
                record = None;
            }
        }
        let len = frame.payload.len() as u64;
        if to.send(&frame).await.is_err() {
            break;
        }
        if frame.kind == FrameKind::Data {
            counter.inc_by(len);
        }
    }
    let _ = to.finish().await;
    (to, None)
}

/// Feeds a channel's frames to its recording until both directions stopped, then closes it.
async fn record(mut tap: Tap, mut queue: mpsc::Receiver<(Way, Frame)>) {
    while let Some((way, frame)) = queue.recv().await {
        tap.observe(way, &frame).await;
    }
    tap.close().await;
}

/// Joins a technician stream to an agent stream until both directions end or `ended` fires,
/// recording the channel through `tap` when the session is recorded, and passing what the
/// technician sends through `filter` (desktop channels).
pub async fn splice(
    technician: (FrameReader, FrameWriter),
    agent: (FrameReader, FrameWriter),
    kind: ChannelKind,
    ended: CancellationToken,
    metrics: &Metrics,
    tap: Option<Tap>,
    mut filter: Option<DesktopFilter>,
) {
    let (tech_r, tech_w) = technician;
    let (agent_r, agent_w) = agent;
    tech_w.set_priority(kind.priority());
    agent_w.set_priority(kind.priority());
    let to_agent = metrics
        .bytes
        .with_label_values(&[kind.as_str(), "to_agent"]);
    let to_technician = metrics
        .bytes
        .with_label_values(&[kind.as_str(), "to_technician"]);
    let (queue, recording) = match tap {
        Some(tap) => {
            let recorder = tap.recorder().clone();
            let (tx, rx) = mpsc::channel(RECORDING_QUEUE);
            // A task of its own, so that the recording's work runs beside the forwarding
            // (on another core when there is one); owned here and awaited below.
            (Some((tx, recorder)), Some(tokio::spawn(record(tap, rx))))
        }
        None => (None, None),
    };
    {
        let overflow = || {
            if let Some((_, recorder)) = &queue {
                metrics
                    .recording_failures
                    .with_label_values(&["overflow"])
                    .inc();
                recorder.fail(&format!(
                    "the {} channel's recording fell more than {RECORDING_QUEUE} frames behind",
                    kind.as_str()
                ));
            }
        };
        let sender = |way| queue.as_ref().map(|(tx, _)| (tx.clone(), way));
        let stop = CancellationToken::new();
        let both = async {
            tokio::join!(
                pump(
                    tech_r,
                    agent_w,
                    to_agent,
                    sender(Way::ToAgent),
                    &overflow,
                    filter.as_mut(),
                    &stop
                ),
                pump(
                    agent_r,
                    tech_w,
                    to_technician,
                    sender(Way::ToTechnician),
                    &overflow,
                    None,
                    &stop
                )
            )
        };
        tokio::select! {
            ((mut agent_w, refused), (mut tech_w, _)) = both => {
                if let Some(reason) = refused {
                    info!(channel = kind.as_str(), %reason, "Closed a desktop channel the viewer misused");
                    if let Ok(message) = Frame::message(&DesktopMessage::Closed { reason }) {
                        let _ = tech_w.send(&message).await;
                    }
                    let _ = tech_w.finish().await;
                    let _ = agent_w.finish().await;
                }
            }
            () = ended.cancelled() => {}
        }
    }
    // Every sender is gone now: the recording sees the last frame, then closes.
    drop(queue);
    if let Some(recording) = recording {
        let _ = recording.await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

    use tether_proto::message::{Attach, ShellParams};
    use tether_recording::asciicast::Cast;
    use tether_transport::framed::{reader, writer};

    use super::*;
    use crate::tap::tests::{object, recorder};

    /// A framed pipe: what is written to the writer is read from the reader.
    fn pipe() -> (FrameWriter, FrameReader) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (_, a_w) = tokio::io::split(a);
        let (b_r, _) = tokio::io::split(b);
        (writer(a_w), reader(b_r))
    }

    #[tokio::test]
    async fn every_forwarded_frame_is_recorded_in_order_before_the_splice_returns() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, recorder) = recorder(dir.path()).await;
        let attach = Attach {
            kind: ChannelKind::Shell,
            shell: Some(ShellParams::default()),
        };
        let tap = Tap::open(recorder.clone(), 3, "carol", &attach, false).await;
        // technician ⇄ relay ⇄ agent, each leg a pipe per direction.
        let (mut tech_out, relay_from_tech) = pipe();
        let (relay_to_tech, mut tech_in) = pipe();
        let (mut agent_out, relay_from_agent) = pipe();
        let (relay_to_agent, _agent_in) = pipe();
        let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
        let ended = CancellationToken::new();
        let lines: Vec<String> = (0..2_000).map(|i| format!("line {i}\r\n")).collect();
        let agent = async {
            for line in &lines {
                agent_out
                    .send(&Frame::data(line.clone().into_bytes()))
                    .await
                    .unwrap();
            }
            agent_out.finish().await.unwrap();
            tech_out.finish().await.unwrap();
        };
        let technician = async {
            let mut seen = String::new();
            while let Some(frame) = tech_in.next().await.unwrap() {
                seen.push_str(std::str::from_utf8(&frame.payload).unwrap());
            }
            seen
        };
        let (_, seen, ()) = tokio::join!(
            agent,
            technician,
            splice(
                (relay_from_tech, relay_to_tech),
                (relay_from_agent, relay_to_agent),
                ChannelKind::Shell,
                ended,
                &metrics,
                Some(tap),
                None,
            )
        );
        assert_eq!(seen, lines.concat());
        // The splice returned: the channel's recording is complete, nothing is still queued.
        let manifest = recorder.finish("Completed").await;
        let cast = manifest
            .objects
            .iter()
            .find(|o| o.name.ends_with("shell-3.cast"))
            .unwrap();
        let cast = Cast::parse(&object(&storage, &cast.name).await).unwrap();
        assert_eq!(cast.output(), lines.concat());
        assert!(!recorder.is_failed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_recording_that_stalls_fails_and_forwarding_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (_storage, recorder) = recorder(dir.path()).await;
        let (mut from_w, from) = pipe();
        let (to, mut to_r) = pipe();
        // Nobody drains the queue: the recording is as slow as it gets.
        let (queue, _stuck) = mpsc::channel(RECORDING_QUEUE);
        let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
        let overflowed = std::sync::atomic::AtomicUsize::new(0);
        let overflow = || {
            overflowed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            recorder.fail("fell behind");
        };
        let counter = metrics.bytes.with_label_values(&["shell", "to_technician"]);
        let frames = RECORDING_QUEUE + 10;
        let send = async {
            for i in 0..frames {
                from_w
                    .send(&Frame::data(format!("{i}").into_bytes()))
                    .await
                    .unwrap();
            }
            from_w.finish().await.unwrap();
        };
        let receive = async {
            let mut n = 0;
            while to_r.next().await.unwrap().is_some() {
                n += 1;
            }
            n
        };
        let stop = CancellationToken::new();
        let ((), _, received) = tokio::join!(
            send,
            pump(
                from,
                to,
                counter,
                Some((queue, Way::ToTechnician)),
                &overflow,
                None,
                &stop
            ),
            receive
        );
        assert_eq!(received, frames, "forwarding never waits for the recording");
        assert_eq!(overflowed.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(recorder.is_failed());
        assert_eq!(*recorder.failure().borrow(), Some("fell behind".into()));
    }

    #[tokio::test]
    async fn a_refused_viewer_message_closes_the_desktop_channel_with_its_reason() {
        use tether_proto::token::{Clipboard, DesktopPermission, Permissions};
        use tether_rfb::client::ClientMessage;
        let (mut tech_out, relay_from_tech) = pipe();
        let (relay_to_tech, mut tech_in) = pipe();
        let (_agent_out, relay_from_agent) = pipe();
        let (relay_to_agent, mut agent_in) = pipe();
        let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
        let permissions = Permissions {
            desktop: DesktopPermission::Control,
            shell: false,
            files: false,
            chat: false,
            processes: false,
            clipboard: Clipboard::default(),
        };
        let filter = DesktopFilter::new(&permissions, &metrics);
        let technician = async {
            let handshake: Vec<u8> = [
                ClientMessage::Version,
                ClientMessage::Security,
                ClientMessage::Init { shared: true },
            ]
            .iter()
            .flat_map(ClientMessage::encode)
            .collect();
            tech_out.send(&Frame::data(handshake)).await.unwrap();
            // xvp: reboot.
            tech_out
                .send(&Frame::data(vec![250, 0, 1, 3]))
                .await
                .unwrap();
            let mut closed = None;
            while let Ok(Some(frame)) = tech_in.next().await {
                if frame.kind == FrameKind::Message {
                    closed = Some(frame.parse::<DesktopMessage>().unwrap());
                }
            }
            closed
        };
        let agent = async {
            let mut got = Vec::new();
            while let Ok(Some(frame)) = agent_in.next().await {
                got.extend_from_slice(&frame.payload);
            }
            got
        };
        let (closed, got, ()) = tokio::join!(
            technician,
            agent,
            splice(
                (relay_from_tech, relay_to_tech),
                (relay_from_agent, relay_to_agent),
                ChannelKind::Desktop,
                CancellationToken::new(),
                &metrics,
                None,
                Some(filter),
            )
        );
        let Some(DesktopMessage::Closed { reason }) = closed else {
            panic!("the technician is told why");
        };
        assert!(reason.contains("xvp"), "{reason}");
        assert_eq!(
            got.len(),
            12 + 1 + 1,
            "only the handshake reached the agent"
        );
    }
}

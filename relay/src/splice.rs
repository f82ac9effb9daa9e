//! Splicing a technician's channel stream to the agent's, frame by frame: each direction is
//! copied independently (an end of data in one direction does not stop the other), bytes are
//! counted per channel kind, and the session's end closes both sides at once.

use tether_proto::frame::FrameKind;
use tether_proto::message::ChannelKind;
use tether_transport::{FrameReader, FrameWriter};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::tap::{Tap, Way};

/// Copies frames from `from` to `to` until the end of the stream or an error, counting bytes
/// and showing each forwarded frame to the channel's recording, if any.
async fn pump(
    mut from: FrameReader,
    mut to: FrameWriter,
    counter: prometheus::IntCounter,
    tap: Option<(&Mutex<Tap>, Way)>,
) {
    while let Ok(Some(frame)) = from.next().await {
        // Recorded before it is forwarded: what the other side sees is in the recording,
        // even when the session ends between the two.
        if let Some((tap, way)) = tap {
            tap.lock().await.observe(way, &frame).await;
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
}

/// Joins a technician stream to an agent stream until both directions end or `ended` fires,
/// recording the channel through `tap` when the session is recorded.
pub async fn splice(
    technician: (FrameReader, FrameWriter),
    agent: (FrameReader, FrameWriter),
    kind: ChannelKind,
    ended: CancellationToken,
    metrics: &Metrics,
    tap: Option<Tap>,
) {
    let (tech_r, tech_w) = technician;
    let (agent_r, agent_w) = agent;
    let to_agent = metrics
        .bytes
        .with_label_values(&[kind.as_str(), "to_agent"]);
    let to_technician = metrics
        .bytes
        .with_label_values(&[kind.as_str(), "to_technician"]);
    let tap = tap.map(Mutex::new);
    let both = async {
        tokio::join!(
            pump(
                tech_r,
                agent_w,
                to_agent,
                tap.as_ref().map(|t| (t, Way::ToAgent))
            ),
            pump(
                agent_r,
                tech_w,
                to_technician,
                tap.as_ref().map(|t| (t, Way::ToTechnician))
            )
        )
    };
    tokio::select! {
        _ = both => {}
        () = ended.cancelled() => {}
    }
    if let Some(tap) = tap {
        tap.into_inner().close().await;
    }
}

//! Splicing a technician's channel stream to the agent's, frame by frame: each direction is
//! copied independently (an end of data in one direction does not stop the other), bytes are
//! counted per channel kind, and the session's end closes both sides at once.

use tether_proto::frame::FrameKind;
use tether_proto::message::ChannelKind;
use tether_proto::token::Permissions;
use tether_transport::{FrameReader, FrameWriter};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Copies frames from `from` to `to` until the end of the stream or an error, counting bytes.
async fn pump(mut from: FrameReader, mut to: FrameWriter, counter: prometheus::IntCounter) {
    while let Ok(Some(frame)) = from.next().await {
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

/// Joins a technician stream to an agent stream until both directions end or `ended` fires.
pub async fn splice(
    technician: (FrameReader, FrameWriter),
    agent: (FrameReader, FrameWriter),
    kind: ChannelKind,
    _permissions: &Permissions,
    ended: CancellationToken,
    metrics: &Metrics,
) {
    let (tech_r, tech_w) = technician;
    let (agent_r, agent_w) = agent;
    let to_agent = metrics
        .bytes
        .with_label_values(&[kind.as_str(), "to_agent"]);
    let to_technician = metrics
        .bytes
        .with_label_values(&[kind.as_str(), "to_technician"]);
    let both = async {
        tokio::join!(
            pump(tech_r, agent_w, to_agent),
            pump(agent_r, tech_w, to_technician)
        )
    };
    tokio::select! {
        _ = both => {}
        () = ended.cancelled() => {}
    }
}

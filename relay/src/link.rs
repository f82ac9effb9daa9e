//! A connection's control stream after the hello: a queue many tasks write through, closing
//! only once the peer has read the last word, and refusals — every refusal the relay sends
//! goes through [`refuse`], which counts it and closes the connection gracefully.

use std::time::Duration;

use tether_proto::message::{Control, HelloReply, RefusalCode, Refused};
use tether_transport::{Connection, FrameReader, FrameWriter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// Where a connection's control messages queue for its [`control_writer`]; cheap to clone,
/// every clone feeds the same stream. Messages travel boxed: the queue allocates room for 32
/// at a time whatever its bound, and at a few hundred bytes a [`Control`] would have every
/// idle agent hold kilobytes of empty slots.
#[derive(Clone, Debug)]
pub struct ControlTx(mpsc::Sender<Box<Control>>);

/// The reading end of a [`ControlTx`].
pub type ControlRx = mpsc::Receiver<Box<Control>>;

impl ControlTx {
    /// A queue holding up to `bound` messages.
    pub fn channel(bound: usize) -> (Self, ControlRx) {
        let (tx, rx) = mpsc::channel(bound);
        (Self(tx), rx)
    }

    /// Queues a message, waiting for room; fails once the writer is gone.
    pub async fn send(&self, message: Control) -> Result<(), mpsc::error::SendError<Box<Control>>> {
        self.0.send(Box::new(message)).await
    }

    /// Queues a message if there is room now (pings and pongs, which a full queue can drop).
    pub fn try_send(
        &self,
        message: Control,
    ) -> Result<(), mpsc::error::TrySendError<Box<Control>>> {
        self.0.try_send(Box::new(message))
    }

    /// Whether both feed the same stream.
    pub fn same_channel(&self, other: &Self) -> bool {
        self.0.same_channel(&other.0)
    }
}

/// A connection's control stream, after the hello.
pub struct ControlLink {
    /// Reads control messages.
    pub reader: FrameReader,
    /// Writes control messages.
    pub writer: FrameWriter,
}

/// Why a connection is refused: the code and sentence the client sees, and the
/// low-cardinality reason counted in `tether_relay_rejected_total`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The code sent to the client.
    pub code: RefusalCode,
    /// The sentence sent to the client.
    pub message: String,
    /// The metric label.
    pub reason: &'static str,
}

impl Refusal {
    /// A refusal with its code, sentence and metric label.
    pub fn new(code: RefusalCode, message: impl Into<String>, reason: &'static str) -> Self {
        Self {
            code,
            message: message.into(),
            reason,
        }
    }
}

/// Sends `refusal` as the answer to the hello, counts it, and closes the connection once the
/// peer has read it.
pub async fn refuse(
    conn: &Connection,
    mut writer: FrameWriter,
    metrics: &Metrics,
    refusal: Refusal,
) {
    metrics.rejected.with_label_values(&[refusal.reason]).inc();
    debug!(message = %refusal.message, reason = refusal.reason, "Refused a connection");
    let Refusal { code, message, .. } = refusal;
    let _ = writer
        .message(&HelloReply::Refused(Refused { code, message }))
        .await;
    let _ = writer.finish().await;
    close_soon(conn, refusal.reason).await;
}

/// Writes control messages from a queue until it closes or `stop` fires; the queue lets many
/// tasks send on one stream.
pub async fn control_writer(
    mut writer: FrameWriter,
    mut queue: ControlRx,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            message = queue.recv() => {
                let Some(message) = message else { break };
                if let Err(e) = writer.message(&message).await {
                    debug!(error = %e, "Control stream closed");
                    break;
                }
            }
            () = stop.cancelled() => {
                // Drain what was queued before the stop (e.g. a final Ended or Goodbye).
                while let Ok(message) = queue.try_recv() {
                    let _ = writer.message(&message).await;
                }
                break;
            }
        }
    }
    let _ = writer.finish().await;
}

/// How long a peer gets to read a refusal, an end or a goodbye and close on its own.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// Closes a connection once the peer has read what was last sent: the peer closes on its own
/// after a refusal, an end or a goodbye; a peer that does not gets [`CLOSE_GRACE`]. (Closing
/// at once would discard control messages still in flight: the client would see a bare end
/// of stream instead of the reason.)
pub async fn close_soon(conn: &Connection, reason: &str) {
    let _ = tokio::time::timeout(CLOSE_GRACE, conn.closed()).await;
    conn.close(reason);
}

/// Logs a cluster write failure; the data plane never waits on the cluster.
pub fn cluster_warn(result: Result<(), crate::cluster::ClusterError>, what: &str) {
    if let Err(e) = result {
        warn!(error = %e, "Failed to {what}");
    }
}

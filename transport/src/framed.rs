//! Frames over a stream: reading and writing [`Frame`]s with the protocol's size limits.

use bytes::BytesMut;
use tether_proto::frame::{DEFAULT_MAX_PAYLOAD, Decoder, Frame, FrameError, encode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::conn::{BiStream, RecvHalf, SendHalf};

/// A failure reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FramedError {
    /// The stream failed.
    #[error("stream error")]
    Io(#[from] std::io::Error),
    /// The peer sent something malformed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The stream ended before a frame that was required.
    #[error("the stream ended")]
    Closed,
}

/// The room a quiet stream's reads get.
const MIN_READ: usize = 2 * 1024;

/// The most room one read gets, on a busy stream.
const MAX_READ: usize = 64 * 1024;

/// Reads frames from a stream.
pub struct FrameReader {
    recv: RecvHalf,
    buf: BytesMut,
    /// How much room the next read gets: small for a quiet stream (an idle agent's control
    /// stream costs little), growing to [`MAX_READ`] while reads fill it.
    chunk: usize,
    decoder: Decoder,
    /// Bytes read so far.
    pub bytes: u64,
}

impl FrameReader {
    /// A reader with the default payload limit.
    pub fn new(recv: RecvHalf) -> Self {
        Self::with_limit(recv, DEFAULT_MAX_PAYLOAD)
    }

    /// A reader with a payload limit.
    pub fn with_limit(recv: RecvHalf, max_payload: usize) -> Self {
        Self {
            recv,
            buf: BytesMut::new(),
            chunk: MIN_READ,
            decoder: Decoder::new(max_payload),
            bytes: 0,
        }
    }

    /// The next frame, or `None` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Frame>, FramedError> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < MIN_READ / 2 {
                self.buf.reserve(self.chunk);
            }
            let room = self.buf.capacity() - self.buf.len();
            let n = self.recv.read_buf(&mut self.buf).await?;
            if n == room {
                self.chunk = (self.chunk * 2).min(MAX_READ);
            }
            if n == 0 {
                self.decoder.finish(&self.buf)?;
                return Ok(None);
            }
            self.bytes += n as u64;
        }
    }

    /// The next frame, failing at end of stream.
    pub async fn expect(&mut self) -> Result<Frame, FramedError> {
        self.next().await?.ok_or(FramedError::Closed)
    }

    /// The next frame parsed as message `M`.
    pub async fn message<M: serde::de::DeserializeOwned>(&mut self) -> Result<M, FramedError> {
        Ok(self.expect().await?.parse()?)
    }
}

/// Writes frames to a stream.
pub struct FrameWriter {
    send: SendHalf,
    buf: BytesMut,
    max_payload: usize,
    /// Bytes written so far.
    pub bytes: u64,
}

impl FrameWriter {
    /// A writer with the default payload limit.
    pub fn new(send: SendHalf) -> Self {
        Self {
            send,
            // Grown by the first frames to what the stream's frames need.
            buf: BytesMut::new(),
            max_payload: DEFAULT_MAX_PAYLOAD,
            bytes: 0,
        }
    }

    /// Writes one frame and flushes it.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), FramedError> {
        self.buf.clear();
        encode(frame, self.max_payload, &mut self.buf)?;
        self.send.write_all(&self.buf).await?;
        self.send.flush().await?;
        self.bytes += self.buf.len() as u64;
        Ok(())
    }

    /// Writes a message frame.
    pub async fn message<M: serde::Serialize>(&mut self, message: &M) -> Result<(), FramedError> {
        self.send(&Frame::message(message)?).await
    }

    /// Sets how urgent this stream's data is among its connection's streams (see
    /// [`crate::conn::SendStream::set_priority`]).
    pub fn set_priority(&self, priority: i32) {
        self.send.set_priority(priority);
    }

    /// Finishes the stream in this direction.
    pub async fn finish(&mut self) -> Result<(), FramedError> {
        self.send.shutdown().await?;
        Ok(())
    }
}

/// Splits a stream into a frame reader and writer.
pub fn framed(stream: BiStream) -> (FrameReader, FrameWriter) {
    (FrameReader::new(stream.recv), FrameWriter::new(stream.send))
}

/// Reads from any async reader into frames (for tests and local pipes).
pub fn reader<R: AsyncRead + Send + 'static>(r: R) -> FrameReader {
    FrameReader::new(Box::pin(r))
}

/// Writes frames to any async writer.
pub fn writer<W: AsyncWrite + Send + 'static>(w: W) -> FrameWriter {
    FrameWriter::new(Box::pin(crate::conn::Plain::new(w)))
}

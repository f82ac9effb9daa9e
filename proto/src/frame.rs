//! Framing: every stream between agent, relay and technician carries frames.
//!
//! ```text
//! +----------------+--------+------------------------+
//! | length: u32 BE | kind:u8| payload (length-1 B)   |
//! +----------------+--------+------------------------+
//! ```
//!
//! `length` counts the kind byte and the payload. A decoder refuses frames above its limit
//! before buffering them, so a peer can never make it allocate more than the limit, and no
//! input makes it panic: malformed input is an error value.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest payload accepted by default (1 MiB).
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

/// Header size: length and kind.
pub const HEADER_LEN: usize = 5;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// A JSON-encoded protocol message.
    Message,
    /// Opaque channel data (terminal output, file bytes, RFB).
    Data,
    /// End of data in this direction (the stream stays open for messages).
    EndOfData,
}

impl FrameKind {
    fn to_byte(self) -> u8 {
        match self {
            Self::Message => 1,
            Self::Data => 2,
            Self::EndOfData => 3,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Message),
            2 => Some(Self::Data),
            3 => Some(Self::EndOfData),
            _ => None,
        }
    }
}

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What it carries.
    pub kind: FrameKind,
    /// The payload.
    pub payload: Bytes,
}

impl Frame {
    /// A data frame.
    pub fn data(payload: impl Into<Bytes>) -> Self {
        Self {
            kind: FrameKind::Data,
            payload: payload.into(),
        }
    }

    /// An end-of-data frame.
    pub fn end_of_data() -> Self {
        Self {
            kind: FrameKind::EndOfData,
            payload: Bytes::new(),
        }
    }

    /// A message frame holding `message` as JSON.
    pub fn message<M: serde::Serialize>(message: &M) -> Result<Self, FrameError> {
        let json = serde_json::to_vec(message).map_err(|e| FrameError::Encode(e.to_string()))?;
        Ok(Self {
            kind: FrameKind::Message,
            payload: Bytes::from(json),
        })
    }

    /// Parses a message frame's JSON as `M`.
    pub fn parse<M: serde::de::DeserializeOwned>(&self) -> Result<M, FrameError> {
        if self.kind != FrameKind::Message {
            return Err(FrameError::Unexpected(format!(
                "{:?} frame where a message was expected",
                self.kind
            )));
        }
        serde_json::from_slice(&self.payload).map_err(|e| FrameError::BadMessage(e.to_string()))
    }

    /// The encoded size.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

/// A framing error. Every variant is recoverable by closing the stream.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame announces more than the limit.
    #[error("frame of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Announced payload size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A length of zero (no room for the kind byte).
    #[error("frame with zero length")]
    Empty,
    /// An unknown kind byte.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({0} bytes left over)")]
    Truncated(usize),
    /// A message frame's JSON did not parse.
    #[error("malformed message: {0}")]
    BadMessage(String),
    /// A message could not be encoded.
    #[error("failed to encode a message: {0}")]
    Encode(String),
    /// A frame of the wrong kind.
    #[error("unexpected frame: {0}")]
    Unexpected(String),
}

/// Decodes frames from a byte buffer, refusing frames above `max_payload`.
#[derive(Clone, Copy, Debug)]
pub struct Decoder {
    max_payload: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PAYLOAD)
    }
}

impl Decoder {
    /// A decoder with a payload limit.
    pub fn new(max_payload: usize) -> Self {
        Self { max_payload }
    }

    /// The payload limit.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Takes one complete frame off the front of `buf`, or `None` if more bytes are needed.
    /// On error the buffer is left as it was.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let length = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if length == 0 {
            return Err(FrameError::Empty);
        }
        let payload_len = length - 1;
        if payload_len > self.max_payload {
            return Err(FrameError::TooLarge {
                size: payload_len,
                limit: self.max_payload,
            });
        }
        if buf.len() < 5 {
            return Ok(None);
        }
        let kind = FrameKind::from_byte(buf[4]).ok_or(FrameError::UnknownKind(buf[4]))?;
        if buf.len() < HEADER_LEN + payload_len {
            buf.reserve(HEADER_LEN + payload_len - buf.len());
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        let payload = buf.split_to(payload_len).freeze();
        Ok(Some(Frame { kind, payload }))
    }

    /// Called at end of stream: an error if bytes of an incomplete frame remain.
    pub fn finish(&self, buf: &BytesMut) -> Result<(), FrameError> {
        if buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated(buf.len()))
        }
    }
}

/// Appends `frame` to `buf`. Fails if the payload exceeds `max_payload`, so a sender can never
/// produce what its peer must refuse.
pub fn encode(frame: &Frame, max_payload: usize, buf: &mut BytesMut) -> Result<(), FrameError> {
    if frame.payload.len() > max_payload {
        return Err(FrameError::TooLarge {
            size: frame.payload.len(),
            limit: max_payload,
        });
    }
    buf.reserve(frame.encoded_len());
    buf.put_u32(frame.payload.len() as u32 + 1);
    buf.put_u8(frame.kind.to_byte());
    buf.put_slice(&frame.payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(frame: &Frame) -> BytesMut {
        let mut b = BytesMut::new();
        encode(frame, DEFAULT_MAX_PAYLOAD, &mut b).unwrap();
        b
    }

    #[test]
    fn round_trips_and_splits_concatenated_frames() {
        let mut buf = enc(&Frame::data(&b"hello"[..]));
        buf.extend_from_slice(&enc(&Frame::end_of_data()));
        buf.extend_from_slice(&enc(&Frame::message(&serde_json::json!({"a": 1})).unwrap()));
        let d = Decoder::default();
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Frame::data(&b"hello"[..]))
        );
        assert_eq!(d.decode(&mut buf).unwrap(), Some(Frame::end_of_data()));
        let m = d.decode(&mut buf).unwrap().unwrap();
        assert_eq!(m.parse::<serde_json::Value>().unwrap()["a"], 1);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert!(d.finish(&buf).is_ok());
    }

    #[test]
    fn waits_for_partial_frames_byte_by_byte() {
        let full = enc(&Frame::data(vec![7u8; 300]));
        let d = Decoder::default();
        let mut buf = BytesMut::new();
        for (i, byte) in full.iter().enumerate() {
            buf.put_u8(*byte);
            let got = d.decode(&mut buf).unwrap();
            if i + 1 < full.len() {
                assert_eq!(got, None);
            } else {
                assert_eq!(got.unwrap().payload.len(), 300);
            }
        }
    }

    #[test]
    fn refuses_oversized_frames_before_buffering_them() {
        let d = Decoder::new(1024);
        let mut buf = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff, 2][..]);
        assert_eq!(
            d.decode(&mut buf),
            Err(FrameError::TooLarge {
                size: 0x7fff_fffe,
                limit: 1024
            })
        );
        assert!(
            buf.capacity() < 4096,
            "no allocation for the announced size"
        );
        let mut out = BytesMut::new();
        assert!(encode(&Frame::data(vec![0u8; 1025]), 1024, &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn refuses_malformed_headers() {
        let d = Decoder::default();
        assert_eq!(
            d.decode(&mut BytesMut::from(&[0, 0, 0, 0][..])),
            Err(FrameError::Empty)
        );
        assert_eq!(
            d.decode(&mut BytesMut::from(&[0, 0, 0, 1, 9][..])),
            Err(FrameError::UnknownKind(9))
        );
        let truncated = BytesMut::from(&[0, 0, 0, 9, 2, 1, 2][..]);
        assert_eq!(d.finish(&truncated), Err(FrameError::Truncated(7)));
        let frame = Frame::data(&b"{}"[..]);
        assert!(matches!(
            frame.parse::<serde_json::Value>(),
            Err(FrameError::Unexpected(_))
        ));
        let bad = Frame {
            kind: FrameKind::Message,
            payload: Bytes::from_static(b"{not json"),
        };
        assert!(matches!(
            bad.parse::<serde_json::Value>(),
            Err(FrameError::BadMessage(_))
        ));
    }

    /// Arbitrary bytes never panic the decoder (a cheap, deterministic stand-in for the fuzz
    /// target in `proto/fuzz`).
    #[test]
    fn arbitrary_input_never_panics() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let d = Decoder::new(4096);
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut buf: BytesMut = (0..len).map(|_| (next() % 256) as u8).collect();
            // Bias towards small lengths so some frames complete.
            if len >= 4 && next() % 2 == 0 {
                buf[0] = 0;
                buf[1] = 0;
            }
            while let Ok(Some(frame)) = d.decode(&mut buf) {
                let _ = frame.parse::<serde_json::Value>();
            }
        }
    }
}

//! Tether's wire protocol and session tokens. No I/O: everything here is a pure function of
//! its inputs (the current time included), so it can be tested and fuzzed alone.
//!
//! - [`frame`]: length-prefixed frames with hard size limits;
//! - [`message`]: the handshake, control messages and channel attachment;
//! - [`channels`]: file manager, chat and process messages;
//! - [`token`]: session tokens, keys, verification and revocations;
//! - [`text`]: escaping strings users and devices supply before they are shown.

#![forbid(unsafe_code)]

pub mod channels;
pub mod duration;
pub mod frame;
pub mod message;
pub mod text;
pub mod token;

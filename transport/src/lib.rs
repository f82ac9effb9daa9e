//! Tether's connections. The relay listens for QUIC and for TLS over TCP on the same port
//! number; agents and technicians dial QUIC first and fall back to TCP (optionally through an
//! HTTP CONNECT proxy) where UDP is blocked. Both transports look the same to the rest of
//! Tether: a [`Connection`] whose client side opens bidirectional streams carrying frames.

#![forbid(unsafe_code)]

pub mod congestion;
pub mod conn;
pub mod endpoint;
pub mod framed;
pub mod peer;
pub mod tls;

pub use conn::{BiStream, Connection, Transport};
pub use endpoint::{ConnectError, Dial, Incoming, Listener, Prefer, TlsUpdater};
pub use framed::{FrameReader, FrameWriter, FramedError, framed};

#[cfg(test)]
mod tests;

//! The RFB protocol (RFC 6143, "VNC") as Tether's desktop channel speaks it, without I/O.
//!
//! The desktop channel carries RFB 3.8 with security type None inside a channel the relay
//! has already authenticated at both ends. Three parts of Tether read it: the agent's server,
//! the relay's filter and the CLI's player; all of them share this crate.
//!
//! - [`client`]: the messages a viewer sends, and [`client::Parser`], a streaming parser that
//!   takes bytes as they arrive and never panics, allocates without bound or loops on any
//!   input (fuzzed in `rfb/fuzz`).
//! - [`auth`]: VNC authentication, for local viewers of `kubectl tether vnc`.
//! - [`encoding`]: encoding and pseudo-encoding numbers and the allow-list the relay keeps.
//! - [`server`]: what a desktop server sends: handshake, ServerInit, framebuffer updates
//!   encoded for each viewer by an [`server::Encoder`], clipboard and extension replies.
//! - [`encode`]: the encoders behind it: Tight (fill, palette, zlib and JPEG), ZRLE (tiles,
//!   palettes and run lengths over one zlib stream), Raw, and CopyRect for scrolls found
//!   between two frames.
//! - [`decode`]: the viewer's side: a [`decode::Decoder`] that turns a server's stream into
//!   the framebuffer it draws (Raw, CopyRect, ZRLE, Tight with JPEG, the cursor, resizes), for
//!   playing and exporting recordings; it never panics on any input (fuzzed in `rfb/fuzz`).
//! - [`filter`]: the relay's enforcement of a session's policy on the viewer's messages:
//!   view-only drops input, clipboard per direction, SetEncodings rewritten to the allow-list,
//!   anything unknown closes the channel.

#![forbid(unsafe_code)]

pub mod auth;
pub mod client;
pub mod decode;
pub mod encode;
pub mod encoding;
pub mod filter;
pub mod server;

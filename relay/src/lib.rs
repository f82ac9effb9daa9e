//! Tether's relay. Agents dial out to it and technicians connect to it; it joins them per
//! session and enforces, on its own, what the operator decided: who may connect (signed
//! session tokens and client certificates), until when (the token's session end, with a
//! countdown), and which sessions are over (revocations published by the operator).
//!
//! Modules from the bottom up (each uses only those above it in this list):
//! [`metrics`], [`trust`], [`cluster`], [`recording`] (the store, `status.recording`),
//! [`env`] (what every handler shares), [`link`] (control streams and refusals),
//! [`devices`] (connected agents), [`session`] (the session state machine and the
//! registry of live sessions), [`desktop`] (the desktop channel's input filter), [`splice`] and
//! [`tap`] (forwarding and recording a channel),
//! the connection handlers [`agents`], [`technicians`], [`enroll`] and [`auditors`], and
//! [`server`], which accepts connections and hands them to their handler.

#![forbid(unsafe_code)]

pub mod agents;
pub mod auditors;
pub mod cluster;
pub mod desktop;
pub mod devices;
pub mod enroll;
pub mod env;
pub mod link;
pub mod metrics;
pub mod peers;
pub mod recording;
pub mod server;
pub mod session;
pub mod splice;
pub mod tap;
pub mod technicians;
pub mod trust;

pub use env::Settings;
pub use server::Relay;

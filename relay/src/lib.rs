//! Tether's relay. Agents dial out to it and technicians connect to it; it joins them per
//! session and enforces, on its own, what the operator decided: who may connect (signed
//! session tokens and client certificates), until when (the token's session end, with a
//! countdown), and which sessions are over (revocations published by the operator).

#![forbid(unsafe_code)]

pub mod agents;
pub mod auditors;
pub mod cluster;
pub mod enroll;
pub mod metrics;
pub mod recording;
pub mod server;
pub mod sessions;
pub mod splice;
pub mod tap;
pub mod technicians;
pub mod trust;

pub use server::{Relay, Settings};

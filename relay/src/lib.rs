//! Tether's relay. Agents dial out to it and technicians connect to it; it joins them per
//! session and enforces, on its own, what the operator decided: who may connect (signed
//! session tokens), until when (the token's session end), and which sessions are over
//! (revocations published by the operator).

#![forbid(unsafe_code)]

pub mod trust;

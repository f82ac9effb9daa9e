//! Tether's wire protocol and session tokens. No I/O: everything here is a pure function of
//! its inputs (the current time included), so it can be tested and fuzzed alone.

#![forbid(unsafe_code)]

pub mod token;

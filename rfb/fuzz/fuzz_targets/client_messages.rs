//! Fuzzes the viewer-message parser and the relay's filter: no input may panic, allocate
//! beyond the limits, or loop; the first byte picks the policy and how the rest is split.
//! Run with `cargo +nightly fuzz run client_messages` in `rfb/`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_rfb::client::{Limits, Parser};
use tether_rfb::filter::{Filter, Policy};

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(knobs >> 4) + 1;
    let mut parser = if knobs & 1 == 0 {
        Parser::new(Limits::default())
    } else {
        Parser::after_handshake(Limits::default())
    };
    for piece in rest.chunks(chunk) {
        parser.push(piece);
        while let Ok(Some(_)) = parser.next_message() {}
    }
    let mut filter = Filter::new(Policy {
        input: knobs & 2 != 0,
        clipboard_to_device: knobs & 4 != 0,
        clipboard_from_device: knobs & 8 != 0,
        limits: Limits::default(),
    });
    for piece in rest.chunks(chunk) {
        if filter.push(piece).close.is_some() {
            break;
        }
    }
});

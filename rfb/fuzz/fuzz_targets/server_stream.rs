//! Fuzzes the viewer-side decoder of a server's stream (what recordings are played and
//! exported with): no input may panic, allocate beyond the limits, or loop. The first byte
//! picks how the rest is split, whether a valid handshake comes first (so the fuzzer spends
//! its time on messages), and whether a snapshot is taken and resumed halfway.
//! Run with `cargo +nightly fuzz run server_stream` in `rfb/`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_rfb::client::PixelFormat;
use tether_rfb::decode::{Decoder, Limits};
use tether_rfb::server;

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(knobs >> 4) + 1;
    let limits = Limits {
        max_pixels: 256 * 256,
        max_name: 1024,
        max_cursor: 64 * 64,
    };
    let mut dec = Decoder::new(limits);
    if knobs & 1 == 0 {
        let mut hs = server::version().to_vec();
        hs.extend_from_slice(&server::security_types());
        hs.extend_from_slice(&server::security_ok());
        hs.extend(server::server_init(64, 48, &PixelFormat::BGRX, "fuzz"));
        dec.push(&hs);
    }
    if knobs & 2 != 0 {
        // The viewer's side too: its SetPixelFormat changes how pixels are read.
        let mut viewer = server::version().to_vec();
        viewer.extend_from_slice(&[1, 1]);
        dec.push_viewer(&viewer);
        dec.push_viewer(rest.get(..20).unwrap_or_default());
    }
    let half = rest.len() / 2;
    for (i, piece) in rest.chunks(chunk).enumerate() {
        if knobs & 4 != 0 && i * chunk >= half && i * chunk < half + chunk {
            dec = Decoder::resume(&dec.snapshot());
        }
        if dec.feed(piece, |_| {}).is_err() {
            break;
        }
    }
    let _ = dec.composed();
});

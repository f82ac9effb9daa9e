//! Fuzzes the frame decoder and message parsing: no input may panic, allocate beyond the
//! limit, or loop. Run with `cargo +nightly fuzz run frame_decoder` in `proto/`.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tether_proto::frame::Decoder;
use tether_proto::message::{Attach, Control, Hello, HelloReply};

fuzz_target!(|data: &[u8]| {
    let decoder = Decoder::new(64 * 1024);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = decoder.decode(&mut buf) {
        let _ = frame.parse::<Hello>();
        let _ = frame.parse::<HelloReply>();
        let _ = frame.parse::<Control>();
        let _ = frame.parse::<Attach>();
    }
    let _ = decoder.finish(&buf);
});

//! The client parser: the handshake, every allowed message round-tripped through any split
//! of its bytes, refusals with their reasons, and arbitrary input never panicking.

use super::*;

fn handshake() -> Vec<u8> {
    let mut b = VERSION.to_vec();
    b.extend_from_slice(&[SECURITY_NONE, 1]);
    b
}

fn samples() -> Vec<ClientMessage> {
    vec![
        ClientMessage::SetPixelFormat(PixelFormat {
            bits_per_pixel: 32,
            depth: 24,
            big_endian: false,
            true_colour: true,
            red_max: 255,
            green_max: 255,
            blue_max: 255,
            red_shift: 16,
            green_shift: 8,
            blue_shift: 0,
        }),
        ClientMessage::SetEncodings(vec![7, 16, 1, 0, -223, -308, -312, -313, -239, -309]),
        ClientMessage::UpdateRequest {
            incremental: false,
            x: 0,
            y: 0,
            width: 1920,
            height: 1080,
        },
        ClientMessage::Key {
            down: true,
            keysym: 0x61,
        },
        ClientMessage::Pointer {
            buttons: 1,
            x: 640,
            y: 480,
        },
        ClientMessage::CutText(CutText::Latin1(b"hello".to_vec())),
        ClientMessage::CutText(CutText::Extended {
            flags: clipboard_action::CAPS | 1,
            payload: vec![0, 0, 16, 0],
        }),
        ClientMessage::ContinuousUpdates {
            enable: true,
            x: 0,
            y: 0,
            width: 1920,
            height: 1080,
        },
        ClientMessage::Fence {
            flags: 0x8000_0003,
            payload: b"sync".to_vec(),
        },
        ClientMessage::SetDesktopSize {
            width: 1280,
            height: 720,
            screens: vec![Screen {
                id: 1,
                x: 0,
                y: 0,
                width: 1280,
                height: 720,
                flags: 0,
            }],
        },
        ClientMessage::QemuKey {
            down: false,
            keysym: 0xff0d,
            keycode: 0x1c,
        },
    ]
}

fn parse_all(parser: &mut Parser) -> Result<Vec<ClientMessage>, ParseError> {
    let mut out = Vec::new();
    while let Some((m, raw)) = parser.next_message()? {
        assert_eq!(raw, m.encode(), "{m:?} is forwarded as it came");
        out.push(m);
    }
    Ok(out)
}

#[test]
fn the_handshake_then_every_message_parses_from_any_split() {
    let mut stream = handshake();
    for m in samples() {
        stream.extend_from_slice(&m.encode());
    }
    let mut expected = vec![
        ClientMessage::Version,
        ClientMessage::Security,
        ClientMessage::Init { shared: true },
    ];
    expected.extend(samples());
    for chunk in [1, 2, 3, 7, 64, stream.len()] {
        let mut parser = Parser::new(Limits::default());
        let mut seen = Vec::new();
        for piece in stream.chunks(chunk) {
            parser.push(piece);
            seen.extend(parse_all(&mut parser).expect("valid input"));
        }
        assert_eq!(seen, expected, "chunks of {chunk}");
        assert_eq!(parser.buffered(), 0);
    }
}

#[test]
fn other_versions_and_security_types_are_refused_at_once() {
    let mut p = Parser::new(Limits::default());
    p.push(b"RFB 003.003\n");
    assert!(matches!(p.next_message(), Err(ParseError::Version(_))));
    assert_eq!(p.next_message(), Err(ParseError::Failed));

    let mut p = Parser::new(Limits::default());
    p.push(b"GET / HTTP/1.1");
    assert!(
        matches!(p.next_message(), Err(ParseError::Version(_))),
        "before 12 bytes"
    );

    let mut p = Parser::new(Limits::default());
    p.push(VERSION);
    p.push(&[2]);
    assert_eq!(
        p.next_message().map(|m| m.map(|(m, _)| m)),
        Ok(Some(ClientMessage::Version))
    );
    assert_eq!(p.next_message(), Err(ParseError::Security(2)));
}

#[test]
fn forbidden_unknown_and_oversized_messages_are_refused_with_their_reason() {
    let cases: Vec<(Vec<u8>, ParseError)> = vec![
        (vec![250, 0, 1, 3], ParseError::Xvp),
        (vec![7, 0, 0, 0], ParseError::Unknown(7)),
        (vec![255, 1, 0, 0], ParseError::QemuSubtype(1)),
        (
            vec![6, 0, 0, 0, 0, 0x10, 0, 1],
            ParseError::TooLarge {
                what: "clipboard text",
                size: 0x0010_0001,
                limit: 1 << 20,
            },
        ),
        (
            vec![6, 0, 0, 0, 0x80, 0, 0, 0],
            ParseError::TooLarge {
                what: "clipboard text",
                size: 1 << 31,
                limit: 1 << 20,
            },
        ),
        (
            vec![6, 0, 0, 0, 0xff, 0xff, 0xff, 0xfe, 0, 0],
            ParseError::Malformed("extended clipboard message"),
        ),
        (
            vec![2, 0, 0xff, 0xff],
            ParseError::TooLarge {
                what: "a SetEncodings list",
                size: 65535,
                limit: 256,
            },
        ),
        (
            vec![248, 0, 0, 0, 0, 0, 0, 0, 65],
            ParseError::TooLarge {
                what: "a fence payload",
                size: 65,
                limit: 64,
            },
        ),
        (
            vec![251, 0, 0, 1, 0, 1, 200, 0],
            ParseError::TooLarge {
                what: "a screen layout",
                size: 200,
                limit: 16,
            },
        ),
        (
            vec![
                0, 0, 0, 0, 24, 32, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0,
            ],
            ParseError::Malformed("pixel format"),
        ),
    ];
    for (bytes, expected) in cases {
        let mut p = Parser::after_handshake(Limits::default());
        p.push(&bytes);
        assert_eq!(p.next_message(), Err(expected.clone()), "{bytes:?}");
        assert!(!expected.to_string().is_empty());
        // Failed streams stay failed and hold nothing.
        p.push(&[3, 0, 0, 0, 0, 0, 0, 1, 0, 1]);
        assert_eq!(p.next_message(), Err(ParseError::Failed));
        assert_eq!(p.buffered(), 0);
    }
}

#[test]
fn a_message_waits_for_its_last_byte() {
    let whole = ClientMessage::CutText(CutText::Latin1(vec![b'x'; 1000])).encode();
    let mut p = Parser::after_handshake(Limits::default());
    p.push(&whole[..whole.len() - 1]);
    assert_eq!(p.next_message(), Ok(None));
    p.push(&whole[whole.len() - 1..]);
    assert!(matches!(
        p.next_message(),
        Ok(Some((ClientMessage::CutText(_), _)))
    ));
}

/// A small deterministic generator, so the test needs no dependency and repeats exactly.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn arbitrary_bytes_never_panic_and_never_grow_the_buffer_past_what_was_given() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let valid: Vec<u8> = samples().iter().flat_map(ClientMessage::encode).collect();
    for round in 0..5_000 {
        let mut p = if round % 2 == 0 {
            Parser::after_handshake(Limits::default())
        } else {
            Parser::new(Limits::default())
        };
        // Valid messages with a few bytes flipped, or plain noise.
        let mut input = if round % 3 == 0 {
            (0..rng.below(300))
                .map(|_| rng.next() as u8)
                .collect::<Vec<_>>()
        } else {
            let mut v = valid.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(v.len());
                v[at] = rng.next() as u8;
            }
            v
        };
        input.truncate(rng.below(input.len() + 1));
        let mut given = 0;
        for piece in input.chunks(1 + rng.below(32)) {
            p.push(piece);
            given += piece.len();
            while let Ok(Some(_)) = p.next_message() {}
            assert!(p.buffered() <= given);
        }
    }
}

//! The relay's filter: view-only drops input whatever the viewer sends and counts it,
//! clipboard per direction, SetEncodings stripped of xvp and unknown encodings, and a
//! forbidden message closing the channel.

use super::*;
use crate::client::{Screen, VERSION};

fn control() -> Policy {
    Policy {
        input: true,
        clipboard_to_device: true,
        clipboard_from_device: true,
        limits: Limits::default(),
    }
}

fn past_handshake(filter: &mut Filter) {
    let mut hs = VERSION.to_vec();
    hs.extend_from_slice(&[1, 1]);
    assert_eq!(filter.push(&hs), Verdict::forward(hs.clone()));
}

fn input() -> Vec<ClientMessage> {
    vec![
        ClientMessage::Key {
            down: true,
            keysym: 0x72,
        },
        ClientMessage::QemuKey {
            down: true,
            keysym: 0x72,
            keycode: 0x13,
        },
        ClientMessage::Pointer {
            buttons: 1,
            x: 10,
            y: 10,
        },
        ClientMessage::CutText(CutText::Latin1(b"rm -rf /".to_vec())),
        ClientMessage::SetDesktopSize {
            width: 800,
            height: 600,
            screens: vec![Screen {
                id: 0,
                x: 0,
                y: 0,
                width: 800,
                height: 600,
                flags: 0,
            }],
        },
    ]
}

fn update_request() -> ClientMessage {
    ClientMessage::UpdateRequest {
        incremental: true,
        x: 0,
        y: 0,
        width: 100,
        height: 100,
    }
}

#[test]
fn view_only_forwards_update_requests_and_drops_every_input() {
    let mut filter = Filter::new(Policy::view_only());
    past_handshake(&mut filter);
    let mut bytes: Vec<u8> = input().iter().flat_map(ClientMessage::encode).collect();
    bytes.extend_from_slice(&update_request().encode());
    assert_eq!(
        filter.push(&bytes),
        Verdict::forward(update_request().encode())
    );
    assert_eq!(
        filter.dropped(),
        Dropped {
            keys: 2,
            pointer: 1,
            clipboard: 1,
            resizes: 1,
            encodings: 0
        }
    );
}

#[test]
fn control_forwards_input_unchanged() {
    let mut filter = Filter::new(control());
    past_handshake(&mut filter);
    let bytes: Vec<u8> = input().iter().flat_map(ClientMessage::encode).collect();
    assert_eq!(filter.push(&bytes), Verdict::forward(bytes.clone()));
    assert_eq!(filter.dropped(), Dropped::default());
}

#[test]
fn clipboard_passes_only_in_the_directions_allowed() {
    let provide = ClientMessage::CutText(CutText::Extended {
        flags: clipboard_action::PROVIDE | 1,
        payload: vec![1, 2, 3],
    });
    let request = ClientMessage::CutText(CutText::Extended {
        flags: clipboard_action::REQUEST | 1,
        payload: vec![],
    });
    let caps = ClientMessage::CutText(CutText::Extended {
        flags: clipboard_action::CAPS | 1,
        payload: vec![0, 0, 4, 0],
    });
    let plain = ClientMessage::CutText(CutText::Latin1(b"x".to_vec()));
    let cases = [
        (true, true, [true, true, true, true]),
        (true, false, [true, false, true, true]),
        (false, true, [false, true, true, false]),
        (false, false, [false, false, false, false]),
    ];
    for (to, from, passes) in cases {
        let policy = Policy {
            clipboard_to_device: to,
            clipboard_from_device: from,
            ..control()
        };
        for (message, pass) in [&provide, &request, &caps, &plain].into_iter().zip(passes) {
            let mut filter = Filter::new(policy);
            past_handshake(&mut filter);
            let expected = if pass { message.encode() } else { Vec::new() };
            assert_eq!(
                filter.push(&message.encode()),
                Verdict::forward(expected),
                "to={to} from={from} {message:?}"
            );
        }
    }
}

#[test]
fn set_encodings_keeps_the_allowed_ones_in_order() {
    let mut filter = Filter::new(control());
    past_handshake(&mut filter);
    // Tight, ZRLE, CopyRect, Raw, xvp, ExtendedMouseButtons, an unknown one, JPEG quality 6,
    // compression 2, DesktopSize, ExtendedDesktopSize, Fence, ContinuousUpdates, Cursor,
    // Extended Clipboard.
    let asked = vec![
        7,
        16,
        1,
        0,
        encoding::XVP,
        encoding::EXTENDED_MOUSE_BUTTONS,
        0x574d_5668,
        -26,
        -254,
        -223,
        -308,
        -312,
        -313,
        -239,
        encoding::EXTENDED_CLIPBOARD,
    ];
    let kept: Vec<i32> = asked
        .iter()
        .copied()
        .filter(|e| ![encoding::XVP, encoding::EXTENDED_MOUSE_BUTTONS, 0x574d_5668].contains(e))
        .collect();
    assert_eq!(
        filter.push(&ClientMessage::SetEncodings(asked).encode()),
        Verdict::forward(ClientMessage::SetEncodings(kept).encode())
    );
    assert_eq!(filter.dropped().encodings, 3);
}

#[test]
fn a_forbidden_message_closes_the_channel_and_what_came_before_it_is_not_lost() {
    let mut filter = Filter::new(control());
    past_handshake(&mut filter);
    let mut bytes = update_request().encode();
    bytes.extend_from_slice(&[250, 0, 1, 3]);
    assert_eq!(
        filter.push(&bytes),
        Verdict {
            forward: update_request().encode(),
            close: Some(ParseError::Xvp)
        }
    );
    assert_eq!(
        filter.push(&update_request().encode()).close,
        Some(ParseError::Failed)
    );
}

use super::*;
use crate::token::DesktopPermission;

#[test]
fn versions_negotiate_to_the_highest_common_one() {
    assert_eq!(negotiate(&[1]), Some(1));
    assert_eq!(negotiate(&[0, 1, 7]), Some(1));
    assert_eq!(negotiate(&[2, 3]), None);
    assert_eq!(negotiate(&[]), None);
}

#[test]
fn messages_have_a_stable_wire_form() {
    let m = Control::Countdown {
        session_uid: "u".into(),
        seconds_left: 90,
    };
    assert_eq!(
        serde_json::to_string(&m).unwrap(),
        r#"{"type":"countdown","sessionUid":"u","secondsLeft":90}"#
    );
    let r = HelloReply::Refused(Refused {
        code: RefusalCode::SessionEnded,
        message: "expired".into(),
    });
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        r#"{"type":"refused","code":"sessionEnded","message":"expired"}"#
    );
    let back: Control = serde_json::from_str(r#"{"type":"pong","n":3}"#).unwrap();
    assert_eq!(back, Control::Pong { n: 3 });
    assert!(serde_json::from_str::<Control>(r#"{"type":"nope"}"#).is_err());
}

#[test]
fn hello_debug_hides_secrets() {
    let hello = Hello {
        versions: vec![1],
        role: Role::Enroll,
        token: Some("session-token-value".into()),
        agent: None,
        enroll: Some(EnrollRequest {
            namespace: "ns".into(),
            device: "d".into(),
            bootstrap_token: "bootstrap-secret".into(),
            csr: "-----BEGIN".into(),
        }),
        client: "test".into(),
        technician: None,
        forwarded: None,
    };
    let debug = format!("{hello:?}");
    assert!(
        !debug.contains("session-token-value") && !debug.contains("bootstrap-secret"),
        "{debug}"
    );
}

#[test]
fn permissions_gate_channels() {
    let p = Permissions {
        desktop: DesktopPermission::None,
        shell: true,
        files: false,
        chat: true,
        processes: false,
        clipboard: Default::default(),
    };
    assert!(ChannelKind::Shell.allowed_by(&p));
    assert!(!ChannelKind::Files.allowed_by(&p));
    assert!(!ChannelKind::Desktop.allowed_by(&p));
    assert!(!ChannelKind::Processes.allowed_by(&p));
}

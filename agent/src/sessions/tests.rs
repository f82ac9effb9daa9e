//! The session registry's tests: picking a session, routing the device's chat to it, and the
//! notices the user is told.

use tether_proto::message::SessionInfo;

use super::*;

fn info(uid: &str, name: &str, ends_in: i64) -> SessionInfo {
    SessionInfo {
        uid: uid.into(),
        namespace: "kiosks".into(),
        name: name.into(),
        device: "kiosk".into(),
        ends_at: now() + ends_in,
        permissions: tether_proto::token::Permissions {
            desktop: tether_proto::token::DesktopPermission::None,
            shell: false,
            files: false,
            chat: true,
            processes: false,
            clipboard: Default::default(),
        },
    }
}

fn say(dir: &Path, to: Option<&LiveSession>, text: &str) {
    chat::enqueue(dir, to, &Outgoing::Text { text: text.into() }).unwrap();
}

fn texts(sub: &mut Subscription) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(Outgoing::Text { text }) = sub.messages.try_recv() {
        out.push(text);
    }
    out
}

fn chat_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("chat.log")).unwrap_or_default()
}

#[test]
fn picking_a_session_never_guesses() {
    let a = LiveSession {
        uid: "u-a".into(),
        name: "printer".into(),
        namespace: "ns".into(),
        ends_at: 0,
        technicians: vec!["carol".into()],
        since: 0,
    };
    let mut b = a.clone();
    b.uid = "u-b".into();
    b.name = "wifi".into();
    b.technicians = vec!["dave\n\u{1b}[2J".into()];
    assert_eq!(pick(&[], None), Err(PickError::NoneLive));
    assert_eq!(pick(std::slice::from_ref(&a), None).unwrap().uid, "u-a");
    let both = [a.clone(), b.clone()];
    let e = pick(&both, None).unwrap_err();
    let shown = e.to_string();
    assert!(shown.contains("printer with carol"), "{shown}");
    assert!(shown.contains("wifi with dave\\n\\u{1b}[2J"), "{shown}");
    assert_eq!(pick(&both, Some("wifi")).unwrap().uid, "u-b");
    assert_eq!(pick(&both, Some("u-a")).unwrap().uid, "u-a");
    assert!(matches!(
        pick(&both, Some("nope")),
        Err(PickError::NotFound { .. })
    ));
}

#[test]
fn every_chat_channel_of_the_session_gets_the_message_and_no_other_session_does() {
    let dir = tempfile::tempdir().unwrap();
    let sessions = Sessions::new(dir.path());
    sessions.consented(&info("u-a", "printer", 3600), "carol");
    sessions.consented(&info("u-b", "wifi", 3600), "dave");
    let live = read_live(dir.path(), now());
    assert_eq!(live.len(), 2);
    let mut carol_long = sessions.subscribe("u-a");
    let mut carol_short = sessions.subscribe("u-a");
    let mut dave = sessions.subscribe("u-b");
    say(
        dir.path(),
        Some(pick(&live, Some("printer")).unwrap()),
        "for carol",
    );
    sessions.pump();
    assert_eq!(texts(&mut carol_long), vec!["for carol"]);
    assert_eq!(texts(&mut carol_short), vec!["for carol"]);
    assert!(texts(&mut dave).is_empty());
    // A short-lived channel that went away takes nothing with it.
    drop(carol_short);
    say(
        dir.path(),
        Some(pick(&live, Some("printer")).unwrap()),
        "again",
    );
    sessions.pump();
    assert_eq!(texts(&mut carol_long), vec!["again"]);
    // Positive control: the other session gets its own.
    say(
        dir.path(),
        Some(pick(&live, Some("wifi")).unwrap()),
        "for dave",
    );
    sessions.pump();
    assert_eq!(texts(&mut dave), vec!["for dave"]);
    assert!(texts(&mut carol_long).is_empty());
    assert!(chat::queued(dir.path()).is_empty());
}

#[test]
fn a_held_message_stays_with_its_session_and_is_dropped_when_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let sessions = Sessions::new(dir.path());
    sessions.consented(&info("u-a", "printer", 3600), "carol");
    let live = read_live(dir.path(), now());
    say(dir.path(), live.first(), "typed while nobody listened");
    sessions.pump();
    assert_eq!(chat::queued(dir.path()).len(), 1, "held for printer");
    sessions.ended("u-a", "Expired");
    assert!(chat::queued(dir.path()).is_empty());
    let log = chat_log(dir.path());
    assert!(
        log.contains("Your message \\\"typed while nobody listened\\\" was not delivered"),
        "{log}"
    );
    assert!(
        log.contains("Remote session printer ended (Expired)"),
        "{log}"
    );
    // The next session's technician never sees it.
    sessions.consented(&info("u-b", "later", 3600), "dave");
    let mut dave = sessions.subscribe("u-b");
    sessions.pump();
    assert!(texts(&mut dave).is_empty());
    // Positive control: a message held for a live session reaches its first channel.
    let live = read_live(dir.path(), now());
    say(dir.path(), live.first(), "for dave");
    sessions.pump();
    assert_eq!(texts(&mut dave), vec!["for dave"]);
}

#[test]
fn a_message_written_before_any_session_goes_to_the_next_one_only() {
    let dir = tempfile::tempdir().unwrap();
    let sessions = Sessions::new(dir.path());
    say(dir.path(), None, "hi, the printer is stuck");
    sessions.consented(&info("u-a", "printer", 3600), "carol");
    sessions.ended("u-a", "EndedByTechnician");
    assert!(chat::queued(dir.path()).is_empty(), "claimed by printer");
    sessions.consented(&info("u-b", "later", 3600), "dave");
    let mut dave = sessions.subscribe("u-b");
    sessions.pump();
    assert!(texts(&mut dave).is_empty());
    // Positive control: the first session after it does get it.
    sessions.ended("u-b", "Expired");
    say(dir.path(), None, "anyone?");
    sessions.consented(&info("u-c", "third", 3600), "erin");
    let mut erin = sessions.subscribe("u-c");
    sessions.pump();
    assert_eq!(texts(&mut erin), vec!["anyone?"]);
}

#[test]
fn the_user_is_told_who_joined_and_how_long_is_left_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let sessions = Sessions::new(dir.path());
    sessions.consented(
        &info("u-a", "printer", 3600),
        "mallory\n{\"notice\":\"forged\"}\u{1b}[2J",
    );
    sessions.opened("u-a", "carol");
    sessions.opened("u-a", "carol");
    sessions.countdown("u-a", 300);
    let log = chat_log(dir.path());
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let notices: Vec<&str> = lines.iter().filter_map(|l| l["notice"].as_str()).collect();
    assert_eq!(notices.len(), 3, "{notices:?}");
    assert!(
        notices[0].starts_with(
            "mallory\\n{\"notice\":\"forged\"}\\u{1b}[2J joined remote session printer; it ends in"
        ),
        "{}",
        notices[0]
    );
    assert_eq!(
        notices[1].split(';').next(),
        Some("carol joined remote session printer")
    );
    assert_eq!(notices[2], "Remote session printer ends in 5m");
    let live = read_live(dir.path(), now());
    assert_eq!(live[0].technicians.len(), 2);
}

#[test]
fn end_requests_name_one_session() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control");
    let sessions = Sessions::new(dir.path());
    sessions.consented(&info("u-a", "printer", 3600), "carol");
    sessions.consented(&info("u-b", "wifi", 3600), "dave");
    request_end(&control, "u-b").unwrap();
    assert_eq!(sessions.take_end_requests(&control), vec!["u-b"]);
    assert!(sessions.take_end_requests(&control).is_empty(), "consumed");
    // An old-style request names nothing: with two live, nothing is ended.
    std::fs::write(control.join("end-1"), b"").unwrap();
    assert!(sessions.take_end_requests(&control).is_empty());
    assert!(chat_log(dir.path()).contains("Nothing was ended: several remote sessions"));
    // Positive control: with one live, it is that one.
    sessions.ended("u-b", "EndedByUser");
    std::fs::write(control.join("end-2"), b"").unwrap();
    assert_eq!(sessions.take_end_requests(&control), vec!["u-a"]);
}
